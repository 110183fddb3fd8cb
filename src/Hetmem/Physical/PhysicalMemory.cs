using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Hetmem.Physical;

/// <summary>
/// The machine's physical memory: a RAM arena of 4 KiB frames in one native allocation, its frame metadata,
/// a buddy allocator, the shared zero page and the registered device page maps (kernel: the zone/buddy
/// allocator, mem_map, ZONE_DEVICE registrations).
/// </summary>
/// <remarks>
/// <para>PFN space: RAM frames are PFNs [<see cref="RamFirstPfn"/>, +<see cref="RamFrames"/>); RAM starts at
/// physical 1 GiB so every buddy block is naturally aligned in PFN space. Device page maps get 1 GiB-aligned
/// PFN ranges above RAM.</para>
/// <para>Locking: the free lists are protected by <c>_buddyLock</c> (a leaf lock); frame metadata fields are
/// atomic or protected by the frame lock, see <see cref="FrameInfo"/>.</para>
/// </remarks>
public sealed unsafe partial class PhysicalMemory : IDisposable
{
    /// <summary>Default RAM size, 256 MiB.</summary>
    public const ulong DefaultRamBytes = 256UL << 20;
    /// <summary>First RAM PFN (physical address 1 GiB).</summary>
    public const ulong RamFirstPfn = 1UL << Page.PudOrder;
    /// <summary>Largest ordinary buddy order (kernel: MAX_PAGE_ORDER on x86-64 is 10; Hetmem uses 0..9).</summary>
    public const int MaxOrder = Page.PmdOrder;
    /// <summary>Order of a gigantic (1 GiB) frame.</summary>
    public const int GiganticOrder = Page.PudOrder;

    private const uint NoLink = uint.MaxValue;

    private readonly byte* _ram;                      // immutable; the arena
    private readonly FrameInfo[] _frames;             // immutable array; element fields see FrameInfo
    private readonly int _topOrder;                   // immutable; largest order the buddy merges to
    private readonly uint[] _freeHead;                // guarded by _buddyLock; per-order free list heads (frame index)
    private readonly ulong[] _freeCount;              // guarded by _buddyLock
    private readonly object _buddyLock = new();
    private readonly object _mapsLock = new();
    private DevicePageMap[] _maps = [];               // copy-on-write under _mapsLock; read lock-free
    private ulong _nextDevicePfn;                     // guarded by _mapsLock
    private long _freeFrames;                         // guarded by _buddyLock, read atomically
    private bool _disposed;

    /// <summary>Creates physical memory with <paramref name="ramBytes"/> of RAM (a multiple of 2 MiB, at least 4 MiB).</summary>
    /// <exception cref="MmException">EINVAL for a bad size, ENOMEM when the host cannot provide it.</exception>
    public PhysicalMemory(ulong ramBytes = DefaultRamBytes)
    {
        if (ramBytes < 4 * Page.PmdSize / 2 || !Page.IsAligned(ramBytes, Page.PmdSize) || ramBytes > (1UL << 40))
        {
            MmException.Throw(Errno.EINVAL, $"RAM size {ramBytes} must be a multiple of 2 MiB between 4 MiB and 1 TiB");
        }
        RamFrames = ramBytes >> Page.Shift;
        try
        {
            _ram = (byte*)NativeMemory.AlignedAlloc((nuint)ramBytes, (nuint)Page.PmdSize);
        }
        catch (OutOfMemoryException)
        {
            MmException.Throw(Errno.ENOMEM, $"the host could not provide {ramBytes} bytes of RAM");
        }
        _frames = new FrameInfo[RamFrames];
        _topOrder = ramBytes >= Page.PudSize ? GiganticOrder : MaxOrder;
        _freeHead = new uint[_topOrder + 1];
        _freeCount = new ulong[_topOrder + 1];
        Array.Fill(_freeHead, NoLink);
        for (ulong i = 0; i < RamFrames; i++)
        {
            _frames[i].Index = ((ulong)NoLink << 32) | NoLink;
        }
        // The last frame of RAM is the shared zero page (at the top, so it never splits the first, naturally
        // aligned 1 GiB block a gigantic allocation needs); everything else goes to the free lists.
        ulong zeroIndex = RamFrames - 1;
        ZeroPfn = RamFirstPfn + zeroIndex;
        new Span<byte>(_ram + (zeroIndex << Page.Shift), Page.Size).Clear();
        _frames[zeroIndex].Flags = (uint)(FrameFlags.Reserved | FrameFlags.UpToDate);
        _frames[zeroIndex].RefCount = 1;
        lock (_buddyLock)
        {
            for (ulong i = 0; i < zeroIndex; i++)
            {
                _frames[i].Generation = 1;
                FreeToBuddyLocked((uint)i, 0);
            }
        }
        _nextDevicePfn = Page.AlignUp(RamFirstPfn + RamFrames, 1UL << Page.PudOrder);
    }

