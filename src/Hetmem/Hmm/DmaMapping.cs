using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Hmm;

/// <summary>Direction of a DMA mapping (kernel: enum dma_data_direction, same values).</summary>
public enum DmaDirection
{
    /// <summary>The device reads and writes the page (kernel: DMA_BIDIRECTIONAL).</summary>
    Bidirectional = 0,
    /// <summary>The device only reads the page (kernel: DMA_TO_DEVICE).</summary>
    ToDevice = 1,
    /// <summary>The device only writes the page (kernel: DMA_FROM_DEVICE).</summary>
    FromDevice = 2,
}

/// <summary>
/// A per-device I/O virtual address allocator (kernel: the IOVA domain of an IOMMU, drivers/iommu/iova.c). Hands out
/// naturally aligned runs of 2^order pages from a window; freed runs are reused first (per-order free lists, like the
/// IOVA rcache). Thread-safe.
/// </summary>
/// <remarks>Locking: <c>_lock</c> (a leaf) protects the bump pointer and the free lists.</remarks>
public sealed class IovaAllocator
{
    private readonly object _lock = new();
    private readonly Stack<ulong>[] _free = new Stack<ulong>[Page.PudOrder + 1]; // guarded by _lock
    private ulong _next;                                                         // guarded by _lock
    private long _allocatedPages;                                                // guarded by _lock

    /// <summary>Creates an allocator over [<paramref name="baseAddress"/>, +<paramref name="size"/>).</summary>
    /// <param name="baseAddress">First IOVA (page aligned, non-zero: 0 is the error value).</param>
    /// <param name="size">Window size in bytes.</param>
    /// <exception cref="ArgumentException">A zero or unaligned base, or a window that wraps.</exception>
    public IovaAllocator(ulong baseAddress = 1UL << 32, ulong size = 1UL << 40)
    {
        if (baseAddress == 0 || !Page.IsAligned(baseAddress, Page.Size) || size == 0 || baseAddress + size < baseAddress)
        {
            throw new ArgumentException($"IOVA window [0x{baseAddress:x}, +0x{size:x}) must be non-empty, page aligned and above 0");
        }
        Base = baseAddress;
        Limit = baseAddress + size;
        _next = baseAddress;
        for (int i = 0; i < _free.Length; i++)
        {
            _free[i] = new Stack<ulong>();
        }
    }

    /// <summary>First IOVA of the window.</summary>
    public ulong Base { get; }
    /// <summary>End of the window (exclusive).</summary>
    public ulong Limit { get; }

    /// <summary>4 KiB pages currently allocated.</summary>
    public long AllocatedPages
    {
        get
        {
            lock (_lock)
            {
                return _allocatedPages;
            }
        }
    }

    /// <summary>Allocates 2^<paramref name="order"/> pages aligned to their size (kernel: alloc_iova_fast).</summary>
    /// <param name="order">0..18.</param>
    /// <returns>The IOVA, or 0 when the window is exhausted.</returns>
    /// <exception cref="ArgumentOutOfRangeException">Order outside 0..18.</exception>
    public ulong Allocate(int order)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)order, (uint)Page.PudOrder, nameof(order));
        ulong size = Page.Bytes(order);
        lock (_lock)
        {
            ulong iova;
            if (_free[order].Count != 0)
            {
                iova = _free[order].Pop();
            }
            else
            {
                iova = Page.AlignUp(_next, size);
                if (iova < _next || iova + size > Limit || iova + size < iova)
                {
                    return 0;
                }
                _next = iova + size;
            }
            _allocatedPages += 1L << order;
            return iova;
        }
    }

    /// <summary>Returns a run obtained from <see cref="Allocate"/> with the same order (kernel: free_iova_fast).</summary>
    /// <param name="iova">The IOVA.</param>
    /// <param name="order">The order it was allocated with.</param>
    public void Free(ulong iova, int order)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)order, (uint)Page.PudOrder, nameof(order));
        lock (_lock)
        {
            _free[order].Push(iova);
            _allocatedPages -= 1L << order;
        }
    }
}

