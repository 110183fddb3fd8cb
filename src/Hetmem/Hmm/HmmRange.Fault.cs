using System.Diagnostics;
using System.Runtime.CompilerServices;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Hmm;

/// <summary>The walk behind snapshotting and faulting (kernel: mm/hmm.c hmm_range_fault and hmm_vma_walk_*).</summary>
public sealed unsafe partial class HmmRange
{
    private const ulong ReqFault = (ulong)HmmPfnFlags.ReqFault;
    private const ulong ReqWrite = (ulong)HmmPfnFlags.ReqWrite;
    private const ulong ErrorBit = (ulong)HmmPfnFlags.Error;

    /// <summary>
    /// 5.1 facade only, bit 52 (the top of the PFN field, never a real PFN here): on input "fault device-private pages
    /// too" (kernel 5.1: flags[HMM_PFN_DEVICE_PRIVATE] in a request); on output "this is a device-private PFN".
    /// </summary>
    internal const ulong LegacyDevicePrivate = 1UL << 52;

    // Result of one walk step: keep walking, restart from _last after a fault or wait, or fail.
    private enum Step
    {
        Next,
        Again,
        Fail,
    }

    private ulong _last;                 // walk state: first address whose entry has not been written yet
    private ulong _walkEnd;              // walk state: end of the window being walked (End for Fault())
    private Errno _err;                  // walk state: error of a failed step
    private DevicePageMap? _cachedMap;   // walk state: page map referenced while reading devmap entries (kernel: hmm_vma_walk.pgmap)
    private readonly HmmMirrorRange? _legacy; // immutable: the 5.1 range whose Valid flag replaces the sequence check
    internal bool _legacyNonBlocking;    // 5.1 Fault(block: false): a major fault ends the walk with EAGAIN

    /// <summary>
    /// Snapshots and/or faults the range (kernel: hmm_range_fault). The caller holds the address space's mmap lock
    /// for read. Per page the request is <c>(entry &amp; PfnFlagsMask) | DefaultFlags</c>; without ReqFault the page is only
    /// snapshotted and the page tables are neither changed nor notified. Output per page: PFN | VALID [| WRITE] | order
    /// (0 PTE, 9 PMD, 18 PUD; hugetlb: the huge page order), 0 for "not mapped but faultable", ERROR for "never
    /// mappable" (no VMA, VM_IO/VM_PFNMAP or unreadable VMA, special entry); the sticky DMA bits of each entry are kept.
    /// On success every entry holds its output; on error entries from the failure point on still hold their input.
    /// Allocates nothing.
    /// </summary>
    /// <returns>Ok; EBUSY when <see cref="NotifierSeq"/> is stale, checked before the first walk and after every fault or
    /// wait (restart from ReadBegin); EFAULT when a page that had to be made valid could not be (no VMA, VM_IO/VM_PFNMAP or
    /// unreadable VMA, special mapping, fault error); EPERM when write was requested on a VMA without write permission
    /// (before any page is faulted for write); EBUSY as well when a DAX page map is being torn down.</returns>
    public Errno Fault() => FaultWindow(Start, End);

    /// <summary>Runs the walk over [start, end) ⊆ [Start, End) only (the 5.1 facade walks VMA by VMA).</summary>
    internal Errno FaultWindow(ulong start, ulong end)
    {
        Debug.Assert(_space.MmapLock.IsHeld, "hmm_range_fault needs the mmap lock");
        Debug.Assert(start >= Start && end <= End && start < end);
        Counters.Inc(Counter.HmmRangeFault);
        using TraceSpan span = TraceLog.Span(TraceCategory.Hmm, "hmm_range_fault", TraceArg.Address(start), TraceArg.Pages((long)((end - start) >> Page.Shift)));
        _last = start;
        _walkEnd = end;
        try
        {
            while (true)
            {
                if (IsStale())
                {
                    Counters.Inc(Counter.HmmRangeFaultBusy);
                    return Errno.EBUSY;
                }
                Step s = Walk(_space);
                if (s == Step.Next)
                {
                    return Errno.Ok;
                }
                if (s == Step.Fail)
                {
                    return _err;
                }
            }
        }
        finally
        {
            if (_cachedMap is not null)
            {
                _cachedMap.Put();
                _cachedMap = null;
            }
        }
    }

