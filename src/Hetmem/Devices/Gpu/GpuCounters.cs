using Hetmem.Mm;

namespace Hetmem.Devices.Gpu;

/// <summary>
/// Counters of one GPU, named as NVIDIA UVM's procfs <c>fault_stats</c> / <c>thrashing_stats</c> and tools counters and
/// Xe's SVM stats name them (see <see cref="GpuCounters.Name"/>).
/// </summary>
public enum GpuCounter
{
    /// <summary>Fault-buffer entries fetched, duplicates included (UVM: num_replayable_faults).</summary>
    Faults,
    /// <summary>Entries merged into another entry of the same page (UVM: num_duplicate_faults).</summary>
    Duplicates,
    /// <summary>Fetched faults of access type prefetch (UVM: faults_by_access_type.prefetch).</summary>
    FaultsPrefetch,
    /// <summary>Fetched read faults.</summary>
    FaultsRead,
    /// <summary>Fetched write faults.</summary>
    FaultsWrite,
    /// <summary>Fetched atomic faults.</summary>
    FaultsAtomic,
    /// <summary>Replays issued (UVM: num_replays).</summary>
    Replays,
    /// <summary>Fault batches serviced (UVM: batches in the bottom half).</summary>
    Batches,
    /// <summary>Fault buffer flushes before a replay (UVM: BATCH_FLUSH policy).</summary>
    BufferFlushes,
    /// <summary>Times a fault could not be written because the buffer was full (UVM tools: FaultBufferOverflow).</summary>
    FaultBufferOverflows,
    /// <summary>Faults that could not be serviced and were cancelled (UVM tools: FatalFault).</summary>
    FatalFaults,
    /// <summary>Pages migrated to VRAM (UVM: migrated_pages_in).</summary>
    PagesMigratedIn,
    /// <summary>Pages migrated from VRAM to system memory (UVM: migrated_pages_out).</summary>
    PagesMigratedOut,
    /// <summary>Bytes copied host → device (UVM tools: BytesXferHtD).</summary>
    BytesHtoD,
    /// <summary>Bytes copied device → host (UVM tools: BytesXferDtH).</summary>
    BytesDtoH,
    /// <summary>Bytes migrated to the device because the prefetcher asked for them (UVM tools: PrefetchBytesXferHtD).</summary>
    PrefetchBytes,
    /// <summary>2 MiB VRAM chunks evicted to system memory (UVM tools: Eviction).</summary>
    Evictions,
    /// <summary>CPU faults on VRAM-resident pages served by migrating them back (UVM tools: CpuPageFaultCount).</summary>
    CpuFaults,
    /// <summary>Pages that became thrashing (UVM thrashing_stats: num_thrashing).</summary>
    Thrashing,
    /// <summary>Throttles started (UVM thrashing_stats: num_throttle).</summary>
    Throttles,
    /// <summary>Faults ignored because their page was throttled.</summary>
    ThrottledFaults,
    /// <summary>Pages pinned to system memory and mapped remotely (UVM thrashing_stats: num_pin_remote).</summary>
    PinsRemote,
    /// <summary>Pages mapped to system memory for the GPU (UVM tools: MapRemote).</summary>
    RemoteMappedPages,
    /// <summary>4 KiB GPU entries written (Xe stats per size bucket).</summary>
    Map4K,
    /// <summary>64 KiB GPU entries written.</summary>
    Map64K,
    /// <summary>2 MiB GPU entries written.</summary>
    Map2M,
    /// <summary>Interval-notifier invalidations that reached the GPU, any event.</summary>
    Invalidations,
    /// <summary>Invalidations for munmap / mremap / exit (MMU_NOTIFY_UNMAP).</summary>
    InvalidationsUnmap,
    /// <summary>Invalidations for MMU_NOTIFY_CLEAR.</summary>
    InvalidationsClear,
    /// <summary>Invalidations for MMU_NOTIFY_PROTECTION_VMA.</summary>
    InvalidationsProtectionVma,
    /// <summary>Invalidations for MMU_NOTIFY_PROTECTION_PAGE.</summary>
    InvalidationsProtectionPage,
    /// <summary>Invalidations for MMU_NOTIFY_SOFT_DIRTY.</summary>
    InvalidationsSoftDirty,
    /// <summary>Invalidations for MMU_NOTIFY_RELEASE.</summary>
    InvalidationsRelease,
    /// <summary>Invalidations for MMU_NOTIFY_MIGRATE.</summary>
    InvalidationsMigrate,
    /// <summary>Invalidations for MMU_NOTIFY_EXCLUSIVE.</summary>
    InvalidationsExclusive,
    /// <summary>GPU TLB invalidations (Xe: svm_tlb_inval_count).</summary>
    TlbInvalidations,
    /// <summary>SVM ranges created on fault.</summary>
    RangesCreated,
    /// <summary>SVM ranges destroyed by the garbage collector.</summary>
    RangesCollected,
    /// <summary>SVM notifier windows created.</summary>
    NotifiersCreated,
    /// <summary>Calls of the get-pages helper (one hmm_range_fault retry loop each).</summary>
    GetPages,
    /// <summary>Pages for which the GPU asked hmm_range_fault for write access (proves read faults never break COW).</summary>
    WriteRequestedPages,
    /// <summary>Access-counter notifications raised by execution units (UVM: access counter buffer entries).</summary>
    AccessCounterNotifications,
    /// <summary>Accesses through a translation whose frame had been freed since it was filled (stale-translation check).</summary>
    StaleTranslations,
    /// <summary>Nanoseconds spent fetching fault entries.</summary>
    FetchNs,
    /// <summary>Nanoseconds spent merging and sorting batches.</summary>
    PreprocessNs,
    /// <summary>Nanoseconds spent servicing faults (get pages, migrate, bind).</summary>
    ServiceNs,
    /// <summary>Nanoseconds spent migrating (subset of servicing).</summary>
    MigrateNs,
    /// <summary>Nanoseconds spent replaying (and flushing).</summary>
    ReplayNs,
    /// <summary>Nanoseconds spent in the SVM garbage collector.</summary>
    GcNs,
    /// <summary>Nanoseconds spent evicting VRAM chunks (subset of migration when it runs for a fault).</summary>
    EvictNs,
    /// <summary>Number of counters.</summary>
    Count,
}

