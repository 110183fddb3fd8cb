namespace Hetmem.Mm;

/// <summary>Why page-table entries change (kernel: enum mmu_notifier_event, same values).</summary>
public enum MmuNotifierEvent
{
    /// <summary>Range is being unmapped (munmap, mremap old range, exit).</summary>
    Unmap = 0,
    /// <summary>Entries are cleared for another reason (madvise, COW, migration, reclaim, truncate, THP split).</summary>
    Clear = 1,
    /// <summary>Protection of the whole range changes from the VMA's protection (mprotect).</summary>
    ProtectionVma = 2,
    /// <summary>Per-page write-protection (fork COW setup, writeback cleaning).</summary>
    ProtectionPage = 3,
    /// <summary>Soft-dirty tracking reset.</summary>
    SoftDirty = 4,
    /// <summary>The address space is torn down (interval notifiers only).</summary>
    Release = 5,
    /// <summary>migrate_vma collecting or inserting pages; <see cref="MmuNotifierRange.Owner"/> is the pgmap owner.</summary>
    Migrate = 6,
    /// <summary>A PTE becomes device-exclusive; <see cref="MmuNotifierRange.Owner"/> is the caller's owner.</summary>
    Exclusive = 7,
}

/// <summary>One invalidation (kernel: struct mmu_notifier_range).</summary>
/// <param name="Space">The address space.</param>
/// <param name="Start">First address, page aligned.</param>
/// <param name="End">End address (exclusive), page aligned.</param>
/// <param name="Event">Why.</param>
/// <param name="Blockable">False only for the non-blocking start (OOM reaper): callbacks must not sleep.</param>
/// <param name="Owner">For Migrate and Exclusive events, the owner that caused them; else null.</param>
public readonly record struct MmuNotifierRange(AddressSpace Space, ulong Start, ulong End, MmuNotifierEvent Event, bool Blockable = true, object? Owner = null)
{
    /// <summary>True when [start, end) intersects this range.</summary>
    public bool Intersects(ulong start, ulong end) => start < End && Start < end;
}
