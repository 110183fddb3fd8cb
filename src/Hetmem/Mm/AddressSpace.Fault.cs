using System.Diagnostics;
using Hetmem.Diagnostics;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Mm;

/// <summary>The page-fault handler (kernel: mm/memory.c handle_mm_fault and its helpers, mm/huge_memory.c, fs/dax.c, mm/hugetlb.c).</summary>
public sealed unsafe partial class AddressSpace
{
    private ulong _hugeZeroPfn = Page.NoPfn;     // set once (CAS) when this space takes its reference on the shared huge zero page

    /// <summary>
    /// Handles a CPU fault at <paramref name="address"/> (kernel: do_user_addr_fault): takes the mmap lock for
    /// read, checks the VMA and its permissions, and resolves the fault until the access is permitted.
    /// </summary>
    /// <exception cref="SegmentationFault">No VMA (MAPERR) or no permission (ACCERR).</exception>
    /// <exception cref="BusError">Beyond end of file, truncated DAX, poison, hugetlb pool exhausted.</exception>
    /// <exception cref="MmException">ENOMEM when memory is exhausted.</exception>
    public void HandleCpuFault(ulong address, bool write)
    {
        using TraceSpan span = TraceLog.Span(TraceCategory.CpuFault, "cpu_fault", TraceArg.Address(address), TraceArg.Of("write", write ? 1 : 0));
        MmapLock.EnterRead();
        VmFault r;
        try
        {
            Vma? vma = Vmas.Find(address);
            if (vma is null || address >= TaskSize)
            {
                throw new SegmentationFault(address, SegvCode.MapErr, "no VMA maps this address");
            }
            if (write ? (vma.Flags & VmFlags.Write) == 0 : (vma.Flags & (VmFlags.Read | VmFlags.Write | VmFlags.Exec)) == 0)
            {
                throw new SegmentationFault(address, SegvCode.AccErr, $"{(write ? "write" : "read")} not permitted by {vma}");
            }
            r = FaultUntilDoneLocked(vma, address, write ? FaultFlags.Write : FaultFlags.None);
        }
        finally
        {
            MmapLock.ExitRead();
        }
        ThrowForFault(r, address);
    }

    internal static void ThrowForFault(VmFault r, ulong address)
    {
        switch (r)
        {
            case VmFault.Ok:
                return;
            case VmFault.SigBus:
                throw new BusError(address, "no page can back this address (beyond end of file, truncated, poisoned or pool exhausted)");
            case VmFault.Oom:
                throw new MmException(Errno.ENOMEM, $"out of memory resolving a fault at 0x{address:x}");
            default:
                throw new SegmentationFault(address, SegvCode.AccErr, "fault could not be resolved");
        }
    }

    /// <summary>Runs the fault handler until it reports something other than Retry, then checks the entry permits the access.</summary>
    internal VmFault FaultUntilDoneLocked(Vma vma, ulong address, FaultFlags flags)
    {
        AssertMmapLocked();
        for (int spins = 0; ; spins++)
        {
            VmFault r = HandleMmFaultLocked(vma, address, flags);
            if (r != VmFault.Ok && r != VmFault.Retry)
            {
                return r;
            }
            Pte e = Lookup(address, out _, out _);
            if (e.IsPresent && ((flags & FaultFlags.Write) == 0 || e.IsWritable))
            {
                return VmFault.Ok;
            }
            if (spins > 1_000_000)
            {
                throw new InvalidOperationException($"fault at 0x{address:x} does not converge: {e}");
            }
            if (spins > 16)
            {
                Thread.Yield();
            }
        }
    }

