using System.Text.Json;
using Hetmem.Cli;
using Hetmem.Cli.Workloads;

namespace Hetmem.Tests.Cli;

public class WorkloadCommandTests
{
    private static CliRegistries WithSections(params IWorkload[] sections)
    {
        var r = new CliRegistries();
        foreach (IWorkload s in sections)
        {
            r.DemoSections.Add(s);
        }
        r.Workloads.Add(new DemoWorkload(r.DemoSections));
        return r;
    }

    private static IWorkload Section(string name, params (string Check, bool Pass)[] checks) =>
        new DelegateWorkload(name, "a fake section", _ =>
        {
            var res = new WorkloadResult(name);
            foreach ((string c, bool p) in checks)
            {
                res.Check(c, () =>
                {
                    WorkloadResult.Require(p, "it did not hold");
                    return "detail of " + c;
                });
            }
            res.Counter("things", 3);
            return res;
        });

    [Fact]
    public async Task DemoRunsEverySectionAndEndsWithAPassVerdict()
    {
        CliHost.Outcome r = await CliHost.RunAsync(WithSections(Section("alpha", ("alpha holds", true)), Section("beta", ("beta holds", true))), "demo");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("alpha holds", r.Out, StringComparison.Ordinal);
        Assert.Contains("beta holds", r.Out, StringComparison.Ordinal);
        Assert.Contains("alpha.things", r.Out, StringComparison.Ordinal);
        Assert.StartsWith("PASS demo: 2 of 2 checks passed", r.OutLines[^1], StringComparison.Ordinal);
    }

    [Fact]
    public async Task AFailedCheckFailsTheVerdictAndTheExitCode()
    {
        CliHost.Outcome r = await CliHost.RunAsync(WithSections(Section("alpha", ("good", true), ("bad", false))), "demo");
        Assert.Equal(ExitCodes.Failed, r.ExitCode);
        Assert.Contains("it did not hold", r.Out, StringComparison.Ordinal);
        Assert.StartsWith("FAIL demo: 1 of 2 checks failed (alpha: bad)", r.OutLines[^1], StringComparison.Ordinal);
    }

    [Fact]
    public async Task ASectionThatThrowsBecomesAFailedCheckAndTheOthersStillRun()
    {
        var boom = new DelegateWorkload("boom", "throws", _ => throw new InvalidOperationException("kaput"));
        CliHost.Outcome r = await CliHost.RunAsync(WithSections(boom, Section("after", ("after ran", true))), "demo");
        Assert.Equal(ExitCodes.Failed, r.ExitCode);
        Assert.Contains("InvalidOperationException: kaput", r.Out, StringComparison.Ordinal);
        Assert.Contains("after ran", r.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RunResolvesDemoSectionsAndStressScenariosByName()
    {
        CliRegistries reg = WithSections(Section("alpha", ("alpha holds", true)));
        reg.Stress.Add(Section("hammer", ("hammered", true)));
        CliHost.Outcome a = await CliHost.RunAsync(reg, "run", "ALPHA");
        CliHost.Outcome h = await CliHost.RunAsync(reg, "run", "hammer");
        Assert.Equal(0, a.ExitCode);
        Assert.StartsWith("PASS alpha:", a.OutLines[^1], StringComparison.Ordinal);
        Assert.StartsWith("PASS hammer:", h.OutLines[^1], StringComparison.Ordinal);
    }

    [Fact]
    public async Task AnUnknownWorkloadIsAUsageErrorListingTheKnownOnes()
    {
        CliHost.Outcome r = await CliHost.RunAsync(WithSections(Section("alpha")), "run", "nope");
        Assert.Equal(ExitCodes.Usage, r.ExitCode);
        Assert.Equal("hetmem: unknown workload 'nope' (available: demo, alpha)", Assert.Single(r.ErrLines));
        Assert.Equal("", r.Out);
    }

    [Fact]
    public async Task AnMmExceptionEscapingAWorkloadIsOneLineNamingItsErrno()
    {
        var reg = new CliRegistries();
        reg.Workloads.Add("oom", "throws ENOMEM", _ => throw new MmException(Errno.ENOMEM, "no frame for 0x7f0000001000"));
        CliHost.Outcome r = await CliHost.RunAsync(reg, "run", "oom");
        Assert.Equal(ExitCodes.Error, r.ExitCode);
        Assert.Equal("hetmem: ENOMEM: no frame for 0x7f0000001000", Assert.Single(r.ErrLines));
    }

    [Fact]
    public async Task VerboseAddsTheStackTraceOfAnError()
    {
        var reg = new CliRegistries();
        reg.Workloads.Add("oom", "throws ENOMEM", _ => throw new MmException(Errno.ENOMEM, "no frame"));
        CliHost.Outcome r = await CliHost.RunAsync(reg, "run", "oom", "--verbose");
        Assert.Equal(ExitCodes.Error, r.ExitCode);
        Assert.Contains("hetmem: ENOMEM: no frame", r.Err, StringComparison.Ordinal);
        Assert.Contains("   at ", r.Err, StringComparison.Ordinal);
    }

    [Fact]
    public async Task JsonOutputIsOneValidObjectAndNothingElse()
    {
        CliHost.Outcome r = await CliHost.RunAsync(WithSections(Section("alpha", ("alpha holds", true), ("alpha fails", false))), "demo", "--json", "--seed", "5");
        Assert.Equal(ExitCodes.Failed, r.ExitCode);
        using JsonDocument doc = JsonDocument.Parse(r.Out);
        JsonElement root = doc.RootElement;
        Assert.False(root.GetProperty("passed").GetBoolean());
        Assert.Equal(5, root.GetProperty("seed").GetInt32());
        JsonElement w = Assert.Single(root.GetProperty("workloads").EnumerateArray());
        Assert.Equal(2, w.GetProperty("checks").GetArrayLength());
        Assert.Equal("alpha", w.GetProperty("checks")[0].GetProperty("section").GetString());
        Assert.Equal(3, w.GetProperty("counters").GetProperty("alpha.things").GetDouble());
        Assert.True(root.GetProperty("vmstat").TryGetProperty("PgFault", out _));
    }

    [Fact]
    public void ExtensionsInAnAssemblyAreDiscoveredAndRegister()
    {
        IReadOnlyList<ICliExtension> found = CliRegistries.DiscoverExtensions(typeof(WorkloadCommandTests).Assembly);
        ICliExtension ext = Assert.Single(found, e => e is TestExtension);
        var reg = new CliRegistries();
        ext.Register(reg);
        Assert.True(reg.Workloads.TryGet("from-extension", out _));
        Assert.True(reg.Bench.Contains("extension_ns"));
    }

    [Fact]
    public void WorkloadNamesMustBeSingleWords()
    {
        var reg = new WorkloadRegistry();
        Assert.Throws<ArgumentException>(() => reg.Add("two words", "x", _ => new WorkloadResult("x")));
    }

    internal sealed class TestExtension : ICliExtension
    {
        public void Register(CliRegistries registries)
        {
            registries.Workloads.Add("from-extension", "registered by a test extension", _ => new WorkloadResult("from-extension"));
            registries.Bench.Add("extension_ns", _ => 1.5);
        }
    }
}