    /// <summary>Where the last walk stopped: entries before it hold output (the 5.1 facade's "last").</summary>
    internal ulong Last => _last;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool IsStale() => _legacy is null ? _notifier!.CheckRetry(NotifierSeq) : !_legacy.Valid;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong Request(int i) => (HmmPfns[i] & (ulong)PfnFlagsMask) | (ulong)DefaultFlags;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Store(int i, ulong value) => HmmPfns[i] = (HmmPfns[i] & HmmPfn.Sticky) | value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int Index(ulong addr) => (int)((addr - Start) >> Page.Shift);

    /// <summary>True when no page can need a fault (kernel: the old hmm_range_snapshot shortcut).</summary>
    private bool PureSnapshot => (((ulong)DefaultFlags | (ulong)PfnFlagsMask) & ReqFault) == 0;

    /// <summary>OR of the requests of pages [start, end) (kernel: hmm_range_need_fault over a group).</summary>
    private ulong GroupRequest(ulong start, ulong end)
    {
        if (PureSnapshot)
        {
            return 0;
        }
        ulong r = 0;
        for (int i = Index(start), n = Index(end); i < n; i++)
        {
            r |= Request(i);
        }
        return r & (ReqFault | ReqWrite);
    }

    /// <summary>kernel: hmm_pte_need_fault — does a page with this request need a fault given valid/writable state?</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool NeedFault(ulong req, bool valid, bool writable)
        => (req & ReqFault) != 0 && (!valid || (req & ReqWrite) != 0 && !writable);

    /// <summary>True when <paramref name="pfn"/> is a device-private page this range reports instead of faulting.</summary>
    private bool IsOwnDevicePrivate(PhysicalMemory mem, ulong pfn)
    {
        if (DevPrivateOwner is null)
        {
            return false;
        }
        DevicePageMap? map = mem.FindMap(pfn);
        return map is not null && map.Type == MemoryType.DevicePrivate && ReferenceEquals(map.Owner, DevPrivateOwner);
    }

    /// <summary>The per-entry fault decision of the walk, for any level (used when faulting a group).</summary>
    private bool EntryNeedsFault(PhysicalMemory mem, Pte e, ulong req)
    {
        if ((req & ReqFault) == 0)
        {
            return false;
        }
        if (e.IsPresent)
        {
            // A special entry cannot be faulted into something better; the re-walk fails it with EFAULT.
            return !e.IsSpecial && (req & ReqWrite) != 0 && !e.IsWritable;
        }
        if (e.SwapType == SwapEntryType.DevicePrivate)
        {
            if (_legacy is not null)
            {
                return (req & LegacyDevicePrivate) != 0;
            }
            return !IsOwnDevicePrivate(mem, e.Pfn);
        }
        return true; // empty, PROT_NONE, swap, migration (the fault waits), exclusive, poison (the fault fails)
    }

    private Step Walk(AddressSpace mm)
    {
        ulong addr = _last;
        ulong end = _walkEnd;
        while (addr < end)
        {
            Vma? vma = mm.Vmas.FindFirstEndingAbove(addr);
            if (vma is null || vma.Start > addr)
            {
                ulong holeEnd = vma is null ? end : Math.Min(vma.Start, end);
                if ((GroupRequest(addr, holeEnd) & ReqFault) != 0)
                {
                    return Fail(Errno.EFAULT);
                }
                FillError(addr, holeEnd);
                addr = holeEnd;
                continue;
            }
            ulong vmaEnd = Math.Min(vma.End, end);
            if ((vma.Flags & (VmFlags.Io | VmFlags.PfnMap)) != 0 || (vma.Flags & VmFlags.Read) == 0)
            {
                // kernel: hmm_vma_walk_test — no struct pages, or not readable (and so not writable either).
                if ((GroupRequest(addr, vmaEnd) & ReqFault) != 0)
                {
                    return Fail(Errno.EFAULT);
                }
                FillError(addr, vmaEnd);
                addr = vmaEnd;
                continue;
            }
            Step s = WalkVma(mm, vma, addr, vmaEnd);
            if (s != Step.Next)
            {
                return s;
            }
            addr = vmaEnd;
        }
        return Step.Next;
    }

    private Step Fail(Errno e)
    {
        _err = e;
        return Step.Fail;
    }

