using Hetmem.Devices.Rdma;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Rdma;

public sealed class RdmaKvWorkloadTests
{
    [Fact]
    public void ClientsReadOnlyFreshValuesWhileTheOwnerUpdatesAndCompactsTheDaxFile()
    {
        using var dir = new RdmaTempDir();
        using var memory = new PhysicalMemory(64UL << 20);
        RdmaKvReport r = RdmaKvWorkload.Run(memory, new RdmaKvOptions
        {
            Clients = 2,
            Keys = 256,
            Duration = TimeSpan.FromMilliseconds(600),
            Seed = 3,
            DaxDirectory = dir.Path,
            CompactionInterval = TimeSpan.FromMilliseconds(5),
        });
        Assert.True(r.Passed, r.ToString());
        Assert.Equal(0, r.StaleReads);
        Assert.Equal(0, r.RemoteErrors);
        Assert.True(r.Verified > 50, r.ToString());
        Assert.True(r.Compactions > 0 && r.Invalidations > 0, r.ToString());
        Assert.True(r.OdpFaults > 0, r.ToString());
        Assert.Equal(1, r.PinnedDaxRefused);
        Assert.Contains(r.ToNamedList(), kv => kv.Key == "pinned_dax_refused" && kv.Value == 1);
        Assert.Equal(["verified", "ops", "stale_reads", "remote_errors", "odp_faults", "invalidations", "pinned_dax_refused", "seconds"],
            r.ToNamedList().Take(8).Select(kv => kv.Key));
        Assert.Empty(Directory.GetFiles(dir.Path));
    }
}
