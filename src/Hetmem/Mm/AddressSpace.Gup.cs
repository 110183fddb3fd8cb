using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Mm;

/// <summary>Flags of <see cref="AddressSpace.GetUserPages"/> (kernel: FOLL_*).</summary>
[Flags]
public enum GupFlags
{
    /// <summary>Read access, a plain reference (get_user_pages).</summary>
    None = 0,
    /// <summary>FOLL_WRITE: the caller will write; pages are faulted in writable (COW broken) and dirtied.</summary>
    Write = 1,
    /// <summary>
    /// FOLL_LONGTERM: the pin may be held indefinitely (RDMA memory registration): refused on FS-DAX mappings, and
    /// device-coherent pages are migrated to RAM first.
    /// </summary>
    LongTerm = 2,
    /// <summary>FOLL_PIN (pin_user_pages): the caller will access the page contents (DMA); release with
    /// <see cref="AddressSpace.UnpinUserPages"/>. A read pin of a shared anonymous page unshares it first.</summary>
    Pin = 4,
    /// <summary>get_user_pages_fast: accepted; Hetmem always walks under the mmap read lock.</summary>
    Fast = 8,
}

/// <summary>
/// Migrates the device-coherent page mapped at <paramref name="address"/> back to RAM before a long-term pin (kernel:
/// check_and_migrate_movable_pages → migrate_device_coherent_folio). Registered by the HMM layer, which owns
/// migration; called with the mmap read lock held and no page-table lock. Returns Ok when the address may be looked
/// up again (migrated, or changed meanwhile), or an error that fails the pin.
/// </summary>
public delegate Errno LongTermPinMigrator(AddressSpace space, ulong address, ulong pfn);

/// <summary>get_user_pages / pin_user_pages (kernel: mm/gup.c).</summary>
public sealed unsafe partial class AddressSpace
{
    private static LongTermPinMigrator? s_longTermMigrator;   // Volatile; set once by the HMM layer

    /// <summary>
    /// The hook a long-term pin uses to move device-coherent pages to RAM. The mm cannot reference the HMM layer
    /// (layering), so <c>Hetmem.Hmm</c> registers its MigrateVma-based implementation here at first use. While unset,
    /// a long-term pin of a device-coherent page fails with EBUSY.
    /// </summary>
    public static LongTermPinMigrator? LongTermMigrator
    {
        get => Volatile.Read(ref s_longTermMigrator);
        set => Volatile.Write(ref s_longTermMigrator, value);
    }

    /// <summary>
    /// Looks up, faulting in as needed, the pages of [<paramref name="start"/>, +<paramref name="npages"/> pages) and
    /// stores their PFNs in <paramref name="pfns"/>, each with one reference the caller drops with
    /// <see cref="UnpinUserPages"/> (kernel: get_user_pages / pin_user_pages with FOLL_* flags). Takes the mmap lock for
    /// read itself. Faults resolve device-private entries (they migrate back to RAM through the page map's
    /// MigrateToRam), swap entries, COW (for <see cref="GupFlags.Write"/>, and for a read <see cref="GupFlags.Pin"/> of a
    /// shared anonymous page) and huge mappings (the PFN of the 4 KiB subpage is returned).
    /// </summary>
    /// <param name="start">First address; rounded down to a page.</param>
    /// <param name="npages">Number of pages; 0 returns Ok with nothing done.</param>
    /// <param name="flags">FOLL_* flags.</param>
    /// <param name="pfns">Receives one PFN per page; at least <paramref name="npages"/> long.</param>
    /// <param name="done">Pages referenced, from the first; when a later page fails the call still returns Ok with the
    /// partial count (as the kernel returns it), and the caller owns those references.</param>
    /// <returns>Ok; EINVAL (negative count, <paramref name="pfns"/> too short, unknown flags); EFAULT (range wraps or
    /// leaves user space, no VMA, a VM_IO/VM_PFNMAP VMA or special entry, no permission, SIGBUS/SIGSEGV while faulting);
    /// EOPNOTSUPP (<see cref="GupFlags.LongTerm"/> on an FS-DAX mapping); ENOMEM (out of memory while faulting); EBUSY
    /// (a device-coherent page could not be migrated for a long-term pin); EINVAL when the space has exited. These are
    /// returned only when the first page fails.</returns>
    public Errno GetUserPages(ulong start, int npages, GupFlags flags, ulong[] pfns, out int done)
    {
        done = 0;
        ArgumentNullException.ThrowIfNull(pfns);
        if (npages < 0 || pfns.Length < npages || (flags & ~(GupFlags.Write | GupFlags.LongTerm | GupFlags.Pin | GupFlags.Fast)) != 0)
        {
            return Errno.EINVAL;
        }
        if (npages == 0)
        {
            return Errno.Ok;
        }
        start = Page.AlignDown(start, Page.Size);
        ulong len = (ulong)npages << Page.Shift;
        if (start + len < start || start + len > TaskSize)
        {
            return Errno.EFAULT;
        }
        MmapLock.EnterRead();
        try
        {
            if (!IsAlive)
            {
                return Errno.EINVAL;
            }
            Vma? vma = null;
            for (int i = 0; i < npages; i++)
            {
                ulong addr = start + ((ulong)i << Page.Shift);
                if (vma is null || addr >= vma.End)
                {
                    vma = Vmas.Find(addr);
                }
                Errno err = vma is null ? Errno.EFAULT : CheckGupVma(vma, flags);
                if (err == Errno.Ok)
                {
                    err = GetOnePageLocked(vma!, addr, flags, out pfns[i]);
                }
                if (err != Errno.Ok)
                {
                    return done == 0 ? err : Errno.Ok;
                }
                done++;
            }
            return Errno.Ok;
        }
        finally
        {
            MmapLock.ExitRead();
        }
    }

