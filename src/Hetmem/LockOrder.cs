namespace Hetmem;

/// <summary>
/// The one lock-order tree of Hetmem. A lock may be taken while holding only locks above it on its
/// path from the root; nothing may be taken in the other direction. docs/locking.md mirrors this tree verbatim
/// (a test compares them).
/// </summary>
/// <remarks>
/// <code>
/// GpuDevice._serviceLock                       (driver-owned, outermost: held by the GPU servicing thread around a
///                                               fault batch and by context teardown; the analogue of Xe's vm lock,
///                                               taken before the mmap lock)
///   AddressSpace.MmapLock                      (reader/writer; Mmap/Munmap/Mprotect/Mremap/Fork/Exit write; faults,
///                                               HmmRange.Fault and MigrateVma read. Several mmap locks at once only
///                                               in MigrateVma.MigrateDeviceRange: read locks, in AddressSpace.Id
///                                               order, all before any frame lock; a thread that already holds one
///                                               only try-locks the others)
///     IMappable.InvalidateLock                 (reader/writer; faults read around "get page, install entry";
///                                               truncate and hole punch write)
///       Inode lock                             (page-cache index, DAX extents, size)
///       MappingSet._lock                       (reverse map of one file; held while zapping its mappings)
///         FrameTable frame lock (PG_locked)    (bit lock in FrameInfo.Flags: migration, reclaim of one frame)
///           MmuNotifierSubscriptions._lock     (sequence, interval list; never held across callbacks)
///           device update lock (driver-owned)  (taken inside invalidate callbacks and around ReadRetry + device
///                                               page-table programming; never held while calling into the mm:
///                                               DmirrorFile, GpuSvm.NotifierLock, OdpUmem._lock)
///             AddressSpace page-table locks    (split, striped by table frame; entry updates)
///               BuddyAllocator / DevicePageMap (free lists; leaves; the GPU's VRAM allocator lock)
///             DmaDevice._lock / IovaAllocator._lock
///                                              (leaves: IOMMU translation table and IOVA free lists; taken under a
///                                               driver's update lock to dma_map / dma_unmap a page)
/// RDMA verbs locks (never held while calling into the mm, so outside the tree above):
///   QueuePair._sendLock                        (frame order and PSNs of one QP)
///     QueuePair._sqLock / _rqLock / _respLock  (send queue and state, receive queue, responder queue)
///       CompletionQueue._lock                  (leaf: the CQ ring; pollers wait on its monitor)
///   RdmaDevice._lock / ProtectionDomain._lock / OdpFaultQueue._lock
///                                              (leaves: key table, member sets, the ODP fault-queue records)
/// </code>
/// Callbacks (notifier invalidate, PageFree, MigrateToRam), reference drops and frees run after the
/// page-table lock that found them is released. A software-TLB shootdown (<c>AddressSpace.FlushTlb</c>) waits
/// for Cpus to leave their current access, so it is never issued with a page-table lock held, and always
/// before a frame unmapped by the change is freed. Page-table pages are freed only under the mmap write lock
/// after a shootdown (or at exit), so lock-free walkers never read a freed table. The GPU's replay, fault-buffer,
/// access-counter and policy locks, and <c>TraceLog</c>'s session lock, are leaves taken with nothing below them.
/// </remarks>
public enum LockClass
{
    /// <summary>A GPU's fault-service lock (kernel: Xe's vm lock / UVM's va_space lock), held around a fault batch; taken before the mmap lock.</summary>
    GpuService = -1,
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
    /// <summary>A DMA device's IOMMU translation table or its IOVA allocator (kernel: the IOVA domain lock); a leaf.</summary>
    DmaMapping = 9,
    /// <summary>An RDMA queue pair's send lock (kernel: the QP's sq lock in rxe); never held while calling into the mm.</summary>
    RdmaSend = 10,
    /// <summary>An RDMA queue pair's send-queue, receive-queue or responder-queue lock.</summary>
    RdmaQueue = 11,
    /// <summary>An RDMA completion queue's ring lock (kernel: cq->cq_lock); a leaf.</summary>
    CompletionQueue = 12,
    /// <summary>An RDMA device's key table, a protection domain's member sets or the ODP fault queue; leaves.</summary>
    RdmaTable = 13,
}
