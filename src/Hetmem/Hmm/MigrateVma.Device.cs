using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Hmm;

/// <summary>
/// Migrates device pages without knowing their VMAs, to evict device memory on driver unload or memory pressure
/// (kernel: migrate_device_range, migrate_device_pages, migrate_device_finalize in mm/migrate_device.c).
/// </summary>
/// <remarks>
/// <para>Overview: <see cref="MigrateDeviceRange"/> takes every in-use page of a PFN range (free pages give entry 0),
/// locks it (trylock) and replaces each CPU entry mapping it by a migration entry; the driver allocates RAM pages for
/// entries marked Migrate, copies, and calls <see cref="Pages"/> then <see cref="Finalize"/>. The CPU entries end up as
/// ordinary present entries to the RAM copies.</para>
/// <para>Reverse map: a device page installed by <see cref="MigrateVma"/> records its address space in
/// <see cref="FrameInfo.Mapping"/> and its virtual page in <see cref="FrameInfo.Index"/>; the eviction finds the CPU
/// entry there (or, after mremap moved it, by scanning that space's VMAs). A page also mapped by another process
/// (shared after fork) cannot be fully unmapped this way and is left out of the migration.</para>
/// <para>Locking: the three calls must run on one thread, in order. <see cref="MigrateDeviceRange"/> takes the mmap
/// read lock of every address space mapping the pages (in address-space id order, before locking any page) and
/// <see cref="Finalize"/> releases them; the caller may already hold some of them. Between the calls CPU accesses to
/// the pages wait on their migration entries.</para>
/// </remarks>
public static unsafe class MigrateDevice
{
    [ThreadStatic]
    private static List<AddressSpace>? t_locked;      // spaces whose mmap read lock (and live reference) this thread took
    [ThreadStatic]
    private static List<AddressSpace>? t_seen;        // scratch: spaces named by the pages of one call

