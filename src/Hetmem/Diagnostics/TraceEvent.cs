using System.Runtime.CompilerServices;

namespace Hetmem.Diagnostics;

/// <summary>
/// What a trace event records (kernel: the tracepoint subsystems of mm: exceptions:page_fault_user, hmm, migrate,
/// mmu_notifier). The exporter writes it as the event's <c>cat</c>, so Perfetto can filter by it.
/// </summary>
public enum TraceCategory : byte
{
    /// <summary>A CPU page fault (kernel: exceptions:page_fault_user, handle_mm_fault).</summary>
    CpuFault,
    /// <summary>A device fault serviced by a driver (kernel: a driver's GPU/ODP fault handler).</summary>
    DeviceFault,
    /// <summary>An MMU-notifier invalidation; name the span after the notifier event kind (kernel: mmu_notifier_range.event).</summary>
    Invalidate,
    /// <summary>A migration between memory kinds (kernel: migrate_vma_*, migrate_to_ram).</summary>
    Migrate,
    /// <summary>hmm_range_fault and the other HMM helpers.</summary>
    Hmm,
    /// <summary>Frame allocation, reclaim and residency counters.</summary>
    Memory,
    /// <summary>Locking (waits on the mmap lock, page-table locks, device locks).</summary>
    Lock,
    /// <summary>A CLI workload, section or check.</summary>
    Workload,
    /// <summary>A benchmark measurement.</summary>
    Bench,
    /// <summary>Anything else.</summary>
    Other,
}

/// <summary>The Chrome trace-event phase of a <see cref="TraceEvent"/>.</summary>
public enum TraceEventKind : byte
{
    /// <summary>A complete span with a start and a duration (phase <c>X</c>).</summary>
    Complete,
    /// <summary>An instant event (phase <c>i</c>, thread scope).</summary>
    Instant,
    /// <summary>A counter sample (phase <c>C</c>); the series is <see cref="TraceEvent.Arg0"/>'s name.</summary>
    Counter,
}

/// <summary>
/// One named integer argument of a trace event, e.g. the faulting address or the number of pages. A default
/// value (null name) means "no argument". Creating one never allocates.
/// </summary>
public readonly struct TraceArg
{
    /// <summary>Creates an argument.</summary>
    /// <param name="name">The argument name shown in Perfetto; should be a literal or otherwise cached string.</param>
    /// <param name="value">The value.</param>
    /// <param name="hex">Print the value as a hexadecimal string (addresses, PFNs).</param>
    public TraceArg(string name, long value, bool hex = false)
    {
        Name = name;
        Value = value;
        Hex = hex;
    }

    /// <summary>The argument name, or null for "no argument".</summary>
    public string? Name { get; }

    /// <summary>The value.</summary>
    public long Value { get; }

    /// <summary>True when the exporter prints the value as <c>"0x…"</c>.</summary>
    public bool Hex { get; }

    /// <summary>True when this argument is present.</summary>
    public bool IsPresent => Name is not null;

    /// <summary>A virtual address argument named <c>address</c>, printed in hex.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TraceArg Address(ulong address) => new("address", (long)address, hex: true);

    /// <summary>A PFN argument named <c>pfn</c>, printed in hex.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TraceArg Pfn(ulong pfn) => new("pfn", (long)pfn, hex: true);

    /// <summary>A page-count argument named <c>pages</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TraceArg Pages(long pages) => new("pages", pages);

    /// <summary>A byte-count argument named <c>bytes</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TraceArg Bytes(long bytes) => new("bytes", bytes);

    /// <summary>An argument with any name.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TraceArg Of(string name, long value) => new(name, value);
}

/// <summary>
/// A recorded trace event. Timestamps are <see cref="System.Diagnostics.Stopwatch"/> ticks; the exporter converts
/// them to microseconds since <see cref="TraceSnapshot.EpochTimestamp"/>.
/// </summary>
/// <remarks>Immutable once recorded.</remarks>
public readonly struct TraceEvent
{
    /// <summary>Creates an event (used by <see cref="TraceLog"/>; public so other exporters and tests can build events).</summary>
    public TraceEvent(TraceEventKind kind, TraceCategory category, int track, string name, long timestamp, long duration,
        TraceArg arg0, TraceArg arg1, double value)
    {
        Kind = kind;
        Category = category;
        Track = track;
        Name = name;
        Timestamp = timestamp;
        Duration = duration;
        Arg0 = arg0;
        Arg1 = arg1;
        Value = value;
    }

    /// <summary>The phase.</summary>
    public TraceEventKind Kind { get; }

    /// <summary>The category.</summary>
    public TraceCategory Category { get; }

    /// <summary>The <see cref="TraceTrack.Id"/> of the track (thread or device) the event belongs to.</summary>
    public int Track { get; }

    /// <summary>The event name (for counters: the counter name, e.g. <c>resident_pages</c>).</summary>
    public string Name { get; }

    /// <summary>Start time in Stopwatch ticks.</summary>
    public long Timestamp { get; }

    /// <summary>Duration in Stopwatch ticks (complete spans only).</summary>
    public long Duration { get; }

    /// <summary>First argument; for counters, the series name with no value.</summary>
    public TraceArg Arg0 { get; }

    /// <summary>Second argument.</summary>
    public TraceArg Arg1 { get; }

    /// <summary>The sampled value (counters only).</summary>
    public double Value { get; }
}

/// <summary>
/// A named timeline in the exported trace: a thread (<c>cpu0</c>, <c>main</c>) or a device (<c>dmirror0</c>,
/// <c>gpu0</c>). Perfetto shows one row per track, grouped by <see cref="Process"/>.
/// </summary>
/// <remarks>Immutable; obtained from <see cref="TraceLog.RegisterTrack"/> or <see cref="TraceLog.SetThreadTrack"/>.</remarks>
public readonly struct TraceTrack : IEquatable<TraceTrack>
{
    internal TraceTrack(int id) => Id = id;

    /// <summary>The track's id (the exported <c>tid</c>); 0 means "the calling thread's track".</summary>
    public int Id { get; }

    /// <summary>The track's display name.</summary>
    public string Name => TraceLog.TrackName(Id);

    /// <summary>The process group the track is shown under (e.g. <c>hetmem</c> or <c>devices</c>).</summary>
    public string Process => TraceLog.TrackProcess(Id);

    /// <summary>The calling thread's own track.</summary>
    public static TraceTrack CurrentThread => default;

    /// <inheritdoc/>
    public bool Equals(TraceTrack other) => Id == other.Id;

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is TraceTrack t && Equals(t);

    /// <inheritdoc/>
    public override int GetHashCode() => Id;

    /// <summary>Equality by id.</summary>
    public static bool operator ==(TraceTrack left, TraceTrack right) => left.Equals(right);

    /// <summary>Inequality by id.</summary>
    public static bool operator !=(TraceTrack left, TraceTrack right) => !left.Equals(right);

    /// <inheritdoc/>
    public override string ToString() => Id == 0 ? "(current thread)" : Name;
}
