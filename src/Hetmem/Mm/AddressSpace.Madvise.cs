using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Mm;

/// <summary>madvise advice values (kernel: MADV_*, x86-64 numbering).</summary>
public enum Advice
{
    /// <summary>No special treatment.</summary>
    Normal = 0,
    /// <summary>Expect access soon: read ahead / swap in.</summary>
    WillNeed = 3,
    /// <summary>Drop the pages; anonymous memory reads back as zeroes.</summary>
    DontNeed = 4,
    /// <summary>Pages may be freed lazily.</summary>
    Free = 8,
    /// <summary>Enable transparent huge pages.</summary>
    HugePage = 14,
    /// <summary>Disable transparent huge pages.</summary>
    NoHugePage = 15,
    /// <summary>Reclaim the pages now.</summary>
    PageOut = 21,
    /// <summary>Fault the range in for read.</summary>
    PopulateRead = 22,
    /// <summary>Fault the range in for write.</summary>
    PopulateWrite = 23,
    /// <summary>Collapse the range into transparent huge pages now, synchronously (kernel: MADV_COLLAPSE, 6.1+).</summary>
    Collapse = 25,
}

/// <summary>madvise and msync (kernel: mm/madvise.c, mm/msync.c).</summary>
public sealed unsafe partial class AddressSpace
{
    /// <summary>Gives advice about [<paramref name="address"/>, +<paramref name="length"/>) (kernel: madvise).</summary>
    /// <exception cref="MmException">EINVAL (unaligned, unknown advice, advice not valid for the VMA: DONTNEED/FREE on
    /// locked, PFN-map or hugetlb-FREE VMAs, DONTNEED on a hugetlb VMA whose part of the range starts off a huge page, POPULATE on PFN maps or without permission), ENOMEM (part of the range
    /// unmapped; the mapped parts are still advised, as the kernel does), EFAULT (POPULATE hit SIGBUS). COLLAPSE
    /// (kernel: madvise_collapse_errno): EINVAL (VMA not eligible — VM_NOHUGEPAGE, not private anonymous — or a range
    /// that cannot be collapsed: no page table, nothing writable, non-swap non-present entries, special or device pages),
    /// EAGAIN (a page is locked or pinned), ENOMEM (no huge page could be allocated, or part of the range is unmapped).</exception>
    public void Madvise(ulong address, ulong length, Advice advice)
    {
        if (!Page.IsAligned(address, Page.Size))
        {
            MmException.Throw(Errno.EINVAL, $"madvise: address 0x{address:x} is not page aligned");
        }
        if (!Enum.IsDefined(advice))
        {
            MmException.Throw(Errno.EINVAL, $"madvise: unknown advice {(int)advice}");
        }
        ulong len = Page.AlignUp(length, Page.Size);
        if (len < length || address + len < address)
        {
            MmException.Throw(Errno.EINVAL, "madvise: range wraps");
        }
        if (len == 0)
        {
            return;
        }
        ulong end = address + len;
        if (advice == Advice.Collapse)
        {
            MadviseCollapse(address, end);   // takes, drops and retakes the mmap lock itself
            return;
        }
        bool write = advice is Advice.HugePage or Advice.NoHugePage;
        if (write)
        {
            MmapLock.EnterWrite();
        }
        else
        {
            MmapLock.EnterRead();
        }
        try
        {
            ThrowIfDead();
            List<Vma> vmas = Vmas.Snapshot(address, end);
            foreach (Vma v in vmas)
            {
                bool special = (v.Flags & (VmFlags.PfnMap | VmFlags.Io)) != 0;
                switch (advice)
                {
                    case Advice.DontNeed or Advice.Free when special || (v.Flags & VmFlags.Locked) != 0:
                    case Advice.Free when v.Kind != VmaKind.Anonymous:
                        MmException.Throw(Errno.EINVAL, $"madvise({advice}) is not valid for {v}");
                        break;
                    case Advice.DontNeed when v.Kind == VmaKind.HugeTlb && !Page.IsAligned(Math.Max(v.Start, address), Page.Bytes(v.HugeOrder)):
                        // kernel: madvise_dontneed_free_valid_vma — the VMA's part of the range must start on a huge
                        // page (its end is then rounded down to one).
                        MmException.Throw(Errno.EINVAL, $"madvise({advice}) at 0x{Math.Max(v.Start, address):x} is not aligned to the huge pages of {v}");
                        break;
                }
            }
            ulong cursor = address;
            bool hole = false;
            foreach (Vma v in vmas)
            {
                hole |= v.Start > cursor;
                cursor = v.End;
            }
            hole |= cursor < end;
            switch (advice)
            {
                case Advice.DontNeed:
                case Advice.Free:
                    foreach (Vma v in vmas)
                    {
                        ulong s = Math.Max(v.Start, address), e = Math.Min(v.End, end);
                        if (v.Kind == VmaKind.HugeTlb)
                        {
                            ulong hs = Page.Bytes(v.HugeOrder);
                            s = Page.AlignUp(s, hs);
                            e = Page.AlignDown(e, hs);
                            if (s >= e)
                            {
                                continue;
                            }
                        }
                        var range = new MmuNotifierRange(this, s, e, MmuNotifierEvent.Clear);
                        Notifiers.InvalidateRangeStart(range);
                        MmuGather g = MmuGather.Rent();
                        ZapRange(v, s, e, g);
                        Notifiers.InvalidateRangeEnd(range);
                        FinishGather(g);
                    }
                    break;
                case Advice.WillNeed:
                    foreach (Vma v in vmas)
                    {
                        if (v.File is { Kind: MappableKind.PageCache or MappableKind.Shmem } f)
                        {
                            ulong s = v.PgoffOf(Math.Max(v.Start, address)), e = v.PgoffOf(Math.Min(v.End, end));
                            ulong eof = Page.AlignUp(f.Size, Page.Size) >> Page.Shift;
                            for (ulong p = s; p < Math.Min(e, eof); p++)
                            {
                                if (f.GetPage(p, false, 0, out ulong pfn, out _) == Errno.Ok)
                                {
                                    Memory.Put(pfn);
                                }
                            }
                        }
                    }
                    break;
                case Advice.HugePage:
                case Advice.NoHugePage:
                    foreach (Vma v in vmas)
                    {
                        VmFlags nf = advice == Advice.HugePage
                            ? (v.Flags | VmFlags.HugePage) & ~VmFlags.NoHugePage
                            : (v.Flags | VmFlags.NoHugePage) & ~VmFlags.HugePage;
                        if ((v.Flags & (VmFlags.Special | VmFlags.HugeTlb)) != 0 || nf == v.Flags)
                        {
                            continue;   // kernel: hugepage_madvise leaves VM_NO_KHUGEPAGED VMAs alone
                        }
                        Vma piece = SplitVmaLocked(v, Math.Max(v.Start, address), Math.Min(v.End, end));
                        Vma nv = piece.With(piece.Start, piece.End, nf);
                        ReplaceVmasLocked([piece], [nv]);
                        MergeAroundLocked(nv);
                    }
                    break;
                case Advice.PageOut:
                    foreach (Vma v in vmas)
                    {
                        Reclaim.PageOutRange(this, v, Math.Max(v.Start, address), Math.Min(v.End, end));
                    }
                    break;
                case Advice.PopulateRead:
                case Advice.PopulateWrite:
                    // Kernel: madvise_populate walks the range in order and stops at the first problem: a hole is
                    // ENOMEM, a VMA it may not fault is EINVAL, SIGBUS/SIGSEGV is EFAULT.
                    for (ulong cur = address; cur < end;)
                    {
                        Vma? v = Vmas.Find(cur);
                        if (v is null)
                        {
                            MmException.Throw(Errno.ENOMEM, $"madvise({advice}): 0x{cur:x} is not mapped");
                        }
                        bool writeAdvice = advice == Advice.PopulateWrite;
                        if ((v.Flags & (VmFlags.PfnMap | VmFlags.Io)) != 0 || (v.Flags & (writeAdvice ? VmFlags.Write : VmFlags.Read)) == 0)
                        {
                            MmException.Throw(Errno.EINVAL, $"madvise({advice}) cannot fault in {v}");
                        }
                        VmFault r = PopulateVmaLocked(v, cur, Math.Min(v.End, end), writeAdvice);
                        if (r != VmFault.Ok)
                        {
                            MmException.Throw(r == VmFault.Oom ? Errno.ENOMEM : Errno.EFAULT, $"madvise({advice}) could not fault in {v}: {r}");
                        }
                        cur = v.End;
                    }
                    break;
            }
            if (hole)
            {
                MmException.Throw(Errno.ENOMEM, $"madvise: part of [0x{address:x}, 0x{end:x}) is not mapped");
            }
        }
        finally
        {
            if (write)
            {
                MmapLock.ExitWrite();
            }
            else
            {
                MmapLock.ExitRead();
            }
        }
    }

