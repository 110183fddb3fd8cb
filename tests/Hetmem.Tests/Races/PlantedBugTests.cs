using Hetmem.Diagnostics.Scheduling;
using Xunit.Abstractions;

namespace Hetmem.Tests.Races;

/// <summary>
/// The exploration must find a real race: <see cref="RaceMirror"/> with <c>skipReadRetry</c> programs its device page
/// table under the update lock without mmu_interval_read_retry — the classic HMM driver bug, planted only in this
/// test build. The same scenarios with the correct driver loop pass (<see cref="InvalidateVersusFaultRaceTests"/>).
/// </summary>
[Collection("Races")]
public sealed class PlantedBugTests(ITestOutputHelper output)
{
    private readonly ITestOutputHelper _output = output;

    [Theory]
    [InlineData(InvalidateVersusFaultRaceTests.CpuSide.Munmap)]
    [InlineData(InvalidateVersusFaultRaceTests.CpuSide.MprotectReadOnly)]
    public void SystematicExplorationFindsTheMissingReadRetryAndItsScheduleReplaysToTheSameViolation(InvalidateVersusFaultRaceTests.CpuSide side)
    {
        Func<RaceScenario> buggy = InvalidateVersusFaultRaceTests.Scenario(side, buggyDevice: true);
        ExplorationReport report = RaceKit.Explore(_output, $"planted bug: no read_retry vs {side}", buggy,
            new BoundedDfsStrategy(InvalidateVersusFaultRaceTests.PreemptionBound, maxExecutions: 5000));
        Assert.True(report.ViolationCount > 0, "the exploration missed the planted bug");
        ExecutionResult found = report.Violations[0];
        Assert.Matches(side == InvalidateVersusFaultRaceTests.CpuSide.Munmap ? "device read PFN .* after Munmap returned|still maps" : "device wrote PFN .* after MprotectReadOnly returned|writable", found.Failure);
        Assert.False(found.Aborted || found.Abandoned);
        RaceKit.Log(_output, $"planted bug vs {side}: {report.ViolationCount} of {report.Executions} schedules violate; first: {found.Schedule}");
        for (int i = 0; i < 3; i++)
        {
            ExecutionResult again = RaceExplorer.Replay(buggy, found.Schedule);
            Assert.Equal(found.Failure, again.Failure);
            Assert.Equal(found.Schedule, again.Schedule);
            Assert.Equal(found.Trace, again.Trace);
        }
        // The schedule is a property of the bug, not of the run: the correct driver loop survives it.
        ExecutionResult correct = RaceExplorer.Replay(InvalidateVersusFaultRaceTests.Scenario(side, buggyDevice: false), found.Schedule, lenient: true);
        Assert.Null(correct.Failure);
    }

    [Fact]
    public void SeededPctAlsoFindsThePlantedBug()
    {
        int seed = RaceKit.Seed(_output, nameof(SeededPctAlsoFindsThePlantedBug), 7);
        ExplorationReport report = RaceKit.Explore(_output, "planted bug (pct)",
            InvalidateVersusFaultRaceTests.Scenario(InvalidateVersusFaultRaceTests.CpuSide.Munmap, buggyDevice: true),
            new PctStrategy(seed, executions: 300, depth: 3));
        Assert.True(report.ViolationCount > 0, $"pct with seed {seed} missed the planted bug in 300 executions");
    }
}
