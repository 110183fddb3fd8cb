using CsCheck;
using Hetmem.Devices.Gpu;

namespace Hetmem.Tests.Devices.Gpu;

public class DensityPrefetcherTests
{
    private static BlockMask MaskOf(IEnumerable<int> pages)
    {
        BlockMask m = default;
        foreach (int p in pages)
        {
            m.Set(p);
        }
        return m;
    }

    private static BlockMask MaskOfRuns(IEnumerable<(int Start, int Length)> runs)
    {
        BlockMask m = default;
        foreach ((int s, int l) in runs)
        {
            m.SetRange(s, Math.Min(512, s + l));
        }
        return m;
    }

    // Sparse pages and clustered runs, so densities around the threshold actually occur.
    private static readonly Gen<BlockMask> s_mask = Gen.OneOf(
        Gen.Int[0, 511].Array[0, 24].Select(a => MaskOf(a)),
        Gen.Select(Gen.Int[0, 511], Gen.Int[1, 200]).Array[0, 6].Select(r => MaskOfRuns(r)));

    private static readonly Gen<(int First, int Outer)> s_window = Gen.OneOf(
        Gen.Const((0, 512)),
        Gen.Select(Gen.Int[0, 512], Gen.Int[0, 512]).Select((a, b) => (Math.Min(a, b), Math.Max(a, b))));

    private static readonly Gen<PrefetchOptions> s_options =
        Gen.Select(Gen.Int[1, 100], Gen.Int[1, 4], Gen.OneOf(Gen.Const(1), Gen.Const(16), Gen.Const(64)))
           .Select((t, m, b) => new PrefetchOptions(true, t, m, b));

    /// <summary>An independent brute-force statement of the policy: big-page widening, then every qualifying ancestor.</summary>
    private static BlockMask Oracle(BlockMask resident, BlockMask faulted, BlockMask thrashing, int first, int outer, PrefetchOptions o)
    {
        BlockMask result = default;
        int faults = 0;
        for (int p = first; p < outer; p++)
        {
            faults += faulted.Get(p) ? 1 : 0;
        }
        if (!o.Enabled || faults < o.MinFaults)
        {
            return result;
        }
        var grown = new bool[512];
        for (int p = first; p < outer; p++)
        {
            if (!faulted.Get(p))
            {
                continue;
            }
            grown[p] = true;
            int b = p / o.BigPagePages * o.BigPagePages;
            int lo = Math.Max(b, first), hi = Math.Min(b + o.BigPagePages, outer);
            bool thrash = false;
            for (int q = lo; q < hi; q++)
            {
                thrash |= thrashing.Get(q);
            }
            if (!thrash)
            {
                for (int q = lo; q < hi; q++)
                {
                    grown[q] = true;
                }
            }
        }
        var prefix = new int[513];
        for (int q = 0; q < 512; q++)
        {
            prefix[q + 1] = prefix[q] + (q >= first && q < outer && (resident.Get(q) || grown[q]) ? 1 : 0);
        }
        var covered = new bool[512];
        for (int p = first; p < outer; p++)
        {
            if (!grown[p])
            {
                continue;
            }
            covered[p] = true;
            for (int level = 0; level < 10; level++)
            {
                int size = 1 << level, ns = p / size * size;
                int lo = Math.Max(ns, first), hi = Math.Min(ns + size, outer);
                int occ = prefix[hi] - prefix[lo];
                if (occ * 100 > o.ThresholdPercent * (hi - lo))
                {
                    for (int q = lo; q < hi; q++)
                    {
                        covered[q] = true;
                    }
                }
            }
        }
        for (int p = first; p < outer; p++)
        {
            if (covered[p] && !resident.Get(p) && !faulted.Get(p) && !thrashing.Get(p))
            {
                result.Set(p);
            }
        }
        return result;
    }

    [Fact]
    public void OneFaultInAnEmptyBlockPullsItsWhole64KibBigPage()
    {
        BlockMask faulted = MaskOf([37]);
        int n = DensityPrefetcher.Compute(default, faulted, default, 0, 512, PrefetchOptions.Default, out BlockMask pf);
        Assert.Equal(15, n);
        Assert.Equal(MaskOf(Enumerable.Range(32, 16).Where(p => p != 37)), pf);
    }

    [Fact]
    public void AMostlyResidentBlockIsFilledCompletely()
    {
        BlockMask resident = MaskOfRuns([(0, 300)]); // 58 % of the block
        BlockMask faulted = MaskOf([400]);
        DensityPrefetcher.Compute(resident, faulted, default, 0, 512, PrefetchOptions.Default, out BlockMask pf);
        BlockMask all = resident;
        all.Or(faulted);
        all.Or(pf);
        Assert.Equal(512, all.Count);
    }

    [Fact]
    public void HalfResidentIsNotAboveTheThresholdSoOnlyTheBigPageComes()
    {
        BlockMask resident = MaskOfRuns([(0, 240)]); // with the faulted big page: 256 of 512 = exactly 50 %
        BlockMask faulted = MaskOf([500]);
        int n = DensityPrefetcher.Compute(resident, faulted, default, 0, 512, PrefetchOptions.Default, out BlockMask pf);
        Assert.Equal(MaskOf(Enumerable.Range(496, 16).Where(p => p != 500)), pf);
        Assert.Equal(15, n);
    }

