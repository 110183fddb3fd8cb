using System.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Mm;

/// <summary>
/// Synchronous collapse of PTE-mapped anonymous memory into transparent huge pages (kernel: madvise_collapse and
/// collapse_huge_page in mm/khugepaged.c, MADV_COLLAPSE since 6.1).
/// </summary>
/// <remarks>
/// <para>Per 2 MiB-aligned PMD range that lies wholly inside the advised range and one anonymous VMA: a scan under
/// the mmap read lock decides whether the PTE table can be collapsed; the lock is dropped to allocate the order-9
/// page, retaken for read to swap in swapped-out entries, then taken for write. Under the write lock the PMD is
/// cleared inside one <see cref="MmuNotifierEvent.Clear"/> bracket over the 2 MiB (one TLB shootdown), each page is
/// trylocked and checked for extra references (a pin), the 512 pages are copied (holes and the zero page become
/// zeroes), the huge PMD is installed, and the old pages and the PTE table are released. A failure after the PMD was
/// cleared puts the same table back, so the entries are unchanged.</para>
/// <para>Result per range (kernel: enum scan_result, mapped to an errno by madvise_collapse_errno): already a huge PMD
/// (THP or huge zero page) counts as collapsed; no PTE table, nothing writable (all holes, zero page or read-only
/// entries), a non-swap non-present entry (migration, device-private, device-exclusive, poison) or a page without
/// page semantics (special, ZONE_DEVICE) make that range fail with EINVAL and the walk continues; a locked page or a
/// page with references beyond its mappings (pinned) fail it with EAGAIN and the walk continues; an empty PMD, a VMA
/// that changed while the lock was dropped or a failed swap-in stop the walk with EINVAL; a failed huge page
/// allocation stops it with ENOMEM. The call succeeds only when every range was collapsed; otherwise it reports the
/// last failure.</para>
/// </remarks>
public sealed unsafe partial class AddressSpace
{
    /// <summary>Outcome of one PMD range (kernel: the subset of enum scan_result that Hetmem can produce).</summary>
    private enum CollapseResult
    {
        Fail,
        Succeed,
        PmdNull,
        PmdNone,
        PmdMapped,
        PteNonPresent,
        PageRo,
        PageNull,
        PageAnon,
        PageLock,
        PageCount,
        VmaCheck,
        AllocHugePageFail,
    }

    /// <summary>True for the results after which madvise_collapse moves on to the next PMD (kernel: the whitelist).</summary>
    private static bool CollapseContinues(CollapseResult r) => r is CollapseResult.PmdNull or CollapseResult.PteNonPresent
        or CollapseResult.PageRo or CollapseResult.PageNull or CollapseResult.PageCount or CollapseResult.PageLock;

    /// <summary>kernel: madvise_collapse_errno.</summary>
    private static Errno CollapseErrno(CollapseResult r) => r switch
    {
        CollapseResult.AllocHugePageFail => Errno.ENOMEM,
        CollapseResult.PageCount or CollapseResult.PageLock => Errno.EAGAIN,
        _ => Errno.EINVAL,
    };

    /// <summary>
    /// True when a VMA may hold a PMD-mapped THP regardless of the sysfs setting (kernel: thp_vma_allowable_order
    /// without TVA_ENFORCE_SYSFS): private anonymous, not VM_NOHUGEPAGE, not special or hugetlb.
    /// </summary>
    private static bool CollapseAllowed(Vma v)
        => v.Kind == VmaKind.Anonymous && !v.IsShared && (v.Flags & (VmFlags.NoHugePage | VmFlags.Special | VmFlags.HugeTlb)) == 0;

    /// <summary>
    /// madvise(MADV_COLLAPSE) over [<paramref name="start"/>, <paramref name="end"/>) (kernel: madvise_walk_vmas with
    /// madvise_collapse). Takes and drops the mmap lock itself.
    /// </summary>
    /// <exception cref="MmException">EINVAL, EAGAIN, ENOMEM as described on the class; ENOMEM when part of the range
    /// is not mapped and everything else succeeded.</exception>
    private void MadviseCollapse(ulong start, ulong end)
    {
        bool locked = false;
        bool unmapped = false;
        Errno err = Errno.Ok;
        try
        {
            for (ulong cur = start; cur < end;)
            {
                if (!locked)
                {
                    MmapLock.EnterRead();
                    locked = true;
                }
                ThrowIfDead();
                Vma? v = Vmas.FindFirstEndingAbove(cur);
                if (v is null || v.Start >= end)
                {
                    unmapped = true;
                    break;
                }
                if (v.Start > cur)
                {
                    unmapped = true;
                    cur = v.Start;
                }
                ulong e = Math.Min(v.End, end);
                err = CollapseVmaRange(v, cur, e, ref locked);
                if (err != Errno.Ok)
                {
                    break;
                }
                cur = e;
            }
        }
        finally
        {
            if (locked)
            {
                MmapLock.ExitRead();
            }
        }
        if (err != Errno.Ok)
        {
            MmException.Throw(err, $"madvise(Collapse) of [0x{start:x}, 0x{end:x}) failed");
        }
        if (unmapped)
        {
            MmException.Throw(Errno.ENOMEM, $"madvise: part of [0x{start:x}, 0x{end:x}) is not mapped");
        }
    }

