using System.Runtime.InteropServices;
using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>
/// A 2 MiB VRAM root chunk (kernel: UVM's <c>uvm_gpu_root_chunk_t</c>). It backs one 2 MiB VA block: the VRAM page
/// for the block's page <c>i</c> is <see cref="BasePfn"/> + i, so a fully resident block can be mapped with one 2 MiB
/// GPU entry.
/// </summary>
/// <remarks>Locking: every mutable field is protected by the VRAM lock.</remarks>
internal sealed class VramChunk
{
    public VramChunk(int index, ulong basePfn)
    {
        Index = index;
        BasePfn = basePfn;
        LruNode = new LinkedListNode<VramChunk>(this);
    }

    public int Index { get; }
    public ulong BasePfn { get; }
    public LinkedListNode<VramChunk> LruNode { get; }
    public GpuVaBlock? Owner;       // the block it backs, or null (free or draining)
    public BlockMask Used;          // pages holding data (allocated and not yet freed)
    public int UsedCount;
    public bool Draining;           // evicted: goes back to the free list when UsedCount reaches 0
    public bool IsFree = true;      // on the free stack
    public long FilledEpoch = -1;   // replay epoch of the last migration into it: not evictable before the next replay
    public long FilledNs;           // time of the last migration into it
}

/// <summary>
/// The device's VRAM: a host arena registered as device-private memory (kernel: <c>memremap_pages</c> with
/// MEMORY_DEVICE_PRIVATE, UVM's PMM) handed out in 2 MiB root chunks, one per VA block, and kept on an LRU list
/// (ordered by last migration into the chunk) for eviction.
/// </summary>
/// <remarks>
/// Locking: <c>_lock</c> is a leaf (the page-map allocator level of LockOrder.cs): it guards the chunks, the free
/// stack and the LRU; nothing is called under it that could free a page (<see cref="PageFree"/> takes it).
/// </remarks>
internal sealed unsafe class Vram : IDevicePageMapOps, IDisposable
{
    public const int ChunkPages = BlockMask.Pages;

    private readonly GpuDevice _device;
    private readonly byte* _arena;
    private readonly VramChunk[] _chunks;            // immutable array
    private readonly Stack<VramChunk> _free;         // guarded by _lock
    private readonly LinkedList<VramChunk> _lru = new(); // guarded by _lock: chunks owned by a block, oldest first
    private readonly Lock _lock = new();
    private long _pagesInUse;                        // guarded by _lock
    private bool _disposed;

