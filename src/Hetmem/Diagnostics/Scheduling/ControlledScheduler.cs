using System.Diagnostics;

namespace Hetmem.Diagnostics.Scheduling;

/// <summary>One logical thread of a controlled run: a name and the code it runs.</summary>
/// <param name="Name">Shown in traces and reports.</param>
/// <param name="Body">The code; an exception it throws is a violation of the execution.</param>
internal sealed record RaceThread(string Name, Action Body);

/// <summary>Thrown at a schedule point to unwind a logical thread of an execution the scheduler stopped.</summary>
internal sealed class ExecutionAbortedException() : Exception("the controlled execution was stopped");

/// <summary>What one controlled execution did.</summary>
internal sealed class ExecutionResult
{
    /// <summary>The chosen thread id of every decision (replay with <see cref="ReplayStrategy"/>).</summary>
    public required int[] Choices { get; init; }

    /// <summary><see cref="Choices"/> as text (see <see cref="Schedule"/>).</summary>
    public string Schedule => Scheduling.Schedule.Format(Choices);

    /// <summary>The schedule points passed, in order, as "thread: site" (capped).</summary>
    public required IReadOnlyList<string> Trace { get; init; }

    /// <summary>Schedule points passed.</summary>
    public int Steps { get; init; }

    /// <summary>The first violation: a thread's exception, a failed check, a deadlock, a livelock or an uncontrolled
    /// block; null when the execution passed.</summary>
    public string? Failure { get; set; }

    /// <summary>True when logical threads never finished (an uncontrolled block) and were abandoned.</summary>
    public bool Abandoned { get; init; }

    /// <summary>True when the scheduler stopped the execution (deadlock, livelock, divergence): its threads unwound
    /// from their schedule points with <see cref="ExecutionAbortedException"/>, so the world may be inconsistent.</summary>
    public bool Aborted { get; init; }

    /// <summary>The trace as one string, one step a line.</summary>
    public string FormatTrace() => string.Join(Environment.NewLine, Trace);
}

/// <summary>
/// Runs logical threads on real threads but lets exactly one run at a time, switching only at
/// <see cref="SchedulePoint"/> hooks, where an <see cref="ISchedulingStrategy"/> decides who runs next (kernel
/// counterpart: none; the approach is that of CHESS and Coyote's systematic testing). See docs/races.md.
/// </summary>
/// <remarks>
/// <para><b>Blocking.</b> A thread at a <c>Before…</c> hook whose probe says it would block is <i>blocked</i>: not
/// offered to the strategy until some thread passed another point or finished (the epoch moved), then offered again
/// and re-probed when chosen. No thread enabled while some are unfinished is a deadlock. Blocking on a lock that has no hook (or
/// holding such a lock across a point another thread may need it at) stalls the run: a watchdog reports it as an
/// uncontrolled block after <c>hangTimeout</c> of no progress and lets the threads run free so they can finish. Tests
/// avoid it with the <c>atomic</c> guard: while it returns true on the running thread, points are not decisions.</para>
/// <para><b>Locking.</b> The baton: only the logical thread released through its gate runs; every field below is
/// touched only by the baton holder (the gates' release/wait pairs order the accesses), except <c>_freeRun</c>,
/// <c>_progress</c> and <c>_done</c> (volatile/interlocked, read by the watchdog). One controlled run at a time per
/// process (<c>s_runGate</c>).</para>
/// </remarks>
internal sealed class ControlledScheduler
{
    private const int TraceCap = 4096;
    private static readonly Lock s_runGate = new();

    [ThreadStatic] private static LogicalThread? t_self;

    private readonly ISchedulingStrategy _strategy;
    private readonly Func<bool>? _atomic;
    private readonly int _maxSteps;
    private readonly List<LogicalThread> _threads = [];
    private readonly List<int> _choices = [];
    private readonly List<string> _trace = [];
    private readonly ManualResetEventSlim _finished = new(false);
    private int[] _enabled = [];
    private long _epoch;
    private int _steps;
    private string _site = "start";
    private string? _failure;        // first scheduler-detected failure (deadlock, livelock, uncontrolled block)
    private volatile bool _freeRun;  // set once; then every hook passes and threads run unscheduled
    private volatile bool _aborting; // set once with _freeRun: parked threads unwind with ExecutionAbortedException
    private int _progress;           // Interlocked; bumped at every point, read by the watchdog
    private int _done;               // Interlocked; finished logical threads

    private ControlledScheduler(ISchedulingStrategy strategy, Func<bool>? atomic, int maxSteps)
    {
        _strategy = strategy;
        _atomic = atomic;
        _maxSteps = maxSteps;
    }

