using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text.RegularExpressions;
using Hetmem.Cli.Workloads;
using Hetmem.Diagnostics;

namespace Hetmem.Cli.Selftests;

/// <summary>The outcome of one self-test.</summary>
public enum SelftestOutcome
{
    /// <summary>It passed (<c>ok N name</c>).</summary>
    Passed,
    /// <summary>It failed (<c>not ok N name # reason</c>).</summary>
    Failed,
    /// <summary>It could not run here (<c>ok N name # SKIP reason</c>).</summary>
    Skipped,
}

/// <summary>One registered self-test.</summary>
/// <param name="Name">The name, e.g. <c>hmm.anon_read</c> (kernel hmm-tests names where ported).</param>
/// <param name="Body">The test; it fails by throwing, skips with <see cref="Selftest.Skip"/>.</param>
public sealed record SelftestCase(string Name, Action<WorkloadContext> Body);

/// <summary>The result of one self-test.</summary>
public sealed record SelftestResult(int Number, string Name, SelftestOutcome Outcome, string? Reason, TimeSpan Elapsed);

/// <summary>Thrown by <see cref="Selftest.Skip"/>.</summary>
public sealed class SelftestSkipException(string reason) : Exception(reason);

/// <summary>Helpers for self-test bodies.</summary>
public static class Selftest
{
    /// <summary>Ends the running self-test as skipped (TAP <c># SKIP</c>), e.g. when the host lacks a feature.</summary>
    /// <exception cref="SelftestSkipException">Always.</exception>
    [DoesNotReturn]
    public static void Skip(string reason) => throw new SelftestSkipException(reason);

    /// <summary>Fails the running self-test with <paramref name="message"/> when <paramref name="condition"/> is false.</summary>
    /// <exception cref="CheckFailedException">When the condition is false.</exception>
    public static void Assert([DoesNotReturnIf(false)] bool condition, string message)
    {
        if (!condition)
        {
            throw new CheckFailedException(message);
        }
    }
}

/// <summary>The results of a self-test run and their TAP summary.</summary>
public sealed class SelftestSummary(IReadOnlyList<SelftestResult> results)
{
    /// <summary>The results, in run order.</summary>
    public IReadOnlyList<SelftestResult> Results { get; } = results;

    /// <summary>Number passed.</summary>
    public int Passed => Results.Count(r => r.Outcome == SelftestOutcome.Passed);

    /// <summary>Number failed.</summary>
    public int Failed => Results.Count(r => r.Outcome == SelftestOutcome.Failed);

    /// <summary>Number skipped.</summary>
    public int Skipped => Results.Count(r => r.Outcome == SelftestOutcome.Skipped);

    /// <summary>0 when nothing failed, else 1.</summary>
    public int ExitCode => Failed == 0 ? ExitCodes.Ok : ExitCodes.Failed;

    /// <summary>The closing line: <c>N passed, N failed</c>, plus <c>, N skipped</c> when any were skipped.</summary>
    public string SummaryLine => Skipped > 0
        ? string.Create(CultureInfo.InvariantCulture, $"{Passed} passed, {Failed} failed, {Skipped} skipped")
        : string.Create(CultureInfo.InvariantCulture, $"{Passed} passed, {Failed} failed");
}

/// <summary>
/// Self-tests by name (kernel: tools/testing/selftests), run by <c>hetmem selftest</c> with TAP output:
/// <c>ok N name</c>, <c>not ok N name # reason</c>, <c>ok N name # SKIP reason</c>, closing with
/// <c>N passed, N failed</c> (and <c>, N skipped</c> when any).
/// </summary>
/// <remarks>Thread-safe registration; cases run one at a time, each with a fresh <see cref="WorkloadContext"/>.</remarks>
public sealed class SelftestRegistry
{
    private readonly object _lock = new();
    private readonly List<SelftestCase> _cases = [];   // guarded by _lock

    /// <summary>The cases, in registration order.</summary>
    public IReadOnlyList<SelftestCase> Cases
    {
        get
        {
            lock (_lock)
            {
                return [.. _cases];
            }
        }
    }

    /// <summary>Adds a test that needs no context; a test of the same name is replaced.</summary>
    public void Add(string name, Action test)
    {
        ArgumentNullException.ThrowIfNull(test);
        Add(name, _ => test());
    }