    /// <summary>
    /// Drops the references <see cref="GetUserPages"/> took (kernel: unpin_user_pages / unpin_user_pages_dirty_lock).
    /// With <paramref name="makeDirty"/>, the pages are marked dirty first: file pages in their file (so writeback
    /// sees what a device wrote), anonymous pages in their frame.
    /// </summary>
    public void UnpinUserPages(ReadOnlySpan<ulong> pfns, bool makeDirty)
    {
        foreach (ulong pfn in pfns)
        {
            if (makeDirty && pfn != Memory.ZeroPfn)
            {
                ulong head = Memory.Head(pfn);
                ref FrameInfo f = ref Memory.Frame(head);
                if (Volatile.Read(ref f.Mapping) is IMappable file && !f.Has(FrameFlags.Anon))
                {
                    file.MarkDirty(f.Index + (pfn - head));
                }
                else if (f.Has(FrameFlags.Anon))
                {
                    Memory.SetFlags(head, FrameFlags.Dirty);
                }
            }
            Memory.Put(pfn);
        }
    }

    /// <summary>check_vma_flags: may this VMA be accessed by GUP with <paramref name="flags"/>?</summary>
    private static Errno CheckGupVma(Vma vma, GupFlags flags)
    {
        if ((vma.Flags & (VmFlags.Io | VmFlags.PfnMap)) != 0)
        {
            return Errno.EFAULT;
        }
        if ((flags & GupFlags.LongTerm) != 0 && vma.Kind == VmaKind.Dax)
        {
            return Errno.EOPNOTSUPP;   // kernel: vma_is_fsdax with FOLL_LONGTERM
        }
        bool write = (flags & GupFlags.Write) != 0;
        if (write ? (vma.Flags & VmFlags.Write) == 0 : (vma.Flags & VmFlags.Read) == 0)
        {
            return Errno.EFAULT;
        }
        return Errno.Ok;
    }

    /// <summary>follow_page + faultin_page for one address, with the mmap lock held: returns a referenced PFN.</summary>
    private Errno GetOnePageLocked(Vma vma, ulong addr, GupFlags flags, out ulong pfn)
    {
        AssertMmapLocked();
        bool write = (flags & GupFlags.Write) != 0;
        for (int attempt = 0; ; attempt++)
        {
            pfn = Page.NoPfn;
            Pte e = Lookup(addr, out int order, out ulong* slot);
            bool leaf = slot != null && e.IsPresent && (order == 0 || (e.Value & Pte.Huge) != 0);
            if (leaf && e.IsSpecial)
            {
                return Errno.EFAULT;   // kernel: vm_normal_page() is NULL for special mappings
            }
            bool usable = leaf && (!write || e.IsWritable) && !NeedsUnshare(vma, e, flags);
            if (usable)
            {
                ulong sub = order == 0 ? 0 : (addr >> Page.Shift) & ((1UL << order) - 1);
                ulong p = e.Pfn + sub;
                bool got = false;
                lock (PtlFor(slot))
                {
                    if (Volatile.Read(ref *slot) == e.Value)
                    {
                        Interlocked.Increment(ref Memory.Frame(Memory.Head(p)).RefCount);
                        if (write && !e.IsDirty)
                        {
                            *slot = e.Value | Pte.Dirty | Pte.Accessed;   // the caller will write: the entry is dirty now
                        }
                        got = true;
                    }
                }
                if (got && write && vma.IsShared && vma.File is not null)
                {
                    vma.File.MarkDirty(vma.PgoffOf(addr));
                }
                if (got)
                {
                    if ((flags & GupFlags.LongTerm) != 0 && Memory.FindMap(p) is { Type: MemoryType.DeviceCoherent })
                    {
                        Memory.Put(p);
                        Errno m = LongTermMigrator?.Invoke(this, addr, p) ?? Errno.EBUSY;
                        if (m != Errno.Ok)
                        {
                            return m;
                        }
                        continue;
                    }
                    pfn = p;
                    return Errno.Ok;
                }
                continue;
            }
            FaultFlags ff = FaultFlags.Remote | (write || NeedsUnshare(vma, e, flags) ? FaultFlags.Write : FaultFlags.None);
            VmFault r = FaultUntilDoneLocked(vma, addr, ff);
            switch (r)
            {
                case VmFault.Ok:
                case VmFault.Retry:
                    break;
                case VmFault.Oom:
                    return Errno.ENOMEM;
                default:
                    return Errno.EFAULT;
            }
            if (attempt > 1000)
            {
                return Errno.EFAULT;
            }
        }
    }

    /// <summary>
    /// True when a read pin must first unshare an anonymous page that another process may still write through COW
    /// (kernel: gup_must_unshare → FAULT_FLAG_UNSHARE; Hetmem breaks the COW with a write fault when the VMA allows it).
    /// </summary>
    private bool NeedsUnshare(Vma vma, Pte e, GupFlags flags)
    {
        if ((flags & (GupFlags.Pin | GupFlags.Write)) != GupFlags.Pin || !e.IsPresent || (vma.Flags & VmFlags.Write) == 0 || vma.IsShared)
        {
            return false;
        }
        ulong pfn = e.Pfn;
        if (!Memory.IsRam(pfn) || pfn == Memory.ZeroPfn)
        {
            return false;
        }
        ref FrameInfo f = ref Memory.Frame(Memory.Head(pfn));
        return f.Has(FrameFlags.Anon) && !f.Has(FrameFlags.AnonExclusive);
    }
}
