namespace Hetmem.Devices.Gpu.Workloads;

/// <summary>Parameters of the GPU workloads (<c>hetmem run gpu-stream | gpu-gups | gpu-bfs-dax</c>).</summary>
public sealed record GpuWorkloadOptions
{
    /// <summary>Bytes the workload touches (stream: the three arrays; gups: table plus update stream). Default 96 MiB.</summary>
    public ulong WorkingSetBytes { get; init; } = 96UL << 20;
    /// <summary>VRAM size; null for a quarter of the working set (rounded up to 2 MiB), which forces evictions.</summary>
    public ulong? VramBytes { get; init; }
    /// <summary>Placement policy of the GPU.</summary>
    public PlacementPolicy Placement { get; init; } = PlacementPolicy.MigrateOnFirstTouch;
    /// <summary>Density-tree prefetching on or off.</summary>
    public bool Prefetch { get; init; } = true;
    /// <summary>Replay policy of the GPU.</summary>
    public ReplayPolicy Replay { get; init; } = ReplayPolicy.BatchFlush;
    /// <summary>Execution units (worker threads) of the GPU.</summary>
    public int ExecutionUnits { get; init; } = 4;
    /// <summary>Seed of the generated data.</summary>
    public int Seed { get; init; } = 1;
    /// <summary>gpu-gups: updates applied to the table (default: one per table entry).</summary>
    public long? Updates { get; init; }
    /// <summary>gpu-bfs-dax: vertices of the generated graph (default 1 Mi).</summary>
    public int Vertices { get; init; } = 1 << 20;
    /// <summary>gpu-bfs-dax: average out-degree of the generated graph.</summary>
    public int AverageDegree { get; init; } = 8;
    /// <summary>Stale-translation checks (a debug switch; slows every access).</summary>
    public bool CheckStaleTranslations { get; init; }

    /// <summary>The VRAM size actually used: <see cref="VramBytes"/> or a quarter of the working set, a multiple of 2 MiB.</summary>
    public ulong EffectiveVramBytes(ulong workingSet)
    {
        ulong v = VramBytes ?? workingSet / 4;
        return v == 0 ? 0 : Math.Max(Physical.Page.PmdSize, Physical.Page.AlignUp(v, Physical.Page.PmdSize));
    }

    /// <summary>Device options for these workload options.</summary>
    public GpuDeviceOptions DeviceOptions(ulong workingSet, string name) => new()
    {
        Name = name,
        VramBytes = EffectiveVramBytes(workingSet),
        Placement = Placement,
        ReplayPolicy = Replay,
        ExecutionUnits = ExecutionUnits,
        Prefetch = PrefetchOptions.Default with { Enabled = Prefetch },
        CheckStaleTranslations = CheckStaleTranslations,
    };
}

/// <summary>
/// The outcome of a GPU workload: whether the GPU result matched the CPU reference, the kernel time, and the
/// device's counters (UVM names) plus the summary keys of <c>--json</c>.
/// </summary>
/// <param name="Name">Workload name.</param>
/// <param name="Verified">True when the GPU's result equals the CPU reference.</param>
/// <param name="Detail">What was compared, or the first difference.</param>
/// <param name="Seconds">Wall time of the GPU part (launches and fault servicing), excluding data generation and checking.</param>
/// <param name="Counters">Every device counter by name.</param>
/// <param name="FramesBalanced">Every RAM frame and VRAM page came back after teardown.</param>
public sealed record GpuWorkloadReport(string Name, bool Verified, string Detail, double Seconds, IReadOnlyList<KeyValuePair<string, long>> Counters, bool FramesBalanced)
{
    /// <summary>A counter by its driver-style name (0 when absent).</summary>
    public long this[string counter] => Counters.FirstOrDefault(kv => kv.Key == counter).Value;

    /// <summary>
    /// The summary of <c>--json</c>: <c>verified</c>, <c>faults</c>, <c>batches</c>, <c>migrated_to_device_bytes</c>,
    /// <c>migrated_to_system_bytes</c>, <c>evictions</c>, <c>invalidations</c>, <c>seconds</c>.
    /// </summary>
    public IReadOnlyList<KeyValuePair<string, object>> JsonSummary() =>
    [
        new("verified", Verified),
        new("faults", this["faults"]),
        new("batches", this["batches"]),
        new("migrated_to_device_bytes", this["migrated_pages_in"] * Physical.Page.Size),
        new("migrated_to_system_bytes", this["migrated_pages_out"] * Physical.Page.Size),
        new("evictions", this["evictions"]),
        new("invalidations", this["invalidations"]),
        new("seconds", Seconds),
    ];
}