    /// <summary>
    /// One pass of the fault handler for <paramref name="address"/> in <paramref name="vma"/> (kernel:
    /// handle_mm_fault). The caller holds the mmap lock for read and has checked the VMA's permissions.
    /// </summary>
    internal VmFault HandleMmFaultLocked(Vma vma, ulong address, FaultFlags flags)
    {
        AssertMmapLocked();
        Debug.Assert(address >= vma.Start && address < vma.End);
        Counters.Inc(Counter.PgFault);
        using TraceSpan span = TraceLog.Span(TraceCategory.CpuFault, "handle_mm_fault", TraceArg.Address(address), TraceArg.Of("flags", (long)flags));
        ulong addr = Page.AlignDown(address, Page.Size);
        bool write = (flags & FaultFlags.Write) != 0;
        switch (vma.Kind)
        {
            case VmaKind.HugeTlb:
                return HugetlbFault(vma, addr, write);
            case VmaKind.PfnMap:
            case VmaKind.MixedMap:
                return PfnMapFault(vma, addr, write);
        }

        ulong* pud = PudEntry(addr, alloc: true);
        if (pud == null)
        {
            return VmFault.Oom;
        }
        var pudE = new Pte(Volatile.Read(ref *pud));
        if (pudE.IsNone && vma.Kind == VmaKind.Dax && CanMapHuge(vma, addr, Page.PudOrder))
        {
            VmFault r = DaxHugeFault(vma, addr, write, pud, Page.PudOrder);
            if (r != VmFault.Fallback)
            {
                return r;
            }
        }
        pudE = new Pte(Volatile.Read(ref *pud));
        if (pudE.MapsPage && (pudE.Value & Pte.Huge) != 0)
        {
            if (pudE.IsProtNone)
            {
                RestoreProtNone(pud, pudE);
                return VmFault.Retry;
            }
            return HugeLeafWriteFault(vma, addr, write, pud, Page.PudOrder);
        }
        ulong* pmdTable = NextTable(pud, alloc: true);
        if (pmdTable == null)
        {
            return new Pte(Volatile.Read(ref *pud)).IsNone ? VmFault.Oom : VmFault.Retry;
        }
        ulong* pmd = pmdTable + PmdIndex(addr);
        var pmdE = new Pte(Volatile.Read(ref *pmd));
        if (pmdE.IsNone)
        {
            VmFault r = VmFault.Fallback;
            if (vma.Kind == VmaKind.Dax && CanMapHuge(vma, addr, Page.PmdOrder))
            {
                r = DaxHugeFault(vma, addr, write, pmd, Page.PmdOrder);
            }
            else if (IsThpEligible(vma, addr))
            {
                r = AnonHugeFault(vma, addr, write, pmd);
            }
            if (r != VmFault.Fallback)
            {
                return r;
            }
            pmdE = new Pte(Volatile.Read(ref *pmd));
        }
        if (pmdE.IsProtNone && (pmdE.Value & Pte.Huge) != 0)
        {
            RestoreProtNone(pmd, pmdE);
            return VmFault.Retry;
        }
        if (pmdE.IsHugeLeaf)
        {
            VmFault r = HugePmdFault(vma, addr, flags, pmd, pmdE);
            if (r != VmFault.Fallback)
            {
                return r;
            }
        }
        else if (pmdE.SwapType == SwapEntryType.Migration)
        {
            WaitForEntryChange(pmd, pmdE);
            return VmFault.Retry;
        }
        else if (pmdE.SwapType == SwapEntryType.DevicePrivate)
        {
            return DevicePrivateFault(vma, addr, write, pmdE);
        }
        ulong* pteTable = NextTable(pmd, alloc: true);
        if (pteTable == null)
        {
            return new Pte(Volatile.Read(ref *pmd)).IsNone ? VmFault.Oom : VmFault.Retry;
        }
        return PteFault(vma, addr, flags, pteTable + PteIndex(addr));
    }

    private VmFault PteFault(Vma vma, ulong addr, FaultFlags flags, ulong* pte)
    {
        bool write = (flags & FaultFlags.Write) != 0;
        var e = new Pte(Volatile.Read(ref *pte));
        if (e.IsNone)
        {
            if (vma.Kind == VmaKind.Anonymous)
            {
                return write ? AnonWriteFault(vma, addr, pte) : ZeroPageFault(addr, pte);
            }
            return FileFault(vma, addr, write, pte);
        }
        if (e.IsProtNone)
        {
            RestoreProtNone(pte, e);
            return VmFault.Retry;
        }
        if (!e.IsPresent)
        {
            switch (e.SwapType)
            {
                case SwapEntryType.Swap:
                    return SwapInFault(vma, addr, pte, e);
                case SwapEntryType.Migration:
                    WaitForEntryChange(pte, e);
                    return VmFault.Retry;
                case SwapEntryType.DevicePrivate:
                    return DevicePrivateFault(vma, addr, write, e);
                case SwapEntryType.DeviceExclusive:
                    return RestoreExclusive(vma, addr, pte, e);
                default:
                    return VmFault.SigBus;
            }
        }
        if (write && !e.IsWritable)
        {
            return WriteProtectFault(vma, addr, pte, e);
        }
        if (write && !e.IsDirty)
        {
            Interlocked.Or(ref *pte, Pte.Dirty | Pte.Accessed);
        }
        return VmFault.Ok;
    }