    private void FillError(ulong start, ulong end) => Fill(start, end, ErrorBit);

    private void FillNone(ulong start, ulong end) => Fill(start, end, 0);

    private void Fill(ulong start, ulong end, ulong value)
    {
        int i = Index(start);
        Span<ulong> span = HmmPfns.AsSpan(i, Index(end) - i);
        for (int k = 0; k < span.Length; k++)
        {
            span[k] = (span[k] & HmmPfn.Sticky) | value;
        }
        _last = end;
    }

    /// <summary>Writes per-4 KiB entries for a huge leaf of <paramref name="order"/> clipped to [start, end): consecutive PFNs, same flags.</summary>
    private void FillHuge(ulong start, ulong end, ulong headPfn, ulong leafStart, ulong flags, int order)
    {
        flags |= (ulong)HmmPfnFlags.Valid | ((ulong)order << HmmPfn.OrderShift);
        ulong first = (headPfn + ((start - leafStart) >> Page.Shift)) | flags;
        int i = Index(start);
        Span<ulong> span = HmmPfns.AsSpan(i, Index(end) - i);
        for (int k = 0; k < span.Length; k++)
        {
            // The PFN field is below the flag bits and a leaf never crosses them, so adding k only moves the PFN.
            span[k] = (span[k] & HmmPfn.Sticky) | (first + (ulong)k);
        }
        _last = end;
    }

    /// <summary>
    /// Faults the pages of [start, end) that need it, then asks the caller to walk again from <paramref name="start"/>
    /// (kernel: hmm_vma_fault). A write needed on a VMA without VM_WRITE is EPERM before anything is faulted.
    /// <paramref name="hole"/>: the span had no entries when the walk looked (no table or an empty upper level), so
    /// every requested page needs a fault and the entries need not be re-read (a page populated meanwhile is fine:
    /// the fault handler then just confirms it).
    /// </summary>
    private Step FaultPages(AddressSpace mm, Vma vma, ulong start, ulong end, bool hole = false)
    {
        PhysicalMemory mem = mm.Memory;
        if ((vma.Flags & VmFlags.Write) == 0)
        {
            for (ulong a = start; a < end; a += Page.Size)
            {
                ulong req = Request(Index(a));
                if ((req & (ReqFault | ReqWrite)) == (ReqFault | ReqWrite) && (hole || EntryNeedsFault(mem, mm.QueryPte(a, out _), req)))
                {
                    return Fail(Errno.EPERM);
                }
            }
        }
        for (ulong a = start; a < end; a += Page.Size)
        {
            ulong req = Request(Index(a));
            Pte e = hole ? default : mm.QueryPte(a, out _);
            if (!EntryNeedsFault(mem, e, req))
            {
                continue;
            }
            bool major = e.SwapType == SwapEntryType.Swap;
            VmFault r = mm.FaultUntilDoneLocked(vma, a, FaultFlags.Remote | ((req & ReqWrite) != 0 ? FaultFlags.Write : FaultFlags.None));
            if (r != VmFault.Ok)
            {
                return Fail(Errno.EFAULT);
            }
            if (major && _legacyNonBlocking)
            {
                // 5.1 non-blocking fault: the kernel would have dropped the mmap lock to wait for the swap-in I/O.
                _last = start;
                return Fail(Errno.EAGAIN);
            }
        }
        _last = start;
        return Step.Again;
    }

