namespace Hetmem.Devices.Rdma;

/// <summary>
/// Per-region ODP statistics with the names mlx5 exports over rdma netlink (<c>rdma stat show mr</c>; kernel:
/// <c>struct mlx5_ib_mr.odp_stats</c>, <c>drivers/infiniband/hw/mlx5/restrack.c</c>).
/// </summary>
/// <remarks>
/// As in mlx5, the plain counters count pages and the <c>_handled</c> counters count events:
/// <see cref="PageFaults"/> adds the pages of every serviced fault (demand faults and the prefetch that follows a
/// remote fault, which runs through the same fault path), <see cref="PageFaultsHandled"/> adds one per successful
/// fault; <see cref="PageInvalidations"/> adds the translations an invalidation zapped and
/// <see cref="PageInvalidationsHandled"/> one per invalidation that found the region populated;
/// <see cref="PagePrefetch"/> adds the pages made present by <see cref="ProtectionDomain.AdviseMr"/>.
/// Locking: every field is updated with <see cref="Interlocked"/> and read with <c>Interlocked.Read</c>.
/// </remarks>
public sealed class OdpStats
{
    internal long _pageFaults;                 // atomic
    internal long _pageFaultsHandled;          // atomic
    internal long _pageInvalidations;          // atomic
    internal long _pageInvalidationsHandled;   // atomic
    internal long _pagePrefetch;               // atomic

    /// <summary>Pages made present by faults (mlx5: page_faults).</summary>
    public long PageFaults => Interlocked.Read(ref _pageFaults);
    /// <summary>Faults serviced successfully (mlx5: page_faults_handled).</summary>
    public long PageFaultsHandled => Interlocked.Read(ref _pageFaultsHandled);
    /// <summary>Translations zapped by MMU-notifier invalidations (mlx5: page_invalidations).</summary>
    public long PageInvalidations => Interlocked.Read(ref _pageInvalidations);
    /// <summary>Invalidations handled while the region had translations (mlx5: page_invalidations_handled).</summary>
    public long PageInvalidationsHandled => Interlocked.Read(ref _pageInvalidationsHandled);
    /// <summary>Pages made present by ibv_advise_mr prefetch (mlx5: page_prefetch).</summary>
    public long PagePrefetch => Interlocked.Read(ref _pagePrefetch);

    /// <summary>The counters under their mlx5 names, in the order <c>rdma stat show mr</c> prints them.</summary>
    public IReadOnlyList<KeyValuePair<string, long>> ToNamedList() =>
    [
        new("page_faults", PageFaults),
        new("page_faults_handled", PageFaultsHandled),
        new("page_invalidations", PageInvalidations),
        new("page_invalidations_handled", PageInvalidationsHandled),
        new("page_prefetch", PagePrefetch),
    ];

    /// <inheritdoc/>
    public override string ToString() => string.Join(' ', ToNamedList().Select(kv => $"{kv.Key} {kv.Value}"));

    internal void AddFault(long pages)
    {
        Interlocked.Add(ref _pageFaults, pages);
        Interlocked.Increment(ref _pageFaultsHandled);
    }

    internal void AddInvalidation(long pages)
    {
        Interlocked.Add(ref _pageInvalidations, pages);
        Interlocked.Increment(ref _pageInvalidationsHandled);
    }

    internal void AddPrefetch(long pages) => Interlocked.Add(ref _pagePrefetch, pages);
}
