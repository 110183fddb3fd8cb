using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Mm;

/// <summary>munmap (kernel: do_vmi_munmap, unmap_region).</summary>
public sealed partial class AddressSpace
{
    /// <summary>Removes the mappings of [<paramref name="address"/>, +<paramref name="length"/>) (kernel: munmap). Unmapped holes are fine.</summary>
    /// <exception cref="MmException">EINVAL for an unaligned address, a zero length, a range beyond user space, or a hugetlb VMA cut off its huge-page boundary.</exception>
    public void Munmap(ulong address, ulong length)
    {
        ulong len = ValidateRange(address, length, "munmap");
        using (MmapLock.Write())
        {
            ThrowIfDead();
            for (Vma? v = Vmas.FindFirstEndingAbove(address); v is not null && v.Start < address + len; v = Vmas.Next(v))
            {
                if (v.Kind == VmaKind.HugeTlb)
                {
                    ulong hs = Page.Bytes(v.HugeOrder);
                    if (address > v.Start && !Page.IsAligned(address, hs) || address + len < v.End && !Page.IsAligned(address + len, hs))
                    {
                        MmException.Throw(Errno.EINVAL, $"munmap of [0x{address:x}, +0x{len:x}) splits the hugetlb VMA {v} off a huge-page boundary");
                    }
                }
            }
            UnmapLocked(address, address + len);
        }
    }

    /// <summary>Validates an (address, length) pair the way munmap/mprotect/madvise do and returns the page-aligned length.</summary>
    private static ulong ValidateRange(ulong address, ulong length, string call)
    {
        if (!Page.IsAligned(address, Page.Size))
        {
            MmException.Throw(Errno.EINVAL, $"{call}: address 0x{address:x} is not page aligned");
        }
        ulong len = Page.AlignUp(length, Page.Size);
        if (length == 0 || len == 0 || len > TaskSize || address > TaskSize - len)
        {
            MmException.Throw(Errno.EINVAL, $"{call}: [0x{address:x}, +0x{length:x}) is empty or beyond user space");
        }
        return len;
    }

    private readonly List<Vma> _unmapVictims = [];   // guarded by the mmap write lock; reused so munmap allocates nothing

    /// <summary>
    /// Unmaps [start, end) with the mmap write lock held: splits boundary VMAs, sends one UNMAP bracket per VMA
    /// piece, zaps, shoots down TLBs, frees pages and page tables.
    /// </summary>
    internal void UnmapLocked(ulong start, ulong end)
    {
        List<Vma> victims = _unmapVictims;
        victims.Clear();
        SplitForRangeLocked(start, end, victims);
        if (victims.Count == 0)
        {
            return;
        }
        Vma? before = Vmas.Prev(victims[0]);
        ulong floor = before?.End ?? 0;
        foreach (Vma v in victims)
        {
            Vmas.Remove(v);
            v.File?.Mappings.Remove(v);
        }
        Vma? after = Vmas.FindFirstEndingAbove(start);
        ulong ceiling = after?.Start ?? TaskSize + 1;
        MmuGather g = MmuGather.Rent();
        foreach (Vma v in victims)
        {
            var range = new MmuNotifierRange(this, v.Start, v.End, MmuNotifierEvent.Unmap);
            Notifiers.InvalidateRangeStart(range);
            ZapRange(v, v.Start, v.End, g);
            if (g.NeedFlush)
            {
                FlushTlb();   // before the end callback: a mirror re-faulting after end must not see a stale CPU TLB entry
                g.NeedFlush = false;
            }
            Notifiers.InvalidateRangeEnd(range);
            ReleaseReservation(v);
        }
        FinishGather(g);
        FreePgTables(start, end, floor, ceiling);
        foreach (Vma v in victims)
        {
            ReleaseFile(v.File, 1);
        }
        victims.Clear();
    }

    private static void ReleaseReservation(Vma v)
    {
        if (v.Reservation is not { } res || v.File is not HugetlbFile hf)
        {
            return;
        }
        long pages = (long)(v.Length >> (Page.Shift + v.HugeOrder));
        long take;
        long cur;
        do
        {
            cur = Interlocked.Read(ref res.Remaining);
            take = Math.Min(cur, pages);
        }
        while (take > 0 && Interlocked.CompareExchange(ref res.Remaining, cur - take, cur) != cur);
        if (take > 0)
        {
            hf.Pool.Unreserve((ulong)take);
        }
    }
}