    /// <summary>Adds a test that uses the context (memory, DAX directory, seed); a test of the same name is replaced.</summary>
    /// <exception cref="ArgumentException">When the name is empty or contains white space or <c>#</c>.</exception>
    public void Add(string name, Action<WorkloadContext> test)
    {
        ArgumentNullException.ThrowIfNull(test);
        if (string.IsNullOrWhiteSpace(name) || name.Any(char.IsWhiteSpace) || name.Contains('#'))
        {
            throw new ArgumentException($"self-test name '{name}' must be non-empty without white space or '#'", nameof(name));
        }
        lock (_lock)
        {
            int i = _cases.FindIndex(c => c.Name == name);
            var c = new SelftestCase(name, test);
            if (i >= 0)
            {
                _cases[i] = c;
            }
            else
            {
                _cases.Add(c);
            }
        }
    }

    /// <summary>
    /// The cases matching <paramref name="filter"/>: all when null or empty; a glob when it has <c>*</c> or <c>?</c>;
    /// otherwise a case-insensitive substring.
    /// </summary>
    public IReadOnlyList<SelftestCase> Select(string? filter) => [.. Cases.Where(c => Matches(c.Name, filter))];

    /// <summary>True when <paramref name="name"/> matches <paramref name="filter"/> (see <see cref="Select"/>).</summary>
    public static bool Matches(string name, string? filter)
    {
        if (string.IsNullOrEmpty(filter))
        {
            return true;
        }
        if (filter.Contains('*') || filter.Contains('?'))
        {
            string pattern = "^" + Regex.Escape(filter).Replace(@"\*", ".*").Replace(@"\?", ".") + "$";
            return Regex.IsMatch(name, pattern, RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);
        }
        return name.Contains(filter, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>
    /// Runs <paramref name="cases"/> in order, each with a fresh context from <paramref name="newContext"/>, writing
    /// one TAP line per case to <paramref name="tap"/> as it finishes (when not null).
    /// </summary>
    public static SelftestSummary Run(IReadOnlyList<SelftestCase> cases, Func<WorkloadContext> newContext, TextWriter? tap,
        CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(cases);
        ArgumentNullException.ThrowIfNull(newContext);
        var results = new List<SelftestResult>(cases.Count);
        tap?.WriteLine(string.Create(CultureInfo.InvariantCulture, $"1..{cases.Count}"));
        for (int i = 0; i < cases.Count; i++)
        {
            cancellation.ThrowIfCancellationRequested();
            SelftestResult r = RunOne(i + 1, cases[i], newContext);
            results.Add(r);
            tap?.WriteLine(FormatTap(r));
            tap?.Flush();
        }
        return new SelftestSummary(results);
    }

    private static SelftestResult RunOne(int number, SelftestCase c, Func<WorkloadContext> newContext)
    {
        long start = Stopwatch.GetTimestamp();
        SelftestOutcome outcome;
        string? reason = null;
        using (TraceLog.Span(TraceCategory.Workload, c.Name))
        {
            try
            {
                using WorkloadContext ctx = newContext();
                c.Body(ctx);
                outcome = SelftestOutcome.Passed;
            }
            catch (SelftestSkipException ex)
            {
                outcome = SelftestOutcome.Skipped;
                reason = ex.Message;
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                outcome = SelftestOutcome.Failed;
                reason = ex is CheckFailedException or MmException ? ex.Message : $"{ex.GetType().Name}: {ex.Message}";
            }
        }
        return new SelftestResult(number, c.Name, outcome, reason, Stopwatch.GetElapsedTime(start));
    }

    /// <summary>The TAP line of <paramref name="r"/>; the reason is flattened to one line.</summary>
    public static string FormatTap(SelftestResult r)
    {
        ArgumentNullException.ThrowIfNull(r);
        string reason = OneLine(r.Reason);
        return r.Outcome switch
        {
            SelftestOutcome.Passed => string.Create(CultureInfo.InvariantCulture, $"ok {r.Number} {r.Name}"),
            SelftestOutcome.Skipped => string.Create(CultureInfo.InvariantCulture, $"ok {r.Number} {r.Name} # SKIP {reason}").TrimEnd(),
            _ => string.Create(CultureInfo.InvariantCulture, $"not ok {r.Number} {r.Name} # {(reason.Length > 0 ? reason : "failed")}"),
        };
    }

    private static string OneLine(string? s) =>
        string.Join(' ', (s ?? "").Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}
