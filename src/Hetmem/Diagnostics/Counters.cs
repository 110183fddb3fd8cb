using System.Runtime.CompilerServices;

namespace Hetmem.Diagnostics;

/// <summary>Event counters (kernel: vmstat events). Names follow /proc/vmstat where one exists.</summary>
public enum Counter
{
    /// <summary>CPU page faults handled (pgfault).</summary>
    PgFault,
    /// <summary>Faults that needed I/O or swap-in (pgmajfault).</summary>
    PgMajFault,
    /// <summary>Anonymous faults that allocated a page.</summary>
    AnonFault,
    /// <summary>Read faults served by the shared zero page.</summary>
    ZeroPageFault,
    /// <summary>Copy-on-write breaks.</summary>
    CowFault,
    /// <summary>Page-cache file faults.</summary>
    FileFault,
    /// <summary>DAX faults installing a PTE.</summary>
    DaxPteFault,
    /// <summary>DAX faults installing a PMD.</summary>
    DaxPmdFault,
    /// <summary>DAX faults installing a PUD.</summary>
    DaxPudFault,
    /// <summary>hugetlbfs faults.</summary>
    HugetlbFault,
    /// <summary>Transparent huge pages allocated at fault (thp_fault_alloc).</summary>
    ThpFaultAlloc,
    /// <summary>THP PMDs split (thp_split_pmd).</summary>
    ThpSplitPmd,
    /// <summary>Pages swapped in (pswpin).</summary>
    SwapIn,
    /// <summary>Pages swapped out (pswpout).</summary>
    SwapOut,
    /// <summary>Clean page-cache pages dropped by reclaim.</summary>
    PageCacheDropped,
    /// <summary>Software TLB shootdowns (tlb_remote_shootdown).</summary>
    TlbShootdown,
    /// <summary>Software TLB misses (page walks by a Cpu).</summary>
    TlbMiss,
    /// <summary>MMU notifier invalidate_range_start calls.</summary>
    InvalidateRangeStart,
    /// <summary>Interval notifier invalidate callbacks run.</summary>
    IntervalInvalidate,
    /// <summary>hmm_range_fault calls.</summary>
    HmmRangeFault,
    /// <summary>hmm_range_fault calls that returned EBUSY.</summary>
    HmmRangeFaultBusy,
    /// <summary>Device faults serviced.</summary>
    DeviceFault,
    /// <summary>Pages migrated to device memory.</summary>
    MigrateToDevice,
    /// <summary>Pages migrated to system memory.</summary>
    MigrateToRam,
    /// <summary>Device-exclusive entries installed.</summary>
    DeviceExclusive,
    /// <summary>Number of counters.</summary>
    Count,
}

/// <summary>Process-wide event counters: padded atomic cells, allocation-free to bump (kernel: vm_event_states).</summary>
/// <remarks>Locking: each cell is atomic (Interlocked); a <see cref="Snapshot"/> is not a consistent cut.</remarks>
public static class Counters
{
    private const int Stride = 8; // one 64-byte cache line per counter
    private static readonly long[] s_cells = new long[(int)Counter.Count * Stride];

    /// <summary>Adds one.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Inc(Counter c) => Interlocked.Increment(ref s_cells[(int)c * Stride]);

    /// <summary>Adds <paramref name="n"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Add(Counter c, long n) => Interlocked.Add(ref s_cells[(int)c * Stride], n);

    /// <summary>Current value.</summary>
    public static long Read(Counter c) => Interlocked.Read(ref s_cells[(int)c * Stride]);

    /// <summary>All counters by name.</summary>
    public static IReadOnlyDictionary<string, long> Snapshot()
    {
        var d = new Dictionary<string, long>();
        for (int i = 0; i < (int)Counter.Count; i++)
        {
            d[((Counter)i).ToString()] = Read((Counter)i);
        }
        return d;
    }
}