    /// <summary>
    /// Collects, locks and unmaps the in-use pages of device PFNs [<paramref name="startPfn"/>, +<paramref name="npages"/>)
    /// (kernel: migrate_device_range). <paramref name="src"/>[i] becomes <c>MigratePfn.Make(pfn) | Migrate</c> (plus
    /// Write when the CPU mapping was writable, Compound for a PMD-mapped device THP head) or 0 for free, locked,
    /// pinned or not fully unmappable pages.
    /// </summary>
    /// <returns>Ok; EINVAL (nothing changed) when <paramref name="src"/> is too short or the range is not inside one
    /// device-private or device-coherent page map.</returns>
    public static Errno MigrateDeviceRange(PhysicalMemory memory, ulong[] src, ulong startPfn, ulong npages)
    {
        ArgumentNullException.ThrowIfNull(memory);
        if (src is null || (ulong)src.Length < npages || npages == 0)
        {
            return Errno.EINVAL;
        }
        DevicePageMap? map = memory.FindMap(startPfn);
        if (map is null || map.Type is not (MemoryType.DevicePrivate or MemoryType.DeviceCoherent) || !map.Contains(startPfn + npages - 1))
        {
            return Errno.EINVAL;
        }
        int n = (int)npages;
        List<AddressSpace> seen = t_seen ??= new List<AddressSpace>();
        List<AddressSpace> locked = t_locked ??= new List<AddressSpace>();
        seen.Clear();
        // 1. Reference every in-use head page and learn which address spaces map them (no page lock yet).
        for (int i = 0; i < n; i++)
        {
            ulong pfn = startPfn + (ulong)i;
            src[i] = 0;
            if (memory.Frame(pfn).Has(FrameFlags.Tail) || !memory.TryGet(pfn))
            {
                continue;
            }
            src[i] = MigratePfn.Make(pfn) | MigratePfn.Migrate;
            if (memory.Frame(pfn).Mapping is AddressSpace mm && !seen.Contains(mm))
            {
                seen.Add(mm);
            }
        }
        // 2. Mmap read locks in id order, before any page lock (LockOrder: mmap lock above frame lock).
        seen.Sort(static (a, b) => a.Id.CompareTo(b.Id));
        bool callerHolds = false;
        foreach (AddressSpace mm in seen)
        {
            callerHolds |= mm.MmapLock.IsHeld;
        }
        foreach (AddressSpace mm in seen)
        {
            if (mm.MmapLock.IsHeld || locked.Contains(mm) || !mm.TryGetLiveReference())
            {
                continue;
            }
            if (callerHolds)
            {
                // The caller already holds some mmap lock (eviction from a fault path): waiting for another space's
                // lock could close a cycle with a thread doing the opposite, so only try; its pages stay this time.
                if (!TryEnterReadBriefly(mm.MmapLock))
                {
                    mm.PutLiveReference();
                    continue;
                }
            }
            else
            {
                mm.MmapLock.EnterRead();
            }
            locked.Add(mm);
        }
        // 3. Lock each page and replace its CPU entries by migration entries.
        for (int i = 0; i < n; i++)
        {
            ulong s = src[i];
            if (s == 0)
            {
                continue;
            }
            ulong pfn = s >> MigratePfn.Shift;
            if (!memory.TryLockFrame(pfn))
            {
                memory.Put(pfn);
                src[i] = 0;
                continue;
            }
            ref FrameInfo f = ref memory.Frame(pfn);
            int mapped = Volatile.Read(ref f.MapCount);
            if (mapped == 0)
            {
                src[i] = Volatile.Read(ref f.RefCount) == 1 ? s : 0;
                if (src[i] == 0)
                {
                    memory.UnlockFrame(pfn);
                    memory.Put(pfn);
                }
                continue;
            }
            AddressSpace? owner = f.Mapping as AddressSpace;
            bool usable = owner is not null && owner.MmapLock.IsHeld && owner.IsAlive;
            if (usable && f.Order != 0 && owner!.FindDeviceEntry(pfn, ref f.Index, out int level) && level == 0)
            {
                // A device THP mapped by PTEs (after a partial munmap or an mremap): split it, and evict its pages
                // one by one (they get their own entries of src, after this one).
                int pages = 1 << f.Order;
                if (owner.TrySplitMappedCompoundAt(pfn, f.Index << Page.Shift, pfn, pfn))
                {
                    for (int k = 1; k < pages && i + k < n; k++)
                    {
                        ulong p = pfn + (ulong)k;
                        src[i + k] = memory.TryGet(p) ? MigratePfn.Make(p) | MigratePfn.Migrate : 0;
                    }
                }
            }
            ulong flags = 0;
            if (usable && owner!.UnmapDevicePageForEviction(pfn, ref f.Index, out bool writable, out bool huge))
            {
                flags = MigratePfn.Migrate | (writable ? MigratePfn.Write : 0) | (huge ? MigratePfn.Compound : 0);
                if (Volatile.Read(ref f.MapCount) == 1 && Volatile.Read(ref f.RefCount) == 2)
                {
                    src[i] = MigratePfn.Make(pfn) | flags;
                    continue;
                }
                // Mapped elsewhere too, or pinned: put the entry back.
                ulong va = f.Index << Page.Shift;
                ulong* slot = huge ? owner.PmdEntry(va, alloc: false) : owner.PteEntry(va, alloc: false);
                if (slot != null)
                {
                    owner.ReplaceMigrationEntry(slot, pfn, owner.RestoredEntryFor(pfn, writable, huge));
                }
            }
            memory.UnlockFrame(pfn);
            memory.Put(pfn);
            src[i] = 0;
        }
        seen.Clear();
        return Errno.Ok;
    }

    private static bool TryEnterReadBriefly(MmapLock l)
    {
        var spin = new SpinWait();
        for (int i = 0; i < 64; i++)
        {
            if (l.TryEnterRead())
            {
                return true;
            }
            spin.SpinOnce();
        }
        return false;
    }