/// <summary>
/// A DMA-capable device behind an IOMMU (kernel: struct device with dma_map_page/dma_unmap_page and the IOMMU's
/// translation). Mapping a page gives the device an I/O virtual address; the device then reads and writes host memory
/// only through <see cref="DmaRead"/> / <see cref="DmaWrite"/>, which translate like an IOMMU and fault on unmapped
/// addresses or on a write through a to-device mapping. Like the kernel's DMA API, mapping takes no page reference:
/// HMM users keep pages alive by unmapping from their invalidate callbacks.
/// </summary>
/// <remarks>Locking: <c>_lock</c> (a leaf, may be taken under a driver's update lock) protects the translation table.</remarks>
public sealed unsafe class DmaDevice
{
    private readonly object _lock = new();
    private readonly Dictionary<ulong, (ulong Pfn, int Order, DmaDirection Dir)> _maps = [];   // guarded by _lock; keyed by IOVA
    private int _ordersInUse;                                                                  // guarded by _lock; bit per order

    /// <summary>Creates a device.</summary>
    /// <param name="memory">The physical memory it can reach.</param>
    /// <param name="name">A name for messages.</param>
    /// <param name="iova">Its IOVA allocator, or null for a default 1 TiB window at 4 GiB.</param>
    public DmaDevice(PhysicalMemory memory, string name = "dma", IovaAllocator? iova = null)
    {
        ArgumentNullException.ThrowIfNull(memory);
        Memory = memory;
        Name = name;
        Iova = iova ?? new IovaAllocator();
    }

    /// <summary>The physical memory the device reaches.</summary>
    public PhysicalMemory Memory { get; }
    /// <summary>Name for messages.</summary>
    public string Name { get; }
    /// <summary>The device's IOVA allocator.</summary>
    public IovaAllocator Iova { get; }

    /// <summary>Number of live mappings.</summary>
    public int MappedCount
    {
        get
        {
            lock (_lock)
            {
                return _maps.Count;
            }
        }
    }

    /// <summary>
    /// Maps 2^<paramref name="order"/> pages starting at <paramref name="pfn"/> for the device (kernel: dma_map_page).
    /// RAM, DAX and device-coherent frames can be mapped; device-private frames cannot (the CPU cannot address them).
    /// </summary>
    /// <param name="pfn">First frame (aligned to the order).</param>
    /// <param name="order">0, or a huge page order.</param>
    /// <param name="direction">What the device may do.</param>
    /// <returns>The DMA address, or 0 on a mapping error (kernel: dma_mapping_error): unaddressable frame or IOVA space exhausted.</returns>
    public ulong MapPage(ulong pfn, int order, DmaDirection direction)
    {
        if ((uint)order > Page.PudOrder || (pfn & ((1UL << order) - 1)) != 0 || !IsAddressable(pfn) || !IsAddressable(pfn + (1UL << order) - 1))
        {
            return 0;
        }
        ulong iova = Iova.Allocate(order);
        if (iova == 0)
        {
            return 0;
        }
        lock (_lock)
        {
            _maps.Add(iova, (pfn, order, direction));
            _ordersInUse |= 1 << order;
        }
        return iova;
    }

    private bool IsAddressable(ulong pfn)
    {
        if (Memory.IsRam(pfn))
        {
            return true;
        }
        DevicePageMap? map = Memory.FindMap(pfn);
        return map is not null && map.Type != MemoryType.DevicePrivate && map.BaseAddress != null;
    }

    /// <summary>Removes a mapping made by <see cref="MapPage"/> (kernel: dma_unmap_page).</summary>
    /// <param name="dmaAddress">The address <see cref="MapPage"/> returned.</param>
    /// <param name="order">The order it was mapped with.</param>
    /// <param name="direction">The direction it was mapped with.</param>
    /// <exception cref="InvalidOperationException">No such mapping, or a different order or direction (kernel: the DMA-API debug checks).</exception>
    public void UnmapPage(ulong dmaAddress, int order, DmaDirection direction)
    {
        lock (_lock)
        {
            if (!_maps.TryGetValue(dmaAddress, out var m) || m.Order != order || m.Dir != direction)
            {
                throw new InvalidOperationException($"{Name}: dma_unmap_page of 0x{dmaAddress:x} (order {order}, {direction}) does not match a mapping");
            }
            _maps.Remove(dmaAddress);
        }
        Iova.Free(dmaAddress, order);
    }

