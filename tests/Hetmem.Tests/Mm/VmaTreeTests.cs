using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Hetmem.Tests.Mm;

public class VmaTreeTests(ITestOutputHelper output)
{
    private const ulong P = 4096;

    /// <summary>The reference: a sorted list and linear scans (what VmaTree replaced).</summary>
    private static bool NaiveGap(List<Vma> sorted, ulong length, ulong align, ulong low, ulong high, out ulong address)
    {
        address = 0;
        for (int i = sorted.Count; i >= 0; i--)
        {
            ulong upper = Math.Min(i < sorted.Count ? sorted[i].Start : high, high);
            ulong lower = Math.Max(i > 0 ? sorted[i - 1].End : 0, low);
            if (upper > lower && upper - lower >= length)
            {
                ulong candidate = (upper - length) & ~(align - 1);
                if (candidate >= lower)
                {
                    address = candidate;
                    return true;
                }
            }
        }
        return false;
    }

    [Fact]
    public void RandomInsertsRemovesAndQueriesAgreeWithASortedList()
    {
        int seed = Seed.Get(output, nameof(RandomInsertsRemovesAndQueriesAgreeWithASortedList));
        var rng = new Random(seed);
        using var mem = new PhysicalMemory(4 * 1024 * 1024);
        var mm = new AddressSpace(mem);
        var tree = new VmaTree();
        var list = new List<Vma>();
        for (int step = 0; step < 4000; step++)
        {
            if (list.Count == 0 || rng.Next(3) != 0)
            {
                ulong start = (ulong)rng.Next(16, 1 << 16) * P;
                ulong end = start + (ulong)rng.Next(1, 64) * P;
                if (list.Any(v => v.Start < end && start < v.End))
                {
                    Assert.Throws<InvalidOperationException>(() => tree.Insert(new Vma(mm, start, end, VmFlags.Read, VmaKind.Anonymous, null, 0, null)));
                    continue;
                }
                var vma = new Vma(mm, start, end, VmFlags.Read, VmaKind.Anonymous, null, 0, null);
                tree.Insert(vma);
                list.Add(vma);
                list.Sort((a, b) => a.Start.CompareTo(b.Start));
            }
            else
            {
                Vma victim = list[rng.Next(list.Count)];
                tree.Remove(victim);
                list.Remove(victim);
            }
            if (step % 50 == 0)
            {
                tree.CheckInvariants();
            }
            Assert.Equal(list.Count, tree.Count);
            ulong probe = (ulong)rng.Next(0, 1 << 17) * P / 2;
            Vma? expectFind = list.FirstOrDefault(v => v.Start <= probe && probe < v.End);
            Assert.Same(expectFind, tree.Find(probe));
            int idx = list.FindIndex(v => v.End > probe);
            Assert.Equal(idx < 0 ? list.Count : idx, tree.IndexOfFirstEndingAbove(probe));
            Assert.Same(idx < 0 ? null : list[idx], tree.FindFirstEndingAbove(probe));
            Vma? lastBelow = list.LastOrDefault(v => v.Start < probe);
            Assert.Same(lastBelow, tree.FindLastStartingBelow(probe));
            if (list.Count > 0)
            {
                int k = rng.Next(list.Count);
                Assert.Same(list[k], tree.All[k]);
            }
            ulong length = (ulong)rng.Next(1, 200) * P;
            ulong align = rng.Next(4) == 0 ? Page.PmdSize : P;
            ulong low = (ulong)rng.Next(0, 1 << 15) * P;
            ulong high = low + (ulong)rng.Next(0, 1 << 16) * P;
            bool expect = NaiveGap(list, length, align, low, high, out ulong expectAt);
            Assert.Equal(expect, tree.TryFindGapTopDown(length, align, low, high, out ulong? at));
            if (expect)
            {
                Assert.Equal(expectAt, at);
            }
        }
        Assert.Equal(list, tree.All);
        Assert.Equal(list.Where(v => v.Start < 1000 * P && 500 * P < v.End), tree.Intersecting(500 * P, 1000 * P));
        mm.Exit();
    }

    [Fact]
    public void TheGapSearchFindsTheHighestFitAndHonoursAlignmentAndBounds()
    {
        using var mem = new PhysicalMemory(4 * 1024 * 1024);
        var mm = new AddressSpace(mem);
        var tree = new VmaTree();
        Assert.True(tree.TryFindGapTopDown(P, P, 0, 100 * P, out ulong? a));
        Assert.Equal(99 * P, a);
        tree.Insert(new Vma(mm, 90 * P, 100 * P, VmFlags.Read, VmaKind.Anonymous, null, 0, null));
        tree.Insert(new Vma(mm, 10 * P, 85 * P, VmFlags.Read, VmaKind.Anonymous, null, 0, null));
        Assert.True(tree.TryFindGapTopDown(5 * P, P, 0, 100 * P, out a));
        Assert.Equal(85 * P, a);                                   // exactly the hole between the two
        Assert.True(tree.TryFindGapTopDown(6 * P, P, 0, 100 * P, out a));
        Assert.Equal(4 * P, a);                                    // only below the first fits
        Assert.False(tree.TryFindGapTopDown(11 * P, P, 0, 100 * P, out _));
        Assert.True(tree.TryFindGapTopDown(2 * P, 4 * P, 0, 100 * P, out a));
        Assert.Equal(88 * P, a);                                   // the highest 4-page-aligned start in the hole
        Assert.True(tree.TryFindGapTopDown(P, P, 200 * P, 300 * P, out a));
        Assert.Equal(299 * P, a);
        Assert.False(tree.TryFindGapTopDown(P, P, 20 * P, 80 * P, out _));
        mm.Exit();
    }

    [Fact]
    public void ManyMappingsKeepTheTreeShallowEnoughForLogarithmicLookups()
    {
        using var mem = new PhysicalMemory(4 * 1024 * 1024);
        var mm = new AddressSpace(mem);
        var tree = new VmaTree();
        for (ulong i = 0; i < 20000; i++)
        {
            tree.Insert(new Vma(mm, (i * 2 + 16) * P, (i * 2 + 17) * P, VmFlags.Read, VmaKind.Anonymous, null, 0, null));
        }
        tree.CheckInvariants();
        Assert.True(tree.Depth <= 64, $"depth {tree.Depth} for 20000 VMAs");
        Assert.False(tree.TryFindGapTopDown(2 * P, P, 16 * P, 40016 * P, out _));
        Assert.True(tree.TryFindGapTopDown(P, P, 16 * P, 40016 * P, out ulong? a));
        Assert.Equal(40015 * P, a);
        mm.Exit();
    }
}
