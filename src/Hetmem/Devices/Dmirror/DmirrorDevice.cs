using System.Runtime.InteropServices;
using Hetmem.Physical;

namespace Hetmem.Devices.Dmirror;

/// <summary>
/// One node of the HMM test device, <c>/dev/hmm_dmirror&lt;Id&gt;</c> (kernel: struct dmirror_device in
/// lib/test_hmm.c): its fake device memory in 256 MiB chunks, the free lists of single pages and 512-page folios,
/// the allocation counters, and the device page-map callbacks (<c>PageFree</c>, <c>MigrateToRam</c>).
/// </summary>
/// <remarks>
/// <para><b>Memory.</b> A device-private node registers each chunk as <see cref="MemoryType.DevicePrivate"/> without
/// CPU-addressable memory; every allocated device page gets a system "backing" page that really holds its data, as
/// the kernel driver does. A device-coherent node registers its special-purpose memory (one host arena of one
/// chunk, allocated with the node) as <see cref="MemoryType.DeviceCoherent"/>: the device pages hold the data
/// themselves and the CPU maps them with ordinary entries. Since every coherent chunk starts at that same arena, a
/// coherent node never grows past one chunk; its 512-page folios are taken from wholly free PMD-aligned regions of the
/// single-page list instead (a deliberate difference from lib/test_hmm.c, whose coherent node holds no THP).</para>
/// <para><b>Locking.</b> <c>_devmemLock</c> (kernel: devmem_lock) serialises chunk creation and removal;
/// <c>_lock</c> (kernel: the device spinlock, a leaf) protects the free lists, the counters and
/// <see cref="DmirrorChunk.Remove"/>. The chunk table is copy-on-write so <see cref="PageFree"/> finds chunks
/// without a lock.</para>
/// </remarks>
public sealed unsafe partial class DmirrorDevice : IDevicePageMapOps, IDisposable
{
    /// <summary>Pages in one chunk of device memory: 256 MiB (kernel: DEVMEM_CHUNK_SIZE).</summary>
    public const ulong ChunkPages = (256UL << 20) >> Page.Shift;
    /// <summary>Slots the chunk table grows by (kernel: DEVMEM_CHUNKS_RESERVE).</summary>
    public const int ChunksReserve = 16;
    private const ulong FolioPages = 1UL << Page.PmdOrder;

    private readonly object _devmemLock = new();      // chunk creation/removal (kernel: devmem_lock)
    private readonly Lock _lock = new();               // free lists, counters, chunk Remove flags (kernel: mdevice->lock)
    private DmirrorChunk[] _chunks = [];               // copy-on-write under _devmemLock; read lock-free
    private DmirrorChunk[] _dying = [];                // copy-on-write under _devmemLock; removed chunks whose pages are still being evicted
    private int _capacity;                             // guarded by _devmemLock (kernel: devmem_capacity)
    private ulong _freePages = Page.NoPfn;             // guarded by _lock; head of the single-page free list
    private ulong _freeFolios = Page.NoPfn;            // guarded by _lock; head of the 512-page folio free list
    private ulong _calloc;                             // guarded by _lock
    private ulong _cfree;                              // guarded by _lock
    private byte* _spm;                                // immutable until Dispose; coherent nodes' special-purpose memory
    private bool _disposed;                            // guarded by _devmemLock

    internal DmirrorDevice(DmirrorDriver driver, int id, DmirrorMemoryType type)
    {
        Driver = driver;
        Id = id;
        MemoryType = type;
        Memory = driver.Memory;
        if (type == DmirrorMemoryType.DeviceCoherent)
        {
            _spm = (byte*)NativeMemory.AlignedAlloc((nuint)(ChunkPages << Page.Shift), (nuint)Page.PmdSize);
        }
        // Build the first chunk of free device pages (kernel: dmirror_device_init → dmirror_allocate_chunk).
        Errno e = AllocateChunk(large: false, wantPage: false, out _);
        if (e != Errno.Ok)
        {
            FreeSpm();
            MmException.Throw(e, $"hmm_dmirror{id}: cannot create the first device memory chunk");
        }
    }