    /// <summary>Number of RAM frames, including the zero page.</summary>
    public ulong RamFrames { get; }

    /// <summary>RAM size in bytes.</summary>
    public ulong RamBytes => RamFrames << Page.Shift;

    /// <summary>The PFN of the shared zero page (kernel: ZERO_PAGE).</summary>
    public ulong ZeroPfn { get; }

    /// <summary>RAM frames currently free in the buddy allocator.</summary>
    public long FreeFrames => Interlocked.Read(ref _freeFrames);

    /// <summary>RAM frames in use (total minus free minus the zero page).</summary>
    public long UsedFrames => (long)RamFrames - 1 - FreeFrames;

    /// <summary>
    /// Optional observer of RAM allocations and frees (kernel: page_owner), for leak-checking tests; null in
    /// production. Called outside the buddy lock; must not allocate frames.
    /// </summary>
    internal IFrameTracker? Tracker { get; set; }

    /// <summary>Size of the per-frame metadata in bytes (target ≤ 32; Linux spends 64).</summary>
    public static int FrameMetadataBytes => Unsafe.SizeOf<FrameInfo>();

    /// <summary>True when 1 GiB gigantic frames can be allocated (the arena is at least 1 GiB).</summary>
    public bool SupportsGigantic => _topOrder >= GiganticOrder;

    /// <summary>True when <paramref name="pfn"/> is a RAM frame.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool IsRam(ulong pfn) => pfn - RamFirstPfn < RamFrames;

    /// <summary>The metadata of frame <paramref name="pfn"/> (RAM or device).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref FrameInfo Frame(ulong pfn)
    {
        ulong i = pfn - RamFirstPfn;
        if (i < RamFrames)
        {
            return ref _frames[i];
        }
        return ref DeviceFrame(pfn);
    }

