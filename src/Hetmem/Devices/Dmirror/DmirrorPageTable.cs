using System.Diagnostics;

namespace Hetmem.Devices.Dmirror;

/// <summary>Tag of a mirror entry (kernel: the xarray pointer tags DPT_XA_TAG_*).</summary>
internal enum DmirrorTag : byte
{
    /// <summary>The device may read the page.</summary>
    Read = 0,
    /// <summary>The page is held device-exclusive (set only by EXCLUSIVE).</summary>
    Atomic = 1,
    /// <summary>The device may read and write the page.</summary>
    Write = 3,
}

/// <summary>
/// The device page table of one mirror: a sparse map from virtual page number to the PFN that holds the page's
/// data plus a <see cref="DmirrorTag"/> (kernel: the xarray <c>dmirror-&gt;pt</c>). It holds no page references:
/// the mirror's invalidate callback erases entries before the CPU side can free their pages.
/// </summary>
/// <remarks>
/// Locking: every member is called with the owning mirror's update lock held. Layout: 512-entry leaves keyed by
/// <c>vpn &gt;&gt; 9</c>; an entry is <c>(pfn &lt;&lt; 2) | tag</c> and 0 means empty (PFN 0 is never a page).
/// <see cref="EraseRange"/> and <see cref="Erase"/> never allocate, so invalidate callbacks may call them.
/// </remarks>
internal sealed class DmirrorPageTable
{
    private const int LeafShift = 9;
    private const int LeafSize = 1 << LeafShift;

    private readonly Dictionary<ulong, Leaf> _leaves = [];   // leaf index → leaf; guarded by the mirror's update lock
    private long _count;                                     // guarded by the mirror's update lock

    private sealed class Leaf
    {
        public readonly ulong[] Entries = new ulong[LeafSize];
        public int Count;
    }

    /// <summary>Number of entries.</summary>
    public long Count => _count;

    /// <summary>Looks up <paramref name="vpn"/>.</summary>
    public bool TryGet(ulong vpn, out ulong pfn, out DmirrorTag tag)
    {
        if (_leaves.TryGetValue(vpn >> LeafShift, out Leaf? leaf))
        {
            ulong e = leaf.Entries[(int)(vpn & (LeafSize - 1))];
            if (e != 0)
            {
                pfn = e >> 2;
                tag = (DmirrorTag)(e & 3);
                return true;
            }
        }
        pfn = 0;
        tag = DmirrorTag.Read;
        return false;
    }

    /// <summary>Stores (or replaces) the entry of <paramref name="vpn"/> (kernel: xa_store).</summary>
    public void Store(ulong vpn, ulong pfn, DmirrorTag tag)
    {
        Debug.Assert(pfn != 0 && pfn < (1UL << 62), $"bad PFN 0x{pfn:x} for a mirror entry");
        ulong key = vpn >> LeafShift;
        if (!_leaves.TryGetValue(key, out Leaf? leaf))
        {
            leaf = new Leaf();
            _leaves.Add(key, leaf);
        }
        ref ulong slot = ref leaf.Entries[(int)(vpn & (LeafSize - 1))];
        if (slot == 0)
        {
            leaf.Count++;
            _count++;
        }
        slot = (pfn << 2) | (ulong)tag;
    }

    /// <summary>Erases the entry of <paramref name="vpn"/> if any (kernel: xa_erase).</summary>
    public void Erase(ulong vpn)
    {
        ulong key = vpn >> LeafShift;
        if (_leaves.TryGetValue(key, out Leaf? leaf))
        {
            EraseInLeaf(key, leaf, (int)(vpn & (LeafSize - 1)), (int)(vpn & (LeafSize - 1)) + 1);
        }
    }

