using Hetmem.Devices.Gpu;

namespace Hetmem.Tests.Devices.Gpu;

public class GpuKernelTests
{
    private const ulong Mib = GpuTestRig.Mib;

    private static void VectorAdd(GpuTestRig rig, long n)
    {
        ulong a = rig.MapAnon((ulong)n * 8);
        ulong b = rig.MapAnon((ulong)n * 8);
        ulong c = rig.MapAnon((ulong)n * 8);
        rig.FillLongs(a, n, i => i);
        rig.FillLongs(b, n, i => 3 * i + 1);
        rig.Context.Launch((int)((n + 255) / 256), 256, t =>
        {
            long i = t.GlobalId;
            if (i < n)
            {
                ulong off = (ulong)i * 8;
                t.Store(c + off, t.Load<long>(a + off) + 2 * t.Load<long>(b + off));
            }
        });
        for (long i = 0; i < n; i++)
        {
            Assert.Equal(i + 2 * (3 * i + 1), rig.Cpu.Read<long>(c + (ulong)i * 8));
        }
    }

    [Fact]
    public void AKernelOverRemoteMappedAnonymousMemoryComputesTheRightResult()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.RemoteMap });
        VectorAdd(rig, 100_000);
        Assert.True(rig[GpuCounter.Faults] > 0);
        Assert.True(rig[GpuCounter.Replays] > 0);
        Assert.Equal(0L, rig[GpuCounter.PagesMigratedIn]);
        Assert.True(rig[GpuCounter.RemoteMappedPages] > 0);
        Assert.True(rig[GpuCounter.NotifiersCreated] >= 1);
        Assert.True(rig[GpuCounter.RangesCreated] >= 3);
    }

    [Fact]
    public void AKernelMigratingOnFirstTouchComputesTheRightResultAndMovesPagesToVram()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.MigrateOnFirstTouch, VramBytes = 32 * Mib });
        VectorAdd(rig, 100_000);
        Assert.True(rig[GpuCounter.PagesMigratedIn] > 0);
        Assert.True(rig[GpuCounter.PagesMigratedOut] > 0, "reading the results on the CPU migrates them back");
        Assert.True(rig[GpuCounter.CpuFaults] > 0);
    }
}
