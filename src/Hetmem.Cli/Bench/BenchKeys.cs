namespace Hetmem.Cli.Bench;

/// <summary>A row of the <c>hetmem bench</c> table: a Hetmem measurement next to its host-kernel counterpart.</summary>
/// <param name="Operation">What is measured.</param>
/// <param name="Unit">The unit of both values.</param>
/// <param name="HetmemKey">The key of the Hetmem-side measurement.</param>
/// <param name="HostKey">The key of the host-kernel measurement, or null when <paramref name="HostValue"/> is a constant.</param>
/// <param name="HostValue">A constant host value (Linux's 64-byte struct page), when there is nothing to measure.</param>
/// <param name="HigherIsBetter">True for bandwidths.</param>
/// <param name="Target">The DESIGN.md target for the Hetmem value, if any.</param>
public sealed record BenchComparison(string Operation, string Unit, string HetmemKey, string? HostKey, double? HostValue,
    bool HigherIsBetter, double? Target)
{
    /// <summary>True when <paramref name="value"/> meets <see cref="Target"/> (true when there is no target).</summary>
    public bool MeetsTarget(double value) => Target is not { } t || (HigherIsBetter ? value >= t : value <= t);
}

/// <summary>
/// The JSON keys of <c>hetmem bench</c> (per 4 KiB page unless the name says otherwise) and the pairs the table
/// compares. Hetmem-side measurements register under these keys with <see cref="BenchRegistry.Add"/>.
/// </summary>
public static class BenchKeys
{
    /// <summary>Host: <c>madvise(MADV_POPULATE_READ)</c> of anonymous memory, ns a page.</summary>
    public const string HostPopulateRead = "host_populate_read_ns";
    /// <summary>Host: <c>madvise(MADV_POPULATE_WRITE)</c> of anonymous memory (allocate + zero), ns a page.</summary>
    public const string HostPopulateWrite = "host_populate_write_ns";
    /// <summary>Host: <c>munmap</c> of populated anonymous memory, ns a page.</summary>
    public const string HostMunmap = "host_munmap_ns";
    /// <summary>Host: <c>mprotect(PROT_READ)</c> of populated anonymous memory, ns a page.</summary>
    public const string HostMprotect = "host_mprotect_ns";
    /// <summary>Host: a native dependent 8-byte load hitting the cache, ns an access.</summary>
    public const string NativeRead = "native_read_ns";
    /// <summary>Host: libc <c>memcpy</c> bandwidth, GB/s.</summary>
    public const string MemcpyGbps = "memcpy_gbps";

    /// <summary>Hetmem: <c>HmmRange.Fault</c> snapshot of a resident range, ns a page.</summary>
    public const string Snapshot = "snapshot_ns";
    /// <summary>Hetmem: anonymous write fault including zeroing, ns a page.</summary>
    public const string AnonFault = "anon_fault_ns";
    /// <summary>Hetmem: <c>Munmap</c> of a range mirrored by two devices, ns a page.</summary>
    public const string MunmapMirrored = "munmap_mirrored_ns";
    /// <summary>Hetmem: <c>Mprotect</c> of a mirrored range, ns a page.</summary>
    public const string MprotectMirrored = "mprotect_mirrored_ns";
    /// <summary>Hetmem: an 8-byte CPU read through the software TLB (hit), ns an access.</summary>
    public const string TlbHit = "tlb_hit_ns";
    /// <summary>Hetmem: migration to device memory, GB/s.</summary>
    public const string MigrateGbps = "migrate_gbps";
    /// <summary>Hetmem: bytes of metadata a frame (<c>PhysicalMemory.FrameMetadataBytes</c>).</summary>
    public const string FrameMetadataBytes = "frame_metadata_bytes";

    /// <summary>The host-kernel keys, measured by <see cref="HostBenchmarks"/>.</summary>
    public static IReadOnlyList<string> Host { get; } =
        [HostPopulateRead, HostPopulateWrite, HostMunmap, HostMprotect, NativeRead, MemcpyGbps];

    /// <summary>The Hetmem-side keys, in table order.</summary>
    public static IReadOnlyList<string> Hetmem { get; } =
        [Snapshot, AnonFault, MunmapMirrored, MprotectMirrored, TlbHit, MigrateGbps, FrameMetadataBytes];

    /// <summary>Every standard key; all of them appear in <c>--json</c> output (null when not measured).</summary>
    public static IReadOnlyList<string> All { get; } = [.. Host, .. Hetmem];

    /// <summary>The table rows (DESIGN.md, "Performance targets").</summary>
    public static IReadOnlyList<BenchComparison> Comparisons { get; } =
    [
        new("HmmRange.Fault snapshot, resident range", "ns/page", Snapshot, HostPopulateRead, null, false, 10),
        new("anonymous write fault incl. zeroing", "ns/page", AnonFault, HostPopulateWrite, null, false, 600),
        new("munmap, range mirrored by two devices", "ns/page", MunmapMirrored, HostMunmap, null, false, 150),
        new("mprotect, mirrored range", "ns/page", MprotectMirrored, HostMprotect, null, false, null),
        new("CPU 8-byte read, software TLB hit", "ns/read", TlbHit, NativeRead, null, false, 3),
        new("migrate to device memory", "GB/s", MigrateGbps, MemcpyGbps, null, true, 8),
        new("frame metadata", "B/frame", FrameMetadataBytes, null, 64, false, 32),
    ];
}