    /// <summary>kernel: madvise_collapse for the part [start, end) of <paramref name="vma"/>. May drop and retake the mmap read lock.</summary>
    private Errno CollapseVmaRange(Vma vma, ulong start, ulong end, ref bool locked)
    {
        if (!CollapseAllowed(vma))
        {
            return Errno.EINVAL;
        }
        ulong hstart = Page.AlignUp(start, Page.PmdSize);
        ulong hend = Page.AlignDown(end, Page.PmdSize);
        if (hend < hstart)
        {
            return Errno.EINVAL;   // kernel: the range lies inside one PMD, so "every PMD collapsed" cannot hold
        }
        ulong want = (hend - hstart) >> (Page.Shift + Page.PmdOrder);
        ulong thps = 0;
        CollapseResult lastFail = CollapseResult.Fail;
        for (ulong addr = hstart; addr < hend; addr += Page.PmdSize)
        {
            if (!locked)
            {
                MmapLock.EnterRead();
                locked = true;
                CollapseResult rv = RevalidateForCollapse(addr, out Vma? nv);
                if (rv != CollapseResult.Succeed)
                {
                    lastFail = rv;
                    break;
                }
                vma = nv!;
                hend = Math.Min(hend, Page.AlignDown(vma.End, Page.PmdSize));
                if (addr >= hend)
                {
                    break;
                }
            }
            CollapseResult r = ScanPmdForCollapse(vma, addr, out int swapped);
            if (r == CollapseResult.Succeed)
            {
                r = CollapseHugePage(addr, swapped, ref locked);
            }
            if (r is CollapseResult.Succeed or CollapseResult.PmdMapped)
            {
                thps++;
                continue;
            }
            lastFail = r;
            if (!CollapseContinues(r))
            {
                break;
            }
        }
        if (!locked)
        {
            MmapLock.EnterRead();
            locked = true;
        }
        return thps == want ? Errno.Ok : CollapseErrno(lastFail);
    }

    /// <summary>kernel: hugepage_vma_revalidate — the VMA at <paramref name="addr"/> still allows a THP covering the PMD.</summary>
    private CollapseResult RevalidateForCollapse(ulong addr, out Vma? vma)
    {
        AssertMmapLocked();
        vma = IsAlive ? Vmas.Find(addr) : null;
        if (vma is null)
        {
            return CollapseResult.VmaCheck;
        }
        if (addr < vma.Start || addr + Page.PmdSize > vma.End || !CollapseAllowed(vma))
        {
            return CollapseResult.VmaCheck;
        }
        return CollapseResult.Succeed;
    }

    /// <summary>kernel: find_pmd_or_thp_or_none.</summary>
    private CollapseResult FindPmdForCollapse(ulong addr, out ulong* pmd)
    {
        pmd = PmdEntry(addr, alloc: false);
        if (pmd == null)
        {
            return CollapseResult.PmdNull;
        }
        var e = new Pte(Volatile.Read(ref *pmd));
        if (e.IsNone)
        {
            return CollapseResult.PmdNone;
        }
        if (e.IsHugeLeaf || e.IsProtNone && (e.Value & Pte.Huge) != 0)
        {
            return CollapseResult.PmdMapped;
        }
        return e.IsPresent ? CollapseResult.Succeed : CollapseResult.PmdNull;
    }