    /// <summary>The driver this node belongs to.</summary>
    public DmirrorDriver Driver { get; }
    /// <summary>Node number (the minor of /dev/hmm_dmirror&lt;Id&gt;).</summary>
    public int Id { get; }
    /// <summary>Private (nodes 0, 1) or coherent (nodes 2, 3).</summary>
    public DmirrorMemoryType MemoryType { get; }
    /// <summary>The physical memory the device memory is registered with.</summary>
    public PhysicalMemory Memory { get; }
    /// <summary>True for a device-private node.</summary>
    public bool IsPrivate => MemoryType == DmirrorMemoryType.DevicePrivate;
    /// <summary>The page-map type of this node's chunks.</summary>
    public MemoryType PageMapType => IsPrivate ? Physical.MemoryType.DevicePrivate : Physical.MemoryType.DeviceCoherent;

    /// <summary>Device pages allocated since the node was created (kernel: calloc).</summary>
    public ulong AllocatedPages
    {
        get
        {
            lock (_lock)
            {
                return _calloc;
            }
        }
    }

    /// <summary>Device pages freed since the node was created (kernel: cfree).</summary>
    public ulong FreedPages
    {
        get
        {
            lock (_lock)
            {
                return _cfree;
            }
        }
    }

    /// <summary>Number of memory chunks (kernel: devmem_count).</summary>
    public int ChunkCount => Volatile.Read(ref _chunks).Length;

    /// <summary>Slots of the chunk table (kernel: devmem_capacity; grows by <see cref="ChunksReserve"/>).</summary>
    public int ChunkCapacity
    {
        get
        {
            lock (_devmemLock)
            {
                return _capacity;
            }
        }
    }

    /// <summary>The page maps of the current chunks.</summary>
    public IReadOnlyList<DevicePageMap> PageMaps => [.. Volatile.Read(ref _chunks).Select(c => c.Map)];

    /// <summary>Free single pages and free folios on the lists (walks the lists; for tests and tools).</summary>
    public (ulong Pages, ulong Folios) FreeListLengths
    {
        get
        {
            lock (_lock)
            {
                return (ListLength(_freePages), ListLength(_freeFolios));
            }
        }
    }

    /// <summary>Device pages currently allocated, over the current chunks and removed ones not yet drained.</summary>
    public ulong PagesInUse
    {
        get
        {
            long total = 0;
            lock (_lock)
            {
                foreach (DmirrorChunk c in Volatile.Read(ref _chunks))
                {
                    total += c.InUse;
                }
                foreach (DmirrorChunk c in Volatile.Read(ref _dying))
                {
                    total += c.InUse;
                }
            }
            return (ulong)total;
        }
    }

    private ulong ListLength(ulong head)
    {
        ulong n = 0;
        for (ulong p = head; p != Page.NoPfn; p = NextFree(p))
        {
            n++;
        }
        return n;
    }

    /// <summary>True when <paramref name="pfn"/> is a page of this node's memory.</summary>
    public bool Owns(ulong pfn) => FindChunk(pfn) is not null;

    internal DmirrorChunk? FindChunk(ulong pfn)
    {
        foreach (DmirrorChunk c in Volatile.Read(ref _chunks))
        {
            if (c.Contains(pfn))
            {
                return c;
            }
        }
        foreach (DmirrorChunk c in Volatile.Read(ref _dying))
        {
            if (c.Contains(pfn))
            {
                return c;
            }
        }
        return null;
    }

    private ulong NextFree(ulong pfn)
    {
        DmirrorChunk c = FindChunk(pfn)!;
        return c.Link[c.Offset(pfn)];
    }

    /// <summary>
    /// The system page that holds the data of device page <paramref name="pfn"/> (kernel: BACKING_PAGE): the backing
    /// page of a private page, the page itself for a coherent one. <see cref="Page.NoPfn"/> for a page of another node.
    /// </summary>
    public ulong BackingPage(ulong pfn)
    {
        DmirrorChunk? c = FindChunk(pfn);
        if (c is null)
        {
            return Page.NoPfn;
        }
        return IsPrivate ? c.Backing[c.Offset(pfn)] : pfn;
    }

