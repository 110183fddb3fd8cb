using System.Runtime.CompilerServices;
using Hetmem.Mm;

namespace Hetmem.Hmm;

/// <summary>
/// The per-address-space state of the 5.1-era API (kernel 5.1: struct hmm): the registered
/// <see cref="HmmMirrorRange"/>s and <see cref="HmmMirror"/>s, the count of in-flight invalidations, the dead flag,
/// and one classic <see cref="MmuNotifier"/> on the address space that drives them. Created by the first mirror or
/// range registration, reference-counted by them, and unregistered from the address space when the last one leaves.
/// </summary>
/// <remarks>
/// <para>Invalidate start (kernel: hmm_invalidate_range_start): count the invalidation, clear <c>Valid</c> of every
/// range it overlaps (the kernel's test, which also hits a range starting exactly at the update's end), then call each
/// mirror's <see cref="HmmMirror.SyncCpuDevicePagetables"/>. Invalidate end: when the count drops to zero every range
/// becomes valid again and waiters wake. Release (exit): dead, every range invalid, waiters woken, each mirror's
/// <see cref="HmmMirror.Release"/> once, mirrors unlinked.</para>
/// <para>Validity without the kernel's mutex: <c>_state</c> packs (epoch &lt;&lt; 32 | in-flight count) and changes atomically;
/// the epoch advances exactly when the count returns to zero. A start bumps the count, then stamps each overlapping
/// range with the current epoch; a range is valid while its stamp is older than the epoch. The stamping start keeps the
/// count above zero, so the epoch cannot move between its increment and its stamp. Ends therefore never block, which
/// matters for the end the core calls after a failed non-blocking start.</para>
/// <para>Locking: <c>_lock</c> (kernel: hmm->lock; a leaf) serialises range and mirror registration and is the
/// monitor waiters sleep on; a non-blocking start that finds it taken fails with EAGAIN, as in the kernel. The range and
/// mirror lists are copy-on-write arrays written under <c>_lock</c> and read lock-free by invalidations. <c>_refs</c> is
/// guarded by <c>s_tableLock</c>.</para>
/// </remarks>
public sealed class HmmState
{
    private static readonly ConditionalWeakTable<AddressSpace, HmmState> s_table = new(); // guarded by s_tableLock
    private static readonly object s_tableLock = new();

    private readonly object _lock = new();
    private readonly Subscription _subscription;            // immutable
    private HmmMirrorRange[] _ranges = [];                  // copy-on-write under _lock
    private HmmMirror[] _mirrors = [];                      // copy-on-write under _lock
    private long _state;                                    // atomic: epoch << 32 | in-flight invalidations
    private volatile bool _dead;                            // set once by release
    private int _refs;                                      // guarded by s_tableLock
    private long _mirrorWarnings;                           // atomic

    private HmmState(AddressSpace space)
    {
        Space = space;
        _subscription = new Subscription(this);
    }

    /// <summary>The address space (kernel: hmm->mm).</summary>
    public AddressSpace Space { get; }

    /// <summary>True once the address space was torn down (kernel: hmm->dead).</summary>
    public bool IsDead => _dead;

    /// <summary>Invalidations in flight (kernel: hmm->notifiers).</summary>
    public int InFlightInvalidations => (int)(Volatile.Read(ref _state) & uint.MaxValue);

    private long Epoch => Volatile.Read(ref _state) >>> 32;

    /// <summary>References held by mirrors and ranges (kernel: hmm->kref).</summary>
    public int References
    {
        get
        {
            lock (s_tableLock)
            {
                return _refs;
            }
        }
    }

    /// <summary>Registered mirrors.</summary>
    public int MirrorCount => Volatile.Read(ref _mirrors).Length;

    /// <summary>Registered ranges.</summary>
    public int RangeCount => Volatile.Read(ref _ranges).Length;

    /// <summary>Mirror callbacks that broke their contract (a blockable sync that failed, or an error other than EAGAIN); kernel: WARN_ON.</summary>
    public long MirrorWarnings => Interlocked.Read(ref _mirrorWarnings);

    /// <summary>The range lock (kernel: hmm->lock), for tests that need it contended.</summary>
    internal object SyncRoot => _lock;

    /// <summary>The state of <paramref name="space"/> if some mirror or range holds one, else null.</summary>
    /// <param name="space">The address space.</param>
    /// <returns>The live state or null.</returns>
    public static HmmState? Find(AddressSpace space)
    {
        lock (s_tableLock)
        {
            return s_table.TryGetValue(space, out HmmState? s) && s._refs > 0 ? s : null;
        }
    }

