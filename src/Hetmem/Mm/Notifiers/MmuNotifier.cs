namespace Hetmem.Mm;

/// <summary>
/// A classic whole-address-space notifier subscription (kernel: struct mmu_notifier with mmu_notifier_ops).
/// Override the callbacks you need; register with <see cref="AddressSpace.RegisterNotifier"/>.
/// </summary>
public abstract class MmuNotifier
{
    internal int _activeCallbacks;   // atomic; callbacks of this subscription running now (unregister waits for 0)
    internal int _released;          // atomic 0/1; release delivered exactly once

    /// <summary>The address space this subscription is registered on, or null.</summary>
    public AddressSpace? Space { get; internal set; }

    /// <summary>
    /// Entries in <paramref name="range"/> are about to change; the old pages are still mapped and referenced
    /// (kernel: invalidate_range_start). Return <see cref="Errno.EAGAIN"/> only when <c>range.Blockable</c> is
    /// false and the callback would have to sleep.
    /// </summary>
    public virtual Errno InvalidateRangeStart(in MmuNotifierRange range) => Errno.Ok;

    /// <summary>The change announced by the matching start is done (kernel: invalidate_range_end).</summary>
    public virtual void InvalidateRangeEnd(in MmuNotifierRange range)
    {
    }

    /// <summary>The address space is being torn down, or the subscription is being unregistered; called exactly once (kernel: release).</summary>
    public virtual void Release(AddressSpace space)
    {
    }
}