    /// <summary>Erases every entry of [<paramref name="startVpn"/>, <paramref name="endVpn"/>). Allocates nothing.</summary>
    public void EraseRange(ulong startVpn, ulong endVpn)
    {
        if (endVpn <= startVpn || _count == 0)
        {
            return;
        }
        ulong firstKey = startVpn >> LeafShift;
        ulong lastKey = (endVpn - 1) >> LeafShift;
        if (lastKey - firstKey >= (ulong)_leaves.Count)
        {
            // Wide range (munmap of everything, RELEASE): visit the leaves that exist. Removing during enumeration
            // is allowed for Dictionary and allocates nothing.
            foreach (KeyValuePair<ulong, Leaf> kv in _leaves)
            {
                if (kv.Key >= firstKey && kv.Key <= lastKey)
                {
                    EraseKeyRange(kv.Key, kv.Value, firstKey, lastKey, startVpn, endVpn);
                }
            }
            return;
        }
        for (ulong key = firstKey; key <= lastKey; key++)
        {
            if (_leaves.TryGetValue(key, out Leaf? leaf))
            {
                EraseKeyRange(key, leaf, firstKey, lastKey, startVpn, endVpn);
            }
        }
    }

    private void EraseKeyRange(ulong key, Leaf leaf, ulong firstKey, ulong lastKey, ulong startVpn, ulong endVpn)
    {
        int from = key == firstKey ? (int)(startVpn & (LeafSize - 1)) : 0;
        int to = key == lastKey ? (int)((endVpn - 1) & (LeafSize - 1)) + 1 : LeafSize;
        EraseInLeaf(key, leaf, from, to);
    }

    private void EraseInLeaf(ulong key, Leaf leaf, int from, int to)
    {
        ulong[] e = leaf.Entries;
        for (int i = from; i < to && leaf.Count > 0; i++)
        {
            if (e[i] != 0)
            {
                e[i] = 0;
                leaf.Count--;
                _count--;
            }
        }
        if (leaf.Count == 0)
        {
            _leaves.Remove(key);
        }
    }

    /// <summary>True when any entry of [<paramref name="startVpn"/>, <paramref name="endVpn"/>) has <paramref name="tag"/>.</summary>
    /// <remarks>
    /// The kernel (dmirror_check_atomic) loads every index of the range; this sparse table instead visits only the
    /// leaves that exist when the range spans more leaf keys than there are leaves, as <see cref="EraseRange"/>
    /// does, so CHECK_EXCLUSIVE over 2^40 pages costs the table's size, not the range's.
    /// </remarks>
    public bool AnyWithTag(ulong startVpn, ulong endVpn, DmirrorTag tag)
    {
        if (endVpn <= startVpn || _count == 0)
        {
            return false;
        }
        ulong firstKey = startVpn >> LeafShift;
        ulong lastKey = (endVpn - 1) >> LeafShift;
        if (lastKey - firstKey >= (ulong)_leaves.Count)
        {
            foreach (KeyValuePair<ulong, Leaf> kv in _leaves)
            {
                if (kv.Key >= firstKey && kv.Key <= lastKey && LeafHasTag(kv.Key, kv.Value, firstKey, lastKey, startVpn, endVpn, tag))
                {
                    return true;
                }
            }
            return false;
        }
        for (ulong key = firstKey; key <= lastKey; key++)
        {
            if (_leaves.TryGetValue(key, out Leaf? leaf) && LeafHasTag(key, leaf, firstKey, lastKey, startVpn, endVpn, tag))
            {
                return true;
            }
        }
        return false;
    }

    private static bool LeafHasTag(ulong key, Leaf leaf, ulong firstKey, ulong lastKey, ulong startVpn, ulong endVpn, DmirrorTag tag)
    {
        int from = key == firstKey ? (int)(startVpn & (LeafSize - 1)) : 0;
        int to = key == lastKey ? (int)((endVpn - 1) & (LeafSize - 1)) + 1 : LeafSize;
        ulong[] e = leaf.Entries;
        for (int i = from; i < to; i++)
        {
            if (e[i] != 0 && (DmirrorTag)(e[i] & 3) == tag)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Erases everything (kernel: xa_destroy).</summary>
    public void Clear()
    {
        _leaves.Clear();
        _count = 0;
    }
}
