using Hetmem.Cli.Workloads;
using Spectre.Console;

namespace Hetmem.Cli.Rendering;

/// <summary>Progress bars for running workloads: one bar per workload (demo section), showing its current phase.</summary>
internal sealed class SpectreWorkloadProgress(ProgressContext progress) : IWorkloadProgress
{
    private readonly object _lock = new();
    private readonly Dictionary<string, ProgressTask> _tasks = new(StringComparer.Ordinal); // guarded by _lock

    /// <summary>Adds bars for <paramref name="workloads"/> up front, so the whole plan is visible from the start.</summary>
    public void Plan(IEnumerable<string> workloads)
    {
        foreach (string w in workloads)
        {
            TaskFor(w);
        }
    }

    /// <inheritdoc/>
    public void Report(string workload, string phase, double fraction)
    {
        ProgressTask t = TaskFor(workload);
        t.Description = Markup.Escape($"{workload}: {phase}");
        t.Value = Math.Max(t.Value, fraction * 100);
    }

    private ProgressTask TaskFor(string workload)
    {
        lock (_lock)
        {
            if (!_tasks.TryGetValue(workload, out ProgressTask? t))
            {
                t = progress.AddTask(Markup.Escape(workload), maxValue: 100);
                _tasks.Add(workload, t);
            }
            return t;
        }
    }

    /// <summary>
    /// Runs <paramref name="run"/> under progress bars when <paramref name="io"/> is a terminal and the output is not
    /// JSON; otherwise runs it plainly.
    /// </summary>
    public static T Run<T>(CliIo io, CliSettings settings, IEnumerable<string> plan, Func<IWorkloadProgress, T> run)
    {
        if (!io.IsTerminal || settings.Json)
        {
            return run(NullWorkloadProgress.Instance);
        }
        T result = default!;
        io.Ui.Progress()
            .AutoClear(true)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                var p = new SpectreWorkloadProgress(ctx);
                p.Plan(plan);
                result = run(p);
            });
        return result;
    }
}
