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
    [ThreadStatic]
    private static List<(AddressSpace Mm, ulong Vpn)>? t_rmap;   // scratch: further mappings of one page
    [ThreadStatic]
    private static List<Extra>? t_extras;             // further mappings unmapped by MigrateDeviceRange, finished by Finalize

    /// <summary>A further CPU mapping of a collected page (after fork), now a migration entry (kernel: one rmap hit of try_to_migrate).</summary>
    private readonly record struct Extra(int Index, AddressSpace Mm, ulong Vpn, bool Writable, bool Huge);

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
        List<(AddressSpace Mm, ulong Vpn)> rmap = t_rmap ??= [];
        List<Extra> extras = t_extras ??= [];
        seen.Clear();
        extras.Clear();
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
            if (DeviceRmap.MayHave(memory, pfn))
            {
                rmap.Clear();
                DeviceRmap.Collect(memory, pfn, rmap, null, 0);
                foreach ((AddressSpace other, _) in rmap)
                {
                    if (!seen.Contains(other))
                    {
                        seen.Add(other);
                    }
                }
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
            bool writable = false;
            bool huge = false;
            bool primary = usable && owner!.UnmapDevicePageForEviction(pfn, ref f.Index, out writable, out huge);
            int converted = primary ? 1 : 0;
            int firstExtra = extras.Count;
            if (Volatile.Read(ref f.MapCount) > converted && DeviceRmap.MayHave(memory, pfn))
            {
                // Further mappings made by fork (kernel: the rest of the rmap walk of try_to_migrate).
                rmap.Clear();
                DeviceRmap.Collect(memory, pfn, rmap, primary ? owner : null, primary ? f.Index : ulong.MaxValue);
                foreach ((AddressSpace other, ulong recorded) in rmap)
                {
                    ulong vpn = recorded;
                    if (!other.MmapLock.IsHeld || !other.IsAlive)
                    {
                        continue;
                    }
                    if (other.UnmapDevicePageForEviction(pfn, ref vpn, out bool w, out bool h))
                    {
                        if (vpn != recorded)
                        {
                            DeviceRmap.Update(memory, pfn, other, recorded, vpn);
                        }
                        extras.Add(new Extra(i, other, vpn, w, h));
                        converted++;
                    }
                }
            }
            if (!primary && extras.Count > firstExtra)
            {
                // The first mapping is gone (its space unmapped or refaulted it): a further mapping becomes the one
                // the page records, and the finalize step treats it as such.
                Extra e0 = extras[firstExtra];
                extras.RemoveAt(firstExtra);
                DeviceRmap.Update(memory, pfn, e0.Mm, e0.Vpn, null);
                f.Mapping = e0.Mm;
                f.Index = e0.Vpn;
                owner = e0.Mm;
                writable = e0.Writable;
                huge = e0.Huge;
                primary = true;
            }
            if (primary)
            {
                int maps = Volatile.Read(ref f.MapCount);
                if (converted == maps && Volatile.Read(ref f.RefCount) == maps + 1)
                {
                    src[i] = MigratePfn.Make(pfn) | MigratePfn.Migrate | (writable ? MigratePfn.Write : 0) | (huge ? MigratePfn.Compound : 0);
                    continue;
                }
                // Mapped somewhere the reverse map does not reach, or pinned: put every entry back.
                RestoreEntry(owner!, f.Index, pfn, writable, huge);
                for (int k = extras.Count - 1; k >= firstExtra; k--)
                {
                    RestoreEntry(extras[k].Mm, extras[k].Vpn, pfn, extras[k].Writable, extras[k].Huge);
                    extras.RemoveAt(k);
                }
            }
            memory.UnlockFrame(pfn);
            memory.Put(pfn);
            src[i] = 0;
        }
        seen.Clear();
        return Errno.Ok;
    }

    /// <summary>Turns the migration entry of <paramref name="pfn"/> at virtual page <paramref name="vpn"/> back into its device entry.</summary>
    private static void RestoreEntry(AddressSpace mm, ulong vpn, ulong pfn, bool writable, bool huge)
    {
        ulong va = vpn << Page.Shift;
        ulong* slot = huge ? mm.PmdEntry(va, alloc: false) : mm.PteEntry(va, alloc: false);
        if (slot != null)
        {
            mm.ReplaceMigrationEntry(slot, pfn, mm.RestoredEntryFor(pfn, writable, huge));
        }
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
    /// Finishes the further (forked) mappings of collected pages before the first mapping is finalized (kernel:
    /// remove_migration_ptes over every rmap hit): each migration entry becomes an entry of the destination (one more
    /// map count and reference on it; the page is now shared, so not exclusive) or of the source again.
    /// </summary>
    private static void FinalizeExtras(PhysicalMemory memory, ulong[] src, ulong[] dst)
    {
        List<Extra>? extras = t_extras;
        if (extras is null || extras.Count == 0)
        {
            return;
        }
        int n = Math.Min(src.Length, dst.Length);
        foreach (Extra x in extras)
        {
            if (x.Index >= n)
            {
                continue;
            }
            ulong s = src[x.Index];
            ulong d = dst[x.Index];
            ulong spfn = s >> MigratePfn.Shift;
            bool move = (s & (MigratePfn.Migrate | MigratePfn.Valid)) == (MigratePfn.Migrate | MigratePfn.Valid) && (d & MigratePfn.Valid) != 0;
            ulong dpfn = d >> MigratePfn.Shift;
            ulong target = move ? dpfn : spfn;
            ulong va = x.Vpn << Page.Shift;
            ulong* slot = x.Huge ? x.Mm.PmdEntry(va, alloc: false) : x.Mm.PteEntry(va, alloc: false);
            if (slot == null)
            {
                continue;
            }
            if (move)
            {
                memory.Get(dpfn);
                memory.AddMap(dpfn);
                memory.ClearFlags(dpfn, FrameFlags.AnonExclusive);
            }
            if (x.Mm.ReplaceMigrationEntry(slot, spfn, x.Mm.RestoredEntryFor(target, x.Writable, x.Huge)))
            {
                if (move)
                {
                    memory.RemoveMap(spfn);
                    memory.Put(spfn);   // the migration entry's share (the first mapping's and ours follow)
                }
            }
            else if (move)
            {
                memory.RemoveMap(dpfn);   // the entry went away meanwhile (a zap released the migration entry)
                memory.Put(dpfn);
            }
        }
        foreach (Extra x in extras)
        {
            if (x.Index < n && (src[x.Index] & MigratePfn.Migrate) != 0 && (dst[x.Index] & MigratePfn.Valid) != 0)
            {
                DeviceRmap.Forget(memory, src[x.Index] >> MigratePfn.Shift);
            }
        }
        extras.Clear();
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
            FinalizeExtras(memory, src, dst);
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
            t_extras?.Clear();
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
