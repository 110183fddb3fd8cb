using System.Diagnostics;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Mm;

/// <summary>Zapping page-table ranges and freeing the pages after the TLB shootdown (kernel: zap_page_range, mmu_gather).</summary>
public sealed unsafe partial class AddressSpace
{
    /// <summary>Pages whose mapping references are dropped after the TLB shootdown (kernel: struct mmu_gather).</summary>
    internal sealed class MmuGather
    {
        [ThreadStatic]
        private static MmuGather? t_cached;

        public readonly List<ulong> Pages = new(256);
        public bool NeedFlush;

        public static MmuGather Rent()
        {
            MmuGather g = t_cached ?? new MmuGather();
            t_cached = null;
            return g;
        }

        public static void Return(MmuGather g)
        {
            g.Pages.Clear();
            g.NeedFlush = false;
            t_cached = g;
        }
    }

    /// <summary>
    /// Flushes the TLB if needed and drops the references gathered (kernel: tlb_finish_mmu). Call after
    /// <c>InvalidateRangeEnd</c>, with no page-table lock held.
    /// </summary>
    internal void FinishGather(MmuGather g)
    {
        if (g.NeedFlush)
        {
            FlushTlb();
        }
        foreach (ulong pfn in g.Pages)
        {
            Memory.Put(pfn);
        }
        MmuGather.Return(g);
    }

    /// <summary>
    /// Clears every entry of [start, end) inside <paramref name="vma"/> (kernel: unmap_page_range). The caller
    /// brackets it with notifier start/end and finishes <paramref name="g"/> afterwards. With
    /// <paramref name="onlyFile"/> set, anonymous (COW) pages of a private file VMA are kept unless
    /// <paramref name="evenCows"/>.
    /// </summary>
    internal void ZapRange(Vma vma, ulong start, ulong end, MmuGather g, bool onlyFile = false, bool evenCows = true)
    {
        Debug.Assert(Page.IsAligned(start, Page.Size) && Page.IsAligned(end, Page.Size));
        ulong addr = start;
        while (addr < end)
        {
            ulong* pud = PudEntry(addr, alloc: false);
            ulong pudNext = Math.Min(Page.AlignDown(addr, Page.PudSize) + Page.PudSize, end);
            if (pudNext == 0)
            {
                pudNext = end;
            }
            if (pud == null)
            {
                addr = Page.AlignDown(addr, 1UL << 39) + (1UL << 39);
                continue;
            }
            var pudE = new Pte(Volatile.Read(ref *pud));
            if (pudE.IsNone)
            {
                addr = pudNext;
                continue;
            }
            if ((pudE.Value & Pte.Huge) != 0)
            {
                // PUD leaf (DAX or hugetlb 1 GiB): a partial zap drops the whole entry (it refaults in smaller
                // pieces), inside a CLEAR bracket of its own that covers the whole leaf.
                bool whole = Page.IsAligned(addr, Page.PudSize) && pudNext - addr == Page.PudSize;
                ZapHugeLeaf(vma, Page.AlignDown(addr, Page.PudSize), pud, Page.PudOrder, g, onlyFile, evenCows, whole);
                addr = pudNext;
                continue;
            }
            while (addr < pudNext)
            {
                ulong pmdNext = Math.Min(Page.AlignDown(addr, Page.PmdSize) + Page.PmdSize, pudNext);
                ulong* pmd = TablePtr(pudE.Pfn) + PmdIndex(addr);
                var pmdE = new Pte(Volatile.Read(ref *pmd));
                if (pmdE.IsNone)
                {
                    addr = pmdNext;
                    continue;
                }
                if ((pmdE.Value & Pte.Huge) != 0)
                {
                    bool whole = Page.AlignDown(addr, Page.PmdSize) == addr && pmdNext - addr == Page.PmdSize;
                    bool anonThp = !pmdE.IsDevMap && vma.Kind == VmaKind.Anonymous;
                    if (!whole && anonThp && (pmdE.MapsPage || pmdE.SwapType is SwapEntryType.Migration or SwapEntryType.DevicePrivate))
                    {
                        SplitHugePmd(Page.AlignDown(addr, Page.PmdSize), pmd);
                        continue; // now a table: zap its PTEs below
                    }
                    ZapHugeLeaf(vma, Page.AlignDown(addr, Page.PmdSize), pmd, Page.PmdOrder, g, onlyFile, evenCows, whole);
                    addr = pmdNext;
                    continue;
                }
                if (!pmdE.IsPresent)
                {
                    addr = pmdNext;
                    continue;
                }
                ulong* table = TablePtr(pmdE.Pfn);
                for (; addr < pmdNext; addr += Page.Size)
                {
                    ulong* pte = table + PteIndex(addr);
                    if (Volatile.Read(ref *pte) != 0)
                    {
                        ZapLeaf(vma, pte, 0, g, onlyFile, evenCows);
                    }
                }
            }
        }
    }