    /// <summary>
    /// Commits the driver's destinations (kernel: migrate_device_pages): entries without a destination, or with a
    /// destination of another size or kind, lose Migrate; the others hand the anonymous identity to the destination.
    /// </summary>
    public static void Pages(PhysicalMemory memory, ulong[] src, ulong[] dst)
    {
        ArgumentNullException.ThrowIfNull(memory);
        int n = Math.Min(src.Length, dst.Length);
        for (int i = 0; i < n; i++)
        {
            ulong s = src[i];
            if ((s & (MigratePfn.Migrate | MigratePfn.Valid)) != (MigratePfn.Migrate | MigratePfn.Valid))
            {
                continue;
            }
            ulong d = dst[i];
            if ((d & MigratePfn.Valid) == 0)
            {
                src[i] = s & ~MigratePfn.Migrate;
                continue;
            }
            ulong spfn = s >> MigratePfn.Shift;
            ulong dpfn = d >> MigratePfn.Shift;
            DevicePageMap? dmap = memory.IsRam(dpfn) ? null : memory.FindMap(dpfn);
            bool compound = (s & MigratePfn.Compound) != 0;
            if (dmap is not null && dmap.Type is not (MemoryType.DevicePrivate or MemoryType.DeviceCoherent)
                || memory.Frame(dpfn).Order != memory.Frame(spfn).Order
                || compound != ((d & MigratePfn.Compound) != 0) && memory.Frame(spfn).Order != 0)
            {
                src[i] = s & ~MigratePfn.Migrate;
                continue;
            }
            memory.TryLockFrame(dpfn);
            ref FrameInfo sf = ref memory.Frame(spfn);
            ref FrameInfo df = ref memory.Frame(dpfn);
            FrameFlags flags = FrameFlags.Anon | FrameFlags.SwapBacked | FrameFlags.UpToDate | FrameFlags.AnonExclusive | (FrameFlags)(sf.Flags & (uint)FrameFlags.Dirty);
            if (sf.Mapping is AddressSpace mm)
            {
                ulong va = sf.Index << Page.Shift;
                if (dmap is null)
                {
                    Vma? vma = mm.Vmas.Find(va);
                    df.Mapping = vma?.PrepareAnon();
                    df.Index = vma?.PgoffOf(va) ?? 0;
                    if (df.Order == Page.PmdOrder)
                    {
                        flags |= FrameFlags.Thp;
                    }
                }
                else
                {
                    df.Mapping = mm;
                    df.Index = sf.Index;
                }
            }
            memory.SetFlags(dpfn, flags);
        }
    }

    /// <summary>
    /// Ends the eviction (kernel: migrate_device_finalize): migration entries become mappings of the destination
    /// (still Migrate) or of the source; sources are unlocked and released (a migrated device page reaches its map's
    /// <c>PageFree</c>), unused destinations released, and the mmap locks taken by <see cref="MigrateDeviceRange"/>
    /// on this thread are dropped.
    /// </summary>
    public static void Finalize(PhysicalMemory memory, ulong[] src, ulong[] dst)
    {
        ArgumentNullException.ThrowIfNull(memory);
        try
        {
            int n = Math.Min(src.Length, dst.Length);
            for (int i = 0; i < n; i++)
            {
                ulong s = src[i];
                ulong d = dst[i];
                if ((s & MigratePfn.Valid) == 0)
                {
                    if ((d & MigratePfn.Valid) != 0)
                    {
                        MigrateVma.ReleaseDestination(memory, d >> MigratePfn.Shift);
                    }
                    continue;
                }
                ulong spfn = s >> MigratePfn.Shift;
                ref FrameInfo sf = ref memory.Frame(spfn);
                if (sf.Mapping is AddressSpace mm && Volatile.Read(ref sf.MapCount) != 0)
                {
                    MigrateVma.FinalizeEntries(mm, src, dst, i, 1, sf.Index << Page.Shift, Page.NoPfn);
                    continue;
                }
                // Not mapped by any CPU entry: only references to settle.
                if ((d & MigratePfn.Valid) != 0)
                {
                    MigrateVma.ReleaseDestination(memory, d >> MigratePfn.Shift);
                }
                memory.UnlockFrame(spfn);
                memory.Put(spfn);
            }
        }
        finally
        {
            List<AddressSpace>? locked = t_locked;
            if (locked is not null)
            {
                foreach (AddressSpace mm in locked)
                {
                    mm.MmapLock.ExitRead();
                    mm.PutLiveReference();
                }
                locked.Clear();
            }
        }
    }
}
