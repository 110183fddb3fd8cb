using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Dmirror;

/// <summary>The migration and exclusive-access commands (kernel: dmirror_migrate_to_device, dmirror_migrate_to_system, dmirror_exclusive).</summary>
public sealed unsafe partial class DmirrorFile
{
    private const int MigrateWindowPages = 512;   // kernel: PTRS_PER_PTE

    /// <summary>kernel: dmirror_migrate_to_device. Migrates system pages of the range, then reads it back through the mirror without faulting.</summary>
    private Errno MigrateToDevice(ref DmirrorCmd cmd, Cpu? caller)
    {
        ulong start = cmd.Addr;
        ulong size = cmd.Npages << Page.Shift;
        ulong end = start + size;
        Errno ret = MigrateWindows(start, end, toDevice: true, ref cmd);
        if (ret != Errno.Ok)
        {
            return ret;
        }
        return ReadBack(ref cmd, caller, "migrated");
    }

    /// <summary>kernel: dmirror_migrate_to_system. cpages = entries that were valid and migrated.</summary>
    private Errno MigrateToSystem(ref DmirrorCmd cmd)
    {
        ulong start = cmd.Addr;
        ulong end = start + (cmd.Npages << Page.Shift);
        cmd.Cpages = 0;
        return MigrateWindows(start, end, toDevice: false, ref cmd);
    }

    /// <summary>
    /// The window loop shared by both directions: under the mmap read lock, windows of at most one page-table page
    /// cut at VMA ends; each window's start must be in a readable VMA (else EINVAL, which ends the command).
    /// </summary>
    private Errno MigrateWindows(ulong start, ulong end, bool toDevice, ref DmirrorCmd cmd)
    {
        if (!Space.TryGetLiveReference())
        {
            return Fail(Errno.EINVAL, "the mirrored address space has exited");
        }
        var src = new ulong[MigrateWindowPages];
        var dst = new ulong[MigrateWindowPages];
        var args = new MigrateVma { Src = src, Dst = dst, PgmapOwner = Device };
        Errno ret = Errno.Ok;
        Space.MmapLock.EnterRead();
        try
        {
            for (ulong addr = start; addr < end;)
            {
                Vma? vma = Space.Vmas.Find(addr);
                if (vma is null || (vma.Flags & VmFlags.Read) == 0)
                {
                    return Fail(Errno.EINVAL, $"0x{addr:x} is not in a readable VMA");
                }
                ulong next = Math.Min(end, addr + ((ulong)MigrateWindowPages << Page.Shift));
                next = Math.Min(next, vma.End);
                args.Vma = vma;
                args.Start = addr;
                args.End = next;
                args.FaultPage = Page.NoPfn;
                args.Flags = toDevice
                    ? MigrateVmaSelect.System | MigrateVmaSelect.Compound
                    : (Device.IsPrivate ? MigrateVmaSelect.DevicePrivate : MigrateVmaSelect.DeviceCoherent) | MigrateVmaSelect.Compound;
                ret = args.Setup();
                if (ret != Errno.Ok)
                {
                    return Fail(ret, $"migrate_vma_setup of [0x{addr:x}, 0x{next:x}) failed");
                }
                if (toDevice)
                {
                    MigrateAllocAndCopy(args);
                    args.Pages();
                    FinalizeAndMap(args);
                    args.Finalize();
                }
                else
                {
                    Errno r = DevmemFaultAllocAndCopy(args);
                    if (r != Errno.Ok)
                    {
                        args.Finalize();
                        return r;
                    }
                    args.Pages();
                    cmd.Cpages += SuccessfullyMigrated(args);
                    args.Finalize();
                }
                addr = next;
            }
            return Errno.Ok;
        }
        finally
        {
            Space.MmapLock.ExitRead();
            Space.PutLiveReference();
        }
    }

    /// <summary>Reads [Addr, +Npages) through the mirror without faulting into <c>Ptr</c> (kernel: the tail of migrate-to-device and exclusive).</summary>
    private Errno ReadBack(ref DmirrorCmd cmd, Cpu? caller, string what)
    {
        ulong start = cmd.Addr;
        ulong size = cmd.Npages << Page.Shift;
        byte* bounce = RentBounce(size, out ulong bounceCapacity);
        if (bounce == null)
        {
            return Fail(Errno.ENOMEM, $"no memory for a {size}-byte bounce buffer");
        }
        try
        {
            ulong cpages = 0;
            Errno ret;
            lock (_mutex)
            {
                ret = DoReadLocked(start, start + size, bounce, start, ref cpages);
            }
            if (ret == Errno.ENOENT)
            {
                ret = Fail(Errno.ENOENT, $"page 0x{start + (cpages << Page.Shift):x} is not readable through the mirror after it was {what}");
            }
            else if (ret == Errno.Ok)
            {
                ret = CopyToUser(caller, cmd.Ptr, bounce, size);
            }
            cmd.Cpages = cpages;
            return ret;
        }
        finally
        {
            ReturnBounce(bounce, bounceCapacity);
        }
    }

