using System.Runtime.CompilerServices;

namespace Hetmem.Diagnostics.Scheduling;

/// <summary>
/// The hooks Hetmem's lock boundaries call so a <see cref="ControlledScheduler"/> can interleave threads there
/// (kernel counterpart: none; the nearest relatives are KCSAN's instrumentation points and the scheduling points a
/// systematic tester such as Coyote or CHESS inserts). See docs/races.md.
/// </summary>
/// <remarks>
/// <para><b>Cost.</b> With no controlled run active every hook is one read of a static field and a not-taken branch;
/// nothing allocates. While a run is active, threads that are not logical threads of that run (other tests, thread
/// pool work) pass through after one thread-static read.</para>
/// <para><b>Kinds.</b> <see cref="Here"/> is a plain interleaving point. The <c>Before…</c> hooks sit just before a
/// blocking acquisition: the scheduler first probes, on the acquiring thread, whether the acquisition would block; if
/// it would, the logical thread is marked blocked and another one runs, so a logical thread never blocks for real on
/// an instrumented lock held by a descheduled one. Because only one logical thread runs between two points, a probe
/// that found the lock free stays true until the real acquisition right after the hook.</para>
/// <para><b>Locking.</b> <see cref="s_active"/> is written only by <see cref="ControlledScheduler"/> while no
/// logical thread of the run exists (thread start and join are the barriers).</para>
/// </remarks>
internal static class SchedulePoint
{
    /// <summary>The scheduler of the controlled run in progress, or null (see remarks).</summary>
    internal static ControlledScheduler? s_active;

    private static readonly Func<Lock, bool> s_probeLock = ProbeLock;
    private static readonly Func<ReaderWriterLockSlim, bool> s_probeRead = ProbeRead;
    private static readonly Func<ReaderWriterLockSlim, bool> s_probeWrite = ProbeWrite;

    /// <summary>A plain interleaving point named <paramref name="site"/>.</summary>
    /// <param name="site">A constant naming the place (shown in schedules and traces).</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Here(string site)
    {
        ControlledScheduler? s = s_active;
        if (s is not null)
        {
            s.OnPoint(site);
        }
    }

    /// <summary>A point just before a blocking <c>Enter</c> of <paramref name="l"/>.</summary>
    /// <param name="l">The lock about to be taken.</param>
    /// <param name="site">A constant naming the place.</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void BeforeAcquire(Lock l, string site)
    {
        ControlledScheduler? s = s_active;
        if (s is not null)
        {
            s.OnAcquire(site, s_probeLock, l);
        }
    }

    /// <summary>A point just before a blocking <c>EnterReadLock</c> of <paramref name="rw"/>.</summary>
    /// <param name="rw">The lock about to be taken for read.</param>
    /// <param name="site">A constant naming the place.</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void BeforeEnterRead(ReaderWriterLockSlim rw, string site)
    {
        ControlledScheduler? s = s_active;
        if (s is not null)
        {
            s.OnAcquire(site, s_probeRead, rw);
        }
    }

    /// <summary>A point just before a blocking <c>EnterWriteLock</c> of <paramref name="rw"/>.</summary>
    /// <param name="rw">The lock about to be taken for write.</param>
    /// <param name="site">A constant naming the place.</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void BeforeEnterWrite(ReaderWriterLockSlim rw, string site)
    {
        ControlledScheduler? s = s_active;
        if (s is not null)
        {
            s.OnAcquire(site, s_probeWrite, rw);
        }
    }

    /// <summary>
    /// A point just before code that would wait until <paramref name="canProceed"/> holds (a condition wait such as
    /// mmu_interval_read_begin's). Pass a static lambda so nothing allocates.
    /// </summary>
    /// <param name="site">A constant naming the place.</param>
    /// <param name="canProceed">Evaluated on the waiting thread; true when the wait would return at once.</param>
    /// <param name="state">The argument of <paramref name="canProceed"/>.</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void BeforeWait<TState>(string site, Func<TState, bool> canProceed, TState state)
        where TState : class
    {
        ControlledScheduler? s = s_active;
        if (s is not null)
        {
            s.OnAcquire(site, canProceed, state);
        }
    }

    private static bool ProbeLock(Lock l)
    {
        if (!l.TryEnter())
        {
            return false;
        }
        l.Exit();
        return true;
    }

    private static bool ProbeRead(ReaderWriterLockSlim rw)
    {
        if (rw.IsReadLockHeld || rw.IsWriteLockHeld || rw.IsUpgradeableReadLockHeld)
        {
            return true; // the real call decides (recursion policy); it cannot block on another thread
        }
        if (!rw.TryEnterReadLock(0))
        {
            return false;
        }
        rw.ExitReadLock();
        return true;
    }

    private static bool ProbeWrite(ReaderWriterLockSlim rw)
    {
        if (rw.IsReadLockHeld || rw.IsWriteLockHeld || rw.IsUpgradeableReadLockHeld)
        {
            return true;
        }
        if (!rw.TryEnterWriteLock(0))
        {
            return false;
        }
        rw.ExitWriteLock();
        return true;
    }
}