    /// <summary>Zaps a huge leaf; when only part of it is in the zapped range, inside a CLEAR bracket over the whole leaf.</summary>
    private void ZapHugeLeaf(Vma vma, ulong hstart, ulong* slot, int order, MmuGather g, bool onlyFile, bool evenCows, bool whole)
    {
        if (whole)
        {
            ZapLeaf(vma, slot, order, g, onlyFile, evenCows);
            return;
        }
        var range = new MmuNotifierRange(this, hstart, hstart + Page.Bytes(order), MmuNotifierEvent.Clear);
        Notifiers.InvalidateRangeStart(range);
        ZapLeaf(vma, slot, order, g, onlyFile, evenCows);
        if (g.NeedFlush)
        {
            FlushTlb();
            g.NeedFlush = false;
        }
        Notifiers.InvalidateRangeEnd(range);
    }

    /// <summary>Clears one leaf entry (any level) and gathers the reference it held.</summary>
    private void ZapLeaf(Vma vma, ulong* slot, int order, MmuGather g, bool onlyFile, bool evenCows)
    {
        if (new Pte(Volatile.Read(ref *slot)).IsPresent)
        {
            AssertInBracket(vma.Start, "a zap");
        }
        Pte e;
        lock (PtlFor(slot))
        {
            e = new Pte(Volatile.Read(ref *slot));
            if (e.IsNone)
            {
                return;
            }
            if (onlyFile && !evenCows && e.MapsPage && Memory.IsRam(e.Pfn) && Memory.Frame(e.Pfn).Has(FrameFlags.Anon))
            {
                return;
            }
            *slot = 0;
        }
        ReleaseEntry(vma, e, order, g);
    }

    /// <summary>Drops what a cleared entry held: map count, reference (gathered), swap slot, dirty state.</summary>
    internal void ReleaseEntry(Vma vma, Pte e, int order, MmuGather g)
    {
        if (e.MapsPage)
        {
            g.NeedFlush |= e.IsPresent;
            ulong pfn = e.Pfn;
            if (pfn == Memory.ZeroPfn || pfn == _hugeZeroPfn || e.IsSpecial)
            {
                return;
            }
            if (e.IsDirty && vma.File is { Kind: MappableKind.PageCache or MappableKind.Shmem } && !Memory.Frame(pfn).Has(FrameFlags.Anon))
            {
                vma.File.MarkDirty(Memory.Frame(pfn).Index);
            }
            Memory.RemoveMap(pfn);
            g.Pages.Add(pfn);
            return;
        }
        switch (e.SwapType)
        {
            case SwapEntryType.Swap:
                Swap?.Free((uint)e.Pfn);
                break;
            case SwapEntryType.DevicePrivate:
            case SwapEntryType.DeviceExclusive:
                Memory.RemoveMap(e.Pfn);
                g.Pages.Add(e.Pfn);
                break;
            case SwapEntryType.Migration:
                // The migrating thread holds its own reference and restores or drops the page; the mapping's
                // share was moved to that thread when the migration entry was installed.
                Memory.RemoveMap(e.Pfn);
                g.Pages.Add(e.Pfn);
                break;
        }
    }

    /// <summary>
    /// Frees page tables that only covered [start, end) (kernel: free_pgtables). <paramref name="floor"/> and
    /// <paramref name="ceiling"/> are the ends of the neighbouring VMAs: tables shared with them stay.
    /// Call with the mmap write lock held, after the TLB shootdown that followed the zap.
    /// </summary>
    internal void FreePgTables(ulong start, ulong end, ulong floor, ulong ceiling)
    {
        Debug.Assert(MmapLock.IsWriteHeld);
        ulong lo = Page.AlignUp(Math.Max(start, floor), Page.PmdSize);
        if (Page.AlignDown(start, Page.PmdSize) >= floor)
        {
            lo = Page.AlignDown(start, Page.PmdSize);
        }
        ulong hi = Math.Min(Page.AlignUp(end, Page.PmdSize), ceiling);
        hi = Page.AlignDown(hi, Page.PmdSize);
        bool freed = false;
        List<ulong> tables = _tablesToFree;   // guarded by the mmap write lock
        tables.Clear();
        for (ulong a = lo; a < hi && a >= lo; a += Page.PmdSize)
        {
            ulong* pmd = PmdEntry(a, alloc: false);
            if (pmd == null)
            {
                a = Page.AlignDown(a, Page.PudSize) + Page.PudSize - Page.PmdSize;
                continue;
            }
            var e = new Pte(Volatile.Read(ref *pmd));
            if (e.IsPresent && !e.IsHugeLeaf && IsTableEmpty(e.Pfn))
            {
                lock (PtlFor(pmd))
                {
                    *pmd = 0;
                }
                tables.Add(e.Pfn);
                freed = true;
            }
        }
        // PMD tables whose whole 1 GiB lies inside the window.
        ulong plo = Page.AlignUp(lo, Page.PudSize);
        ulong phi = Page.AlignDown(hi, Page.PudSize);
        for (ulong a = plo; a < phi && a >= plo; a += Page.PudSize)
        {
            ulong* pud = PudEntry(a, alloc: false);
            if (pud == null)
            {
                continue;
            }
            var e = new Pte(Volatile.Read(ref *pud));
            if (e.IsPresent && !e.IsHugeLeaf && IsTableEmpty(e.Pfn))
            {
                lock (PtlFor(pud))
                {
                    *pud = 0;
                }
                tables.Add(e.Pfn);
                freed = true;
            }
        }
        if (freed)
        {
            FlushTlb(); // lock-free walkers that read the old parent entry are gone after this
            foreach (ulong t in tables)
            {
                FreeTable(t);
            }
            tables.Clear();
        }
    }