    /// <summary>
    /// Adds a chunk of device memory (kernel: dmirror_allocate_chunk). A private chunk made for a large request is
    /// carved into PMD-aligned 512-page folios; otherwise (and always on a coherent node, whose folios are taken from
    /// wholly free regions of the single list) every page goes on the single list. With <paramref name="wantPage"/>
    /// one page (or folio) is taken from the new chunk and returned in <paramref name="pfn"/>.
    /// </summary>
    private Errno AllocateChunk(bool large, bool wantPage, out ulong pfn)
    {
        pfn = Page.NoPfn;
        DmirrorChunk chunk;
        lock (_devmemLock)
        {
            if (_disposed)
            {
                return Errno.ENODEV;
            }
            if (!IsPrivate && _chunks.Length > 0)
            {
                // Every coherent chunk would claim the same special-purpose memory: the second registration fails.
                return Errno.EBUSY;
            }
            DevicePageMap map;
            try
            {
                map = Memory.RegisterDevicePageMap(PageMapType, ChunkPages, IsPrivate ? null : _spm, this, this);
            }
            catch (MmException ex)
            {
                return ex.Errno;
            }
            catch (ObjectDisposedException)
            {
                return Errno.ENODEV;
            }
            chunk = new DmirrorChunk(this, map);
            if (_chunks.Length == _capacity)
            {
                _capacity += ChunksReserve;
            }
            Volatile.Write(ref _chunks, [.. _chunks, chunk]);
        }
        lock (_lock)
        {
            ulong first = chunk.FirstPfn;
            ulong last = first + chunk.PageCount;
            for (ulong p = first; p < last;)
            {
                if (large && IsPrivate && Page.IsAligned(p, FolioPages) && p + FolioPages <= last)
                {
                    chunk.Link[chunk.Offset(p)] = _freeFolios;
                    _freeFolios = p;
                    p += FolioPages;
                    continue;
                }
                PushSingleLocked(chunk, p);
                p++;
            }
            if (!wantPage)
            {
                return Errno.Ok;
            }
            pfn = PopLocked(large);
            return pfn == Page.NoPfn ? Errno.ENOMEM : Errno.Ok;
        }
    }

    private ulong PopLocked(bool large)
    {
        ulong p;
        DmirrorChunk? c;
        if (!large)
        {
            p = _freePages;
            if (p == Page.NoPfn)
            {
                return p;
            }
            c = FindChunk(p)!;
            UnlinkSingleLocked(c, p);
        }
        else if (_freeFolios != Page.NoPfn)
        {
            p = _freeFolios;
            c = FindChunk(p)!;
            _freeFolios = c.Link[c.Offset(p)];
        }
        else if (IsPrivate || (p = TakeFreeRegionLocked(out c)) == Page.NoPfn)
        {
            return Page.NoPfn;
        }
        _calloc += large ? FolioPages : 1;
        c!.InUse += large ? (long)FolioPages : 1;
        return p;
    }

    /// <summary>
    /// Takes a device folio out of a coherent node's single-page list: the first PMD-aligned 512-page region of a
    /// current chunk whose pages are all free is unlinked page by page. A coherent node cannot add a chunk for a large
    /// request (its special-purpose memory is taken by the first), so its folios come from the single pages.
    /// </summary>
    /// <returns>The head PFN of the region, or <see cref="Page.NoPfn"/> when no region is wholly free.</returns>
    private ulong TakeFreeRegionLocked(out DmirrorChunk? chunk)
    {
        foreach (DmirrorChunk c in Volatile.Read(ref _chunks))
        {
            for (int r = 0; r < c.FreeSingles.Length; r++)
            {
                ulong head = c.FirstPfn + (ulong)r * FolioPages;
                if (c.FreeSingles[r] != (int)FolioPages || !Page.IsAligned(head, FolioPages) || head + FolioPages > c.FirstPfn + c.PageCount)
                {
                    continue;
                }
                for (ulong k = 0; k < FolioPages; k++)
                {
                    UnlinkSingleLocked(c, head + k);
                }
                chunk = c;
                return head;
            }
        }
        chunk = null;
        return Page.NoPfn;
    }

    /// <summary>Pushes free page <paramref name="pfn"/> of <paramref name="c"/> on the single-page list. Caller holds <c>_lock</c>.</summary>
    private void PushSingleLocked(DmirrorChunk c, ulong pfn)
    {
        int off = c.Offset(pfn);
        ulong next = _freePages;
        c.Link[off] = next;
        c.Prev[off] = Page.NoPfn;
        if (next != Page.NoPfn)
        {
            DmirrorChunk nc = c.Contains(next) ? c : FindChunk(next)!;
            nc.Prev[nc.Offset(next)] = pfn;
        }
        _freePages = pfn;
        c.FreeSingles[off / DmirrorChunk.FolioPages]++;
    }