    /// <summary>The VMA is accessible again (the caller checked): a PROT_NONE entry becomes present and read-only.</summary>
    private void RestoreProtNone(ulong* slot, Pte e)
    {
        lock (PtlFor(slot))
        {
            if (*slot == e.Value)
            {
                *slot = (e.Value & ~Pte.ProtNone & ~Pte.Write) | Pte.Present;
            }
        }
    }

    private VmFault ZeroPageFault(ulong addr, ulong* pte)
    {
        lock (PtlFor(pte))
        {
            if (*pte == 0)
            {
                *pte = Pte.Make(Memory.ZeroPfn, false).Value;
            }
        }
        Counters.Inc(Counter.ZeroPageFault);
        return VmFault.Ok;
    }

    /// <summary>
    /// The recheck after allocating outside the lock (kernel: the pte_none / pte_same test under the page-table lock
    /// in do_anonymous_page, finish_fault, do_swap_page, wp_page_copy): under the page-table lock of
    /// <paramref name="slot"/>, if it still holds <paramref name="expected"/>, stores <paramref name="entry"/> and adds a
    /// mapping of <paramref name="pfn"/>. False when another thread changed the entry first: the caller still owns its
    /// reference on <paramref name="pfn"/> and must drop it (after closing any invalidation it opened).
    /// </summary>
    private bool TryInstall(ulong* slot, ulong expected, Pte entry, ulong pfn)
    {
        lock (PtlFor(slot))
        {
            if (*slot != expected)
            {
                return false;
            }
            *slot = entry.Value;
            Memory.AddMap(pfn);
            return true;
        }
    }

    /// <summary><see cref="TryInstall"/>, dropping the caller's reference on <paramref name="pfn"/> when the entry changed.</summary>
    private bool InstallOrPut(ulong* slot, ulong expected, Pte entry, ulong pfn)
    {
        if (TryInstall(slot, expected, entry, pfn))
        {
            return true;
        }
        Memory.Put(pfn);
        return false;
    }

    private ulong AllocPageOrReclaim(int order, bool zero)
    {
        ulong pfn = Memory.Allocate(order, zero);
        if (pfn == Page.NoPfn && order == 0)
        {
            Reclaim.DirectReclaim(this, 32);
            pfn = Memory.Allocate(order, zero);
        }
        return pfn;
    }

    internal void InitAnonPage(ulong pfn, Vma vma, ulong addr, int order = 0)
    {
        ref FrameInfo f = ref Memory.Frame(pfn);
        f.Mapping = vma.PrepareAnon();
        f.Index = vma.PgoffOf(addr);
        Memory.SetFlags(pfn, FrameFlags.Anon | FrameFlags.SwapBacked | FrameFlags.UpToDate | FrameFlags.AnonExclusive | (order > 0 ? FrameFlags.Thp : 0));
    }

    private VmFault AnonWriteFault(Vma vma, ulong addr, ulong* pte)
    {
        ulong pfn = AllocPageOrReclaim(0, zero: true);
        if (pfn == Page.NoPfn)
        {
            return VmFault.Oom;
        }
        InitAnonPage(pfn, vma, addr);
        if (!InstallOrPut(pte, 0, Pte.Make(pfn, (vma.Flags & VmFlags.Write) != 0, Pte.Dirty), pfn))
        {
            return VmFault.Retry;
        }
        Counters.Inc(Counter.AnonFault);
        return VmFault.Ok;
    }

    /// <summary>do_wp_page: a write to a present, read-only entry of a writable VMA.</summary>
    private VmFault WriteProtectFault(Vma vma, ulong addr, ulong* pte, Pte e)
    {
        ulong pfn = e.Pfn;
        if (e.IsSpecial)
        {
            return VmFault.SigSegv;
        }
        if (vma.IsShared)
        {
            // Shared file or DAX page: page_mkwrite marks it dirty, then the entry becomes writable.
            lock (PtlFor(pte))
            {
                if (*pte == e.Value)
                {
                    *pte = e.Value | Pte.Write | Pte.Dirty | Pte.Accessed;
                }
            }
            vma.File?.MarkDirty(vma.PgoffOf(addr));
            return VmFault.Ok;
        }
        if (pfn != Memory.ZeroPfn && Memory.IsRam(pfn))
        {
            ref FrameInfo f = ref Memory.Frame(pfn);
            // Reuse when the page is exclusively ours (kernel: wp_can_reuse_anon_folio): marked exclusive (a pinned
            // page stays exclusive, so a GUP pin and the CPU keep seeing the same page), or only mapped and
            // referenced here.
            if (f.Has(FrameFlags.Anon) && f.Order == 0
                && (f.Has(FrameFlags.AnonExclusive) && Volatile.Read(ref f.MapCount) == 1 || Volatile.Read(ref f.RefCount) == 1 && Volatile.Read(ref f.MapCount) == 1))
            {
                // Reuse: we are the only user of this anonymous page.
                lock (PtlFor(pte))
                {
                    if (*pte == e.Value)
                    {
                        *pte = e.Value | Pte.Write | Pte.Dirty | Pte.Accessed;
                        Memory.SetFlags(pfn, FrameFlags.AnonExclusive);
                    }
                }
                return VmFault.Ok;
            }
        }
        return CowReplace(vma, addr, pte, e);
    }

