using System.Diagnostics;
using System.Runtime.CompilerServices;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Hmm;

/// <summary>Which source pages <see cref="MigrateVma.Setup"/> collects (kernel: MIGRATE_VMA_SELECT_*).</summary>
[Flags]
public enum MigrateVmaSelect
{
    /// <summary>Ordinary RAM pages, holes and the zero page (kernel: MIGRATE_VMA_SELECT_SYSTEM).</summary>
    System = 1,
    /// <summary>Device-private pages whose page map owner is <see cref="MigrateVma.PgmapOwner"/> (kernel: MIGRATE_VMA_SELECT_DEVICE_PRIVATE).</summary>
    DevicePrivate = 2,
    /// <summary>Device-coherent pages whose page map owner is <see cref="MigrateVma.PgmapOwner"/> (kernel: MIGRATE_VMA_SELECT_DEVICE_COHERENT).</summary>
    DeviceCoherent = 4,
    /// <summary>
    /// Collect a PMD-mapped THP, a PMD-level device-private entry, or a hole covering a whole aligned PMD as one
    /// head entry with <see cref="MigratePfn.Compound"/> (kernel: MIGRATE_VMA_SELECT_COMPOUND); without it huge
    /// mappings are split during collection.
    /// </summary>
    Compound = 8,
}

/// <summary>Encoding of the <see cref="MigrateVma.Src"/>/<see cref="MigrateVma.Dst"/> entries (kernel: MIGRATE_PFN_* and migrate_pfn()).</summary>
public static class MigratePfn
{
    /// <summary>The PFN field is present (kernel: MIGRATE_PFN_VALID).</summary>
    public const ulong Valid = 1UL << 0;
    /// <summary>(src) This entry is migrating (kernel: MIGRATE_PFN_MIGRATE).</summary>
    public const ulong Migrate = 1UL << 1;
    /// <summary>(src) The source mapping was writable (kernel: MIGRATE_PFN_WRITE).</summary>
    public const ulong Write = 1UL << 3;
    /// <summary>The entry is the head of a PMD-sized (2 MiB) page; the next 511 entries carry no PFN (kernel: MIGRATE_PFN_COMPOUND).</summary>
    public const ulong Compound = 1UL << 4;
    /// <summary>Bit position of the PFN (kernel: MIGRATE_PFN_SHIFT).</summary>
    public const int Shift = 6;

    /// <summary>A destination entry for <paramref name="pfn"/>: the PFN with <see cref="Valid"/> (kernel: migrate_pfn).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Make(ulong pfn) => (pfn << Shift) | Valid;

    /// <summary>The PFN of an entry, or <see cref="Page.NoPfn"/> when it has no <see cref="Valid"/> bit (kernel: migrate_pfn_to_page).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong ToPfn(ulong entry) => (entry & Valid) == 0 ? Page.NoPfn : entry >> Shift;
}

/// <summary>
/// Migrates the pages of one VMA range between system memory and device memory while the CPU keeps its virtual
/// addresses (kernel: struct migrate_vma with migrate_vma_setup, migrate_vma_pages, migrate_vma_finalize in
/// mm/migrate_device.c).
/// </summary>
/// <remarks>
/// <para>Overview: fill <see cref="Vma"/>, <see cref="Start"/>, <see cref="End"/>, <see cref="Src"/>,
/// <see cref="Dst"/> (one entry per 4 KiB page), <see cref="PgmapOwner"/> and <see cref="Flags"/>; call
/// <see cref="Setup"/>; for each <c>i</c> with <c>Src[i] &amp; Migrate</c> allocate a destination, lock it, copy
/// (or zero, for an entry without a PFN) and store <c>Dst[i] = MigratePfn.Make(dst)</c>; call <see cref="Pages"/>;
/// update the device page table for entries still marked Migrate; call <see cref="Finalize"/>. Entries left with
/// <c>Dst[i] == 0</c> stay where they are. The only truth about what moved is <c>Src[i] &amp; Migrate</c> after
/// <see cref="Pages"/>.</para>
/// <para>Locking: the caller holds the address space's mmap lock (read is enough) from <see cref="Setup"/> to
/// <see cref="Finalize"/>. Collected source pages are locked (trylock, never waiting) and referenced until
/// <see cref="Finalize"/>; their CPU entries are migration entries, so CPU accesses wait and then see one complete
/// copy. <see cref="FaultPage"/> (called from <c>MigrateToRam</c>) must be locked by the caller and stays locked.</para>
/// <para>Cost: no allocation per page, one page-table lock per 512 entries, one TLB shootdown per
/// <see cref="Setup"/> (and one per <see cref="Pages"/> only when a zero page was replaced).</para>
/// </remarks>
public sealed unsafe class MigrateVma
{
    private AddressSpace? _mm;     // set by a successful Setup, cleared by Finalize
    private bool _anon;            // the VMA is anonymous (holes are migratable)
    private DevicePageMap? _map;   // last device page map looked up (one-entry cache; maps never move)

