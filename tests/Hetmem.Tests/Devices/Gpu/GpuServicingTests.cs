using Hetmem.Devices.Gpu;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Gpu;

/// <summary>Fault servicing, placement, prefetch, eviction and thrashing on a running device.</summary>
public class GpuServicingTests
{
    private const ulong Mib = GpuTestRig.Mib;

    /// <summary>c[i] = a[i] + s·b[i] over <paramref name="n"/> doubles, checked on the CPU.</summary>
    private static void Stream(GpuTestRig rig, long n, int launches = 1)
    {
        ulong a = rig.MapAnon((ulong)n * 8), b = rig.MapAnon((ulong)n * 8), c = rig.MapAnon((ulong)n * 8);
        for (long i = 0; i < n; i++)
        {
            rig.Cpu.Write(a + (ulong)i * 8, (double)i);
            rig.Cpu.Write(b + (ulong)i * 8, 0.5 * i);
        }
        for (int l = 0; l < launches; l++)
        {
            rig.Context.Launch((int)((n + 255) / 256), 256, t =>
            {
                long i = t.GlobalId;
                if (i < n)
                {
                    ulong o = (ulong)i * 8;
                    t.Store(c + o, t.Load<double>(a + o) + 3.0 * t.Load<double>(b + o));
                }
            });
        }
        for (long i = 0; i < n; i++)
        {
            Assert.Equal(i + 3.0 * 0.5 * i, rig.Cpu.Read<double>(c + (ulong)i * 8));
        }
    }

    public static TheoryData<ReplayPolicy> ReplayPolicies => new() { ReplayPolicy.Block, ReplayPolicy.Batch, ReplayPolicy.BatchFlush, ReplayPolicy.Once };

