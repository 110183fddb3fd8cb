namespace Hetmem;

/// <summary>
/// The one lock-order tree of Hetmem. A lock may be taken while holding only locks above it on its
/// path from the root; nothing may be taken in the other direction.
/// </summary>
/// <remarks>
/// <code>
/// AddressSpace.MmapLock                        (reader/writer; Mmap/Munmap/Mprotect/Mremap/Fork/Exit write; faults,
///                                               HmmRange.Fault and MigrateVma read)
///   IMappable.InvalidateLock                   (reader/writer; faults read around "get page, install entry";
///                                               truncate and hole punch write)
///     Inode lock                               (page-cache index, DAX extents, size)
///     MappingSet._lock                         (reverse map of one file; held while zapping its mappings)
///       FrameTable frame lock (PG_locked)      (bit lock in FrameInfo.Flags: migration, reclaim of one frame)
///         MmuNotifierSubscriptions._lock       (sequence, interval list; never held across callbacks)
///         device update lock (driver-owned)    (taken inside invalidate callbacks and around ReadRetry + device
///                                               page-table programming; never held while calling into the mm)
///           AddressSpace page-table locks      (split, striped by table frame; entry updates)
///             BuddyAllocator / DevicePageMap   (free lists; leaves)
/// </code>
/// Callbacks (notifier invalidate, PageFree, MigrateToRam), reference drops and frees run after the
/// page-table lock that found them is released. A software-TLB shootdown (<c>AddressSpace.FlushTlb</c>) waits
/// for Cpus to leave their current access, so it is never issued with a page-table lock held, and always
/// before a frame unmapped by the change is freed. Page-table pages are freed only under the mmap write lock
/// after a shootdown (or at exit), so lock-free walkers never read a freed table.
/// </remarks>
public enum LockClass
{
    /// <summary>The address space's mmap lock (kernel: mmap_lock).</summary>
    MmapLock = 0,
    /// <summary>An inode's invalidate lock and inode lock (kernel: mapping->invalidate_lock, i_rwsem).</summary>
    Inode = 1,
    /// <summary>A file's reverse-map lock (kernel: i_mmap_rwsem).</summary>
    MappingSet = 2,
    /// <summary>A frame's lock bit (kernel: PG_locked); taken before notifier brackets.</summary>
    Frame = 3,
    /// <summary>The notifier subscription lock of one address space (kernel: mmu_notifier_subscriptions.lock).</summary>
    NotifierSubscriptions = 4,
    /// <summary>A device driver's update lock (kernel: the driver's "user lock" of the HMM documentation).</summary>
    DeviceUpdate = 5,
    /// <summary>A split page-table lock (kernel: ptl).</summary>
    PageTable = 6,
    /// <summary>The buddy allocator's free lists (kernel: zone->lock).</summary>
    Buddy = 7,
    /// <summary>A device page map's allocator.</summary>
    DevicePageMap = 8,
}
