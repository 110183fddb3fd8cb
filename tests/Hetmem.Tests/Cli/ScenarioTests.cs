using System.Text.Json;
using Hetmem.Cli;
using Hetmem.Cli.Workloads;

namespace Hetmem.Tests.Cli;

/// <summary>The workloads of <c>hetmem run</c>, each run for real on a 64 MiB machine.</summary>
public class ScenarioTests
{
    [Theory]
    [InlineData("anon-cow", "COW faults")]
    [InlineData("dax-truncate", "pages checked in dax-truncate.dax")]
    [InlineData("reclaim", "pages swapped in by device faults")]
    [InlineData("mirror-race", "device-vs-CPU page-table comparisons")]
    public async Task EachWorkloadPassesAllItsChecksOnASmallMachine(string workload, string evidence)
    {
        CliHost.Outcome r = await CliHost.RunAsync(CliRegistries.CreateDefault(), "run", workload, "--ram", "64M", "--json", "--seed", "3");
        Assert.True(r.ExitCode == 0, r.Out + r.Err);
        using JsonDocument doc = JsonDocument.Parse(r.Out);
        JsonElement w = doc.RootElement.GetProperty("workloads")[0];
        Assert.Equal(workload, w.GetProperty("name").GetString());
        JsonElement[] checks = [.. w.GetProperty("checks").EnumerateArray()];
        Assert.True(checks.Length >= 5, $"{checks.Length} checks");
        Assert.All(checks, c => Assert.True(c.GetProperty("passed").GetBoolean(), c.GetProperty("name").GetString() + ": " + c.GetProperty("detail")));
        Assert.Contains(checks, c => c.GetProperty("detail").ValueKind == JsonValueKind.String
            && c.GetProperty("detail").GetString()!.Contains(evidence, StringComparison.Ordinal));
        Assert.Contains(checks, c => c.GetProperty("name").GetString()!.StartsWith("every frame is free again", StringComparison.Ordinal)
            || c.GetProperty("name").GetString()!.StartsWith("no RAM frame was used", StringComparison.Ordinal));
    }

    [Fact]
    public void TheRequiredWorkloadsAndStressScenariosAreRegistered()
    {
        CliRegistries reg = CliRegistries.CreateDefault();
        foreach (string name in new[] { "anon-cow", "dax-truncate", "reclaim", "mirror-race" })
        {
            Assert.True(reg.Workloads.TryGet(name, out _), name);
        }
        Assert.True(reg.Stress.TryGet("mirror-race", out _));
        Assert.True(reg.Stress.TryGet("mm-random", out _));
        Assert.Equal(["physical", "dax", "mm", "mirror-race"], reg.DemoSections.Names);
    }

    [Fact]
    public void AResultTableKeepsItsShapeAndIsMergedWithItsSection()
    {
        var section = new WorkloadResult("s");
        ResultTable t = section.Table("maps", "range", "kind").AlignRight(0);
        t.AddRow("1000-2000", "Anonymous");
        Assert.Throws<ArgumentException>(() => t.AddRow("only one cell"));
        var all = new WorkloadResult("demo");
        all.Merge(section);
        ResultTable merged = Assert.Single(all.Tables);
        Assert.Equal(["range", "kind"], merged.Columns);
        Assert.Equal(["1000-2000", "Anonymous"], merged.Rows[0]);
        Assert.Contains(0, merged.RightAligned);
    }

    [Fact]
    public async Task TablesArePrintedAfterTheChecksAndAppearInJson()
    {
        var reg = new CliRegistries();
        reg.Workloads.Add("tabled", "has a table", _ =>
        {
            var r = new WorkloadResult("tabled");
            r.Check("ok", true);
            r.Table("gpu0 table", "metric", "value").AddRow("faults", "42");
            return r;
        });
        CliHost.Outcome text = await CliHost.RunAsync(reg, "run", "tabled");
        Assert.Equal(0, text.ExitCode);
        Assert.Contains("gpu0 table", text.Out, StringComparison.Ordinal);
        Assert.Contains(text.OutLines, l => l.Contains("faults", StringComparison.Ordinal) && l.Contains("42", StringComparison.Ordinal));
        Assert.StartsWith("PASS tabled", text.OutLines[^1], StringComparison.Ordinal);
        CliHost.Outcome json = await CliHost.RunAsync(reg, "run", "tabled", "--json");
        using JsonDocument doc = JsonDocument.Parse(json.Out);
        JsonElement table = doc.RootElement.GetProperty("workloads")[0].GetProperty("tables")[0];
        Assert.Equal("gpu0 table", table.GetProperty("title").GetString());
        Assert.Equal("42", table.GetProperty("rows")[0][1].GetString());
    }
}