    public Vram(GpuDevice device, ulong bytes)
    {
        _device = device;
        ulong pages = bytes >> Page.Shift;
        try
        {
            _arena = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, (nuint)Page.PmdSize);
        }
        catch (OutOfMemoryException)
        {
            MmException.Throw(Errno.ENOMEM, $"the host could not provide {bytes} bytes of VRAM");
        }
        Map = device.Memory.RegisterDevicePageMap(MemoryType.DevicePrivate, pages, _arena, device.Owner, this);
        _chunks = new VramChunk[pages / ChunkPages];
        _free = new Stack<VramChunk>(_chunks.Length);
        for (int i = _chunks.Length - 1; i >= 0; i--)
        {
            _chunks[i] = new VramChunk(i, Map.FirstPfn + (ulong)i * ChunkPages);
            _free.Push(_chunks[i]);
        }
    }

    public DevicePageMap Map { get; }
    public int ChunkCount => _chunks.Length;

    public int ChunksInUse
    {
        get
        {
            lock (_lock)
            {
                return _chunks.Length - _free.Count;
            }
        }
    }

    public long PagesInUse
    {
        get
        {
            lock (_lock)
            {
                return _pagesInUse;
            }
        }
    }

    public bool Contains(ulong pfn) => Map.Contains(pfn);

    /// <summary>The chunk backing <paramref name="block"/>, allocating a free one; null when none is free.</summary>
    public VramChunk? TryGetChunk(GpuVaBlock block, long epoch, long nowNs)
    {
        lock (_lock)
        {
            VramChunk? c = block.Chunk;
            if (c is null)
            {
                if (Hetmem.Diagnostics.FaultInjection.Enabled && Hetmem.Diagnostics.FaultInjection.ShouldFail(Hetmem.Diagnostics.FaultSites.DeviceMemoryAllocation, _device.Memory)) { return null; }
                if (_free.Count == 0)
                {
                    return null;
                }
                c = _free.Pop();
                c.IsFree = false;
                c.Owner = block;
                block.Chunk = c;
            }
            else
            {
                _lru.Remove(c.LruNode);
            }
            _lru.AddLast(c.LruNode);
            c.FilledEpoch = epoch;
            c.FilledNs = nowNs;
            return c;
        }
    }

    /// <summary>The chunk currently backing <paramref name="block"/>, or null.</summary>
    public VramChunk? ChunkOf(GpuVaBlock block)
    {
        lock (_lock)
        {
            return block.Chunk;
        }
    }

    /// <summary>The pages of <paramref name="block"/> resident in VRAM now.</summary>
    public BlockMask ResidentOf(GpuVaBlock block)
    {
        lock (_lock)
        {
            return block.Chunk?.Used ?? default;
        }
    }

    /// <summary>
    /// Picks a chunk to evict (kernel: UVM <c>pick_root_chunk_to_evict</c>): the least recently filled chunk, preferring
    /// one without resident pages; never <paramref name="exclude"/>'s, and never one filled since the last replay
    /// (<paramref name="epoch"/>) or less than <paramref name="minAgeNs"/> ago: the warps waiting for it must get to use
    /// it first, or two blocks could evict each other forever.
    /// </summary>
    public VramChunk? PickVictim(GpuVaBlock? exclude, long epoch, long nowNs, long minAgeNs)
    {
        lock (_lock)
        {
            VramChunk? firstUsed = null;
            for (LinkedListNode<VramChunk>? n = _lru.First; n is not null; n = n.Next)
            {
                VramChunk c = n.Value;
                if (c.Owner == exclude || c.FilledEpoch == epoch || nowNs - c.FilledNs < minAgeNs && c.UsedCount != 0)
                {
                    continue;
                }
                if (c.UsedCount == 0)
                {
                    return c;
                }
                firstUsed ??= c;
            }
            return firstUsed;
        }
    }

    /// <summary>Takes <paramref name="chunk"/> away from its block; it returns to the free list once its last page is freed.</summary>
    public void Detach(VramChunk chunk)
    {
        lock (_lock)
        {
            if (chunk.Owner is { } b)
            {
                b.Chunk = null;
                b.LastEvictedNs = GpuDevice.NowNs();
                chunk.Owner = null;
                _lru.Remove(chunk.LruNode);
            }
            if (chunk.UsedCount == 0)
            {
                FreeChunkLocked(chunk);
            }
            else
            {
                chunk.Draining = true;
            }
        }
    }

    private void FreeChunkLocked(VramChunk chunk)
    {
        chunk.Draining = false;
        if (!chunk.IsFree)
        {
            chunk.IsFree = true;
            _free.Push(chunk);
        }
    }

    /// <summary>
    /// Claims page <paramref name="page"/> of <paramref name="chunk"/> as a migration destination: initialised with one
    /// reference (kernel: zone_device_page_init). False when it still holds data.
    /// </summary>
    public bool TryClaimPage(VramChunk chunk, int page, out ulong pfn)
    {
        pfn = chunk.BasePfn + (ulong)page;
        lock (_lock)
        {
            if (chunk.Used.Get(page) || chunk.Owner is null)
            {
                return false;
            }
            chunk.Used.Set(page);
            chunk.UsedCount++;
            _pagesInUse++;
        }
        _device.Memory.InitDevicePage(pfn);
        return true;
    }

    /// <summary>The last reference of a VRAM page was dropped (kernel: dev_pagemap_ops.page_free).</summary>
    public void PageFree(ulong pfn)
    {
        ulong i = pfn - Map.FirstPfn;
        VramChunk c = _chunks[i / ChunkPages];
        int page = (int)(i % ChunkPages);
        if (_device.CheckingStale)
        {
            new Span<byte>(_arena + (i << Page.Shift), Page.Size).Fill(0xDE); // poison: a stale reader sees garbage
        }
        lock (_lock)
        {
            if (!c.Used.Get(page))
            {
                return;
            }
            c.Used.Clear(page);
            c.UsedCount--;
            _pagesInUse--;
            if (c.UsedCount == 0 && c.Draining)
            {
                FreeChunkLocked(c);
            }
        }
    }

    /// <summary>A CPU access hit a VRAM page (kernel: dev_pagemap_ops.migrate_to_ram).</summary>
    public Errno MigrateToRam(in DevicePageFault fault) => _device.MigrateToRam(fault);

    /// <summary>Chunks holding data, for eviction at teardown.</summary>
    public List<VramChunk> ChunksWithData()
    {
        lock (_lock)
        {
            return _chunks.Where(c => c.UsedCount > 0).ToList();
        }
    }

    /// <summary>Migrates every VRAM page back to system memory (driver unload).</summary>
    public void EvictAll()
    {
        foreach (VramChunk c in ChunksWithData())
        {
            _device.EvictChunk(c);
        }
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _device.Memory.UnregisterDevicePageMap(Map);
        if (PagesInUse == 0)
        {
            NativeMemory.AlignedFree(_arena);
        }
        // Otherwise pages are still mapped by someone (a leak the tests report); keep the arena alive.
    }
}