    /// <summary>The single VMA containing the range (kernel: migrate_vma.vma).</summary>
    public Vma Vma { get; set; } = null!;
    /// <summary>First address; rounded down to a page by <see cref="Setup"/>.</summary>
    public ulong Start { get; set; }
    /// <summary>End address (exclusive); rounded down to a page and trimmed to <c>Start + Npages * 4096</c> by <see cref="Setup"/>.</summary>
    public ulong End { get; set; }
    /// <summary>Source entries, one per page, written by <see cref="Setup"/>; the driver must not change them.</summary>
    public ulong[] Src { get; set; } = [];
    /// <summary>Destination entries, one per page, written by the driver between <see cref="Setup"/> and <see cref="Pages"/>.</summary>
    public ulong[] Dst { get; set; } = [];
    /// <summary>Owner matched against device page maps and carried by the MIGRATE notifier event (kernel: pgmap_owner).</summary>
    public object? PgmapOwner { get; set; }
    /// <summary>Which pages to collect.</summary>
    public MigrateVmaSelect Flags { get; set; }
    /// <summary>The locked device-private page a CPU fault is migrating (kernel: fault_page), or <see cref="Page.NoPfn"/>.</summary>
    public ulong FaultPage { get; set; } = Page.NoPfn;
    /// <summary>Entries still marked Migrate after <see cref="Setup"/> (kernel: cpages).</summary>
    public ulong Cpages { get; private set; }
    /// <summary>Entries filled by <see cref="Setup"/> (kernel: npages).</summary>
    public ulong Npages { get; private set; }

    private bool Has(MigrateVmaSelect s) => (Flags & s) != 0;

