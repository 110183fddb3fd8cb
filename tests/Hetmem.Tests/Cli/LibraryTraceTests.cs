using System.Text.Json;
using Hetmem.Cli;
using Hetmem.Cli.Bench;
using Hetmem.Tests.Diagnostics;

namespace Hetmem.Tests.Cli;

/// <summary>
/// <c>--trace</c> on a real workload shows the spans the library records itself (CPU faults, invalidations by kind,
/// device faults through hmm_range_fault), and <c>bench --markdown</c> writes the vs-kernel table.
/// </summary>
[Collection(GlobalDiagnosticsCollection.Name)]
public sealed class LibraryTraceTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("hetmem-libtrace-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task TheAnonCowTraceHoldsTheLibrarysFaultInvalidationAndHmmSpans()
    {
        string trace = Path.Combine(_dir, "t.json");
        CliHost.Outcome r = await CliHost.RunAsync(CliRegistries.CreateDefault(), "run", "anon-cow", "--trace", trace);
        Assert.True(r.ExitCode == 0, r.Out + r.Err);
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllBytes(trace));
        JsonElement[] spans = [.. doc.RootElement.GetProperty("traceEvents").EnumerateArray()
            .Where(e => e.GetProperty("ph").GetString() == "X")];
        string[] Cats(string name) => [.. spans.Where(e => e.GetProperty("name").GetString() == name).Select(e => e.GetProperty("cat").GetString()!).Distinct()];
        Assert.Equal(["cpu_fault"], Cats("cpu_fault"));
        Assert.Equal(["cpu_fault"], Cats("handle_mm_fault"));
        Assert.Equal(["hmm"], Cats("hmm_range_fault"));
        Assert.Equal(["invalidate"], Cats("invalidate_range_end"));
        // fork write-protects the parent (PROTECTION_PAGE) and the COW breaks clear single pages (CLEAR).
        Assert.Equal(["invalidate"], Cats("ProtectionPage"));
        Assert.Equal(["invalidate"], Cats("Clear"));
        JsonElement unmap = spans.First(e => e.GetProperty("name").GetString() == "ProtectionPage");
        Assert.Equal(3, unmap.GetProperty("args").GetProperty("event").GetInt64());
    }

    private static CliRegistries FakeBench()
    {
        var r = new CliRegistries();
        r.Bench.Add(BenchKeys.HostPopulateRead, _ => 200);
        r.Bench.Add(BenchKeys.Snapshot, _ => 8);
        r.Bench.Add(BenchKeys.TlbHit, _ => 2.5);
        r.Bench.Add(BenchKeys.NativeRead, _ => 1);
        r.Bench.Add(BenchKeys.HostPopulateWrite, _ => throw new BenchUnavailableException("kernel too old"));
        r.Bench.Add(BenchKeys.FrameMetadataBytes, _ => 32);
        return r;
    }

    [Fact]
    public async Task BenchMarkdownWritesTheComparisonTableAndEveryKey()
    {
        string md = Path.Combine(_dir, "vs-kernel.md");
        CliHost.Outcome r = await CliHost.RunAsync(FakeBench(), "bench", "--quick", "--markdown", md);
        Assert.True(r.ExitCode == 0, r.Out + r.Err);
        string text = File.ReadAllText(md);
        Assert.StartsWith("# Hetmem vs the kernel", text, StringComparison.Ordinal);
        foreach (string key in BenchKeys.All)
        {
            Assert.Contains($"| `{key}` |", text, StringComparison.Ordinal);
        }
        foreach (BenchComparison c in BenchKeys.Comparisons)
        {
            Assert.Contains($"| {c.Operation} | {c.Unit} |", text, StringComparison.Ordinal);
        }
        Assert.Contains("| CPU 8-byte read, software TLB hit | ns/read | 2.5 | 1 | 2.50× | ≤ 3 | meets target |", text, StringComparison.Ordinal);
        Assert.Contains("kernel too old", text, StringComparison.Ordinal);
        Assert.Contains("| `tlb_hit_ns` | 2.5 |", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RegeneratingKeepsTheHandWrittenTextAroundTheGeneratedBlock()
    {
        string md = Path.Combine(_dir, "page.md");
        File.WriteAllText(md, "# Title\n\nintro\n\n" + BenchMarkdown.BeginMarker + "\nold table\n" + BenchMarkdown.EndMarker + "\n\n## Workloads\n\nkept\n");
        CliHost.Outcome r = await CliHost.RunAsync(FakeBench(), "bench", "--quick", "--markdown", md);
        Assert.True(r.ExitCode == 0, r.Out + r.Err);
        string text = File.ReadAllText(md);
        Assert.StartsWith("# Title\n\nintro\n\n" + BenchMarkdown.BeginMarker, text, StringComparison.Ordinal);
        Assert.EndsWith(BenchMarkdown.EndMarker + "\n\n## Workloads\n\nkept\n", text, StringComparison.Ordinal);
        Assert.DoesNotContain("old table", text, StringComparison.Ordinal);
        Assert.Contains("| `snapshot_ns` | 8 |", text, StringComparison.Ordinal);
    }
}
