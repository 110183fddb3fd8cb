using System.Diagnostics;

namespace Hetmem.Diagnostics.Scheduling;

/// <summary>
/// One execution's world: built fresh by the scenario factory before every execution, then run by the explorer:
/// the logical threads interleave under control, <see cref="Check"/> runs after they all finished, and
/// <see cref="Cleanup"/> tears the world down.
/// </summary>
internal sealed class RaceScenario
{
    private readonly List<RaceThread> _threads = [];

    /// <summary>The logical threads, in id order.</summary>
    public IReadOnlyList<RaceThread> Threads => _threads;

    /// <summary>Optional guard evaluated on the running thread at plain points: while true, a point is not a decision
    /// (use it while the thread holds a lock that has no schedule point, see docs/races.md).</summary>
    public Func<bool>? Atomic { get; set; }

    /// <summary>The property checked after all threads finished; throw to report a violation.</summary>
    public Action? Check { get; set; }

    /// <summary>Releases the world (runs even when a property failed; not after an abandoned or aborted execution,
    /// whose world may be stuck mid-operation).</summary>
    public Action? Cleanup { get; set; }

    /// <summary>Adds a logical thread (id = the number added before it).</summary>
    /// <returns>This scenario.</returns>
    public RaceScenario Thread(string name, Action body)
    {
        _threads.Add(new RaceThread(name, body));
        return this;
    }
}

/// <summary>Limits of an exploration.</summary>
internal sealed class ExplorationOptions
{
    /// <summary>Schedule points in one execution before it is reported as a livelock.</summary>
    public int MaxSteps { get; init; } = 20_000;

    /// <summary>No-progress time after which an execution is reported as an uncontrolled block (a hang guard).</summary>
    public TimeSpan HangTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Stop at the first violating execution.</summary>
    public bool StopOnFirstViolation { get; init; }

    /// <summary>Violating executions kept in the report.</summary>
    public int KeepViolations { get; init; } = 4;
}

/// <summary>What an exploration did.</summary>
internal sealed class ExplorationReport
{
    /// <summary>The strategy and its parameters (seed, bound).</summary>
    public required string Strategy { get; init; }

    /// <summary>Executions run.</summary>
    public int Executions { get; set; }

    /// <summary>Distinct choice sequences among them.</summary>
    public int DistinctSchedules { get; set; }

    /// <summary>Executions that violated a property (or deadlocked, livelocked, stalled).</summary>
    public int ViolationCount { get; set; }

    /// <summary>The first violating executions (up to <see cref="ExplorationOptions.KeepViolations"/>).</summary>
    public List<ExecutionResult> Violations { get; } = [];

    /// <summary>True when a systematic strategy covered its whole bounded space.</summary>
    public bool Exhausted { get; set; }

    /// <summary>Most schedule points in one execution.</summary>
    public int MaxSteps { get; set; }

    /// <summary>Most decisions in one execution.</summary>
    public int MaxDecisions { get; set; }

    /// <summary>Wall-clock time of the exploration (reported, never asserted).</summary>
    public TimeSpan Elapsed { get; set; }

    /// <summary>One line for logs.</summary>
    public override string ToString()
        => $"{Strategy}: {Executions} executions, {DistinctSchedules} distinct schedules, {ViolationCount} violations, " +
           $"exhausted={Exhausted}, max {MaxSteps} points / {MaxDecisions} decisions per execution, {Elapsed.TotalSeconds:0.00}s";
}

/// <summary>
/// Explores the interleavings of a scenario with a <see cref="ControlledScheduler"/> and an
/// <see cref="ISchedulingStrategy"/>, and replays a reported schedule (kernel counterpart: none). See docs/races.md.
/// </summary>
internal static class RaceExplorer
{
    /// <summary>Runs executions until the strategy is done (or the first violation when asked).</summary>
    /// <param name="factory">Builds a fresh world for each execution.</param>
    /// <param name="strategy">Chooses the interleavings.</param>
    /// <param name="options">Limits; defaults when null.</param>
    /// <returns>Statistics and the violating schedules.</returns>
    public static ExplorationReport Explore(Func<RaceScenario> factory, ISchedulingStrategy strategy, ExplorationOptions? options = null)
    {
        options ??= new ExplorationOptions();
        var report = new ExplorationReport { Strategy = strategy.Description };
        var seen = new HashSet<string>();
        var clock = Stopwatch.StartNew();
        while (strategy.BeginExecution())
        {
            ExecutionResult r = RunOne(factory, strategy, options);
            report.Executions++;
            if (seen.Add(r.Schedule))
            {
                report.DistinctSchedules++;
            }
            report.MaxSteps = Math.Max(report.MaxSteps, r.Steps);
            report.MaxDecisions = Math.Max(report.MaxDecisions, r.Choices.Length);
            if (r.Failure is not null)
            {
                report.ViolationCount++;
                if (report.Violations.Count < options.KeepViolations)
                {
                    report.Violations.Add(r);
                }
                if (options.StopOnFirstViolation || r.Abandoned)
                {
                    break;
                }
            }
        }
        report.Exhausted = strategy is BoundedDfsStrategy { Exhausted: true };
        report.Elapsed = clock.Elapsed;
        return report;
    }

    /// <summary>Runs the execution <paramref name="schedule"/> describes (a <see cref="Schedule"/> string); with
    /// <paramref name="lenient"/> a recorded choice that cannot run falls back to the default choice.</summary>
    /// <returns>The replayed execution; its <see cref="ExecutionResult.Schedule"/> equals the input when the
    /// scenario is deterministic.</returns>
    public static ExecutionResult Replay(Func<RaceScenario> factory, string schedule, ExplorationOptions? options = null, bool lenient = false)
    {
        var strategy = new ReplayStrategy(Schedule.Parse(schedule), lenient);
        strategy.BeginExecution();
        return RunOne(factory, strategy, options ?? new ExplorationOptions());
    }

    private static ExecutionResult RunOne(Func<RaceScenario> factory, ISchedulingStrategy strategy, ExplorationOptions options)
    {
        RaceScenario scenario = factory();
        ExecutionResult r;
        try
        {
            r = ControlledScheduler.Run(scenario.Threads, strategy, scenario.Atomic, options.MaxSteps, options.HangTimeout);
            if (r.Failure is null && scenario.Check is not null)
            {
                try
                {
                    scenario.Check();
                }
                catch (Exception e)
                {
                    r.Failure = $"check failed: {e.GetType().Name}: {e.Message}";
                }
            }
        }
        catch
        {
            scenario.Cleanup?.Invoke();
            throw;
        }
        if (!r.Abandoned && !r.Aborted)
        {
            scenario.Cleanup?.Invoke();
        }
        return r;
    }
}
