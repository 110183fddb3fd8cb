using System.Diagnostics;
using Hetmem.Diagnostics;
using Hetmem.Diagnostics.Scheduling;

namespace Hetmem.Mm;

/// <summary>
/// The notifier state of one address space: interval subscriptions with their sequence protocol and classic
/// subscriptions (kernel: struct mmu_notifier_subscriptions, mm/mmu_notifier.c).
/// </summary>
/// <remarks>
/// <para>The sequence works like a seqcount that several writers may hold at once. <c>_invalidateSeq</c> starts at 2
/// and is even while idle. An invalidation that intersects at least one interval notifier makes it odd; it becomes
/// even again (one higher) when the last in-flight invalidation of the address space ends. While it is odd the
/// interval tree is frozen: walks read it without the lock, and inserts/removes go to a deferred list that the final
/// end applies (kernel: the "fully excluded" state). While invalidations are in flight but the sequence is even,
/// nobody walks the tree, so it may change directly ("partially excluded").</para>
/// <para>Locking: <c>_lock</c> (LockClass.NotifierSubscriptions) protects <c>_tree</c> (modifications),
/// <c>_invalidateSeq</c>, <c>_activeRanges</c> and the deferred list; it is never held while a callback runs.
/// Waiters (read_begin, remove) wait on <c>_lock</c>'s monitor and are woken by the final end.
/// <c>_classic</c> is a copy-on-write array replaced under <c>_lock</c> and read lock-free; a subscription's
/// callbacks are bracketed by <see cref="MmuNotifier.TryEnterCallback"/> so unregister can wait for them (SRCU).</para>
/// </remarks>
public sealed class MmuNotifierSubscriptions
{
    [ThreadStatic]
    private static MmuNotifierSubscriptions? s_inCallbackOf;  // thread-local: whose callback this thread runs

    private readonly object _lock = new();
    private readonly AddressSpace _space;                      // immutable
    private readonly MmuIntervalTree _tree = new();            // see remarks
    private MmuIntervalNotifier? _deferredHead;                // guarded by _lock
    private MmuNotifier[] _classic = [];                       // copy-on-write under _lock, read lock-free
    private long _invalidateSeq = 2;                           // guarded by _lock; even = idle
    private long _activeRanges;                                // guarded by _lock
    private long _warnings;                                    // atomic
    private int _registerWaiters;                              // guarded by _lock: classic registrations waiting for quiescence

    internal MmuNotifierSubscriptions(AddressSpace space) => _space = space;

    /// <summary>The address-space sequence (kernel: invalidate_seq): even when no invalidation touching an interval notifier is active.</summary>
    public long InvalidateSeq
    {
        get
        {
            using (Locked())
            {
                return _invalidateSeq;
            }
        }
    }

    /// <summary>Number of start/end pairs in flight (kernel: active_invalidate_ranges).</summary>
    public long ActiveRanges
    {
        get
        {
            using (Locked())
            {
                return _activeRanges;
            }
        }
    }

    /// <summary>Number of interval notifiers in the tree (deferred inserts not counted until they are applied).</summary>
    public int IntervalCount
    {
        get
        {
            using (Locked())
            {
                return _tree.Count;
            }
        }
    }

    /// <summary>Number of classic subscriptions registered.</summary>
    public int ClassicCount => Volatile.Read(ref _classic).Length;

    /// <summary>
    /// Broken driver obligations seen so far (kernel: the WARN_ONs of mm/mmu_notifier.c): a callback that failed a
    /// blockable invalidation, or a classic start that failed with something other than EAGAIN. The operation goes
    /// on as in the kernel; stress tests assert this stays 0.
    /// </summary>
    public long Warnings => Interlocked.Read(ref _warnings);

    /// <summary>True when any subscription exists.</summary>
    internal bool HasSubscribers => IntervalCount != 0 || ClassicCount != 0;

    /// <summary>Checks the interval tree's ordering, balance and augmentation (tests).</summary>
    internal void ValidateTree()
    {
        using (Locked())
        {
            _tree.Validate();
        }
    }

    /// <summary>Height of the interval tree (tests: stays logarithmic).</summary>
    internal int TreeHeight
    {
        get
        {
            using (Locked())
            {
                return _tree.Height;
            }
        }
    }

