namespace Hetmem.Mm;

/// <summary>
/// A classic whole-address-space notifier subscription (kernel: struct mmu_notifier with mmu_notifier_ops).
/// Override the callbacks you need; register with <see cref="AddressSpace.RegisterNotifier"/>.
/// </summary>
/// <remarks>
/// <para>Guarantees: every start that returned <see cref="Errno.Ok"/> is followed by exactly one end with the same
/// range (unless the subscription was unregistered or released in between); starts may nest on one thread and run
/// concurrently on several; <see cref="Release"/> runs exactly once, from exit or from unregister, whichever comes
/// first; after <see cref="AddressSpace.UnregisterNotifier"/> returns, no callback of the subscription runs.</para>
/// <para>Locking: <c>_activeCallbacks</c>, <c>_released</c> and <c>_unlinked</c> are atomic (Interlocked); the
/// increment of <c>_activeCallbacks</c> before reading <c>_unlinked</c> pairs with the exchange of <c>_unlinked</c>
/// before reading <c>_activeCallbacks</c> in unregister (a Dekker handshake: one side always sees the other).</para>
/// </remarks>
public abstract class MmuNotifier
{
    internal int _activeCallbacks;   // atomic; callbacks of this subscription running now (unregister waits for 0)
    internal int _released;          // atomic 0/1; release delivered exactly once
    internal int _unlinked;          // atomic 0/1; set when the subscription left the list: callbacks are skipped

    /// <summary>The address space this subscription is registered on, or null.</summary>
    public AddressSpace? Space { get; internal set; }

    /// <summary>
    /// Entries in <paramref name="range"/> are about to change; the old pages are still mapped and referenced
    /// (kernel: invalidate_range_start). Return <see cref="Errno.EAGAIN"/> only when <c>range.Blockable</c> is
    /// false and the callback would have to sleep; a subscription that can fail must not rely on its end being
    /// skipped: on a failed non-blockable start the core calls every subscription's end at once.
    /// </summary>
    /// <param name="range">The invalidation.</param>
    /// <returns>Ok, or EAGAIN for a non-blockable range.</returns>
    public virtual Errno InvalidateRangeStart(in MmuNotifierRange range) => Errno.Ok;

    /// <summary>The change announced by the matching start is done (kernel: invalidate_range_end).</summary>
    /// <param name="range">The same range the start received.</param>
    public virtual void InvalidateRangeEnd(in MmuNotifierRange range)
    {
    }

    /// <summary>
    /// The address space is being torn down, or the subscription is being unregistered; called exactly once (kernel:
    /// release). After it returns the driver must not touch the address space through this subscription.
    /// </summary>
    /// <param name="space">The address space.</param>
    public virtual void Release(AddressSpace space)
    {
    }

    [ThreadStatic]
    private static MmuNotifier? s_current;   // thread-local: the subscription whose callback this thread runs

    /// <summary>Enters a callback unless the subscription was unlinked (see remarks).</summary>
    internal bool TryEnterCallback(out MmuNotifier? outer)
    {
        outer = s_current;
        Interlocked.Increment(ref _activeCallbacks);
        if (Volatile.Read(ref _unlinked) != 0)
        {
            Interlocked.Decrement(ref _activeCallbacks);
            return false;
        }
        s_current = this;
        return true;
    }

    /// <summary>Leaves a callback entered with <see cref="TryEnterCallback"/>.</summary>
    internal void ExitCallback(MmuNotifier? outer)
    {
        s_current = outer;
        Interlocked.Decrement(ref _activeCallbacks);
    }

    /// <summary>
    /// Marks the subscription unlinked and waits until no callback of it runs (kernel: synchronize_srcu), except the
    /// one this thread may be running (a release that unregisters its own subscription must not wait for itself).
    /// </summary>
    internal void UnlinkAndWait()
    {
        Interlocked.Exchange(ref _unlinked, 1);
        int own = ReferenceEquals(s_current, this) ? 1 : 0;
        var spin = new SpinWait();
        while (Volatile.Read(ref _activeCallbacks) > own)
        {
            spin.SpinOnce();
        }
    }
}
