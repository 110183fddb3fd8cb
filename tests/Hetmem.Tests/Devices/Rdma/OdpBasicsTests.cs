using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;
using static Hetmem.Tests.Devices.Rdma.RdmaTestBed;

namespace Hetmem.Tests.Devices.Rdma;

public sealed class OdpBasicsTests : IDisposable
{
    private readonly RdmaTestBed _bed = new();

    public void Dispose() => _bed.Dispose();

    [Fact]
    public void RemoteWriteThenReadRoundTripsThroughAnOdpRegionOnAnotherDevice()
    {
        ulong a = _bed.MapServer(4 * Mib);
        MemoryRegion mr = _bed.ServerPd.RegMr(a, 4 * Mib, AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ | AccessFlags.ON_DEMAND);
        byte[] data = Pattern(10000, 1);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a + 4000, mr.Rkey, data));
        byte[] cpu = new byte[data.Length];
        _bed.ServerCpu.Read(a + 4000, cpu);
        Assert.Equal(data, cpu);
        (WcStatus s, byte[] back) = _bed.Read(a + 4000, mr.Rkey, data.Length, localOffset: 100);
        Assert.Equal(WcStatus.SUCCESS, s);
        Assert.Equal(data, back);
        Assert.True(mr.Stats.PageFaults > 0);
    }
}
