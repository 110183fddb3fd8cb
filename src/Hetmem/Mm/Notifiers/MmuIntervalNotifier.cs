namespace Hetmem.Mm;

/// <summary>The callback of an interval notifier (kernel: mmu_interval_notifier_ops).</summary>
public interface IMmuIntervalNotifierOps
{
    /// <summary>
    /// CPU entries in <paramref name="range"/> ∩ the subscription are about to change (kernel: invalidate).
    /// Under the driver's update lock, call <see cref="MmuIntervalNotifier.SetSeq"/> with
    /// <paramref name="curSeq"/> and tear down device entries before returning. Return false only when
    /// <c>range.Blockable</c> is false and the lock is contended (the start then fails with EAGAIN).
    /// Must not allocate, destroy, or call back into the mm (in particular not <see cref="MmuIntervalNotifier.Remove"/>
    /// or <see cref="MmuIntervalNotifier.ReadBegin"/>).
    /// </summary>
    /// <param name="subscription">The notifier whose interval intersects the range.</param>
    /// <param name="range">The invalidation; it may be larger than the subscription's interval.</param>
    /// <param name="curSeq">The (odd) address-space sequence to pass to <see cref="MmuIntervalNotifier.SetSeq"/>.</param>
    /// <returns>True when the device entries are gone; false only for a non-blockable range.</returns>
    bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq);
}

/// <summary>
/// A notifier watching one interval [Start, End) of one address space, with the sequence-count protocol
/// drivers use to detect invalidations racing with <c>HmmRange.Fault</c> (kernel: struct mmu_interval_notifier,
/// mm/mmu_notifier.c).
/// </summary>
/// <remarks>
/// <para>Overview: <see cref="Insert"/> once per device window, <see cref="ReadBegin"/> before walking the CPU page
/// tables, <see cref="ReadRetry"/> under the driver's update lock before programming device entries, and in the
/// callback <see cref="SetSeq"/> under the same lock. Many notifiers per address space are cheap: they live in an
/// interval tree, so an invalidation costs O(log n + k) for k intersecting notifiers.</para>
/// <para>Locking: <c>_seq</c> is written under the driver's update lock (<see cref="SetSeq"/>) or under the
/// subscriptions' lock (insert), and read with <c>Volatile</c> in <see cref="ReadRetry"/> / <see cref="CheckRetry"/>
/// (pairs with the <c>Volatile.Write</c> in <see cref="SetSeq"/>). The tree links, <c>_inTree</c>, <c>_removed</c>
/// and the deferred-list link are protected by the <see cref="MmuNotifierSubscriptions"/> lock; the tree links are
/// additionally frozen (read lock-free by invalidations) while the address-space sequence is odd.</para>
/// </remarks>
public sealed class MmuIntervalNotifier
{
    private static long s_nextId;

    internal long _seq;                    // see remarks
    internal bool _inTree;                 // guarded by the subscriptions' lock
    internal bool _removed;                // guarded by the subscriptions' lock
    internal bool _onDeferred;             // guarded by the subscriptions' lock: queued for a deferred insert/remove
    internal MmuIntervalNotifier? _deferredNext; // guarded by the subscriptions' lock: intrusive deferred list
    internal MmuIntervalNotifier? _left;   // interval tree links, guarded by the subscriptions' lock (see remarks)
    internal MmuIntervalNotifier? _right;
    internal int _height;                  // AVL height of the subtree rooted here
    internal ulong _subtreeMaxEnd;         // largest End in the subtree rooted here (interval tree augmentation)
    internal readonly long _id;            // immutable tie-breaker: the tree orders by (Start, _id)

    private MmuIntervalNotifier(AddressSpace space, ulong start, ulong end, IMmuIntervalNotifierOps ops)
    {
        Space = space;
        Start = start;
        End = end;
        Ops = ops;
        _id = Interlocked.Increment(ref s_nextId);
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
    /// (kernel: mmu_interval_notifier_insert). A notifier inserted while an invalidation is in progress must assume
    /// it was invalidated: its first <see cref="ReadBegin"/> waits for that invalidation to end, and a sequence read
    /// before the end fails <see cref="ReadRetry"/>. Does not take the mmap lock.
    /// </summary>
    /// <param name="space">The address space to watch.</param>
    /// <param name="start">First address.</param>
    /// <param name="length">Length in bytes (need not be page aligned).</param>
    /// <param name="ops">The invalidate callback.</param>
    /// <returns>The registered notifier.</returns>
    /// <exception cref="MmException">EOVERFLOW for a zero length or an interval whose last byte wraps; EINVAL when the
    /// address space is dead (its exit started).</exception>
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
    /// Unregisters the notifier (kernel: mmu_interval_notifier_remove). When an invalidation touching any notifier is
    /// in progress the removal is deferred to its end and this call waits for it; after return no callback of this
    /// notifier is running or will run. Must not be called from an invalidate callback, nor while holding a lock
    /// such a callback takes. Idempotent.
    /// </summary>
    /// <exception cref="InvalidOperationException">Called from an invalidate callback of the same address space (it
    /// would wait for itself).</exception>
    public void Remove() => Space.Notifiers.RemoveInterval(this);

    /// <summary>
    /// Starts a read-side critical section (kernel: mmu_interval_read_begin): waits while an invalidation
    /// touching this notifier is in progress and returns the sequence to pass to <see cref="ReadRetry"/>.
    /// The returned value may already be stale; <see cref="ReadRetry"/> catches that.
    /// </summary>
    /// <returns>The notifier's sequence.</returns>
    public long ReadBegin() => Space.Notifiers.ReadBegin(this);

    /// <summary>
    /// True when an invalidation started since <paramref name="seq"/> was read (kernel: mmu_interval_read_retry).
    /// Call under the same update lock the invalidate callback takes; false then means the results may be installed,
    /// and no invalidation can pass its <see cref="SetSeq"/> until the lock is dropped.
    /// </summary>
    /// <param name="seq">The value <see cref="ReadBegin"/> returned.</param>
    /// <returns>True when the results must be discarded.</returns>
    public bool ReadRetry(long seq) => Volatile.Read(ref _seq) != seq;

    /// <summary>Lock-free hint: true means a collision certainly happened; false is no guarantee (kernel: mmu_interval_check_retry).</summary>
    /// <param name="seq">The value <see cref="ReadBegin"/> returned.</param>
    /// <returns>True when an invalidation started since <paramref name="seq"/> was read.</returns>
    public bool CheckRetry(long seq) => Volatile.Read(ref _seq) != seq;

    /// <summary>
    /// Called by the invalidate callback, under the driver's update lock, with the callback's <c>curSeq</c> (kernel:
    /// mmu_interval_set_seq). A callback that forgets it breaks the retry protocol.
    /// </summary>
    /// <param name="curSeq">The odd sequence the callback received.</param>
    public void SetSeq(long curSeq) => Volatile.Write(ref _seq, curSeq);

    /// <summary>True when [start, end) intersects the watched interval.</summary>
    /// <param name="start">First address.</param>
    /// <param name="end">End address (exclusive).</param>
    /// <returns>True on overlap.</returns>
    public bool Intersects(ulong start, ulong end) => start < End && Start < end;

    /// <inheritdoc/>
    public override string ToString() => $"mmu_interval_notifier [0x{Start:x}, 0x{End:x}) seq={Volatile.Read(ref _seq)}";
}
