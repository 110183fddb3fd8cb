using System.Collections;
using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;

namespace Hetmem.Mm;

/// <summary>
/// The VMA set of an address space, ordered by start address (kernel: the maple tree, and before it the
/// augmented rb-tree with <c>rb_subtree_gap</c>; gVisor: the segment set with gap tracking). A treap whose nodes
/// carry their subtree's size, lowest start, highest end and largest gap between neighbouring VMAs, so lookup,
/// rank/select and the free-gap search are all O(log n) (expected).
/// </summary>
/// <remarks>Locking: read under the mmap lock (either side); modified only under the mmap write lock. Lookups
/// (<see cref="Find"/>, <see cref="FindFirstEndingAbove"/>) allocate nothing.</remarks>
public sealed class VmaTree
{
    private sealed class Node(Vma vma, uint priority)
    {
        public readonly Vma Vma = vma;          // immutable
        public readonly uint Priority = priority; // immutable; heap order (max at the root)
        public Node? Left;
        public Node? Right;
        public int Size = 1;                    // nodes in this subtree
        public ulong MinStart = vma.Start;      // start of the subtree's first VMA
        public ulong MaxEnd = vma.End;          // end of the subtree's last VMA
        public ulong MaxGap;                    // largest hole between two neighbouring VMAs of the subtree
    }

    private Node? _root;       // guarded by the mmap lock (write to change)
    private uint _rng = 0x9E3779B9; // guarded by the mmap write lock; xorshift state for priorities
    private readonly AllView _all;

    /// <summary>Creates an empty set.</summary>
    public VmaTree() => _all = new AllView(this);

    /// <summary>Number of VMAs.</summary>
    public int Count => _root?.Size ?? 0;

    /// <summary>The VMAs in address order (indexing is O(log n), enumeration O(n)).</summary>
    public IReadOnlyList<Vma> All => _all;

    /// <summary>Index of the first VMA whose end is above <paramref name="address"/> (kernel: find_vma), or Count.</summary>
    public int IndexOfFirstEndingAbove(ulong address)
    {
        int rank = 0;
        int result = Count;
        Node? n = _root;
        while (n is not null)
        {
            int leftSize = n.Left?.Size ?? 0;
            if (n.Vma.End > address)
            {
                result = rank + leftSize;
                n = n.Left;
            }
            else
            {
                rank += leftSize + 1;
                n = n.Right;
            }
        }
        return result;
    }

    /// <summary>The VMA containing <paramref name="address"/> (kernel: vma_lookup), or null.</summary>
    public Vma? Find(ulong address)
    {
        Vma? v = FindFirstEndingAbove(address);
        return v is not null && v.Start <= address ? v : null;
    }

    /// <summary>The first VMA ending above <paramref name="address"/> (kernel: find_vma), or null.</summary>
    public Vma? FindFirstEndingAbove(ulong address)
    {
        Vma? best = null;
        Node? n = _root;
        while (n is not null)
        {
            if (n.Vma.End > address)
            {
                best = n.Vma;
                n = n.Left;
            }
            else
            {
                n = n.Right;
            }
        }
        return best;
    }

    /// <summary>The last VMA starting below <paramref name="address"/> (kernel: find_vma_prev's prev), or null.</summary>
    public Vma? FindLastStartingBelow(ulong address)
    {
        Vma? best = null;
        Node? n = _root;
        while (n is not null)
        {
            if (n.Vma.Start < address)
            {
                best = n.Vma;
                n = n.Right;
            }
            else
            {
                n = n.Left;
            }
        }
        return best;
    }

    /// <summary>The VMA before <paramref name="vma"/> (kernel: vma_prev), or null.</summary>
    public Vma? Prev(Vma vma) => FindLastStartingBelow(vma.Start);

    /// <summary>The VMA after <paramref name="vma"/> (kernel: vma_next), or null.</summary>
    public Vma? Next(Vma vma) => FindFirstEndingAbove(vma.End);

    /// <summary>VMAs intersecting [start, end), in order. Each step is a fresh O(log n) lookup, so the tree may change between steps.</summary>
    public IEnumerable<Vma> Intersecting(ulong start, ulong end)
    {
        Vma? v = FindFirstEndingAbove(start);
        while (v is not null && v.Start < end)
        {
            yield return v;
            v = FindFirstEndingAbove(v.End);
        }
    }

    /// <summary>Copies the VMAs intersecting [start, end) into a new list (safe to modify the tree afterwards).</summary>
    public List<Vma> Snapshot(ulong start, ulong end) => [.. Intersecting(start, end)];

