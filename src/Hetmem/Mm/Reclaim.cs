using Hetmem.Diagnostics;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Mm;

/// <summary>
/// Page reclaim (kernel: mm/vmscan.c, MADV_PAGEOUT): anonymous pages mapped once go to swap, clean file pages
/// mapped once are unmapped and dropped when the page cache lets go of them. Every unmap happens inside a
/// CLEAR bracket, before the frame is freed.
/// </summary>
public static unsafe class Reclaim
{
    /// <summary>Reclaims what it can in [start, end) of <paramref name="vma"/> (kernel: madvise_pageout). Returns pages reclaimed. Mmap lock held.</summary>
    public static int PageOutRange(AddressSpace space, Vma vma, ulong start, ulong end)
    {
        using TraceSpan span = TraceLog.Span(TraceCategory.Memory, "reclaim_pageout", TraceArg.Address(start), TraceArg.Pages((long)((end - start) >> Page.Shift)));
        if (vma.Kind is VmaKind.HugeTlb or VmaKind.PfnMap or VmaKind.MixedMap or VmaKind.Dax)
        {
            return 0;
        }
        int reclaimed = 0;
        PhysicalMemory mem = space.Memory;
        for (ulong a = start; a < end; a += Page.Size)
        {
            Pte e = space.Lookup(a, out int order, out ulong* slot);
            if (slot == null || order != 0 || !e.IsPresent || e.IsSpecial || e.Pfn == mem.ZeroPfn || !mem.IsRam(e.Pfn))
            {
                if (order > 0)
                {
                    a = Page.AlignDown(a, Page.Bytes(order)) + Page.Bytes(order) - Page.Size;
                }
                continue;
            }
            ulong pfn = e.Pfn;
            ref FrameInfo f = ref mem.Frame(pfn);
            if (f.Order != 0 || (f.Flags & (uint)FrameFlags.Tail) != 0 || Volatile.Read(ref f.MapCount) != 1)
            {
                continue;
            }
            if (f.Has(FrameFlags.Anon))
            {
                if (PageOutAnon(space, a, slot, e))
                {
                    reclaimed++;
                }
                continue;
            }
            if (vma.File is not { Kind: MappableKind.PageCache } file || !mem.TryLockFrame(pfn))
            {
                continue;
            }
            bool dropped;
            try
            {
                // A clean page-cache page: the dirty bit moves to the page (a write after this point must set the
                // entry's dirty bit first, which makes the replacement below fail), then the entry goes.
                if (e.IsDirty)
                {
                    file.MarkDirty(f.Index);
                }
                dropped = ReplaceEntry(space, a, slot, e, Pte.None);
                if (dropped)
                {
                    mem.RemoveMap(pfn);
                    Counters.Inc(Counter.PageCacheDropped);
                }
            }
            finally
            {
                mem.UnlockFrame(pfn);
            }
            if (dropped)
            {
                reclaimed++;
                mem.Put(pfn);
                if (file is PageCacheFile pcf)
                {
                    pcf.TryReclaimPage(pfn);
                }
            }
        }
        return reclaimed;
    }

    /// <summary>
    /// Swaps out one exclusive anonymous page (kernel: try_to_unmap + pageout + __remove_mapping): the entry first
    /// becomes a migration entry (CLEAR bracket, TLB shootdown), so no CPU can write the page while it is copied to
    /// swap and a fault waits for the copy; then the migration entry becomes the swap entry and the page is freed.
    /// </summary>
    private static bool PageOutAnon(AddressSpace space, ulong a, ulong* slot, Pte e)
    {
        PhysicalMemory mem = space.Memory;
        SwapStore? swap = space.Swap;
        ulong pfn = e.Pfn;
        if (swap is null || Volatile.Read(ref mem.Frame(pfn).RefCount) != 1 || !mem.TryGet(pfn))
        {
            return false;
        }
        if (!mem.TryLockFrame(pfn))
        {
            mem.Put(pfn);
            return false;
        }
        bool done = false;
        try
        {
            if (Volatile.Read(ref mem.Frame(pfn).RefCount) != 2 || swap.Allocate(out uint swapSlot) != Errno.Ok)
            {
                return false;
            }
            Pte migration = Pte.MakeSwap(SwapEntryType.Migration, pfn, e.IsWritable);
            if (!ReplaceEntry(space, a, slot, e, migration))
            {
                swap.Free(swapSlot);
                return false;
            }
            bool written = swap.Write(swapSlot, mem.FrameSpan(pfn)) == Errno.Ok;
            lock (space.PtlFor(slot))
            {
                if (*slot == migration.Value)
                {
                    *slot = written ? Pte.MakeSwap(SwapEntryType.Swap, swapSlot, false).Value : e.Value;
                    done = written;
                }
            }
            if (done)
            {
                // The mapping's map count and reference go with the entry it had.
                mem.RemoveMap(pfn);
                mem.Put(pfn);
                Counters.Inc(Counter.SwapOut);
            }
            else
            {
                swap.Free(swapSlot);
            }
            return done;
        }
        finally
        {
            mem.UnlockFrame(pfn);
            mem.Put(pfn);
        }
    }

    private static bool ReplaceEntry(AddressSpace space, ulong a, ulong* slot, Pte expected, Pte replacement)
    {
        var range = new MmuNotifierRange(space, a, a + Page.Size, MmuNotifierEvent.Clear);
        space.Notifiers.InvalidateRangeStart(range);
        bool ok;
        lock (space.PtlFor(slot))
        {
            ok = *slot == expected.Value;
            if (ok)
            {
                *slot = replacement.Value;
            }
        }
        if (ok)
        {
            space.FlushTlb();
        }
        space.Notifiers.InvalidateRangeEnd(range);
        return ok;
    }

    /// <summary>
    /// Direct reclaim under memory pressure (kernel: try_to_free_pages, much simplified): pages out up to
    /// <paramref name="target"/> pages of <paramref name="space"/>. Mmap lock held for read.
    /// </summary>
    public static int DirectReclaim(AddressSpace space, int target)
    {
        using TraceSpan span = TraceLog.Span(TraceCategory.Memory, "direct_reclaim", TraceArg.Pages(target));
        int done = 0;
        foreach (Vma v in space.Vmas.All)
        {
            if (done >= target)
            {
                break;
            }
            done += PageOutRange(space, v, v.Start, v.End);
        }
        return done;
    }
}
