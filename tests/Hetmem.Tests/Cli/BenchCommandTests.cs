using System.Text.Json;
using Hetmem.Cli;
using Hetmem.Cli.Bench;

namespace Hetmem.Tests.Cli;

public class BenchCommandTests
{
    private static CliRegistries Fake()
    {
        var r = new CliRegistries();
        r.Bench.Add(BenchKeys.HostPopulateRead, _ => 200);
        r.Bench.Add(BenchKeys.Snapshot, o => o.Quick ? 8 : 9);
        r.Bench.Add(BenchKeys.HostPopulateWrite, _ => throw new BenchUnavailableException("kernel too old"));
        r.Bench.Add(BenchKeys.FrameMetadataBytes, _ => 32);
        r.Bench.Add("fork_ns", _ => 1234);
        return r;
    }

    [Fact]
    public async Task JsonHasEveryStandardKeyWithNullForWhatWasNotMeasured()
    {
        CliHost.Outcome r = await CliHost.RunAsync(Fake(), "bench", "--quick", "--json");
        Assert.Equal(0, r.ExitCode);
        using JsonDocument doc = JsonDocument.Parse(r.Out);
        JsonElement root = doc.RootElement;
        foreach (string key in BenchKeys.All)
        {
            Assert.True(root.TryGetProperty(key, out _), key);
        }
        Assert.Equal(8, root.GetProperty("snapshot_ns").GetDouble());
        Assert.Equal(200, root.GetProperty("host_populate_read_ns").GetDouble());
        Assert.Equal(JsonValueKind.Null, root.GetProperty("host_populate_write_ns").ValueKind);
        Assert.Equal(JsonValueKind.Null, root.GetProperty("tlb_hit_ns").ValueKind);
        Assert.False(root.TryGetProperty("fork_ns", out _), "extra measurements are table-only");
        Assert.Equal(BenchKeys.All, root.EnumerateObject().Select(p => p.Name));
    }

    [Fact]
    public async Task TheTableShowsHetmemNextToTheHostWithTheRatio()
    {
        CliHost.Outcome r = await CliHost.RunAsync(Fake(), "bench");
        Assert.Equal(0, r.ExitCode);
        string row = r.OutLines.Single(l => l.Contains("snapshot", StringComparison.Ordinal));
        Assert.Contains("9", row, StringComparison.Ordinal);
        Assert.Contains("200", row, StringComparison.Ordinal);
        Assert.Contains("0.05×", row, StringComparison.Ordinal);
        Assert.Contains("meets target", row, StringComparison.Ordinal);
        Assert.Contains("kernel too old", r.Out, StringComparison.Ordinal);
        Assert.Contains("fork_ns", r.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AMeasurementThatThrowsFailsTheRunButTheOthersAreReported()
    {
        CliRegistries reg = Fake();
        reg.Bench.Add(BenchKeys.TlbHit, _ => throw new InvalidOperationException("broken"));
        CliHost.Outcome r = await CliHost.RunAsync(reg, "bench", "--json");
        Assert.Equal(ExitCodes.Failed, r.ExitCode);
        using JsonDocument doc = JsonDocument.Parse(r.Out);
        Assert.Equal(JsonValueKind.Null, doc.RootElement.GetProperty("tlb_hit_ns").ValueKind);
        Assert.Equal(8 + 1, doc.RootElement.GetProperty("snapshot_ns").GetDouble());
    }

    [Fact]
    public void KeysMustBeSnakeCase()
    {
        var reg = new BenchRegistry();
        Assert.Throws<ArgumentException>(() => reg.Add("SnapshotNs", _ => 1));
        Assert.Throws<ArgumentException>(() => reg.Add("", _ => 1));
    }

    [Fact]
    public void MedianIgnoresTheWarmUpAndOutliers()
    {
        var o = new BenchOptions(new CliSettings(), quick: true) { Repetitions = 5, WarmupTime = TimeSpan.Zero };
        double[] samples = [1000, 5, 3, 100, 4, 6];
        int i = 0;
        Assert.Equal(5, o.Median(() => samples[i++]));
    }

    [Fact]
    public async Task TheRealQuickBenchPrintsValidJsonWithHostNumbers()
    {
        CliHost.Outcome r = await CliHost.RunAsync(CliRegistries.CreateDefault(), "bench", "--quick", "--json", "--ram", "16M");
        Assert.Equal(0, r.ExitCode);
        using JsonDocument doc = JsonDocument.Parse(r.Out);
        Assert.Equal(32, doc.RootElement.GetProperty("frame_metadata_bytes").GetDouble());
        Assert.True(doc.RootElement.GetProperty("memcpy_gbps").GetDouble() > 0);
        Assert.True(doc.RootElement.GetProperty("native_read_ns").GetDouble() > 0);
        Assert.True(doc.RootElement.GetProperty("host_munmap_ns").GetDouble() > 0);
    }
}
