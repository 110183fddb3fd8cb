using System.Diagnostics;
using System.Globalization;
using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Cli.Workloads;

/// <summary>
/// Demo section <c>physical</c>: the RAM arena, frame metadata and buddy allocator (kernel: mm/page_alloc.c) on the
/// context's <see cref="PhysicalMemory"/>. Every check leaves the free-frame count as it found it.
/// </summary>
public sealed class PhysicalMemorySection : IWorkload
{
    /// <inheritdoc/>
    public string Name => "physical";

    /// <inheritdoc/>
    public string Description => "RAM arena, frame metadata and buddy allocator: allocate, write, free, exhaust.";

    /// <inheritdoc/>
    public WorkloadResult Run(WorkloadContext context)
    {
        var r = new WorkloadResult(Name);
        PhysicalMemory mem = context.Memory;
        context.Timeline?.AddGauge("ram", "resident pages", () => mem.UsedFrames);
        TraceLog.Counter("resident_pages", "ram", mem.UsedFrames);
        r.Counter("ram_frames", mem.RamFrames);
        r.Counter("frame_metadata_bytes", PhysicalMemory.FrameMetadataBytes);

        r.Check("frame metadata fits in 32 bytes (Linux's struct page is 64)", () =>
        {
            int n = PhysicalMemory.FrameMetadataBytes;
            WorkloadResult.Require(n <= 32, $"{n} bytes a frame");
            return $"{n} B/frame";
        });

        r.Check("the shared zero page is reserved and reads as zeros", () =>
        {
            ulong z = mem.ZeroPfn;
            WorkloadResult.Require(mem.Frame(z).Has(FrameFlags.Reserved), "zero page is not reserved");
            WorkloadResult.Require(!mem.FrameSpan(z).ContainsAnyExcept((byte)0), "zero page holds non-zero bytes");
            return $"pfn 0x{z:x}";
        });

        r.Check("1000 single-frame allocations are distinct RAM frames and freeing them restores the free count", () =>
        {
            long before = mem.FreeFrames;
            var pfns = new ulong[1000];
            double ns = 0;
            for (int round = 0; round < 2; round++) // round 0 warms up (JIT, host page faults); round 1 is timed
            {
                long t0 = Stopwatch.GetTimestamp();
                for (int i = 0; i < pfns.Length; i++)
                {
                    pfns[i] = mem.Allocate(0);
                    WorkloadResult.Require(pfns[i] != Page.NoPfn, $"allocation {i} failed with {mem.FreeFrames} frames free");
                }
                long t1 = Stopwatch.GetTimestamp();
                TraceLog.Counter("resident_pages", "ram", mem.UsedFrames);
                context.Timeline?.Sample();
                WorkloadResult.Require(pfns.Distinct().Count() == pfns.Length, "an allocation returned a frame twice");
                WorkloadResult.Require(pfns.All(mem.IsRam), "an allocation returned a non-RAM PFN");
                WorkloadResult.Require(mem.FreeFrames == before - pfns.Length, $"free count {mem.FreeFrames}, expected {before - pfns.Length}");
                long t2 = Stopwatch.GetTimestamp();
                foreach (ulong p in pfns)
                {
                    WorkloadResult.Require(mem.Put(p), $"frame 0x{p:x} was not freed by its last reference");
                }
                ns = (Stopwatch.GetElapsedTime(t0, t1) + Stopwatch.GetElapsedTime(t2)).TotalNanoseconds / pfns.Length;
                WorkloadResult.Require(mem.FreeFrames == before, $"free count {mem.FreeFrames} after freeing, expected {before}");
                TraceLog.Counter("resident_pages", "ram", mem.UsedFrames);
            }
            r.Counter("alloc_free_ns", Math.Round(ns, 1));
            return string.Create(CultureInfo.InvariantCulture, $"{ns:F0} ns per allocate+free");
        });

        r.Check("a 2 MiB (order-9) allocation is a naturally aligned compound page", () =>
        {
            ulong p = mem.Allocate(PhysicalMemory.MaxOrder);
            WorkloadResult.Require(p != Page.NoPfn, "no free 2 MiB block");
            try
            {
                WorkloadResult.Require(Page.IsAligned(p, 1UL << PhysicalMemory.MaxOrder), $"pfn 0x{p:x} is not 512-frame aligned");
                WorkloadResult.Require(mem.Frame(p).Has(FrameFlags.Head), "head frame lacks PG_head");
                WorkloadResult.Require(mem.Frame(p + 1).Has(FrameFlags.Tail) && mem.Head(p + 511) == p, "tail frames do not point at the head");
                return $"pfn 0x{p:x}";
            }
            finally
            {
                mem.Put(p);
            }
        });

        r.Check("frames are real memory: a seeded pattern written to 64 frames reads back", () =>
        {
            var pfns = new ulong[64];
            var rng = new Random(context.Seed);
            var expected = new byte[pfns.Length][];
            try
            {
                for (int i = 0; i < pfns.Length; i++)
                {
                    pfns[i] = mem.Allocate(0, zero: true);
                    WorkloadResult.Require(pfns[i] != Page.NoPfn, "allocation failed");
                    expected[i] = new byte[Page.Size];
                    rng.NextBytes(expected[i]);
                    expected[i].CopyTo(mem.FrameSpan(pfns[i]));
                }
                for (int i = 0; i < pfns.Length; i++)
                {
                    WorkloadResult.Require(mem.FrameSpan(pfns[i]).SequenceEqual(expected[i]), $"frame 0x{pfns[i]:x} lost its contents");
                }
                return $"{pfns.Length * Page.Size / 1024} KiB";
            }
            finally
            {
                foreach (ulong p in pfns.Where(p => p is not 0 and not Page.NoPfn))
                {
                    mem.Put(p);
                }
            }
        });

        r.Check("a freed frame gets a new generation number (use-after-free detection)", () =>
        {
            ulong p = mem.Allocate(0);
            WorkloadResult.Require(p != Page.NoPfn, "allocation failed");
            uint g = mem.Frame(p).Generation;
            mem.Put(p);
            WorkloadResult.Require(mem.Frame(p).Generation != g, $"generation stayed {g}");
            return null;
        });

        r.Check("allocating until exhaustion returns NoPfn, and freeing everything restores the buddy lists", () =>
        {
            long before = mem.FreeFrames;
            ulong[] info = mem.BuddyInfo();
            var held = new List<ulong>();
            try
            {
                for (int order = PhysicalMemory.MaxOrder; order >= 0; order--)
                {
                    for (ulong p = mem.Allocate(order); p != Page.NoPfn; p = mem.Allocate(order))
                    {
                        held.Add(p);
                    }
                }
                WorkloadResult.Require(mem.FreeFrames == 0, $"{mem.FreeFrames} frames still free after exhaustion");
                TraceLog.Counter("resident_pages", "ram", mem.UsedFrames);
                context.Timeline?.Sample();
            }
            finally
            {
                foreach (ulong p in held)
                {
                    mem.Put(p);
                }
            }
            TraceLog.Counter("resident_pages", "ram", mem.UsedFrames);
            WorkloadResult.Require(mem.FreeFrames == before, $"free count {mem.FreeFrames}, expected {before}");
            WorkloadResult.Require(mem.BuddyInfo().SequenceEqual(info), "buddy free lists did not merge back");
            return $"{before} frames in {held.Count} blocks";
        });

        r.Counter("free_frames", mem.FreeFrames);
        return r;
    }
}