/// <summary>The counters of one <see cref="GpuDevice"/> (kernel: UVM procfs statistics, Xe GT stats).</summary>
/// <remarks>Locking: each cell is atomic (Interlocked); <see cref="Snapshot"/> is not a consistent cut.</remarks>
public sealed class GpuCounters
{
    private readonly long[] _cells = new long[(int)GpuCounter.Count];

    /// <summary>Adds one.</summary>
    public void Inc(GpuCounter c) => Interlocked.Increment(ref _cells[(int)c]);

    /// <summary>Adds <paramref name="n"/>.</summary>
    public void Add(GpuCounter c, long n) => Interlocked.Add(ref _cells[(int)c], n);

    /// <summary>Current value.</summary>
    public long this[GpuCounter c] => Interlocked.Read(ref _cells[(int)c]);

    /// <summary>Counts an invalidation of kind <paramref name="e"/>.</summary>
    public void CountInvalidation(MmuNotifierEvent e)
    {
        Inc(GpuCounter.Invalidations);
        Inc(e switch
        {
            MmuNotifierEvent.Unmap => GpuCounter.InvalidationsUnmap,
            MmuNotifierEvent.Clear => GpuCounter.InvalidationsClear,
            MmuNotifierEvent.ProtectionVma => GpuCounter.InvalidationsProtectionVma,
            MmuNotifierEvent.ProtectionPage => GpuCounter.InvalidationsProtectionPage,
            MmuNotifierEvent.SoftDirty => GpuCounter.InvalidationsSoftDirty,
            MmuNotifierEvent.Release => GpuCounter.InvalidationsRelease,
            MmuNotifierEvent.Migrate => GpuCounter.InvalidationsMigrate,
            _ => GpuCounter.InvalidationsExclusive,
        });
    }

