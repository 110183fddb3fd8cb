namespace Hetmem.Cli.Workloads;

/// <summary>Workloads by name, in registration order.</summary>
/// <remarks>Thread-safe; registration normally happens once at start-up.</remarks>
public sealed class WorkloadRegistry
{
    private readonly object _lock = new();
    private readonly List<IWorkload> _workloads = [];   // guarded by _lock

    /// <summary>The workloads, in registration order.</summary>
    public IReadOnlyList<IWorkload> All
    {
        get
        {
            lock (_lock)
            {
                return [.. _workloads];
            }
        }
    }

    /// <summary>The names, in registration order.</summary>
    public IReadOnlyList<string> Names => [.. All.Select(w => w.Name)];

    /// <summary>Number of workloads.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _workloads.Count;
            }
        }
    }

    /// <summary>Adds <paramref name="workload"/>; a workload of the same name is replaced in place.</summary>
    /// <exception cref="ArgumentException">When the name is empty or contains white space.</exception>
    public void Add(IWorkload workload)
    {
        ArgumentNullException.ThrowIfNull(workload);
        if (string.IsNullOrWhiteSpace(workload.Name) || workload.Name.Any(char.IsWhiteSpace))
        {
            throw new ArgumentException($"workload name '{workload.Name}' must be non-empty and contain no white space", nameof(workload));
        }
        lock (_lock)
        {
            int i = _workloads.FindIndex(w => string.Equals(w.Name, workload.Name, StringComparison.OrdinalIgnoreCase));
            if (i >= 0)
            {
                _workloads[i] = workload;
            }
            else
            {
                _workloads.Add(workload);
            }
        }
    }

    /// <summary>Adds a workload made of a delegate.</summary>
    public void Add(string name, string description, Func<WorkloadContext, WorkloadResult> run) =>
        Add(new DelegateWorkload(name, description, run));

    /// <summary>Finds a workload by name (case-insensitive).</summary>
    public bool TryGet(string name, out IWorkload workload)
    {
        lock (_lock)
        {
            IWorkload? w = _workloads.Find(x => string.Equals(x.Name, name, StringComparison.OrdinalIgnoreCase));
            workload = w!;
            return w is not null;
        }
    }
}
