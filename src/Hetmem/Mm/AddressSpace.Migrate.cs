using System.Diagnostics;
using System.Runtime.CompilerServices;
using Hetmem.Physical;

namespace Hetmem.Mm;

/// <summary>
/// Page-table helpers for device migration and device-exclusive access (kernel: the parts of mm/migrate_device.c,
/// mm/migrate.c remove_migration_ptes and mm/rmap.c that touch page tables). Called by <c>Hetmem.Hmm.MigrateVma</c>,
/// <c>MigrateDevice</c> and <c>DeviceExclusive</c>.
/// </summary>
/// <remarks>
/// <para>Reference convention (the one <see cref="ReleaseEntry"/> implements): a migration, device-private or
/// device-exclusive entry holds one map count on its frame and one reference on the frame's head, exactly like
/// the present entry it replaced. Installing a migration entry therefore moves nothing; the migrating thread
/// takes its own extra reference and the frame lock.</para>
/// <para>Locking: every helper here changes entries under the page-table lock of the table holding them and
/// takes no other lock; callers hold the mmap lock (read is enough) so tables cannot be freed under them.</para>
/// </remarks>
public sealed unsafe partial class AddressSpace
{
    /// <summary>True when <paramref name="pfn"/> is this space's huge zero page (without allocating one).</summary>
    internal bool IsHugeZeroPfn(ulong pfn) => pfn == Volatile.Read(ref _hugeZeroPfn);

    /// <summary>
    /// Pointer to the PTE table covering <paramref name="va"/>, or null when the PMD is empty, a huge leaf or a
    /// non-present PMD entry. Returns the PMD entry through <paramref name="pmdEntry"/> (null when no PMD table).
    /// </summary>
    internal ulong* PteTableOf(ulong va, out ulong* pmdEntry)
    {
        AssertMmapLocked();
        pmdEntry = PmdEntry(va, alloc: false);
        if (pmdEntry == null)
        {
            return null;
        }
        var e = new Pte(Volatile.Read(ref *pmdEntry));
        if (!e.IsPresent || e.IsHugeLeaf)
        {
            return null;
        }
        return TablePtr(e.Pfn);
    }

    /// <summary>
    /// Replaces the migration entry for <paramref name="oldPfn"/> at <paramref name="slot"/> with
    /// <paramref name="newValue"/> under the page-table lock (kernel: remove_migration_pte). Returns false when the
    /// entry is no longer that migration entry (nothing changed).
    /// </summary>
    internal bool ReplaceMigrationEntry(ulong* slot, ulong oldPfn, ulong newValue)
    {
        lock (PtlFor(slot))
        {
            var cur = new Pte(*slot);
            if (cur.SwapType != SwapEntryType.Migration || cur.Pfn != oldPfn)
            {
                return false;
            }
            *slot = newValue;
            return true;
        }
    }

    /// <summary>
    /// The entry a migration entry turns back into when the source stays (kernel: remove_migration_pte with
    /// src == dst): a device-private entry for a device-private frame, else a present entry (devmap for
    /// ZONE_DEVICE frames at PTE level), writable as the migration entry was.
    /// </summary>
    internal ulong RestoredEntryFor(ulong pfn, bool writable, bool huge)
    {
        DevicePageMap? map = Memory.IsRam(pfn) ? null : Memory.FindMap(pfn);
        if (map is { Type: MemoryType.DevicePrivate })
        {
            return Pte.MakeSwap(SwapEntryType.DevicePrivate, pfn, writable, huge).Value;
        }
        // A PMD-level coherent entry carries no devmap bit: the mm then treats it as the anonymous THP it is (split on
        // partial munmap/mprotect/mremap) rather than as a refaultable DAX leaf (zapped whole).
        ulong extra = (writable ? Pte.Dirty : 0) | (huge ? Pte.Huge : map is null ? 0 : Pte.DevMap);
        return Pte.Make(pfn, writable, extra).Value;
    }

