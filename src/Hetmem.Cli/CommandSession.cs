using System.Globalization;
using Hetmem.Cli.Rendering;
using Hetmem.Cli.Workloads;
using Hetmem.Diagnostics;

namespace Hetmem.Cli;

/// <summary>
/// One command invocation: its settings and output, plus the artifacts that wrap the run (<c>--trace</c> recording,
/// the <c>--plot</c> timeline). <see cref="Finish"/> stops them and writes the files; it returns the notes to show.
/// </summary>
public sealed class CommandSession : IDisposable
{
    private readonly List<WorkloadContext> _contexts = [];
    private readonly List<string> _notes = [];
    private bool _finished;

    internal CommandSession(CliSettings settings, CliIo io, CancellationToken cancellation)
    {
        Settings = settings;
        Io = io;
        Cancellation = cancellation;
        if (settings.TracePath is not null)
        {
            TraceLog.Start();
            TraceLog.SetThreadTrack("main");
        }
        if (settings.PlotPath is not null)
        {
            Timeline = new Timeline(TimeSpan.FromMilliseconds(10));
            Timeline.AddDefaultCounters();
            Timeline.Start();
        }
    }

    /// <summary>The parsed settings.</summary>
    public CliSettings Settings { get; }

    /// <summary>Where to write.</summary>
    public CliIo Io { get; }

    /// <summary>Cancelled on Ctrl+C.</summary>
    public CancellationToken Cancellation { get; }

    /// <summary>The timeline of the run, when <c>--plot</c> was given.</summary>
    public Timeline? Timeline { get; }

    /// <summary>Creates a workload context that lives until <see cref="Finish"/> (so the final timeline sample can still read it).</summary>
    public WorkloadContext NewContext(TimeSpan? duration = null, int? threads = null)
    {
        var ctx = new WorkloadContext(Settings, Io.Err, Timeline, Cancellation)
        {
            Duration = duration ?? TimeSpan.FromSeconds(5),
            Threads = threads ?? Math.Max(2, Environment.ProcessorCount),
        };
        _contexts.Add(ctx);
        return ctx;
    }

    /// <summary>Writes a verbose log line to stderr.</summary>
    public void Log(string message)
    {
        if (Settings.Verbose)
        {
            Io.Err.WriteLine($"[{DateTime.Now:HH:mm:ss.fff}] {message}");
        }
    }

    /// <summary>
    /// Stops the timeline and the trace, writes the plot and trace files, and frees the contexts. Returns one line
    /// per file written. Idempotent.
    /// </summary>
    public IReadOnlyList<string> Finish()
    {
        if (_finished)
        {
            return _notes;
        }
        _finished = true;
        try
        {
            if (Timeline is not null)
            {
                Timeline.Stop();
                int panels = PlotRenderer.Render(Timeline, Settings.PlotPath!, $"hetmem {Settings.Command}");
                _notes.Add(string.Create(CultureInfo.InvariantCulture,
                    $"plot: wrote {Settings.PlotPath} ({panels} panels, {Timeline.Times.Count} samples)"));
            }
            if (Settings.TracePath is not null)
            {
                TraceLog.Stop();
                int n = PerfettoExporter.Write(Settings.TracePath);
                long dropped = TraceLog.DroppedEvents;
                TraceLog.Clear();
                _notes.Add(string.Create(CultureInfo.InvariantCulture,
                    $"trace: wrote {Settings.TracePath} ({n} events{(dropped > 0 ? $", {dropped} dropped" : "")}; open it in ui.perfetto.dev)"));
            }
        }
        finally
        {
            DisposeContexts();
        }
        return _notes;
    }

    private void DisposeContexts()
    {
        foreach (WorkloadContext c in _contexts)
        {
            c.Dispose();
        }
        _contexts.Clear();
    }

    /// <summary>Stops recording without writing files (after an error) and frees everything.</summary>
    public void Dispose()
    {
        if (!_finished)
        {
            _finished = true;
            Timeline?.Stop();
            if (Settings.TracePath is not null)
            {
                TraceLog.Stop();
                TraceLog.Clear();
            }
            DisposeContexts();
        }
        Timeline?.Dispose();
    }
}
