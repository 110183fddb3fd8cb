using System.Text;
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
}