    /// <summary>
    /// kernel: hpage_collapse_scan_pmd with MADV_COLLAPSE's limits (any number of holes, swap and shared entries).
    /// <paramref name="swapped"/> counts the swap entries to bring in first. Mmap lock held for read.
    /// </summary>
    private CollapseResult ScanPmdForCollapse(Vma vma, ulong addr, out int swapped)
    {
        AssertMmapLocked();
        swapped = 0;
        CollapseResult r = FindPmdForCollapse(addr, out ulong* pmd);
        if (r != CollapseResult.Succeed)
        {
            return r;
        }
        ulong* table = TablePtr(new Pte(Volatile.Read(ref *pmd)).Pfn);
        bool writable = false;
        lock (PtlFor(table))
        {
            for (int i = 0; i < 512; i++)
            {
                var e = new Pte(Volatile.Read(ref table[i]));
                if (!e.IsNone && !e.MapsPage)
                {
                    if (e.SwapType != SwapEntryType.Swap)
                    {
                        // Migration, device-private, device-exclusive and poison entries are no swap slots (kernel:
                        // "mm/khugepaged: abort collapse scan on non-swap entries", mm-new, Oct 2025).
                        return CollapseResult.PteNonPresent;
                    }
                    swapped++;
                    continue;
                }
                r = CheckPageForCollapse(e, ref writable, lockedHeads: null);
                if (r != CollapseResult.Succeed)
                {
                    return r;
                }
            }
        }
        return writable ? CollapseResult.Succeed : CollapseResult.PageRo;
    }

    /// <summary>
    /// The per-entry checks shared by the scan and the isolation step (kernel: the loop bodies of
    /// hpage_collapse_scan_pmd and __collapse_huge_page_isolate). With <paramref name="lockedHeads"/> the page is also
    /// trylocked (once per folio) and recorded there.
    /// </summary>
    private CollapseResult CheckPageForCollapse(Pte e, ref bool writable, List<ulong>? lockedHeads)
    {
        if (e.IsNone || e.Pfn == Memory.ZeroPfn)
        {
            return CollapseResult.Succeed;   // a hole or the zero page: zeroes in the THP
        }
        writable |= e.IsWritable;
        ulong pfn = e.Pfn;
        if (e.IsSpecial || e.IsDevMap || !Memory.IsRam(pfn))
        {
            return CollapseResult.PageNull;
        }
        ulong head = Memory.Head(pfn);
        ref FrameInfo h = ref Memory.Frame(head);
        if (!h.Has(FrameFlags.Anon))
        {
            return CollapseResult.PageAnon;
        }
        if (lockedHeads is not null)
        {
            if (lockedHeads.Contains(head))
            {
                return CollapseResult.Succeed;   // a PTE-mapped THP already dealt with
            }
            if (!Memory.TryLockFrame(head))
            {
                return CollapseResult.PageLock;
            }
            lockedHeads.Add(head);
        }
        else if (h.Has(FrameFlags.Locked))
        {
            return CollapseResult.PageLock;
        }
        // kernel: is_refcount_suitable — references beyond the mappings (a GUP pin, a migration in flight) forbid it.
        int mapped = 0;
        int n = 1 << h.Order;
        for (int k = 0; k < n; k++)
        {
            mapped += Volatile.Read(ref Memory.Frame(head + (ulong)k).MapCount);
        }
        if (Volatile.Read(ref h.RefCount) != mapped)
        {
            return CollapseResult.PageCount;
        }
        return CollapseResult.Succeed;
    }

    /// <summary>
    /// kernel: collapse_huge_page. Called with the mmap read lock held; returns with it released (<paramref name="locked"/>
    /// false). Allocates without the lock, swaps in under the read lock, and collapses under the write lock.
    /// </summary>
    private CollapseResult CollapseHugePage(ulong addr, int swapped, ref bool locked)
    {
        MmapLock.ExitRead();
        locked = false;
        ulong thp = Memory.Allocate(Page.PmdOrder, zero: false);
        if (thp == Page.NoPfn)
        {
            return CollapseResult.AllocHugePageFail;
        }
        CollapseResult r;
        Vma? vma;
        if (swapped > 0)
        {
            MmapLock.EnterRead();
            try
            {
                r = RevalidateForCollapse(addr, out vma);
                if (r == CollapseResult.Succeed)
                {
                    r = FindPmdForCollapse(addr, out _);
                }
                if (r == CollapseResult.Succeed)
                {
                    r = SwapInForCollapse(vma!, addr);
                }
            }
            finally
            {
                MmapLock.ExitRead();
            }
            if (r != CollapseResult.Succeed)
            {
                Memory.Put(thp);
                return r;
            }
        }
        MmapLock.EnterWrite();
        try
        {
            r = RevalidateForCollapse(addr, out vma);
            if (r == CollapseResult.Succeed)
            {
                r = FindPmdForCollapse(addr, out ulong* pmd);
                if (r == CollapseResult.Succeed)
                {
                    r = CollapseLocked(vma!, addr, pmd, thp);
                }
            }
        }
        finally
        {
            MmapLock.ExitWrite();
        }
        if (r != CollapseResult.Succeed)
        {
            Memory.Put(thp);
        }
        return r;
    }