    /// <summary>True when no VMA intersects [start, end).</summary>
    public bool IsFree(ulong start, ulong end)
    {
        Vma? v = FindFirstEndingAbove(start);
        return v is null || v.Start >= end;
    }

    /// <summary>Inserts a VMA that overlaps nothing.</summary>
    /// <exception cref="InvalidOperationException">When the VMA is empty or overlaps a VMA of the set.</exception>
    public void Insert(Vma vma)
    {
        ArgumentNullException.ThrowIfNull(vma);
        if (vma.End <= vma.Start)
        {
            throw new InvalidOperationException($"VMA {vma} is empty");
        }
        Vma? clash = FindFirstEndingAbove(vma.Start);
        if (clash is not null && clash.Start < vma.End)
        {
            throw new InvalidOperationException($"VMA {vma} overlaps {clash}");
        }
        var node = new Node(vma, NextPriority());
        Split(_root, vma.Start, out Node? l, out Node? r);
        _root = Merge(Merge(l, node), r);
    }

    /// <summary>Removes a VMA.</summary>
    /// <exception cref="InvalidOperationException">When this exact VMA object is not in the set.</exception>
    public void Remove(Vma vma)
    {
        ArgumentNullException.ThrowIfNull(vma);
        Vma? found = Find(vma.Start);
        if (!ReferenceEquals(found, vma))
        {
            throw new InvalidOperationException($"VMA {vma} is not in the tree");
        }
        Split(_root, vma.Start, out Node? l, out Node? rest);
        Split(rest, vma.Start + 1, out Node? mid, out Node? r);
        Debug.Assert(mid is not null && mid.Size == 1 && ReferenceEquals(mid.Vma, vma));
        _root = Merge(l, r);
    }

    /// <summary>
    /// Finds the highest free range of <paramref name="length"/> bytes, aligned to <paramref name="align"/> (a power
    /// of two), inside [<paramref name="low"/>, <paramref name="high"/>) (kernel: unmapped_area_topdown). O(log n):
    /// subtrees whose largest hole is smaller than <paramref name="length"/> are skipped.
    /// </summary>
    public bool TryFindGapTopDown(ulong length, ulong align, ulong low, ulong high, [NotNullWhen(true)] out ulong? address)
    {
        address = null;
        if (length == 0 || high <= low || high - low < length)
        {
            return false;
        }
        if (_root is null)
        {
            return TryGap(0, high, length, align, low, high, out address) == GapResult.Found;
        }
        // Above the last VMA, then the holes between VMAs from the top, then below the first VMA.
        GapResult r = TryGap(_root.MaxEnd, ulong.MaxValue, length, align, low, high, out address);
        if (r == GapResult.NotFound)
        {
            r = SearchTopDown(_root, length, align, low, high, out address);
        }
        if (r == GapResult.NotFound)
        {
            r = TryGap(0, _root.MinStart, length, align, low, high, out address);
        }
        return r == GapResult.Found;
    }

    private enum GapResult
    {
        NotFound,
        Found,
        Stop,   // the holes left to visit all end at or below `low`
    }

    private static GapResult TryGap(ulong gapLo, ulong gapHi, ulong length, ulong align, ulong low, ulong high, out ulong? address)
    {
        address = null;
        if (gapHi <= low)
        {
            return GapResult.Stop;
        }
        ulong lower = Math.Max(gapLo, low);
        ulong upper = Math.Min(gapHi, high);
        if (upper > lower && upper - lower >= length)
        {
            ulong candidate = (upper - length) & ~(align - 1);
            if (candidate >= lower)
            {
                address = candidate;
                return GapResult.Found;
            }
        }
        return GapResult.NotFound;
    }

    private static GapResult SearchTopDown(Node? n, ulong length, ulong align, ulong low, ulong high, out ulong? address)
    {
        address = null;
        if (n is null || n.MaxGap < length || n.MinStart >= high)
        {
            return GapResult.NotFound;
        }
        if (n.MaxEnd <= low)
        {
            return GapResult.Stop;
        }
        GapResult r = SearchTopDown(n.Right, length, align, low, high, out address);
        if (r != GapResult.NotFound)
        {
            return r;
        }
        if (n.Right is not null)
        {
            r = TryGap(n.Vma.End, n.Right.MinStart, length, align, low, high, out address);
            if (r != GapResult.NotFound)
            {
                return r;
            }
        }
        if (n.Left is not null)
        {
            r = TryGap(n.Left.MaxEnd, n.Vma.Start, length, align, low, high, out address);
            if (r != GapResult.NotFound)
            {
                return r;
            }
        }
        return SearchTopDown(n.Left, length, align, low, high, out address);
    }

    private uint NextPriority()
    {
        uint x = _rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        _rng = x;
        return x;
    }