    /// <summary>Takes free page <paramref name="pfn"/> of <paramref name="c"/> off the single-page list. Caller holds <c>_lock</c>.</summary>
    private void UnlinkSingleLocked(DmirrorChunk c, ulong pfn)
    {
        int off = c.Offset(pfn);
        ulong next = c.Link[off];
        ulong prev = c.Prev[off];
        if (prev == Page.NoPfn)
        {
            _freePages = next;
        }
        else
        {
            DmirrorChunk pc = c.Contains(prev) ? c : FindChunk(prev)!;
            pc.Link[pc.Offset(prev)] = next;
        }
        if (next != Page.NoPfn)
        {
            DmirrorChunk nc = c.Contains(next) ? c : FindChunk(next)!;
            nc.Prev[nc.Offset(next)] = prev;
        }
        c.Link[off] = Page.NoPfn;
        c.Prev[off] = Page.NoPfn;
        c.FreeSingles[off / DmirrorChunk.FolioPages]--;
    }

    /// <summary>
    /// Allocates a device page, or a 512-page device folio when <paramref name="large"/> (kernel:
    /// dmirror_devmem_alloc_page): for a private node first a system backing page (folio) of the same order; then a
    /// free device page, creating a chunk when the lists are empty. The page is initialised with one reference and
    /// locked, ready to be a migration destination, and remembers <paramref name="owner"/> as its mirror.
    /// </summary>
    /// <returns>The head PFN, or <see cref="Page.NoPfn"/> when system or device memory ran out.</returns>
    internal ulong AllocatePage(bool large, DmirrorFile owner)
    {
        int order = large ? Page.PmdOrder : 0;
        ulong rpage = Page.NoPfn;
        if (IsPrivate)
        {
            rpage = Memory.Allocate(order);
            if (rpage == Page.NoPfn)
            {
                return Page.NoPfn;
            }
        }
        if (Hetmem.Diagnostics.FaultInjection.Enabled && Hetmem.Diagnostics.FaultInjection.ShouldFail(Hetmem.Diagnostics.FaultSites.DeviceMemoryAllocation, Memory)) { if (rpage != Page.NoPfn) { Memory.Put(rpage); } return Page.NoPfn; }
        ulong dpage;
        lock (_lock)
        {
            dpage = PopLocked(large);
        }
        if (dpage == Page.NoPfn && AllocateChunk(large, wantPage: true, out dpage) != Errno.Ok)
        {
            if (rpage != Page.NoPfn)
            {
                Memory.Put(rpage);
            }
            return Page.NoPfn;
        }
        DmirrorChunk c = FindChunk(dpage)!;
        int off = c.Offset(dpage);
        int n = 1 << order;
        for (int k = 0; k < n; k++)
        {
            c.Backing[off + k] = rpage == Page.NoPfn ? Page.NoPfn : rpage + (ulong)k;
            c.Owner[off + k] = owner;
            c.Order[off + k] = k == 0 ? (byte)order : DmirrorChunk.FolioMember;
        }
        if (large)
        {
            c.BackingSplit[off / DmirrorChunk.FolioPages] = false;
        }
        Memory.InitDevicePage(dpage, order);
        Memory.LockFrame(dpage);
        return dpage;
    }

    /// <summary>
    /// The last reference of device page <paramref name="pfn"/> was dropped (kernel: dmirror_devmem_free): its backing
    /// page is freed and the page returns to its free list, unless its chunk is being removed. A folio the core split
    /// into base pages (its tails lost the Tail flag) is freed page by page; its backing folio is split to match the
    /// first time (kernel: dmirror_devmem_folio_split).
    /// </summary>
    public void PageFree(ulong pfn)
    {
        DmirrorChunk? c = FindChunk(pfn);
        if (c is null)
        {
            throw new InvalidOperationException($"hmm_dmirror{Id}: PageFree of PFN 0x{pfn:x} that is not in any chunk");
        }
        int off = c.Offset(pfn);
        int order = c.Order[off];
        if (order == Page.PmdOrder && !Memory.Frame(pfn + 1).Has(FrameFlags.Tail))
        {
            order = DmirrorChunk.FolioMember; // the core split this folio: free the head alone
        }
        if (order == DmirrorChunk.FolioMember)
        {
            SplitBackingOnce(c, off);
            order = 0;
        }
        int n = 1 << order;
        ulong rpage = c.Backing[off];
        for (int k = 0; k < n; k++)
        {
            c.Backing[off + k] = Page.NoPfn;
            c.Owner[off + k] = null;
            c.Order[off + k] = 0;
        }
        if (rpage != Page.NoPfn)
        {
            Memory.Put(rpage);
        }
        lock (_lock)
        {
            c.InUse -= n;
            if (c.Remove)
            {
                return;
            }
            _cfree += (ulong)n;
            if (order != 0 && IsPrivate)
            {
                c.Link[off] = _freeFolios;
                _freeFolios = pfn;
            }
            else
            {
                // A coherent folio returns as single pages: its region, wholly free again, can be a folio next time.
                for (int k = 0; k < n; k++)
                {
                    PushSingleLocked(c, pfn + (ulong)k);
                }
            }
        }
    }

