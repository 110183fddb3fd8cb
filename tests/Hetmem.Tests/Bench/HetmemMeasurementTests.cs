using Hetmem.Cli;
using Hetmem.Cli.Bench;
using Hetmem.Physical;

namespace Hetmem.Tests.Bench;

/// <summary>
/// The Hetmem half of <c>hetmem bench</c> on tiny settings: every measurement runs, returns a finite positive number
/// and leaves its fixture consistent. These check the harness, not speed.
/// </summary>
public class HetmemMeasurementTests
{
    private static BenchOptions Tiny() => new(new CliSettings { RamBytes = 64UL << 20 }, quick: true)
    {
        Pages = 512,
        Repetitions = 1,
        WarmupTime = TimeSpan.Zero,
    };

    public static TheoryData<string> Keys() =>
    [
        BenchKeys.Snapshot, BenchKeys.AnonFault, BenchKeys.MunmapMirrored, BenchKeys.MprotectMirrored, BenchKeys.TlbHit,
        HetmemBenchmarks.PageWalk, HetmemBenchmarks.AnonFaultCpu, HetmemBenchmarks.DaxPmdSnapshot,
    ];

    [Theory]
    [MemberData(nameof(Keys))]
    public void EachMeasurementReturnsAPositiveFiniteValue(string key)
    {
        BenchMeasure m = CliRegistries.CreateDefault().Bench.Measures.Single(x => x.Key == key);
        double v = m.Measure(Tiny());
        Assert.True(double.IsFinite(v) && v > 0, $"{key} = {v}");
    }

    [Fact]
    public void EveryHetmemKeyOfIssue8HasAMeasurement()
    {
        BenchRegistry r = CliRegistries.CreateDefault().Bench;
        Assert.All(BenchKeys.All, k => Assert.True(r.Contains(k), k));
    }

    [Fact]
    public void MeasurementsStayWithinAQuarterOfTheMachineAndRefuseATinyOne()
    {
        Assert.Equal(512, HetmemBenchmarks.PagesFor(Tiny()));
        var capped = new BenchOptions(new CliSettings { RamBytes = 8UL << 20 }, quick: true);
        Assert.Equal(512, HetmemBenchmarks.PagesFor(capped));
        var tiny = new BenchOptions(new CliSettings { RamBytes = 2UL << 20 }, quick: true) { Pages = 4096 };
        Assert.Throws<BenchUnavailableException>(() => HetmemBenchmarks.PagesFor(tiny));
    }

    [Fact]
    public void MigrationRoundTripsKeepTheDataAndReturnEveryDevicePage()
    {
        using var fx = new MigrateFixture(4UL << 20);
        long pages = (long)((4UL << 20) >> Page.Shift);
        Assert.Equal(pages, fx.ToDevice());
        Assert.Equal(pages, (long)fx.Space.Maps().Single(m => m.Start == fx.Start).DevicePages);
        Assert.Equal(pages, fx.ToRam());
        Assert.True(fx.DataIntact());
        Assert.Equal(pages, fx.ToDevice());
        Assert.Equal(pages, fx.ToRam());
        Assert.True(fx.DataIntact());
    }

    [Fact]
    public void TheMirroredFixtureReallyIsMirroredByTwoDevicesBeforeEachMeasuredUnmap()
    {
        using var fx = new MirroredRangeFixture(64);
        fx.Map();
        Assert.Equal(2 * 64, fx.MirroredPages);
        fx.Unmap();
        Assert.Equal(0, fx.MirroredPages);
        fx.Map();
        fx.Protect();
        Assert.Equal(0, fx.MirroredPages);
        fx.Unprotect();
        fx.MirrorAll();
        Assert.Equal(2 * 64, fx.MirroredPages);
    }
}
