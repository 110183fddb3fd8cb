namespace Hetmem.Mm;

/// <summary>The callback of an interval notifier (kernel: mmu_interval_notifier_ops).</summary>
public interface IMmuIntervalNotifierOps
{
    /// <summary>
    /// CPU entries in <paramref name="range"/> ∩ the subscription are about to change (kernel: invalidate).
    /// Under the driver's update lock, call <see cref="MmuIntervalNotifier.SetSeq"/> with
    /// <paramref name="curSeq"/> and tear down device entries before returning. Return false only when
    /// <c>range.Blockable</c> is false and the lock is contended (the start then fails with EAGAIN).
    /// Must not allocate, destroy, or call back into the mm.
    /// </summary>
    bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq);
}

/// <summary>
/// A notifier watching one interval [Start, End) of one address space, with the sequence-count protocol
/// drivers use to detect invalidations racing with <c>HmmRange.Fault</c> (kernel: struct mmu_interval_notifier).
/// </summary>
/// <remarks>
/// Locking: <c>_seq</c> is written under the driver's update lock (<see cref="SetSeq"/>) or the subscription
/// lock, and read with <c>Volatile</c> in <see cref="ReadRetry"/> / <see cref="CheckRetry"/>.
/// </remarks>
public sealed class MmuIntervalNotifier
{
    internal long _seq;                    // see remarks
    internal bool _inTree;                 // guarded by the subscriptions' lock
    internal bool _removed;                // guarded by the subscriptions' lock

    private MmuIntervalNotifier(AddressSpace space, ulong start, ulong end, IMmuIntervalNotifierOps ops)
    {
        Space = space;
        Start = start;
        End = end;
        Ops = ops;
    }

    /// <summary>The watched address space.</summary>
    public AddressSpace Space { get; }
    /// <summary>First watched address.</summary>
    public ulong Start { get; }
    /// <summary>End of the watched interval (exclusive; <see cref="ulong.MaxValue"/> when it reaches the top).</summary>
    public ulong End { get; }
    /// <summary>The callback.</summary>
    public IMmuIntervalNotifierOps Ops { get; }

    /// <summary>
    /// Registers a notifier over [<paramref name="start"/>, <paramref name="start"/> + <paramref name="length"/>)
    /// (kernel: mmu_interval_notifier_insert). A notifier inserted during an invalidation must assume it was invalidated.
    /// </summary>
    /// <exception cref="MmException">EOVERFLOW for a zero length or an interval that wraps; EINVAL when the address space is dead.</exception>
    public static MmuIntervalNotifier Insert(AddressSpace space, ulong start, ulong length, IMmuIntervalNotifierOps ops)
    {
        ArgumentNullException.ThrowIfNull(space);
        ArgumentNullException.ThrowIfNull(ops);
        if (length == 0 || start + length - 1 < start)
        {
            MmException.Throw(Errno.EOVERFLOW, $"interval notifier [0x{start:x}, +0x{length:x}) is empty or wraps");
        }
        ulong end = start + length == 0 ? ulong.MaxValue : start + length;
        var sub = new MmuIntervalNotifier(space, start, end, ops);
        space.Notifiers.InsertInterval(sub);
        return sub;
    }

    /// <summary>
    /// Unregisters the notifier (kernel: mmu_interval_notifier_remove). Waits for an invalidation in progress;
    /// after return no callback of it runs. Must not be called from its own callback. Idempotent.
    /// </summary>
    public void Remove() => Space.Notifiers.RemoveInterval(this);

    /// <summary>
    /// Starts a read-side critical section (kernel: mmu_interval_read_begin): waits while an invalidation
    /// touching this notifier is in progress and returns the sequence to pass to <see cref="ReadRetry"/>.
    /// </summary>
    public long ReadBegin() => Space.Notifiers.ReadBegin(this);

    /// <summary>
    /// True when an invalidation started since <paramref name="seq"/> was read (kernel: mmu_interval_read_retry).
    /// Call under the same update lock the invalidate callback takes; false then means the results may be installed.
    /// </summary>
    public bool ReadRetry(long seq) => Volatile.Read(ref _seq) != seq;

    /// <summary>Lock-free hint: true means a collision certainly happened (kernel: mmu_interval_check_retry).</summary>
    public bool CheckRetry(long seq) => Volatile.Read(ref _seq) != seq;

    /// <summary>Called by the invalidate callback, under the driver's update lock, with the callback's cur_seq (kernel: mmu_interval_set_seq).</summary>
    public void SetSeq(long curSeq) => Volatile.Write(ref _seq, curSeq);

    /// <summary>True when [start, end) intersects the watched interval.</summary>
    public bool Intersects(ulong start, ulong end) => start < End && Start < end;
}
