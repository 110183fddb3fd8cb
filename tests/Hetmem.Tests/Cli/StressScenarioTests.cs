using System.Text.Json;
using Hetmem.Cli;
using Hetmem.Cli.Stress;
using Hetmem.Tests.Diagnostics;
using Hetmem.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Hetmem.Tests.Cli;

/// <summary>The address-space stress scenarios. <c>stress</c> flips the process-wide invariant and lock-order switches, so these run alone.</summary>
[Collection(GlobalDiagnosticsCollection.Name)]
public class StressScenarioTests(ITestOutputHelper output)
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

    [Fact]
    public async Task TheDefaultStressIsTheOracleRunAndItsJsonHasTheSeedAndTheOracleNumbers()
    {
        int seed = Seed.Get(output, nameof(TheDefaultStressIsTheOracleRunAndItsJsonHasTheSeedAndTheOracleNumbers));
        CliHost.Outcome r = await CliHost.RunAsync(CliRegistries.CreateDefault(), "stress", "--seconds", "2", "--threads", "3",
            "--ram", "64M", "--seed", seed.ToString(System.Globalization.CultureInfo.InvariantCulture), "--json");
        Assert.True(r.ExitCode == 0, r.Out + r.Err);
        Assert.Equal($"hetmem stress: seed {seed} (reproduce with --seed {seed})", r.ErrLines[0]);
        using JsonDocument doc = JsonDocument.Parse(r.Out);
        JsonElement root = doc.RootElement;
        Assert.Equal(seed, root.GetProperty("seed").GetInt32());
        Assert.True(root.GetProperty("operations").GetInt64() > 0);
        Assert.True(root.GetProperty("device_operations").GetInt64() > 0);
        Assert.True(root.GetProperty("invalidations").GetInt64() > 0);
        Assert.Equal(0, root.GetProperty("violations").GetInt64());
        Assert.Equal(0, root.GetProperty("leaked_frames").GetInt64());
        Assert.True(root.GetProperty("seconds").GetDouble() > 0);
        JsonElement workload = Assert.Single(root.GetProperty("workloads").EnumerateArray());
        Assert.Equal(OracleStressWorkload.ScenarioName, workload.GetProperty("name").GetString());
        Assert.StartsWith($"hetmem stress --seed {seed} --seconds 2 --threads 3 --ram 64M", root.GetProperty("replay").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task WithoutJsonTheStressPrintsAViolationsSummaryLineAndDurationStaysAnAliasOfSeconds()
    {
        CliHost.Outcome r = await CliHost.RunAsync(CliRegistries.CreateDefault(), "stress", "--duration", "1", "--threads", "2",
            "--ram", "64M", "--seed", "3");
        Assert.True(r.ExitCode == 0, r.Out + r.Err);
        Assert.Contains("violations: 0", r.OutLines);
        Assert.Contains("seed: 3 (reproduce with --seed 3)", r.OutLines);
        Assert.StartsWith("PASS stress", r.OutLines[^1], StringComparison.Ordinal);
    }

    [Fact]
    public async Task AStressRunWithAPlantedStaleDeviceTranslationFailsAndPrintsTheHistoryAndTheReplayCommand()
    {
        CliRegistries registries = CliRegistries.CreateDefault();
        var oracle = (OracleStressWorkload)registries.Stress.All.Single(w => w.Name == OracleStressWorkload.ScenarioName);
        oracle.PlantStaleBug = true;
        CliHost.Outcome r = await CliHost.RunAsync(registries, "stress", "--seconds", "4", "--threads", "3", "--ram", "64M", "--seed", "9");
        Assert.True(r.ExitCode == ExitCodes.Failed, r.Out + r.Err);
        Assert.Contains(r.OutLines, l => l.StartsWith("VIOLATION: ", StringComparison.Ordinal));
        Assert.Contains("the oracle's stores of that page at the time:", r.Out, StringComparison.Ordinal);
        Assert.Contains("replay: hetmem stress --seed 9 --seconds 4 --threads 3 --ram 64M --filter oracle", r.OutLines);
        Assert.DoesNotContain("violations: 0", r.OutLines);
    }

    [Fact]
    public async Task AFailRateInjectsAllocationFailuresThatAreCountedButAreNoViolations()
    {
        CliHost.Outcome r = await CliHost.RunAsync(CliRegistries.CreateDefault(), "stress", "--seconds", "1", "--threads", "2",
            "--ram", "64M", "--seed", "5", "--fail-rate", "0.01", "--json");
        using JsonDocument doc = JsonDocument.Parse(r.Out);
        JsonElement root = doc.RootElement;
        string report = root.TryGetProperty("violation_report", out JsonElement vr) ? vr.GetString()! : "";
        Assert.True(root.GetProperty("injected_failures").GetInt64() > 0, r.Out);
        Assert.True(root.GetProperty("violations").GetInt64() == 0, report);
        Assert.True(root.GetProperty("leaked_frames").GetInt64() == 0, r.Out);
        Assert.True(r.ExitCode == 0, r.Err + r.Out);
    }

    [Theory]
    [InlineData("--fail-rate", "1.5")]
    [InlineData("--seconds", "0")]
    public async Task OutOfRangeStressOptionsAreUsageErrors(string option, string value)
    {
        CliHost.Outcome r = await CliHost.RunAsync(CliRegistries.CreateDefault(), "stress", option, value);
        Assert.Equal(ExitCodes.Usage, r.ExitCode);
    }
}
