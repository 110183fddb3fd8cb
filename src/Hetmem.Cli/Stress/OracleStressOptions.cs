namespace Hetmem.Cli.Stress;

/// <summary>How an <see cref="OracleStress"/> run is shaped.</summary>
internal sealed record OracleStressOptions
{
    /// <summary>The run's seed; worker <c>t</c> draws its operations from <see cref="StressOpGenerator.WorkerSeed"/>.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>Worker threads (each mixes CPU and device operations).</summary>
    public int Threads { get; init; } = 2;

    /// <summary>How long to run (the run also stops at the first violation or after <see cref="MaxOperations"/>).</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Operations per worker before it stops (0: until <see cref="Duration"/>).</summary>
    public long MaxOperations { get; init; }

    /// <summary>The arena: slots, pages a slot, and which slots are shared page-cache or DAX file mappings.</summary>
    public StressLayout Layout { get; init; } = new(24, 32, 6, 6);

    /// <summary>Issue device operations (dmirror and the probe device).</summary>
    public bool Devices { get; init; } = true;

    /// <summary>Also drive a GPU (kernels loading and storing through its MMU, VRAM migration on first touch).</summary>
    public bool Gpu { get; init; } = true;

    /// <summary>Also drive a remote RDMA client (RDMA_READ / RDMA_WRITE through one ODP MR over the arena).</summary>
    public bool Rdma { get; init; } = true;

    /// <summary>Make the probe device keep translations past invalidation (the oracle's self-test).</summary>
    public bool PlantStaleBug { get; init; }

    /// <summary>Probability of injected allocation failures (0: off); failures are counted, not violations.</summary>
    public double FailRate { get; init; }

    /// <summary>Operation kinds drawn but not executed (for narrowing a finding down; the sequence is unchanged).</summary>
    public IReadOnlySet<StressOpKind> SkipKinds { get; init; } = new HashSet<StressOpKind>();

    /// <summary>Record worker 0's operations in <see cref="OracleStressResult.Worker0Ops"/> (for replay tests).</summary>
    public bool RecordWorker0 { get; init; }

    /// <summary>The command line that replays this run, printed with any violation.</summary>
    public string ReplayCommand { get; init; } = "";

    /// <summary>Called about every 50 ms with the fraction of <see cref="Duration"/> elapsed.</summary>
    public Action<double>? Progress { get; init; }

    /// <summary>Stops the run early (Ctrl+C).</summary>
    public CancellationToken Cancellation { get; init; }
}

/// <summary>What an <see cref="OracleStress"/> run did and found.</summary>
internal sealed class OracleStressResult
{
    /// <summary>The seed.</summary>
    public int Seed { get; init; }

    /// <summary>Operations executed, all workers.</summary>
    public long Operations { get; set; }

    /// <summary>Of those, device operations (dmirror ioctls, probe-device accesses and GPU kernels).</summary>
    public long DeviceOperations { get; set; }

    /// <summary>Interval-notifier invalidate callbacks run during the run.</summary>
    public long Invalidations { get; set; }

    /// <summary>Observations the oracle rejected plus device accesses to freed frames.</summary>
    public long Violations { get; set; }

    /// <summary>Observations the oracle checked.</summary>
    public long Checks { get; set; }

    /// <summary>RAM frames in use after teardown beyond those in use before the run.</summary>
    public long LeakedFrames { get; set; }

    /// <summary>Interval and classic notifiers left on the address space after the devices were closed.</summary>
    public int NotifiersLeft { get; set; }

    /// <summary>Wall time of the run phase.</summary>
    public double Seconds { get; set; }

    /// <summary>CPU accesses that took SIGSEGV/SIGBUS (expected: pages unmapped, read-only or truncated).</summary>
    public long Signals { get; set; }

    /// <summary>Operations that returned an expected errno (EFAULT over a hole, EPERM on read-only, EBUSY, ENOMEM…).</summary>
    public long ExpectedErrors { get; set; }

    /// <summary>Failures injected by <see cref="Hetmem.Diagnostics.FaultInjection"/> (with a fail rate).</summary>
    public long InjectedFailures { get; set; }

    /// <summary>Times the RDMA queue pair was reconnected after a failed work request.</summary>
    public long RdmaReconnects { get; set; }

    /// <summary>Operations executed per kind.</summary>
    public long[] ByKind { get; } = new long[Enum.GetValues<StressOpKind>().Length];

    /// <summary>Unexpected exceptions or errnos (first few): errors of the run, not violations.</summary>
    public List<string> Errors { get; } = [];

    /// <summary>Human-readable violation reports (history around each and the replay command); empty when clean.</summary>
    public string Report { get; set; } = "";

    /// <summary>Worker 0's operations, when <see cref="OracleStressOptions.RecordWorker0"/> was set.</summary>
    public List<StressOp>? Worker0Ops { get; set; }
}