    /// <summary>Faults in every page of [start, end) (kernel: populate_vma_page_range / MAP_POPULATE). Mmap lock held.</summary>
    internal void PopulateLocked(ulong start, ulong end, bool write, bool ignoreErrors)
    {
        foreach (Vma v in Vmas.Snapshot(start, end))
        {
            VmFault r = PopulateVmaLocked(v, Math.Max(start, v.Start), Math.Min(end, v.End), write && (v.Flags & VmFlags.Write) != 0);
            if (r != VmFault.Ok && !ignoreErrors)
            {
                ThrowForFault(r, v.Start);
            }
        }
    }

    private VmFault PopulateVmaLocked(Vma v, ulong start, ulong end, bool write)
    {
        if ((v.Flags & (VmFlags.Read | VmFlags.Write)) == 0 || (v.Flags & (VmFlags.PfnMap | VmFlags.Io)) != 0)
        {
            return VmFault.Ok;
        }
        for (ulong a = start; a < end;)
        {
            VmFault r = FaultUntilDoneLocked(v, a, write ? FaultFlags.Write | FaultFlags.Remote : FaultFlags.Remote);
            if (r != VmFault.Ok)
            {
                return r;
            }
            Lookup(a, out int order, out _);
            ulong step = Page.Bytes(order);
            a = Page.AlignDown(a, step) + step;
        }
        return VmFault.Ok;
    }