    private static ulong SuccessfullyMigrated(MigrateVma args)
    {
        ulong n = 0;
        for (int i = 0; i < (int)args.Npages; i++)
        {
            ulong s = args.Src[i];
            if ((s & MigratePfn.Valid) != 0 && (s & MigratePfn.Migrate) != 0)
            {
                n++;
            }
        }
        return n;
    }

    private bool TakeFailAlloc()
    {
        while (true)
        {
            long f = Interlocked.Read(ref _flags);
            if ((f & (long)DmirrorFlags.FailAlloc) == 0)
            {
                return false;
            }
            if (Interlocked.CompareExchange(ref _flags, f & ~(long)DmirrorFlags.FailAlloc, f) == f)
            {
                return true;
            }
        }
    }

    /// <summary>
    /// kernel: dmirror_migrate_alloc_and_copy. For every collected entry allocate a device page (a 512-page folio for
    /// a compound source), copy the source or zero it (holes and the zero page), and set the destination, writable when
    /// the source was. FAIL_ALLOC makes one allocation fail: a compound source then falls back to base device pages.
    /// </summary>
    private void MigrateAllocAndCopy(MigrateVma args)
    {
        ulong[] src = args.Src;
        ulong[] dst = args.Dst;
        int n = (int)args.Npages;
        PhysicalMemory mem = Device.Memory;
        for (int i = 0; i < n;)
        {
            ulong s = src[i];
            if ((s & MigratePfn.Migrate) == 0)
            {
                i++;
                continue;
            }
            bool large = (s & MigratePfn.Compound) != 0;
            ulong write = s & MigratePfn.Write;
            ulong spage = MigratePfn.ToPfn(s);
            if (spage != Page.NoPfn && !mem.IsRam(spage) && mem.FindMap(spage) is { Type: MemoryType.DevicePrivate or MemoryType.DeviceCoherent })
            {
                i++; // already device memory: not ours to move
                continue;
            }
            ulong dpage = TakeFailAlloc() ? Page.NoPfn : Device.AllocatePage(large, this);
            if (dpage == Page.NoPfn)
            {
                if (!large)
                {
                    i++;
                    continue;
                }
                // Fall back to one base device page per subpage (the migration then splits the source).
                int nr = DmirrorChunk.FolioPages;
                for (int k = 0; k < nr && i < n; k++, i++)
                {
                    ulong dp = Device.AllocatePage(false, this);
                    if (dp == Page.NoPfn)
                    {
                        break;
                    }
                    dst[i] = MigratePfn.Make(dp) | write;
                    CopyOrClear(mem, Device.BackingPage(dp), spage == Page.NoPfn ? Page.NoPfn : spage + (ulong)k, 1);
                }
                continue;
            }
            dst[i] = MigratePfn.Make(dpage) | write | (large ? MigratePfn.Compound : 0);
            CopyOrClear(mem, Device.BackingPage(dpage), spage, large ? (ulong)DmirrorChunk.FolioPages : 1);
            i += large ? DmirrorChunk.FolioPages : 1;
        }
    }

    private static void CopyOrClear(PhysicalMemory mem, ulong to, ulong from, ulong count)
    {
        // Streaming copies (MigrateCopy): the device side is written once and not read back soon.
        if (from == Page.NoPfn || from == mem.ZeroPfn)
        {
            MigrateCopy.ZeroPages(mem, to, count);
        }
        else
        {
            MigrateCopy.CopyPages(mem, to, from, count);
        }
    }

    /// <summary>
    /// kernel: dmirror_migrate_finalize_and_map. Stores every destination that is still migrating in the mirror (the
    /// backing page of a private destination), tagged WRITE when the destination is writable.
    /// </summary>
    private void FinalizeAndMap(MigrateVma args)
    {
        ulong[] src = args.Src;
        ulong[] dst = args.Dst;
        int n = (int)args.Npages;
        ulong vpn = args.Start >> Page.Shift;
        lock (_mutex)
        {
            for (int i = 0; i < n; i++)
            {
                if ((src[i] & MigratePfn.Migrate) == 0)
                {
                    continue;
                }
                ulong d = dst[i];
                ulong dpage = MigratePfn.ToPfn(d);
                if (dpage == Page.NoPfn)
                {
                    continue;
                }
                int nr = (d & MigratePfn.Compound) != 0 ? DmirrorChunk.FolioPages : 1;
                ulong rpage = Device.BackingPage(dpage);
                if (rpage == Page.NoPfn)
                {
                    continue;
                }
                DmirrorTag tag = (d & MigratePfn.Write) != 0 ? DmirrorTag.Write : DmirrorTag.Read;
                for (int k = 0; k < nr && i + k < n; k++)
                {
                    _pt.Store(vpn + (ulong)(i + k), rpage + (ulong)k, tag);
                }
            }
        }
    }