    /// <summary>Gets the address space's state with a reference, creating it (and its classic notifier) on first use; null when the space is dead (kernel: hmm_get_or_create).</summary>
    internal static HmmState? GetOrCreate(AddressSpace space)
    {
        lock (s_tableLock)
        {
            if (s_table.TryGetValue(space, out HmmState? s) && s._refs > 0)
            {
                if (s._dead)
                {
                    return null;
                }
                s._refs++;
                return s;
            }
        }
        if (!space.IsAlive)
        {
            return null;
        }
        // Register outside the table lock: registration waits for in-flight invalidations to drain.
        var created = new HmmState(space);
        try
        {
            space.Notifiers.Register(created._subscription);
        }
        catch (MmException)
        {
            return null;
        }
        HmmState? winner;
        lock (s_tableLock)
        {
            if (s_table.TryGetValue(space, out HmmState? s) && s._refs > 0)
            {
                winner = s._dead ? null : s;
                if (winner is not null)
                {
                    winner._refs++;
                }
            }
            else
            {
                s_table.AddOrUpdate(space, created);
                created._refs = 1;
                return created;
            }
        }
        space.Notifiers.Unregister(created._subscription); // lost a race with another creator
        return winner;
    }

    /// <summary>Drops a reference; the last one unregisters the classic notifier (kernel: hmm_put → hmm_free).</summary>
    internal void Put()
    {
        lock (s_tableLock)
        {
            if (--_refs > 0)
            {
                return;
            }
            if (s_table.TryGetValue(Space, out HmmState? s) && ReferenceEquals(s, this))
            {
                s_table.Remove(Space);
            }
        }
        if (_subscription.RunningOnThisThread)
        {
            // Dropped from inside our own callback (a release that unregisters its mirror): unregistering here would
            // wait for ourselves, so free asynchronously like the kernel's mmu_notifier_put.
            ThreadPool.UnsafeQueueUserWorkItem(static s => s.Space.Notifiers.Unregister(s._subscription), this, preferLocal: false);
            return;
        }
        Space.Notifiers.Unregister(_subscription);
    }

    internal bool AddMirror(HmmMirror mirror)
    {
        lock (_lock)
        {
            if (_dead || Array.IndexOf(_mirrors, mirror) >= 0 || Interlocked.CompareExchange(ref mirror._hmm, this, null) is not null)
            {
                return false;
            }
            Volatile.Write(ref mirror._unlinked, 0);
            Volatile.Write(ref mirror._released, 0);
            _mirrors = [.. _mirrors, mirror];
            return true;
        }
    }

    internal void RemoveMirror(HmmMirror mirror)
    {
        lock (_lock)
        {
            int i = Array.IndexOf(_mirrors, mirror);
            if (i >= 0)
            {
                _mirrors = [.. _mirrors.AsSpan(0, i), .. _mirrors.AsSpan(i + 1)];
            }
        }
    }

    /// <summary>Adds a range; it is valid only when no invalidation is in flight (kernel: hmm_range_register's list part).</summary>
    internal bool AddRange(HmmMirrorRange range)
    {
        lock (_lock)
        {
            if (_dead)
            {
                return false;
            }
            Volatile.Write(ref range._hitEpoch, -1);
            _ranges = [.. _ranges, range];
            // Published first, checked second: a start counted before this read is seen here, a later one sees the range.
            long state = Interlocked.Read(ref _state);
            if ((state & uint.MaxValue) != 0)
            {
                Volatile.Write(ref range._hitEpoch, state >>> 32);
            }
            return true;
        }
    }

    internal void RemoveRange(HmmMirrorRange range)
    {
        lock (_lock)
        {
            int i = Array.IndexOf(_ranges, range);
            if (i >= 0)
            {
                _ranges = [.. _ranges.AsSpan(0, i), .. _ranges.AsSpan(i + 1)];
            }
            Monitor.PulseAll(_lock);
        }
    }

    /// <summary>True when <paramref name="range"/> has not been hit since the last moment no invalidation was in flight.</summary>
    internal bool IsValid(HmmMirrorRange range) => !_dead && Volatile.Read(ref range._hitEpoch) < Epoch;

    /// <summary>kernel: hmm_range_wait_until_valid.</summary>
    internal bool WaitUntilValid(HmmMirrorRange range, int timeoutMs)
    {
        long deadline = Environment.TickCount64 + Math.Max(timeoutMs, 0);
        lock (_lock)
        {
            while (true)
            {
                if (_dead || !ReferenceEquals(range.Hmm, this))
                {
                    return false;
                }
                if (IsValid(range))
                {
                    return true;
                }
                long left = deadline - Environment.TickCount64;
                if (left <= 0)
                {
                    return IsValid(range);
                }
                // Ends that could not take the lock (non-blocking) cannot pulse: re-check at least every 10 ms.
                Monitor.Wait(_lock, (int)Math.Min(left, 10));
            }
        }
    }

