using System.Diagnostics;

namespace Hetmem.Diagnostics;

/// <summary>What a <see cref="TimelineSeries"/> samples.</summary>
public enum TimelineSeriesKind
{
    /// <summary>An event counter from <see cref="Counters"/>, as events since the timeline started (cumulative).</summary>
    Counter,
    /// <summary>A gauge read by a callback (e.g. resident pages of one memory kind).</summary>
    Gauge,
}

/// <summary>One sampled series of a <see cref="Timeline"/>.</summary>
/// <remarks>Appended to only under the timeline's lock; read it after <see cref="Timeline.Stop"/>.</remarks>
public sealed class TimelineSeries
{
    private readonly List<double> _values = [];   // guarded by the owning timeline's lock
    private readonly Func<double> _read;          // immutable

    internal TimelineSeries(string name, string group, TimelineSeriesKind kind, Func<double> read)
    {
        Name = name;
        Group = group;
        Kind = kind;
        _read = read;
        TraceName = group.Replace(' ', '_');
    }

    /// <summary>The series name (e.g. <c>PgFault</c>, <c>ram</c>).</summary>
    public string Name { get; }

    /// <summary>The group it is plotted with (e.g. <c>faults</c>, <c>migrations</c>, <c>resident pages</c>).</summary>
    public string Group { get; }

    /// <summary>What is sampled.</summary>
    public TimelineSeriesKind Kind { get; }

    /// <summary>The trace counter the samples are recorded under: the group with spaces as underscores (<c>resident_pages</c>).</summary>
    public string TraceName { get; }

    /// <summary>The samples, one per <see cref="Timeline.Times"/> entry.</summary>
    public IReadOnlyList<double> Values => _values;

    internal double Baseline { get; set; }

    internal void Append() => _values.Add(_read() - (Kind == TimelineSeriesKind.Counter ? Baseline : 0));

    internal double ReadRaw() => _read();
}

/// <summary>
/// Samples event counters and gauges at a fixed interval on a background thread, for plots of faults, migrations and
/// residency per memory kind over time (kernel: what <c>vmstat 1</c> shows). While <see cref="TraceLog"/> records,
/// every sample is also written as a trace counter event (<see cref="TimelineSeries.TraceName"/>, series
/// <see cref="TimelineSeries.Name"/>), so a gauge in group <c>resident pages</c> lines up with workloads' own
/// <c>TraceLog.Counter("resident_pages", kind, n)</c> samples.
/// </summary>
/// <remarks>
/// Locking: <c>_lock</c> (a leaf) protects the series list and the samples; gauges are called under it, so they must
/// only read atomics and take no lock of the <see cref="LockClass"/> tree.
/// </remarks>
public sealed class Timeline : IDisposable
{
    /// <summary>Maximum number of samples kept; sampling stops beyond it.</summary>
    public const int MaxSamples = 1_000_000;

    private readonly object _lock = new();
    private readonly List<TimelineSeries> _series = [];  // guarded by _lock
    private readonly List<double> _times = [];           // guarded by _lock; seconds since Start
    private readonly ManualResetEventSlim _stop = new(false);
    private Thread? _thread;                             // guarded by _lock
    private long _start;                                 // guarded by _lock; Stopwatch ticks

