using Hetmem.Physical;

namespace Hetmem.Devices.Dmirror;

/// <summary>
/// One 256 MiB chunk of a dmirror device's memory, registered as a <see cref="DevicePageMap"/> (kernel: struct
/// dmirror_chunk with its dev_pagemap). The per-page arrays play the role of <c>page-&gt;zone_device_data</c>.
/// </summary>
/// <remarks>
/// Locking: <see cref="Remove"/>, <see cref="Link"/>, <see cref="Prev"/> and <see cref="FreeSingles"/> are guarded
/// by the device's free-list lock. <see cref="Backing"/>, <see cref="Owner"/> and <see cref="Order"/> of a page are
/// written only while the page is exclusively owned (just allocated, or being freed by its last reference) and read by
/// whoever holds a reference to the page.
/// </remarks>
internal sealed class DmirrorChunk
{
    public DmirrorChunk(DmirrorDevice device, DevicePageMap map)
    {
        Device = device;
        Map = map;
        int n = checked((int)map.PageCount);
        Backing = new ulong[n];
        Array.Fill(Backing, Page.NoPfn);
        Owner = new DmirrorFile?[n];
        Link = new ulong[n];
        Prev = new ulong[n];
        Order = new byte[n];
        FreeSingles = new int[(n + FolioPages - 1) / FolioPages];
        BackingSplit = new bool[(n + FolioPages - 1) / FolioPages];
    }

    /// <summary>Pages in a device folio (a PMD).</summary>
    public const int FolioPages = 1 << Page.PmdOrder;

    /// <summary><see cref="Order"/> value of a page that belongs to a 512-page folio but is not (or no longer) its intact head.</summary>
    public const byte FolioMember = 0xFF;

    /// <summary>The device the chunk belongs to (kernel: chunk-&gt;mdevice).</summary>
    public DmirrorDevice Device { get; }

    /// <summary>The page map of the chunk (kernel: chunk-&gt;pagemap).</summary>
    public DevicePageMap Map { get; }

    /// <summary>First PFN.</summary>
    public ulong FirstPfn => Map.FirstPfn;

    /// <summary>Pages in the chunk.</summary>
    public ulong PageCount => Map.PageCount;

    /// <summary>The chunk is being torn down: freed pages do not return to the free lists (kernel: chunk-&gt;remove).</summary>
    public bool Remove;

    /// <summary>Pages of the chunk currently allocated (guarded by the device's free-list lock).</summary>
    public long InUse;

    /// <summary>Per page of a device-private chunk: the system page holding its data, or <see cref="Page.NoPfn"/>.</summary>
    public readonly ulong[] Backing;

    /// <summary>Per page: the mirror that allocated it (kernel: the backing page's zone_device_data), found by the CPU fault path.</summary>
    public readonly DmirrorFile?[] Owner;

    /// <summary>Per free page (or free folio head): the next PFN on its free list, or <see cref="Page.NoPfn"/>.</summary>
    public readonly ulong[] Link;

    /// <summary>Per page on the single-page free list: the previous PFN on that list, or <see cref="Page.NoPfn"/> at its head.</summary>
    public readonly ulong[] Prev;

    /// <summary>
    /// Per 512-page region: how many of its pages are on the single-page free list (guarded by the device's free-list
    /// lock). A coherent node takes a device folio from a region whose pages are all free.
    /// </summary>
    public readonly int[] FreeSingles;

    /// <summary>
    /// Per allocated page: 0 for a single page, 9 for the head of a 512-page folio, <see cref="FolioMember"/> for the other
    /// pages of a folio.
    /// </summary>
    public readonly byte[] Order;

    /// <summary>
    /// Per 512-page region: the folio allocated there was split by the core (kernel: the folio_split callback) and
    /// its backing folio was split to match, so its pages are freed one by one.
    /// </summary>
    public readonly bool[] BackingSplit;

    /// <summary>True when <paramref name="pfn"/> lies in the chunk.</summary>
    public bool Contains(ulong pfn) => pfn - FirstPfn < PageCount;

    /// <summary>Index of <paramref name="pfn"/> in the per-page arrays.</summary>
    public int Offset(ulong pfn) => (int)(pfn - FirstPfn);
}