    private readonly List<ulong> _tablesToFree = [];   // guarded by the mmap write lock; reused by FreePgTables

    private bool IsTableEmpty(ulong tablePfn)
    {
        ulong* t = TablePtr(tablePfn);
        for (int i = 0; i < 512; i++)
        {
            if (t[i] != 0)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>Splits an anonymous THP (or huge zero) PMD into a PTE table inside a CLEAR bracket (kernel: split_huge_pmd).</summary>
    internal void SplitHugePmd(ulong start, ulong* pmd)
    {
        var range = new MmuNotifierRange(this, start, start + Page.PmdSize, MmuNotifierEvent.Clear);
        Notifiers.InvalidateRangeStart(range);
        try
        {
            SplitHugePmdLocked(start, pmd);   // ENOMEM when no frame is left for the PTE table: nothing changed
            FlushTlb();
        }
        finally
        {
            Notifiers.InvalidateRangeEnd(range);
        }
    }

    /// <summary>The split itself; the caller is inside a notifier bracket covering the PMD and flushes the TLB.</summary>
    internal void SplitHugePmdLocked(ulong start, ulong* pmd)
    {
        AssertInBracket(start, "a huge PMD split");
        ulong table = AllocTable();
        if (table == Page.NoPfn)
        {
            throw new MmException(Errno.ENOMEM, $"no frame to split the huge PMD at 0x{start:x}");
        }
        ulong* t = TablePtr(table);
        bool used = false;
        lock (PtlFor(pmd))
        {
            var e = new Pte(Volatile.Read(ref *pmd));
            if ((e.Value & Pte.Huge) != 0 && e.MapsPage)
            {
                ulong head = e.Pfn;
                bool zero = head == _hugeZeroPfn;
                ulong flags = e.Value & (Pte.Write | Pte.Dirty | Pte.Accessed | Pte.ProtNone | Pte.Present);
                for (int i = 0; i < 512; i++)
                {
                    t[i] = zero
                        ? Pte.Make(Memory.ZeroPfn, false).Value & ~Pte.Present | (e.Value & (Pte.Present | Pte.ProtNone))
                        : ((head + (ulong)i) << Page.Shift) | flags;
                    if (!zero)
                    {
                        Memory.AddMap(head + (ulong)i);
                    }
                }
                if (!zero)
                {
                    Memory.RemoveMap(head);
                    Interlocked.Add(ref Memory.Frame(head).RefCount, 511);
                }
                *pmd = Pte.Make(table, true).Value;
                used = true;
                Diagnostics.Counters.Inc(Diagnostics.Counter.ThpSplitPmd);
            }
            else if (e.SwapType == SwapEntryType.Migration || e.SwapType == SwapEntryType.DevicePrivate)
            {
                // A PMD-level non-present entry: split into 512 PTE-level entries of the same kind.
                for (int i = 0; i < 512; i++)
                {
                    t[i] = Pte.MakeSwap(e.SwapType, e.Pfn + (ulong)i, e.SwapWritable).Value;
                    if (i > 0)
                    {
                        Memory.AddMap(e.Pfn + (ulong)i);
                    }
                }
                Interlocked.Add(ref Memory.Frame(e.Pfn).RefCount, 511);
                *pmd = Pte.Make(table, true).Value;
                used = true;
            }
        }
        if (!used)
        {
            FreeTable(table);
        }
    }

    /// <summary>
    /// Zaps the file pages a mapping of <paramref name="mapping"/> shows in [start, end) (kernel:
    /// unmap_mapping_range → zap_page_range_single), inside an MMU_NOTIFY_CLEAR bracket. Called by the file with
    /// its invalidate lock held for write and its mapping-set lock held; takes no mmap lock.
    /// </summary>
    public void UnmapMappingRange(IFileMapping mapping, ulong start, ulong end, bool evenCows)
    {
        var vma = (Vma)mapping;
        var range = new MmuNotifierRange(this, start, end, MmuNotifierEvent.Clear);
        Notifiers.InvalidateRangeStart(range);
        MmuGather g = MmuGather.Rent();
        ZapRange(vma, start, end, g, onlyFile: true, evenCows: evenCows);
        Notifiers.InvalidateRangeEnd(range);
        FinishGather(g);
    }
}
