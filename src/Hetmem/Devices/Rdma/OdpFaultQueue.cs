using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Devices.Rdma;

/// <summary>One page-fault record (kernel: struct mlx5_pagefault from the device's mempool).</summary>
internal sealed class OdpFaultWork
{
    internal readonly ManualResetEventSlim Done = new(false);
    internal OdpRegionBase? Region;     // the region; the work holds one use of it
    internal OdpUmem? Umem;             // demand faults: the span that missed; null for prefetch advice
    internal ulong Start;               // demanded bytes
    internal ulong End;
    internal ulong PrefetchEnd;         // demand faults: prefetch [End, PrefetchEnd) after resuming
    internal OdpFaultKind Kind;
    internal bool Advice;               // an ibv_advise_mr prefetch (counted as page_prefetch)
    internal Errno Result;              // valid once Done is set
    internal int Refs;                  // Interlocked: the worker and, when someone waits, the waiter
}

/// <summary>
/// The device's page-fault worker (kernel: the mlx5 page-fault event queue and its WQ_HIGHPRI workqueue, with a
/// mempool of 64 fault records). The responder queues a fault and backs off; the worker faults the demanded bytes,
/// resumes the waiter, and only then prefetches ahead (mlx5_ib_mr_rdma_pfault_handler). It also runs ibv_advise_mr
/// work and destroys emptied implicit children.
/// </summary>
/// <remarks>
/// Locking: <c>_lock</c> is a leaf protecting the queue and the free records; the worker never holds it while
/// faulting. <see cref="Kick"/> may be called from an invalidate callback (under a span lock): it only pulses.
/// </remarks>
internal sealed class OdpFaultQueue : IDisposable
{
    /// <summary>Fault records (kernel: MLX5_IB_NUM_PF_DRAIN … the 64-entry pagefault mempool).</summary>
    internal const int Records = 64;
    /// <summary>Largest prefetch after a remote fault (kernel: MAX_PREFETCH_LEN = 4 MiB).</summary>
    internal const ulong MaxPrefetch = 4UL << 20;

    private readonly object _lock = new();
    private readonly Queue<OdpFaultWork> _queue = new(Records);     // guarded by _lock
    private readonly Stack<OdpFaultWork> _free = new(Records);      // guarded by _lock
    private readonly RdmaDevice _device;
    private readonly Thread _worker;
    private bool _kicked;                                            // guarded by _lock
    private bool _stopping;                                          // guarded by _lock
    private bool _busy;                                              // guarded by _lock: the worker holds a work
    private long _faults;                                            // Interlocked
    private long _prefetches;                                        // Interlocked

    internal OdpFaultQueue(RdmaDevice device)
    {
        _device = device;
        for (int i = 0; i < Records; i++)
        {
            _free.Push(new OdpFaultWork());
        }
        _worker = new Thread(Run) { IsBackground = true, Name = $"{device.Name} odp-pf" };
        _worker.Start();
    }

    /// <summary>Demand faults serviced.</summary>
    internal long Faults => Interlocked.Read(ref _faults);

    /// <summary>Prefetches run after a demand fault.</summary>
    internal long Prefetches => Interlocked.Read(ref _prefetches);

    /// <summary>
    /// Queues a fault on <paramref name="region"/> (which the caller holds a use of; the work takes its own). Waits for
    /// a free record. With <paramref name="waiter"/> the caller must <see cref="Complete"/> the returned work after
    /// reading its result; without, the work is fire-and-forget.
    /// </summary>
    /// <returns>The work, or null when the queue is stopping or the region is being deregistered.</returns>
    internal OdpFaultWork? Submit(OdpRegionBase region, OdpUmem? umem, ulong start, ulong end, ulong prefetchEnd, OdpFaultKind kind, bool advice, bool waiter)
    {
        if (!region.TryAcquire())
        {
            return null;
        }
        OdpFaultWork w;
        lock (_lock)
        {
            while (_free.Count == 0 && !_stopping)
            {
                Monitor.Wait(_lock);
            }
            if (_stopping)
            {
                region.Release();
                return null;
            }
            w = _free.Pop();
            w.Done.Reset();
            w.Region = region;
            w.Umem = umem;
            w.Start = start;
            w.End = end;
            w.PrefetchEnd = prefetchEnd;
            w.Kind = kind;
            w.Advice = advice;
            w.Result = Errno.Ok;
            w.Refs = waiter ? 2 : 1;
            _queue.Enqueue(w);
            Monitor.PulseAll(_lock);
        }
        return w;
    }

    /// <summary>Drops the waiter's hold on <paramref name="w"/>.</summary>
    internal void Complete(OdpFaultWork w) => Unref(w);