    /// <summary>
    /// Runs <paramref name="threads"/> to completion under <paramref name="strategy"/> (which must have begun an
    /// execution). Returns when every logical thread finished, or after a stall was reported and the threads were
    /// released or abandoned.
    /// </summary>
    /// <param name="threads">The logical threads; ids are their indices.</param>
    /// <param name="strategy">Decides every switch.</param>
    /// <param name="atomic">Optional guard evaluated on the running thread at plain points: true = not a decision.</param>
    /// <param name="maxSteps">Points after which the execution is reported as a livelock.</param>
    /// <param name="hangTimeout">No-progress time after which a stall is reported (a guard, not a measurement).</param>
    /// <returns>The schedule, the trace and any failure.</returns>
    public static ExecutionResult Run(IReadOnlyList<RaceThread> threads, ISchedulingStrategy strategy, Func<bool>? atomic, int maxSteps, TimeSpan hangTimeout)
    {
        ArgumentOutOfRangeException.ThrowIfZero(threads.Count);
        var s = new ControlledScheduler(strategy, atomic, maxSteps);
        using (s_runGate.EnterScope())
        {
            return s.RunLocked(threads, hangTimeout);
        }
    }

    private ExecutionResult RunLocked(IReadOnlyList<RaceThread> threads, TimeSpan hangTimeout)
    {
        _enabled = new int[threads.Count];
        for (int i = 0; i < threads.Count; i++)
        {
            var lt = new LogicalThread(this, i, threads[i].Name, threads[i].Body);
            lt.Thread = new Thread(lt.Main) { IsBackground = true, Name = "race:" + threads[i].Name };
            _threads.Add(lt);
        }
        SchedulePoint.s_active = this;
        bool abandoned = false;
        try
        {
            foreach (LogicalThread lt in _threads)
            {
                lt.Thread!.Start();
            }
            LogicalThread? first = Choose(null);
            Debug.Assert(first is not null);
            first.Gate.Release();
            abandoned = !WaitForFinish(hangTimeout);
        }
        finally
        {
            if (!abandoned)
            {
                foreach (LogicalThread lt in _threads)
                {
                    lt.Thread!.Join();
                }
            }
            SchedulePoint.s_active = null;
        }
        string? failure = _failure;
        foreach (LogicalThread lt in _threads)
        {
            if (lt.Error is not null)
            {
                failure ??= $"thread {lt.Id} ({lt.Name}) threw {lt.Error.GetType().Name}: {lt.Error.Message}";
            }
        }
        return new ExecutionResult
        {
            Choices = [.. _choices],
            Trace = [.. _trace],
            Steps = _steps,
            Failure = failure,
            Abandoned = abandoned,
            Aborted = _aborting,
        };
    }

    /// <summary>Waits for the run; on a stall reports it and frees the threads. False when they never finished.</summary>
    private bool WaitForFinish(TimeSpan hangTimeout)
    {
        int seen = Volatile.Read(ref _progress);
        var quiet = Stopwatch.StartNew();
        bool released = false;
        while (!_finished.Wait(20))
        {
            int now = Volatile.Read(ref _progress);
            if (now != seen)
            {
                seen = now;
                quiet.Restart();
                continue;
            }
            if (quiet.Elapsed < hangTimeout)
            {
                continue;
            }
            if (released)
            {
                return false;
            }
            LogicalThread? running = _threads.FirstOrDefault(t => t.State != RunState.Done && t.Running);
            Fail($"uncontrolled block: thread {running?.Name ?? "?"} made no progress for {hangTimeout.TotalMilliseconds:0} ms after '{running?.Site ?? _site}' " +
                 "(it waits on a lock or condition without a schedule point, or one held across a point); threads released to run free");
            EnterFreeRun();
            released = true;
            quiet.Restart();
        }
        return true;
    }

    // ---- hooks (called through SchedulePoint) -------------------------------------------------------------------

    /// <summary>A plain point.</summary>
    internal void OnPoint(string site)
    {
        LogicalThread? self = t_self;
        if (self is null || self.Owner != this || _freeRun)
        {
            return;
        }
        Record(self, site);
        if (_atomic is not null && _atomic())
        {
            return;
        }
        Switch(self);
    }

    /// <summary>A point before an acquisition or wait that proceeds at once only when <paramref name="probe"/> holds.</summary>
    internal void OnAcquire<TState>(string site, Func<TState, bool> probe, TState state)
    {
        LogicalThread? self = t_self;
        if (self is null || self.Owner != this || _freeRun)
        {
            return;
        }
        Record(self, site);
        if (probe(state))
        {
            if (_atomic is not null && _atomic())
            {
                return;
            }
        }
        else
        {
            self.Block(_epoch);
        }
        Switch(self);
        while (!_freeRun && !probe(state))
        {
            self.Block(_epoch);
            Switch(self);
        }
        self.State = RunState.Runnable;
    }

    // ---- the baton ----------------------------------------------------------------------------------------------

