using Hetmem.Mm;

namespace Hetmem.Hmm;

/// <summary>What an invalidation tells a 5.1-era mirror (kernel 5.1: enum hmm_update_event).</summary>
public enum HmmUpdateEvent
{
    /// <summary>CPU page-table entries in the range change; the reason is not forwarded (kernel: HMM_UPDATE_INVALIDATE).</summary>
    Invalidate = 0,
}

/// <summary>One invalidation as a 5.1-era mirror sees it (kernel 5.1: struct hmm_update).</summary>
/// <param name="Event">Always <see cref="HmmUpdateEvent.Invalidate"/>.</param>
/// <param name="Start">First address of the range.</param>
/// <param name="End">End of the range (exclusive).</param>
/// <param name="Blockable">False only for a non-blocking invalidation: the mirror must not sleep and may return EAGAIN.</param>
public readonly record struct HmmUpdate(HmmUpdateEvent Event, ulong Start, ulong End, bool Blockable);

/// <summary>
/// A device mirroring one address space through the 5.1-era API (kernel 5.1: struct hmm_mirror with
/// hmm_mirror_ops). Derive from it, implement <see cref="SyncCpuDevicePagetables"/>, and register it with
/// <see cref="Register"/>. New code should prefer <see cref="MmuIntervalNotifier"/> and
/// <see cref="HmmMirrorHelper.FaultAndProgram"/>; this facade exists so drivers written for that API (the 2019 nouveau
/// SVM, the first mlx5 ODP port) run unchanged. It sits on the same machinery: one classic <see cref="MmuNotifier"/>
/// per address space (<see cref="HmmState"/>) and the same <see cref="HmmRange.Fault"/> walk.
/// </summary>
/// <remarks>
/// Locking: <see cref="SyncCpuDevicePagetables"/> runs inside an invalidation with no Hetmem lock held; it takes the
/// driver's update lock itself. A mirror's callbacks are bracketed by an atomic active count so that
/// <see cref="Unregister"/> can wait for them; <c>_released</c> makes <see cref="Release"/> run at most once.
/// </remarks>
public abstract class HmmMirror
{
    [ThreadStatic]
    private static HmmMirror? s_current;    // thread-local: the mirror whose callback this thread runs

    internal HmmState? _hmm;                // written under HmmState's lock; the state this mirror is registered on
    internal int _active;                   // atomic: callbacks running now
    internal int _unlinked;                 // atomic 0/1: left the mirror list, callbacks are skipped
    internal int _released;                 // atomic 0/1: Release delivered

    /// <summary>The per-address-space state the mirror is registered on, or null (kernel: mirror->hmm).</summary>
    public HmmState? Hmm => Volatile.Read(ref _hmm);

    /// <summary>
    /// Registers the mirror on <paramref name="space"/> (kernel 5.1: hmm_mirror_register), creating the address space's
    /// <see cref="HmmState"/> on first use. The kernel requires the mmap lock held for write; Hetmem accepts the call
    /// with or without it (but not from a notifier callback).
    /// </summary>
    /// <param name="space">The address space to mirror.</param>
    /// <returns>Ok; EINVAL for a null space or a mirror that is already registered; ENOMEM when the HMM state cannot be
    /// created (the address space is exiting).</returns>
    public Errno Register(AddressSpace space)
    {
        if (space is null || Volatile.Read(ref _hmm) is not null)
        {
            return Errno.EINVAL;
        }
        HmmState? hmm = HmmState.GetOrCreate(space);
        if (hmm is null)
        {
            return Errno.ENOMEM;
        }
        if (!hmm.AddMirror(this))
        {
            hmm.Put();
            return Errno.EINVAL;
        }
        return Errno.Ok;
    }

    /// <summary>
    /// Unregisters the mirror (kernel 5.1: hmm_mirror_unregister). Does not call <see cref="Release"/>; waits until no
    /// callback of this mirror runs (except one this thread is inside). Idempotent; also fine after the address space
    /// exited and released the mirror.
    /// </summary>
    public void Unregister()
    {
        HmmState? hmm = Interlocked.Exchange(ref _hmm, null);
        if (hmm is null)
        {
            return;
        }
        hmm.RemoveMirror(this);
        WaitIdle();
        hmm.Put();
    }

    /// <summary>
    /// Updates the device page table for [update.Start, update.End) synchronously before returning (kernel 5.1:
    /// sync_cpu_device_pagetables, called from invalidate_range_start). Take the driver's update lock, drop or
    /// write-protect device entries, flush the device TLB. Must not allocate, sleep on the mm, or call into the mm.
    /// </summary>
    /// <param name="update">The invalidated range.</param>
    /// <returns>Ok; EAGAIN only when <c>update.Blockable</c> is false and the driver would have to sleep.</returns>
    public abstract Errno SyncCpuDevicePagetables(HmmUpdate update);

    /// <summary>
    /// The address space is being torn down (kernel 5.1: hmm_mirror_ops.release). Called at most once, with no Hetmem
    /// lock held; afterwards the driver must not touch the address space through this mirror (it may call
    /// <see cref="Unregister"/> from here).
    /// </summary>
    public virtual void Release()
    {
    }

    internal bool TryEnter(out HmmMirror? outer)
    {
        outer = s_current;
        Interlocked.Increment(ref _active);
        if (Volatile.Read(ref _unlinked) != 0)
        {
            Interlocked.Decrement(ref _active);
            return false;
        }
        s_current = this;
        return true;
    }

    internal void Exit(HmmMirror? outer)
    {
        s_current = outer;
        Interlocked.Decrement(ref _active);
    }

    internal void WaitIdle()
    {
        Interlocked.Exchange(ref _unlinked, 1);
        int own = ReferenceEquals(s_current, this) ? 1 : 0;
        var spin = new SpinWait();
        while (Volatile.Read(ref _active) > own)
        {
            spin.SpinOnce();
        }
    }
}