    /// <summary>Breaks COW: copies the page into a new anonymous page and replaces the entry inside a CLEAR bracket.</summary>
    private VmFault CowReplace(Vma vma, ulong addr, ulong* pte, Pte e)
    {
        ulong oldPfn = e.Pfn;
        bool fromZero = oldPfn == Memory.ZeroPfn || !Memory.IsRam(oldPfn) && Memory.Address(oldPfn) == null;
        ulong pfn = AllocPageOrReclaim(0, zero: fromZero);
        if (pfn == Page.NoPfn)
        {
            return VmFault.Oom;
        }
        if (!fromZero)
        {
            Memory.CopyFrame(pfn, oldPfn);
        }
        InitAnonPage(pfn, vma, addr);
        var range = new MmuNotifierRange(this, addr, addr + Page.Size, MmuNotifierEvent.Clear);
        Notifiers.InvalidateRangeStart(range);
        bool replaced = TryInstall(pte, e.Value, Pte.Make(pfn, true, Pte.Dirty), pfn);
        if (replaced)
        {
            FlushTlb();
        }
        Notifiers.InvalidateRangeEnd(range);
        if (!replaced)
        {
            Memory.Put(pfn);
            return VmFault.Retry;
        }
        if (oldPfn != Memory.ZeroPfn)
        {
            Memory.RemoveMap(oldPfn);
            Memory.Put(oldPfn);
        }
        Counters.Inc(Counter.CowFault);
        return VmFault.Ok;
    }

    private VmFault FileFault(Vma vma, ulong addr, bool write, ulong* pte)
    {
        IMappable file = vma.File!;
        ulong pgoff = vma.PgoffOf(addr);
        bool shared = vma.IsShared;
        Diagnostics.Scheduling.SchedulePoint.BeforeEnterRead(file.InvalidateLock, "invalidate_lock_read");
        file.InvalidateLock.EnterReadLock();
        try
        {
            if (pgoff >= Page.AlignUp(file.Size, Page.Size) >> Page.Shift)
            {
                return VmFault.SigBus;
            }
            Errno err = file.GetPage(pgoff, write && shared, 0, out ulong pfn, out _);
            if (err != Errno.Ok)
            {
                return err == Errno.ENOMEM && file.Kind != MappableKind.Hugetlb ? VmFault.Oom : VmFault.SigBus;
            }
            Counters.Inc(file.Kind == MappableKind.Dax ? Counter.DaxPteFault : Counter.FileFault);
            if (!shared && write)
            {
                // Private write: copy the file page into an anonymous page (COW from the file).
                ulong copy = AllocPageOrReclaim(0, zero: false);
                if (copy == Page.NoPfn)
                {
                    Memory.Put(pfn);
                    return VmFault.Oom;
                }
                Memory.CopyFrame(copy, pfn);
                Memory.Put(pfn);
                InitAnonPage(copy, vma, addr);
                if (!InstallOrPut(pte, 0, Pte.Make(copy, true, Pte.Dirty), copy))
                {
                    return VmFault.Retry;
                }
                Counters.Inc(Counter.CowFault);
                return VmFault.Ok;
            }
            bool writable = shared && write && (vma.Flags & VmFlags.Write) != 0;
            ulong extra = (writable ? Pte.Dirty : 0) | (file.Kind == MappableKind.Dax ? Pte.DevMap : 0);
            if (!InstallOrPut(pte, 0, Pte.Make(pfn, writable, extra), pfn))
            {
                return VmFault.Retry;
            }
            if (writable)
            {
                file.MarkDirty(pgoff);
            }
            return VmFault.Ok;
        }
        finally
        {
            file.InvalidateLock.ExitReadLock();
        }
    }

