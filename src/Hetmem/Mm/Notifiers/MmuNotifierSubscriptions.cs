using System.Diagnostics;
using Hetmem.Diagnostics;

namespace Hetmem.Mm;

/// <summary>
/// The notifier state of one address space: interval subscriptions with their sequence protocol and
/// classic subscriptions (kernel: struct mmu_notifier_subscriptions, mm/mmu_notifier.c).
/// </summary>
/// <remarks>
/// Locking: <c>_lock</c> protects the interval list, <c>_invalidateSeq</c>, <c>_activeRanges</c> and the
/// deferred list; it is never held while a callback runs. <c>_classic</c> is a copy-on-write array replaced
/// under <c>_lock</c> and read lock-free. Waiters (read_begin, remove) wait on <c>_lock</c>'s monitor.
/// </remarks>
public sealed class MmuNotifierSubscriptions
{
    private readonly object _lock = new();
    private readonly AddressSpace _space;
    private readonly List<MmuIntervalNotifier> _intervals = [];             // guarded by _lock
    private readonly List<(MmuIntervalNotifier Sub, bool Add)> _deferred = []; // guarded by _lock
    private MmuIntervalNotifier[] _intervalSnapshot = [];                   // copy-on-write under _lock
    private MmuNotifier[] _classic = [];                                    // copy-on-write under _lock
    private long _invalidateSeq = 2;                                        // guarded by _lock; even = idle
    private int _activeRanges;                                              // guarded by _lock

    internal MmuNotifierSubscriptions(AddressSpace space) => _space = space;

    /// <summary>The address-space sequence (even when no invalidation touching an interval notifier is active).</summary>
    public long InvalidateSeq
    {
        get
        {
            lock (_lock)
            {
                return _invalidateSeq;
            }
        }
    }

    /// <summary>Number of start/end pairs in flight.</summary>
    public int ActiveRanges
    {
        get
        {
            lock (_lock)
            {
                return _activeRanges;
            }
        }
    }

    /// <summary>True when any subscription exists (lets callers skip building brackets cheaply).</summary>
    internal bool HasSubscribers => _intervalSnapshot.Length != 0 || _classic.Length != 0;

    /// <summary>Number of interval notifiers registered.</summary>
    public int IntervalCount => Volatile.Read(ref _intervalSnapshot).Length;

    internal void InsertInterval(MmuIntervalNotifier sub)
    {
        if (!_space.IsAlive)
        {
            MmException.Throw(Errno.EINVAL, "cannot insert an interval notifier into a dead address space");
        }
        lock (_lock)
        {
            if (_activeRanges == 0)
            {
                sub._seq = _invalidateSeq - 1;
                AddLocked(sub);
            }
            else if ((_invalidateSeq & 1) == 0)
            {
                _invalidateSeq |= 1;
                sub._seq = _invalidateSeq;
                AddLocked(sub);
            }
            else
            {
                sub._seq = _invalidateSeq;
                _deferred.Add((sub, true));
            }
        }
    }

    private void AddLocked(MmuIntervalNotifier sub)
    {
        _intervals.Add(sub);
        sub._inTree = true;
        _intervalSnapshot = [.. _intervals];
    }

    internal void RemoveInterval(MmuIntervalNotifier sub)
    {
        lock (_lock)
        {
            if (sub._removed)
            {
                return;
            }
            sub._removed = true;
            if (_activeRanges == 0)
            {
                if (sub._inTree)
                {
                    _intervals.Remove(sub);
                    sub._inTree = false;
                    _intervalSnapshot = [.. _intervals];
                }
                else
                {
                    _deferred.RemoveAll(d => d.Sub == sub);
                }
                return;
            }
            // An invalidation is in flight: defer, then wait for the sequence to move on so no callback runs after return.
            _deferred.Add((sub, false));
            long seq = _invalidateSeq;
            while (_invalidateSeq == seq && _activeRanges != 0)
            {
                Monitor.Wait(_lock);
            }
        }
    }

    internal long ReadBegin(MmuIntervalNotifier sub)
    {
        lock (_lock)
        {
            long seq = Volatile.Read(ref sub._seq);
            if (seq == _invalidateSeq && (seq & 1) != 0)
            {
                while (_invalidateSeq == seq)
                {
                    Monitor.Wait(_lock);
                }
            }
            return seq;
        }
    }

    internal void Register(MmuNotifier n)
    {
        lock (_lock)
        {
            if (_classic.Contains(n))
            {
                MmException.Throw(Errno.EINVAL, "notifier already registered");
            }
            n.Space = _space;
            _classic = [.. _classic, n];
        }
    }

    internal void Unregister(MmuNotifier n)
    {
        bool listed;
        lock (_lock)
        {
            listed = _classic.Contains(n);
        }
        if (listed && Interlocked.Exchange(ref n._released, 1) == 0)
        {
            n.Release(_space);
        }
        lock (_lock)
        {
            _classic = _classic.Where(x => x != n).ToArray();
        }
        var spin = new SpinWait();
        while (Volatile.Read(ref n._activeCallbacks) != 0)
        {
            spin.SpinOnce();
        }
    }

