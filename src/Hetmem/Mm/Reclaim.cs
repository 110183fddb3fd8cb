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
            if (f.Order != 0 || (f.Flags & (uint)FrameFlags.Tail) != 0 || Volatile.Read(ref f.MapCount) != 1 || !mem.TryLockFrame(pfn))
            {
                continue;
            }
            try
            {
                bool anon = f.Has(FrameFlags.Anon);
                if (anon)
                {
                    if (space.Swap is null || Volatile.Read(ref f.RefCount) != 1)
                    {
                        continue;
                    }
                    if (space.Swap.Allocate(out uint swapSlot) != Errno.Ok)
                    {
                        continue;
                    }
                    space.Swap.Write(swapSlot, mem.FrameSpan(pfn));
                    if (!ReplaceEntry(space, a, slot, e, Pte.MakeSwap(SwapEntryType.Swap, swapSlot, false)))
                    {
                        space.Swap.Free(swapSlot);
                        continue;
                    }
                    Counters.Inc(Counter.SwapOut);
                }
                else if (vma.File is { Kind: MappableKind.PageCache } file)
                {
                    if (e.IsDirty)
                    {
                        file.MarkDirty(f.Index);
                    }
                    if (!ReplaceEntry(space, a, slot, e, Pte.None))
                    {
                        continue;
                    }
                    Counters.Inc(Counter.PageCacheDropped);
                }
                else
                {
                    continue;
                }
                mem.RemoveMap(pfn);
                reclaimed++;
            }
            finally
            {
                mem.UnlockFrame(pfn);
            }
            mem.Put(pfn);
            if (vma.File is PageCacheFile pcf)
            {
                pcf.TryReclaimPage(pfn);
            }
        }
        return reclaimed;
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