    /// <summary>Translates a DMA address like the IOMMU does.</summary>
    /// <param name="dmaAddress">Any byte address inside a mapping.</param>
    /// <param name="pfn">The frame holding that byte.</param>
    /// <param name="direction">The mapping's direction.</param>
    /// <returns>False when nothing is mapped there (an IOMMU fault).</returns>
    public bool TryTranslate(ulong dmaAddress, out ulong pfn, out DmaDirection direction)
    {
        lock (_lock)
        {
            for (int orders = _ordersInUse; orders != 0; orders &= orders - 1)
            {
                int order = System.Numerics.BitOperations.TrailingZeroCount(orders);
                ulong size = Page.Bytes(order);
                if (_maps.TryGetValue(Page.AlignDown(dmaAddress, size), out var m) && m.Order == order)
                {
                    pfn = m.Pfn + ((dmaAddress & (size - 1)) >> Page.Shift);
                    direction = m.Dir;
                    return true;
                }
            }
        }
        pfn = 0;
        direction = default;
        return false;
    }

    /// <summary>The device reads host memory at <paramref name="dmaAddress"/> (a DMA read, e.g. an RDMA READ response).</summary>
    /// <param name="dmaAddress">Start address (the access may cross pages; each page is translated).</param>
    /// <param name="destination">Where the bytes go.</param>
    /// <returns>Ok; EFAULT for an unmapped address; EPERM for a from-device-only mapping.</returns>
    public Errno DmaRead(ulong dmaAddress, Span<byte> destination) => Access(dmaAddress, destination, write: false);

    /// <summary>The device writes host memory at <paramref name="dmaAddress"/>.</summary>
    /// <param name="dmaAddress">Start address.</param>
    /// <param name="source">The bytes.</param>
    /// <returns>Ok; EFAULT for an unmapped address; EPERM for a to-device-only mapping.</returns>
    public Errno DmaWrite(ulong dmaAddress, ReadOnlySpan<byte> source)
    {
        fixed (byte* p = source)
        {
            return Access(dmaAddress, new Span<byte>(p, source.Length), write: true);
        }
    }

    private Errno Access(ulong addr, Span<byte> buffer, bool write)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            ulong a = addr + (ulong)done;
            if (!TryTranslate(a, out ulong pfn, out DmaDirection dir))
            {
                return Errno.EFAULT;
            }
            if (write ? dir == DmaDirection.ToDevice : dir == DmaDirection.FromDevice)
            {
                return Errno.EPERM;
            }
            int off = (int)(a & Page.OffsetMask);
            int n = Math.Min(Page.Size - off, buffer.Length - done);
            var frame = new Span<byte>(Memory.Address(pfn) + off, n);
            if (write)
            {
                buffer.Slice(done, n).CopyTo(frame);
            }
            else
            {
                frame.CopyTo(buffer.Slice(done, n));
            }
            done += n;
        }
        return Errno.Ok;
    }

    /// <summary>
    /// Marks the page at <paramref name="pfn"/> dirty after the device wrote it (kernel: set_page_dirty): file pages
    /// through their <see cref="IMappable.MarkDirty"/>, every page through its frame's Dirty flag.
    /// </summary>
    /// <param name="memory">The physical memory.</param>
    /// <param name="pfn">The frame.</param>
    public static void MarkPageDirty(PhysicalMemory memory, ulong pfn)
    {
        ulong head = memory.Head(pfn);
        ref FrameInfo f = ref memory.Frame(head);
        if (!f.Has(FrameFlags.Anon) && f.Mapping is IMappable file)
        {
            file.MarkDirty(f.Index + (pfn - head));
        }
        memory.SetFlags(head, FrameFlags.Dirty);
    }
}