    /// <summary>Creates a timeline that samples every <paramref name="interval"/> once started.</summary>
    /// <param name="interval">The sampling interval, at least one millisecond.</param>
    /// <exception cref="ArgumentOutOfRangeException">When the interval is shorter than 1 ms.</exception>
    public Timeline(TimeSpan interval)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(interval, TimeSpan.FromMilliseconds(1));
        Interval = interval;
    }

    /// <summary>The sampling interval.</summary>
    public TimeSpan Interval { get; }

    /// <summary>True between <see cref="Start"/> and <see cref="Stop"/>.</summary>
    public bool IsRunning
    {
        get
        {
            lock (_lock)
            {
                return _thread is not null;
            }
        }
    }

    /// <summary>Sample times in seconds since <see cref="Start"/> (a copy).</summary>
    public IReadOnlyList<double> Times
    {
        get
        {
            lock (_lock)
            {
                return [.. _times];
            }
        }
    }

    /// <summary>The series, in the order they were added (a copy of the list).</summary>
    public IReadOnlyList<TimelineSeries> Series
    {
        get
        {
            lock (_lock)
            {
                return [.. _series];
            }
        }
    }

    /// <summary>Samples an event counter (as events since <see cref="Start"/>) in <paramref name="group"/>.</summary>
    /// <param name="counter">The counter.</param>
    /// <param name="group">The plot group.</param>
    /// <returns>The series.</returns>
    public TimelineSeries AddCounter(Counter counter, string group) =>
        Add(new TimelineSeries(TraceNames.Of(counter), group, TimelineSeriesKind.Counter, () => Counters.Read(counter)));

    /// <summary>Samples <paramref name="read"/> as series <paramref name="name"/> of <paramref name="group"/>.</summary>
    /// <param name="name">The series name (e.g. a memory kind: <c>ram</c>, <c>dax</c>, <c>device_private</c>).</param>
    /// <param name="group">The plot group (e.g. <c>resident pages</c>).</param>
    /// <param name="read">Reads the value; called on the sampling thread under the timeline's leaf lock.</param>
    /// <returns>The series.</returns>
    public TimelineSeries AddGauge(string name, string group, Func<double> read)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(read);
        return Add(new TimelineSeries(name, group, TimelineSeriesKind.Gauge, read));
    }

    /// <summary>
    /// Adds the standard counters: CPU and device faults (<c>faults</c>), invalidations (<c>invalidations</c>) and
    /// migrations both ways (<c>migrations</c>).
    /// </summary>
    public void AddDefaultCounters()
    {
        AddCounter(Counter.PgFault, "faults");
        AddCounter(Counter.DeviceFault, "faults");
        AddCounter(Counter.HmmRangeFault, "faults");
        AddCounter(Counter.InvalidateRangeStart, "invalidations");
        AddCounter(Counter.IntervalInvalidate, "invalidations");
        AddCounter(Counter.MigrateToDevice, "migrations");
        AddCounter(Counter.MigrateToRam, "migrations");
    }

    private TimelineSeries Add(TimelineSeries s)
    {
        lock (_lock)
        {
            if (_series.Exists(x => x.Name == s.Name && x.Group == s.Group))
            {
                throw new ArgumentException($"the timeline already has a series '{s.Name}' in group '{s.Group}'");
            }
            s.Baseline = s.Kind == TimelineSeriesKind.Counter ? s.ReadRaw() : 0;
            // A series added late is padded with its first value so every series has one value per time.
            for (int i = 0; i < _times.Count; i++)
            {
                s.Append();
            }
            _series.Add(s);
            return s;
        }
    }

    /// <summary>Takes a first sample and starts the sampling thread.</summary>
    /// <exception cref="InvalidOperationException">When already started.</exception>
    public void Start()
    {
        lock (_lock)
        {
            if (_thread is not null)
            {
                throw new InvalidOperationException("the timeline is already running");
            }
            _start = Stopwatch.GetTimestamp();
            _times.Clear();
            foreach (TimelineSeries s in _series)
            {
                s.Baseline = s.Kind == TimelineSeriesKind.Counter ? s.ReadRaw() : 0;
            }
            _stop.Reset();
            SampleLocked();
            _thread = new Thread(Loop) { IsBackground = true, Name = "hetmem-timeline" };
            _thread.Start();
        }
    }

    /// <summary>Stops the sampling thread and takes a last sample. Does nothing when not running.</summary>
    public void Stop()
    {
        Thread? t;
        lock (_lock)
        {
            t = _thread;
            _thread = null;
        }
        if (t is null)
        {
            return;
        }
        _stop.Set();
        t.Join();
        Sample();
    }

    /// <summary>Takes one sample now (also allowed before <see cref="Start"/>, with times relative to creation).</summary>
    public void Sample()
    {
        lock (_lock)
        {
            SampleLocked();
        }
    }

    private void SampleLocked()
    {
        Debug.Assert(Monitor.IsEntered(_lock));
        if (_times.Count >= MaxSamples)
        {
            return;
        }
        if (_start == 0)
        {
            _start = Stopwatch.GetTimestamp();
        }
        _times.Add(Stopwatch.GetElapsedTime(_start).TotalSeconds);
        bool trace = TraceLog.Enabled;
        foreach (TimelineSeries s in _series)
        {
            s.Append();
            if (trace)
            {
                TraceLog.Counter(s.TraceName, s.Name, s.Values[^1]);
            }
        }
    }

    private void Loop()
    {
        TraceLog.SetThreadTrack("timeline");
        while (!_stop.Wait(Interval))
        {
            Sample();
        }
    }

    /// <summary>Stops sampling and releases the stop event.</summary>
    public void Dispose()
    {
        Stop();
        _stop.Dispose();
    }
}
