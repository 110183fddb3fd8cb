namespace Hetmem.Diagnostics.Scheduling;

/// <summary>One scheduling decision: which logical thread runs next.</summary>
/// <param name="enabled">Ids of the logical threads that may run, ascending.</param>
/// <param name="current">Id of the thread at the point when it may go on running (continuing it is not a
/// preemption), or -1 when it finished, blocked, or the run is starting.</param>
/// <param name="decision">Index of this decision in the execution (0-based).</param>
/// <param name="site">The schedule point the decision is taken at.</param>
internal readonly ref struct SchedulingDecision(ReadOnlySpan<int> enabled, int current, int decision, string site)
{
    /// <summary>Ids of the logical threads that may run, ascending.</summary>
    public ReadOnlySpan<int> Enabled { get; } = enabled;

    /// <summary>The thread that may continue without a preemption, or -1.</summary>
    public int Current { get; } = current;

    /// <summary>Index of the decision in the execution.</summary>
    public int Decision { get; } = decision;

    /// <summary>The schedule point.</summary>
    public string Site { get; } = site;

    /// <summary>The choice that costs no preemption: the current thread, else the lowest enabled id.</summary>
    public int Default => Current >= 0 ? Current : Enabled[0];
}

/// <summary>Chooses interleavings for a <see cref="ControlledScheduler"/>, one execution after another.</summary>
internal interface ISchedulingStrategy
{
    /// <summary>A short description with the parameters needed to reproduce it (seed, bound).</summary>
    string Description { get; }

    /// <summary>Prepares the next execution.</summary>
    /// <returns>False when the strategy has nothing left to explore.</returns>
    bool BeginExecution();

    /// <summary>Picks the thread that runs next.</summary>
    /// <param name="decision">The enabled threads and the context.</param>
    /// <returns>One of <see cref="SchedulingDecision.Enabled"/>.</returns>
    int Choose(in SchedulingDecision decision);
}

/// <summary>
/// The run-time of the program under test depended on something other than the schedule (a timer, a hash order,
/// an uncontrolled thread): a replayed prefix offered a different set of enabled threads.
/// </summary>
internal sealed class ScheduleDivergedException(string message) : Exception(message);

/// <summary>
/// Systematic depth-first enumeration of the interleavings with at most <c>bound</c> preemptions (a switch away from
/// a thread that could have continued), in the style of CHESS's iterative context bounding: every execution differs
/// from all earlier ones in at least one decision, and the exploration ends when all schedules within the bound have
/// run or <c>maxExecutions</c> is reached.
/// </summary>
internal sealed class BoundedDfsStrategy(int preemptionBound, int maxExecutions) : ISchedulingStrategy
{
    private readonly List<Node> _stack = [];
    private int _depth;
    private bool _started;

    /// <inheritdoc/>
    public string Description => $"dfs(preemption bound {preemptionBound}, max {maxExecutions} executions)";

    /// <summary>Executions begun so far.</summary>
    public int Executions { get; private set; }

    /// <summary>True when every schedule within the bound was explored.</summary>
    public bool Exhausted { get; private set; }

    /// <inheritdoc/>
    public bool BeginExecution()
    {
        if (Exhausted || Executions >= maxExecutions)
        {
            return false;
        }
        if (_started && !Backtrack())
        {
            Exhausted = true;
            return false;
        }
        _started = true;
        _depth = 0;
        Executions++;
        return true;
    }

    /// <inheritdoc/>
    public int Choose(in SchedulingDecision decision)
    {
        Node node;
        if (_depth < _stack.Count)
        {
            node = _stack[_depth];
            if (!node.Matches(decision))
            {
                throw new ScheduleDivergedException(
                    $"decision {_depth} at '{decision.Site}': enabled [{string.Join(",", decision.Enabled.ToArray())}] current {decision.Current}, " +
                    $"but the replayed prefix had [{string.Join(",", node.Alternatives.OrderBy(x => x))}] current {node.Current}");
            }
        }
        else
        {
            int before = _depth == 0 ? 0 : _stack[_depth - 1].PreemptionsAfter;
            node = new Node(decision, before);
            _stack.Add(node);
        }
        _depth++;
        return node.Alternatives[node.K];
    }

    private bool Backtrack()
    {
        for (int i = _stack.Count - 1; i >= 0; i--)
        {
            Node node = _stack[i];
            for (int k = node.K + 1; k < node.Alternatives.Length; k++)
            {
                if (node.PreemptionsBefore + node.Cost(k) <= preemptionBound)
                {
                    node.K = k;
                    _stack.RemoveRange(i + 1, _stack.Count - i - 1);
                    return true;
                }
            }
        }
        _stack.Clear();
        return false;
    }

    private sealed class Node
    {
        public Node(in SchedulingDecision d, int preemptionsBefore)
        {
            Current = d.Current;
            PreemptionsBefore = preemptionsBefore;
            Alternatives = new int[d.Enabled.Length];
            int n = 0;
            int first = d.Default;
            Alternatives[n++] = first;
            foreach (int id in d.Enabled)
            {
                if (id != first)
                {
                    Alternatives[n++] = id;
                }
            }
        }