    /// <summary>
    /// The device folio containing page <paramref name="off"/> was split into base pages by the core: split its
    /// backing folio too, once, so each backing page can be freed with its device page. Called before any page of
    /// the folio is freed, so every backing entry of the folio is still set.
    /// </summary>
    private void SplitBackingOnce(DmirrorChunk c, int off)
    {
        int region = off / DmirrorChunk.FolioPages;
        if (c.BackingSplit[region])
        {
            return;
        }
        c.BackingSplit[region] = true;
        int headOff = region * DmirrorChunk.FolioPages;
        ulong rhead = c.Backing[headOff];
        if (rhead == Page.NoPfn || !IsPrivate)
        {
            return;
        }
        if (Memory.Frame(rhead).Order != 0)
        {
            Memory.SplitCompound(rhead, static _ => 1);
        }
    }

    /// <summary>
    /// Tears down every chunk (kernel: dmirror_device_remove_chunks, the RELEASE command): marks it removed, takes its
    /// free pages off the lists, evicts its pages in use back to system memory, and unregisters its page map. Later
    /// allocations create new chunks. A chunk some of whose pages could not be evicted (pinned, or shared with another
    /// process) stays registered until the driver is disposed, so those pages keep valid metadata.
    /// </summary>
    public void RemoveChunks()
    {
        DmirrorChunk[] victims;
        lock (_devmemLock)
        {
            victims = _chunks;
            lock (_lock)
            {
                foreach (DmirrorChunk c in victims)
                {
                    c.Remove = true;
                }
                _freePages = Page.NoPfn;
                _freeFolios = Page.NoPfn;
            }
            Volatile.Write(ref _dying, [.. _dying, .. victims]);
            Volatile.Write(ref _chunks, []);
            _capacity = 0;
        }
        // Evict without holding devmem_lock: eviction takes mmap locks, and a migration holding an mmap lock may be
        // waiting for devmem_lock to add a chunk.
        foreach (DmirrorChunk c in victims)
        {
            EvictChunk(c);
        }
        lock (_devmemLock)
        {
            var kept = new List<DmirrorChunk>();
            foreach (DmirrorChunk c in _dying)
            {
                long inUse;
                lock (_lock)
                {
                    inUse = c.InUse;
                }
                if (inUse == 0 && victims.Contains(c))
                {
                    Memory.UnregisterDevicePageMap(c.Map);
                }
                else
                {
                    kept.Add(c);
                }
            }
            Volatile.Write(ref _dying, [.. kept]);
        }
    }

    /// <summary>Chunks removed by <see cref="RemoveChunks"/> that still have pages in use (they could not be evicted).</summary>
    public int StrandedChunkCount => Volatile.Read(ref _dying).Length;

    /// <summary>Evicts every page in use of every chunk back to system memory (kernel: the chunk loop of dmirror_fops_release).</summary>
    internal void EvictAllChunks()
    {
        foreach (DmirrorChunk c in Volatile.Read(ref _chunks))
        {
            EvictChunk(c);
        }
    }

    /// <summary>Removes the chunks and frees the special-purpose memory (kernel: dmirror_device_remove).</summary>
    public void Dispose()
    {
        RemoveChunks();
        lock (_devmemLock)
        {
            _disposed = true;
        }
        FreeSpm();
    }

    private void FreeSpm()
    {
        if (_spm != null)
        {
            NativeMemory.AlignedFree(_spm);
            _spm = null;
        }
    }

    /// <inheritdoc/>
    public override string ToString() => $"hmm_dmirror{Id} ({MemoryType})";
}
