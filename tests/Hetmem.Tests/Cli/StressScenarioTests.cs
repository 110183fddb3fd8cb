using Hetmem.Cli;
using Hetmem.Tests.Diagnostics;

namespace Hetmem.Tests.Cli;

/// <summary>The address-space stress scenarios. <c>stress</c> flips the process-wide invariant and lock-order switches, so these run alone.</summary>
[Collection(GlobalDiagnosticsCollection.Name)]
public class StressScenarioTests
{
    [Theory]
    [InlineData("mirror-race")]
    [InlineData("mm-random")]
    public async Task AShortSeededStressRunPassesWithLockOrderValidationOn(string scenario)
    {
        CliHost.Outcome r = await CliHost.RunAsync(CliRegistries.CreateDefault(), "stress", "--filter", scenario, "--duration", "0.5",
            "--threads", "4", "--ram", "64M", "--seed", "11");
        Assert.True(r.ExitCode == 0, r.Out + r.Err);
        Assert.Equal("hetmem stress: seed 11 (reproduce with --seed 11)", r.ErrLines[0]);
        Assert.Contains("no invariant violation was reported", r.Out, StringComparison.Ordinal);
        Assert.StartsWith("PASS stress", r.OutLines[^1], StringComparison.Ordinal);
    }

    [Fact]
    public async Task WithoutSeedTheStressCommandTakesHetmemSeedFromTheEnvironment()
    {
        string? old = Environment.GetEnvironmentVariable("HETMEM_SEED");
        Environment.SetEnvironmentVariable("HETMEM_SEED", "4242");
        try
        {
            CliHost.Outcome r = await CliHost.RunAsync(CliRegistries.CreateDefault(), "stress", "--filter", "mirror-race", "--duration", "0.2",
                "--threads", "3", "--ram", "64M");
            Assert.True(r.ExitCode == 0, r.Out + r.Err);
            Assert.Equal("hetmem stress: seed 4242 (reproduce with --seed 4242)", r.ErrLines[0]);
        }
        finally
        {
            Environment.SetEnvironmentVariable("HETMEM_SEED", old);
        }
    }
}
