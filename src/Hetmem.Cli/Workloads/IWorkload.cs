namespace Hetmem.Cli.Workloads;

/// <summary>
/// Something <c>hetmem</c> can run by name: a demo section, a scenario, a stress run. It records named checks and
/// counters in a <see cref="WorkloadResult"/> and must not write to stdout (the command renders the result).
/// </summary>
public interface IWorkload
{
    /// <summary>The name used on the command line (<c>hetmem run NAME</c>); lower case, no spaces.</summary>
    string Name { get; }

    /// <summary>One line for <c>--help</c> and listings.</summary>
    string Description { get; }

    /// <summary>
    /// Runs the workload. Failed expectations become failed checks; an exception escaping Run is an error of the
    /// whole command (one line on stderr, exit 3).
    /// </summary>
    WorkloadResult Run(WorkloadContext context);
}

/// <summary>An <see cref="IWorkload"/> made of a delegate, for small workloads and tests.</summary>
public sealed class DelegateWorkload(string name, string description, Func<WorkloadContext, WorkloadResult> run) : IWorkload
{
    /// <inheritdoc/>
    public string Name { get; } = name;

    /// <inheritdoc/>
    public string Description { get; } = description;

    /// <inheritdoc/>
    public WorkloadResult Run(WorkloadContext context) => run(context);
}