    private Errno OnStart(in MmuNotifierRange range)
    {
        long epoch = Interlocked.Increment(ref _state) >>> 32;
        var update = new HmmUpdate(HmmUpdateEvent.Invalidate, range.Start, range.End, range.Blockable);
        if (!range.Blockable)
        {
            // kernel: mutex_trylock(&hmm->lock) for a non-blocking start. The count is already up, so the end the core
            // calls after this failure keeps it balanced.
            if (!Monitor.TryEnter(_lock))
            {
                return Errno.EAGAIN;
            }
            Monitor.Exit(_lock);
        }
        foreach (HmmMirrorRange r in Volatile.Read(ref _ranges))
        {
            // The kernel's overlap test: note `<`, so a range starting exactly at update.End is invalidated too.
            if (update.End < r.Start || update.Start >= r.End)
            {
                continue;
            }
            Volatile.Write(ref r._hitEpoch, epoch);
        }
        foreach (HmmMirror m in Volatile.Read(ref _mirrors))
        {
            if (!m.TryEnter(out HmmMirror? outer))
            {
                continue;
            }
            Errno rc;
            try
            {
                rc = m.SyncCpuDevicePagetables(update);
            }
            finally
            {
                m.Exit(outer);
            }
            if (rc == Errno.Ok)
            {
                continue;
            }
            if (update.Blockable || rc != Errno.EAGAIN)
            {
                Interlocked.Increment(ref _mirrorWarnings);
                continue;
            }
            return Errno.EAGAIN;
        }
        return Errno.Ok;
    }

    private void OnEnd(bool blockable)
    {
        long cur = Interlocked.Read(ref _state);
        while (true)
        {
            long count = cur & uint.MaxValue;
            long next = count == 1 ? ((cur >>> 32) + 1) << 32 : cur - 1;
            long seen = Interlocked.CompareExchange(ref _state, next, cur);
            if (seen == cur)
            {
                if (count != 1)
                {
                    return;
                }
                break;
            }
            cur = seen;
        }
        // Every range is valid again: wake the waiters (a non-blocking end only if the lock is free; they poll anyway).
        if (blockable)
        {
            Monitor.Enter(_lock);
        }
        else if (!Monitor.TryEnter(_lock))
        {
            return;
        }
        try
        {
            Monitor.PulseAll(_lock);
        }
        finally
        {
            Monitor.Exit(_lock);
        }
    }

    private void OnRelease()
    {
        _dead = true;
        lock (_lock)
        {
            Monitor.PulseAll(_lock);
        }
        while (true)
        {
            HmmMirror? m;
            lock (_lock)
            {
                if (_mirrors.Length == 0)
                {
                    return;
                }
                m = _mirrors[0];
                _mirrors = _mirrors[1..];
            }
            // Called with no lock held, so the release may wait for work that itself triggers notifier callbacks.
            if (m.TryEnter(out HmmMirror? outer))
            {
                try
                {
                    if (Interlocked.Exchange(ref m._released, 1) == 0)
                    {
                        m.Release();
                    }
                }
                finally
                {
                    m.Exit(outer);
                }
            }
        }
    }

    /// <summary>The classic notifier through which the address space drives this state (kernel: hmm->mmu_notifier).</summary>
    private sealed class Subscription(HmmState owner) : MmuNotifier
    {
        [ThreadStatic]
        private static Subscription? s_running;   // thread-local: set while this thread runs one of our callbacks

        public bool RunningOnThisThread => ReferenceEquals(s_running, this);

        public override Errno InvalidateRangeStart(in MmuNotifierRange range)
        {
            Subscription? outer = s_running;
            s_running = this;
            try
            {
                return owner.OnStart(range);
            }
            finally
            {
                s_running = outer;
            }
        }

        public override void InvalidateRangeEnd(in MmuNotifierRange range)
        {
            Subscription? outer = s_running;
            s_running = this;
            try
            {
                owner.OnEnd(range.Blockable);
            }
            finally
            {
                s_running = outer;
            }
        }

        public override void Release(AddressSpace space)
        {
            Subscription? outer = s_running;
            s_running = this;
            try
            {
                owner.OnRelease();
            }
            finally
            {
                s_running = outer;
            }
        }
    }
}
