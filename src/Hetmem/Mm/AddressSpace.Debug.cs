using System.Diagnostics;
using System.Text;
using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Mm;

/// <summary>One line of a maps dump (kernel: /proc/pid/smaps, condensed).</summary>
/// <param name="Start">First address.</param>
/// <param name="End">End address.</param>
/// <param name="Perms">rwxp / rwxs string.</param>
/// <param name="Kind">Backing kind.</param>
/// <param name="Offset">File offset in bytes.</param>
/// <param name="ResidentPages">4 KiB pages mapped by present entries (huge entries count all their pages).</param>
/// <param name="PmdEntries">Huge entries at PMD level.</param>
/// <param name="PudEntries">Huge entries at PUD level.</param>
/// <param name="SwapPages">Entries pointing to swap.</param>
/// <param name="DevicePages">Device-private or device-exclusive entries.</param>
public readonly record struct MapsEntry(ulong Start, ulong End, string Perms, VmaKind Kind, ulong Offset, ulong ResidentPages, ulong PmdEntries, ulong PudEntries, ulong SwapPages, ulong DevicePages)
{
    /// <inheritdoc/>
    public override string ToString() => $"{Start:x12}-{End:x12} {Perms} {Offset:x8} {Kind,-9} rss={ResidentPages} pmd={PmdEntries} pud={PudEntries} swap={SwapPages} dev={DevicePages}";
}

/// <summary>Introspection and invariant checks (kernel: /proc/pid/maps, smaps, pagemap; mm debug checks).</summary>
public sealed unsafe partial class AddressSpace
{
    /// <summary>The VMA layout with residency per VMA (takes the mmap lock for read).</summary>
    public IReadOnlyList<MapsEntry> Maps()
    {
        using (MmapLock.Read())
        {
            var list = new List<MapsEntry>(Vmas.Count);
            foreach (Vma v in Vmas.All)
            {
                ulong rss = 0, pmd = 0, pud = 0, swap = 0, dev = 0;
                for (ulong a = v.Start; a < v.End;)
                {
                    Pte e = Lookup(a, out int order, out ulong* slot);
                    ulong step = Page.Bytes(order);
                    if (slot != null && !e.IsNone)
                    {
                        bool leaf = order == 0 || (e.Value & Pte.Huge) != 0;
                        if (leaf && e.MapsPage)
                        {
                            rss += 1UL << order;
                            pmd += order == Page.PmdOrder ? 1UL : 0;
                            pud += order == Page.PudOrder ? 1UL : 0;
                        }
                        else if (e.SwapType == SwapEntryType.Swap)
                        {
                            swap++;
                        }
                        else if (e.SwapType is SwapEntryType.DevicePrivate or SwapEntryType.DeviceExclusive)
                        {
                            dev += 1UL << order;
                        }
                    }
                    a = Page.AlignDown(a, step) + step;
                }
                string perms = v.ToString().Split(' ')[1];
                list.Add(new MapsEntry(v.Start, v.End, perms, v.Kind, v.Kind is VmaKind.Anonymous or VmaKind.PfnMap or VmaKind.MixedMap ? 0 : v.Pgoff << Page.Shift, rss, pmd, pud, swap, dev));
            }
            return list;
        }
    }

    /// <summary>The maps dump as text, one VMA a line (like /proc/pid/maps).</summary>
    public string MapsText()
    {
        var sb = new StringBuilder();
        foreach (MapsEntry m in Maps())
        {
            sb.AppendLine(m.ToString());
        }
        return sb.ToString();
    }

    /// <summary>
    /// The entry mapping <paramref name="address"/> and its level (0, 9, 18), read without locks (kernel: a
    /// pagemap read). For tests and tools.
    /// </summary>
    public Pte QueryPte(ulong address, out int order) => Lookup(address, out order, out _);

    /// <summary>
    /// /proc/pid/pagemap entry for <paramref name="address"/>: bit 63 present, bit 62 swapped (also set for
    /// device-private and other non-present swap-type entries), bits 0..54 the PFN when present.
    /// </summary>
    public ulong PagemapEntry(ulong address)
    {
        Pte e = Lookup(address, out int order, out ulong* slot);
        if (slot == null || e.IsNone)
        {
            return 0;
        }
        if (e.IsPresent)
        {
            ulong sub = order == 0 ? 0 : (address >> Page.Shift) & ((1UL << order) - 1);
            return (1UL << 63) | ((e.Pfn + sub) & ((1UL << 55) - 1));
        }
        return 1UL << 62;
    }

