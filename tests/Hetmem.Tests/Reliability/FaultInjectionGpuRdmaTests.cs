using Hetmem.Devices.Gpu;
using Hetmem.Devices.Rdma;
using Hetmem.Diagnostics;
using Hetmem.Physical;
using Hetmem.Tests.Devices.Gpu;
using Hetmem.Tests.Devices.Rdma;
using Hetmem.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Hetmem.Tests.Reliability;

/// <summary>
/// VRAM and frame allocation failures during GPU kernels, and lost transport sends on an RDMA connection: each
/// surfaces as the driver's fallback, a launch errno or a failed work completion, and nothing leaks.
/// </summary>
[Collection(FaultInjectionCollection.Name)]
public sealed class FaultInjectionGpuRdmaTests(ITestOutputHelper output)
{
    private const ulong Mib = GpuTestRig.Mib;

    private static void VectorAdd(GpuTestRig rig, ulong a, ulong b, ulong c, long n)
    {
        rig.Context.Launch((int)((n + 255) / 256), 256, t =>
        {
            long i = t.GlobalId;
            if (i < n)
            {
                ulong off = (ulong)i * 8;
                t.Store(c + off, t.Load<long>(a + off) + 2 * t.Load<long>(b + off));
            }
        });
    }

    [Fact]
    public void VramAllocationFailuresMakeTheGpuServeFromSystemMemoryWithTheRightResult()
    {
        int seed = Seed.Get(output, nameof(VramAllocationFailuresMakeTheGpuServeFromSystemMemoryWithTheRightResult));
        const long n = 512 * 1024; // 4 MiB an array: several 2 MiB VA blocks, each wanting a VRAM chunk
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.MigrateOnFirstTouch, VramBytes = 16 * Mib });
        ulong a = rig.MapAnon(n * 8), b = rig.MapAnon(n * 8), c = rig.MapAnon(n * 8);
        rig.FillLongs(a, n, i => i);
        rig.FillLongs(b, n, i => 3 * i + 1);
        try
        {
            // Every other chunk allocation fails.
            FaultInjection.Configure(new FaultInjectionOptions { Seed = seed, Interval = 2, Sites = FaultSites.DeviceMemoryAllocation, Domain = rig.Memory });
            VectorAdd(rig, a, b, c, n);
            output.WriteLine($"{FaultInjection.Injected(FaultSites.DeviceMemoryAllocation)} of {FaultInjection.Calls(FaultSites.DeviceMemoryAllocation)} VRAM chunk allocations failed");
            Assert.True(FaultInjection.Injected(FaultSites.DeviceMemoryAllocation) > 0, "the workload allocated VRAM");
        }
        finally
        {
            FaultInjection.Disable();
        }
        for (long i = 0; i < n; i += 97)
        {
            Assert.Equal(i + 2 * (3 * i + 1), rig.Cpu.Read<long>(c + (ulong)i * 8));
            Assert.Equal(i, rig.Cpu.Read<long>(a + (ulong)i * 8));
        }
    } // the rig asserts frames and VRAM pages balance and no stale translation was used

    [Theory]
    [InlineData(PlacementPolicy.MigrateOnFirstTouch)]
    [InlineData(PlacementPolicy.RemoteMap)]
    public void FrameAllocationFailuresDuringAGpuKernelFailTheLaunchWithEnomemOrEfaultAndLeakNothing(PlacementPolicy placement)
    {
        int seed = Seed.Get(output, $"{nameof(FrameAllocationFailuresDuringAGpuKernelFailTheLaunchWithEnomemOrEfaultAndLeakNothing)}({placement})");
        const long n = 32 * 1024;
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = placement, VramBytes = 16 * Mib });
        ulong a = rig.MapAnon(n * 8), b = rig.MapAnon(n * 8), c = rig.MapAnon(n * 8);
        rig.FillLongs(a, n / 2, i => i); // the upper halves stay untouched: the kernel's first touch allocates them
        rig.FillLongs(b, n / 2, i => 3 * i + 1);
        int failures = 0;
        for (int run = 0; run < 3; run++)
        {
            try
            {
                FaultInjection.Configure(new FaultInjectionOptions { Seed = seed + run, Probability = 0.2, Sites = FaultSites.FrameAllocation | FaultSites.PageTableAllocation, Domain = rig.Memory });
                VectorAdd(rig, a, b, c, n);
            }
            catch (GpuLaunchException e)
            {
                failures++;
                output.WriteLine($"run {run}: launch failed with {e.Errno}: {e.Message}");
                Assert.True(e.Errno is Errno.ENOMEM or Errno.EFAULT or Errno.EIO, $"unexpected launch errno {e.Errno}");
            }
            catch (MmException e) when (e.Errno == Errno.ENOMEM)
            {
                failures++;
            }
            finally
            {
                FaultInjection.Disable();
            }
        }
        output.WriteLine($"{failures} of 3 launches failed");
        VectorAdd(rig, a, b, c, n);
        for (long i = 0; i < n; i += 61)
        {
            long x = i < n / 2 ? i : 0, y = i < n / 2 ? 3 * i + 1 : 0;
            Assert.Equal(x + 2 * y, rig.Cpu.Read<long>(c + (ulong)i * 8));
        }
    }

    [Fact]
    public void ALostSendCompletesWithRetryExceededMovesTheQpToErrorAndLeavesRemoteDataIntact()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        long before = memory.UsedFrames;
        using (var bed = new RdmaTestBed(memory))
        {
            ulong remote = bed.MapServer(Page.Size);
            MemoryRegion mr = bed.ServerPd.RegMr(remote, Page.Size, AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ);
            byte[] first = RdmaTestBed.Pattern(256, 1);
            Assert.Equal(WcStatus.SUCCESS, bed.Write(remote, mr.Rkey, first));
            try
            {
                FaultInjection.FailNth(FaultSites.TransportSend, 1, memory);
                Assert.Equal(WcStatus.RETRY_EXC_ERR, bed.Write(remote, mr.Rkey, RdmaTestBed.Pattern(256, 2)));
                Assert.Equal(QpState.ERR, bed.ClientQp.State);
                Assert.Equal(1, FaultInjection.Injected(FaultSites.TransportSend));
                // Work posted to a QP in the error state is flushed.
                Assert.Equal(WcStatus.WR_FLUSH_ERR, bed.Write(remote, mr.Rkey, RdmaTestBed.Pattern(256, 3)));
            }
            finally
            {
                FaultInjection.Disable();
            }
            byte[] seen = new byte[first.Length];
            bed.ServerCpu.Read(remote, seen);
            Assert.Equal(first, seen);
            // A new connection works.
            bed.UseServerPd(bed.ServerPd);
            byte[] last = RdmaTestBed.Pattern(256, 4);
            Assert.Equal(WcStatus.SUCCESS, bed.Write(remote, mr.Rkey, last));
            (WcStatus st, byte[] back) = bed.Read(remote, mr.Rkey, last.Length);
            Assert.Equal(WcStatus.SUCCESS, st);
            Assert.Equal(last, back);
            mr.Dispose();
        }
        Assert.Equal(before, memory.UsedFrames);
    }

    [Fact]
    public void SeededSendFailuresOnlyEverFailWhatWasPostedAndEveryWriteThatSucceededLanded()
    {
        int seed = Seed.Get(output, nameof(SeededSendFailuresOnlyEverFailWhatWasPostedAndEveryWriteThatSucceededLanded));
        using var memory = new PhysicalMemory(64UL << 20);
        long before = memory.UsedFrames;
        using (var bed = new RdmaTestBed(memory))
        {
            ulong remote = bed.MapServer(64 * Page.Size);
            MemoryRegion mr = bed.ServerPd.RegMr(remote, 64 * Page.Size, AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ);
            var landed = new Dictionary<int, byte[]>();
            int failed = 0;
            try
            {
                FaultInjection.Configure(new FaultInjectionOptions { Seed = seed, Probability = 0.25, Sites = FaultSites.TransportSend, Domain = memory });
                for (int i = 0; i < 48; i++)
                {
                    int slot = i % 64;
                    byte[] data = RdmaTestBed.Pattern(128, seed + i);
                    WcStatus s = bed.Write(remote + (ulong)slot * Page.Size, mr.Rkey, data);
                    if (s == WcStatus.SUCCESS)
                    {
                        landed[slot] = data;
                        continue;
                    }
                    Assert.Equal(WcStatus.RETRY_EXC_ERR, s);
                    failed++;
                    bed.UseServerPd(bed.ServerPd); // reconnect, as an application does after a fatal QP error
                }
            }
            finally
            {
                FaultInjection.Disable();
            }
            output.WriteLine($"{failed} of 48 writes failed");
            foreach ((int slot, byte[] data) in landed)
            {
                byte[] seen = new byte[data.Length];
                bed.ServerCpu.Read(remote + (ulong)slot * Page.Size, seen);
                Assert.Equal(data, seen);
            }
            mr.Dispose();
        }
        Assert.Equal(before, memory.UsedFrames);
    }
}
