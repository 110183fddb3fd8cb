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

    // Result of one walk step: keep walking, restart from _last after a fault or wait, or fail.
    private enum Step
    {
        Next,
        Again,
        Fail,
    }

    private ulong _last;                 // first address whose entry has not been written yet (walk state)
    private Errno _err;                  // error of a failed step
    private DevicePageMap? _cachedMap;   // page map referenced while reading devmap entries (kernel: hmm_vma_walk.pgmap)

    /// <summary>
    /// Snapshots and/or faults the range (kernel: hmm_range_fault). The caller holds the address space's mmap lock
    /// for read. Per page the request is <c>(entry &amp; PfnFlagsMask) | DefaultFlags</c>; without ReqFault the page is only
    /// snapshotted. On success every entry holds its output; on error entries from the failure point on still
    /// hold their input.
    /// </summary>
    /// <returns>Ok; EBUSY when <see cref="NotifierSeq"/> is stale (restart from ReadBegin); EFAULT when a page that had to
    /// be made valid could not be (no VMA, VM_IO/VM_PFNMAP or unreadable VMA, special mapping, fault error);
    /// EPERM when write was requested on a VMA without write permission.</returns>
    public Errno Fault()
    {
        AddressSpace mm = Notifier.Space;
        Debug.Assert(mm.MmapLock.IsHeld, "hmm_range_fault needs the mmap lock");
        Counters.Inc(Counter.HmmRangeFault);
        _last = Start;
        try
        {
            while (true)
            {
                if (Notifier.CheckRetry(NotifierSeq))
                {
                    Counters.Inc(Counter.HmmRangeFaultBusy);
                    return Errno.EBUSY;
                }
                Step s = Walk(mm);
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

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong Request(int i) => (HmmPfns[i] & (ulong)PfnFlagsMask) | (ulong)DefaultFlags;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Store(int i, ulong value) => HmmPfns[i] = (HmmPfns[i] & HmmPfn.Sticky) | value;

    private int Index(ulong addr) => (int)((addr - Start) >> Page.Shift);

    /// <summary>OR of the requests of pages [start, end): which faults the group needs given the entry state.</summary>
    private ulong GroupRequest(ulong start, ulong end)
    {
        if ((((ulong)DefaultFlags | (ulong)PfnFlagsMask) & ReqFault) == 0)
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

    private Step Walk(AddressSpace mm)
    {
        ulong addr = _last;
        while (addr < End)
        {
            Vma? vma = mm.Vmas.FindFirstEndingAbove(addr);
            if (vma is null || vma.Start > addr)
            {
                ulong holeEnd = vma is null ? End : Math.Min(vma.Start, End);
                if ((GroupRequest(addr, holeEnd) & ReqFault) != 0)
                {
                    return Fail(Errno.EFAULT);
                }
                FillError(addr, holeEnd);
                addr = holeEnd;
                continue;
            }
            ulong vmaEnd = Math.Min(vma.End, End);
            if ((vma.Flags & (VmFlags.Io | VmFlags.PfnMap)) != 0 || (vma.Flags & VmFlags.Read) == 0)
            {
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

    private void FillError(ulong start, ulong end)
    {
        for (int i = Index(start), n = Index(end); i < n; i++)
        {
            Store(i, ErrorBit);
        }
        _last = end;
    }

    private void FillNone(ulong start, ulong end)
    {
        for (int i = Index(start), n = Index(end); i < n; i++)
        {
            Store(i, 0);
        }
        _last = end;
    }

    /// <summary>Writes per-4 KiB entries for a huge leaf of <paramref name="order"/> clipped to [start, end).</summary>
    private void FillHuge(ulong start, ulong end, ulong headPfn, ulong leafStart, bool write, int order)
    {
        ulong flags = (ulong)HmmPfnFlags.Valid | (write ? (ulong)HmmPfnFlags.Write : 0) | ((ulong)order << HmmPfn.OrderShift);
        ulong pfn = headPfn + ((start - leafStart) >> Page.Shift);
        for (int i = Index(start), n = Index(end); i < n; i++, pfn++)
        {
            Store(i, pfn | flags);
        }
        _last = end;
    }

    /// <summary>Faults the pages of [start, end) that need it, then asks the caller to walk again (kernel: hmm_vma_fault).</summary>
    private Step FaultPages(AddressSpace mm, Vma vma, ulong start, ulong end, ulong groupReq)
    {
        bool write = (groupReq & ReqWrite) != 0;
        if (write && (vma.Flags & VmFlags.Write) == 0)
        {
            return Fail(Errno.EPERM);
        }
        for (ulong a = start; a < end; a += Page.Size)
        {
            ulong req = Request(Index(a)) & (ReqFault | ReqWrite);
            if ((req & ReqFault) == 0)
            {
                continue;
            }
            Pte e = mm.QueryPte(a, out _);
            bool valid = e.IsPresent;
            if (!NeedFault(req, valid, e.IsWritable) && e.SwapType == SwapEntryType.None)
            {
                continue;
            }
            VmFault r = mm.FaultUntilDoneLocked(vma, a, FaultFlags.Remote | ((req & ReqWrite) != 0 ? FaultFlags.Write : FaultFlags.None));
            if (r != VmFault.Ok)
            {
                return Fail(Errno.EFAULT);
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
            ulong leafSize = Page.Bytes(order);
            ulong leafStart = Page.AlignDown(addr, leafSize);
            ulong stepEnd = Math.Min(leafStart + leafSize, end);
            bool hugeLeaf = order > 0 && (e.Value & Pte.Huge) != 0;

            if (order > 0 && !hugeLeaf)
            {
                // Missing table or a non-present upper-level entry.
                if (e.IsNone)
                {
                    ulong req = GroupRequest(addr, stepEnd);
                    if ((req & ReqFault) != 0)
                    {
                        return FaultPages(mm, vma, addr, stepEnd, req);
                    }
                    FillNone(addr, stepEnd);
                    addr = stepEnd;
                    continue;
                }
                Step s = NonPresentHuge(mm, vma, e, addr, stepEnd, leafStart, order);
                if (s != Step.Next)
                {
                    return s;
                }
                addr = stepEnd;
                continue;
            }

            if (hugeLeaf)
            {
                Step s = HugeEntry(mm, vma, e, addr, stepEnd, leafStart, order);
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
            for (; addr < tableEnd; addr += Page.Size, pte++)
            {
                int i = Index(addr);
                var p = new Pte(Volatile.Read(ref *pte));
                ulong req = Request(i) & (ReqFault | ReqWrite);
                if (p.IsPresent && !p.IsSpecial)
                {
                    ulong pfn = p.Pfn;
                    bool w = p.IsWritable;
                    if (NeedFault(req, true, w))
                    {
                        return FaultPages(mm, vma, addr, addr + Page.Size, req);
                    }
                    if (p.IsDevMap && !HoldPageMap(mem, pfn))
                    {
                        return Fail(Errno.EBUSY);
                    }
                    Store(i, pfn | (ulong)HmmPfnFlags.Valid | (w ? (ulong)HmmPfnFlags.Write : 0));
                    _last = addr + Page.Size;
                    continue;
                }
                Step s = PteSlow(mm, vma, p, addr, req, i);
                if (s != Step.Next)
                {
                    return s;
                }
            }
        }
        return Step.Next;
    }

    /// <summary>Everything at PTE level that is not a present ordinary page.</summary>
    private Step PteSlow(AddressSpace mm, Vma vma, Pte p, ulong addr, ulong req, int i)
    {
        if (p.IsPresent)
        {
            // Special entry (raw PFN in a VM_MIXEDMAP VMA): no page to hand out.
            if ((req & ReqFault) != 0)
            {
                return Fail(Errno.EFAULT);
            }
            Store(i, ErrorBit);
            _last = addr + Page.Size;
            return Step.Next;
        }
        if (p.IsNone || p.IsProtNone)
        {
            if ((req & ReqFault) != 0)
            {
                return FaultPages(mm, vma, addr, addr + Page.Size, req);
            }
            Store(i, 0);
            _last = addr + Page.Size;
            return Step.Next;
        }
        switch (p.SwapType)
        {
            case SwapEntryType.DevicePrivate:
            {
                DevicePageMap? map = mm.Memory.FindMap(p.Pfn);
                if (map is not null && DevPrivateOwner is not null && ReferenceEquals(map.Owner, DevPrivateOwner))
                {
                    // Reported as is, never faulted, even for a write request on a read-only entry.
                    Store(i, p.Pfn | (ulong)HmmPfnFlags.Valid | (p.SwapWritable ? (ulong)HmmPfnFlags.Write : 0));
                    _last = addr + Page.Size;
                    return Step.Next;
                }
                goto case SwapEntryType.Swap;
            }
            case SwapEntryType.Swap:
            case SwapEntryType.DeviceExclusive:
                if ((req & ReqFault) != 0)
                {
                    return FaultPages(mm, vma, addr, addr + Page.Size, req);
                }
                Store(i, 0);
                _last = addr + Page.Size;
                return Step.Next;
            case SwapEntryType.Migration:
                if ((req & ReqFault) != 0)
                {
                    WaitMigration(mm, addr, p);
                    _last = addr;
                    return Step.Again;
                }
                Store(i, 0);
                _last = addr + Page.Size;
                return Step.Next;
            default:
                if ((req & ReqFault) != 0)
                {
                    return Fail(Errno.EFAULT);
                }
                Store(i, 0);
                _last = addr + Page.Size;
                return Step.Next;
        }
    }

    private static void WaitMigration(AddressSpace mm, ulong addr, Pte p)
    {
        var spin = new SpinWait();
        while (mm.QueryPte(addr, out _) == p)
        {
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    /// <summary>A present PMD/PUD leaf: THP, huge zero page, DAX, hugetlb.</summary>
    private Step HugeEntry(AddressSpace mm, Vma vma, Pte e, ulong addr, ulong end, ulong leafStart, int order)
    {
        if (e.IsProtNone)
        {
            ulong req0 = GroupRequest(addr, end);
            if ((req0 & ReqFault) != 0)
            {
                return FaultPages(mm, vma, addr, end, req0);
            }
            FillNone(addr, end);
            return Step.Next;
        }
        ulong req = GroupRequest(addr, end);
        bool w = e.IsWritable;
        if (NeedFault(req, true, w))
        {
            return FaultPages(mm, vma, addr, end, req);
        }
        if (e.IsDevMap && !HoldPageMap(mm.Memory, e.Pfn))
        {
            return Fail(Errno.EBUSY);
        }
        FillHuge(addr, end, e.Pfn, leafStart, w, order);
        return Step.Next;
    }

    /// <summary>A non-present PMD/PUD entry: a PMD migration entry, a device-private THP, or something bad.</summary>
    private Step NonPresentHuge(AddressSpace mm, Vma vma, Pte e, ulong addr, ulong end, ulong leafStart, int order)
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
                DevicePageMap? map = mm.Memory.FindMap(e.Pfn);
                if (map is not null && DevPrivateOwner is not null && ReferenceEquals(map.Owner, DevPrivateOwner))
                {
                    FillHuge(addr, end, e.Pfn, leafStart, e.SwapWritable, order);
                    return Step.Next;
                }
                if ((req & ReqFault) != 0)
                {
                    return FaultPages(mm, vma, addr, end, req);
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

    /// <summary>Holds a reference on the page map of a devmap PFN while its entries are read (the seed patch: get_dev_pagemap).</summary>
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