    private Step WalkVma(AddressSpace mm, Vma vma, ulong addr, ulong end)
    {
        PhysicalMemory mem = mm.Memory;
        while (addr < end)
        {
            Pte e = mm.Lookup(addr, out int order, out _);
            if (order > 0)
            {
                ulong leafSize = Page.Bytes(order);
                ulong leafStart = Page.AlignDown(addr, leafSize);
                ulong stepEnd = Math.Min(leafStart + leafSize, end);
                Step s;
                if (e.IsNone || order == Page.PudOrder && !e.MapsPage)
                {
                    // Missing table, empty entry, or a non-present PUD (kernel: treated as a hole).
                    s = Hole(mm, vma, addr, stepEnd, empty: e.IsNone);
                }
                else if (e.MapsPage && (e.Value & Pte.Huge) != 0)
                {
                    s = HugeEntry(mm, vma, e, addr, stepEnd, leafStart, order);
                }
                else
                {
                    s = NonPresentPmd(mm, vma, e, addr, stepEnd, leafStart, order);
                }
                if (s != Step.Next)
                {
                    return s;
                }
                addr = stepEnd;
                continue;
            }

            // PTE level: walk the rest of this PTE table in one tight loop (tables are not freed under the mmap read lock).
            mm.Lookup(addr, out _, out ulong* pte);
            ulong tableEnd = Math.Min(Page.AlignDown(addr, Page.PmdSize) + Page.PmdSize, end);
            int first = Index(addr);
            Span<ulong> pfns = HmmPfns.AsSpan(first, Index(tableEnd) - first);
            ulong mask = (ulong)PfnFlagsMask;
            ulong defaults = (ulong)DefaultFlags;
            for (int k = 0; k < pfns.Length; k++)
            {
                var p = new Pte(Volatile.Read(ref pte[k]));
                ulong req = (pfns[k] & mask) | defaults;
                if ((p.Value & (Pte.Present | Pte.Special)) == Pte.Present)
                {
                    bool w = (p.Value & Pte.Write) != 0;
                    if ((req & ReqFault) != 0 && (req & ReqWrite) != 0 && !w)
                    {
                        _last = addr + ((ulong)k << Page.Shift);
                        return FaultPages(mm, vma, _last, tableEnd);
                    }
                    if ((p.Value & Pte.DevMap) != 0 && !HoldPageMap(mem, p.Pfn))
                    {
                        _last = addr + ((ulong)k << Page.Shift);
                        return Fail(Errno.EBUSY);
                    }
                    pfns[k] = (pfns[k] & HmmPfn.Sticky) | p.Pfn | (ulong)HmmPfnFlags.Valid | (w ? (ulong)HmmPfnFlags.Write : 0);
                    continue;
                }
                _last = addr + ((ulong)k << Page.Shift);
                Step s = PteSlow(mm, vma, p, _last, tableEnd, req, first + k);
                if (s != Step.Next)
                {
                    return s;
                }
            }
            _last = tableEnd;
            addr = tableEnd;
        }
        return Step.Next;
    }

    /// <summary>Everything at PTE level that is not a present ordinary page (kernel: the rest of hmm_vma_handle_pte).</summary>
    private Step PteSlow(AddressSpace mm, Vma vma, Pte p, ulong addr, ulong tableEnd, ulong req, int i)
    {
        if (p.IsPresent)
        {
            // Special entry (raw PFN insert): no page to hand out.
            if ((req & ReqFault) != 0)
            {
                return Fail(Errno.EFAULT);
            }
            Store(i, ErrorBit);
            _last = addr + Page.Size;
            return Step.Next;
        }
        switch (p.SwapType)
        {
            case SwapEntryType.DevicePrivate:
                if (_legacy is not null)
                {
                    // 5.1: every owner's device-private page is reported; faulted back only when asked for explicitly.
                    if ((req & (ReqFault | LegacyDevicePrivate)) == (ReqFault | LegacyDevicePrivate))
                    {
                        return FaultPages(mm, vma, addr, tableEnd);
                    }
                    Store(i, p.Pfn | LegacyDevicePrivate | (ulong)HmmPfnFlags.Valid | (p.SwapWritable ? (ulong)HmmPfnFlags.Write : 0));
                    _last = addr + Page.Size;
                    return Step.Next;
                }
                if (IsOwnDevicePrivate(mm.Memory, p.Pfn))
                {
                    // Reported as is, never faulted, even for a write request on a read-only entry.
                    Store(i, p.Pfn | (ulong)HmmPfnFlags.Valid | (p.SwapWritable ? (ulong)HmmPfnFlags.Write : 0));
                    _last = addr + Page.Size;
                    return Step.Next;
                }
                break;
            case SwapEntryType.Migration:
                if ((req & ReqFault) != 0)
                {
                    WaitMigration(mm, addr, p);
                    _last = addr;
                    return Step.Again;
                }
                break;
            case SwapEntryType.HwPoison:
                if ((req & ReqFault) != 0)
                {
                    return Fail(Errno.EFAULT);
                }
                break;
        }
        // Empty, PROT_NONE (NUMA hinting), swap, device-exclusive, other owners' device-private pages: 0 or fault.
        if ((req & ReqFault) != 0)
        {
            return FaultPages(mm, vma, addr, tableEnd);
        }
        Store(i, 0);
        _last = addr + Page.Size;
        return Step.Next;
    }