    /// <summary>
    /// Opens an invalidation (kernel: mmu_notifier_invalidate_range_start). Returns EAGAIN only for a non-blockable
    /// range when a callback refused; the caller then must not call <see cref="InvalidateRangeEnd"/>.
    /// </summary>
    internal Errno InvalidateRangeStart(in MmuNotifierRange range)
    {
        Counters.Inc(Counter.InvalidateRangeStart);
        long curSeq;
        MmuIntervalNotifier[] subs;
        lock (_lock)
        {
            _activeRanges++;
            subs = _intervalSnapshot;
            bool hit = false;
            foreach (MmuIntervalNotifier s in subs)
            {
                if (s.Intersects(range.Start, range.End))
                {
                    hit = true;
                    break;
                }
            }
            if (hit)
            {
                _invalidateSeq |= 1;
            }
            curSeq = _invalidateSeq;
        }
        bool failed = false;
        foreach (MmuIntervalNotifier s in subs)
        {
            if (!s.Intersects(range.Start, range.End))
            {
                continue;
            }
            Counters.Inc(Counter.IntervalInvalidate);
            if (!s.Ops.Invalidate(s, range, curSeq))
            {
                Debug.Assert(!range.Blockable, "a blockable interval invalidate must not fail");
                failed = true;
            }
        }
        MmuNotifier[] classic = Volatile.Read(ref _classic);
        foreach (MmuNotifier n in classic)
        {
            Interlocked.Increment(ref n._activeCallbacks);
            try
            {
                if (Volatile.Read(ref n._released) == 0 && n.InvalidateRangeStart(range) != Errno.Ok)
                {
                    Debug.Assert(!range.Blockable, "a blockable invalidate_range_start must not fail");
                    failed = true;
                }
            }
            finally
            {
                Interlocked.Decrement(ref n._activeCallbacks);
            }
        }
        if (failed)
        {
            // As the kernel: the core performs the end side itself and the operation is abandoned.
            InvalidateRangeEnd(range);
            return Errno.EAGAIN;
        }
        return Errno.Ok;
    }

    /// <summary>Closes an invalidation (kernel: mmu_notifier_invalidate_range_end).</summary>
    internal void InvalidateRangeEnd(in MmuNotifierRange range)
    {
        MmuNotifier[] classic = Volatile.Read(ref _classic);
        foreach (MmuNotifier n in classic)
        {
            Interlocked.Increment(ref n._activeCallbacks);
            try
            {
                if (Volatile.Read(ref n._released) == 0)
                {
                    n.InvalidateRangeEnd(range);
                }
            }
            finally
            {
                Interlocked.Decrement(ref n._activeCallbacks);
            }
        }
        lock (_lock)
        {
            Debug.Assert(_activeRanges > 0);
            _activeRanges--;
            if (_activeRanges == 0 && (_invalidateSeq & 1) != 0)
            {
                _invalidateSeq++;
                foreach ((MmuIntervalNotifier sub, bool add) in _deferred)
                {
                    if (add)
                    {
                        if (!sub._removed)
                        {
                            _intervals.Add(sub);
                            sub._inTree = true;
                        }
                    }
                    else
                    {
                        _intervals.Remove(sub);
                        sub._inTree = false;
                    }
                }
                _deferred.Clear();
                _intervalSnapshot = [.. _intervals];
                Monitor.PulseAll(_lock);
            }
            else if (_activeRanges == 0)
            {
                Monitor.PulseAll(_lock);
            }
        }
    }

    /// <summary>Exit: RELEASE to interval notifiers, then release to classic ones (kernel: __mmu_notifier_release).</summary>
    internal void Release()
    {
        var range = new MmuNotifierRange(_space, 0, ulong.MaxValue, MmuNotifierEvent.Release);
        long curSeq;
        MmuIntervalNotifier[] subs;
        lock (_lock)
        {
            _activeRanges++;
            subs = _intervalSnapshot;
            if (subs.Length != 0)
            {
                _invalidateSeq |= 1;
            }
            curSeq = _invalidateSeq;
        }
        foreach (MmuIntervalNotifier s in subs)
        {
            s.Ops.Invalidate(s, range, curSeq);
        }
        MmuNotifier[] classic;
        lock (_lock)
        {
            classic = _classic;
        }
        foreach (MmuNotifier n in classic)
        {
            if (Interlocked.Exchange(ref n._released, 1) == 0)
            {
                Interlocked.Increment(ref n._activeCallbacks);
                try
                {
                    n.Release(_space);
                }
                finally
                {
                    Interlocked.Decrement(ref n._activeCallbacks);
                }
            }
        }
        lock (_lock)
        {
            _classic = _classic.Where(c => Volatile.Read(ref c._released) == 0).ToArray();
        }
        // Close the RELEASE bracket (no classic end callbacks: they are released).
        lock (_lock)
        {
            _activeRanges--;
            if (_activeRanges == 0 && (_invalidateSeq & 1) != 0)
            {
                _invalidateSeq++;
                Monitor.PulseAll(_lock);
            }
        }
    }
}
