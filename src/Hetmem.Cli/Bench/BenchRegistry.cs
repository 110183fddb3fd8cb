using System.Globalization;
using Hetmem.Diagnostics;

namespace Hetmem.Cli.Bench;

/// <summary>A measurement is not possible on this host (old kernel, missing feature); reported as null, not as a failure.</summary>
public sealed class BenchUnavailableException(string reason) : Exception(reason);

/// <summary>One registered measurement.</summary>
/// <param name="Key">The JSON key (snake_case, unit suffix: <c>_ns</c>, <c>_gbps</c>, <c>_bytes</c>).</param>
/// <param name="Measure">Returns the value; throws <see cref="BenchUnavailableException"/> when it cannot run here.</param>
/// <param name="Description">One line for listings.</param>
public sealed record BenchMeasure(string Key, Func<BenchOptions, double> Measure, string Description);

/// <summary>The values of a bench run by key (null = not measured) and why values are missing.</summary>
public sealed class BenchReport
{
    private readonly List<string> _order = [];
    private readonly Dictionary<string, double?> _values = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _notes = new(StringComparer.Ordinal);
    private readonly List<string> _errors = [];

    /// <summary>Keys in report order: the standard keys first, then any extra registered keys.</summary>
    public IReadOnlyList<string> Keys => _order;

    /// <summary>Keys whose measurement threw an unexpected exception.</summary>
    public IReadOnlyList<string> Errors => _errors;

    /// <summary>The value of <paramref name="key"/>, or null.</summary>
    public double? this[string key] => _values.TryGetValue(key, out double? v) ? v : null;

    /// <summary>Why <paramref name="key"/> has no value (not registered, unavailable, error), or null.</summary>
    public string? Note(string key) => _notes.TryGetValue(key, out string? n) ? n : null;

    internal void Set(string key, double? value, string? note = null, bool error = false)
    {
        if (!_values.ContainsKey(key))
        {
            _order.Add(key);
        }
        _values[key] = value is { } v && double.IsFinite(v) ? v : null;
        if (note is not null)
        {
            _notes[key] = note;
        }
        if (error)
        {
            _errors.Add(key);
        }
    }
}

/// <summary>
/// Measurements of <c>hetmem bench</c> by key, in registration order. The host-kernel half is built in; the
/// Hetmem half plugs in with <see cref="Add"/> under the keys of <see cref="BenchKeys"/>.
/// </summary>
/// <remarks>Thread-safe registration; measurements run one at a time.</remarks>
public sealed class BenchRegistry
{
    private readonly object _lock = new();
    private readonly List<BenchMeasure> _measures = [];   // guarded by _lock

    /// <summary>The measurements, in registration order.</summary>
    public IReadOnlyList<BenchMeasure> Measures
    {
        get
        {
            lock (_lock)
            {
                return [.. _measures];
            }
        }
    }

    /// <summary>True when <paramref name="key"/> has a measurement.</summary>
    public bool Contains(string key) => Measures.Any(m => m.Key == key);

    /// <summary>
    /// Registers (or replaces) the measurement of <paramref name="key"/>, e.g.
    /// <c>Add(BenchKeys.Snapshot, o =&gt; …ns a page…)</c>.
    /// </summary>
    /// <exception cref="ArgumentException">When the key is not snake_case.</exception>
    public void Add(string key, Func<BenchOptions, double> measure, string? description = null)
    {
        ArgumentNullException.ThrowIfNull(measure);
        if (string.IsNullOrEmpty(key) || !key.All(c => c is (>= 'a' and <= 'z') or (>= '0' and <= '9') or '_'))
        {
            throw new ArgumentException($"bench key '{key}' must be snake_case", nameof(key));
        }
        lock (_lock)
        {
            int i = _measures.FindIndex(m => m.Key == key);
            var m = new BenchMeasure(key, measure, description ?? key);
            if (i >= 0)
            {
                _measures[i] = m;
            }
            else
            {
                _measures.Add(m);
            }
        }
    }

    /// <summary>
    /// Runs every measurement; standard keys without a measurement are reported as null ("not registered yet").
    /// <paramref name="progress"/> is called before each measurement with (key, index, count).
    /// </summary>
    public BenchReport Run(BenchOptions options, Action<string, int, int>? progress = null, TextWriter? log = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var report = new BenchReport();
        IReadOnlyList<BenchMeasure> measures = Measures;
        var byKey = measures.ToDictionary(m => m.Key, StringComparer.Ordinal);
        List<string> order = [.. BenchKeys.All, .. measures.Select(m => m.Key).Where(k => !BenchKeys.All.Contains(k))];
        for (int i = 0; i < order.Count; i++)
        {
            string key = order[i];
            if (!byKey.TryGetValue(key, out BenchMeasure? m))
            {
                report.Set(key, null, "not measured yet");
                continue;
            }
            options.Cancellation.ThrowIfCancellationRequested();
            progress?.Invoke(key, i, order.Count);
            using (TraceLog.Span(TraceCategory.Bench, m.Key))
            {
                try
                {
                    double v = m.Measure(options);
                    report.Set(key, v);
                    log?.WriteLine(string.Create(CultureInfo.InvariantCulture, $"bench: {key} = {v:G6}"));
                }
                catch (BenchUnavailableException ex)
                {
                    report.Set(key, null, ex.Message);
                    log?.WriteLine($"bench: {key} unavailable: {ex.Message}");
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    string msg = ex is MmException ? ex.Message : $"{ex.GetType().Name}: {ex.Message}";
                    report.Set(key, null, "error: " + msg, error: true);
                    log?.WriteLine($"bench: {key} failed: {msg}");
                }
            }
        }
        return report;
    }
}
