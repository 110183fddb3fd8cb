using Hetmem.Cli.Devices;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Cli.Workloads.Scenario;

/// <summary>
/// Demo section <c>mm</c>, the main job: one address space with anonymous, page-cache, DAX and hugetlbfs regions;
/// two CPU threads (each with its own <see cref="Cpu"/>) write and read them while every device Hetmem has mirrors
/// them; then mprotect, munmap, fork and a truncate of the DAX file change the CPU side, and after each change the
/// section checks what the CPUs see and that every device lost exactly the translations it had to lose and still
/// sees the CPU's data everywhere else. Ends with a maps table, the vmstat counters and one table per device.
/// </summary>
internal sealed class AddressSpaceSection : IWorkload
{
    private const ulong RegionBase = 0x4000_0000_0000;     // 1 GiB-aligned slots, one per region
    private const ulong Slot = 1UL << 30;
    private const int Phases = 9;

    /// <inheritdoc/>
    public string Name => "mm";

    /// <inheritdoc/>
    public string Description =>
        "One address space (anonymous, page-cache, DAX, hugetlbfs regions) written by two CPU threads and mirrored by every device through mprotect, munmap, fork and DAX truncate.";

    /// <inheritdoc/>
    public WorkloadResult Run(WorkloadContext context)
    {
        var r = new WorkloadResult(Name);
        ScenarioKit.RamGauge(context);
        var deviceResults = new Dictionary<string, WorkloadResult>(StringComparer.Ordinal);
        IReadOnlyDictionary<string, long> countersAtStart = Counters.Snapshot();
        ulong ram = context.Memory.RamBytes;

        // Sizes scale with --ram so the demo also runs on a small machine; 256 MiB gives the numbers in the docs.
        ulong anonLen = Math.Clamp(Page.AlignDown(ram / 16, Page.PmdSize), Page.PmdSize, 64UL << 20);
        ulong fileLen = Math.Clamp(Page.AlignDown(ram / 32, Page.PmdSize), Page.PmdSize, 32UL << 20);
        ulong daxLen = 16UL << 20;
        ulong hugePool = Math.Clamp(ram / (16UL << 20), 1, 16);
        ulong hugeLen = Math.Max(1, hugePool / 2) * Page.PmdSize;

        Report(context, "set up RAM, page cache, DAX namespace, hugetlbfs pool", 0);
        using var rig = new MemoryRig(context, new RigOptions
        {
            PageCache = true,
            DaxBytes = 64UL << 20,
            HugePages = hugePool,
            DaxFileName = "demo-fs.dax",
        });
        AddressSpace mm = rig.Mm;
        var regions = new List<DemoRegion>();
        using FileHandle file = rig.PageCache!.Create("demo-data");
        using FileHandle dax = rig.Dax!.Create("demo-pmem");
        using FileHandle huge = rig.Hugetlb!.Create("demo-huge");
        List<IDemoDevice> devices = [];
        try
        {
            r.Check("anonymous, page-cache, DAX and hugetlbfs regions are mapped at fixed 1 GiB slots", () =>
            {
                const Prot rw = Prot.Read | Prot.Write;
                ulong a = mm.Mmap(RegionBase, anonLen, rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.FixedNoReplace);
                regions.Add(new DemoRegion("anon", VmaKind.Anonymous, a, anonLen, 0, context.Seed));
                file.Truncate(fileLen);
                ulong f = mm.MmapFile(RegionBase + Slot, fileLen, rw, MapFlags.Shared | MapFlags.FixedNoReplace, file);
                regions.Add(new DemoRegion("file", VmaKind.File, f, fileLen, 1, context.Seed));
                dax.Truncate(daxLen);
                // MAP_SHARED_VALIDATE refuses MAP_FIXED_NOREPLACE (it is not a legacy flag), so this one is MAP_FIXED
                // over the slot the layout reserved for it.
                ulong d = mm.MmapFile(RegionBase + (2 * Slot), daxLen, rw, MapFlags.SharedValidate | MapFlags.Sync | MapFlags.Fixed, dax);
                regions.Add(new DemoRegion("dax", VmaKind.Dax, d, daxLen, 2, context.Seed));
                huge.Truncate(hugeLen);
                ulong h = mm.MmapFile(RegionBase + (3 * Slot), hugeLen, rw, MapFlags.Shared | MapFlags.FixedNoReplace, huge);
                regions.Add(new DemoRegion("hugetlb", VmaKind.HugeTlb, h, hugeLen, 3, context.Seed));
                WorkloadResult.Require(mm.Vmas.Count == 4, $"{mm.Vmas.Count} VMAs, expected 4");
                return string.Join(", ", regions.Select(x => $"{x.Name} {SizeParser.Format(x.Length)}"));
            });
            if (!r.Passed)
            {
                return r;
            }
            DemoRegion anon = regions[0], fileR = regions[1], daxR = regions[2], hugeR = regions[3];

            Report(context, "attach devices", 1);
            devices = DemoDevices.CreateAll(mm);
            foreach (IDemoDevice dev in devices)
            {
                deviceResults[dev.Name] = new WorkloadResult(dev.Name);
                foreach (DemoRegion reg in regions)
                {
                    dev.Attach(reg.Start, reg.Length, reg.Name);
                }
            }
            r.Check($"{devices.Count} devices mirror all four regions", () =>
            {
                WorkloadResult.Require(devices.Count > 0, "no device");
                return string.Join(", ", devices.Select(d => d.Name));
            });

            // ---- 1. two CPU threads write every region while the devices fault the same ranges concurrently ------
            Report(context, "2 CPU threads write all regions; devices fault concurrently", 2);
            r.Check("two CPU threads write every page of every region while the devices fault the same ranges", () =>
            {
                using var stop = new CancellationTokenSource();
                var background = devices.Select(d => StartDeviceLoop(d, regions, stop.Token)).ToList();
                try
                {
                    CpuThreads.Run(mm, 2, (cpu, id) =>
                    {
                        foreach (DemoRegion reg in regions)
                        {
                            for (ulong p = (ulong)id; p < reg.Pages; p += 2)
                            {
                                reg.Bump(p);
                                for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
                                {
                                    CpuThreads.Write(cpu, reg.WordAddress(p, w), reg.Expected(p, w), reg.Kind);
                                }
                            }
                        }
                    });
                }
                finally
                {
                    stop.Cancel();
                }
                long deviceFaults = 0;
                foreach (Task<(long Faults, string? Error)> t in background)
                {
                    (long faults, string? error) = t.GetAwaiter().GetResult();
                    WorkloadResult.Require(error is null, $"a concurrent device fault failed: {error}");
                    deviceFaults += faults;
                }
                ulong pages = (ulong)regions.Sum(x => (long)x.Pages);
                return $"{pages:#,0} pages, {pages * 3:#,0} words; {deviceFaults:#,0} concurrent device faults";
            });

            r.Check("each CPU thread reads what the other one wrote, in every region", () =>
            {
                long words = 0;
                CpuThreads.Run(mm, 2, (cpu, id) =>
                {
                    long n = 0;
                    foreach (DemoRegion reg in regions)
                    {
                        for (ulong p = (ulong)(1 - id); p < reg.Pages; p += 2)
                        {
                            for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
                            {
                                long v = CpuThreads.Read(cpu, reg.WordAddress(p, w), reg.Kind);
                                WorkloadResult.Require(v == reg.Expected(p, w), $"cpu{id}: {reg.Name} page {p} word {w} = 0x{v:x}, expected 0x{reg.Expected(p, w):x}");
                                n++;
                            }
                        }
                    }
                    Interlocked.Add(ref words, n);
                });
                return $"{words:#,0} words";
            });

            r.Check("data written through the shared page-cache mapping is what read() returns", () =>
            {
                Span<byte> buf = stackalloc byte[8];
                for (ulong p = 0; p < fileR.Pages; p += Math.Max(1, fileR.Pages / 16))
                {
                    file.Read(p << Page.Shift, buf);
                    long v = BitConverter.ToInt64(buf);
                    WorkloadResult.Require(v == fileR.Expected(p, 0), $"read() of page {p} = 0x{v:x}, expected 0x{fileR.Expected(p, 0):x}");
                }
                return "16 pages sampled";
            });

            r.Check("the DAX region is mapped with 2 MiB (PMD) entries and the hugetlbfs region with 2 MiB pages", () =>
            {
                IReadOnlyList<MapsEntry> maps = mm.Maps();
                MapsEntry d = maps.Single(m => m.Start == daxR.Start);
                MapsEntry h = maps.Single(m => m.Start == hugeR.Start);
                WorkloadResult.Require(d.PmdEntries == daxR.Length / Page.PmdSize, $"DAX: {d.PmdEntries} PMD entries, expected {daxR.Length / Page.PmdSize}");
                WorkloadResult.Require(h.PmdEntries == hugeR.Length / Page.PmdSize, $"hugetlbfs: {h.PmdEntries} PMD entries, expected {hugeR.Length / Page.PmdSize}");
                return $"dax {d.PmdEntries} PMDs, hugetlb {h.PmdEntries} PMDs";
            });

            // ---- 2. every device reads everything the CPUs wrote, then writes and the CPU reads it back ----------
            Report(context, "devices read every region and write back", 3);
            foreach (IDemoDevice dev in devices)
            {
                WorkloadResult dr = deviceResults[dev.Name];
                dr.Check($"{dev.Name} faults every region in and reads exactly what the CPUs wrote", () =>
                {
                    long words = 0;
                    foreach (DemoRegion reg in regions)
                    {
                        ScenarioKit.FaultAll(dev, reg, write: false);
                        words += ScenarioKit.VerifyDevice(dev, reg, 0, reg.Pages);
                    }
                    return $"{words:#,0} words";
                });
                dr.Check($"{dev.Name} maps the DAX and hugetlbfs regions through their 2 MiB entries", () =>
                {
                    WorkloadResult.Require(dev.ValidPages(daxR.Start, daxR.End) == (long)daxR.Pages, $"{dev.ValidPages(daxR.Start, daxR.End)} of {daxR.Pages} DAX pages valid");
                    WorkloadResult.Require(dev.ValidPages(hugeR.Start, hugeR.End) == (long)hugeR.Pages, "hugetlbfs pages missing");
                    long hd = dev.HugeEntries(daxR.Start, daxR.End), hh = dev.HugeEntries(hugeR.Start, hugeR.End);
                    if (hd < 0 || hh < 0)
                    {
                        return "all pages mapped (the device does not report entry sizes)";
                    }
                    WorkloadResult.Require(hd == (long)(daxR.Length / Page.PmdSize), $"{hd} huge DAX entries");
                    WorkloadResult.Require(hh == (long)(hugeR.Length / Page.PmdSize), $"{hh} huge hugetlbfs entries");
                    return $"2 MiB entries: dax {hd}, hugetlb {hh}";
                });
            }
            r.Check("the CPU reads what each device wrote to anonymous memory", () =>
            {
                using var cpu = new Cpu(mm);
                for (int i = 0; i < devices.Count; i++)
                {
                    ulong page = 1 + ((ulong)i * 3);
                    int gen = anon.Bump(page);
                    for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
                    {
                        Errno e = devices[i].WriteInt64(anon.WordAddress(page, w), anon.Expected(page, w, gen));
                        WorkloadResult.Require(e == Errno.Ok, $"{devices[i].Name} write: {e}");
                    }
                    for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
                    {
                        long v = cpu.Read<long>(anon.WordAddress(page, w));
                        WorkloadResult.Require(v == anon.Expected(page, w), $"CPU read 0x{v:x} after {devices[i].Name} wrote 0x{anon.Expected(page, w):x}");
                    }
                }
                return $"{devices.Count} device writes";
            });

            // ---- 2b. a device with memory of its own migrates pages into it; CPU and other devices pull them back ---
            if (devices.FirstOrDefault(d => d.CanMigrate) is { } migrator && anon.Pages >= 256)
            {
                Report(context, $"{migrator.Name} migrates pages to device memory; CPU and mirrors fault them back", 3.5);
                MigrationPhase(r, mm, anon, migrator, devices, deviceResults);
            }

            // ---- 3. mprotect: the upper half of the anonymous region becomes read-only -------------------------
            Report(context, "mprotect the upper half of the anonymous region read-only", 4);
            ulong roStart = anon.Start + (anon.Length / 2), roEnd = anon.End;
            var protBefore = devices.ToDictionary(d => d.Name, d => d.Invalidations(MmuNotifierEvent.ProtectionVma));
            foreach (IDemoDevice dev in devices)
            {
                ScenarioKit.Require(dev.Fault(roStart, roEnd, write: true), $"{dev.Name} write fault before mprotect");
            }
            r.Check("after mprotect(PROT_READ) a CPU write raises SIGSEGV (ACCERR) and reads still see the data", () =>
            {
                mm.Mprotect(roStart, roEnd - roStart, Prot.Read);
                using var cpu = new Cpu(mm);
                ulong p = anon.Pages / 2;
                SegmentationFault f = ScenarioKit.ExpectSegv(() => cpu.Write(anon.WordAddress(p, 0), 1L));
                WorkloadResult.Require(f.Code == SegvCode.AccErr, $"code {f.Code}");
                WorkloadResult.Require(cpu.Read<long>(anon.WordAddress(p, 0)) == anon.Expected(p, 0), "data changed");
                return f.Message.Split(':')[0];
            });
            foreach (IDemoDevice dev in devices)
            {
                deviceResults[dev.Name].Check($"{dev.Name} lost write access to the mprotected range (PROTECTION_VMA) and may only read it again", () =>
                {
                    string n = ScenarioKit.RequireInvalidated(dev, MmuNotifierEvent.ProtectionVma, protBefore[dev.Name]);
                    WorkloadResult.Require(dev.WritablePages(roStart, roEnd) == 0, $"{dev.WritablePages(roStart, roEnd)} pages still writable");
                    Errno w = dev.WriteInt64(roStart, 1);
                    WorkloadResult.Require(w == Errno.EPERM, $"device write after mprotect returned {w}, expected EPERM");
                    long words = ScenarioKit.VerifyDevice(dev, anon, anon.Pages / 2, anon.Pages);
                    WorkloadResult.Require(dev.WritablePages(roStart, roEnd) == 0, "a read fault made pages writable");
                    return $"{n}; write → EPERM; {words:#,0} words re-read";
                });
            }

            // ---- 4. munmap a hole in the lower half of the anonymous region -----------------------------------
            Report(context, "munmap a hole in the anonymous region", 5);
            ulong holeStart = anon.Start + Page.AlignDown(anon.Length / 4, Page.Size), holeEnd = holeStart + Page.AlignDown(anon.Length / 8, Page.Size);
            foreach (IDemoDevice dev in devices)
            {
                ScenarioKit.Require(dev.Fault(holeStart, holeEnd, write: false), $"{dev.Name} fault of the range about to be unmapped");
            }
            var unmapBefore = devices.ToDictionary(d => d.Name, d => d.Invalidations(MmuNotifierEvent.Unmap));
            var validBefore = devices.ToDictionary(d => d.Name, d => d.ValidPages(holeStart, holeEnd));
            r.Check("after munmap the CPU gets SIGSEGV (MAPERR) in the hole and the VMA is split in three", () =>
            {
                mm.Munmap(holeStart, holeEnd - holeStart);
                using var cpu = new Cpu(mm);
                SegmentationFault f = ScenarioKit.ExpectSegv(() => cpu.Read<long>(holeStart));
                WorkloadResult.Require(f.Code == SegvCode.MapErr, $"code {f.Code}");
                int anonVmas = mm.Maps().Count(m => m.Kind == VmaKind.Anonymous && m.Start >= anon.Start && m.End <= anon.End);
                WorkloadResult.Require(anonVmas == 3, $"{anonVmas} anonymous VMAs");
                return $"hole of {SizeParser.Format(holeEnd - holeStart)}";
            });
            foreach (IDemoDevice dev in devices)
            {
                deviceResults[dev.Name].Check($"{dev.Name} lost every translation of the hole (UNMAP) and its faults there fail with EFAULT", () =>
                {
                    string n = ScenarioKit.RequireInvalidated(dev, MmuNotifierEvent.Unmap, unmapBefore[dev.Name]);
                    WorkloadResult.Require(validBefore[dev.Name] > 0, "the device held no translation of the hole before");
                    WorkloadResult.Require(dev.ValidPages(holeStart, holeEnd) == 0, $"{dev.ValidPages(holeStart, holeEnd)} stale translations");
                    Errno e = dev.ReadInt64(holeStart, out _);
                    WorkloadResult.Require(e == Errno.EFAULT, $"device read in the hole returned {e}");
                    long words = ScenarioKit.VerifyDevice(dev, anon, 0, (holeStart - anon.Start) >> Page.Shift);
                    return $"{n}; {validBefore[dev.Name]:#,0} translations dropped; {words:#,0} words outside still read back";
                });
            }

            // ---- 5. fork: the child sees the parent's data, COW keeps them apart ------------------------------
            Report(context, "fork, then write in parent and child (COW)", 6);
            var cowBefore = devices.ToDictionary(d => d.Name, d => d.Invalidations(MmuNotifierEvent.ProtectionPage));
            foreach (IDemoDevice dev in devices)
            {
                ScenarioKit.Require(dev.Fault(anon.Start, holeStart, write: true), $"{dev.Name} write fault before fork");
            }
            AddressSpace child = rig.Track(mm.Fork());
            DemoRegion childAnon = anon.Clone();
            ulong pChild = 0, pParent = 2;
            r.Check("the forked child reads the parent's data in every region", () =>
            {
                using var cpu = new Cpu(child);
                long n = 0;
                foreach (DemoRegion reg in regions)
                {
                    for (ulong p = 0; p < reg.Pages; p += 7)
                    {
                        if (reg == anon && reg.PageAddress(p) >= holeStart && reg.PageAddress(p) < holeEnd)
                        {
                            continue;
                        }
                        long v = cpu.Read<long>(reg.WordAddress(p, 1));
                        WorkloadResult.Require(v == reg.Expected(p, 1), $"child: {reg.Name} page {p} = 0x{v:x}, expected 0x{reg.Expected(p, 1):x}");
                        n++;
                    }
                }
                return $"{n:#,0} pages sampled";
            });
            r.Check("copy-on-write keeps parent and child apart in private memory, shared mappings stay shared", () =>
            {
                using var pc = new Cpu(mm);
                using var cc = new Cpu(child);
                childAnon.Bump(pChild);
                cc.Write(childAnon.WordAddress(pChild, 0), childAnon.Expected(pChild, 0));
                WorkloadResult.Require(pc.Read<long>(anon.WordAddress(pChild, 0)) == anon.Expected(pChild, 0), "the parent sees the child's private write");
                anon.Bump(pParent);
                for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
                {
                    pc.Write(anon.WordAddress(pParent, w), anon.Expected(pParent, w));
                }
                WorkloadResult.Require(cc.Read<long>(anon.WordAddress(pParent, 0)) == childAnon.Expected(pParent, 0), "the child sees the parent's private write");
                WorkloadResult.Require(mm.QueryPte(anon.PageAddress(pParent), out _).Pfn != child.QueryPte(anon.PageAddress(pParent), out _).Pfn,
                    "parent and child still share the written frame");
                int g = fileR.Bump(0);
                for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
                {
                    cc.Write(fileR.WordAddress(0, w), fileR.Expected(0, w, g));
                }
                WorkloadResult.Require(pc.Read<long>(fileR.WordAddress(0, 0)) == fileR.Expected(0, 0), "the parent does not see the child's write to the shared file");
                return "private: separate frames; shared file: one page";
            });
            foreach (IDemoDevice dev in devices)
            {
                deviceResults[dev.Name].Check($"{dev.Name} lost write access at fork (PROTECTION_PAGE) and sees the parent's data, not the child's", () =>
                {
                    string n = ScenarioKit.RequireInvalidated(dev, MmuNotifierEvent.ProtectionPage, cowBefore[dev.Name]);
                    WorkloadResult.Require(dev.WritablePages(anon.Start, holeStart) == 0, $"{dev.WritablePages(anon.Start, holeStart)} pages still writable after fork");
                    ScenarioKit.Require(dev.ReadInt64(anon.WordAddress(pChild, 0), out long v0), "device read");
                    WorkloadResult.Require(v0 == anon.Expected(pChild, 0), $"device sees 0x{v0:x} at the child's page, expected the parent's 0x{anon.Expected(pChild, 0):x}");
                    ScenarioKit.Require(dev.ReadInt64(anon.WordAddress(pParent, 0), out long v2), "device read");
                    WorkloadResult.Require(v2 == anon.Expected(pParent, 0), "device does not see the parent's write after the COW break");
                    ScenarioKit.Require(dev.ReadInt64(fileR.WordAddress(0, 0), out long vf), "device read");
                    WorkloadResult.Require(vf == fileR.Expected(0, 0), "device does not see the child's write to the shared file");
                    return n;
                });
            }
            r.Check("the child exits and every frame it held is released", () =>
            {
                long before = rig.Memory.UsedFrames;
                child.Exit();
                long freed = before - rig.Memory.UsedFrames;
                WorkloadResult.Require(freed > 0, "exit freed nothing");
                using var cpu = new Cpu(mm);
                WorkloadResult.Require(cpu.Read<long>(anon.WordAddress(pChild, 0)) == anon.Expected(pChild, 0), "the parent lost data when the child exited");
                return $"{freed} frames freed";
            });

            // ---- 6. truncate the DAX file under the mapping -------------------------------------------------
            Report(context, "truncate the DAX file to half while it is mapped and mirrored", 7);
            ulong newSize = daxR.Length / 2;
            ulong cut = daxR.Start + newSize;
            var clearBefore = devices.ToDictionary(d => d.Name, d => d.Invalidations(MmuNotifierEvent.Clear));
            foreach (IDemoDevice dev in devices)
            {
                ScenarioKit.FaultAll(dev, daxR, write: true);
            }
            r.Check("after truncating the DAX file to half, the CPU gets SIGBUS beyond the new size and the data below", () =>
            {
                dax.Truncate(newSize);
                using var cpu = new Cpu(mm);
                BusError b = ScenarioKit.ExpectBus(() => cpu.Read<long>(cut));
                BusError b2 = ScenarioKit.ExpectBus(() => cpu.Write(daxR.End - 8, 1L));
                long words = 0;
                for (ulong p = 0; p < newSize >> Page.Shift; p++)
                {
                    for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
                    {
                        WorkloadResult.Require(cpu.Read<long>(daxR.WordAddress(p, w)) == daxR.Expected(p, w), $"DAX page {p} lost its data");
                        words++;
                    }
                }
                return $"SIGBUS at 0x{b.Address:x} and 0x{b2.Address:x}; {words:#,0} words below intact";
            });
            foreach (IDemoDevice dev in devices)
            {
                deviceResults[dev.Name].Check($"{dev.Name} lost its translations beyond the new DAX size (CLEAR) and kept reading below it", () =>
                {
                    string n = ScenarioKit.RequireInvalidated(dev, MmuNotifierEvent.Clear, clearBefore[dev.Name]);
                    WorkloadResult.Require(dev.ValidPages(cut, daxR.End) == 0, $"{dev.ValidPages(cut, daxR.End)} stale translations beyond EOF");
                    Errno e = dev.ReadInt64(cut, out _);
                    WorkloadResult.Require(e == Errno.EFAULT, $"device read beyond EOF returned {e}, expected EFAULT");
                    long words = ScenarioKit.VerifyDevice(dev, daxR, 0, newSize >> Page.Shift);
                    return $"{n}; EFAULT beyond EOF; {words:#,0} words below";
                });
            }

            // ---- 7. report ------------------------------------------------------------------------------------
            Report(context, "maps, counters, exit", 8);
            ScenarioKit.MapsTable(r, mm.Maps(), ScenarioKit.RegionLabels(regions));
            var releaseBefore = devices.ToDictionary(d => d.Name, d => d.Invalidations(MmuNotifierEvent.Release));
            mm.Exit();
            foreach (IDemoDevice dev in devices)
            {
                deviceResults[dev.Name].Check($"{dev.Name} was told of the exit (RELEASE) and holds no translation afterwards", () =>
                {
                    ScenarioKit.RequireInvalidated(dev, MmuNotifierEvent.Release, releaseBefore[dev.Name]);
                    WorkloadResult.Require(dev.ValidPages(0, ulong.MaxValue) == 0, $"{dev.ValidPages(0, ulong.MaxValue)} translations survive the exit");
                    return null;
                });
            }
            ScenarioKit.CountersTable(r, countersAtStart);
            ScenarioKit.DeviceTables(r, devices);
        }
        finally
        {
            foreach (IDemoDevice d in devices)
            {
                d.Dispose();
            }
            foreach (WorkloadResult dr in deviceResults.Values)
            {
                r.Merge(dr);
            }
        }
        file.Dispose();
        dax.Dispose();
        huge.Dispose();
        rig.Dispose();
        r.Check("every RAM frame is free again after exit and unmount", () =>
        {
            long leaked = rig.Memory.UsedFrames - rig.UsedFramesAtStart;
            WorkloadResult.Require(leaked == 0, $"{leaked} frames still in use");
            return $"{rig.Memory.UsedFrames} frames in use, as before";
        });
        Report(context, "done", Phases);
        return r;
    }

