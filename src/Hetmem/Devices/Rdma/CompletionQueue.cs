namespace Hetmem.Devices.Rdma;

/// <summary>
/// A completion queue (rdma-core: struct ibv_cq; ibv_create_cq, ibv_poll_cq). A fixed ring of
/// <see cref="WorkCompletion"/>s filled by queue pairs and drained by <see cref="Poll"/>.
/// </summary>
/// <remarks>
/// Locking: <c>_lock</c> (a leaf) protects the ring; waiters of <see cref="Wait"/> sleep on its monitor. Adding and
/// polling allocate nothing. A full ring is an overrun (kernel: IB_EVENT_CQ_ERR): the completion is dropped and
/// <see cref="Overruns"/> counts it.
/// </remarks>
public sealed class CompletionQueue
{
    private readonly object _lock = new();
    private readonly WorkCompletion[] _ring;   // guarded by _lock
    private int _head;                         // guarded by _lock: next to poll
    private int _count;                        // guarded by _lock
    private long _overruns;                    // guarded by _lock

    internal CompletionQueue(RdmaDevice device, int cqe)
    {
        Device = device;
        _ring = new WorkCompletion[cqe];
    }

    /// <summary>The device.</summary>
    public RdmaDevice Device { get; }

    /// <summary>Capacity (cqe).</summary>
    public int Capacity => _ring.Length;

    /// <summary>Completions waiting to be polled.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _count;
            }
        }
    }

    /// <summary>Completions dropped because the ring was full (a CQ overrun).</summary>
    public long Overruns
    {
        get
        {
            lock (_lock)
            {
                return _overruns;
            }
        }
    }

    /// <summary>Moves up to <paramref name="wc"/>.Length completions into <paramref name="wc"/>, oldest first (ibv_poll_cq).</summary>
    /// <returns>The number of completions written (0 when the queue is empty).</returns>
    public int Poll(Span<WorkCompletion> wc)
    {
        lock (_lock)
        {
            int n = Math.Min(wc.Length, _count);
            for (int i = 0; i < n; i++)
            {
                wc[i] = _ring[_head];
                _head = (_head + 1) % _ring.Length;
            }
            _count -= n;
            return n;
        }
    }

    /// <summary>Polls one completion (ibv_poll_cq with num_entries = 1).</summary>
    public bool TryPoll(out WorkCompletion wc)
    {
        lock (_lock)
        {
            if (_count == 0)
            {
                wc = default;
                return false;
            }
            wc = _ring[_head];
            _head = (_head + 1) % _ring.Length;
            _count--;
            return true;
        }
    }

    /// <summary>
    /// Waits up to <paramref name="timeout"/> for one completion and polls it (ibv_req_notify_cq + ibv_get_cq_event +
    /// ibv_poll_cq in one call).
    /// </summary>
    /// <exception cref="MmException">ETIMEDOUT when nothing completed in time.</exception>
    public WorkCompletion Wait(TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        lock (_lock)
        {
            while (_count == 0)
            {
                long left = deadline - Environment.TickCount64;
                if (left <= 0)
                {
                    MmException.Throw(Errno.ETIMEDOUT, $"no completion on the CQ within {timeout.TotalMilliseconds} ms");
                }
                Monitor.Wait(_lock, (int)Math.Min(left, int.MaxValue));
            }
            WorkCompletion wc = _ring[_head];
            _head = (_head + 1) % _ring.Length;
            _count--;
            return wc;
        }
    }

    internal void Add(in WorkCompletion wc)
    {
        lock (_lock)
        {
            if (_count == _ring.Length)
            {
                _overruns++;
                return;
            }
            _ring[(_head + _count) % _ring.Length] = wc;
            _count++;
            Monitor.PulseAll(_lock);
        }
    }
}
