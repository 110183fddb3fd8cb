namespace Hetmem;

/// <summary>
/// The one lock-order tree of Hetmem. A lock may be taken while holding only locks above it on its
/// path from the root; nothing may be taken in the other direction.
/// </summary>
/// <remarks>
/// <code>
/// AddressSpace.MmapLock                      (reader/writer; Mmap/Munmap/Mprotect/Fork/Exit write, faults read)
///   MmuNotifierSubscriptions._lock           (interval tree, sequence, deferred list; never held across callbacks)
///   device update lock (driver-owned)        (taken inside invalidate callbacks and around ReadRetry + SPTE programming;
///                                             never held while calling into the mm)
///   Inode._lock                              (page-cache index, DAX extent map, file size)
///     MappingSet._lock                       (reverse map of one file)
///   AddressSpace page-table locks (PtLock)   (striped by table frame; PTE table, PMD/PUD leaf updates)
///     FrameTable frame lock (PG_locked)      (bit lock in FrameInfo.Flags: migration, truncation of one frame)
///       BuddyAllocator._lock                 (free lists; leaf)
///       DevicePageMap._lock                  (device allocator; leaf)
/// </code>
/// Callbacks (notifier invalidate, PageFree, MigrateToRam), reference drops and frees run after the
/// page-table lock that found them is released. A Cpu's software TLB is shot down (epoch wait) with no
/// page-table lock held, and before any frame unmapped by the change is freed.
/// </remarks>
public enum LockClass
{
    /// <summary>The address space's mmap lock (kernel: mmap_lock).</summary>
    MmapLock = 0,
    /// <summary>The notifier subscription lock of one address space (kernel: mmu_notifier_subscriptions.lock).</summary>
    NotifierSubscriptions = 1,
    /// <summary>A device driver's update lock (kernel: the driver's "user lock" of the HMM documentation).</summary>
    DeviceUpdate = 2,
    /// <summary>An inode's lock (kernel: i_rwsem + mapping->invalidate_lock).</summary>
    Inode = 3,
    /// <summary>A file's reverse-map lock (kernel: i_mmap_rwsem).</summary>
    MappingSet = 4,
    /// <summary>A split page-table lock (kernel: ptl).</summary>
    PageTable = 5,
    /// <summary>A frame's lock bit (kernel: PG_locked).</summary>
    Frame = 6,
    /// <summary>The buddy allocator's free lists (kernel: zone->lock).</summary>
    Buddy = 7,
    /// <summary>A device page map's allocator.</summary>
    DevicePageMap = 8,
}
