namespace Hetmem.Cli.Workloads;

/// <summary>
/// Receives the phases of a running workload, so a command can draw progress bars on a terminal. Implementations are
/// thread-safe: CPU and device threads of a workload may report.
/// </summary>
public interface IWorkloadProgress
{
    /// <summary>Workload <paramref name="workload"/> is in <paramref name="phase"/>, <paramref name="fraction"/> (0..1) done.</summary>
    void Report(string workload, string phase, double fraction);
}

/// <summary>A progress sink that ignores everything (the default: not a terminal, or <c>--json</c>).</summary>
public sealed class NullWorkloadProgress : IWorkloadProgress
{
    /// <summary>The instance.</summary>
    public static NullWorkloadProgress Instance { get; } = new();

    private NullWorkloadProgress()
    {
    }

    /// <inheritdoc/>
    public void Report(string workload, string phase, double fraction)
    {
    }
}