    /// <summary>
    /// Splits a huge PMD (present THP, huge zero page, or a PMD-level migration/device-private entry) for a
    /// migration walk; false when it could not be split (no memory for the table). Sends its own CLEAR bracket.
    /// </summary>
    internal bool TrySplitHugePmdForMigration(ulong start, ulong* pmd)
    {
        Debug.Assert(Page.IsAligned(start, Page.PmdSize));
        try
        {
            SplitHugePmd(start, pmd);
        }
        catch (MmException)
        {
            return false;
        }
        var e = new Pte(Volatile.Read(ref *pmd));
        return e.IsPresent && !e.IsHugeLeaf;
    }

    /// <summary>
    /// Splits the compound page <paramref name="head"/> (a THP or a device THP) into base pages when every one of
    /// its mappings is an entry of <paramref name="table"/> (kernel: split_folio with a frozen reference count).
    /// <paramref name="lockedPage"/> is a page of the compound the caller already holds locked and referenced (a
    /// migration's fault page), or <see cref="Page.NoPfn"/>; its reference and lock stay on that base page. Frame
    /// locks held by others block the split. Base pages that nothing maps are released afterwards.
    /// </summary>
    /// <remarks>Takes the head's frame lock (trylock) and the table's page-table lock; caller holds the mmap lock.</remarks>
    /// <returns>True when the page is now a set of base pages.</returns>
    internal bool TrySplitMappedCompound(ulong head, ulong* table, ulong lockedPage)
        => TrySplitMappedCompoundIn(head, table, null, 0, lockedPage);

    /// <summary>
    /// As <see cref="TrySplitMappedCompound"/>, for a compound page whose pages are mapped in virtual order from
    /// <paramref name="va"/> - (<paramref name="pfn"/> - head) pages (a PTE-mapped THP, possibly moved by mremap so that
    /// it straddles two PTE tables); both tables are locked for the split.
    /// </summary>
    internal bool TrySplitMappedCompoundAt(ulong head, ulong va, ulong pfn, ulong lockedPage)
    {
        AssertMmapLocked();
        int order = Memory.Frame(head).Order;
        if (order == 0 || pfn - head >= (1UL << order))
        {
            return false;
        }
        ulong v0 = va - ((pfn - head) << Page.Shift);
        ulong v1 = v0 + (((1UL << order) - 1) << Page.Shift);
        ulong* t0 = PteTableOf(v0, out _);
        ulong* t1 = PteTableOf(v1, out _);
        if (t0 == null || t1 == null)
        {
            return false;
        }
        if (t0 == t1)
        {
            return TrySplitMappedCompoundIn(head, t0, null, 0, lockedPage);
        }
        return TrySplitMappedCompoundIn(head, t0 + PteIndex(v0), t1, 512 - PteIndex(v0), lockedPage);
    }