    private void Warn() => Interlocked.Increment(ref _warnings);

    /// <summary>
    /// The last exception an interval-notifier invalidate callback threw, or null (kernel: the WARN splat of a
    /// callback that failed a blockable invalidation). Such a callback is contained: it counts as a refusal (a
    /// <see cref="Warnings"/> entry for a blockable range, EAGAIN from the start of a non-blockable one), the remaining
    /// callbacks still run, and the range end and sequence completion still happen.
    /// </summary>
    public Exception? LastCallbackFault => Volatile.Read(ref _lastCallbackFault);

    private Exception? _lastCallbackFault; // Volatile; written by the thread whose callback threw

    private void RecordCallbackFault(Exception ex) => Volatile.Write(ref _lastCallbackFault, ex);

    /// <summary>Takes <c>_lock</c>, reporting it to the lock-order validator as <see cref="LockClass.NotifierSubscriptions"/>.</summary>
    private LockScope Locked()
    {
        OrderedLock.Enter(LockClass.NotifierSubscriptions);
        Monitor.Enter(_lock);
        return new LockScope(_lock);
    }

    private readonly ref struct LockScope(object monitor)
    {
        public void Dispose()
        {
            Monitor.Exit(monitor);
            OrderedLock.Exit(LockClass.NotifierSubscriptions);
        }
    }

    // ---- interval notifiers -------------------------------------------------------------------------------

    /// <summary>kernel: __mmu_interval_notifier_insert.</summary>
    internal void InsertInterval(MmuIntervalNotifier sub)
    {
        if (!_space.IsAlive)
        {
            MmException.Throw(Errno.EINVAL, "cannot insert an interval notifier into a dead address space");
        }
        using (Locked())
        {
            if (_activeRanges != 0)
            {
                if ((_invalidateSeq & 1) != 0)
                {
                    // The tree is frozen: insert at the final end. read_begin waits for it.
                    PushDeferredLocked(sub);
                }
                else
                {
                    // Nobody walks the tree now; make the in-flight invalidations count as touching the new notifier.
                    _invalidateSeq |= 1;
                    _tree.Insert(sub);
                    sub._inTree = true;
                }
                sub._seq = _invalidateSeq;
            }
            else
            {
                sub._seq = _invalidateSeq - 1;
                _tree.Insert(sub);
                sub._inTree = true;
            }
        }
    }

    /// <summary>kernel: mmu_interval_notifier_remove.</summary>
    internal void RemoveInterval(MmuIntervalNotifier sub)
    {
        if (ReferenceEquals(s_inCallbackOf, this))
        {
            throw new InvalidOperationException("mmu_interval_notifier_remove called from an invalidate callback of the same address space");
        }
        using (Locked())
        {
            if (!sub._removed)
            {
                sub._removed = true;
                if ((_invalidateSeq & 1) != 0)
                {
                    if (!sub._inTree)
                    {
                        // Inserted during this invalidation and still waiting on the deferred list: just drop it.
                        Debug.Assert(sub._onDeferred);
                        UnlinkDeferredLocked(sub);
                        return;
                    }
                    PushDeferredLocked(sub);
                }
                else
                {
                    Debug.Assert(sub._inTree && !sub._onDeferred);
                    _tree.Remove(sub);
                    sub._inTree = false;
                    return;
                }
            }
            // A deferred removal: wait until the final end applied it (then every callback has returned).
            while (sub._inTree)
            {
                Monitor.Wait(_lock);
            }
        }
    }

    /// <summary>kernel: mmu_interval_read_begin.</summary>
    internal long ReadBegin(MmuIntervalNotifier sub)
    {
        SchedulePoint.BeforeWait("mmu_interval_read_begin", static n => Volatile.Read(ref n._seq) != n.Space.Notifiers._invalidateSeq, sub);
        using (Locked())
        {
            long seq = Volatile.Read(ref sub._seq);
            if (seq == _invalidateSeq)
            {
                if (ReferenceEquals(s_inCallbackOf, this))
                {
                    throw new InvalidOperationException("mmu_interval_read_begin would wait for the invalidation whose callback is calling it");
                }
                while (_invalidateSeq == seq)
                {
                    Monitor.Wait(_lock);
                }
            }
            return seq;
        }
    }

