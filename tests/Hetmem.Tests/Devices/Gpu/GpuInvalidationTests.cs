using Hetmem.Devices.Gpu;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Gpu;

/// <summary>
/// CPU-side changes while a kernel runs: after the invalidation returned the GPU never sees stale data; it refaults and
/// sees the new mapping, or its warp gets the error the access deserves.
/// </summary>
public class GpuInvalidationTests
{
    private const ulong Mib = GpuTestRig.Mib;

    public static TheoryData<PlacementPolicy> Policies => new() { PlacementPolicy.RemoteMap, PlacementPolicy.MigrateOnFirstTouch };

    /// <summary>
    /// The kernel polls a flag page and a data page; the CPU replaces the data mapping (mmap MAP_FIXED: an UNMAP
    /// invalidation) and only then raises the flag. Once the GPU has seen the flag, the old value must never come back.
    /// </summary>
    [Theory]
    [MemberData(nameof(Policies))]
    public void AfterTheCpuReplacesAMappingTheKernelNeverReadsTheOldPage(PlacementPolicy policy)
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = policy, CheckStaleTranslations = true });
        ulong flag = rig.MapAnon(Page.Size);
        ulong data = rig.MapAnon(64 * 1024);
        ulong result = rig.MapAnon(Page.Size);
        rig.Cpu.Write(data, 42L);
        rig.Cpu.Write(flag, 0L);
        var cpu = new BackgroundWork(() =>
        {
            using var c = new Cpu(rig.Space);
            while (c.Read<long>(result + 8) == 0)
            {
                Thread.Yield(); // wait until the kernel has read the old value at least once
            }
            rig.Space.Mmap(data, 64 * 1024, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
            c.Write(data, 7L);
            c.Write(flag, 1L);
        });
        rig.Context.Launch(1, 1, t =>
        {
            long staleAfterFlag = 0, sawOld = 0;
            for (long spins = 0; spins < 50_000_000; spins++)
            {
                long f = t.Load<long>(flag);
                long v = t.Load<long>(data);
                if (v == 42)
                {
                    sawOld++;
                    t.Store(result + 8, sawOld);
                    if (f != 0)
                    {
                        staleAfterFlag++;
                    }
                }
                if (f != 0 && v == 7)
                {
                    break;
                }
            }
            t.Store(result, staleAfterFlag);
        });
        cpu.Join();
        Assert.Equal(0L, rig.Cpu.Read<long>(result));
        Assert.True(rig.Cpu.Read<long>(result + 8) > 0);
        Assert.True(rig[GpuCounter.InvalidationsUnmap] > 0);
    }

    [Fact]
    public void MunmapWhileAKernelRunsMakesItsNextAccessFailWithEfault()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.RemoteMap, CheckStaleTranslations = true });
        ulong data = rig.MapAnon(2 * Mib);
        ulong progress = rig.MapAnon(Page.Size);
        rig.Cpu.Write(data + 4096, 5L);
        var cpu = new BackgroundWork(() =>
        {
            using var c = new Cpu(rig.Space);
            while (c.Read<long>(progress) < 100)
            {
                Thread.Yield();
            }
            rig.Space.Munmap(data, 2 * Mib);
        });
        var e = Assert.Throws<GpuLaunchException>(() => rig.Context.Launch(1, 1, t =>
        {
            for (long i = 1; ; i++)
            {
                Assert.Equal(5L, t.Load<long>(data + 4096));
                t.Store(progress, i);
            }
        }));
        cpu.Join();
        Assert.Equal(Errno.EFAULT, e.Errno);
        Assert.Equal(data + 4096, e.Address);
        Assert.Equal(GpuAccess.Read, e.Access);
        Assert.True(rig[GpuCounter.FatalFaults] > 0);
    }

    [Theory]
    [MemberData(nameof(Policies))]
    public void MprotectReadOnlyWhileAKernelWritesStopsTheNextWriteWithEperm(PlacementPolicy policy)
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = policy, CheckStaleTranslations = true });
        ulong data = rig.MapAnon(64 * 1024);
        ulong flag = rig.MapAnon(Page.Size);
        var cpu = new BackgroundWork(() =>
        {
            using var c = new Cpu(rig.Space);
            while (c.Read<long>(flag + 8) < 1000)
            {
                Thread.Yield();
            }
            rig.Space.Mprotect(data, 64 * 1024, Prot.Read);
            c.Write(flag, 1L);
        });
        var e = Assert.Throws<GpuLaunchException>(() => rig.Context.Launch(1, 1, t =>
        {
            for (long i = 1; ; i++)
            {
                if (t.Load<long>(flag) != 0)
                {
                    t.Store(data + 8, -1L); // after mprotect returned: must not land
                }
                t.Store(data, i);
                t.Store(flag + 8, i);
            }
        }));
        cpu.Join();
        Assert.Equal(Errno.EPERM, e.Errno);
        Assert.Equal(GpuAccess.Write, e.Access);
        Assert.NotEqual(-1L, rig.Cpu.Read<long>(data + 8));
        Assert.True(rig.Cpu.Read<long>(data) > 0);
        Assert.True(rig[GpuCounter.InvalidationsProtectionVma] > 0);
    }

    [Fact]
    public void AnUnmappedAddressFailsTheLaunchWithEfaultAndAReadOnlyOneWithEperm()
    {
        using var rig = new GpuTestRig();
        ulong ro = rig.MapAnon(Page.Size, Prot.Read);
        var e1 = Assert.Throws<GpuLaunchException>(() => rig.Context.Launch(1, 32, t => t.Load<int>(0x1000_0000_0000 + (ulong)t.ThreadIdx * 4)));
        Assert.Equal(Errno.EFAULT, e1.Errno);
        var e2 = Assert.Throws<GpuLaunchException>(() => rig.Context.Launch(1, 1, t => t.Store(ro, 1)));
        Assert.Equal(Errno.EPERM, e2.Errno);
        Assert.Equal(ro, e2.Address);
        Assert.Equal(0L, (long)rig.Cpu.Read<int>(ro));
        var e3 = Assert.Throws<GpuLaunchException>(() => rig.Context.Launch(1, 1, t => t.AtomicAdd(ro + 2, 1L)));
        Assert.Equal(Errno.EINVAL, e3.Errno);
        // The context still works afterwards.
        ulong rw = rig.MapAnon(Page.Size);
        rig.Context.Launch(1, 8, t => t.Store(rw + (ulong)t.ThreadIdx * 8, t.ThreadIdx + 1L));
        Assert.Equal(8L, rig.Cpu.Read<long>(rw + 56));
    }

    [Fact]
    public void APartialMunmapDestroysTheWholeRangeAndTheNextFaultFitsTheNewVmas()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.RemoteMap });
        ulong a = rig.Space.Mmap(0x3000_0000_0000, 4 * Mib, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
        rig.Context.Launch(1, 1, t => t.Store(a + 8, 1L));
        var before = rig.Context.DescribeRanges();
        Assert.Contains((a, a + 2 * Mib, true), before);
        rig.Space.Munmap(a + Mib, 4096);
        // The next fault runs the garbage collector first: the 2 MiB range is gone, new ones fit the VMA [a, a + 1 MiB).
        rig.Context.Launch(1, 1, t => t.Store(a + 16, 2L));
        var after = rig.Context.DescribeRanges();
        Assert.DoesNotContain(after, r => r.Start == a && r.End == a + 2 * Mib);
        Assert.Contains(after, r => r.Start <= a + 16 && a + 16 < r.End && r.End <= a + Mib);
        Assert.True(rig[GpuCounter.RangesCollected] >= 1);
        Assert.Equal(1L, rig.Cpu.Read<long>(a + 8));
        Assert.Equal(2L, rig.Cpu.Read<long>(a + 16));
    }
}