    [Theory]
    [MemberData(nameof(ReplayPolicies))]
    public void EveryReplayPolicyServicesAllFaultsCorrectly(ReplayPolicy policy)
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { ReplayPolicy = policy, VramBytes = 16 * Mib });
        Stream(rig, 200_000);
        Assert.True(rig[GpuCounter.Batches] > 0);
        Assert.True(rig[GpuCounter.Replays] > 0);
        Assert.Equal(rig[GpuCounter.Faults], rig[GpuCounter.FaultsRead] + rig[GpuCounter.FaultsWrite] + rig[GpuCounter.FaultsAtomic] + rig[GpuCounter.FaultsPrefetch]);
        if (policy != ReplayPolicy.BatchFlush)
        {
            Assert.Equal(0L, rig[GpuCounter.BufferFlushes]);
        }
        if (policy is ReplayPolicy.Batch or ReplayPolicy.BatchFlush)
        {
            Assert.Equal(rig[GpuCounter.Batches], rig[GpuCounter.Replays]);
        }
    }

    [Fact]
    public void TinyVramForcesEvictionsAndTheResultIsStillCorrect()
    {
        // 3 × 4 MiB working set, 4 MiB of VRAM: two chunks for three streams.
        using var rig = new GpuTestRig(new GpuDeviceOptions { VramBytes = 4 * Mib, CheckStaleTranslations = true });
        Stream(rig, 1L << 19, launches: 2);
        Assert.True(rig[GpuCounter.Evictions] > 0);
        Assert.True(rig[GpuCounter.PagesMigratedOut] > 0);
        Assert.True(rig.Gpu.VramChunksInUse <= rig.Gpu.VramChunks);
    }

    [Fact]
    public void VramAtAQuarterOfTheWorkingSetEvictsAndBytesMovedMatchPagesMoved()
    {
        // 16 MiB working set, 4 MiB of VRAM.
        using var rig = new GpuTestRig(new GpuDeviceOptions { VramBytes = 4 * Mib });
        Stream(rig, (16L << 20) / 24);
        Assert.True(rig[GpuCounter.Evictions] > 0);
        Assert.True(rig[GpuCounter.BytesHtoD] <= rig[GpuCounter.PagesMigratedIn] * Page.Size);
        Assert.True(rig[GpuCounter.BytesDtoH] <= rig[GpuCounter.PagesMigratedOut] * Page.Size);
        Assert.True(rig[GpuCounter.PrefetchBytes] > 0);
    }

    [Fact]
    public void WithoutVramEverythingIsMappedRemotely()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { VramBytes = 0 });
        Stream(rig, 100_000);
        Assert.Equal(0L, rig[GpuCounter.PagesMigratedIn]);
        Assert.Null(rig.Gpu.VramMap);
    }

    [Fact]
    public void PrefetchingCutsTheNumberOfFaultsOfAStream()
    {
        long Faults(bool prefetch)
        {
            using var rig = new GpuTestRig(new GpuDeviceOptions { VramBytes = 32 * Mib, ExecutionUnits = 1, Prefetch = PrefetchOptions.Default with { Enabled = prefetch } });
            Stream(rig, 256 * 1024);
            Assert.Equal(prefetch, rig[GpuCounter.PrefetchBytes] > 0);
            return rig[GpuCounter.Faults] - rig[GpuCounter.Duplicates];
        }
        long with = Faults(true), without = Faults(false);
        Assert.True(with * 4 < without, $"{with} distinct faults with prefetch, {without} without");
    }

    [Fact]
    public void AFullyMigratedBlockIsMappedWithOneTwoMibEntry()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { VramBytes = 16 * Mib, ExecutionUnits = 1 });
        ulong a = rig.Space.Mmap(0x4000_0000_0000, 2 * Mib, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
        rig.Context.Launch(512, 1, t => t.Store(a + (ulong)t.BlockIdx * Page.Size, (long)t.BlockIdx));
        rig.Context.Launch(512, 1, t => t.Store(a + (ulong)t.BlockIdx * Page.Size + 8, 1L)); // rebinding after the block filled up
        Assert.Equal(512L, rig.Gpu.VramPagesInUse);
        Assert.Equal(1L, rig.Context.PageTable.Entries2M);
        Assert.True(rig[GpuCounter.Map2M] > 0);
        Assert.Equal(511L, rig.Cpu.Read<long>(a + 511 * Page.Size));
    }

    [Fact]
    public void RemoteMappingNeverMigratesAndAccessCountersMigrateHotPages()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.AccessCounters, AccessCounterThreshold = 16, ExecutionUnits = 1 });
        ulong a = rig.MapAnon(64 * 1024);
        rig.Cpu.Write(a, 1L);
        rig.Context.Launch(1, 1, t =>
        {
            for (int i = 0; i < 5000; i++)
            {
                t.Store(a + 8, t.Load<long>(a) + i);
            }
        });
        Assert.True(rig[GpuCounter.AccessCounterNotifications] > 0);
        // Access-counter notifications are serviced asynchronously by the fault-servicing thread (as UVM's are):
        // wait, bounded, for that servicing to migrate the hot page.
        Assert.True(SpinWait.SpinUntil(() => rig[GpuCounter.PagesMigratedIn] > 0, TimeSpan.FromSeconds(10)));
        Assert.True(rig[GpuCounter.RemoteMappedPages] > 0);
        Assert.Equal(1L + 4999, rig.Cpu.Read<long>(a + 8));
    }

    [Fact]
    public void APageBouncingBetweenCpuAndGpuIsThrottledThenPinnedToSystemMemory()
    {
        var thrash = ThrashingOptions.Default with { LapseNs = 10_000_000_000, NapNs = 1_000_000, PinThreshold = 2, PinNs = 100_000_000_000, EpochNs = 100_000_000_000 };
        using var rig = new GpuTestRig(new GpuDeviceOptions { Thrashing = thrash, ExecutionUnits = 1, CpuFaultMigratePages = 1, Prefetch = PrefetchOptions.Default with { Enabled = false } });
        ulong a = rig.MapAnon(Page.Size);
        for (long round = 0; round < 12; round++)
        {
            rig.Context.Launch(1, 1, t => t.Store(a, t.Load<long>(a) + 1));
            Assert.Equal(round + 1, rig.Cpu.Read<long>(a)); // the CPU pulls it back: one more migration event
        }
        Assert.True(rig[GpuCounter.Thrashing] >= 1);
        Assert.True(rig[GpuCounter.Throttles] >= 1);
        Assert.True(rig[GpuCounter.PinsRemote] >= 1);
        long migratedBefore = rig[GpuCounter.PagesMigratedIn];
        rig.Context.Launch(1, 1, t => t.Store(a, t.Load<long>(a) + 1));
        Assert.Equal(migratedBefore, rig[GpuCounter.PagesMigratedIn]); // pinned: mapped remotely, not migrated
        Assert.Equal(13L, rig.Cpu.Read<long>(a));
    }

    [Fact]
    public void AtomicsFromManyThreadsAddUpOnVramAndOnSystemMemory()
    {
        foreach (PlacementPolicy p in new[] { PlacementPolicy.MigrateOnFirstTouch, PlacementPolicy.RemoteMap })
        {
            using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = p });
            ulong counters = rig.MapAnon(Page.Size);
            rig.Context.Launch(64, 128, t =>
            {
                t.AtomicAdd(counters, 1L);
                t.AtomicAdd(counters + 8 + (ulong)(t.ThreadIdx % 4) * 4, 2);
                int seen = t.AtomicMin(counters + 64, -(int)t.GlobalId);
                _ = seen;
            });
            Assert.Equal(64L * 128, rig.Cpu.Read<long>(counters));
            for (int k = 0; k < 4; k++)
            {
                Assert.Equal(64 * 128 / 4 * 2, rig.Cpu.Read<int>(counters + 8 + (ulong)k * 4));
            }
            Assert.Equal(-(64 * 128 - 1), rig.Cpu.Read<int>(counters + 64));
            Assert.True(rig[GpuCounter.FaultsAtomic] > 0);
        }
    }

    [Fact]
    public void PrefetchHintsRaisePrefetchFaultsWithoutStalling()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.RemoteMap, ExecutionUnits = 1 });
        ulong a = rig.MapAnon(Mib);
        rig.Cpu.Write(a + 512 * 1024, 9L);
        rig.Context.Launch(1, 1, t =>
        {
            t.Prefetch(a + 512 * 1024);
            t.Store(a, 1L);
        });
        Assert.True(rig[GpuCounter.FaultsPrefetch] >= 1);
        Assert.Equal(9L, rig.Cpu.Read<long>(a + 512 * 1024));
    }

    [Fact]
    public void TwoAddressSpacesShareOneGpuWithSeparateTranslations()
    {
        using var rig = new GpuTestRig();
        using var other = new AddressSpace(rig.Memory);
        using GpuContext ctx2 = rig.Gpu.CreateContext(other);
        const ulong At = 0x5000_0000_0000;
        rig.Space.Mmap(At, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
        other.Mmap(At, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
        rig.Context.Launch(1, 1, t => t.Store(At, 111L));
        ctx2.Launch(1, 1, t => t.Store(At, 222L));
        rig.Context.Launch(1, 1, t => t.Store(At + 8, t.Load<long>(At)));
        ctx2.Launch(1, 1, t => t.Store(At + 8, t.Load<long>(At)));
        using var c2 = new Cpu(other);
        Assert.Equal(111L, rig.Cpu.Read<long>(At + 8));
        Assert.Equal(222L, c2.Read<long>(At + 8));
        Assert.NotEqual(rig.Context.Id, ctx2.Id);
        ctx2.Dispose();
        c2.Dispose();
        other.Exit();
    }

    [Fact]
    public void AKernelThatThrowsFailsTheLaunchWithEioAndTheDeviceKeepsWorking()
    {
        using var rig = new GpuTestRig();
        var e = Assert.Throws<GpuLaunchException>(() => rig.Context.Launch(4, 32, t =>
        {
            if (t.GlobalId == 77)
            {
                throw new InvalidOperationException("boom");
            }
        }));
        Assert.Equal(Errno.EIO, e.Errno);
        Assert.IsType<InvalidOperationException>(e.InnerException);
        long ran = 0;
        rig.Context.Launch(4, 32, t => Interlocked.Increment(ref ran));
        Assert.Equal(128L, ran);
    }

    [Fact]
    public void ExitingTheAddressSpaceFirstReleasesEveryVramPageAndTheDeviceShutsDownCleanly()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { VramBytes = 8 * Mib });
        ulong a = rig.MapAnon(4 * Mib);
        rig.Context.Launch(1024, 1, t => t.Store(a + (ulong)t.BlockIdx * Page.Size, 1L));
        Assert.True(rig.Gpu.VramPagesInUse > 0);
        rig.ExitSpace();
        Assert.Equal(0L, rig.Gpu.VramPagesInUse);
        Assert.True(rig[GpuCounter.InvalidationsRelease] + rig[GpuCounter.InvalidationsUnmap] > 0);
    }
}