    /// <summary>
    /// The split. Without <paramref name="second"/>, <paramref name="first"/> is a whole PTE table searched for the
    /// compound's entries; with it, the compound is mapped in order from <paramref name="first"/> (its first
    /// <paramref name="inFirst"/> pages) continuing at the start of table <paramref name="second"/>.
    /// </summary>
    private bool TrySplitMappedCompoundIn(ulong head, ulong* first, ulong* second, int inFirst, ulong lockedPage)
    {
        ref FrameInfo h = ref Memory.Frame(head);
        int order = h.Order;
        if (order == 0 || !h.Has(FrameFlags.Head) || h.Has(FrameFlags.HugeTlb))
        {
            return false;
        }
        int n = 1 << order;
        int extra = lockedPage - head < (ulong)n ? 1 : 0;
        bool lockedHead = head != lockedPage;
        if (lockedHead && !Memory.TryLockFrame(head))
        {
            return false;
        }
        bool split = false;
        // A fixed order between the two page-table locks: the lower stripe first (the locks are striped, so two
        // pairs of tables could otherwise take the same two stripes in opposite orders). Each lookup (PtlFor carries
        // a schedule point) sits right before its Enter, so no point separates a lookup from its acquisition.
        bool lowerSecond = second != null && PtlStripe(second) < PtlStripe(first);
        Lock l0 = PtlFor(lowerSecond ? second : first);
        l0.Enter();
        Lock? l1 = null;
        try
        {
            Lock? other = second == null ? null : PtlFor(lowerSecond ? first : second);
            if (other is not null && other != l0) // both tables may hash to one stripe: then it is held once
            {
                other.Enter();
                l1 = other;
            }
            int inTable = 0;
            if (second == null)
            {
                for (int i = 0; i < 512; i++)
                {
                    var e = new Pte(first[i]);
                    if (MapsFrame(e) && e.Pfn - head < (ulong)n)
                    {
                        inTable++;
                    }
                }
            }
            else
            {
                for (int k = 0; k < n; k++)
                {
                    var e = new Pte(k < inFirst ? first[k] : second[k - inFirst]);
                    if (MapsFrame(e) && e.Pfn == head + (ulong)k)
                    {
                        inTable++;
                    }
                }
            }
            int mapped = 0;
            bool othersLocked = false;
            for (int k = 0; k < n; k++)
            {
                ref FrameInfo t = ref Memory.Frame(head + (ulong)k);
                int m = Volatile.Read(ref t.MapCount);
                if (m > 1)
                {
                    mapped = -1;
                    break;
                }
                mapped += m;
                othersLocked |= k != 0 && head + (ulong)k != lockedPage && t.Has(FrameFlags.Locked);
            }
            int expected = mapped + extra;
            if (!othersLocked && mapped == inTable && mapped >= 0 && Interlocked.CompareExchange(ref h.RefCount, 0, expected) == expected)
            {
                // Frozen: no TryGet can succeed, and every mapping is under these locks.
                uint keep = h.Flags & (uint)(FrameFlags.Anon | FrameFlags.Dirty | FrameFlags.UpToDate | FrameFlags.SwapBacked | FrameFlags.AnonExclusive | FrameFlags.DevMap);
                object? mapping = h.Mapping;
                ulong index = h.Index;
                for (int k = n - 1; k >= 0; k--)
                {
                    ulong p = head + (ulong)k;
                    ref FrameInfo t = ref Memory.Frame(p);
                    int refs = Volatile.Read(ref t.MapCount) + (p == lockedPage ? 1 : 0);
                    t.Mapping = mapping;
                    t.Index = index + (ulong)k;
                    t.Flags = keep | (t.Flags & (uint)FrameFlags.Locked);
                    Volatile.Write(ref t.RefCount, refs == 0 ? 1 : refs);
                }
                split = true;
            }
        }
        finally
        {
            l1?.Exit();
            l0.Exit();
        }
        if (lockedHead)
        {
            Memory.UnlockFrame(head);
        }
        if (!split)
        {
            return false;
        }
        for (int k = 0; k < n; k++)
        {
            ulong p = head + (ulong)k;
            if (Volatile.Read(ref Memory.Frame(p).MapCount) == 0 && p != lockedPage)
            {
                Memory.Put(p); // a piece nothing maps goes back to its allocator
            }
        }
        return true;
    }

    private static bool MapsFrame(Pte e)
        => e.MapsPage || e.SwapType is SwapEntryType.Migration or SwapEntryType.DevicePrivate or SwapEntryType.DeviceExclusive;

    /// <summary>
    /// Replaces the CPU entry mapping device page <paramref name="pfn"/> by a migration entry, for eviction without a
    /// VMA (kernel: try_to_migrate through the reverse map). Looks at the virtual page <paramref name="vpnHint"/>
    /// first, then scans the anonymous VMAs (the mapping moved, e.g. by mremap) and updates the hint. Sends one
    /// CLEAR invalidation over the entry and shoots down the TLB when the entry was present (coherent memory).
    /// </summary>
    /// <remarks>Caller holds the mmap lock (read) and the frame lock of <paramref name="pfn"/>.</remarks>
    /// <returns>True when one entry was converted.</returns>
    internal bool UnmapDevicePageForEviction(ulong pfn, ref ulong vpnHint, out bool writable, out bool huge)
    {
        writable = false;
        huge = false;
        return FindDeviceEntry(pfn, ref vpnHint, out _) && TryInstallEvictionEntry(vpnHint << Page.Shift, pfn, out writable, out huge);
    }

