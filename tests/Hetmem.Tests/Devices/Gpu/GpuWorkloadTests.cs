using Hetmem.Devices.Gpu.Workloads;
using Hetmem.Physical;
using Xunit.Abstractions;

namespace Hetmem.Tests.Devices.Gpu;

/// <summary>The three GPU workloads, small, with VRAM at a quarter of the working set.</summary>
public class GpuWorkloadTests(ITestOutputHelper output)
{
    private const ulong Mib = 1UL << 20;

    private void Print(GpuWorkloadReport r)
    {
        output.WriteLine($"{r.Name}: {r.Detail} in {r.Seconds:F3} s");
        output.WriteLine(string.Join(" ", r.JsonSummary().Select(kv => $"{kv.Key}={kv.Value}")));
    }

    [Fact]
    public void GpuStreamIsVerifiedWithVramAtAQuarterOfTheWorkingSetAndEvicts()
    {
        using var memory = new PhysicalMemory(128 * Mib);
        GpuWorkloadReport r = GpuWorkloads.Stream(memory, new GpuWorkloadOptions { WorkingSetBytes = 24 * Mib, CheckStaleTranslations = true });
        Print(r);
        Assert.True(r.Verified, r.Detail);
        Assert.True(r["evictions"] > 0);
        Assert.True(r.FramesBalanced);
        Assert.Equal(0L, r["stale_translations"]);
        Assert.Equal(8, r.JsonSummary().Count);
    }

    [Fact]
    public void GpuGupsOnHugetlbfsIsVerifiedAndEvictsItsUpdateStream()
    {
        using var memory = new PhysicalMemory(128 * Mib);
        GpuWorkloadReport r = GpuWorkloads.Gups(memory, new GpuWorkloadOptions { WorkingSetBytes = 16 * Mib, Updates = 1 << 20, CheckStaleTranslations = true });
        Print(r);
        Assert.True(r.Verified, r.Detail);
        Assert.True(r["evictions"] > 0);
        Assert.True(r["map_2m"] > 0);
        Assert.True(r.FramesBalanced);
    }

    [Fact]
    public void GpuBfsDaxIsCorrectForTheGraphTheCpuRewroteWhileItRan()
    {
        using var memory = new PhysicalMemory(128 * Mib);
        string dir = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
        GpuWorkloadReport r = GpuBfsDax.Run(memory, new GpuWorkloadOptions { Vertices = 1 << 16, CheckStaleTranslations = true }, dir);
        Print(r);
        Assert.True(r.Verified, r.Detail);
        Assert.True(r["invalidations_unmap"] > 0);
        Assert.True(r["evictions"] > 0);
        Assert.True(r["map_2m"] > 0);
        Assert.True(r.FramesBalanced);
    }
}