    /// <summary>
    /// Validates the request, then collects, locks and unmaps the source pages inside one MIGRATE invalidation
    /// owned by <see cref="PgmapOwner"/> (kernel: migrate_vma_setup). Pinned pages and pages mapped elsewhere are
    /// put back and their entries cleared. Returns Ok even when nothing can migrate (<see cref="Cpages"/> = 0).
    /// </summary>
    /// <returns>Ok; EINVAL (nothing changed) for: no VMA; a hugetlb, DAX, VM_IO/VM_PFNMAP/VM_MIXEDMAP/VM_DONTEXPAND
    /// VMA; an empty range or one not inside the VMA; missing or short <see cref="Src"/>/<see cref="Dst"/>; a
    /// <see cref="FaultPage"/> that is not a locked device-private page.</returns>
    public Errno Setup()
    {
        using TraceSpan span = TraceLog.Span(TraceCategory.Migrate, "migrate_vma_setup", TraceArg.Address(Start), TraceArg.Pages((long)((End - Start) >> Page.Shift)));
        Vma? vma = Vma;
        if (vma is null || vma.Kind is VmaKind.HugeTlb or VmaKind.Dax or VmaKind.PfnMap or VmaKind.MixedMap
            || (vma.Flags & (VmFlags.Special | VmFlags.HugeTlb)) != 0)
        {
            return Errno.EINVAL;
        }
        ulong start = Page.AlignDown(Start, Page.Size);
        ulong end = Page.AlignDown(End, Page.Size);
        if (start >= end || start < vma.Start || end > vma.End)
        {
            return Errno.EINVAL;
        }
        ulong npages = (end - start) >> Page.Shift;
        if (Src is null || Dst is null || (ulong)Src.Length < npages || (ulong)Dst.Length < npages)
        {
            return Errno.EINVAL;
        }
        AddressSpace mm = vma.Space;
        if (FaultPage != Page.NoPfn)
        {
            DevicePageMap? map = mm.Memory.IsRam(FaultPage) ? null : mm.Memory.FindMap(FaultPage);
            if (map is not { Type: MemoryType.DevicePrivate } || !mm.Memory.Frame(FaultPage).Has(FrameFlags.Locked))
            {
                return Errno.EINVAL;
            }
        }
        Debug.Assert(mm.MmapLock.IsHeld, "migrate_vma_setup needs the mmap lock");
        Start = start;
        End = end;
        Npages = npages;
        Cpages = 0;
        _anon = vma.Kind == VmaKind.Anonymous;
        _map = null;
        Array.Clear(Src, 0, (int)npages);
        Array.Clear(Dst, 0, (int)npages);
        _mm = mm;
        Collect(mm);
        if (Cpages > 0)
        {
            UnmapCheck(mm);
        }
        return Errno.Ok;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int IndexOf(ulong addr) => (int)((addr - Start) >> Page.Shift);

    // ---- collect ---------------------------------------------------------------------------------------

    private void Collect(AddressSpace mm)
    {
        var range = new MmuNotifierRange(mm, Start, End, MmuNotifierEvent.Migrate, Owner: PgmapOwner);
        mm.Notifiers.InvalidateRangeStart(range);
        bool flush = false;
        for (ulong addr = Start; addr < End;)
        {
            ulong next = Math.Min(Page.AlignDown(addr, Page.PmdSize) + Page.PmdSize, End);
            CollectPmd(mm, addr, next, ref flush);
            addr = next;
        }
        if (flush)
        {
            mm.FlushTlb(); // one shootdown: no Cpu still uses a translation to a collected page
        }
        mm.Notifiers.InvalidateRangeEnd(range);
    }

    private void CollectHole(ulong addr, ulong next)
    {
        if (!_anon)
        {
            return;
        }
        if (Has(MigrateVmaSelect.Compound) && Page.IsAligned(addr, Page.PmdSize) && next - addr == Page.PmdSize)
        {
            Src[IndexOf(addr)] = MigratePfn.Migrate | MigratePfn.Compound;
            Cpages++;
            return;
        }
        for (ulong a = addr; a < next; a += Page.Size)
        {
            Src[IndexOf(a)] = MigratePfn.Migrate;
            Cpages++;
        }
    }

    private void CollectPmd(AddressSpace mm, ulong addr, ulong next, ref bool flush)
    {
        ulong* pmd = mm.PmdEntry(addr, alloc: false);
        if (pmd == null)
        {
            CollectHole(addr, next);
            return;
        }
        bool whole = Page.IsAligned(addr, Page.PmdSize) && next - addr == Page.PmdSize;
        for (int attempt = 0; attempt < 4; attempt++)
        {
            var e = new Pte(Volatile.Read(ref *pmd));
            if (e.IsNone)
            {
                CollectHole(addr, next);
                return;
            }
            if (e.IsPresent && !e.IsHugeLeaf)
            {
                CollectPtes(mm, mm.TablePtr(e.Pfn), addr, next, ref flush);
                return;
            }
            if ((e.Value & Pte.Huge) == 0)
            {
                return; // not a huge mapping we understand: nothing collected
            }
            bool isPrivate = e.SwapType == SwapEntryType.DevicePrivate;
            if (!e.IsPresent && !isPrivate)
            {
                return; // PMD migration entry, PROT_NONE THP: skipped
            }
            bool selected = isPrivate ? SelectsDevice(mm, e.Pfn, MemoryType.DevicePrivate)
                : mm.Memory.IsRam(e.Pfn) ? Has(MigrateVmaSelect.System)
                : SelectsDevice(mm, e.Pfn, MemoryType.DeviceCoherent);
            if (!selected)
            {
                return;
            }
            if (whole && Has(MigrateVmaSelect.Compound) && attempt == 0)
            {
                int r = CollectHugePmd(mm, pmd, e, addr, ref flush);
                if (r >= 0)
                {
                    return; // collected (1) or skipped as a unit (0)
                }
            }
            if (!mm.TrySplitHugePmdForMigration(Page.AlignDown(addr, Page.PmdSize), pmd))
            {
                return;
            }
        }
    }

    /// <summary>Collects a whole PMD as one compound entry: 1 collected, 0 skipped, -1 not eligible (split instead).</summary>
    private int CollectHugePmd(AddressSpace mm, ulong* pmd, Pte e, ulong addr, ref bool flush)
    {
        PhysicalMemory mem = mm.Memory;
        int i = IndexOf(addr);
        if (e.IsPresent && mm.IsHugeZeroPfn(e.Pfn))
        {
            if (!_anon)
            {
                return 0;
            }
            Src[i] = MigratePfn.Migrate | MigratePfn.Compound;
            Cpages++;
            return 1;
        }
        ulong head = e.Pfn;
        ref FrameInfo f = ref mem.Frame(head);
        if (f.Order != Page.PmdOrder || !f.Has(FrameFlags.Anon) || f.Has(FrameFlags.HugeTlb))
        {
            return -1;
        }
        if (!mem.TryGet(head))
        {
            return 0;
        }
        if (head != FaultPage && !mem.TryLockFrame(head))
        {
            mem.Put(head);
            return 0;
        }
        bool writable = e.IsPresent ? e.IsWritable : e.SwapWritable;
        bool done = false;
        lock (mm.PtlFor(pmd))
        {
            if (*pmd == e.Value)
            {
                *pmd = Pte.MakeSwap(SwapEntryType.Migration, head, writable, huge: true).Value;
                done = true;
            }
        }
        if (!done)
        {
            if (head != FaultPage)
            {
                mem.UnlockFrame(head);
            }
            mem.Put(head);
            return 0;
        }
        if (e.IsPresent)
        {
            flush = true;
            if (e.IsDirty)
            {
                mem.SetFlags(head, FrameFlags.Dirty);
            }
        }
        Src[i] = MigratePfn.Make(head) | MigratePfn.Migrate | MigratePfn.Compound | (writable ? MigratePfn.Write : 0);
        Cpages++;
        return 1;
    }

    private bool SelectsDevice(AddressSpace mm, ulong pfn, MemoryType type)
    {
        MigrateVmaSelect need = type == MemoryType.DevicePrivate ? MigrateVmaSelect.DevicePrivate : MigrateVmaSelect.DeviceCoherent;
        if (!Has(need))
        {
            return false;
        }
        DevicePageMap? map = MapOf(mm.Memory, pfn);
        return map is not null && map.Type == type && ReferenceEquals(map.Owner, PgmapOwner);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private DevicePageMap? MapOf(PhysicalMemory mem, ulong pfn)
    {
        if (mem.IsRam(pfn))
        {
            return null;
        }
        DevicePageMap? m = _map;
        if (m is null || !m.Contains(pfn) || m.Memory != mem)
        {
            _map = m = mem.FindMap(pfn);
        }
        return m;
    }

    /// <summary>Collects the PTEs of one table for [addr, next): one page-table lock for the whole run.</summary>
    private void CollectPtes(AddressSpace mm, ulong* table, ulong addr, ulong next, ref bool flush)
    {
        PhysicalMemory mem = mm.Memory;
        bool system = Has(MigrateVmaSelect.System);
        ulong tableBase = Page.AlignDown(addr, Page.PmdSize);
        int splits = 0;
        while (addr < next)
        {
            ulong compoundHead = Page.NoPfn;
            ulong compoundPfn = Page.NoPfn;
            lock (mm.PtlFor(table))
            {
                for (; addr < next; addr += Page.Size)
                {
                    ulong* slot = table + (int)((addr - tableBase) >> Page.Shift);
                    var e = new Pte(*slot);
                    int i = IndexOf(addr);
                    if (e.IsNone)
                    {
                        if (_anon)
                        {
                            Src[i] = MigratePfn.Migrate;
                            Cpages++;
                        }
                        continue;
                    }
                    ulong pfn = e.Pfn;
                    bool writable;
                    if (e.IsPresent)
                    {
                        if (pfn == mem.ZeroPfn)
                        {
                            if (system)
                            {
                                Src[i] = MigratePfn.Migrate;
                                Cpages++;
                            }
                            continue;
                        }
                        if (e.IsSpecial || (mem.IsRam(pfn) ? !system : !SelectsDevice(mm, pfn, MemoryType.DeviceCoherent)))
                        {
                            continue;
                        }
                        writable = e.IsWritable;
                    }
                    else if (e.SwapType == SwapEntryType.DevicePrivate && SelectsDevice(mm, pfn, MemoryType.DevicePrivate))
                    {
                        writable = e.SwapWritable;
                    }
                    else
                    {
                        continue; // PROT_NONE, swap, migration, exclusive, another owner's page
                    }
                    ref FrameInfo f = ref mem.Frame(pfn);
                    bool compound = (f.Flags & (uint)(FrameFlags.Head | FrameFlags.Tail)) != 0;
                    if (!(compound ? mem.Frame(mem.Head(pfn)) : f).Has(FrameFlags.Anon))
                    {
                        continue; // page-cache (shared or file) pages are not migrated to device memory
                    }
                    if (compound)
                    {
                        if (splits < 4)
                        {
                            compoundHead = mem.Head(pfn);
                            compoundPfn = pfn;
                            break; // leave the lock, split the compound page, resume here
                        }
                        continue;
                    }
                    mem.Get(pfn); // safe: the entry we hold the lock of keeps the page alive
                    if (pfn != FaultPage && !mem.TryLockFrame(pfn))
                    {
                        mem.Put(pfn); // never the last reference: the entry still maps it
                        continue;
                    }
                    if (e.IsPresent)
                    {
                        flush = true;
                        if (e.IsDirty)
                        {
                            mem.SetFlags(pfn, FrameFlags.Dirty);
                        }
                    }
                    *slot = Pte.MakeSwap(SwapEntryType.Migration, pfn, writable).Value;
                    Src[i] = MigratePfn.Make(pfn) | MigratePfn.Migrate | (writable ? MigratePfn.Write : 0);
                    Cpages++;
                }
            }
            if (compoundHead != Page.NoPfn)
            {
                splits++;
                if (!mm.TrySplitMappedCompoundAt(compoundHead, addr, compoundPfn, FaultPage))
                {
                    addr += Page.Size; // could not split: this page stays (entry 0)
                }
            }
        }
    }

    // ---- unmap / pin check -----------------------------------------------------------------------------

    /// <summary>
    /// Keeps a collected page only if nothing but our migration entry maps it and nobody else holds a reference
    /// (kernel: migrate_vma_unmap / migrate_device_unmap); others get their entry back and leave the migration.
    /// </summary>
    private void UnmapCheck(AddressSpace mm)
    {
        PhysicalMemory mem = mm.Memory;
        for (int i = 0; i < (int)Npages; i++)
        {
            ulong s = Src[i];
            if ((s & (MigratePfn.Valid | MigratePfn.Migrate)) != (MigratePfn.Valid | MigratePfn.Migrate))
            {
                continue;
            }
            ulong pfn = s >> MigratePfn.Shift;
            ref FrameInfo f = ref mem.Frame(pfn);
            int mapped = Volatile.Read(ref f.MapCount);
            int extra = Volatile.Read(ref f.RefCount) - 1 - mapped;
            // Fully unmapped: our migration entry is the only mapping. A read-only page shared copy-on-write with
            // other processes (after fork) is left mapped there: this space moves to its own copy, which COW allows.
            bool ok = (mapped == 1 || (s & MigratePfn.Write) == 0 && mapped > 1) && (extra == 0 || extra == 1 && pfn == FaultPage);
            if (ok)
            {
                continue;
            }
            bool compound = (s & MigratePfn.Compound) != 0;
            ulong addr = Start + ((ulong)i << Page.Shift);
            ulong* slot = compound ? mm.PmdEntry(addr, alloc: false) : mm.PteEntry(addr, alloc: false);
            if (slot != null)
            {
                mm.ReplaceMigrationEntry(slot, pfn, mm.RestoredEntryFor(pfn, (s & MigratePfn.Write) != 0, compound));
            }
            if (pfn != FaultPage)
            {
                mem.UnlockFrame(pfn);
            }
            mem.Put(pfn);
            Src[i] = 0;
            Cpages--;
        }
    }

    // ---- pages -----------------------------------------------------------------------------------------

    /// <summary>
    /// Commits the driver's destinations (kernel: migrate_vma_pages): entries without a destination lose Migrate;
    /// holes get the destination installed (anonymous VMAs only, inside one MIGRATE invalidation from the first
    /// hole to <see cref="End"/>; a CPU fault that won the race aborts that entry); page sources hand their
    /// metadata to the destination. After it returns the driver may map destinations still marked Migrate.
    /// </summary>
    public void Pages()
    {
        using TraceSpan span = TraceLog.Span(TraceCategory.Migrate, "migrate_vma_pages", TraceArg.Address(Start), TraceArg.Pages((long)((End - Start) >> Page.Shift)));
        AddressSpace? mm = _mm;
        if (mm is null)
        {
            return;
        }
        PhysicalMemory mem = mm.Memory;
        bool opened = false;
        bool flush = false;
        MmuNotifierRange range = default;
        for (int i = 0; i < (int)Npages; i++)
        {
            ulong s = Src[i];
            if ((s & MigratePfn.Migrate) == 0)
            {
                continue;
            }
            ulong d = Dst[i];
            ulong addr = Start + ((ulong)i << Page.Shift);
            bool compoundSrc = (s & MigratePfn.Compound) != 0;
            if ((s & MigratePfn.Valid) == 0)
            {
                if (!opened)
                {
                    range = new MmuNotifierRange(mm, addr, End, MmuNotifierEvent.Migrate, Owner: PgmapOwner);
                    mm.Notifiers.InvalidateRangeStart(range);
                    opened = true;
                }
                if (compoundSrc && (d & (MigratePfn.Valid | MigratePfn.Compound)) != (MigratePfn.Valid | MigratePfn.Compound))
                {
                    // The driver could not get a huge destination: every 4 KiB entry of the PMD is a hole of its own
                    // (a huge zero page is split into zero-page PTEs first, which the inserts then replace).
                    ulong* pmd = mm.PmdEntry(addr, alloc: false);
                    if (pmd != null && new Pte(Volatile.Read(ref *pmd)) is { IsHugeLeaf: true } pe && mm.IsHugeZeroPfn(pe.Pfn))
                    {
                        mm.TrySplitHugePmdForMigration(addr, pmd);
                    }
                    Src[i] = MigratePfn.Migrate;
                    for (int k = 0; k < 512 && i + k < (int)Npages; k++)
                    {
                        ulong dk = Dst[i + k];
                        if ((dk & MigratePfn.Valid) != 0 && TryInsertHole(mm, addr + ((ulong)k << Page.Shift), dk >> MigratePfn.Shift, false, ref flush))
                        {
                            Src[i + k] = MigratePfn.Migrate;
                        }
                        else
                        {
                            Src[i + k] = 0;
                        }
                    }
                    i += 511;
                    continue;
                }
                if ((d & MigratePfn.Valid) == 0 || !TryInsertHole(mm, addr, d >> MigratePfn.Shift, compoundSrc, ref flush))
                {
                    Src[i] = s & ~MigratePfn.Migrate;
                }
                continue;
            }
            if (compoundSrc && (d & MigratePfn.Compound) == 0 && (d & MigratePfn.Valid) != 0)
            {
                // A base-page destination for a huge source: split the source and migrate it page by page.
                if (SplitCollectedHuge(mm, i, addr))
                {
                    i--;   // process the head again, now a base page
                    continue;
                }
                Src[i] &= ~MigratePfn.Migrate;   // 0 already when the split was undone
                continue;
            }
            if ((d & MigratePfn.Valid) == 0 || compoundSrc != ((d & MigratePfn.Compound) != 0))
            {
                Src[i] = s & ~MigratePfn.Migrate;
                continue;
            }
            ulong dpfn = d >> MigratePfn.Shift;
            DevicePageMap? dmap = MapOf(mem, dpfn);
            if (dmap is not null && dmap.Type is not (MemoryType.DevicePrivate or MemoryType.DeviceCoherent)
                || compoundSrc && mem.Frame(dpfn).Order != Page.PmdOrder)
            {
                Src[i] = s & ~MigratePfn.Migrate;
                continue;
            }
            mem.TryLockFrame(dpfn); // the driver should have locked it; make sure it is
            SetDestinationMetadata(mm, dpfn, dmap, addr, compoundSrc, mem.Frame(s >> MigratePfn.Shift).Flags & (uint)FrameFlags.Dirty);
        }
        if (flush)
        {
            mm.FlushTlb();
        }
        if (opened)
        {
            mm.Notifiers.InvalidateRangeEnd(range);
        }
    }

    /// <summary>
    /// Splits a collected huge source (a PMD migration entry over a locked THP or device THP) into 512 collected base
    /// pages, each locked, referenced and behind its own PTE migration entry (kernel: migrate_vma_split_pages).
    /// </summary>
    private bool SplitCollectedHuge(AddressSpace mm, int i, ulong addr)
    {
        PhysicalMemory mem = mm.Memory;
        ulong s = Src[i];
        ulong head = s >> MigratePfn.Shift;
        ulong* pmd = mm.PmdEntry(addr, alloc: false);
        if (pmd == null || i + 512 > (int)Npages || !mm.TrySplitHugePmdForMigration(addr, pmd))
        {
            return false;
        }
        ulong* table = mm.PteTableOf(addr, out _);
        if (table == null || !mm.TrySplitMappedCompound(head, table, head))
        {
            // The PMD is now 512 PTE migration entries of the still-compound page: put them all back now.
            bool writable = (s & MigratePfn.Write) != 0;
            for (int k = 0; k < 512 && table != null; k++)
            {
                ulong p = head + (ulong)k;
                mm.ReplaceMigrationEntry(table + k, p, EntryFor(mem, p, writable, false, ref _map));
            }
            Array.Clear(Src, i, 512);
            Cpages--;
            if (head != FaultPage)
            {
                mem.UnlockFrame(head);
            }
            mem.Put(head);
            return false;
        }
        ulong flags = MigratePfn.Migrate | (s & MigratePfn.Write);
        Src[i] = MigratePfn.Make(head) | flags;
        for (int k = 1; k < 512; k++)
        {
            ulong p = head + (ulong)k;
            mem.Get(p);
            mem.TryLockFrame(p);
            Src[i + k] = MigratePfn.Make(p) | flags;
        }
        return true;
    }

    /// <summary>The destination takes over the anonymous identity (kernel: folio_migrate_mapping / folio_migrate_flags).</summary>
    /// <remarks>
    /// RAM pages point at the VMA's anon owner with the anon page index. Device pages record the reverse map the
    /// eviction path needs: <see cref="FrameInfo.Mapping"/> is the address space and <see cref="FrameInfo.Index"/>
    /// the virtual page number.
    /// </remarks>
    private void SetDestinationMetadata(AddressSpace mm, ulong dpfn, DevicePageMap? dmap, ulong addr, bool huge, uint dirty)
    {
        PhysicalMemory mem = mm.Memory;
        ref FrameInfo f = ref mem.Frame(dpfn);
        if (dmap is null)
        {
            f.Mapping = Vma.PrepareAnon();
            f.Index = Vma.PgoffOf(addr);
        }
        else
        {
            f.Mapping = mm;
            f.Index = addr >> Page.Shift;
        }
        FrameFlags flags = FrameFlags.Anon | FrameFlags.SwapBacked | FrameFlags.UpToDate | FrameFlags.AnonExclusive | (FrameFlags)dirty;
        if (huge && dmap is null)
        {
            flags |= FrameFlags.Thp;
        }
        mem.SetFlags(dpfn, flags);
    }

    /// <summary>Installs a destination for a hole (kernel: migrate_vma_insert_page); false when the entry is not empty any more.</summary>
    private bool TryInsertHole(AddressSpace mm, ulong addr, ulong dpfn, bool huge, ref bool flush)
    {
        PhysicalMemory mem = mm.Memory;
        if (!_anon || !mm.IsAlive)
        {
            return false;
        }
        DevicePageMap? dmap = MapOf(mem, dpfn);
        if (dmap is not null && dmap.Type is not (MemoryType.DevicePrivate or MemoryType.DeviceCoherent))
        {
            return false;
        }
        if (huge && mem.Frame(dpfn).Order != Page.PmdOrder)
        {
            return false;
        }
        ulong* slot = huge ? mm.PmdEntry(addr, alloc: true) : mm.PteEntry(addr, alloc: true);
        if (slot == null)
        {
            return false;
        }
        bool writable = (Vma.Flags & VmFlags.Write) != 0;
        ulong value = dmap is { Type: MemoryType.DevicePrivate }
            ? Pte.MakeSwap(SwapEntryType.DevicePrivate, dpfn, writable, huge).Value
            : Pte.Make(dpfn, writable, (writable ? Pte.Dirty : 0) | (huge ? Pte.Huge : dmap is null ? 0 : Pte.DevMap)).Value;
        mem.TryLockFrame(dpfn);
        SetDestinationMetadata(mm, dpfn, dmap, addr, huge, 0);
        bool installed = false;
        lock (mm.PtlFor(slot))
        {
            var cur = new Pte(*slot);
            bool zero = cur.IsPresent && (huge ? cur.IsHugeLeaf && mm.IsHugeZeroPfn(cur.Pfn) : cur.Pfn == mem.ZeroPfn && !cur.IsHugeLeaf);
            if (cur.IsNone || zero)
            {
                *slot = value;
                mem.AddMap(dpfn);
                mem.Get(dpfn);
                installed = true;
                flush |= zero;
            }
        }
        return installed;
    }

    // ---- finalize --------------------------------------------------------------------------------------

    /// <summary>
    /// Ends the migration (kernel: migrate_vma_finalize): every migration entry becomes a mapping of the destination
    /// (still Migrate) or of the source (otherwise), with the source's write permission; sources are unlocked
    /// (except <see cref="FaultPage"/>) and their references dropped, so a migrated source is freed (a device-private
    /// one through its map's <c>PageFree</c>); unused destinations are unlocked and released.
    /// </summary>
#pragma warning disable CS0465 // the kernel's name (migrate_vma_finalize) is fixed by the cross-team API; MigrateVma has no destructor
    public void Finalize()
#pragma warning restore CS0465
    {
        using TraceSpan span = TraceLog.Span(TraceCategory.Migrate, "migrate_vma_finalize", TraceArg.Address(Start), TraceArg.Pages((long)((End - Start) >> Page.Shift)));
        AddressSpace? mm = _mm;
        if (mm is null)
        {
            return;
        }
        _mm = null;
        FinalizeEntries(mm, Src, Dst, 0, (int)Npages, Start, FaultPage);
    }

    private const byte Untouched = 0;    // FinalizeEntries outcomes, per entry of one PTE table
    private const byte Moved = 1;
    private const byte Restored = 2;
    private const byte Gone = 3;

    /// <summary>
    /// The common end of <see cref="MigrateVma"/> and <see cref="MigrateDevice"/> for entries [first, first+count)
    /// mapped from <paramref name="start"/> (kernel: migrate_device_finalize + remove_migration_ptes). Works one PTE
    /// table at a time: entries change under one page-table lock, then references are dropped outside it.
    /// </summary>
    internal static void FinalizeEntries(AddressSpace mm, ulong[] src, ulong[] dst, int first, int count, ulong start, ulong faultPage)
    {
        PhysicalMemory mem = mm.Memory;
        long toDevice = 0;
        long toRam = 0;
        DevicePageMap? cache = null;
        Span<byte> outcome = stackalloc byte[512];
        int end = first + count;
        for (int i = first; i < end;)
        {
            ulong addr = start + ((ulong)(i - first) << Page.Shift);
            int n = (int)Math.Min((ulong)(end - i), (Page.AlignDown(addr, Page.PmdSize) + Page.PmdSize - addr) >> Page.Shift);
            outcome[..n].Clear();
            ulong* table = null;
            bool looked = false;
            Lock? held = null;
            try
            {
                for (int k = 0; k < n; k++)
                {
                    ulong s = src[i + k];
                    if ((s & MigratePfn.Valid) == 0)
                    {
                        continue;
                    }
                    ulong spfn = s >> MigratePfn.Shift;
                    ulong d = dst[i + k];
                    bool move = (s & MigratePfn.Migrate) != 0 && (d & MigratePfn.Valid) != 0;
                    ulong dpfn = d >> MigratePfn.Shift;
                    bool compound = (s & MigratePfn.Compound) != 0;
                    ulong va = addr + ((ulong)k << Page.Shift);
                    ulong nv = EntryFor(mem, move ? dpfn : spfn, (s & MigratePfn.Write) != 0, compound, ref cache);
                    ulong* slot;
                    Lock ptl;
                    if (compound)
                    {
                        slot = mm.PmdEntry(va, alloc: false);
                        if (slot == null)
                        {
                            outcome[k] = Gone;
                            continue;
                        }
                        ptl = mm.PtlFor(slot);
                        ptl.Enter();
                    }
                    else
                    {
                        if (!looked)
                        {
                            looked = true;
                            table = mm.PteTableOf(va, out _);
                            if (table != null)
                            {
                                held = mm.PtlFor(table);
                                held.Enter();
                            }
                        }
                        if (table == null)
                        {
                            outcome[k] = Gone;
                            continue;
                        }
                        slot = table + AddressSpace.PteIndex(va);
                        ptl = held!;
                    }
                    var cur = new Pte(*slot);
                    if (cur.SwapType == SwapEntryType.Migration && cur.Pfn == spfn)
                    {
                        *slot = nv;
                        if (move)
                        {
                            // The mapping inherits the driver's reference; unlock before the lock is dropped, so a
                            // concurrent zap cannot free a page we still hold locked.
                            mem.AddMap(dpfn);
                            mem.ClearFlags(dpfn, FrameFlags.Locked);
                            mem.RemoveMap(spfn);
                            outcome[k] = Moved;
                        }
                        else
                        {
                            outcome[k] = Restored;
                        }
                    }
                    else
                    {
                        outcome[k] = Gone;
                    }
                    if (compound)
                    {
                        ptl.Exit();
                    }
                }
            }
            finally
            {
                held?.Exit();
            }
            for (int k = 0; k < n; k++)
            {
                ulong s = src[i + k];
                ulong d = dst[i + k];
                bool hasDst = (d & MigratePfn.Valid) != 0;
                ulong dpfn = d >> MigratePfn.Shift;
                if ((s & MigratePfn.Valid) == 0)
                {
                    if (hasDst)
                    {
                        if ((s & MigratePfn.Migrate) != 0)
                        {
                            CountMove(mem, dpfn, ref toDevice, ref toRam);
                        }
                        ReleaseDestination(mem, dpfn);
                    }
                    continue;
                }
                ulong spfn = s >> MigratePfn.Shift;
                if (outcome[k] == Moved)
                {
                    CountMove(mem, dpfn, ref toDevice, ref toRam);
                    if (spfn != faultPage)
                    {
                        mem.UnlockFrame(spfn);
                    }
                    mem.Put(spfn);   // the migration entry's share (never the last: ours follows)
                    mem.Put(spfn);   // our reference from collection: a migrated source is freed here
                    continue;
                }
                if (hasDst)
                {
                    ReleaseDestination(mem, dpfn);
                }
                if (spfn != faultPage)
                {
                    mem.UnlockFrame(spfn);
                }
                mem.Put(spfn);
            }
            i += n;
        }
        if (toDevice != 0)
        {
            Counters.Add(Counter.MigrateToDevice, toDevice);
        }
        if (toRam != 0)
        {
            Counters.Add(Counter.MigrateToRam, toRam);
        }
    }

    /// <summary>The CPU entry for <paramref name="pfn"/> after migration (see <see cref="AddressSpace.RestoredEntryFor"/>), with a one-map cache.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong EntryFor(PhysicalMemory mem, ulong pfn, bool writable, bool huge, ref DevicePageMap? cache)
    {
        if (mem.IsRam(pfn))
        {
            return Pte.Make(pfn, writable, (writable ? Pte.Dirty : 0) | (huge ? Pte.Huge : 0)).Value;
        }
        if (cache is null || !cache.Contains(pfn) || cache.Memory != mem)
        {
            cache = mem.FindMap(pfn);
        }
        if (cache is { Type: MemoryType.DevicePrivate })
        {
            return Pte.MakeSwap(SwapEntryType.DevicePrivate, pfn, writable, huge).Value;
        }
        return Pte.Make(pfn, writable, (writable ? Pte.Dirty : 0) | (huge ? Pte.Huge : Pte.DevMap)).Value; // see AddressSpace.RestoredEntryFor
    }

    private static void CountMove(PhysicalMemory mem, ulong dpfn, ref long toDevice, ref long toRam)
    {
        long n = 1L << mem.Frame(dpfn).Order;
        if (mem.IsRam(dpfn))
        {
            toRam += n;
        }
        else
        {
            toDevice += n;
        }
    }

    /// <summary>Unlocks a destination (locked by the driver or by us) and drops the driver's reference.</summary>
    internal static void ReleaseDestination(PhysicalMemory mem, ulong dpfn)
    {
        mem.ClearFlags(dpfn, FrameFlags.Locked);
        mem.Put(dpfn);
    }
}
