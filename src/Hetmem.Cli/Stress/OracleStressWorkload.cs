using System.Globalization;
using Hetmem.Cli.Workloads;

namespace Hetmem.Cli.Stress;

/// <summary>
/// The <c>oracle</c> stress scenario, first in <c>hetmem stress</c>: runs <see cref="OracleStress"/> for
/// <c>--seconds</c> on <c>--threads</c> workers and turns its numbers into checks and counters (the counter names are
/// the top-level keys of <c>hetmem stress --json</c>).
/// </summary>
internal sealed class OracleStressWorkload : IWorkload
{
    /// <summary>The scenario name.</summary>
    public const string ScenarioName = "oracle";

    /// <inheritdoc/>
    public string Name => ScenarioName;

    /// <inheritdoc/>
    public string Description =>
        "seeded random mm, file and device operations on several threads against one address space, every observed value checked by a reference model";

    /// <summary>Probability of injected allocation failures (<c>--fail-rate</c>); set by the stress command.</summary>
    public double FailRate { get; set; }

    /// <summary>The command line that replays the run; set by the stress command.</summary>
    public string ReplayCommand { get; set; } = "";

    /// <summary>Plant the probe device's stale-translation bug (for the oracle's own tests).</summary>
    public bool PlantStaleBug { get; set; }

    /// <summary>The engine's result of the last run.</summary>
    public OracleStressResult? LastResult { get; private set; }

    /// <inheritdoc/>
    public WorkloadResult Run(WorkloadContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var r = new WorkloadResult(Name);
        int threads = Math.Max(1, context.Threads);
        context.Report(Name, $"{threads} threads", 0);
        OracleStressResult o = OracleStress.Run(context.Memory, new OracleStressOptions
        {
            Seed = context.Seed,
            Threads = threads,
            Duration = context.Duration,
            FailRate = FailRate,
            PlantStaleBug = PlantStaleBug,
            ReplayCommand = ReplayCommand,
            Progress = f => context.Report(Name, $"{threads} threads", f),
            Cancellation = context.Cancellation,
        });
        LastResult = o;
        context.Cancellation.ThrowIfCancellationRequested();
        string secs = o.Seconds.ToString("F1", CultureInfo.InvariantCulture);
        r.Check("every value a CPU, device or fork child observed was current at some instant of the observation", o.Violations == 0,
            o.Violations == 0
                ? $"{N(o.Checks)} observations checked in {secs} s"
                : $"{N(o.Violations)} violations; first: {FirstLine(o.Report)}");
        r.Check("no operation hit an unexpected error", o.Errors.Count == 0, o.Errors.Count == 0 ? null : string.Join(" | ", o.Errors));
        r.Check("CPU and devices made progress", o.Operations > 0 && (o.DeviceOperations > 0 || threads == 0),
            $"{N(o.Operations)} operations, {N(o.DeviceOperations)} on devices, {N(o.Invalidations)} invalidations");
        r.Check("every notifier is gone after the devices closed", o.NotifiersLeft == 0, $"{o.NotifiersLeft} left");
        r.Check("every frame is free again after exit", o.LeakedFrames == 0, $"{o.LeakedFrames} frames leaked");
        r.Counter("operations", o.Operations);
        r.Counter("device_operations", o.DeviceOperations);
        r.Counter("invalidations", o.Invalidations);
        r.Counter("violations", o.Violations);
        r.Counter("leaked_frames", o.LeakedFrames);
        r.Counter("seconds", Math.Round(o.Seconds, 3));
        r.Counter("checks", o.Checks);
        r.Counter("signals", o.Signals);
        r.Counter("expected_errors", o.ExpectedErrors);
        r.Counter("rdma_reconnects", o.RdmaReconnects);
        if (FailRate > 0)
        {
            r.Counter("injected_failures", o.InjectedFailures);
        }
        ResultTable t = r.Table("oracle stress: operations by kind", "operation", "count").AlignRight(1);
        foreach (StressOpKind k in Enum.GetValues<StressOpKind>())
        {
            t.AddRow(k.ToString(), N(o.ByKind[(int)k]));
        }
        context.Report(Name, "done", 1);
        return r;
    }

    private static string N(long v) => v.ToString("#,0", CultureInfo.InvariantCulture);

    private static string FirstLine(string s)
    {
        string[] lines = s.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        return lines.Length > 1 ? lines[1] : s;
    }
}

/// <summary>Registers the <c>oracle</c> stress scenario (its type name sorts before the other scenario extensions, so it runs first).</summary>
internal sealed class OracleStressExtension : ICliExtension
{
    /// <inheritdoc/>
    public void Register(CliRegistries registries)
    {
        ArgumentNullException.ThrowIfNull(registries);
        registries.Stress.Add(new OracleStressWorkload());
    }
}