    private void Report(WorkloadContext context, string phase, double step) => context.Report(Name, phase, step / Phases);

    /// <summary>
    /// Pages 64..127 of the anonymous region go to <paramref name="migrator"/>'s device-private memory (kernel:
    /// migrate_vma_*; the CPU page table then holds device-private swap entries, the other mirrors get a MIGRATE
    /// invalidation); the migrator reads them locally; CPU reads of the first half fault them back (migrate_to_ram), and a
    /// fault of another mirror on the second half pulls those back too (hmm_range_fault on a foreign device page).
    /// </summary>
    private static void MigrationPhase(WorkloadResult r, AddressSpace mm, DemoRegion anon, IDemoDevice migrator,
        IReadOnlyList<IDemoDevice> devices, Dictionary<string, WorkloadResult> deviceResults)
    {
        const ulong First = 64, Count = 64;
        ulong ms = anon.PageAddress(First), me = anon.PageAddress(First + Count);
        var migBefore = devices.ToDictionary(d => d.Name, d => d.Invalidations(MmuNotifierEvent.Migrate));
        MapsEntry Vma() => mm.Maps().Single(x => x.Start <= ms && ms < x.End);
        deviceResults[migrator.Name].Check($"{migrator.Name} migrates {Count} anonymous pages into its device-private memory and reads them there", () =>
        {
            long toDev = Counters.Read(Counter.MigrateToDevice);
            ScenarioKit.Require(migrator.MigrateToDevice(ms, me), $"{migrator.Name} migrate to device");
            ulong dev = Vma().DevicePages;
            WorkloadResult.Require(dev == Count, $"{dev} device-private entries in the CPU page table, expected {Count}");
            long words = ScenarioKit.VerifyDevice(migrator, anon, First, First + Count);
            return $"{dev} device-private CPU entries; MigrateToDevice +{Counters.Read(Counter.MigrateToDevice) - toDev}; {words} words read on the device";
        });
        foreach (IDemoDevice other in devices.Where(d => d != migrator))
        {
            deviceResults[other.Name].Check($"{other.Name} lost its translations of the pages {migrator.Name} migrated (MIGRATE)", () =>
            {
                string n = ScenarioKit.RequireInvalidated(other, MmuNotifierEvent.Migrate, migBefore[other.Name]);
                WorkloadResult.Require(other.ValidPages(ms, me) == 0, $"{other.ValidPages(ms, me)} translations of migrated pages");
                return n;
            });
        }
        r.Check($"CPU reads of migrated pages fault them back to RAM (migrate_to_ram) with their data", () =>
        {
            long toRam = Counters.Read(Counter.MigrateToRam);
            using var cpu = new Cpu(mm);
            for (ulong p = First; p < First + (Count / 2); p++)
            {
                for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
                {
                    long v = CpuThreads.Read(cpu, anon.WordAddress(p, w), VmaKind.Anonymous);
                    WorkloadResult.Require(v == anon.Expected(p, w), $"page {p} word {w} = 0x{v:x} after migrating back");
                }
            }
            long back = Counters.Read(Counter.MigrateToRam) - toRam;
            WorkloadResult.Require(back >= (long)Count / 2, $"MigrateToRam +{back}");
            ulong dev = Vma().DevicePages;
            WorkloadResult.Require(dev <= Count / 2, $"{dev} pages still on the device");
            return $"MigrateToRam +{back}; {dev} pages still on the device";
        });
        IDemoDevice puller = devices.FirstOrDefault(d => d != migrator) ?? migrator;
        deviceResults[puller.Name].Check($"{puller.Name}'s fault on pages still in {migrator.Name}'s memory migrates them back and reads the data", () =>
        {
            long words = ScenarioKit.VerifyDevice(puller, anon, First + (Count / 2), First + Count);
            ulong dev = Vma().DevicePages;
            WorkloadResult.Require(puller == migrator || dev == 0, $"{dev} pages still on the device");
            return $"{words} words; {dev} pages left on the device";
        });
    }

    /// <summary>A device thread faulting every region chunk by chunk until stopped (read faults; colliding invalidations are retried by the helper).</summary>
    private static Task<(long Faults, string? Error)> StartDeviceLoop(IDemoDevice dev, IReadOnlyList<DemoRegion> regions, CancellationToken stop) =>
        Task.Factory.StartNew(() =>
        {
            TraceLog.SetThreadTrack(dev.Name + "-fault-worker", "devices");
            long faults = 0;
            while (!stop.IsCancellationRequested)
            {
                foreach (DemoRegion reg in regions)
                {
                    for (ulong p = 0; p < reg.Pages && !stop.IsCancellationRequested; p += ScenarioKit.FaultChunkPages)
                    {
                        ulong end = Math.Min(reg.Pages, p + ScenarioKit.FaultChunkPages);
                        Errno e = dev.Fault(reg.PageAddress(p), reg.PageAddress(end), write: false);
                        if (e != Errno.Ok && e != Errno.EBUSY)
                        {
                            return (faults, $"{dev.Name} {reg.Name} page {p}: {e}");
                        }
                        faults++;
                    }
                }
            }
            return (faults, (string?)null);
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
}