    /// <summary>
    /// Finds the CPU entry mapping device page <paramref name="pfn"/>: at the virtual page <paramref name="vpnHint"/>,
    /// else by scanning the anonymous VMAs (then the hint is updated). <paramref name="order"/> is 0 for a PTE, 9 for a
    /// PMD-level entry.
    /// </summary>
    /// <remarks>Caller holds the mmap lock.</remarks>
    internal bool FindDeviceEntry(ulong pfn, ref ulong vpnHint, out int order)
    {
        AssertMmapLocked();
        ulong hint = vpnHint << Page.Shift;
        if (hint < TaskSize && IsDeviceEntryFor(Lookup(hint, out order, out _), order, pfn))
        {
            return true;
        }
        foreach (Vma v in Vmas.All)
        {
            if (v.Kind != VmaKind.Anonymous)
            {
                continue;
            }
            for (ulong a = v.Start; a < v.End;)
            {
                Pte e = Lookup(a, out order, out _);
                if (IsDeviceEntryFor(e, order, pfn))
                {
                    vpnHint = a >> Page.Shift;
                    return true;
                }
                ulong size = Page.Bytes(order);
                ulong next = Page.AlignDown(a, size) + size;
                if (next <= a)
                {
                    break;
                }
                a = next;
            }
        }
        order = 0;
        return false;
    }

    private static bool IsDeviceEntryFor(Pte e, int order, ulong pfn)
    {
        if (e.IsNone || e.Pfn != pfn || order is not (0 or Page.PmdOrder))
        {
            return false;
        }
        if (e.IsPresent)
        {
            return order == 0 || e.IsHugeLeaf;
        }
        return e.SwapType == SwapEntryType.DevicePrivate && e.SwapHuge == (order != 0);
    }

    private bool TryInstallEvictionEntry(ulong va, ulong pfn, out bool writable, out bool huge)
    {
        writable = false;
        huge = false;
        if (va >= TaskSize)
        {
            return false;
        }
        Pte e = Lookup(va, out int order, out ulong* slot);
        if (slot == null || e.Pfn != pfn || order is not (0 or Page.PmdOrder))
        {
            return false;
        }
        bool present = e.IsPresent && (order == 0 || e.IsHugeLeaf);
        if (!present && !(e.SwapType == SwapEntryType.DevicePrivate && e.SwapHuge == (order != 0)))
        {
            return false;
        }
        huge = order != 0;
        writable = present ? e.IsWritable : e.SwapWritable;
        ulong size = Page.Bytes(order);
        ulong start = Page.AlignDown(va, size);
        var range = new MmuNotifierRange(this, start, start + size, MmuNotifierEvent.Clear);
        Notifiers.InvalidateRangeStart(range);
        bool done = false;
        lock (PtlFor(slot))
        {
            if (*slot == e.Value)
            {
                *slot = Pte.MakeSwap(SwapEntryType.Migration, pfn, writable, huge).Value;
                done = true;
            }
        }
        if (done && present)
        {
            FlushTlb();
        }
        Notifiers.InvalidateRangeEnd(range);
        return done;
    }
}

/// <summary>
/// The reverse map of device-private pages beyond their first mapping (kernel: the anon_vma chain that rmap walks
/// for try_to_migrate). A device page records its first mapping in <see cref="FrameInfo.Mapping"/> (the address
/// space) and <see cref="FrameInfo.Index"/> (the virtual page); every further mapping fork creates is recorded here
/// as (space, virtual page, frame generation), so eviction (<c>MigrateDevice</c>) can unmap and migrate a forked
/// child's copy too.
/// </summary>
/// <remarks>
/// Records are hints, checked against the page tables at use: a record whose frame was freed since (generation
/// changed), whose space exited, or whose entry no longer maps the page is dropped when it is next looked at. Locking:
/// one leaf lock per <see cref="PhysicalMemory"/>; it is taken with no page-table lock held and allocates only there.
/// </remarks>
internal static class DeviceRmap
{
    private readonly record struct Record(AddressSpace Mm, ulong Vpn, uint Generation);

    private sealed class Table
    {
        public readonly Lock Lock = new();
        public readonly Dictionary<ulong, List<Record>> Map = [];   // guarded by Lock; pfn → further mappings
        public int AddsSincePrune;                                  // guarded by Lock
    }

    private static readonly ConditionalWeakTable<PhysicalMemory, Table> s_tables = new();