    private void PushDeferredLocked(MmuIntervalNotifier sub)
    {
        Debug.Assert(!sub._onDeferred);
        sub._onDeferred = true;
        sub._deferredNext = _deferredHead;
        _deferredHead = sub;
    }

    private void UnlinkDeferredLocked(MmuIntervalNotifier sub)
    {
        ref MmuIntervalNotifier? link = ref _deferredHead;
        while (link is not null)
        {
            if (ReferenceEquals(link, sub))
            {
                link = sub._deferredNext;
                sub._deferredNext = null;
                sub._onDeferred = false;
                return;
            }
            link = ref link._deferredNext;
        }
        Debug.Fail("notifier not on the deferred list");
    }

    /// <summary>
    /// The interval half of a start (kernel: mn_itree_invalidate): counts the range as active, makes the sequence odd
    /// when a notifier intersects, and calls each intersecting notifier. False when a non-blockable callback refused;
    /// the end-side bookkeeping is then already done.
    /// </summary>
    private bool ItreeInvalidate(in MmuNotifierRange range)
    {
        long curSeq;
        using (Locked())
        {
            _activeRanges++;
            if (_tree.Count == 0 || !_tree.AnyIntersecting(range.Start, range.End))
            {
                return true;
            }
            _invalidateSeq |= 1;
            curSeq = _invalidateSeq;
        }
        SchedulePoint.Here("invalidate_seq_odd");
        // The tree is frozen while the sequence is odd, and it stays odd until this range ends.
        var visitor = new InvalidateVisitor(this, range, curSeq);
        bool completed;
        try
        {
            completed = _tree.VisitIntersecting(range.Start, range.End, ref visitor);
        }
        catch
        {
            ItreeEnd();
            throw;
        }
        if (!completed)
        {
            ItreeEnd();
            return false;
        }
        return true;
    }

    /// <summary>kernel: mn_itree_inv_end.</summary>
    private void ItreeEnd()
    {
        using (Locked())
        {
            Debug.Assert(_activeRanges > 0, "invalidate_range_end without a start");
            if (--_activeRanges != 0)
            {
                return;
            }
            if ((_invalidateSeq & 1) == 0)
            {
                if (_registerWaiters != 0)
                {
                    Monitor.PulseAll(_lock);
                }
                return;
            }
            _invalidateSeq++;
            // Apply the deferred inserts and removes (kernel: the rtnl_unlock-like deferred list).
            MmuIntervalNotifier? sub = _deferredHead;
            _deferredHead = null;
            while (sub is not null)
            {
                MmuIntervalNotifier? next = sub._deferredNext;
                sub._deferredNext = null;
                sub._onDeferred = false;
                if (sub._inTree)
                {
                    _tree.Remove(sub);
                    sub._inTree = false;
                }
                else
                {
                    _tree.Insert(sub);
                    sub._inTree = true;
                }
                sub = next;
            }
            Monitor.PulseAll(_lock);
        }
    }

    private struct InvalidateVisitor(MmuNotifierSubscriptions owner, MmuNotifierRange range, long curSeq) : IIntervalVisitor
    {
        private readonly MmuNotifierSubscriptions _owner = owner;
        private readonly MmuNotifierRange _range = range;
        private readonly long _curSeq = curSeq;

        public readonly bool Visit(MmuIntervalNotifier sub)
        {
            Counters.Inc(Counter.IntervalInvalidate);
            MmuNotifierSubscriptions? outer = s_inCallbackOf;
            s_inCallbackOf = _owner;
            bool ok;
            try
            {
                ok = sub.Ops.Invalidate(sub, _range, _curSeq);
                Hetmem.Diagnostics.FaultInjection.MaybeThrowInCallback(_owner._space.Memory); // injected after the callback did its work
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                // A throwing callback is treated like one that refused (kernel: WARN_ON for a blockable range, and the
                // walk goes on; -EAGAIN for a non-blockable one): the bracket completes and the mm operation stays
                // consistent. The exception is kept in LastCallbackFault rather than unwinding a half-done operation.
                _owner.RecordCallbackFault(ex);
                ok = false;
            }
            finally
            {
                s_inCallbackOf = outer;
            }
            if (ok)
            {
                return true;
            }
            if (_range.Blockable)
            {
                _owner.Warn(); // kernel: WARN_ON, and the walk goes on
                return true;
            }
            return false;
        }
    }

