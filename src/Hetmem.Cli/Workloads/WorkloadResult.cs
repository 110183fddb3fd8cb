using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using Hetmem.Diagnostics;

namespace Hetmem.Cli.Workloads;

/// <summary>One named check of a workload.</summary>
/// <param name="Section">The demo section or workload that ran it.</param>
/// <param name="Name">What was checked, as a sentence.</param>
/// <param name="Passed">Whether it held.</param>
/// <param name="Detail">A measured value or the reason it failed.</param>
/// <param name="Elapsed">How long the check took.</param>
public sealed record WorkloadCheck(string Section, string Name, bool Passed, string? Detail, TimeSpan Elapsed);

/// <summary>Thrown inside <see cref="WorkloadResult.Check(string, Func{string?})"/> to fail the check with a reason.</summary>
public sealed class CheckFailedException(string message) : Exception(message);

/// <summary>The outcome of a workload: named pass/fail checks and named counters.</summary>
/// <remarks>Not thread-safe: record checks from the thread running the workload.</remarks>
public sealed class WorkloadResult
{
    private readonly List<WorkloadCheck> _checks = [];
    private readonly Dictionary<string, double> _counters = new(StringComparer.Ordinal);
    private readonly List<string> _counterOrder = [];
    private readonly List<ResultTable> _tables = [];

    /// <summary>Creates an empty result.</summary>
    public WorkloadResult(string name) => Name = name;

    /// <summary>The workload name.</summary>
    public string Name { get; }

    /// <summary>The checks, in the order they ran.</summary>
    public IReadOnlyList<WorkloadCheck> Checks => _checks;

    /// <summary>The counters, in the order they were first set.</summary>
    public IReadOnlyList<KeyValuePair<string, double>> Counters => [.. _counterOrder.Select(k => KeyValuePair.Create(k, _counters[k]))];

    /// <summary>Extra tables to show after the checks (a maps dump, counters, one per device), in the order added.</summary>
    public IReadOnlyList<ResultTable> Tables => _tables;

    /// <summary>Adds a table with <paramref name="columns"/>; fill it with <see cref="ResultTable.AddRow"/>.</summary>
    public ResultTable Table(string title, params string[] columns)
    {
        var t = new ResultTable(title, columns);
        _tables.Add(t);
        return t;
    }

    /// <summary>Wall time of the run (set by the runner).</summary>
    public TimeSpan Elapsed { get; set; }

    /// <summary>True when no check failed.</summary>
    public bool Passed => _checks.TrueForAll(c => c.Passed);

    /// <summary>Number of failed checks.</summary>
    public int FailedCount => _checks.Count(c => !c.Passed);

    /// <summary>Records a check whose outcome is already known.</summary>
    public WorkloadCheck Check(string name, bool passed, string? detail = null)
    {
        var c = new WorkloadCheck(Name, name, passed, detail, TimeSpan.Zero);
        _checks.Add(c);
        return c;
    }

    /// <summary>
    /// Runs <paramref name="body"/> as a check: it passes when the body returns (its return value is the detail) and
    /// fails with the exception's message when it throws (<see cref="Require"/> throws <see cref="CheckFailedException"/>).
    /// The check is a <see cref="TraceCategory.Workload"/> span in the trace.
    /// </summary>
    public WorkloadCheck Check(string name, Func<string?> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        long start = Stopwatch.GetTimestamp();
        bool passed;
        string? detail;
        using (TraceLog.Span(TraceCategory.Workload, name))
        {
            try
            {
                detail = body();
                passed = true;
            }
            catch (CheckFailedException ex)
            {
                detail = ex.Message;
                passed = false;
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                detail = ex is MmException ? ex.Message : $"{ex.GetType().Name}: {ex.Message}";
                passed = false;
            }
        }
        var c = new WorkloadCheck(Name, name, passed, detail, Stopwatch.GetElapsedTime(start));
        _checks.Add(c);
        return c;
    }

    /// <summary>Runs <paramref name="body"/> as a check with no detail.</summary>
    public WorkloadCheck Check(string name, Action body)
    {
        ArgumentNullException.ThrowIfNull(body);
        return Check(name, () =>
        {
            body();
            return null;
        });
    }

    /// <summary>Fails the running check with <paramref name="message"/> when <paramref name="condition"/> is false.</summary>
    /// <exception cref="CheckFailedException">When the condition is false.</exception>
    public static void Require([DoesNotReturnIf(false)] bool condition, string message)
    {
        if (!condition)
        {
            throw new CheckFailedException(message);
        }
    }

    /// <summary>Sets counter <paramref name="name"/> (e.g. <c>frames_allocated</c>, <c>alloc_ns</c>).</summary>
    public void Counter(string name, double value)
    {
        if (!_counters.ContainsKey(name))
        {
            _counterOrder.Add(name);
        }
        _counters[name] = value;
    }

    /// <summary>Adds the checks and counters of <paramref name="section"/>, its counters prefixed with its name.</summary>
    public void Merge(WorkloadResult section)
    {
        ArgumentNullException.ThrowIfNull(section);
        _checks.AddRange(section.Checks);
        _tables.AddRange(section.Tables);
        foreach ((string k, double v) in section.Counters)
        {
            Counter(section.Name + "." + k, v);
        }
    }
}

/// <summary>A table a workload shows after its checks (rendered by Spectre, or as <c>{title, columns, rows}</c> in JSON).</summary>
public sealed class ResultTable
{
    private readonly List<string[]> _rows = [];

    /// <summary>Creates an empty table.</summary>
    /// <exception cref="ArgumentException">When there are no columns.</exception>
    public ResultTable(string title, params string[] columns)
    {
        ArgumentNullException.ThrowIfNull(columns);
        if (columns.Length == 0)
        {
            throw new ArgumentException("a table needs at least one column", nameof(columns));
        }
        Title = title;
        Columns = [.. columns];
    }

    /// <summary>The title.</summary>
    public string Title { get; }

    /// <summary>Column headers.</summary>
    public IReadOnlyList<string> Columns { get; }

    /// <summary>Rows, each with one cell a column.</summary>
    public IReadOnlyList<IReadOnlyList<string>> Rows => _rows;

    /// <summary>Columns whose cells are right-aligned (numbers).</summary>
    public ISet<int> RightAligned { get; } = new HashSet<int>();

    /// <summary>Adds a row.</summary>
    /// <exception cref="ArgumentException">When the number of cells differs from the number of columns.</exception>
    public ResultTable AddRow(params string[] cells)
    {
        ArgumentNullException.ThrowIfNull(cells);
        if (cells.Length != Columns.Count)
        {
            throw new ArgumentException($"table '{Title}' has {Columns.Count} columns, the row has {cells.Length} cells", nameof(cells));
        }
        _rows.Add([.. cells]);
        return this;
    }

    /// <summary>Marks columns as numeric (right-aligned).</summary>
    public ResultTable AlignRight(params int[] columns)
    {
        ArgumentNullException.ThrowIfNull(columns);
        foreach (int c in columns)
        {
            RightAligned.Add(c);
        }
        return this;
    }
}