    /// <summary>
    /// Walks the VMA tree and every page table and checks the mm's invariants (kernel: validate_mm plus the
    /// CONFIG_DEBUG_VM checks of the page-table walkers). Takes the mmap lock for write, so no fault or system call
    /// runs meanwhile. Returns the map count this space contributes to each frame (head frame for huge leaves), so
    /// callers can check frame map counts across several spaces.
    /// </summary>
    /// <remarks>
    /// Checked: the VMA tree's order and augmentation; every leaf lies inside a VMA and a huge leaf inside one VMA;
    /// a present writable entry only in a VM_WRITE VMA, a present entry only in an accessible VMA; every counted frame
    /// an entry maps is allocated (not in the buddy allocator), referenced and mapped, with at least as many
    /// references as this space's mappings; anonymous frames belong to an anon owner; swap entries own a swap slot;
    /// table frames are marked as page tables and their number matches <see cref="PageTableFrames"/>.
    /// </remarks>
    /// <exception cref="InvalidOperationException">The first violation found, naming the address and the rule.</exception>
    public Dictionary<ulong, int> CheckInvariants()
    {
        var mapped = new Dictionary<ulong, int>();
        using (MmapLock.Write())
        {
            Vmas.CheckInvariants();
            long tables = 0;
            CheckTable(_pgd, 3, 0, mapped, ref tables);
            long orphans;
            lock (_orphanLock)
            {
                orphans = _orphanTables.Count;
            }
            if (IsAlive && tables + orphans != PageTableFrames)
            {
                throw new InvalidOperationException($"mm {Id}: {tables} reachable + {orphans} orphaned page tables, but {PageTableFrames} counted");
            }
            foreach ((ulong pfn, int maps) in mapped)
            {
                ref FrameInfo f = ref Memory.Frame(pfn);
                int refs = Volatile.Read(ref Memory.Frame(Memory.Head(pfn)).RefCount);
                if (f.Has(FrameFlags.Buddy) || refs <= 0)
                {
                    throw new InvalidOperationException($"mm {Id}: frame 0x{pfn:x} is mapped {maps} times but free (refs {refs}, flags 0x{f.Flags:x})");
                }
                if (Volatile.Read(ref f.MapCount) < maps)
                {
                    throw new InvalidOperationException($"mm {Id}: frame 0x{pfn:x} is mapped {maps} times here but its map count is {f.MapCount}");
                }
            }
        }
        return mapped;
    }

    private void CheckTable(ulong table, int level, ulong baseVa, Dictionary<ulong, int> mapped, ref long tables)
    {
        tables++;
        if (!Memory.Frame(table).Has(FrameFlags.PageTable))
        {
            throw new InvalidOperationException($"mm {Id}: table frame 0x{table:x} (level {level}, va 0x{baseVa:x}) is not marked as a page table");
        }
        ulong* t = TablePtr(table);
        int shift = Page.Shift + 9 * level;
        for (int i = 0; i < 512; i++)
        {
            var e = new Pte(Volatile.Read(ref t[i]));
            if (e.IsNone)
            {
                continue;
            }
            ulong va = baseVa + ((ulong)i << shift);
            bool leaf = level == 0 || (e.Value & Pte.Huge) != 0 || !e.IsPresent && !e.IsProtNone;
            if (level == 3 && !leaf)
            {
                CheckTable(e.Pfn, 2, va, mapped, ref tables);
                continue;
            }
            if (!leaf)
            {
                CheckTable(e.Pfn, level - 1, va, mapped, ref tables);
                continue;
            }
            if (level == 3)
            {
                throw new InvalidOperationException($"mm {Id}: leaf entry {e} in the PGD at 0x{va:x}");
            }
            CheckLeaf(va, e, 9 * level, mapped);
        }
    }

