using Hetmem.Devices.Gpu;
using Hetmem.Mm;
using Hetmem.Physical;
using Xunit.Abstractions;

namespace Hetmem.Tests.Devices.Gpu;

/// <summary>
/// A seeded random mix of kernels, CPU writes, munmap/mmap, mprotect and concurrent CPU reads against a model of every
/// page's value, with stale-translation checks on. Prints its seed; set HETMEM_SEED to replay one.
/// </summary>
public class GpuStressTests(ITestOutputHelper output)
{
    private const ulong Region = 1UL << 20;
    private const int Regions = 4;
    private const int PagesPerRegion = (int)(Region / Page.Size);
    private const ulong Window = 0x6000_0000_0000;

    [Fact]
    public void RandomKernelsAndCpuChangesAlwaysAgreeWithTheModel()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("HETMEM_SEED"), out int s) ? s : Environment.TickCount;
        output.WriteLine($"HETMEM_SEED={seed}");
        var rng = new Random(seed);
        var options = new GpuDeviceOptions
        {
            VramBytes = new ulong[] { 0, 4, 8 }[rng.Next(3)] << 20,
            Placement = (PlacementPolicy)rng.Next(3),
            ReplayPolicy = (ReplayPolicy)rng.Next(4),
            ExecutionUnits = 1 + rng.Next(4),
            AccessCounterThreshold = 8,
            CheckStaleTranslations = true,
        };
        output.WriteLine(options.ToString());
        using var rig = new GpuTestRig(options);
        var model = new long[Regions, PagesPerRegion];
        ulong Addr(int r, int p) => Window + (ulong)r * 2 * Region + (ulong)p * Page.Size;
        for (int r = 0; r < Regions; r++)
        {
            rig.Space.Mmap(Addr(r, 0), Region, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
        }

        for (int round = 0; round < 40; round++)
        {
            int op = rng.Next(6);
            int region = rng.Next(Regions);
            switch (op)
            {
                case 0:
                case 1:
                {
                    // A kernel adds a per-page delta to a random subset of pages of one region.
                    int first = rng.Next(PagesPerRegion), count = 1 + rng.Next(PagesPerRegion - first);
                    long delta = rng.Next(1, 1000);
                    int rr = region;
                    rig.Context.Launch(count, 1, t =>
                    {
                        ulong va = Addr(rr, first + t.BlockIdx);
                        t.Store(va, t.Load<long>(va) + delta + t.BlockIdx);
                    });
                    for (int k = 0; k < count; k++)
                    {
                        model[region, first + k] += delta + k;
                    }
                    break;
                }
                case 2:
                {
                    // The CPU writes some pages.
                    for (int k = 0; k < 20; k++)
                    {
                        int p = rng.Next(PagesPerRegion);
                        long v = rng.NextInt64();
                        rig.Cpu.Write(Addr(region, p), v);
                        model[region, p] = v;
                    }
                    break;
                }
                case 3:
                    // Replace the region with fresh zero-filled memory.
                    rig.Space.Mmap(Addr(region, 0), Region, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
                    for (int p = 0; p < PagesPerRegion; p++)
                    {
                        model[region, p] = 0;
                    }
                    break;
                case 4:
                {
                    // Read-only for a while: a kernel may read it but a write fails with EPERM and changes nothing.
                    rig.Space.Mprotect(Addr(region, 0), Region, Prot.Read);
                    int p = rng.Next(PagesPerRegion);
                    int rr = region;
                    var e = Assert.Throws<GpuLaunchException>(() => rig.Context.Launch(1, 1, t => t.Store(Addr(rr, p), t.Load<long>(Addr(rr, p)) + 1)));
                    Assert.Equal(Errno.EPERM, e.Errno);
                    rig.Space.Mprotect(Addr(region, 0), Region, Prot.Read | Prot.Write);
                    break;
                }
                default:
                {
                    // A read-only kernel checks a region while a CPU thread reads it (pulling pages back) and remaps another.
                    int other = (region + 1 + rng.Next(Regions - 1)) % Regions;
                    long[] expect = new long[PagesPerRegion];
                    for (int p = 0; p < PagesPerRegion; p++)
                    {
                        expect[p] = model[region, p];
                    }
                    int cpuSeed = rng.Next();
                    var cpu = new BackgroundWork(() =>
                    {
                        using var c = new Cpu(rig.Space);
                        var r2 = new Random(cpuSeed);
                        for (int k = 0; k < 50; k++)
                        {
                            int p = r2.Next(PagesPerRegion);
                            Assert.Equal(expect[p], c.Read<long>(Addr(region, p)));
                        }
                        rig.Space.Mmap(Addr(other, 0), Region, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
                    });
                                long mismatches = 0;
                    int rr = region;
                    rig.Context.Launch(PagesPerRegion, 1, t =>
                    {
                        if (t.Load<long>(Addr(rr, t.BlockIdx)) != expect[t.BlockIdx])
                        {
                            Interlocked.Increment(ref mismatches);
                        }
                    });
                    cpu.Join();
                    Assert.Equal(0L, mismatches);
                    for (int p = 0; p < PagesPerRegion; p++)
                    {
                        model[other, p] = 0;
                    }
                    break;
                }
            }
            if (round % 10 == 9)
            {
                for (int r = 0; r < Regions; r++)
                {
                    for (int p = 0; p < PagesPerRegion; p++)
                    {
                        Assert.Equal(model[r, p], rig.Cpu.Read<long>(Addr(r, p)));
                    }
                }
            }
        }
        output.WriteLine(string.Join(" ", rig.Counters.Snapshot().Where(kv => kv.Value != 0 && !kv.Key.StartsWith("time", StringComparison.Ordinal)).Select(kv => $"{kv.Key}={kv.Value}")));
    }
}