    /// <summary>True when a 2^order mapping around <paramref name="addr"/> fits the VMA and the file offset is aligned the same way.</summary>
    private static bool CanMapHuge(Vma vma, ulong addr, int order)
    {
        ulong size = Page.Bytes(order);
        ulong start = Page.AlignDown(addr, size);
        if (start < vma.Start || start + size > vma.End || start + size < start)
        {
            return false;
        }
        ulong pgoff = vma.PgoffOf(start);
        return (pgoff & ((1UL << order) - 1)) == 0 && (vma.IsShared || vma.Kind != VmaKind.Dax);
    }

    private VmFault DaxHugeFault(Vma vma, ulong addr, bool write, ulong* slot, int order)
    {
        IMappable file = vma.File!;
        ulong size = Page.Bytes(order);
        ulong start = Page.AlignDown(addr, size);
        ulong pgoff = vma.PgoffOf(start);
        Diagnostics.Scheduling.SchedulePoint.BeforeEnterRead(file.InvalidateLock, "invalidate_lock_read");
        file.InvalidateLock.EnterReadLock();
        try
        {
            if (pgoff + (1UL << order) > Page.AlignUp(file.Size, Page.Size) >> Page.Shift)
            {
                return VmFault.Fallback;
            }
            Errno err = file.GetPage(pgoff, write, order, out ulong pfn, out int got);
            if (err != Errno.Ok)
            {
                return VmFault.Fallback;
            }
            if (got < order)
            {
                Memory.Put(pfn);
                return VmFault.Fallback;
            }
            bool writable = write && (vma.Flags & VmFlags.Write) != 0;
            if (!InstallOrPut(slot, 0, Pte.Make(pfn, writable, Pte.Huge | Pte.DevMap | (writable ? Pte.Dirty : 0)), pfn))
            {
                return VmFault.Retry;
            }
            if (writable)
            {
                file.MarkDirty(pgoff);
            }
            Counters.Inc(order == Page.PudOrder ? Counter.DaxPudFault : Counter.DaxPmdFault);
            return VmFault.Ok;
        }
        finally
        {
            file.InvalidateLock.ExitReadLock();
        }
    }

    /// <summary>A write to a read-only huge leaf (DAX PMD/PUD of a shared mapping): mkwrite in place.</summary>
    private VmFault HugeLeafWriteFault(Vma vma, ulong addr, bool write, ulong* slot, int order)
    {
        var e = new Pte(Volatile.Read(ref *slot));
        if (!write || e.IsWritable)
        {
            return VmFault.Ok;
        }
        if (!vma.IsShared)
        {
            return VmFault.SigSegv;
        }
        lock (PtlFor(slot))
        {
            if (*slot == e.Value)
            {
                *slot = e.Value | Pte.Write | Pte.Dirty | Pte.Accessed;
            }
        }
        vma.File?.MarkDirty(vma.PgoffOf(Page.AlignDown(addr, Page.Bytes(order))));
        return VmFault.Ok;
    }

    private bool IsThpEligible(Vma vma, ulong addr)
    {
        if (vma.Kind != VmaKind.Anonymous || (vma.Flags & VmFlags.HugePage) == 0 || (vma.Flags & VmFlags.NoHugePage) != 0)
        {
            return false;
        }
        ulong start = Page.AlignDown(addr, Page.PmdSize);
        return start >= vma.Start && start + Page.PmdSize <= vma.End;
    }

    /// <summary>
    /// The huge zero page, taking this space's one user reference on first use (kernel: mm_get_huge_zero_folio with
    /// MMF_HUGE_ZERO_PAGE); <see cref="Page.NoPfn"/> when none can be allocated. Released at <see cref="Exit"/>.
    /// </summary>
    internal ulong HugeZeroPfn
    {
        get
        {
            ulong z = Volatile.Read(ref _hugeZeroPfn);
            if (z != Page.NoPfn)
            {
                return z;
            }
            ulong pfn = Memory.GetHugeZeroPage();
            if (pfn == Page.NoPfn)
            {
                return Page.NoPfn;
            }
            ulong seen = Interlocked.CompareExchange(ref _hugeZeroPfn, pfn, Page.NoPfn);
            if (seen != Page.NoPfn)
            {
                Memory.PutHugeZeroPage();   // another thread took this space's reference first
                return seen;
            }
            return pfn;
        }
    }