    /// <summary>kernel: __collapse_huge_page_swapin — read-faults every swap entry of the PMD back in. Mmap read lock held.</summary>
    private CollapseResult SwapInForCollapse(Vma vma, ulong addr)
    {
        for (int i = 0; i < 512; i++)
        {
            ulong a = addr + ((ulong)i << Page.Shift);
            Pte e = Lookup(a, out int order, out _);
            if (order != 0 || e.SwapType != SwapEntryType.Swap)
            {
                continue;
            }
            VmFault f = HandleMmFaultLocked(vma, a, FaultFlags.None);
            if (f is not (VmFault.Ok or VmFault.Retry))
            {
                return CollapseResult.Fail;
            }
            if (Lookup(a, out _, out _).SwapType == SwapEntryType.Swap)
            {
                return CollapseResult.PageLock;   // kernel: VM_FAULT_RETRY is reported as a page-lock failure
            }
        }
        return CollapseResult.Succeed;
    }

    /// <summary>
    /// The collapse under the mmap write lock (kernel: the second half of collapse_huge_page with
    /// __collapse_huge_page_isolate and __collapse_huge_page_copy). On failure the PTE table is put back unchanged.
    /// </summary>
    private CollapseResult CollapseLocked(Vma vma, ulong addr, ulong* pmd, ulong thp)
    {
        Debug.Assert(MmapLock.IsWriteHeld);
        var pmdE = new Pte(Volatile.Read(ref *pmd));
        ulong tablePfn = pmdE.Pfn;
        ulong* table = TablePtr(tablePfn);

        // Detach the table: no walker can reach the old entries after the shootdown.
        var range = new MmuNotifierRange(this, addr, addr + Page.PmdSize, MmuNotifierEvent.Clear);
        Notifiers.InvalidateRangeStart(range);
        lock (PtlFor(pmd))
        {
            *pmd = 0;
        }
        FlushTlb();
        Notifiers.InvalidateRangeEnd(range);

        // Isolate: lock every page and check it is still collapsible.
        var lockedHeads = new List<ulong>();
        CollapseResult r = CollapseResult.Succeed;
        bool writable = false;
        lock (PtlFor(table))
        {
            for (int i = 0; i < 512 && r == CollapseResult.Succeed; i++)
            {
                var e = new Pte(Volatile.Read(ref table[i]));
                r = !e.IsNone && !e.MapsPage ? CollapseResult.PteNonPresent : CheckPageForCollapse(e, ref writable, lockedHeads);
            }
        }
        if (r == CollapseResult.Succeed && !writable)
        {
            r = CollapseResult.PageRo;
        }
        if (r != CollapseResult.Succeed)
        {
            lock (PtlFor(pmd))
            {
                *pmd = pmdE.Value;
            }
            foreach (ulong head in lockedHeads)
            {
                Memory.UnlockFrame(head);
            }
            return r;
        }

        // Copy: holes and the zero page become zeroes.
        for (int i = 0; i < 512; i++)
        {
            var e = new Pte(Volatile.Read(ref table[i]));
            ulong dst = thp + (ulong)i;
            if (e.IsNone || e.Pfn == Memory.ZeroPfn)
            {
                Memory.ZeroFrames(dst, 1);
            }
            else
            {
                Memory.CopyFrame(dst, e.Pfn);
            }
        }

        // Install the huge PMD, then release the old pages and the table.
        InitAnonPage(thp, vma, addr, Page.PmdOrder);
        lock (PtlFor(pmd))
        {
            *pmd = Pte.Make(thp, (vma.Flags & VmFlags.Write) != 0, Pte.Huge | Pte.Dirty).Value;
            Memory.AddMap(thp);
        }
        MmuGather g = MmuGather.Rent();
        lock (PtlFor(table))
        {
            for (int i = 0; i < 512; i++)
            {
                var e = new Pte(table[i]);
                table[i] = 0;
                if (!e.IsNone)
                {
                    ReleaseEntry(vma, e, 0, g);
                }
            }
        }
        foreach (ulong head in lockedHeads)
        {
            Memory.UnlockFrame(head);
        }
        g.NeedFlush = false;   // the shootdown above already covered these entries
        FinishGather(g);
        FreeTable(tablePfn);
        return CollapseResult.Succeed;
    }
}
