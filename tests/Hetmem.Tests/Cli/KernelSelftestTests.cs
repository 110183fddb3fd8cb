using Hetmem.Cli;
using Hetmem.Cli.Selftests;

namespace Hetmem.Tests.Cli;

/// <summary><c>hetmem selftest</c> runs the port of tools/testing/selftests/mm/hmm-tests.c.</summary>
public class KernelSelftestTests
{
    [Fact]
    public void TheKernelSuiteIsRegisteredFirstInHarnessOrderAndHetmemsOwnTestsAreNamedApart()
    {
        IReadOnlyList<SelftestCase> cases = CliRegistries.CreateDefault().Selftests.Cases;
        string[] names = [.. cases.Select(c => c.Name)];
        Assert.Equal("hmm.hmm_device_private.open_close", names[0]);
        Assert.Equal(76, names.Count(n => n.StartsWith("hmm.", StringComparison.Ordinal) || n.StartsWith("hmm2.", StringComparison.Ordinal)));
        Assert.Contains("hmm2.hmm2_device_coherent.double_map", names);
        int lastKernel = Array.FindLastIndex(names, n => n.StartsWith("hmm", StringComparison.Ordinal));
        Assert.Equal(75, lastKernel);
        Assert.All(names.Skip(76), n => Assert.StartsWith("hetmem.", n, StringComparison.Ordinal));
        Assert.Contains("hetmem.physical.alloc_free_balances", names);
    }

    [Fact]
    public async Task AKernelCaseRunsAsTapWithTheSummaryLine()
    {
        CliHost.Outcome r = await CliHost.RunAsync(CliRegistries.CreateDefault(), "selftest", "--filter", "hmm.hmm_device_private.anon_rea?");
        Assert.True(r.ExitCode == 0, r.Out + r.Err);
        Assert.Equal("1..1", r.OutLines[0]);
        Assert.Contains("ok 1 hmm.hmm_device_private.anon_read", r.OutLines);
        Assert.All(r.OutLines.Skip(1).SkipLast(1), l => Assert.True(l.StartsWith("ok ", StringComparison.Ordinal) || l.StartsWith("# ", StringComparison.Ordinal), l));
        Assert.Equal("1 passed, 0 failed", r.OutLines[^1]);
    }
}