    /// <summary>
    /// kernel: dmirror_devmem_fault_alloc_and_copy. For every collected device page of this node allocate a system
    /// page (folio) of the same order, erase the mirror entry and copy the data. FAIL_ALLOC makes the allocation fail
    /// once: a large one then falls back to base pages.
    /// </summary>
    /// <returns>Ok, or ENOMEM when a base-page allocation failed (the caller finalizes without committing).</returns>
    internal Errno DevmemFaultAllocAndCopy(MigrateVma args)
    {
        ulong[] src = args.Src;
        ulong[] dst = args.Dst;
        int n = (int)args.Npages;
        PhysicalMemory mem = Device.Memory;
        ulong addr = args.Start;
        for (int i = 0; i < n;)
        {
            ulong s = src[i];
            ulong spage = MigratePfn.ToPfn(s);
            if (spage == Page.NoPfn || (s & MigratePfn.Migrate) == 0)
            {
                i++;
                addr += Page.Size;
                continue;
            }
            DmirrorChunk? chunk = Device.FindChunk(spage);
            if (chunk is null)
            {
                i++;
                addr += Page.Size;
                continue;
            }
            int order = (s & MigratePfn.Compound) != 0 && chunk.Order[chunk.Offset(spage)] == Page.PmdOrder ? Page.PmdOrder : 0;
            ulong from = Device.BackingPage(spage);
            ulong d = (order != 0 ? MigratePfn.Compound : 0) | (s & MigratePfn.Write);
            ulong dpage;
            bool injected = TakeFailAlloc();
            if (injected)
            {
                d &= ~MigratePfn.Compound;
                dpage = Page.NoPfn;
            }
            else
            {
                dpage = mem.Allocate(order);
            }
            if (dpage == Page.NoPfn && order == 0)
            {
                return Fail(Errno.ENOMEM, injected
                    ? $"FAIL_ALLOC failed the system page for 0x{addr:x}, a base page (a single device page has no smaller fallback)"
                    : $"no system page to migrate 0x{addr:x} back");
            }
            if (dpage != Page.NoPfn)
            {
                mem.LockFrame(dpage);
                d |= MigratePfn.Make(dpage);
            }
            dst[i] = d;
            int count = 1 << order;
            for (int k = 0; k < count; k++)
            {
                ulong to;
                if (dpage == Page.NoPfn)
                {
                    // The large allocation failed: one base page per subpage.
                    ulong p = mem.Allocate(0);
                    if (p == Page.NoPfn)
                    {
                        for (int j = 0; j < k; j++)
                        {
                            ulong f = MigratePfn.ToPfn(dst[i + j]);
                            mem.UnlockFrame(f);
                            mem.Put(f);
                            dst[i + j] = 0;
                        }
                        for (int j = k; j < count && i + j < n; j++)
                        {
                            dst[i + j] = 0;
                        }
                        return Fail(Errno.ENOMEM, $"no system page to migrate 0x{addr:x} back (base-page fallback)");
                    }
                    mem.LockFrame(p);
                    dst[i + k] = MigratePfn.Make(p);
                    to = p;
                }
                else
                {
                    to = dpage + (ulong)k;
                }
                lock (_mutex)
                {
                    _pt.Erase((addr >> Page.Shift));
                }
                addr += Page.Size;
                MigrateCopy.CopyPages(mem, to, from + (ulong)k);
            }
            i += count;
        }
        return Errno.Ok;
    }

    /// <summary>
    /// kernel: dmirror_exclusive. Makes every page of the range device-exclusive and maps it ATOMIC in the mirror, then
    /// reads the range back through the mirror.
    /// </summary>
    private Errno Exclusive(ref DmirrorCmd cmd, Cpu? caller)
    {
        ulong start = cmd.Addr;
        ulong end = start + (cmd.Npages << Page.Shift);
        if (!Space.TryGetLiveReference())
        {
            return Fail(Errno.EINVAL, "the mirrored address space has exited");
        }
        PhysicalMemory mem = Device.Memory;
        Errno ret = Errno.Ok;
        Space.MmapLock.EnterRead();
        try
        {
            for (ulong addr = start; addr < end; addr += Page.Size)
            {
                ret = DeviceExclusive.MakeDeviceExclusive(Space, addr, Device, out ulong pfn);
                if (ret != Errno.Ok)
                {
                    ret = Fail(ret, $"make_device_exclusive(0x{addr:x}) failed");
                    break;
                }
                lock (_mutex)
                {
                    _pt.Store(addr >> Page.Shift, pfn, DmirrorTag.Atomic);
                }
                mem.UnlockFrame(pfn);
                mem.Put(pfn);
            }
        }
        finally
        {
            Space.MmapLock.ExitRead();
            Space.PutLiveReference();
        }
        if (ret != Errno.Ok)
        {
            return ret;
        }
        return ReadBack(ref cmd, caller, "made exclusive");
    }
}
