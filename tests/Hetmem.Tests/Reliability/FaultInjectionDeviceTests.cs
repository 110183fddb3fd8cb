using Hetmem.Devices.Dmirror;
using Hetmem.Diagnostics;
using Hetmem.Tests.Devices.Dmirror;
using Hetmem.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Hetmem.Tests.Reliability;

/// <summary>
/// Device memory and frame allocation failures injected while dmirror migrates pages back and forth: each ioctl
/// reports the driver's errno, the CPU sees ENOMEM or its data, and at exit every frame and device page is back.
/// </summary>
[Collection(FaultInjectionCollection.Name)]
public sealed class FaultInjectionDeviceTests(ITestOutputHelper output)
{
    private const ulong Pages = 32;

    [Theory]
    [InlineData(FaultSites.DeviceMemoryAllocation, 0.3)]
    [InlineData(FaultSites.FrameAllocation, 0.1)]
    [InlineData(FaultSites.FrameAllocation | FaultSites.DeviceMemoryAllocation | FaultSites.PageTableAllocation, 0.1)]
    public void DmirrorMigrationUnderAllocationFailuresKeepsDataAndLeaksNothing(FaultSites sites, double probability)
    {
        int seed = Seed.Get(output, $"{nameof(DmirrorMigrationUnderAllocationFailuresKeepsDataAndLeaksNothing)}({sites}, {probability})");
        var rng = new Random(seed);
        var errnos = new Dictionary<(DmirrorCommand, Errno), int>();
        int cpuEnomem = 0;
        using (var fx = new DmirrorFixture())
        {
            DmirrorFile f = fx.Open(0);
            ulong buf = fx.MapAnon(Pages);
            ulong mirror = fx.MapAnon(Pages);
            fx.Fill(buf, Pages, i => i * 7 + 1);
            fx.Fill(mirror, Pages, _ => 0);
            try
            {
                FaultInjection.Configure(new FaultInjectionOptions { Seed = seed, Probability = probability, Sites = sites, Domain = fx.Memory });
                for (int step = 0; step < 200; step++)
                {
                    ulong first = (ulong)rng.Next((int)Pages);
                    ulong n = (ulong)rng.Next(1, (int)(Pages - first) + 1);
                    ulong addr = buf + first * Hetmem.Physical.Page.Size;
                    DmirrorCommand c = rng.Next(4) switch
                    {
                        0 => DmirrorCommand.MigrateToDevice,
                        1 => DmirrorCommand.MigrateToSystem,
                        2 => DmirrorCommand.Read,
                        _ => (DmirrorCommand)(-1),
                    };
                    if ((int)c == -1)
                    {
                        // A CPU read of a page that may be in device memory (migrate_to_ram).
                        try
                        {
                            Assert.Equal((int)(first * 1024) * 7 + 1, fx.Cpu.Read<int>(addr));
                        }
                        catch (MmException e) when (e.Errno == Errno.ENOMEM)
                        {
                            cpuEnomem++;
                        }
                        continue;
                    }
                    Errno r;
                    try
                    {
                        r = fx.Cmd(f, c, addr, mirror, n, out _);
                    }
                    catch (MmException e)
                    {
                        r = e.Errno; // the ioctl's copy-out went through a CPU fault
                    }
                    errnos[(c, r)] = errnos.GetValueOrDefault((c, r)) + 1;
                    // ENOENT: migrate-to-device reads the range back through the mirror, and pages it could not place are not there.
                    Assert.True(r is Errno.Ok or Errno.ENOMEM or Errno.EFAULT or Errno.EBUSY || r == Errno.ENOENT && c == DmirrorCommand.MigrateToDevice, $"{c} returned {r}");
                    if (c == DmirrorCommand.Read && r == Errno.Ok)
                    {
                        FaultInjection.Disable();
                        int[] got = fx.ReadInts(mirror, n);
                        for (int i = 0; i < got.Length; i++)
                        {
                            Assert.True((int)(first * 1024) + i is int k && got[i] == k * 7 + 1, $"device read of page {first} word {i} is {got[i]}");
                        }
                        FaultInjection.Configure(new FaultInjectionOptions { Seed = seed + step, Probability = probability, Sites = sites, Domain = fx.Memory });
                    }
                }
            }
            finally
            {
                FaultInjection.Disable();
            }
            output.WriteLine($"{string.Join(", ", errnos.Select(kv => $"{kv.Key.Item1}:{kv.Key.Item2}={kv.Value}"))}; CPU ENOMEM {cpuEnomem}");
            int[] seen = fx.ReadInts(buf, Pages);
            for (int i = 0; i < seen.Length; i++)
            {
                Assert.True(seen[i] == i * 7 + 1, $"word {i} of the buffer is {seen[i]} after injection");
            }
        } // the fixture asserts every RAM frame came back
    }
}
