using System.Text.Json;
using Hetmem.Cli;
using Hetmem.Cli.Workloads;
using Hetmem.Diagnostics;
using Hetmem.Tests.Diagnostics;

namespace Hetmem.Tests.Cli;

/// <summary>--trace and --plot. They use the process-wide trace recorder, so they run with the other such tests.</summary>
[Collection(GlobalDiagnosticsCollection.Name)]
public sealed class ArtifactTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("hetmem-artifacts-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static CliRegistries Traced()
    {
        var r = new CliRegistries();
        r.DemoSections.Add(new DelegateWorkload("faulty", "emits trace events", ctx =>
        {
            var res = new WorkloadResult("faulty");
            TraceTrack dev = TraceLog.RegisterTrack("dmirror0", "devices");
            res.Check("events were emitted", () =>
            {
                using (TraceLog.Span(TraceCategory.CpuFault, "anon fault", TraceArg.Address(0x7f0000001000)))
                {
                }
                using (TraceLog.Span(dev, TraceCategory.DeviceFault, "device fault", TraceArg.Pages(16)))
                {
                }
                using (TraceLog.Span(TraceCategory.Invalidate, TraceNames.Of(LockClass.MmapLock)))
                {
                }
                TraceLog.Counter("resident_pages", "ram", 10);
                ctx.Timeline?.AddGauge("ram", "resident pages", () => 10);
                return null;
            });
            return res;
        }));
        r.Workloads.Add(new DemoWorkload(r.DemoSections));
        return r;
    }

    [Fact]
    public async Task TheTraceFileIsChromeTraceJsonWithTheRunsEventsAndTrackNames()
    {
        string trace = Path.Combine(_dir, "trace.json");
        CliHost.Outcome r = await CliHost.RunAsync(Traced(), "demo", "--trace", trace);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("trace: wrote", r.Out, StringComparison.Ordinal);
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllBytes(trace));
        JsonElement[] ev = [.. doc.RootElement.GetProperty("traceEvents").EnumerateArray()];
        JsonElement Span(string name) => ev.Single(e => e.GetProperty("ph").GetString() == "X" && e.GetProperty("name").GetString() == name);
        Assert.Equal("cpu_fault", Span("anon fault").GetProperty("cat").GetString());
        Assert.Equal("0x7f0000001000", Span("anon fault").GetProperty("args").GetProperty("address").GetString());
        Assert.Equal("device_fault", Span("device fault").GetProperty("cat").GetString());
        Assert.Equal("invalidate", Span("MmapLock").GetProperty("cat").GetString());
        Assert.Equal("workload", Span("demo").GetProperty("cat").GetString());
        Assert.Equal("workload", Span("events were emitted").GetProperty("cat").GetString());
        int devTid = Span("device fault").GetProperty("tid").GetInt32();
        Assert.Contains(ev, e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("name").GetString() == "thread_name"
            && e.GetProperty("tid").GetInt32() == devTid && e.GetProperty("args").GetProperty("name").GetString() == "dmirror0");
        Assert.Contains(ev, e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("name").GetString() == "thread_name"
            && e.GetProperty("args").GetProperty("name").GetString() == "main");
        Assert.Contains(ev, e => e.GetProperty("ph").GetString() == "C" && e.GetProperty("name").GetString() == "resident_pages");
        Assert.False(TraceLog.Enabled, "recording stops when the command ends");
    }

    [Fact]
    public async Task WithJsonTheArtifactsAreNamedInTheObjectAndStdoutStaysPureJson()
    {
        string trace = Path.Combine(_dir, "t.json");
        string plot = Path.Combine(_dir, "p.png");
        CliHost.Outcome r = await CliHost.RunAsync(Traced(), "demo", "--json", "--trace", trace, "--plot", plot);
        Assert.Equal(0, r.ExitCode);
        using JsonDocument doc = JsonDocument.Parse(r.Out);
        Assert.Equal(trace, doc.RootElement.GetProperty("artifacts").GetProperty("trace").GetString());
        Assert.Equal(plot, doc.RootElement.GetProperty("artifacts").GetProperty("plot").GetString());
    }

    [Fact]
    public async Task ThePlotIsAPngOfTheTimeline()
    {
        string plot = Path.Combine(_dir, "timeline.png");
        CliHost.Outcome r = await CliHost.RunAsync(Traced(), "demo", "--plot", plot);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("plot: wrote", r.Out, StringComparison.Ordinal);
        byte[] png = File.ReadAllBytes(plot);
        Assert.True(png.Length > 1000);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png[..4]);
    }

    [Fact]
    public async Task SelftestNotesAreTapComments()
    {
        var reg = new CliRegistries();
        reg.Selftests.Add("traced", () => TraceLog.Instant(TraceCategory.Other, "inside"));
        string trace = Path.Combine(_dir, "st.json");
        CliHost.Outcome r = await CliHost.RunAsync(reg, "selftest", "--trace", trace);
        Assert.Equal(0, r.ExitCode);
        Assert.StartsWith("# trace: wrote", r.OutLines[^2], StringComparison.Ordinal);
        Assert.Equal("1 passed, 0 failed", r.OutLines[^1]);
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllBytes(trace));
        Assert.Contains(doc.RootElement.GetProperty("traceEvents").EnumerateArray(), e => e.GetProperty("name").GetString() == "inside");
    }

    [Fact]
    public async Task TheStressCommandPrintsItsSeedAndRestoresTheSwitches()
    {
        bool inv = Invariants.Enabled;
        bool lockdep = OrderedLock.ValidationEnabled;
        var reg = new CliRegistries();
        reg.Stress.Add(new PhysicalStressWorkload());
        CliHost.Outcome r = await CliHost.RunAsync(reg, "stress", "--duration", "0.2", "--threads", "2", "--ram", "8M", "--seed", "77");
        Assert.Equal(0, r.ExitCode);
        Assert.Equal("hetmem stress: seed 77 (reproduce with --seed 77)", Assert.Single(r.ErrLines));
        Assert.Contains("seed: 77", r.Out, StringComparison.Ordinal);
        Assert.Equal(inv, Invariants.Enabled);
        Assert.Equal(lockdep, OrderedLock.ValidationEnabled);
    }
}