        public int[] Alternatives { get; }   // default first, then ascending ids
        public int Current { get; }
        public int PreemptionsBefore { get; }
        public int K { get; set; }
        public int PreemptionsAfter => PreemptionsBefore + Cost(K);

        public int Cost(int k) => Current >= 0 && Alternatives[k] != Current ? 1 : 0;

        public bool Matches(in SchedulingDecision d)
        {
            if (d.Current != Current || d.Enabled.Length != Alternatives.Length)
            {
                return false;
            }
            foreach (int id in d.Enabled)
            {
                if (Array.IndexOf(Alternatives, id) < 0)
                {
                    return false;
                }
            }
            return true;
        }
    }
}

/// <summary>A seeded random walk: at every decision an enabled thread is picked uniformly.</summary>
internal sealed class RandomWalkStrategy(int seed, int executions) : ISchedulingStrategy
{
    private readonly Random _random = new(seed);
    private int _begun;

    /// <inheritdoc/>
    public string Description => $"random(seed {seed}, {executions} executions)";

    /// <inheritdoc/>
    public bool BeginExecution() => _begun++ < executions;

    /// <inheritdoc/>
    public int Choose(in SchedulingDecision decision) => decision.Enabled[_random.Next(decision.Enabled.Length)];
}

/// <summary>
/// Probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010): random distinct thread priorities, the highest
/// enabled priority runs, and at <c>depth - 1</c> random decisions the running thread drops to a low priority. Finds a
/// bug of depth d with probability at least 1/(n·k^(d-1)) per execution.
/// </summary>
internal sealed class PctStrategy(int seed, int executions, int depth) : ISchedulingStrategy
{
    private readonly Random _random = new(seed);
    private readonly Dictionary<int, int> _priority = [];
    private readonly List<int> _changePoints = [];
    private int _begun;
    private int _maxDecisions = 64;   // estimate of k, the decisions in an execution; grows as executions run
    private int _decisions;

    /// <inheritdoc/>
    public string Description => $"pct(seed {seed}, depth {depth}, {executions} executions)";

    /// <inheritdoc/>
    public bool BeginExecution()
    {
        if (_begun++ >= executions)
        {
            return false;
        }
        _maxDecisions = Math.Max(_maxDecisions, _decisions);
        _decisions = 0;
        _priority.Clear();
        _changePoints.Clear();
        for (int i = 0; i < depth - 1; i++)
        {
            _changePoints.Add(_random.Next(_maxDecisions));
        }
        return true;
    }

    /// <inheritdoc/>
    public int Choose(in SchedulingDecision decision)
    {
        foreach (int id in decision.Enabled)
        {
            if (!_priority.ContainsKey(id))
            {
                _priority[id] = depth + _random.Next(1 << 20); // high band, above every change-point priority
            }
        }
        int at = _changePoints.IndexOf(_decisions);
        if (at >= 0 && decision.Current >= 0)
        {
            _priority[decision.Current] = at;                  // low band: [0, depth - 1)
        }
        _decisions++;
        int best = decision.Enabled[0];
        foreach (int id in decision.Enabled)
        {
            if (_priority[id] > _priority[best])
            {
                best = id;
            }
        }
        return best;
    }
}

/// <summary>
/// Replays a recorded schedule exactly; after its end the default (non-preemptive) choice is taken. A recorded thread
/// that cannot run is a divergence, unless <c>lenient</c> (for replaying one program's schedule on a variant of it),
/// which then takes the default choice.
/// </summary>
internal sealed class ReplayStrategy(IReadOnlyList<int> choices, bool lenient = false) : ISchedulingStrategy
{
    private int _next;
    private bool _begun;

    /// <inheritdoc/>
    public string Description => $"replay({Schedule.Format(choices)})";

    /// <inheritdoc/>
    public bool BeginExecution()
    {
        if (_begun)
        {
            return false;
        }
        _begun = true;
        return true;
    }

    /// <inheritdoc/>
    public int Choose(in SchedulingDecision decision)
    {
        int i = _next++;
        if (i >= choices.Count)
        {
            return decision.Default;
        }
        int id = choices[i];
        if (!decision.Enabled.Contains(id))
        {
            if (lenient)
            {
                return decision.Default;
            }
            throw new ScheduleDivergedException(
                $"replay decision {i} at '{decision.Site}' wants thread {id} but only [{string.Join(",", decision.Enabled.ToArray())}] can run");
        }
        return id;
    }
}

/// <summary>The textual form of a schedule: the chosen logical-thread id of every decision, e.g. <c>0.0.1.1.0</c>.</summary>
internal static class Schedule
{
    /// <summary>Formats a choice sequence.</summary>
    public static string Format(IReadOnlyList<int> choices) => string.Join('.', choices);

    /// <summary>Parses <see cref="Format"/>'s output.</summary>
    /// <exception cref="FormatException">When the text is not a dot-separated list of ids.</exception>
    public static int[] Parse(string text)
        => text.Length == 0 ? [] : text.Split('.').Select(s => int.Parse(s, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
}