    private void CheckLeaf(ulong va, Pte e, int order, Dictionary<ulong, int> mapped)
    {
        ulong size = Page.Bytes(order);
        Vma? v = Vmas.Find(va);
        if (v is null)
        {
            throw new InvalidOperationException($"mm {Id}: entry {e} at 0x{va:x} lies outside every VMA");
        }
        if (order > 0 && va + size > v.End)
        {
            throw new InvalidOperationException($"mm {Id}: huge entry {e} at 0x{va:x} (order {order}) runs past the end of {v}");
        }
        if (e.IsWritable && (v.Flags & VmFlags.Write) == 0)
        {
            throw new InvalidOperationException($"mm {Id}: writable entry {e} at 0x{va:x} in {v} without VM_WRITE");
        }
        if (e.IsPresent && (v.Flags & (VmFlags.Read | VmFlags.Write | VmFlags.Exec)) == 0)
        {
            throw new InvalidOperationException($"mm {Id}: present entry {e} at 0x{va:x} in the PROT_NONE VMA {v}");
        }
        if (e.MapsPage)
        {
            ulong pfn = e.Pfn;
            if (pfn == Memory.ZeroPfn || pfn == Volatile.Read(ref _hugeZeroPfn) || e.IsSpecial)
            {
                if (e.IsWritable && !e.IsSpecial)
                {
                    throw new InvalidOperationException($"mm {Id}: the zero page is mapped writable at 0x{va:x}");
                }
                return;
            }
            if (!Memory.IsRam(pfn) && Memory.FindMap(pfn) is null)
            {
                throw new InvalidOperationException($"mm {Id}: entry {e} at 0x{va:x} maps PFN 0x{pfn:x} that no memory backs");
            }
            ref FrameInfo f = ref Memory.Frame(pfn);
            if (f.Has(FrameFlags.Anon) && f.Mapping is not AnonVma)
            {
                throw new InvalidOperationException($"mm {Id}: anonymous frame 0x{pfn:x} at 0x{va:x} has no anon owner");
            }
            if (f.Has(FrameFlags.PageTable))
            {
                throw new InvalidOperationException($"mm {Id}: entry {e} at 0x{va:x} maps a page-table frame");
            }
            mapped[pfn] = mapped.GetValueOrDefault(pfn) + 1;
            return;
        }
        switch (e.SwapType)
        {
            case SwapEntryType.Swap:
                if (Swap is null || Swap.Count((uint)e.Pfn) <= 0)
                {
                    throw new InvalidOperationException($"mm {Id}: swap entry {e} at 0x{va:x} has no swap slot behind it");
                }
                break;
            case SwapEntryType.DevicePrivate:
            case SwapEntryType.DeviceExclusive:
            case SwapEntryType.Migration:
                mapped[e.Pfn] = mapped.GetValueOrDefault(e.Pfn) + 1;
                break;
        }
    }

    /// <summary>
    /// Checks the frame map counts across address spaces: every frame mapped by <paramref name="spaces"/> has exactly
    /// the map count their entries add up to (valid when nothing else maps those frames). Runs
    /// <see cref="CheckInvariants"/> on each space.
    /// </summary>
    /// <exception cref="InvalidOperationException">The first frame whose map count differs.</exception>
    public static void CheckMapCounts(params AddressSpace[] spaces)
    {
        ArgumentNullException.ThrowIfNull(spaces);
        if (spaces.Length == 0)
        {
            return;
        }
        var total = new Dictionary<ulong, int>();
        foreach (AddressSpace s in spaces)
        {
            foreach ((ulong pfn, int n) in s.CheckInvariants())
            {
                total[pfn] = total.GetValueOrDefault(pfn) + n;
            }
        }
        PhysicalMemory mem = spaces[0].Memory;
        foreach ((ulong pfn, int n) in total)
        {
            int mc = Volatile.Read(ref mem.Frame(pfn).MapCount);
            if (mc != n)
            {
                throw new InvalidOperationException($"frame 0x{pfn:x} has map count {mc} but the page tables map it {n} times");
            }
        }
    }

    /// <summary>
    /// The debug check behind "every change of a present entry happens inside a notifier bracket": some
    /// invalidate_range_start of this space is open while <paramref name="what"/> changes a present entry at
    /// <paramref name="address"/>. Call it before taking the page-table lock (it takes the subscription lock).
    /// </summary>
    [Conditional("HETMEM_INVARIANTS")]
    internal void AssertInBracket(ulong address, string what)
        => Invariants.Assert(Notifiers.ActiveRanges > 0, $"mm {Id}: {what} changes the present entry at 0x{address:x} outside an invalidate_range_start/end bracket");
}