    private VmFault AnonHugeFault(Vma vma, ulong addr, bool write, ulong* pmd)
    {
        ulong start = Page.AlignDown(addr, Page.PmdSize);
        if (!write)
        {
            ulong z = HugeZeroPfn;
            if (z == Page.NoPfn)
            {
                return VmFault.Fallback;
            }
            lock (PtlFor(pmd))
            {
                if (*pmd == 0)
                {
                    *pmd = Pte.Make(z, false, Pte.Huge).Value;
                }
            }
            return VmFault.Ok;
        }
        ulong pfn = Memory.Allocate(Page.PmdOrder, zero: true);
        if (pfn == Page.NoPfn)
        {
            return VmFault.Fallback;
        }
        InitAnonPage(pfn, vma, start, Page.PmdOrder);
        if (!InstallOrPut(pmd, 0, Pte.Make(pfn, (vma.Flags & VmFlags.Write) != 0, Pte.Huge | Pte.Dirty), pfn))
        {
            return VmFault.Retry;
        }
        Counters.Inc(Counter.ThpFaultAlloc);
        return VmFault.Ok;
    }

    /// <summary>A fault on an anonymous THP or DAX PMD leaf.</summary>
    private VmFault HugePmdFault(Vma vma, ulong addr, FaultFlags flags, ulong* pmd, Pte e)
    {
        bool write = (flags & FaultFlags.Write) != 0;
        if (e.IsDevMap || vma.Kind == VmaKind.Dax)
        {
            return HugeLeafWriteFault(vma, addr, write, pmd, Page.PmdOrder);
        }
        if (e.IsPresent && (!write || e.IsWritable))
        {
            return VmFault.Ok;
        }
        if (e.IsPresent && write && e.Pfn == _hugeZeroPfn)
        {
            // Write to the huge zero page: allocate a real THP in its place.
            ulong start = Page.AlignDown(addr, Page.PmdSize);
            ulong pfn = Memory.Allocate(Page.PmdOrder, zero: true);
            if (pfn != Page.NoPfn)
            {
                InitAnonPage(pfn, vma, start, Page.PmdOrder);
                var range = new MmuNotifierRange(this, start, start + Page.PmdSize, MmuNotifierEvent.Clear);
                Notifiers.InvalidateRangeStart(range);
                bool ok = TryInstall(pmd, e.Value, Pte.Make(pfn, true, Pte.Huge | Pte.Dirty), pfn);
                FlushTlb();
                Notifiers.InvalidateRangeEnd(range);
                if (!ok)
                {
                    Memory.Put(pfn);
                }
                return VmFault.Retry;
            }
        }
        // Anything else (COW of a shared THP, PROT_NONE restore): split to PTEs and let the PTE path decide.
        SplitHugePmd(Page.AlignDown(addr, Page.PmdSize), pmd);
        return VmFault.Fallback;
    }

    /// <summary>
    /// hugetlb_fault. A shared mapping maps the file's huge page (the first fault allocates it, consuming the file's
    /// promise). A private mapping maps an existing file page read-only and otherwise owns private huge pages from the
    /// pool (consuming the VMA's reservation); a write to a file page or to a page it does not own copies it.
    /// </summary>
    private VmFault HugetlbFault(Vma vma, ulong addr, bool write)
    {
        int order = vma.HugeOrder;
        ulong size = Page.Bytes(order);
        ulong start = Page.AlignDown(addr, size);
        ulong* slot = order == Page.PudOrder ? PudEntry(start, alloc: true) : PmdEntry(start, alloc: true);
        if (slot == null)
        {
            return VmFault.Oom;
        }
        var e = new Pte(Volatile.Read(ref *slot));
        if (e.IsProtNone)
        {
            RestoreProtNone(slot, e);
            return VmFault.Retry;
        }
        if (!e.IsNone && !e.IsPresent)
        {
            if (e.SwapType == SwapEntryType.Migration)
            {
                WaitForEntryChange(slot, e);
                return VmFault.Retry;
            }
            return VmFault.SigBus;
        }
        var file = (HugetlbFile)vma.File!;
        if (e.IsPresent)
        {
            if (!write || e.IsWritable)
            {
                return VmFault.Ok;
            }
            if (vma.IsShared || Memory.Frame(e.Pfn).Mapping is AnonVma && Volatile.Read(ref Memory.Frame(e.Pfn).MapCount) == 1)
            {
                lock (PtlFor(slot))
                {
                    if (*slot == e.Value)
                    {
                        *slot = e.Value | Pte.Write | Pte.Dirty | Pte.Accessed;
                    }
                }
                return VmFault.Ok;
            }
            return HugetlbCow(vma, file, start, slot, e, order);
        }
        Diagnostics.Scheduling.SchedulePoint.BeforeEnterRead(file.InvalidateLock, "invalidate_lock_read");
        file.InvalidateLock.EnterReadLock();
        try
        {
            ulong pgoff = vma.PgoffOf(start);
            if (pgoff >= Page.AlignUp(file.Size, Page.Size) >> Page.Shift)
            {
                return VmFault.SigBus;
            }
            ulong pfn;
            bool writable;
            if (vma.IsShared)
            {
                if (file.GetPage(pgoff, write, order, out pfn, out _) != Errno.Ok)
                {
                    return VmFault.SigBus;
                }
                writable = write && (vma.Flags & VmFlags.Write) != 0;
            }
            else if (!write && file.FindPage(pgoff, out pfn) == Errno.Ok)
            {
                writable = false;   // a private read of a page the file has: share it until written
            }
            else
            {
                pfn = AllocPrivateHugePage(vma, file, start, Page.NoPfn);
                if (pfn == Page.NoPfn)
                {
                    return VmFault.SigBus;
                }
                writable = (vma.Flags & VmFlags.Write) != 0;
            }
            if (!TryInstall(slot, 0, Pte.Make(pfn, writable, Pte.Huge | (writable ? Pte.Dirty : 0)), pfn))
            {
                file.Pool.ReleasePage(pfn);
                return VmFault.Retry;
            }
            Counters.Inc(Counter.HugetlbFault);
            return VmFault.Ok;
        }
        finally
        {
            file.InvalidateLock.ExitReadLock();
        }
    }