    // ---- classic notifiers --------------------------------------------------------------------------------

    /// <summary>
    /// kernel: __mmu_notifier_register. Waits until no invalidation is in flight (the kernel gets the same effect from
    /// mm_take_all_locks), so the new subscription never sees an end whose start it missed. Must not be called from a
    /// notifier callback or between a start and its end on the same thread.
    /// </summary>
    internal void Register(MmuNotifier n)
    {
        if (ReferenceEquals(s_inCallbackOf, this))
        {
            throw new InvalidOperationException("mmu_notifier_register called from a notifier callback of the same address space");
        }
        using (Locked())
        {
            if (!_space.IsAlive)
            {
                MmException.Throw(Errno.EINVAL, "cannot register a notifier on a dead address space");
            }
            if (Array.IndexOf(_classic, n) >= 0)
            {
                MmException.Throw(Errno.EINVAL, "notifier already registered");
            }
            _registerWaiters++;
            try
            {
                while (_activeRanges != 0)
                {
                    Monitor.Wait(_lock);
                }
            }
            finally
            {
                _registerWaiters--;
            }
            Volatile.Write(ref n._released, 0);
            Volatile.Write(ref n._unlinked, 0);
            n.Space = _space;
            _classic = [.. _classic, n];
        }
    }

    /// <summary>kernel: mmu_notifier_unregister.</summary>
    internal void Unregister(MmuNotifier n)
    {
        bool listed;
        using (Locked())
        {
            listed = Array.IndexOf(_classic, n) >= 0;
        }
        if (listed)
        {
            // Exactly one of exit and unregister delivers release; a release running on exit's side is waited for below.
            CallRelease(n);
        }
        using (Locked())
        {
            int i = Array.IndexOf(_classic, n);
            if (i >= 0)
            {
                var copy = new MmuNotifier[_classic.Length - 1];
                Array.Copy(_classic, 0, copy, 0, i);
                Array.Copy(_classic, i + 1, copy, i, copy.Length - i);
                _classic = copy;
            }
        }
        n.UnlinkAndWait();
        if (ReferenceEquals(n.Space, _space))
        {
            n.Space = null;
        }
    }

    private void CallRelease(MmuNotifier n)
    {
        if (!n.TryEnterCallback(out MmuNotifier? outer))
        {
            return;
        }
        MmuNotifierSubscriptions? outerOwner = s_inCallbackOf;
        s_inCallbackOf = this;
        try
        {
            if (Interlocked.Exchange(ref n._released, 1) == 0)
            {
                n.Release(_space);
            }
        }
        finally
        {
            s_inCallbackOf = outerOwner;
            n.ExitCallback(outer);
        }
    }

    /// <summary>Calls every classic start; true when one refused a non-blockable range.</summary>
    private bool ClassicStart(MmuNotifier[] classic, in MmuNotifierRange range)
    {
        bool failed = false;
        MmuNotifierSubscriptions? outerOwner = s_inCallbackOf;
        s_inCallbackOf = this;
        try
        {
            foreach (MmuNotifier n in classic)
            {
                if (!n.TryEnterCallback(out MmuNotifier? outer))
                {
                    continue;
                }
                Errno r;
                try
                {
                    r = n.InvalidateRangeStart(range);
                }
                finally
                {
                    n.ExitCallback(outer);
                }
                if (r == Errno.Ok)
                {
                    continue;
                }
                if (range.Blockable || r != Errno.EAGAIN)
                {
                    Warn();
                }
                if (!range.Blockable)
                {
                    failed = true; // every start is still called, as in the kernel
                }
            }
        }
        finally
        {
            s_inCallbackOf = outerOwner;
        }
        return failed;
    }

