namespace Hetmem.Devices.Gpu;

/// <summary>When the fault servicer replays stalled accesses (kernel: UVM <c>uvm_perf_fault_replay_policy_t</c>).</summary>
public enum ReplayPolicy
{
    /// <summary>Replay after each 2 MiB block is serviced (UVM_PERF_FAULT_REPLAY_POLICY_BLOCK).</summary>
    Block,
    /// <summary>Replay after each batch (UVM_PERF_FAULT_REPLAY_POLICY_BATCH).</summary>
    Batch,
    /// <summary>Flush the fault buffer, then replay, after each batch (UVM's default, _BATCH_FLUSH).</summary>
    BatchFlush,
    /// <summary>Replay once the buffer is empty (UVM_PERF_FAULT_REPLAY_POLICY_ONCE).</summary>
    Once,
}

/// <summary>Where a faulting page of migratable (private anonymous) memory ends up.</summary>
public enum PlacementPolicy
{
    /// <summary>Migrate to VRAM on the first GPU touch (UVM's default for HMM memory).</summary>
    MigrateOnFirstTouch,
    /// <summary>Never migrate: map system memory remotely (UVM: SetAccessedBy / zero-copy).</summary>
    RemoteMap,
    /// <summary>Map remotely first; migrate a region once the GPU's access counters say it is hot (UVM access-counter migration).</summary>
    AccessCounters,
}

/// <summary>
/// Construction options of a <see cref="GpuDevice"/>, with NVIDIA UVM's defaults where UVM has one (kernel: UVM
/// module parameters <c>uvm_perf_fault_batch_count</c>, <c>uvm_perf_fault_replay_policy</c>,
/// <c>uvm_perf_fault_max_batches_per_service</c>, <c>uvm_perf_access_counter_threshold</c>, the prefetch and
/// thrashing tunables).
/// </summary>
public sealed record GpuDeviceOptions
{
    /// <summary>A name for traces and tables.</summary>
    public string Name { get; init; } = "gpu0";
    /// <summary>Execution units (SMs), each a worker thread running one warp at a time with its own TLB.</summary>
    public int ExecutionUnits { get; init; } = 8;
    /// <summary>Threads per warp.</summary>
    public int WarpSize { get; init; } = 32;
    /// <summary>Entries of each execution unit's TLB (a power of two).</summary>
    public int TlbEntries { get; init; } = 512;
    /// <summary>VRAM size in bytes, a multiple of 2 MiB; 0 for a GPU without memory of its own (everything is remote-mapped).</summary>
    public ulong VramBytes { get; init; } = 64UL << 20;
    /// <summary>Slots of the replayable fault buffer.</summary>
    public int FaultBufferEntries { get; init; } = 1024;
    /// <summary>Faults fetched per batch (uvm_perf_fault_batch_count, default 256).</summary>
    public int BatchSize { get; init; } = 256;
    /// <summary>Batches serviced per wake-up of the servicer (uvm_perf_fault_max_batches_per_service, default 20).</summary>
    public int MaxBatchesPerService { get; init; } = 20;
    /// <summary>Replay policy (default BatchFlush).</summary>
    public ReplayPolicy ReplayPolicy { get; init; } = ReplayPolicy.BatchFlush;
    /// <summary>Placement of migratable memory (default: migrate on first touch).</summary>
    public PlacementPolicy Placement { get; init; } = PlacementPolicy.MigrateOnFirstTouch;
    /// <summary>Density-tree prefetcher tunables.</summary>
    public PrefetchOptions Prefetch { get; init; } = PrefetchOptions.Default;
    /// <summary>Thrashing detection tunables.</summary>
    public ThrashingOptions Thrashing { get; init; } = ThrashingOptions.Default;
    /// <summary>Remote accesses to one page, seen by one execution unit, that raise an access-counter notification (uvm_perf_access_counter_threshold, default 256).</summary>
    public int AccessCounterThreshold { get; init; } = 256;
    /// <summary>Granularity migrated on an access-counter notification (UVM's default 2 MiB region; here 64 KiB by default).</summary>
    public ulong AccessCounterGranularity { get; init; } = 64 * 1024;
    /// <summary>Size of an SVM notifier window (Xe: 512 MiB).</summary>
    public ulong NotifierSize { get; init; } = GpuSvm.DefaultNotifierSize;
    /// <summary>How long get-pages retries before EBUSY (HMM_RANGE_DEFAULT_TIMEOUT).</summary>
    public int GetPagesTimeoutMs { get; init; } = Hmm.HmmMirrorHelper.DefaultTimeoutMs;
    /// <summary>
    /// A VRAM chunk filled less than this long ago is not evicted (nanoseconds; default 2 ms). When every chunk is that
    /// young the working set does not fit: new faults are served from system memory instead of evicting pages the
    /// stalled warps are about to use (without it two blocks can evict each other on every fault).
    /// </summary>
    public long MinChunkResidencyNs { get; init; } = 2_000_000;
    /// <summary>
    /// A block faulted for migration again within this long after its VRAM chunk was evicted is thrashing the VRAM:
    /// it is pinned to system memory for <see cref="ThrashingOptions.PinNs"/> (nanoseconds; default 20 ms).
    /// </summary>
    public long EvictionThrashingNs { get; init; } = 20_000_000;
    /// <summary>Pages a CPU fault on VRAM migrates back, aligned around the fault (1 = only the faulting page).</summary>
    public int CpuFaultMigratePages { get; init; } = 16;
    /// <summary>
    /// Debug switch for stale-translation checks: every access compares the generation of the frame it touches with
    /// the generation recorded when the translation was filled (a freed and reused frame fails), and freed VRAM pages
    /// are poisoned.
    /// </summary>
    public bool CheckStaleTranslations { get; init; }

    /// <summary>Throws when an option is out of range.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range.</exception>
    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(ExecutionUnits);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(ExecutionUnits, 1024);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(WarpSize);
        if (TlbEntries <= 0 || (TlbEntries & (TlbEntries - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(TlbEntries), TlbEntries, "must be a power of two");
        }
        if ((VramBytes & (Physical.Page.PmdSize - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(VramBytes), VramBytes, "must be a multiple of 2 MiB");
        }
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(FaultBufferEntries);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(BatchSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxBatchesPerService);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(AccessCounterThreshold);
        ArgumentOutOfRangeException.ThrowIfNegative(MinChunkResidencyNs);
        ArgumentOutOfRangeException.ThrowIfNegative(EvictionThrashingNs);
        if (AccessCounterGranularity < Physical.Page.Size || AccessCounterGranularity > Physical.Page.PmdSize
            || (AccessCounterGranularity & (AccessCounterGranularity - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(AccessCounterGranularity), AccessCounterGranularity, "must be a power of two between 4 KiB and 2 MiB");
        }
        if (CpuFaultMigratePages <= 0 || CpuFaultMigratePages > 512 || (CpuFaultMigratePages & (CpuFaultMigratePages - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(CpuFaultMigratePages), CpuFaultMigratePages, "must be a power of two between 1 and 512");
        }
        Prefetch.Validate();
        Thrashing.Validate();
    }
}
