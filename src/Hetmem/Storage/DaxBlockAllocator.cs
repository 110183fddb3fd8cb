using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Hetmem.Storage;

/// <summary>
/// Free-space map of a <see cref="DaxFileSystem"/>: sorted, coalesced free extents of namespace blocks (kernel: the
/// ext4 multiblock allocator's buddy bitmaps, much simplified). Rebuilt at mount from the file table.
/// </summary>
/// <remarks>Not thread safe: the owning file system calls it under its allocation lock.</remarks>
internal sealed class DaxBlockAllocator
{
    private readonly List<(ulong Start, ulong End)> _free = []; // sorted by Start; disjoint and never adjacent

    /// <summary>Creates a map where [<paramref name="start"/>, <paramref name="end"/>) is free.</summary>
    public DaxBlockAllocator(ulong start, ulong end)
    {
        if (end > start)
        {
            _free.Add((start, end));
            FreeBlocks = end - start;
        }
    }

    /// <summary>Free blocks.</summary>
    public ulong FreeBlocks { get; private set; }

    /// <summary>Number of free extents (fragmentation).</summary>
    public int FreeExtents => _free.Count;

    /// <summary>True when every block of [<paramref name="start"/>, +<paramref name="count"/>) is free.</summary>
    public bool IsFree(ulong start, ulong count)
    {
        int i = FindContaining(start);
        return i >= 0 && start + count <= _free[i].End;
    }

    /// <summary>Marks [<paramref name="start"/>, +<paramref name="count"/>) used; false (and no change) unless all of it is free.</summary>
    public bool Take(ulong start, ulong count)
    {
        int i = FindContaining(start);
        if (i < 0 || count == 0 || start + count > _free[i].End || start + count < start)
        {
            return false;
        }
        (ulong s, ulong e) = _free[i];
        ulong end = start + count;
        if (s == start && e == end)
        {
            _free.RemoveAt(i);
        }
        else if (s == start)
        {
            _free[i] = (end, e);
        }
        else if (e == end)
        {
            _free[i] = (s, start);
        }
        else
        {
            _free[i] = (s, start);
            _free.Insert(i + 1, (end, e));
        }
        FreeBlocks -= count;
        return true;
    }

    /// <summary>
    /// Allocates <paramref name="count"/> blocks starting at a multiple of <paramref name="align"/>: at
    /// <paramref name="goal"/> when it is aligned and free, else at the lowest aligned free run.
    /// </summary>
    public bool TryAllocateAligned(ulong count, ulong align, ulong goal, out ulong start)
    {
        if (goal % align == 0 && IsFree(goal, count))
        {
            start = goal;
            return Take(goal, count);
        }
        return TryAllocateColoured(count, 0, align, out start);
    }

    /// <summary>Allocates <paramref name="count"/> blocks at the lowest free start whose remainder modulo <paramref name="align"/> is <paramref name="colour"/>.</summary>
    public bool TryAllocateColoured(ulong count, ulong colour, ulong align, out ulong start)
    {
        Debug.Assert(colour < align);
        foreach ((ulong s, ulong e) in CollectionsMarshal.AsSpan(_free))
        {
            ulong x = s - s % align + colour;
            if (x < s)
            {
                x += align;
            }
            if (x + count <= e && x + count > x)
            {
                start = x;
                return Take(x, count);
            }
        }
        start = 0;
        return false;
    }

    /// <summary>Allocates up to <paramref name="max"/> blocks starting exactly at <paramref name="start"/>; returns how many (0 when that block is used).</summary>
    public ulong TryAllocateAt(ulong start, ulong max)
    {
        int i = FindContaining(start);
        if (i < 0 || max == 0)
        {
            return 0;
        }
        ulong got = Math.Min(max, _free[i].End - start);
        Take(start, got);
        return got;
    }

    /// <summary>
    /// Allocates up to <paramref name="max"/> contiguous blocks anywhere: the first free extent that can hold them
    /// all, else the largest free extent whole. Returns how many (0 when nothing is free).
    /// </summary>
    public ulong AllocateAny(ulong max, out ulong start)
    {
        start = 0;
        int best = -1;
        ulong bestLen = 0;
        Span<(ulong Start, ulong End)> free = CollectionsMarshal.AsSpan(_free);
        for (int i = 0; i < free.Length; i++)
        {
            ulong len = free[i].End - free[i].Start;
            if (len >= max)
            {
                best = i;
                bestLen = max;
                break;
            }
            if (len > bestLen)
            {
                best = i;
                bestLen = len;
            }
        }
        if (best < 0 || max == 0)
        {
            return 0;
        }
        start = free[best].Start;
        Take(start, bestLen);
        return bestLen;
    }

    /// <summary>Returns [<paramref name="start"/>, +<paramref name="count"/>) to the free map, merging neighbours.</summary>
    /// <exception cref="InvalidOperationException">When part of the range is already free (a double free).</exception>
    public void Free(ulong start, ulong count)
    {
        if (count == 0)
        {
            return;
        }
        ulong end = start + count;
        // Index of the first free extent starting after `start`.
        int lo = 0;
        int hi = _free.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (_free[mid].Start <= start)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid;
            }
        }
        int next = lo;
        int prev = lo - 1;
        if (prev >= 0 && _free[prev].End > start || next < _free.Count && _free[next].Start < end)
        {
            throw new InvalidOperationException($"DAX blocks [{start}, {end}) are already partly free (double free)");
        }
        bool joinPrev = prev >= 0 && _free[prev].End == start;
        bool joinNext = next < _free.Count && _free[next].Start == end;
        if (joinPrev && joinNext)
        {
            _free[prev] = (_free[prev].Start, _free[next].End);
            _free.RemoveAt(next);
        }
        else if (joinPrev)
        {
            _free[prev] = (_free[prev].Start, end);
        }
        else if (joinNext)
        {
            _free[next] = (start, _free[next].End);
        }
        else
        {
            _free.Insert(next, (start, end));
        }
        FreeBlocks += count;
    }

    /// <summary>Index of the free extent containing <paramref name="block"/>, or -1.</summary>
    private int FindContaining(ulong block)
    {
        int lo = 0;
        int hi = _free.Count - 1;
        int found = -1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            if (_free[mid].Start <= block)
            {
                found = mid;
                lo = mid + 1;
            }
            else
            {
                hi = mid - 1;
            }
        }
        return found >= 0 && block < _free[found].End ? found : -1;
    }
}
