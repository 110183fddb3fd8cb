namespace Hetmem.Devices.Gpu;

/// <summary>
/// Tunables of the density-tree prefetcher, with UVM's defaults (kernel: NVIDIA UVM module parameters
/// <c>uvm_perf_prefetch_enable</c>, <c>uvm_perf_prefetch_threshold</c>, <c>uvm_perf_prefetch_min_faults</c>).
/// </summary>
/// <param name="Enabled">Prefetch at all (default on). Off means: migrate exactly the faulted pages, no 64 KiB widening.</param>
/// <param name="ThresholdPercent">A subtree is prefetched when strictly more than this percentage of it is resident or faulted (1..100, default 51).</param>
/// <param name="MinFaults">Fewer faulted pages than this in a block disable prefetching for it (1..20, default 1).</param>
/// <param name="BigPagePages">Pages in a big page: each faulted page first grows to its whole big page (default 16 = 64 KiB; 1 disables widening).</param>
public readonly record struct PrefetchOptions(bool Enabled = true, int ThresholdPercent = 51, int MinFaults = 1, int BigPagePages = 16)
{
    /// <summary>UVM's defaults.</summary>
    public static PrefetchOptions Default => new(true, 51, 1, 16);

    /// <summary>Throws when a tunable is outside the range UVM accepts.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A tunable is out of range.</exception>
    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(ThresholdPercent, 1, nameof(ThresholdPercent));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(ThresholdPercent, 100, nameof(ThresholdPercent));
        ArgumentOutOfRangeException.ThrowIfLessThan(MinFaults, 1, nameof(MinFaults));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(MinFaults, 20, nameof(MinFaults));
        if (BigPagePages < 1 || BigPagePages > BlockMask.Pages || (BigPagePages & (BigPagePages - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(BigPagePages), BigPagePages, "must be a power of two between 1 and 512");
        }
    }
}

/// <summary>
/// The prefetch policy of NVIDIA UVM as a pure function (kernel: <c>uvm_perf_prefetch.c</c>,
/// <c>uvm_perf_prefetch_get_hint</c> → <c>grow_fault_granularity</c> + <c>compute_prefetch_region</c>): a bitmap tree
/// with 512 leaves (one per 4 KiB page) over a 2 MiB block; leaves are set for pages already resident at the
/// destination or faulted now; each faulted page is first widened to its 64 KiB big page (unless a page of it is
/// thrashing); then from each faulted page the tree is walked upward and the largest ancestor whose occupancy is
/// strictly above the threshold becomes a prefetch region.
/// </summary>
/// <remarks>Allocation-free and stateless: safe to call from any thread.</remarks>
public static class DensityPrefetcher
{
    /// <summary>Leaves of the tree (pages in a 2 MiB block).</summary>
    public const int Leaves = BlockMask.Pages;

    /// <summary>Levels of the tree, leaves included (log2(512) + 1).</summary>
    public const int Levels = 10;

    /// <summary>
    /// Computes the pages to migrate in addition to the faulted ones.
    /// </summary>
    /// <param name="resident">Pages already resident at the destination.</param>
    /// <param name="faulted">Pages faulted now (the ones that will migrate anyway).</param>
    /// <param name="thrashing">Pages marked thrashing: never prefetched, and they stop the 64 KiB widening of their big page.</param>
    /// <param name="first">First page of the block that may migrate (e.g. the VMA start inside the block).</param>
    /// <param name="outer">One past the last page that may migrate.</param>
    /// <param name="options">Tunables.</param>
    /// <param name="prefetch">On return, the pages to prefetch: inside [first, outer), disjoint from resident, faulted and thrashing pages.</param>
    /// <returns>The number of pages in <paramref name="prefetch"/>.</returns>
    /// <exception cref="ArgumentOutOfRangeException">When [first, outer) is not a sub-range of the block.</exception>
    public static int Compute(in BlockMask resident, in BlockMask faulted, in BlockMask thrashing, int first, int outer,
        in PrefetchOptions options, out BlockMask prefetch)
    {
        if ((uint)first > Leaves || outer < first || outer > Leaves)
        {
            throw new ArgumentOutOfRangeException(nameof(first), $"[{first}, {outer}) is not inside [0, {Leaves})");
        }
        prefetch = default;
        if (!options.Enabled || faulted.CountRange(first, outer) < Math.Max(1, options.MinFaults))
        {
            return 0;
        }

        // Big-page promotion (grow_fault_granularity): a faulted page pulls its whole big page unless it holds a thrashing page.
        BlockMask grown = faulted;
        int big = Math.Max(1, options.BigPagePages);
        if (big > 1)
        {
            for (int p = faulted.NextSet(first); p < outer; p = faulted.NextSet(p + 1))
            {
                int bStart = p & ~(big - 1);
                int lo = Math.Max(bStart, first);
                int hi = Math.Min(bStart + big, outer);
                if (!thrashing.AnyInRange(lo, hi))
                {
                    grown.SetRange(lo, hi);
                }
                p = Math.Max(p, hi - 1);
            }
        }

        BlockMask occupied = resident;
        occupied.Or(grown);

        // Density walk (compute_prefetch_region): the highest qualifying ancestor of each grown page wins.
        BlockMask regions = default;
        long threshold = options.ThresholdPercent;
        for (int p = grown.NextSet(first); p < outer; p = grown.NextSet(p + 1))
        {
            if (regions.Get(p))
            {
                continue; // a region found from another page already covers p, and p's higher ancestors are the same
            }
            int bestLo = -1, bestHi = -1;
            for (int level = 0; level < Levels; level++)
            {
                int size = 1 << level;
                int nodeStart = p & ~(size - 1);
                int lo = Math.Max(nodeStart, first);
                int hi = Math.Min(nodeStart + size, outer);
                int count = occupied.CountRange(lo, hi);
                if (count * 100L > threshold * (hi - lo))
                {
                    bestLo = lo;
                    bestHi = hi;
                }
                if (lo == first && hi == outer)
                {
                    break; // reached the whole usable block
                }
            }
            if (bestLo >= 0)
            {
                regions.SetRange(bestLo, bestHi);
            }
        }

        regions.Or(grown);
        prefetch = regions;
        prefetch.AndNot(resident);
        prefetch.AndNot(faulted);
        prefetch.AndNot(thrashing);
        // Keep the result inside [first, outer) (grown and regions already are; this guards faulted bits outside it).
        BlockMask window = default;
        window.SetRange(first, outer);
        prefetch.And(window);
        return prefetch.Count;
    }
}