    private void ClassicEnd(MmuNotifier[] classic, in MmuNotifierRange range)
    {
        MmuNotifierSubscriptions? outerOwner = s_inCallbackOf;
        s_inCallbackOf = this;
        try
        {
            foreach (MmuNotifier n in classic)
            {
                if (!n.TryEnterCallback(out MmuNotifier? outer))
                {
                    continue;
                }
                try
                {
                    n.InvalidateRangeEnd(range);
                }
                finally
                {
                    n.ExitCallback(outer);
                }
            }
        }
        finally
        {
            s_inCallbackOf = outerOwner;
        }
    }

    // ---- brackets -----------------------------------------------------------------------------------------

    /// <summary>
    /// Opens an invalidation (kernel: mmu_notifier_invalidate_range_start, and the _nonblock variant when
    /// <c>range.Blockable</c> is false). Interval notifiers are called first, then classic ones. Returns EAGAIN only
    /// for a non-blockable range that a callback refused: the core has then already done the end side (every classic
    /// subscription's end was called, the interval bracket is closed) and the caller must not call
    /// <see cref="InvalidateRangeEnd"/>; it abandons the operation.
    /// </summary>
    internal Errno InvalidateRangeStart(in MmuNotifierRange range)
    {
        Counters.Inc(Counter.InvalidateRangeStart);
        SchedulePoint.Here("invalidate_range_start");
        using TraceSpan span = TraceLog.Enabled ? TraceLog.Span(TraceCategory.Invalidate, TraceNames.Of(range.Event), TraceArg.Address(range.Start), TraceArg.Of("event", (long)range.Event)) : default;
        if (!ItreeInvalidate(range))
        {
            return Errno.EAGAIN;
        }
        MmuNotifier[] classic = Volatile.Read(ref _classic);
        if (classic.Length == 0)
        {
            return Errno.Ok;
        }
        bool failed;
        try
        {
            failed = ClassicStart(classic, range);
        }
        catch
        {
            ItreeEnd();
            throw;
        }
        if (failed)
        {
            // Subscriptions whose start succeeded expect their end; those that can fail must not implement one.
            // Unlike 6.15 (which leaves the interval bracket open here) the interval side is closed too.
            ClassicEnd(classic, range);
            ItreeEnd();
            return Errno.EAGAIN;
        }
        return Errno.Ok;
    }

    /// <summary>
    /// Closes an invalidation opened by a successful <see cref="InvalidateRangeStart"/> (kernel:
    /// mmu_notifier_invalidate_range_end). Classic ends run before the interval bracket closes, so the classic list
    /// read here is the one the start read (registration waits for no bracket to be open).
    /// </summary>
    internal void InvalidateRangeEnd(in MmuNotifierRange range)
    {
        using TraceSpan span = TraceLog.Span(TraceCategory.Invalidate, "invalidate_range_end", TraceArg.Of("event", (long)range.Event), TraceArg.Bytes((long)(range.End - range.Start)));
        SchedulePoint.Here("invalidate_range_end");
        MmuNotifier[] classic = Volatile.Read(ref _classic);
        if (classic.Length != 0)
        {
            try
            {
                ClassicEnd(classic, range);
            }
            catch
            {
                ItreeEnd();
                throw;
            }
        }
        ItreeEnd();
        SchedulePoint.Here("invalidate_seq_even");
    }

    /// <summary>
    /// Exit (kernel: __mmu_notifier_release): one blockable RELEASE invalidation over [0, max) to interval notifiers
    /// (they stay registered and also see the UNMAP brackets that follow), then release exactly once to each classic
    /// subscription, which is unlinked; returns only when no classic callback (including a release run by a concurrent
    /// unregister) is still running.
    /// </summary>
    internal void Release()
    {
        var range = new MmuNotifierRange(_space, 0, ulong.MaxValue, MmuNotifierEvent.Release);
        if (ItreeInvalidate(range))
        {
            ItreeEnd();
        }
        MmuNotifier[] classic = Volatile.Read(ref _classic);
        foreach (MmuNotifier n in classic)
        {
            CallRelease(n);
        }
        using (Locked())
        {
            classic = _classic;
            _classic = [];
        }
        foreach (MmuNotifier n in classic)
        {
            n.UnlinkAndWait();
        }
    }
}
