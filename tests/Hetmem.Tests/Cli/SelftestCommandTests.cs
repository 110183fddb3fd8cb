using System.Text.Json;
using Hetmem.Cli;
using Hetmem.Cli.Selftests;

namespace Hetmem.Tests.Cli;

public class SelftestCommandTests
{
    private static CliRegistries Fake(bool withFailure, bool withSkip)
    {
        var r = new CliRegistries();
        r.Selftests.Add("fake.passes", () => { });
        if (withFailure)
        {
            r.Selftests.Add("fake.fails", () => Selftest.Assert(false, "expected 1\nbut saw 2"));
        }
        if (withSkip)
        {
            r.Selftests.Add("fake.skips", () => Selftest.Skip("needs a GPU"));
        }
        r.Selftests.Add("fake.uses_context", ctx => Selftest.Assert(ctx.Seed == 1 && ctx.Settings.RamBytes > 0, "default seed"));
        r.Selftests.Add("other.mm_error", () => MmException.Throw(Errno.ENOMEM, "out of frames"));
        return r;
    }

    [Fact]
    public async Task ResultsArePrintedAsTapAndEndWithTheSummaryLine()
    {
        CliHost.Outcome r = await CliHost.RunAsync(Fake(withFailure: true, withSkip: true), "selftest", "--ram", "4M");
        Assert.Equal(
        [
            "1..5",
            "ok 1 fake.passes",
            "not ok 2 fake.fails # expected 1 but saw 2",
            "ok 3 fake.skips # SKIP needs a GPU",
            "ok 4 fake.uses_context",
            "not ok 5 other.mm_error # ENOMEM: out of frames",
            "2 passed, 2 failed, 1 skipped",
        ], r.OutLines);
        Assert.Equal(ExitCodes.Failed, r.ExitCode);
        Assert.Equal("", r.Err);
    }

    [Fact]
    public async Task ARunWithoutFailuresExitsWithZeroAndOmitsTheSkippedCount()
    {
        var reg = new CliRegistries();
        reg.Selftests.Add("a", () => { });
        reg.Selftests.Add("b", () => { });
        CliHost.Outcome r = await CliHost.RunAsync(reg, "selftest");
        Assert.Equal(0, r.ExitCode);
        Assert.Equal("2 passed, 0 failed", r.OutLines[^1]);
    }

    [Fact]
    public async Task SkippedTestsAloneDoNotFailTheRun()
    {
        CliHost.Outcome r = await CliHost.RunAsync(Fake(withFailure: false, withSkip: true), "selftest", "--filter", "fake");
        Assert.Equal(0, r.ExitCode);
        Assert.Equal("2 passed, 0 failed, 1 skipped", r.OutLines[^1]);
    }

    [Theory]
    [InlineData("fake", 4)]
    [InlineData("FAKE.P", 1)]
    [InlineData("*.fails", 1)]
    [InlineData("other.*", 1)]
    [InlineData("f?ke.*s", 3)]
    public async Task TheFilterSelectsBySubstringOrGlob(string filter, int expected)
    {
        CliHost.Outcome r = await CliHost.RunAsync(Fake(withFailure: true, withSkip: true), "selftest", "--filter", filter);
        Assert.Equal($"1..{expected}", r.OutLines[0]);
    }

    [Fact]
    public async Task AFilterThatMatchesNothingIsAUsageError()
    {
        CliHost.Outcome r = await CliHost.RunAsync(Fake(false, false), "selftest", "--filter", "zzz");
        Assert.Equal(ExitCodes.Usage, r.ExitCode);
        Assert.Contains("no self-test matches 'zzz'", Assert.Single(r.ErrLines), StringComparison.Ordinal);
    }

    [Fact]
    public async Task JsonOutputIsOneObjectWithEveryOutcome()
    {
        CliHost.Outcome r = await CliHost.RunAsync(Fake(withFailure: true, withSkip: true), "selftest", "--json");
        Assert.Equal(ExitCodes.Failed, r.ExitCode);
        using JsonDocument doc = JsonDocument.Parse(r.Out);
        Assert.Equal(2, doc.RootElement.GetProperty("passed_count").GetInt32());
        Assert.Equal(2, doc.RootElement.GetProperty("failed_count").GetInt32());
        Assert.Equal(1, doc.RootElement.GetProperty("skipped_count").GetInt32());
        Assert.Equal(["passed", "failed", "skipped", "passed", "failed"],
            doc.RootElement.GetProperty("tests").EnumerateArray().Select(t => t.GetProperty("outcome").GetString()));
    }

    [Fact]
    public async Task ListPrintsTheNames()
    {
        CliHost.Outcome r = await CliHost.RunAsync(Fake(true, true), "selftest", "--list");
        Assert.Equal(0, r.ExitCode);
        Assert.Equal(["fake.passes", "fake.fails", "fake.skips", "fake.uses_context", "other.mm_error", "5 self-tests"], r.OutLines);
    }

    [Fact]
    public void EachCaseGetsAFreshContext()
    {
        var reg = new SelftestRegistry();
        var seen = new List<object>();
        reg.Add("one", ctx => seen.Add(ctx));
        reg.Add("two", ctx => seen.Add(ctx));
        var settings = new CliSettings { RamBytes = 4UL << 20 };
        SelftestSummary s = SelftestRegistry.Run(reg.Cases, () => new Hetmem.Cli.Workloads.WorkloadContext(settings), tap: null);
        Assert.Equal(2, s.Passed);
        Assert.NotSame(seen[0], seen[1]);
    }

    [Fact]
    public void NamesWithSpacesOrHashesAreRefused()
    {
        var reg = new SelftestRegistry();
        Assert.Throws<ArgumentException>(() => reg.Add("has space", () => { }));
        Assert.Throws<ArgumentException>(() => reg.Add("has#hash", () => { }));
    }

    [Fact]
    public async Task TheBuiltInSelftestsPass()
    {
        CliHost.Outcome r = await CliHost.RunAsync(CliRegistries.CreateDefault(), "selftest", "--ram", "16M", "--filter", "physical");
        Assert.Equal(0, r.ExitCode);
        Assert.Matches(@"^\d+ passed, 0 failed", r.OutLines[^1]);
    }
}