    /// <summary>The driver-style name of a counter (UVM procfs/tools names where they exist).</summary>
    public static string Name(GpuCounter c) => c switch
    {
        GpuCounter.Faults => "faults",
        GpuCounter.Duplicates => "duplicates",
        GpuCounter.FaultsPrefetch => "faults_prefetch",
        GpuCounter.FaultsRead => "faults_read",
        GpuCounter.FaultsWrite => "faults_write",
        GpuCounter.FaultsAtomic => "faults_atomic",
        GpuCounter.Replays => "replays",
        GpuCounter.Batches => "batches",
        GpuCounter.BufferFlushes => "buffer_flushes",
        GpuCounter.FaultBufferOverflows => "fault_buffer_overflow",
        GpuCounter.FatalFaults => "fatal_faults",
        GpuCounter.PagesMigratedIn => "migrated_pages_in",
        GpuCounter.PagesMigratedOut => "migrated_pages_out",
        GpuCounter.BytesHtoD => "bytes_xfer_htd",
        GpuCounter.BytesDtoH => "bytes_xfer_dth",
        GpuCounter.PrefetchBytes => "prefetch_bytes",
        GpuCounter.Evictions => "evictions",
        GpuCounter.CpuFaults => "cpu_faults",
        GpuCounter.Thrashing => "num_thrashing",
        GpuCounter.Throttles => "num_throttle",
        GpuCounter.ThrottledFaults => "throttled_faults",
        GpuCounter.PinsRemote => "num_pin_remote",
        GpuCounter.RemoteMappedPages => "map_remote_pages",
        GpuCounter.Map4K => "map_4k",
        GpuCounter.Map64K => "map_64k",
        GpuCounter.Map2M => "map_2m",
        GpuCounter.Invalidations => "invalidations",
        GpuCounter.InvalidationsUnmap => "invalidations_unmap",
        GpuCounter.InvalidationsClear => "invalidations_clear",
        GpuCounter.InvalidationsProtectionVma => "invalidations_protection_vma",
        GpuCounter.InvalidationsProtectionPage => "invalidations_protection_page",
        GpuCounter.InvalidationsSoftDirty => "invalidations_soft_dirty",
        GpuCounter.InvalidationsRelease => "invalidations_release",
        GpuCounter.InvalidationsMigrate => "invalidations_migrate",
        GpuCounter.InvalidationsExclusive => "invalidations_exclusive",
        GpuCounter.TlbInvalidations => "tlb_invalidations",
        GpuCounter.RangesCreated => "svm_ranges_created",
        GpuCounter.RangesCollected => "svm_ranges_collected",
        GpuCounter.NotifiersCreated => "svm_notifiers_created",
        GpuCounter.GetPages => "get_pages",
        GpuCounter.WriteRequestedPages => "hmm_write_requested_pages",
        GpuCounter.AccessCounterNotifications => "access_counter_notifications",
        GpuCounter.StaleTranslations => "stale_translations",
        GpuCounter.FetchNs => "time_fetch_ns",
        GpuCounter.PreprocessNs => "time_preprocess_ns",
        GpuCounter.ServiceNs => "time_service_ns",
        GpuCounter.MigrateNs => "time_migrate_ns",
        GpuCounter.ReplayNs => "time_replay_ns",
        GpuCounter.GcNs => "time_gc_ns",
        GpuCounter.EvictNs => "time_evict_ns",
        _ => c.ToString(),
    };

    /// <summary>All counters by driver-style name, in enum order.</summary>
    public IReadOnlyList<KeyValuePair<string, long>> Snapshot()
    {
        var list = new List<KeyValuePair<string, long>>((int)GpuCounter.Count);
        for (int i = 0; i < (int)GpuCounter.Count; i++)
        {
            list.Add(new(Name((GpuCounter)i), this[(GpuCounter)i]));
        }
        return list;
    }
}
