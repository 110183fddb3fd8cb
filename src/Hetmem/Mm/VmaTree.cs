using System.Diagnostics.CodeAnalysis;

namespace Hetmem.Mm;

/// <summary>
/// The VMA set of an address space, ordered by start address (kernel: the maple tree). Lookup is a binary
/// search (O(log n)); free-gap search walks gaps from the top of the search window down.
/// </summary>
/// <remarks>Locking: read under the mmap lock (either side); modified only under the mmap write lock.</remarks>
public sealed class VmaTree
{
    private readonly List<Vma> _vmas = [];

    /// <summary>Number of VMAs.</summary>
    public int Count => _vmas.Count;

    /// <summary>The VMAs in address order.</summary>
    public IReadOnlyList<Vma> All => _vmas;

    /// <summary>Index of the first VMA whose end is above <paramref name="address"/> (kernel: find_vma), or Count.</summary>
    public int IndexOfFirstEndingAbove(ulong address)
    {
        int lo = 0, hi = _vmas.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (_vmas[mid].End <= address)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid;
            }
        }
        return lo;
    }

    /// <summary>The VMA containing <paramref name="address"/> (kernel: vma_lookup), or null.</summary>
    public Vma? Find(ulong address)
    {
        int i = IndexOfFirstEndingAbove(address);
        if (i < _vmas.Count && _vmas[i].Start <= address)
        {
            return _vmas[i];
        }
        return null;
    }

    /// <summary>The first VMA ending above <paramref name="address"/> (kernel: find_vma), or null.</summary>
    public Vma? FindFirstEndingAbove(ulong address)
    {
        int i = IndexOfFirstEndingAbove(address);
        return i < _vmas.Count ? _vmas[i] : null;
    }

    /// <summary>VMAs intersecting [start, end), in order.</summary>
    public IEnumerable<Vma> Intersecting(ulong start, ulong end)
    {
        for (int i = IndexOfFirstEndingAbove(start); i < _vmas.Count && _vmas[i].Start < end; i++)
        {
            yield return _vmas[i];
        }
    }

    /// <summary>Copies the VMAs intersecting [start, end) into a new list (safe to modify the tree afterwards).</summary>
    public List<Vma> Snapshot(ulong start, ulong end) => [.. Intersecting(start, end)];

    /// <summary>True when no VMA intersects [start, end).</summary>
    public bool IsFree(ulong start, ulong end)
    {
        int i = IndexOfFirstEndingAbove(start);
        return i >= _vmas.Count || _vmas[i].Start >= end;
    }

    /// <summary>Inserts a VMA that overlaps nothing.</summary>
    public void Insert(Vma vma)
    {
        int i = IndexOfFirstEndingAbove(vma.Start);
        if (i < _vmas.Count && _vmas[i].Start < vma.End)
        {
            throw new InvalidOperationException($"VMA {vma} overlaps {_vmas[i]}");
        }
        _vmas.Insert(i, vma);
    }

    /// <summary>Removes a VMA.</summary>
    public void Remove(Vma vma)
    {
        int i = IndexOfFirstEndingAbove(vma.Start);
        if (i >= _vmas.Count || _vmas[i] != vma)
        {
            throw new InvalidOperationException($"VMA {vma} is not in the tree");
        }
        _vmas.RemoveAt(i);
    }

    /// <summary>
    /// Finds the highest free range of <paramref name="length"/> bytes, aligned to <paramref name="align"/>, inside
    /// [<paramref name="low"/>, <paramref name="high"/>) (kernel: unmapped_area_topdown).
    /// </summary>
    public bool TryFindGapTopDown(ulong length, ulong align, ulong low, ulong high, [NotNullWhen(true)] out ulong? address)
    {
        address = null;
        ulong gapEnd = high;
        for (int i = IndexOfFirstEndingAbove(high) - 1 + 1; i >= 0; i--)
        {
            // Gap between VMA i-1's end and min(VMA i's start, high).
            ulong upper = i < _vmas.Count ? Math.Min(_vmas[i].Start, gapEnd) : gapEnd;
            ulong lower = i > 0 ? Math.Max(_vmas[i - 1].End, low) : low;
            if (upper > lower && upper - lower >= length)
            {
                ulong candidate = (upper - length) & ~(align - 1);
                if (candidate >= lower)
                {
                    address = candidate;
                    return true;
                }
            }
            if (i > 0 && _vmas[i - 1].End <= low)
            {
                break;
            }
        }
        return false;
    }
}