    /// <summary>Counts a point; stops the execution when the step budget is exhausted.</summary>
    private void Record(LogicalThread self, string site)
    {
        _steps++;
        _epoch++;
        _site = site;
        self.Site = site;
        Interlocked.Increment(ref _progress);
        if (_trace.Count < TraceCap)
        {
            _trace.Add($"{_steps,5} {self.Name}: {site}");
        }
        if (_steps > _maxSteps)
        {
            Fail($"livelock: more than {_maxSteps} schedule points (last '{site}' in {self.Name})");
            Abort();
            throw new ExecutionAbortedException();
        }
    }

    /// <summary>Takes a decision at <paramref name="self"/>'s point and hands the baton over if another thread wins.</summary>
    private void Switch(LogicalThread self)
    {
        LogicalThread? next;
        try
        {
            next = Choose(self);
        }
        catch (ScheduleDivergedException e)
        {
            Fail("schedule diverged: " + e.Message);
            Abort();
            throw new ExecutionAbortedException();
        }
        if (next is null)
        {
            Fail($"deadlock: no thread can run ({Describe()})");
            Abort();
            throw new ExecutionAbortedException();
        }
        if (next == self)
        {
            return;
        }
        self.Running = false;
        next.Running = true;
        next.Gate.Release();
        self.Gate.Wait();
        if (_aborting)
        {
            throw new ExecutionAbortedException();
        }
    }

    /// <summary>Asks the strategy; null when no thread is enabled.</summary>
    private LogicalThread? Choose(LogicalThread? self)
    {
        int n = 0;
        foreach (LogicalThread t in _threads)
        {
            if (t.State == RunState.Runnable || (t.State == RunState.Blocked && t.BlockedEpoch != _epoch))
            {
                _enabled[n++] = t.Id;
            }
        }
        if (n == 0)
        {
            return null;
        }
        int current = self is not null && self.State == RunState.Runnable ? self.Id : -1;
        int id = _strategy.Choose(new SchedulingDecision(_enabled.AsSpan(0, n), current, _choices.Count, _site));
        if (Array.IndexOf(_enabled, id, 0, n) < 0)
        {
            throw new InvalidOperationException($"strategy {_strategy.Description} chose thread {id}, which cannot run");
        }
        _choices.Add(id);
        LogicalThread next = _threads[id];
        if (_trace.Count < TraceCap && (self is null || next != self))
        {
            _trace.Add($"      -> {next.Name}");
        }
        return next;
    }

    private void Finish(LogicalThread self)
    {
        self.State = RunState.Done;
        _epoch++; // finishing is progress: the thread may have released a lock after its last point
        Interlocked.Increment(ref _progress);
        if (!_freeRun)
        {
            LogicalThread? next = null;
            try
            {
                next = Choose(self);
            }
            catch (ScheduleDivergedException e)
            {
                Fail("schedule diverged: " + e.Message);
                Abort();
            }
            if (next is not null)
            {
                self.Running = false;
                next.Running = true;
                next.Gate.Release();
            }
            else if (!_freeRun && _threads.Any(t => t.State != RunState.Done))
            {
                Fail($"deadlock: no thread can run after {self.Name} finished ({Describe()})");
                Abort();
            }
        }
        if (Interlocked.Increment(ref _done) == _threads.Count)
        {
            _finished.Set();
        }
    }

    private void Fail(string message) => _failure ??= message;

    /// <summary>Ends a failed execution: every parked thread wakes and unwinds with <see cref="ExecutionAbortedException"/>.</summary>
    private void Abort()
    {
        _aborting = true;
        EnterFreeRun();
    }

    private void EnterFreeRun()
    {
        if (_freeRun)
        {
            return;
        }
        _freeRun = true;
        foreach (LogicalThread t in _threads)
        {
            t.Gate.Release();
        }
    }

    private string Describe() => string.Join(", ", _threads.Select(t => $"{t.Name} {t.State} at '{t.Site}'"));

    private enum RunState
    {
        Runnable,
        Blocked,
        Done,
    }

    private sealed class LogicalThread(ControlledScheduler owner, int id, string name, Action body)
    {
        public ControlledScheduler Owner { get; } = owner;
        public int Id { get; } = id;
        public string Name { get; } = name;
        public SemaphoreSlim Gate { get; } = new(0);
        public Thread? Thread { get; set; }
        public RunState State { get; set; }
        public long BlockedEpoch { get; private set; }
        public string Site { get; set; } = "start";
        public bool Running { get; set; }
        public Exception? Error { get; private set; }

        public void Block(long epoch)
        {
            State = RunState.Blocked;
            BlockedEpoch = epoch;
        }

        public void Main()
        {
            t_self = this;
            Gate.Wait();
            Running = true;
            try
            {
                body();
            }
            catch (ExecutionAbortedException)
            {
                // the execution already failed (deadlock, livelock, divergence); unwinding is expected
            }
            catch (Exception e)
            {
                Error = e;
            }
            finally
            {
                Owner.Finish(this);
                t_self = null;
            }
        }
    }
}
