using System.Diagnostics;
using Hetmem.Diagnostics;

namespace Hetmem.Cli.Workloads;

/// <summary>
/// <c>hetmem demo</c>: runs every registered demo section in order on one context and merges their checks. A
/// section that throws becomes one failed check, and the demo goes on with the next section.
/// </summary>
public sealed class DemoWorkload(WorkloadRegistry sections) : IWorkload
{
    /// <inheritdoc/>
    public string Name => "demo";

    /// <inheritdoc/>
    public string Description => "The main job: every demo section (" + string.Join(", ", sections.Names) + ") on the embedded default set-up.";

    /// <inheritdoc/>
    public WorkloadResult Run(WorkloadContext context)
    {
        var result = new WorkloadResult(Name);
        foreach (IWorkload section in sections.All)
        {
            context.Cancellation.ThrowIfCancellationRequested();
            context.Report(section.Name, "running", 0);
            WorkloadResult r = RunSection(section, context);
            context.Report(section.Name, r.Passed ? "passed" : "FAILED", 1);
            result.Merge(r);
        }
        if (sections.Count == 0)
        {
            result.Check("at least one demo section is registered", false, "no sections");
        }
        return result;
    }

    /// <summary>
    /// Runs one workload as a <see cref="TraceCategory.Workload"/> span and times it. With
    /// <paramref name="catchErrors"/>, an escaping exception becomes one failed check; otherwise it propagates.
    /// </summary>
    public static WorkloadResult RunSection(IWorkload section, WorkloadContext context, bool catchErrors = true)
    {
        long start = Stopwatch.GetTimestamp();
        WorkloadResult r;
        using (TraceLog.Span(TraceCategory.Workload, section.Name))
        {
            try
            {
                r = section.Run(context);
            }
            catch (Exception ex) when (catchErrors && ex is not OperationCanceledException and not OutOfMemoryException)
            {
                r = new WorkloadResult(section.Name);
                r.Check("the section runs to completion", false, ex is MmException ? ex.Message : $"{ex.GetType().Name}: {ex.Message}");
            }
        }
        r.Elapsed = Stopwatch.GetElapsedTime(start);
        return r;
    }
}