    private ref FrameInfo DeviceFrame(ulong pfn)
    {
        DevicePageMap? map = FindMap(pfn);
        if (map is null)
        {
            ThrowBadPfn(pfn);
        }
        return ref map.Frames[pfn - map.FirstPfn];
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void ThrowBadPfn(ulong pfn) => throw new ArgumentOutOfRangeException(nameof(pfn), $"PFN 0x{pfn:x} is not backed by RAM or a device page map");

    /// <summary>Host address of the bytes of frame <paramref name="pfn"/>; null for a PFN without memory.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public byte* Address(ulong pfn)
    {
        ulong i = pfn - RamFirstPfn;
        if (i < RamFrames)
        {
            return _ram + (i << Page.Shift);
        }
        DevicePageMap? map = FindMap(pfn);
        return map is null || map.BaseAddress == null ? null : map.BaseAddress + ((pfn - map.FirstPfn) << Page.Shift);
    }

    /// <summary>The 4 KiB of frame <paramref name="pfn"/>.</summary>
    public Span<byte> FrameSpan(ulong pfn)
    {
        byte* p = Address(pfn);
        if (p == null)
        {
            ThrowBadPfn(pfn);
        }
        return new Span<byte>(p, Page.Size);
    }

    /// <summary>The device page map owning <paramref name="pfn"/>, or null for RAM and unknown PFNs (kernel: page_pgmap).</summary>
    public DevicePageMap? FindMap(ulong pfn)
    {
        DevicePageMap[] maps = Volatile.Read(ref _maps);
        foreach (DevicePageMap m in maps)
        {
            if (m.Contains(pfn))
            {
                return m;
            }
        }
        return null;
    }

    /// <summary>Head PFN of the compound page containing <paramref name="pfn"/> (kernel: compound_head).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Head(ulong pfn)
    {
        ref FrameInfo f = ref Frame(pfn);
        return (f.Flags & (uint)FrameFlags.Tail) == 0 ? pfn : pfn & ~((1UL << f.Order) - 1);
    }

    /// <summary>
    /// Allocates 2^<paramref name="order"/> contiguous, naturally aligned RAM frames with one reference
    /// (kernel: alloc_pages). Orders 0..9, and 18 when <see cref="SupportsGigantic"/>. Order &gt; 0 makes a
    /// compound page. Returns <see cref="Page.NoPfn"/> when memory is exhausted.
    /// </summary>
    public ulong Allocate(int order, bool zero = false)
    {
        if ((uint)order > MaxOrder && !(order == GiganticOrder && SupportsGigantic))
        {
            throw new ArgumentOutOfRangeException(nameof(order), $"order {order} is not 0..{MaxOrder}{(SupportsGigantic ? " or 18" : "")}");
        }
        if (Hetmem.Diagnostics.FaultInjection.Enabled && Hetmem.Diagnostics.FaultInjection.ShouldFail(Hetmem.Diagnostics.FaultSites.FrameAllocation, this)) { return Page.NoPfn; }
        uint idx;
        lock (_buddyLock)
        {
            idx = AllocFromBuddyLocked(order);
        }
        if (idx == NoLink)
        {
            return Page.NoPfn;
        }
        ulong pfn = RamFirstPfn + idx;
        ulong n = 1UL << order;
        for (ulong k = 0; k < n; k++)
        {
            ref FrameInfo f = ref _frames[idx + k];
            f.Mapping = null;
            f.Index = 0;
            f.MapCount = 0;
            f.RefCount = 0;
            f.Flags = order == 0 ? 0u : ((uint)order << 24) | (uint)(k == 0 ? FrameFlags.Head : FrameFlags.Tail);
        }
        _frames[idx].RefCount = 1;
        if (zero)
        {
            ZeroFrames(pfn, n);
        }
        Tracker?.Allocated(pfn, order);
        return pfn;
    }

    /// <summary>Zeroes <paramref name="count"/> frames from <paramref name="pfn"/> (kernel: clear_page).</summary>
    public void ZeroFrames(ulong pfn, ulong count)
    {
        byte* p = Address(pfn);
        NativeMemory.Clear(p, (nuint)(count << Page.Shift));
    }

    /// <summary>Copies one frame's bytes to another (kernel: copy_page / copy_highpage).</summary>
    public void CopyFrame(ulong dstPfn, ulong srcPfn, ulong count = 1)
    {
        Buffer.MemoryCopy(Address(srcPfn), Address(dstPfn), (long)(count << Page.Shift), (long)(count << Page.Shift));
    }

    /// <summary>Takes a reference on the page containing <paramref name="pfn"/> (kernel: get_page / folio_get).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Get(ulong pfn)
    {
        int r = Interlocked.Increment(ref Frame(Head(pfn)).RefCount);
        Debug.Assert(r > 1, $"get on a free frame 0x{pfn:x}");
    }

    /// <summary>Takes a reference unless the page is already free (kernel: get_page_unless_zero).</summary>
    public bool TryGet(ulong pfn)
    {
        ref int rc = ref Frame(Head(pfn)).RefCount;
        int r = Volatile.Read(ref rc);
        while (r > 0)
        {
            int seen = Interlocked.CompareExchange(ref rc, r + 1, r);
            if (seen == r)
            {
                return true;
            }
            r = seen;
        }
        return false;
    }

    /// <summary>
    /// Drops a reference on the page containing <paramref name="pfn"/> (kernel: put_page / folio_put). The last
    /// reference frees it: RAM goes back to the buddy allocator, a device page to its map's <c>PageFree</c>.
    /// Returns true when the page was freed.
    /// </summary>
    public bool Put(ulong pfn)
    {
        ulong head = Head(pfn);
        ref FrameInfo f = ref Frame(head);
        int r = Interlocked.Decrement(ref f.RefCount);
        if (r > 0)
        {
            return false;
        }
        if (r < 0)
        {
            throw new InvalidOperationException($"reference count of frame 0x{head:x} went negative (double free)");
        }
        FreePage(head);
        return true;
    }

    private void FreePage(ulong head)
    {
        ref FrameInfo f = ref Frame(head);
        if ((f.Flags & (uint)FrameFlags.Reserved) != 0)
        {
            throw new InvalidOperationException($"freeing reserved frame 0x{head:x}");
        }
        if (f.MapCount != 0)
        {
            throw new InvalidOperationException($"freeing frame 0x{head:x} that is still mapped {f.MapCount} times");
        }
        if (IsRam(head))
        {
            int order = f.Order;
            ulong n = 1UL << order;
            uint idx = (uint)(head - RamFirstPfn);
            for (ulong k = 0; k < n; k++)
            {
                ref FrameInfo t = ref _frames[idx + k];
                t.Mapping = null;
                t.MapCount = 0;
                t.Flags = 0;
                t.Generation++;
            }
            Tracker?.Freed(head, order);
            lock (_buddyLock)
            {
                FreeToBuddyLocked(idx, order);
            }
            return;
        }
        DevicePageMap map = FindMap(head)!;
        f.Mapping = null;
        f.Index = 0;
        f.Generation++;
        f.Flags = (uint)FrameFlags.DevMap;
        map.Ops?.PageFree(head);
    }

    /// <summary>Adds one to the map count of <paramref name="pfn"/>'s frame (kernel: page_add_*_rmap).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void AddMap(ulong pfn) => Interlocked.Increment(ref Frame(pfn).MapCount);

    /// <summary>Subtracts one from the map count (kernel: page_remove_rmap).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void RemoveMap(ulong pfn)
    {
        int m = Interlocked.Decrement(ref Frame(pfn).MapCount);
        Debug.Assert(m >= 0, $"map count of 0x{pfn:x} went negative");
    }

    /// <summary>Sets flag bits atomically.</summary>
    public void SetFlags(ulong pfn, FrameFlags flags) => Interlocked.Or(ref Frame(pfn).Flags, (uint)flags);

    /// <summary>Clears flag bits atomically.</summary>
    public void ClearFlags(ulong pfn, FrameFlags flags) => Interlocked.And(ref Frame(pfn).Flags, ~(uint)flags);

    /// <summary>Tries to take the frame lock (kernel: trylock_page).</summary>
    public bool TryLockFrame(ulong pfn)
    {
        ref uint flags = ref Frame(pfn).Flags;
        return (Interlocked.Or(ref flags, (uint)FrameFlags.Locked) & (uint)FrameFlags.Locked) == 0;
    }

    /// <summary>Takes the frame lock, waiting as long as needed (kernel: lock_page).</summary>
    public void LockFrame(ulong pfn)
    {
        var spin = new SpinWait();
        while (!TryLockFrame(pfn))
        {
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    /// <summary>Releases the frame lock (kernel: unlock_page).</summary>
    public void UnlockFrame(ulong pfn)
    {
        uint old = Interlocked.And(ref Frame(pfn).Flags, ~(uint)FrameFlags.Locked);
        Debug.Assert((old & (uint)FrameFlags.Locked) != 0, $"unlocking frame 0x{pfn:x} that is not locked");
    }

    /// <summary>
    /// Splits a compound RAM page into base pages (kernel: split_folio). The caller owns all references;
    /// each base page ends with the reference count given by <paramref name="refsPerPage"/>.
    /// </summary>
    public void SplitCompound(ulong head, Func<ulong, int> refsPerPage)
    {
        ref FrameInfo h = ref Frame(head);
        int order = h.Order;
        ulong n = 1UL << order;
        object? mapping = h.Mapping;
        ulong index = h.Index;
        uint keep = h.Flags & (uint)(FrameFlags.Anon | FrameFlags.Dirty | FrameFlags.UpToDate | FrameFlags.SwapBacked | FrameFlags.AnonExclusive);
        for (ulong k = 0; k < n; k++)
        {
            ref FrameInfo t = ref Frame(head + k);
            t.Mapping = mapping;
            t.Index = index + k;
            t.Flags = keep | (t.Flags & (uint)FrameFlags.Locked & (k == 0 ? uint.MaxValue : 0u));
            t.RefCount = refsPerPage(head + k);
        }
    }

    /// <summary>
    /// Registers a range of device frames (kernel: memremap_pages). <paramref name="baseAddress"/> is the host
    /// memory backing them (required for DAX and coherent memory; device-private memory may pass an arena
    /// the CPU never maps).
    /// </summary>
    /// <exception cref="MmException">EINVAL when the type, size or callbacks are invalid (as memremap_pages).</exception>
    public DevicePageMap RegisterDevicePageMap(MemoryType type, ulong pageCount, byte* baseAddress, object? owner, IDevicePageMapOps? ops)
    {
        if (pageCount == 0 || pageCount > (1UL << 32))
        {
            MmException.Throw(Errno.EINVAL, $"device page map of {pageCount} pages: must be 1..2^32 pages");
        }
        switch (type)
        {
            case MemoryType.DevicePrivate when ops is null || owner is null:
                MmException.Throw(Errno.EINVAL, "a device-private page map needs an owner and ops with MigrateToRam and PageFree");
                break;
            case MemoryType.DeviceCoherent when ops is null || owner is null || baseAddress == null:
                MmException.Throw(Errno.EINVAL, "a device-coherent page map needs an owner, ops with PageFree and CPU-addressable memory");
                break;
            case MemoryType.FsDax or MemoryType.Generic when baseAddress == null:
                MmException.Throw(Errno.EINVAL, "a DAX page map needs CPU-addressable memory");
                break;
            case MemoryType.None:
            case > MemoryType.Generic:
                MmException.Throw(Errno.EINVAL, $"unknown memory type {type}");
                break;
        }
        lock (_mapsLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var map = new DevicePageMap(this, type, _nextDevicePfn, pageCount, baseAddress, owner, ops);
            _nextDevicePfn = Page.AlignUp(_nextDevicePfn + pageCount, 1UL << Page.PudOrder);
            Volatile.Write(ref _maps, [.. _maps, map]);
            return map;
        }
    }

    /// <summary>Removes a device page map (kernel: memunmap_pages): kills its live reference and forgets its PFNs.</summary>
    public void UnregisterDevicePageMap(DevicePageMap map)
    {
        map.Kill();
        lock (_mapsLock)
        {
            Volatile.Write(ref _maps, _maps.Where(m => m != map).ToArray());
        }
    }

    /// <summary>Initialises a free device frame for use (kernel: zone_device_page_init): one reference, unlocked.</summary>
    public void InitDevicePage(ulong pfn, int order = 0)
    {
        ulong n = 1UL << order;
        for (ulong k = 0; k < n; k++)
        {
            ref FrameInfo f = ref Frame(pfn + k);
            f.Mapping = null;
            f.Index = 0;
            f.MapCount = 0;
            f.RefCount = k == 0 ? 1 : 0;
            f.Flags = (uint)FrameFlags.DevMap | (order == 0 ? 0u : ((uint)order << 24) | (uint)(k == 0 ? FrameFlags.Head : FrameFlags.Tail));
        }
    }

    private readonly object _hugeZeroLock = new();
    private ulong _hugeZeroPfn = Page.NoPfn;   // guarded by _hugeZeroLock, read with Volatile
    private int _hugeZeroUsers;                // guarded by _hugeZeroLock

    /// <summary>The shared huge zero page (a zeroed, reserved 2 MiB compound page), or <see cref="Page.NoPfn"/> while no one uses it (kernel: huge_zero_folio).</summary>
    public ulong HugeZeroPfn => Volatile.Read(ref _hugeZeroPfn);

    /// <summary>
    /// Takes a user reference on the huge zero page, allocating it on first use (kernel: mm_get_huge_zero_folio, one
    /// reference per mm). Returns its PFN, or <see cref="Page.NoPfn"/> when no 2 MiB block is free.
    /// </summary>
    public ulong GetHugeZeroPage()
    {
        lock (_hugeZeroLock)
        {
            if (_hugeZeroPfn == Page.NoPfn)
            {
                ulong pfn = Allocate(Page.PmdOrder, zero: true);
                if (pfn == Page.NoPfn)
                {
                    return Page.NoPfn;
                }
                SetFlags(pfn, FrameFlags.Reserved);
                Volatile.Write(ref _hugeZeroPfn, pfn);
            }
            _hugeZeroUsers++;
            return _hugeZeroPfn;
        }
    }

    /// <summary>Drops a reference taken by <see cref="GetHugeZeroPage"/>; the last one frees the page (kernel: the huge zero folio shrinker).</summary>
    /// <exception cref="InvalidOperationException">When no reference is held.</exception>
    public void PutHugeZeroPage()
    {
        ulong free = Page.NoPfn;
        lock (_hugeZeroLock)
        {
            if (_hugeZeroUsers <= 0)
            {
                throw new InvalidOperationException("huge zero page reference count would go negative");
            }
            if (--_hugeZeroUsers == 0)
            {
                free = _hugeZeroPfn;
                Volatile.Write(ref _hugeZeroPfn, Page.NoPfn);
            }
        }
        if (free != Page.NoPfn)
        {
            ClearFlags(free, FrameFlags.Reserved);
            Put(free);
        }
    }

    /// <summary>Frees the arena. Outstanding PFNs become invalid.</summary>
    public void Dispose()
    {
        lock (_mapsLock)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
        }
        NativeMemory.AlignedFree(_ram);
    }
}

/// <summary>Observes RAM frame allocations and frees (kernel: page_owner); see <see cref="PhysicalMemory.Tracker"/>.</summary>
internal interface IFrameTracker
{
    /// <summary>A block of 2^<paramref name="order"/> frames at <paramref name="pfn"/> was allocated.</summary>
    void Allocated(ulong pfn, int order);

    /// <summary>The block at <paramref name="pfn"/> goes back to the buddy allocator.</summary>
    void Freed(ulong pfn, int order);
}
