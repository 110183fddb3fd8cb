using Hetmem.Cli.Devices;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Cli.Workloads.Scenario;

/// <summary>
/// <c>hetmem run dax-truncate</c>: a file on the DAX file system, mapped shared with PMD entries and mirrored by two
/// devices, is shrunk step by step, has a hole punched, and grows again (kernel: fs/dax.c truncate and hole punch,
/// dax_layout_busy_page, unmap_mapping_range). After each step the CPU gets SIGBUS beyond the end of file, the devices
/// have lost exactly the translations of the removed blocks and fail there with EFAULT, and the data below is intact;
/// finally the namespace is unmounted and mounted again from its host file and the surviving data is still there.
/// </summary>
internal sealed class DaxTruncateWorkload : IWorkload
{
    private const ulong FileBytes = 16UL << 20;

    /// <inheritdoc/>
    public string Name => "dax-truncate";

    /// <inheritdoc/>
    public string Description => "A mirrored DAX file mapping with PMD entries is truncated, hole-punched and regrown; data survives a remount.";

    /// <inheritdoc/>
    public WorkloadResult Run(WorkloadContext context)
    {
        var r = new WorkloadResult(Name);
        ScenarioKit.RamGauge(context);
        string path = Path.Combine(context.DaxDirectory, "dax-truncate.dax");
        if (File.Exists(path))
        {
            File.Delete(path);
        }
        using var rig = new MemoryRig(context, new RigOptions());
        AddressSpace mm = rig.Mm;
        DaxNamespace? ns = new(rig.Memory, path, 64UL << 20);
        DaxFileSystem? fs = DaxFileSystem.Format(ns);
        FileHandle? h = fs.Create("victim");
        var devices = new List<MiniMirror>();
        try
        {
            h.Truncate(FileBytes);
            ulong a = mm.MmapFile(0x5000_0000_0000, FileBytes, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.FixedNoReplace, h);
            var region = new DemoRegion("dax", VmaKind.Dax, a, FileBytes, 2, context.Seed);
            devices.Add(new MiniMirror("dax-mirror0", mm));
            devices.Add(new MiniMirror("dax-mirror1", mm));
            foreach (MiniMirror d in devices)
            {
                d.Attach(a, FileBytes, "dax");
            }

            context.Report(Name, "write the file through the mapping; devices mirror it", 0.1);
            r.Check("the CPU fills the mapping, which is made of 2 MiB PMD entries, and both devices read it back through order-9 entries", () =>
            {
                CpuThreads.Run(mm, 2, (cpu, id) =>
                {
                    for (ulong p = (ulong)id; p < region.Pages; p += 2)
                    {
                        region.Bump(p);
                        for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
                        {
                            CpuThreads.Write(cpu, region.WordAddress(p, w), region.Expected(p, w), VmaKind.Dax);
                        }
                    }
                });
                MapsEntry m = mm.Maps().Single();
                WorkloadResult.Require(m.PmdEntries == FileBytes / Page.PmdSize, $"{m.PmdEntries} PMD entries");
                foreach (MiniMirror d in devices)
                {
                    ScenarioKit.FaultAll(d, region, write: true);
                    ScenarioKit.VerifyDevice(d, region, 0, region.Pages);
                    WorkloadResult.Require(d.HugeEntries(a, a + FileBytes) == (long)(FileBytes / Page.PmdSize), $"{d.Name}: {d.HugeEntries(a, a + FileBytes)} huge entries");
                }
                return $"{m.PmdEntries} PMDs";
            });

            ulong size = FileBytes;
            foreach (ulong newSize in new[] { 12UL << 20, 7UL << 20, (5UL << 20) + (64UL << 10) })
            {
                context.Report(Name, $"truncate to {SizeParser.Format(newSize)}", 0.2 + (0.15 * (double)(FileBytes - newSize) / FileBytes));
                ulong oldSize = size;
                long clearBefore = devices.Sum(d => d.Invalidations(MmuNotifierEvent.Clear));
                r.Check($"truncate {SizeParser.Format(oldSize)} → {SizeParser.Format(newSize)}: SIGBUS beyond, data below, devices lose exactly the removed pages", () =>
                {
                    h.Truncate(newSize);
                    size = newSize;
                    ulong eofPage = Page.AlignUp(newSize, Page.Size) >> Page.Shift;
                    using var cpu = new Cpu(mm);
                    ScenarioKit.ExpectBus(() => cpu.Read<long>(region.PageAddress(eofPage)));
                    ScenarioKit.ExpectBus(() => cpu.Write(region.PageAddress((oldSize >> Page.Shift) - 1), 1L));
                    for (ulong p = 0; p < eofPage; p += 3)
                    {
                        WorkloadResult.Require(cpu.Read<long>(region.WordAddress(p, 0)) == region.Expected(p, 0), $"page {p} lost its data");
                    }
                    long cleared = devices.Sum(d => d.Invalidations(MmuNotifierEvent.Clear)) - clearBefore;
                    WorkloadResult.Require(cleared > 0, "no CLEAR invalidation");
                    foreach (MiniMirror d in devices)
                    {
                        ulong cut = region.PageAddress(eofPage);
                        WorkloadResult.Require(d.ValidPages(cut, region.End) == 0, $"{d.Name}: {d.ValidPages(cut, region.End)} translations beyond EOF");
                        Errno e = d.ReadInt64(cut, out _);
                        WorkloadResult.Require(e == Errno.EFAULT, $"{d.Name} read beyond EOF: {e}");
                        ScenarioKit.VerifyDevice(d, region, 0, eofPage);
                    }
                    return $"{cleared} CLEAR invalidations";
                });
            }

            context.Report(Name, "punch a hole", 0.7);
            r.Check("a punched 2 MiB hole reads as zeroes for the CPU and the devices, which lost its translations", () =>
            {
                const ulong holeOff = 2UL << 20;
                long clearBefore = devices.Sum(d => d.Invalidations(MmuNotifierEvent.Clear));
                foreach (MiniMirror d in devices)
                {
                    ScenarioKit.Require(d.Fault(a + holeOff, a + holeOff + Page.PmdSize, write: false), $"{d.Name} fault");
                }
                h.PunchHole(holeOff, Page.PmdSize);
                WorkloadResult.Require(devices.Sum(d => d.Invalidations(MmuNotifierEvent.Clear)) > clearBefore, "no invalidation for the hole");
                WorkloadResult.Require(devices.All(d => d.ValidPages(a + holeOff, a + holeOff + Page.PmdSize) == 0), "a device kept translations of the hole");
                for (ulong p = holeOff >> Page.Shift; p < (holeOff + Page.PmdSize) >> Page.Shift; p++)
                {
                    region.SetGeneration(p, 0);
                }
                using var cpu = new Cpu(mm);
                WorkloadResult.Require(cpu.Read<long>(a + holeOff + 8) == 0, "the CPU reads old data in the hole");
                foreach (MiniMirror d in devices)
                {
                    ScenarioKit.VerifyDevice(d, region, 0, Page.AlignUp(size, Page.Size) >> Page.Shift);
                }
                return null;
            });

            context.Report(Name, "grow the file again", 0.8);
            r.Check("growing the file back makes the tail readable as zeroes (no SIGBUS) by the CPU and the devices", () =>
            {
                ulong oldPages = Page.AlignUp(size, Page.Size) >> Page.Shift;
                h.Truncate(FileBytes);
                size = FileBytes;
                for (ulong p = oldPages; p < region.Pages; p++)
                {
                    region.SetGeneration(p, 0);
                }
                using var cpu = new Cpu(mm);
                WorkloadResult.Require(cpu.Read<long>(region.PageAddress(region.Pages - 1)) == 0, "tail is not zero");
                foreach (MiniMirror d in devices)
                {
                    ScenarioKit.Require(d.ReadInt64(region.PageAddress(region.Pages - 1), out long v), $"{d.Name} read of the regrown tail");
                    WorkloadResult.Require(v == 0, $"{d.Name} reads 0x{v:x} in the regrown tail");
                }
                return null;
            });

            context.Report(Name, "write, unmount, mount again", 0.9);
            ulong keepPages = 5UL << 20 >> Page.Shift;
            ScenarioKit.MapsTable(r, mm.Maps(), ScenarioKit.RegionLabels([region]));
            mm.Exit();
            ScenarioKit.DeviceTables(r, devices);
            h.Fsync();
            h.Dispose();
            h = null;
            fs.Dispose();
            fs = null;
            ns.Dispose();
            ns = null;
            r.Check("after unmounting and mounting the namespace file again, the file holds the data written through the mapping", () =>
            {
                using var ns2 = new DaxNamespace(rig.Memory, path, 64UL << 20);
                using DaxFileSystem fs2 = DaxFileSystem.Mount(ns2);
                using FileHandle h2 = fs2.Open("victim", FileAccess.Read);
                WorkloadResult.Require(h2.Size == FileBytes, $"size {h2.Size}");
                Span<byte> buf = stackalloc byte[8];
                long n = 0;
                for (ulong p = 0; p < keepPages; p++)
                {
                    h2.Read(region.WordAddress(p, 1) - a, buf);
                    long v = BitConverter.ToInt64(buf);
                    WorkloadResult.Require(v == region.Expected(p, 1), $"page {p} reads 0x{v:x} after remount, expected 0x{region.Expected(p, 1):x}");
                    n++;
                }
                return $"{n} pages checked in {Path.GetFileName(path)}";
            });
        }
        finally
        {
            foreach (MiniMirror d in devices)
            {
                d.Dispose();
            }
            mm.Exit();
            h?.Dispose();
            fs?.Dispose();
            ns?.Dispose();
            if (!context.KeepsDaxFiles)
            {
                File.Delete(path);
            }
        }
        rig.Dispose();
        long leaked = rig.Memory.UsedFrames - rig.UsedFramesAtStart;
        r.Check("no RAM frame was used for the DAX file, and all are free after exit", leaked == 0, $"{leaked} frames leaked");
        context.Report(Name, "done", 1);
        return r;
    }
}
