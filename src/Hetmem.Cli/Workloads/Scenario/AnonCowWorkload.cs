using Hetmem.Cli.Devices;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Cli.Workloads.Scenario;

/// <summary>
/// <c>hetmem run anon-cow</c>: fork and copy-on-write under two mirror devices (kernel: dup_mmap's write-protect of
/// private memory, wp_page_copy / wp_page_reuse). A parent and its child, then a grandchild, write disjoint halves
/// concurrently; each sees its own writes and the shared ancestor data elsewhere, the devices (mirroring the parent)
/// lose write access at every fork and always see the parent's view, and after the descendants exit the parent's
/// pages are exclusive again, so a device write reuses them without a copy.
/// </summary>
internal sealed class AnonCowWorkload : IWorkload
{
    /// <inheritdoc/>
    public string Name => "anon-cow";

    /// <inheritdoc/>
    public string Description => "fork + copy-on-write of anonymous memory while two devices mirror the parent.";

    /// <inheritdoc/>
    public WorkloadResult Run(WorkloadContext context)
    {
        var r = new WorkloadResult(Name);
        ScenarioKit.RamGauge(context);
        ulong len = Math.Clamp(Page.AlignDown(context.Memory.RamBytes / 32, Page.PmdSize), Page.PmdSize, 16UL << 20);
        using var rig = new MemoryRig(context, new RigOptions());
        AddressSpace parent = rig.Mm;
        ulong a = parent.Mmap(0, len, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        var region = new DemoRegion("anon", VmaKind.Anonymous, a, len, 0, context.Seed);
        var devices = new List<MiniMirror> { new("cow-mirror0", parent), new("cow-mirror1", parent) };
        try
        {
            foreach (MiniMirror d in devices)
            {
                d.Attach(a, len, "anon");
            }
            context.Report(Name, "parent writes, devices mirror", 0.1);
            r.Check("two parent threads write every page and both devices read it back", () =>
            {
                CpuThreads.Run(parent, 2, (cpu, id) =>
                {
                    for (ulong p = (ulong)id; p < region.Pages; p += 2)
                    {
                        region.Bump(p);
                        for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
                        {
                            CpuThreads.Write(cpu, region.WordAddress(p, w), region.Expected(p, w), VmaKind.Anonymous);
                        }
                    }
                });
                long words = 0;
                foreach (MiniMirror d in devices)
                {
                    ScenarioKit.FaultAll(d, region, write: true);
                    words += ScenarioKit.VerifyDevice(d, region, 0, region.Pages);
                }
                return $"{region.Pages} pages; {ScenarioKit.N(words)} device words";
            });

            context.Report(Name, "fork; parent and child write concurrently", 0.35);
            long cowBefore = Counters.Read(Counter.CowFault);
            long protBefore = devices.Sum(d => d.Invalidations(MmuNotifierEvent.ProtectionPage));
            AddressSpace child = rig.Track(parent.Fork());
            DemoRegion childView = region.Clone();
            r.Check("fork write-protects the parent's pages: the devices lose write access (PROTECTION_PAGE) but keep reading", () =>
            {
                long n = devices.Sum(d => d.Invalidations(MmuNotifierEvent.ProtectionPage)) - protBefore;
                WorkloadResult.Require(n >= devices.Count, $"{n} PROTECTION_PAGE invalidations");
                WorkloadResult.Require(devices.All(d => d.WritablePages(a, a + len) == 0), "a device kept a writable translation");
                long words = ScenarioKit.VerifyDevice(devices[0], region, 0, region.Pages);
                WorkloadResult.Require(devices.All(d => d.WritablePages(a, a + len) == 0), "a read fault made a COW page writable");
                return $"{n} invalidations; {ScenarioKit.N(words)} words re-read";
            });
            r.Check("parent (odd pages) and child (even pages) write at the same time; each sees its own data and the other's old data", () =>
            {
                var t1 = new Thread(() => WriteEvery(parent, region, 1));
                var t2 = new Thread(() => WriteEvery(child, childView, 0));
                t1.Start();
                t2.Start();
                t1.Join();
                t2.Join();
                VerifyCpu(parent, region);
                VerifyCpu(child, childView);
                long cows = Counters.Read(Counter.CowFault) - cowBefore;
                WorkloadResult.Require(cows >= (long)region.Pages, $"{cows} COW faults for {region.Pages} pages written");
                return $"{ScenarioKit.N(cows)} COW faults";
            });
            r.Check("the devices see the parent's view after the COW breaks, never the child's", () =>
            {
                long words = 0;
                foreach (MiniMirror d in devices)
                {
                    words += ScenarioKit.VerifyDevice(d, region, 0, region.Pages);
                    string? v = d.CheckAgainstCpu(a, a + len);
                    WorkloadResult.Require(v is null, v ?? "");
                }
                return $"{ScenarioKit.N(words)} words";
            });

            context.Report(Name, "grandchild", 0.6);
            AddressSpace grandchild = rig.Track(child.Fork());
            DemoRegion grandView = childView.Clone();
            r.Check("a grandchild forked from the child sees the child's data; its writes stay its own", () =>
            {
                VerifyCpu(grandchild, grandView);
                WriteEvery(grandchild, grandView, 0, step: 4);
                VerifyCpu(grandchild, grandView);
                VerifyCpu(child, childView);
                VerifyCpu(parent, region);
                return null;
            });

            context.Report(Name, "exit descendants", 0.8);
            r.Check("the descendants exit and release their copies; the parent's data is intact", () =>
            {
                long before = rig.Memory.UsedFrames;
                grandchild.Exit();
                child.Exit();
                long freed = before - rig.Memory.UsedFrames;
                WorkloadResult.Require(freed >= (long)region.Pages / 2, $"only {freed} frames freed");
                VerifyCpu(parent, region);
                return $"{freed} frames freed";
            });
            r.Check("now that the parent's pages are exclusive, a device write reuses them (no copy) and the CPU reads it", () =>
            {
                long cows = Counters.Read(Counter.CowFault);
                long used = rig.Memory.UsedFrames;
                ulong p = 2 % region.Pages; // even: the child broke COW here, so the parent still has the original, write-protected frame
                int g = region.Bump(p);
                foreach (MiniMirror d in devices)
                {
                    for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
                    {
                        ScenarioKit.Require(d.WriteInt64(region.WordAddress(p, w), region.Expected(p, w, g)), $"{d.Name} write");
                    }
                }
                VerifyCpu(parent, region);
                WorkloadResult.Require(rig.Memory.UsedFrames == used, $"{rig.Memory.UsedFrames - used} frames allocated by the write");
                return $"no frame allocated ({Counters.Read(Counter.CowFault) - cows} COW-counter increments)";
            });
            ScenarioKit.MapsTable(r, parent.Maps(), ScenarioKit.RegionLabels([region]));
            parent.Exit();
            ScenarioKit.DeviceTables(r, devices);
        }
        finally
        {
            foreach (MiniMirror d in devices)
            {
                d.Dispose();
            }
        }
        rig.Dispose();
        long leaked = rig.Memory.UsedFrames - rig.UsedFramesAtStart;
        r.Check("every frame is free again after exit", leaked == 0, $"{leaked} frames leaked");
        context.Report(Name, "done", 1);
        return r;
    }

    private static void WriteEvery(AddressSpace mm, DemoRegion view, ulong first, ulong step = 2)
    {
        using var cpu = new Cpu(mm);
        for (ulong p = first; p < view.Pages; p += step)
        {
            view.Bump(p);
            for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
            {
                CpuThreads.Write(cpu, view.WordAddress(p, w), view.Expected(p, w), VmaKind.Anonymous);
            }
        }
    }

    private static void VerifyCpu(AddressSpace mm, DemoRegion view)
    {
        using var cpu = new Cpu(mm);
        for (ulong p = 0; p < view.Pages; p++)
        {
            for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
            {
                long v = cpu.Read<long>(view.WordAddress(p, w));
                WorkloadResult.Require(v == view.Expected(p, w), $"space {mm.Id}: page {p} word {w} = 0x{v:x}, expected 0x{view.Expected(p, w):x}");
            }
        }
    }
}
