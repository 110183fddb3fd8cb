using Hetmem.Cli.Devices;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Cli.Workloads.Scenario;

/// <summary>
/// <c>hetmem run reclaim</c>: MADV_PAGEOUT of mirrored memory (kernel: madvise_pageout → reclaim_pages). Anonymous
/// pages go to the swap store and clean page-cache pages are dropped, each inside a CLEAR bracket that takes the
/// devices' translations away; then the CPU swaps half back in by touching it and the devices fault the other half
/// back in through <c>hmm_range_fault</c> (a device fault on a swap entry is a swap-in), and all data is intact.
/// </summary>
internal sealed class ReclaimWorkload : IWorkload
{
    /// <inheritdoc/>
    public string Name => "reclaim";

    /// <inheritdoc/>
    public string Description => "MADV_PAGEOUT to swap and page-cache drop under two mirror devices, then swap-in by CPU and device faults.";

    /// <inheritdoc/>
    public WorkloadResult Run(WorkloadContext context)
    {
        var r = new WorkloadResult(Name);
        ScenarioKit.RamGauge(context);
        ulong anonLen = Math.Clamp(Page.AlignDown(context.Memory.RamBytes / 32, Page.PmdSize), Page.PmdSize, 8UL << 20);
        ulong fileLen = anonLen / 2;
        using var rig = new MemoryRig(context, new RigOptions { PageCache = true, SwapSlots = (uint)(anonLen >> Page.Shift) * 2 });
        AddressSpace mm = rig.Mm;
        using FileHandle fh = rig.PageCache!.Create("reclaim-data");
        fh.Truncate(fileLen);
        ulong a = mm.Mmap(0, anonLen, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        ulong f = mm.MmapFile(0, fileLen, Prot.Read | Prot.Write, MapFlags.Shared, fh);
        var anon = new DemoRegion("anon", VmaKind.Anonymous, a, anonLen, 0, context.Seed);
        var file = new DemoRegion("file", VmaKind.File, f, fileLen, 1, context.Seed);
        DemoRegion[] regions = [anon, file];
        var devices = new List<MiniMirror> { new("reclaim-mirror0", mm), new("reclaim-mirror1", mm) };
        IReadOnlyDictionary<string, long> c0 = Counters.Snapshot();
        try
        {
            foreach (MiniMirror d in devices)
            {
                foreach (DemoRegion reg in regions)
                {
                    d.Attach(reg.Start, reg.Length, reg.Name);
                }
            }
            context.Report(Name, "write and mirror", 0.1);
            r.Check("the CPU writes anonymous and page-cache memory and both devices mirror it", () =>
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
                foreach (MiniMirror d in devices)
                {
                    foreach (DemoRegion reg in regions)
                    {
                        ScenarioKit.FaultAll(d, reg, write: false);
                    }
                }
                return $"{anon.Pages + file.Pages} pages";
            });

            context.Report(Name, "MADV_PAGEOUT", 0.3);
            long clearBefore = devices[0].Invalidations(MmuNotifierEvent.Clear);
            r.Check("MADV_PAGEOUT sends every anonymous page to swap; the devices lose those translations (CLEAR)", () =>
            {
                long outBefore = Counters.Read(Counter.SwapOut);
                mm.Madvise(a, anonLen, Advice.PageOut);
                long swapped = Counters.Read(Counter.SwapOut) - outBefore;
                MapsEntry m = mm.Maps().Single(x => x.Start == a);
                WorkloadResult.Require(m.SwapPages == anon.Pages && m.ResidentPages == 0, $"resident {m.ResidentPages}, swap {m.SwapPages}");
                WorkloadResult.Require(devices.All(d => d.ValidPages(a, a + anonLen) == 0), "a device kept a translation of a swapped page");
                long clears = devices[0].Invalidations(MmuNotifierEvent.Clear) - clearBefore;
                WorkloadResult.Require(clears > 0, "no CLEAR invalidation");
                return $"{swapped} pages swapped out ({rig.Swap!.UsedSlots} slots used); {clears} CLEAR invalidations per device";
            });
            r.Check("after msync, MADV_PAGEOUT drops the clean page-cache pages; the devices lose them", () =>
            {
                long dropBefore = Counters.Read(Counter.PageCacheDropped);
                mm.Msync(f, fileLen, AddressSpace.MsyncFlags.Sync);
                mm.Madvise(f, fileLen, Advice.PageOut);
                long dropped = Counters.Read(Counter.PageCacheDropped) - dropBefore;
                WorkloadResult.Require(dropped > 0, "no page dropped");
                MapsEntry m = mm.Maps().Single(x => x.Start == f);
                WorkloadResult.Require(devices.All(d => d.ValidPages(f, f + fileLen) == (long)m.ResidentPages || d.ValidPages(f, f + fileLen) == 0),
                    "a device kept a translation of a dropped page");
                return $"{dropped} pages dropped, {m.ResidentPages} still mapped";
            });

            context.Report(Name, "swap back in", 0.6);
            r.Check("the CPU swaps the first half back in by reading it, and the data is intact", () =>
            {
                long inBefore = Counters.Read(Counter.SwapIn);
                using var cpu = new Cpu(mm);
                for (ulong p = 0; p < anon.Pages / 2; p++)
                {
                    for (int w = 0; w < DemoRegion.WordOffsets.Length; w++)
                    {
                        long v = CpuThreads.Read(cpu, anon.WordAddress(p, w), VmaKind.Anonymous);
                        WorkloadResult.Require(v == anon.Expected(p, w), $"page {p} word {w} = 0x{v:x} after swap-in");
                    }
                }
                long swappedIn = Counters.Read(Counter.SwapIn) - inBefore;
                WorkloadResult.Require(swappedIn >= (long)anon.Pages / 2, $"{swappedIn} swap-ins");
                return $"{swappedIn} pages swapped in";
            });
            r.Check("a device fault swaps the second half back in, and the devices read the data intact", () =>
            {
                long inBefore = Counters.Read(Counter.SwapIn);
                long words = 0;
                foreach (MiniMirror d in devices)
                {
                    words += ScenarioKit.VerifyDevice(d, anon, anon.Pages / 2, anon.Pages);
                }
                long swappedIn = Counters.Read(Counter.SwapIn) - inBefore;
                WorkloadResult.Require(swappedIn >= (long)anon.Pages / 2, $"{swappedIn} swap-ins from device faults");
                WorkloadResult.Require(mm.Maps().Single(x => x.Start == a).SwapPages == 0, "pages left in swap");
                return $"{swappedIn} pages swapped in by device faults; {ScenarioKit.N(words)} words";
            });
            r.Check("the page-cache data reads back through the devices and the CPU after being dropped", () =>
            {
                long words = 0;
                foreach (MiniMirror d in devices)
                {
                    words += ScenarioKit.VerifyDevice(d, file, 0, file.Pages);
                }
                using var cpu = new Cpu(mm);
                for (ulong p = 0; p < file.Pages; p++)
                {
                    WorkloadResult.Require(cpu.Read<long>(file.WordAddress(p, 2)) == file.Expected(p, 2), $"file page {p}");
                }
                return $"{ScenarioKit.N(words)} device words";
            });
            r.Check("the swap store is empty again once every page is back", () =>
            {
                WorkloadResult.Require(rig.Swap!.UsedSlots == 0, $"{rig.Swap.UsedSlots} slots still used");
                return null;
            });
            ScenarioKit.MapsTable(r, mm.Maps(), ScenarioKit.RegionLabels(regions));
            ScenarioKit.CountersTable(r, c0);
            mm.Exit();
            ScenarioKit.DeviceTables(r, devices);
        }
        finally
        {
            foreach (MiniMirror d in devices)
            {
                d.Dispose();
            }
        }
        fh.Dispose();
        rig.Dispose();
        long leaked = rig.Memory.UsedFrames - rig.UsedFramesAtStart;
        r.Check("every frame is free again after exit and unmount", leaked == 0, $"{leaked} frames leaked");
        context.Report(Name, "done", 1);
        return r;
    }
}