/// <summary>
/// The 6.15 DMA helper for HMM users (kernel: struct hmm_dma_map with hmm_dma_map_alloc / hmm_dma_map_pfn /
/// hmm_dma_unmap_pfn / hmm_dma_map_free): the <c>hmm_pfns</c> array to fault into, plus one DMA address per entry. The
/// sticky <see cref="HmmPfnFlags.DmaMapped"/> bit survives <see cref="HmmRange.Fault"/>, so a driver re-faults without
/// losing track of what it mapped. Call <see cref="UnmapPfn"/> from the invalidate callback under the update lock.
/// </summary>
/// <remarks>Locking: the caller serialises access per entry (the driver's update lock).</remarks>
public sealed class HmmDmaMap
{
    private const ulong ValidDma = (ulong)(HmmPfnFlags.Valid | HmmPfnFlags.DmaMapped);

    /// <summary>Allocates the arrays for <paramref name="entries"/> 4 KiB entries (kernel: hmm_dma_map_alloc).</summary>
    /// <param name="device">The device the entries are mapped for.</param>
    /// <param name="entries">Number of entries.</param>
    /// <exception cref="ArgumentOutOfRangeException">Non-positive entry count.</exception>
    public HmmDmaMap(DmaDevice device, int entries)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(entries);
        Device = device;
        Pfns = new ulong[entries];
        DmaAddresses = new ulong[entries];
    }

    /// <summary>The device.</summary>
    public DmaDevice Device { get; }
    /// <summary>The <c>hmm_pfns</c> array to pass to an <see cref="HmmRange"/> (kernel: map->pfn_list).</summary>
    public ulong[] Pfns { get; }
    /// <summary>The DMA address of each mapped entry, 0 otherwise (kernel: map->dma_list).</summary>
    public ulong[] DmaAddresses { get; }

    /// <summary>
    /// Maps entry <paramref name="index"/> for the device, bidirectionally, and sets its DMA_MAPPED bit (kernel:
    /// hmm_dma_map_pfn). An entry that already has DMA_MAPPED keeps its address (only the permissions changed).
    /// </summary>
    /// <param name="index">Entry index; the entry must be VALID.</param>
    /// <returns>The DMA address, or 0 when the entry is not valid or cannot be mapped.</returns>
    public ulong MapPfn(int index)
    {
        ulong e = Pfns[index];
        if ((e & (ulong)HmmPfnFlags.DmaMapped) != 0)
        {
            return DmaAddresses[index];
        }
        if ((e & (ulong)HmmPfnFlags.Valid) == 0)
        {
            return 0;
        }
        ulong dma = Device.MapPage(HmmPfn.ToPfn(e), 0, DmaDirection.Bidirectional);
        if (dma == 0)
        {
            return 0;
        }
        DmaAddresses[index] = dma;
        Pfns[index] = e | (ulong)HmmPfnFlags.DmaMapped;
        return dma;
    }

    /// <summary>Unmaps entry <paramref name="index"/> if it is VALID and DMA_MAPPED, clearing the sticky bits (kernel: hmm_dma_unmap_pfn).</summary>
    /// <param name="index">Entry index.</param>
    /// <returns>True when a mapping was removed.</returns>
    public bool UnmapPfn(int index)
    {
        ulong e = Pfns[index];
        if ((e & ValidDma) != ValidDma)
        {
            return false;
        }
        Device.UnmapPage(DmaAddresses[index], 0, DmaDirection.Bidirectional);
        DmaAddresses[index] = 0;
        Pfns[index] = e & ~HmmPfn.Sticky;
        return true;
    }

    /// <summary>Unmaps every mapped entry (kernel: hmm_dma_map_free after unmapping).</summary>
    /// <returns>How many entries were unmapped.</returns>
    public int UnmapAll()
    {
        int n = 0;
        for (int i = 0; i < Pfns.Length; i++)
        {
            if (UnmapPfn(i))
            {
                n++;
            }
        }
        return n;
    }
}