    [Fact]
    public void AThrashingPageStopsTheWideningOfItsBigPageAndIsNeverPrefetched()
    {
        BlockMask faulted = MaskOf([3]);
        BlockMask thrashing = MaskOf([9]);
        int n = DensityPrefetcher.Compute(default, faulted, thrashing, 0, 512, PrefetchOptions.Default, out BlockMask pf);
        Assert.Equal(0, n);
        Assert.True(pf.IsEmpty);
    }

    [Fact]
    public void DisabledPrefetchOrTooFewFaultsMigrateOnlyTheFaultedPages()
    {
        BlockMask faulted = MaskOf([1, 2]);
        Assert.Equal(0, DensityPrefetcher.Compute(default, faulted, default, 0, 512, PrefetchOptions.Default with { Enabled = false }, out _));
        Assert.Equal(0, DensityPrefetcher.Compute(default, faulted, default, 0, 512, PrefetchOptions.Default with { MinFaults = 3 }, out _));
    }

    [Fact]
    public void TheResultMatchesABruteForceStatementOfThePolicy()
    {
        Gen.Select(s_mask, s_mask, s_mask, s_window, s_options).Sample((resident, faulted, thrashing, window, o) =>
        {
            DensityPrefetcher.Compute(resident, faulted, thrashing, window.First, window.Outer, o, out BlockMask pf);
            Assert.Equal(Oracle(resident, faulted, thrashing, window.First, window.Outer, o), pf);
        }, iter: 1000);
    }

    [Fact]
    public void PrefetchedPagesAreInsideTheWindowAndNeverResidentFaultedOrThrashing()
    {
        Gen.Select(s_mask, s_mask, s_mask, s_window, s_options).Sample((resident, faulted, thrashing, window, o) =>
        {
            int n = DensityPrefetcher.Compute(resident, faulted, thrashing, window.First, window.Outer, o, out BlockMask pf);
            Assert.Equal(n, pf.Count);
            Assert.Equal(n, pf.CountRange(window.First, window.Outer));
            BlockMask clash = pf;
            BlockMask bad = resident;
            bad.Or(faulted);
            bad.Or(thrashing);
            clash.And(bad);
            Assert.True(clash.IsEmpty, $"prefetch {pf} overlaps {clash}");
        }, iter: 1000);
    }

    [Fact]
    public void EveryFaultedPageGetsItsWholeBigPageUnlessItThrashes()
    {
        Gen.Select(s_mask, s_mask, s_mask, s_window).Sample((resident, faulted, thrashing, window) =>
        {
            var o = PrefetchOptions.Default;
            DensityPrefetcher.Compute(resident, faulted, thrashing, window.First, window.Outer, o, out BlockMask pf);
            for (int p = faulted.NextSet(window.First); p < window.Outer; p = faulted.NextSet(p + 1))
            {
                int lo = Math.Max(p & ~15, window.First), hi = Math.Min((p & ~15) + 16, window.Outer);
                if (thrashing.AnyInRange(lo, hi))
                {
                    continue;
                }
                for (int q = lo; q < hi; q++)
                {
                    Assert.True(pf.Get(q) || resident.Get(q) || faulted.Get(q), $"page {q} of the big page of fault {p} is left behind");
                }
            }
        }, iter: 1000);
    }

    [Fact]
    public void MoreResidencyNeverShrinksWhatEndsUpResident()
    {
        Gen.Select(s_mask, s_mask, s_mask, s_options).Sample((resident, extra, faulted, o) =>
        {
            DensityPrefetcher.Compute(resident, faulted, default, 0, 512, o, out BlockMask pf1);
            BlockMask more = resident;
            more.Or(extra);
            DensityPrefetcher.Compute(more, faulted, default, 0, 512, o, out BlockMask pf2);
            BlockMask after1 = resident;
            after1.Or(faulted);
            after1.Or(pf1);
            BlockMask after2 = more;
            after2.Or(faulted);
            after2.Or(pf2);
            after1.AndNot(after2);
            Assert.True(after1.IsEmpty, $"pages {after1} were resident with less residency but not with more");
        }, iter: 1000);
    }

    [Fact]
    public void AtThresholdOneHundredOnlyTheBigPagesAreAdded()
    {
        Gen.Select(s_mask, s_mask).Sample((resident, faulted) =>
        {
            var o = PrefetchOptions.Default with { ThresholdPercent = 100 };
            DensityPrefetcher.Compute(resident, faulted, default, 0, 512, o, out BlockMask pf);
            for (int p = pf.NextSet(0); p < 512; p = pf.NextSet(p + 1))
            {
                Assert.True(faulted.AnyInRange(p & ~15, (p & ~15) + 16), $"page {p} was prefetched without a fault in its big page");
            }
        }, iter: 1000);
    }
}