    /// <summary>
    /// Takes a huge page from the pool for a private hugetlb mapping (kernel: alloc_hugetlb_folio for a MAP_PRIVATE
    /// vma), consuming the VMA's reservation when it has one left, and fills it with zeroes or a copy of
    /// <paramref name="copyFrom"/>. Returns <see cref="Page.NoPfn"/> when the pool has nothing for it (SIGBUS).
    /// </summary>
    private ulong AllocPrivateHugePage(Vma vma, HugetlbFile file, ulong start, ulong copyFrom)
    {
        bool reserved = vma.Reservation?.TryTake() ?? false;
        if (file.Pool.AllocatePage(reserved, out ulong pfn) != Errno.Ok)
        {
            if (reserved)
            {
                Interlocked.Increment(ref vma.Reservation!.Remaining);
            }
            return Page.NoPfn;
        }
        ulong n = 1UL << file.Pool.Order;
        if (copyFrom == Page.NoPfn)
        {
            Memory.ZeroFrames(pfn, n);
        }
        else
        {
            Memory.CopyFrame(pfn, copyFrom, n);
        }
        ref FrameInfo f = ref Memory.Frame(pfn);
        f.Mapping = vma.PrepareAnon();
        f.Index = vma.PgoffOf(start);
        return pfn;
    }

    /// <summary>hugetlb_wp: a write to a private hugetlb mapping's read-only page it does not own: copy it (CLEAR bracket).</summary>
    private VmFault HugetlbCow(Vma vma, HugetlbFile file, ulong start, ulong* slot, Pte e, int order)
    {
        ulong pfn = AllocPrivateHugePage(vma, file, start, e.Pfn);
        if (pfn == Page.NoPfn)
        {
            return VmFault.SigBus;
        }
        var range = new MmuNotifierRange(this, start, start + Page.Bytes(order), MmuNotifierEvent.Clear);
        Notifiers.InvalidateRangeStart(range);
        bool replaced = TryInstall(slot, e.Value, Pte.Make(pfn, true, Pte.Huge | Pte.Dirty), pfn);
        if (replaced)
        {
            FlushTlb();
        }
        Notifiers.InvalidateRangeEnd(range);
        if (!replaced)
        {
            file.Pool.ReleasePage(pfn);
            return VmFault.Retry;
        }
        Memory.RemoveMap(e.Pfn);
        Memory.Put(e.Pfn);
        Counters.Inc(Counter.CowFault);
        return VmFault.Ok;
    }