    /// <summary>msync flags (kernel: MS_*).</summary>
    [Flags]
    public enum MsyncFlags
    {
        /// <summary>Schedule writeback.</summary>
        Async = 1,
        /// <summary>Invalidate other mappings.</summary>
        Invalidate = 2,
        /// <summary>Write back and wait.</summary>
        Sync = 4,
    }

    /// <summary>
    /// Writes back dirty shared file pages of [<paramref name="address"/>, +<paramref name="length"/>)
    /// (kernel: msync). Dirty entries are write-protected inside a PROTECTION_PAGE bracket so later writes are seen.
    /// </summary>
    /// <exception cref="MmException">EINVAL (unaligned, unknown flags, both ASYNC and SYNC), ENOMEM (unmapped part).</exception>
    public void Msync(ulong address, ulong length, MsyncFlags flags)
    {
        if (!Page.IsAligned(address, Page.Size) || (flags & ~(MsyncFlags.Async | MsyncFlags.Invalidate | MsyncFlags.Sync)) != 0
            || (flags & (MsyncFlags.Async | MsyncFlags.Sync)) == (MsyncFlags.Async | MsyncFlags.Sync))
        {
            MmException.Throw(Errno.EINVAL, $"msync: bad address 0x{address:x} or flags {flags}");
        }
        ulong len = Page.AlignUp(length, Page.Size);
        ulong end = address + len;
        if (end < address)
        {
            MmException.Throw(Errno.ENOMEM, "msync: range wraps");
        }
        if (len == 0)
        {
            return;
        }
        using (MmapLock.Read())
        {
            ThrowIfDead();
            ulong cursor = address;
            bool unmapped = false;
            foreach (Vma v in Vmas.Snapshot(address, end))
            {
                unmapped |= v.Start > cursor;   // kernel: remembered, the rest is still synced
                cursor = v.End;
                if (!v.IsShared || v.File is null)
                {
                    continue;
                }
                ulong s = Math.Max(v.Start, address), e = Math.Min(v.End, end);
                CleanDirtyEntries(v, s, e);
                if (v.File is Inode inode && (flags & MsyncFlags.Sync) != 0)
                {
                    inode.Fsync();
                }
            }
            if (unmapped || cursor < end)
            {
                MmException.Throw(Errno.ENOMEM, $"msync: part of [0x{address:x}, 0x{end:x}) is not mapped");
            }
        }
    }

    /// <summary>Transfers PTE dirty bits to the file and write-protects the entries (kernel: page_mkclean via writeback).</summary>
    private void CleanDirtyEntries(Vma v, ulong start, ulong end)
    {
        // A huge leaf is write-protected whole: widen the bracket to the leaves at both ends.
        Lookup(start, out int startOrder, out _);
        start = Math.Max(v.Start, Page.AlignDown(start, Page.Bytes(startOrder)));
        Lookup(end - 1, out int endOrder, out _);
        end = Math.Min(v.End, Page.AlignUp(end, Page.Bytes(endOrder)));
        var range = new MmuNotifierRange(this, start, end, MmuNotifierEvent.ProtectionPage);
        Notifiers.InvalidateRangeStart(range);
        bool flush = false;
        for (ulong a = start; a < end;)
        {
            Pte e = Lookup(a, out int order, out ulong* slot);
            ulong step = Page.Bytes(order);
            if (slot != null && e.IsPresent && e.IsDirty)
            {
                AssertInBracket(a, "msync's write-protect");
                lock (PtlFor(slot))
                {
                    if (*slot == e.Value)
                    {
                        *slot = e.Value & ~(Pte.Dirty | Pte.Write);
                        flush = true;
                    }
                }
                v.File!.MarkDirty(v.PgoffOf(Page.AlignDown(a, step)));
            }
            a = Page.AlignDown(a, step) + step;
        }
        if (flush)
        {
            FlushTlb();
        }
        Notifiers.InvalidateRangeEnd(range);
    }
}
