using Hetmem.Devices.Rdma;

namespace Hetmem.Cli.Workloads;

/// <summary><c>hetmem run rdma-kv</c>: see <see cref="RdmaKvWorkload"/> and docs/rdma.md.</summary>
internal sealed class RdmaKvCliWorkload : IWorkload
{
    public string Name => "rdma-kv";

    public string Description => "A DAX-file key-value store read by RDMA clients over ODP while the owner updates and compacts it.";

    public WorkloadResult Run(WorkloadContext context)
    {
        var r = new WorkloadResult(Name);
        RdmaKvReport? report = null;
        r.Check("4 clients read the store over ODP while the owner updates and compacts it", () =>
        {
            report = RdmaKvWorkload.Run(context.Memory, new RdmaKvOptions { Clients = 4, Duration = context.Duration, Seed = context.Seed, DaxDirectory = context.DaxDirectory }, context.Cancellation);
            return $"{report.OpsPerSecond:0} ops/s, {report.OdpFaults} ODP faults, {report.Invalidations} invalidations";
        });
        if (report is null)
        {
            return r;
        }
        r.Check("no client read a stale value", report.StaleReads == 0, $"{report.StaleReads} stale of {report.Verified} verified");
        r.Check("no remote operation failed", report.RemoteErrors == 0, $"{report.RemoteErrors} remote errors");
        r.Check("compaction invalidated the NIC's translations", report.Invalidations > 0, $"{report.Compactions} compactions");
        r.Check("pinned registration of the DAX mapping is refused with EOPNOTSUPP", report.PinnedDaxRefused == 1);
        foreach ((string key, double value) in report.ToNamedList())
        {
            r.Counter(key, value);
        }
        return r;
    }
}

internal sealed class RdmaExtension : ICliExtension
{
    public void Register(CliRegistries registries) => registries.Workloads.Add(new RdmaKvCliWorkload());
}