    /// <summary>Wakes the worker to collect emptied implicit children. Safe inside an invalidate callback.</summary>
    internal void Kick()
    {
        lock (_lock)
        {
            _kicked = true;
            Monitor.PulseAll(_lock);
        }
    }

    private void Unref(OdpFaultWork w)
    {
        if (Interlocked.Decrement(ref w.Refs) != 0)
        {
            return;
        }
        w.Region = null;
        w.Umem = null;
        lock (_lock)
        {
            _free.Push(w);
            Monitor.PulseAll(_lock);
        }
    }

    private void Run()
    {
        TraceTrack track = TraceLog.RegisterTrack($"{_device.Name} odp", "devices");
        while (true)
        {
            OdpFaultWork? w = null;
            bool collect;
            lock (_lock)
            {
                while (_queue.Count == 0 && !_kicked && !_stopping)
                {
                    Monitor.Wait(_lock);
                }
                if (_stopping && _queue.Count == 0)
                {
                    return;
                }
                collect = _kicked;
                _kicked = false;
                if (_queue.Count != 0)
                {
                    w = _queue.Dequeue();
                }
                _busy = true;
            }
            try
            {
                if (collect)
                {
                    _device.CollectEmptyChildren();
                }
                if (w is not null)
                {
                    Service(w, track);
                }
            }
            finally
            {
                lock (_lock)
                {
                    _busy = false;
                    Monitor.PulseAll(_lock);
                }
            }
        }
    }

    /// <summary>
    /// Waits until the worker has nothing queued and is not servicing anything, including the prefetch that runs
    /// after a resumed demand fault (kernel analogue: flush_workqueue on the page-fault workqueue).
    /// </summary>
    /// <returns>False when <paramref name="timeout"/> passed first.</returns>
    internal bool WaitIdle(TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        lock (_lock)
        {
            while (_queue.Count != 0 || _busy || _kicked)
            {
                long left = deadline - Environment.TickCount64;
                if (left <= 0 || _stopping)
                {
                    return false;
                }
                Monitor.Wait(_lock, (int)Math.Min(left, int.MaxValue));
            }
            return true;
        }
    }

    private void Service(OdpFaultWork w, TraceTrack track)
    {
        OdpRegionBase region = w.Region!;
        bool resumed = false;
        try
        {
            if (w.Advice)
            {
                using (TraceLog.Span(track, TraceCategory.DeviceFault, "odp advise", TraceArg.Address(w.Start), TraceArg.Bytes((long)(w.End - w.Start))))
                {
                    w.Result = region.Prefetch(w.Start, w.End, w.Kind);
                }
                resumed = true;
                w.Done.Set();
                Unref(w);
                return;
            }
            OdpUmem umem = w.Umem!;
            ulong start = w.Start;
            ulong end = w.End;
            ulong prefetchEnd = w.PrefetchEnd;
            OdpFaultKind kind = w.Kind;
            Errno e;
            bool raced;
            using (TraceLog.Span(track, TraceCategory.DeviceFault, "odp fault", TraceArg.Address(start), TraceArg.Pages((long)((end - start) >> Page.Shift))))
            {
                e = umem.Fault(start, end, kind, out raced);
            }
            if (e == Errno.Ok)
            {
                region.Stats.AddFault((long)((Page.AlignUp(end, Page.Size) - Page.AlignDown(start, Page.Size)) >> Page.Shift));
                Interlocked.Increment(ref _faults);
            }
            // Resume the requester first (kernel: mlx5_ib_page_fault_resume), then prefetch with the record given back.
            w.Result = e;
            resumed = true;
            w.Done.Set();
            Unref(w);
            if (e == Errno.Ok && !raced && prefetchEnd > end)
            {
                using (TraceLog.Span(track, TraceCategory.DeviceFault, "odp prefetch", TraceArg.Address(end), TraceArg.Pages((long)((prefetchEnd - end) >> Page.Shift))))
                {
                    if (umem.Fault(end, prefetchEnd, kind, out _) == Errno.Ok)
                    {
                        region.Stats.AddFault((long)((Page.AlignUp(prefetchEnd, Page.Size) - Page.AlignUp(end, Page.Size)) >> Page.Shift));
                        Interlocked.Increment(ref _prefetches);
                    }
                }
            }
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            _device.ReportInternalError(ex);
            if (!resumed)
            {
                w.Result = Errno.EFAULT;
                w.Done.Set();
                Unref(w);
            }
        }
        finally
        {
            region.Release();
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _stopping = true;
            Monitor.PulseAll(_lock);
        }
        _worker.Join();
    }
}