    private static void Update(Node n)
    {
        Node? l = n.Left, r = n.Right;
        n.Size = 1 + (l?.Size ?? 0) + (r?.Size ?? 0);
        n.MinStart = l?.MinStart ?? n.Vma.Start;
        n.MaxEnd = r?.MaxEnd ?? n.Vma.End;
        ulong gap = 0;
        if (l is not null)
        {
            gap = Math.Max(l.MaxGap, n.Vma.Start - l.MaxEnd);
        }
        if (r is not null)
        {
            gap = Math.Max(gap, Math.Max(r.MaxGap, r.MinStart - n.Vma.End));
        }
        n.MaxGap = gap;
    }

    /// <summary>Splits <paramref name="t"/> into VMAs starting below <paramref name="key"/> and the rest.</summary>
    private static void Split(Node? t, ulong key, out Node? left, out Node? right)
    {
        if (t is null)
        {
            left = right = null;
            return;
        }
        if (t.Vma.Start < key)
        {
            Split(t.Right, key, out Node? l, out right);
            t.Right = l;
            Update(t);
            left = t;
        }
        else
        {
            Split(t.Left, key, out left, out Node? r);
            t.Left = r;
            Update(t);
            right = t;
        }
    }

    /// <summary>Joins two treaps; every VMA of <paramref name="a"/> lies below every VMA of <paramref name="b"/>.</summary>
    private static Node? Merge(Node? a, Node? b)
    {
        if (a is null)
        {
            return b;
        }
        if (b is null)
        {
            return a;
        }
        if (a.Priority >= b.Priority)
        {
            a.Right = Merge(a.Right, b);
            Update(a);
            return a;
        }
        b.Left = Merge(a, b.Left);
        Update(b);
        return b;
    }

    private Vma Select(int index)
    {
        if ((uint)index >= (uint)Count)
        {
            throw new ArgumentOutOfRangeException(nameof(index), $"index {index} is outside 0..{Count - 1}");
        }
        Node n = _root!;
        while (true)
        {
            int leftSize = n.Left?.Size ?? 0;
            if (index < leftSize)
            {
                n = n.Left!;
            }
            else if (index == leftSize)
            {
                return n.Vma;
            }
            else
            {
                index -= leftSize + 1;
                n = n.Right!;
            }
        }
    }

    private IEnumerator<Vma> InOrder()
    {
        var stack = new Stack<Node>();
        Node? n = _root;
        while (n is not null || stack.Count > 0)
        {
            while (n is not null)
            {
                stack.Push(n);
                n = n.Left;
            }
            n = stack.Pop();
            yield return n.Vma;
            n = n.Right;
        }
    }

    /// <summary>Height of the treap (tests: expected O(log n)).</summary>
    internal int Depth => DepthOf(_root);

    private static int DepthOf(Node? n) => n is null ? 0 : 1 + Math.Max(DepthOf(n.Left), DepthOf(n.Right));

    /// <summary>Checks the treap's order, heap and augmentation invariants (tests and debug checks).</summary>
    /// <exception cref="InvalidOperationException">When an invariant is broken.</exception>
    internal void CheckInvariants()
    {
        Check(_root, 0, ulong.MaxValue);
    }

    private static void Check(Node? n, ulong lo, ulong hi)
    {
        if (n is null)
        {
            return;
        }
        if (n.Vma.Start < lo || n.Vma.End > hi || n.Vma.End <= n.Vma.Start)
        {
            throw new InvalidOperationException($"VMA {n.Vma} is out of order (expected inside [0x{lo:x}, 0x{hi:x}))");
        }
        if (n.Left is not null && n.Left.Priority > n.Priority || n.Right is not null && n.Right.Priority > n.Priority)
        {
            throw new InvalidOperationException($"heap order broken at {n.Vma}");
        }
        Check(n.Left, lo, n.Vma.Start);
        Check(n.Right, n.Vma.End, hi);
        ulong size = (ulong)n.Size, minStart = n.MinStart, maxEnd = n.MaxEnd, maxGap = n.MaxGap;
        Update(n);
        if (size != (ulong)n.Size || minStart != n.MinStart || maxEnd != n.MaxEnd || maxGap != n.MaxGap)
        {
            throw new InvalidOperationException($"stale augmentation at {n.Vma}");
        }
    }

    /// <summary>A read-only, indexable view of the VMAs in order.</summary>
    private sealed class AllView(VmaTree tree) : IReadOnlyList<Vma>
    {
        public Vma this[int index] => tree.Select(index);

        public int Count => tree.Count;

        public IEnumerator<Vma> GetEnumerator() => tree.InOrder();

        IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
    }
}