    private static void WaitMigration(AddressSpace mm, ulong addr, Pte p)
    {
        var spin = new SpinWait();
        while (mm.QueryPte(addr, out _) == p)
        {
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    /// <summary>No page table or an empty entry above PTE level (kernel: hmm_vma_walk_hole).</summary>
    private Step Hole(AddressSpace mm, Vma vma, ulong addr, ulong end, bool empty = true)
    {
        if ((GroupRequest(addr, end) & ReqFault) != 0)
        {
            return FaultPages(mm, vma, addr, end, hole: empty);
        }
        FillNone(addr, end);
        return Step.Next;
    }

    /// <summary>A PMD/PUD leaf that maps a page: THP, huge zero page, DAX, hugetlb, or their PROT_NONE form.</summary>
    private Step HugeEntry(AddressSpace mm, Vma vma, Pte e, ulong addr, ulong end, ulong leafStart, int order)
    {
        if (e.IsProtNone)
        {
            return Hole(mm, vma, addr, end, empty: false);
        }
        bool w = e.IsWritable;
        if (!PureSnapshot)
        {
            for (int i = Index(addr), n = Index(end); i < n; i++)
            {
                if (NeedFault(Request(i), true, w))
                {
                    return FaultPages(mm, vma, addr, end);
                }
            }
        }
        if (e.IsDevMap && !HoldPageMap(mm.Memory, e.Pfn))
        {
            return Fail(Errno.EBUSY);
        }
        FillHuge(addr, end, e.Pfn, leafStart, w ? (ulong)HmmPfnFlags.Write : 0, order);
        return Step.Next;
    }

    /// <summary>A non-present PMD entry: a PMD migration entry, a device-private THP, or something bad (kernel: hmm_vma_walk_pmd).</summary>
    private Step NonPresentPmd(AddressSpace mm, Vma vma, Pte e, ulong addr, ulong end, ulong leafStart, int order)
    {
        ulong req = GroupRequest(addr, end);
        switch (e.SwapType)
        {
            case SwapEntryType.Migration:
                if ((req & ReqFault) != 0)
                {
                    WaitMigration(mm, addr, e);
                    _last = addr;
                    return Step.Again;
                }
                FillNone(addr, end);
                return Step.Next;
            case SwapEntryType.DevicePrivate:
            {
                ulong w = e.SwapWritable ? (ulong)HmmPfnFlags.Write : 0;
                if (_legacy is not null)
                {
                    if (!LegacyGroupWantsDevicePrivate(addr, end))
                    {
                        FillHuge(addr, end, e.Pfn, leafStart, w | LegacyDevicePrivate, order);
                        return Step.Next;
                    }
                    return FaultPages(mm, vma, addr, end);
                }
                if (IsOwnDevicePrivate(mm.Memory, e.Pfn))
                {
                    FillHuge(addr, end, e.Pfn, leafStart, w, order);
                    return Step.Next;
                }
                if ((req & ReqFault) != 0)
                {
                    return FaultPages(mm, vma, addr, end);
                }
                FillNone(addr, end);
                return Step.Next;
            }
            default:
                if ((req & ReqFault) != 0)
                {
                    return Fail(Errno.EFAULT);
                }
                FillError(addr, end);
                return Step.Next;
        }
    }

    private bool LegacyGroupWantsDevicePrivate(ulong start, ulong end)
    {
        for (int i = Index(start), n = Index(end); i < n; i++)
        {
            if ((Request(i) & (ReqFault | LegacyDevicePrivate)) == (ReqFault | LegacyDevicePrivate))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Holds a reference on the page map of a devmap PFN while its entries are read (the seed patch: get_dev_pagemap with a cached map).</summary>
    private bool HoldPageMap(PhysicalMemory mem, ulong pfn)
    {
        if (_cachedMap is not null && _cachedMap.Contains(pfn))
        {
            return true;
        }
        DevicePageMap? map = mem.FindMap(pfn);
        if (map is null)
        {
            return true; // a devmap bit on RAM: nothing to hold
        }
        if (!map.TryGet())
        {
            return false;
        }
        _cachedMap?.Put();
        _cachedMap = map;
        return true;
    }
}