    /// <summary>Records that <paramref name="mm"/> maps device page <paramref name="pfn"/> at virtual page <paramref name="vpn"/>.</summary>
    internal static void Add(PhysicalMemory memory, ulong pfn, AddressSpace mm, ulong vpn)
    {
        Table t = s_tables.GetValue(memory, static _ => new Table());
        uint gen = memory.Frame(pfn).Generation;
        lock (t.Lock)
        {
            if (++t.AddsSincePrune >= 4096)
            {
                t.AddsSincePrune = 0;
                PruneLocked(memory, t);
            }
            if (!t.Map.TryGetValue(pfn, out List<Record>? list))
            {
                list = [];
                t.Map[pfn] = list;
            }
            list.RemoveAll(r => r.Generation != gen || !r.Mm.IsAlive || r.Mm == mm && r.Vpn == vpn);
            list.Add(new Record(mm, vpn, gen));
        }
    }

    /// <summary>True when any further mapping of <paramref name="pfn"/> may be recorded (cheap check, no allocation).</summary>
    internal static bool MayHave(PhysicalMemory memory, ulong pfn)
    {
        if (!s_tables.TryGetValue(memory, out Table? t))
        {
            return false;
        }
        lock (t.Lock)
        {
            return t.Map.ContainsKey(pfn);
        }
    }

    /// <summary>
    /// Appends the live recorded mappings of <paramref name="pfn"/> (other than <paramref name="exclude"/> at
    /// <paramref name="excludeVpn"/>) to <paramref name="into"/>, dropping stale records.
    /// </summary>
    internal static void Collect(PhysicalMemory memory, ulong pfn, List<(AddressSpace Mm, ulong Vpn)> into, AddressSpace? exclude, ulong excludeVpn)
    {
        if (!s_tables.TryGetValue(memory, out Table? t))
        {
            return;
        }
        uint gen = memory.Frame(pfn).Generation;
        lock (t.Lock)
        {
            if (!t.Map.TryGetValue(pfn, out List<Record>? list))
            {
                return;
            }
            list.RemoveAll(r => r.Generation != gen || !r.Mm.IsAlive);
            if (list.Count == 0)
            {
                t.Map.Remove(pfn);
                return;
            }
            foreach (Record r in list)
            {
                if (!(r.Mm == exclude && r.Vpn == excludeVpn))
                {
                    into.Add((r.Mm, r.Vpn));
                }
            }
        }
    }

    /// <summary>Replaces the recorded virtual page of (<paramref name="mm"/>, <paramref name="oldVpn"/>) or drops it (<paramref name="newVpn"/> = null).</summary>
    internal static void Update(PhysicalMemory memory, ulong pfn, AddressSpace mm, ulong oldVpn, ulong? newVpn)
    {
        if (!s_tables.TryGetValue(memory, out Table? t))
        {
            return;
        }
        lock (t.Lock)
        {
            if (!t.Map.TryGetValue(pfn, out List<Record>? list))
            {
                return;
            }
            int i = list.FindIndex(r => r.Mm == mm && r.Vpn == oldVpn);
            if (i >= 0)
            {
                if (newVpn is { } v)
                {
                    list[i] = list[i] with { Vpn = v };
                }
                else
                {
                    list.RemoveAt(i);
                }
            }
            if (list.Count == 0)
            {
                t.Map.Remove(pfn);
            }
        }
    }

    /// <summary>Drops every record of <paramref name="pfn"/> (its page was migrated away).</summary>
    internal static void Forget(PhysicalMemory memory, ulong pfn)
    {
        if (s_tables.TryGetValue(memory, out Table? t))
        {
            lock (t.Lock)
            {
                t.Map.Remove(pfn);
            }
        }
    }

    private static void PruneLocked(PhysicalMemory memory, Table t)
    {
        List<ulong>? dead = null;
        foreach ((ulong pfn, List<Record> list) in t.Map)
        {
            uint gen = memory.Frame(pfn).Generation;
            list.RemoveAll(r => r.Generation != gen || !r.Mm.IsAlive);
            if (list.Count == 0)
            {
                (dead ??= []).Add(pfn);
            }
        }
        if (dead is not null)
        {
            foreach (ulong pfn in dead)
            {
                t.Map.Remove(pfn);
            }
        }
    }
}