    private VmFault PfnMapFault(Vma vma, ulong addr, bool write)
    {
        Pte e = Lookup(addr, out _, out ulong* slot);
        if (!e.IsPresent)
        {
            return VmFault.SigBus;
        }
        if (write && !e.IsWritable)
        {
            if (vma.Kind == VmaKind.MixedMap && !vma.IsShared && !e.IsSpecial)
            {
                return CowReplace(vma, addr, slot, e);
            }
            if (vma.IsShared && (vma.Flags & VmFlags.Write) != 0)
            {
                // A shared writable PFN map with a read-only entry (mprotect took write away and gave it back: the
                // entry is not dirty, so the upgrade was left to this fault). Without a pfn_mkwrite hook the entry
                // just becomes writable (kernel: do_wp_page -> wp_pfn_shared -> wp_page_reuse).
                lock (PtlFor(slot))
                {
                    ulong cur = Volatile.Read(ref *slot);
                    if (cur == e.Value)
                    {
                        *slot = cur | Pte.Write | Pte.Dirty;
                    }
                }
                return VmFault.Ok;
            }
            return VmFault.SigSegv;
        }
        return VmFault.Ok;
    }

    private VmFault SwapInFault(Vma vma, ulong addr, ulong* pte, Pte e)
    {
        SwapStore? swap = Swap;
        if (swap is null)
        {
            return VmFault.SigBus;
        }
        ulong pfn = AllocPageOrReclaim(0, zero: false);
        if (pfn == Page.NoPfn)
        {
            return VmFault.Oom;
        }
        uint slot = (uint)e.Pfn;
        swap.Read(slot, Memory.FrameSpan(pfn));
        InitAnonPage(pfn, vma, addr);
        if (!InstallOrPut(pte, e.Value, Pte.Make(pfn, (vma.Flags & VmFlags.Write) != 0, Pte.Dirty), pfn))
        {
            return VmFault.Retry;
        }
        swap.Free(slot);
        Counters.Inc(Counter.SwapIn);
        Counters.Inc(Counter.PgMajFault);
        return VmFault.Ok;
    }

    /// <summary>Waits until the entry at <paramref name="slot"/> no longer holds <paramref name="e"/> (kernel: migration_entry_wait).</summary>
    internal static void WaitForEntryChange(ulong* slot, Pte e)
    {
        var spin = new SpinWait();
        while (Volatile.Read(ref *slot) == e.Value)
        {
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    private VmFault DevicePrivateFault(Vma vma, ulong addr, bool write, Pte e)
    {
        DevicePageMap? map = Memory.FindMap(e.Pfn);
        if (map?.Ops is null || map.Type != MemoryType.DevicePrivate || !map.TryGet())
        {
            return VmFault.SigBus;
        }
        try
        {
            Hetmem.Diagnostics.FaultInjection.MaybeThrowInCallback(Memory);
            Errno err = map.Ops.MigrateToRam(new DevicePageFault(this, addr, e.Pfn, write));
            return err switch
            {
                Errno.Ok => VmFault.Retry,
                Errno.ENOMEM => VmFault.Oom,
                Errno.EAGAIN or Errno.EBUSY => VmFault.Retry,
                _ => VmFault.SigBus,
            };
        }
        catch (Hetmem.Diagnostics.InjectedFaultException)
        {
            return VmFault.SigBus; // a failed migrate_to_ram is VM_FAULT_SIGBUS; the device entry and its data stay
        }
        finally
        {
            map.Put();
        }
    }

    /// <summary>
    /// A CPU access to a device-exclusive entry restores the original mapping (kernel: remove_device_exclusive_entry):
    /// it takes a reference and the frame lock first, so it waits while the device holds the page locked, then
    /// restores the entry inside a CLEAR bracket if it is still the same.
    /// </summary>
    private VmFault RestoreExclusive(Vma vma, ulong addr, ulong* pte, Pte e)
    {
        ulong pfn = e.Pfn;
        if (!Memory.TryGet(pfn))
        {
            return VmFault.Retry;
        }
        Memory.LockFrame(pfn);
        try
        {
            if (Volatile.Read(ref *pte) != e.Value)
            {
                return VmFault.Retry;
            }
            var range = new MmuNotifierRange(this, addr, addr + Page.Size, MmuNotifierEvent.Clear);
            Notifiers.InvalidateRangeStart(range);
            lock (PtlFor(pte))
            {
                if (*pte == e.Value)
                {
                    *pte = Pte.Make(pfn, e.SwapWritable && (vma.Flags & VmFlags.Write) != 0, Pte.Dirty).Value;
                }
            }
            Notifiers.InvalidateRangeEnd(range);
            return VmFault.Retry;
        }
        finally
        {
            Memory.UnlockFrame(pfn);
            Memory.Put(pfn);
        }
    }
}
