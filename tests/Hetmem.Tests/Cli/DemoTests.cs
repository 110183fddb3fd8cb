using System.Text.Json;
using Hetmem.Cli;
using Hetmem.Cli.Workloads;
using Hetmem.Tests.Diagnostics;

namespace Hetmem.Tests.Cli;

/// <summary>
/// The main job, run for real once: <c>hetmem demo</c> on a small machine with a kept DAX directory, JSON output and a
/// Perfetto trace. It records the process-wide trace, so it runs with the other such tests.
/// </summary>
[Collection(GlobalDiagnosticsCollection.Name)]
public sealed class DemoTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("hetmem-demo-test-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task TheDemoPassesEveryCheckMirrorsWithEveryDeviceAndTracesFaultsAndInvalidationsByKind()
    {
        string dax = Path.Combine(_dir, "dax");
        string trace = Path.Combine(_dir, "demo-trace.json");
        CliHost.Outcome r = await CliHost.RunAsync(CliRegistries.CreateDefault(), "demo", "--ram", "64M", "--dax-dir", dax, "--json", "--trace", trace);
        Assert.True(r.ExitCode == 0, r.Out + r.Err);
        using JsonDocument doc = JsonDocument.Parse(r.Out);
        JsonElement demo = doc.RootElement.GetProperty("workloads")[0];
        Assert.True(doc.RootElement.GetProperty("passed").GetBoolean());
        string[] sections = [.. demo.GetProperty("checks").EnumerateArray().Select(c => c.GetProperty("section").GetString()!).Distinct()];
        Assert.Equal(["physical", "dax", "mm", "mirror0", "mirror1", "dmirror0", "gpu0", "rxe0", "mirror-race"], sections);
        Assert.True(File.Exists(Path.Combine(dax, "demo-fs.dax")), "--dax-dir keeps the DAX file system's namespace file");

        // The tables: maps (with PMD entries for DAX and hugetlbfs), counters, one per device.
        JsonElement[] tables = [.. demo.GetProperty("tables").EnumerateArray()];
        JsonElement maps = tables.First(t => t.GetProperty("title").GetString()!.StartsWith("maps", StringComparison.Ordinal));
        string[][] rows = [.. maps.GetProperty("rows").EnumerateArray().Select(row => row.EnumerateArray().Select(c => c.GetString()!).ToArray())];
        Assert.Contains(rows, row => row[2] == "Dax" && row[5] != "0/0");
        Assert.Contains(rows, row => row[2] == "HugeTlb" && row[5] != "0/0");
        Assert.Contains(tables, t => t.GetProperty("title").GetString()!.StartsWith("counters", StringComparison.Ordinal));
        foreach (string device in new[] { "mirror0", "mirror1", "dmirror0", "gpu0", "rxe0" })
        {
            Assert.Contains(tables, t => t.GetProperty("title").GetString() == $"device {device}");
        }

        // The trace: CPU faults on the CPU threads, device faults and invalidations by kind on the device tracks.
        using JsonDocument tr = JsonDocument.Parse(File.ReadAllBytes(trace));
        JsonElement[] ev = [.. tr.RootElement.GetProperty("traceEvents").EnumerateArray()];
        var spans = ev.Where(e => e.GetProperty("ph").GetString() == "X")
            .Select(e => (Cat: e.GetProperty("cat").GetString()!, Name: e.GetProperty("name").GetString()!)).ToHashSet();
        // Which of a region's faults the CPU takes depends on the race with the devices' concurrent faults (a device
        // read fault may map a page first, so the CPU's first write is then a write-protect fault): check each kind.
        foreach (string kind in new[] { "anon", "file", "dax", "hugetlb" })
        {
            Assert.Contains(spans, s => s.Cat == "cpu_fault" && s.Name.StartsWith(kind, StringComparison.Ordinal));
        }
        Assert.Contains(("device_fault", "read_fault"), spans);
        Assert.Contains(("device_fault", "write_fault"), spans);
        Assert.Contains(("migrate", "to_device"), spans);
        foreach (string kind in new[] { "Unmap", "Clear", "ProtectionVma", "ProtectionPage", "Migrate", "Release" })
        {
            Assert.Contains(("invalidate", kind), spans);
        }
        string[] tracks = [.. ev.Where(e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("name").GetString() == "thread_name")
            .Select(e => e.GetProperty("args").GetProperty("name").GetString()!)];
        Assert.Contains("cpu0", tracks);
        Assert.Contains("cpu1", tracks);
        Assert.Contains("mirror0", tracks);
        Assert.Contains("dmirror0", tracks);
        Assert.Contains("gpu0", tracks);
    }

    [Fact]
    public void EachDemoSectionReportsItsProgress()
    {
        var reg = new CliRegistries();
        reg.DemoSections.Add("one", "first", ctx =>
        {
            ctx.Report("one", "halfway", 0.5);
            return new WorkloadResult("one");
        });
        reg.DemoSections.Add("two", "second", _ => new WorkloadResult("two"));
        var demo = new DemoWorkload(reg.DemoSections);
        var progress = new RecordingProgress();
        using var ctx = new WorkloadContext(new CliSettings()) { Progress = progress };
        WorkloadResult result = demo.Run(ctx);
        Assert.Equal(
            ["one: running 0", "one: halfway 0.5", "one: passed 1", "two: running 0", "two: passed 1"],
            progress.Lines);
        Assert.True(result.Passed);
    }

    private sealed class RecordingProgress : IWorkloadProgress
    {
        public List<string> Lines { get; } = [];

        public void Report(string workload, string phase, double fraction) =>
            Lines.Add(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{workload}: {phase} {fraction}"));
    }
}
