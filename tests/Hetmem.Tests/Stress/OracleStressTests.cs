using Hetmem.Cli.Stress;
using Hetmem.Diagnostics;
using Hetmem.Physical;
using Hetmem.Tests.Diagnostics;
using Hetmem.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Hetmem.Tests.Stress;

/// <summary>
/// The oracle of <c>hetmem stress</c>: its reference model accepts exactly the values that were current at some
/// instant of an observation, its generator is a pure function of the seed, a real run is clean, and a device that
/// keeps a translation past its invalidation is caught with the command that replays the run.
/// </summary>
[Collection(GlobalDiagnosticsCollection.Name)]
public class OracleStressTests(ITestOutputHelper output)
{
    private static readonly StressLayout s_layout = new(24, 32, 6);

    [Fact]
    public void AReadThatReturnsAValueOverwrittenBeforeItStartedIsAViolation()
    {
        var o = new StressOracle(4);
        ulong v1 = StressOracle.MakeValue(1, 0, 1), v2 = StressOracle.MakeValue(1, 0, 2);
        long s1 = o.Begin(1, v1, 0, 0);
        o.Complete(1, s1, v1, o.Tick(), StoreState.Definite);
        long s2 = o.Begin(1, v2, 0, 1);
        o.Complete(1, s2, v2, o.Tick(), StoreState.Definite);
        long rs = o.Tick();
        long re = o.Tick();

        Assert.True(o.CheckRead(1, v2, rs, re, 0, 2, "current value"));
        Assert.False(o.CheckRead(1, v1, rs, re, 0, 3, "stale value"));
        Assert.Equal(1, o.ViolationCount);
        OracleViolation v = Assert.Single(o.Violations);
        Assert.Equal(v1, v.Observed);
        Assert.Contains(StressOracle.Format(v2), v.History, StringComparison.Ordinal);
    }

    [Fact]
    public void AReadOverlappingTheOverwriteMayReturnEitherValue()
    {
        var o = new StressOracle(2);
        ulong v1 = StressOracle.MakeValue(0, 0, 1), v2 = StressOracle.MakeValue(0, 1, 1);
        long s1 = o.Begin(0, v1, 0, 0);
        o.Complete(0, s1, v1, o.Tick(), StoreState.Definite);
        long rs = o.Tick();
        long s2 = o.Begin(0, v2, 1, 0);
        long re = o.Tick();
        Assert.True(o.CheckRead(0, v1, rs, re, 2, 0, "old, concurrent with the store"));
        Assert.True(o.CheckRead(0, v2, rs, re, 2, 1, "new, store still pending"));
        o.Complete(0, s2, v2, o.Tick(), StoreState.Definite);
        Assert.True(o.CheckRead(0, v2, rs, re, 2, 2, "new, store completed"));
        Assert.Equal(0, o.ViolationCount);
    }

    [Fact]
    public void AFailedStoreIsAcceptedButNeverCountsAsAnOverwrite()
    {
        var o = new StressOracle(1);
        ulong v = StressOracle.MakeValue(0, 0, 1);
        long s = o.Begin(0, v, 0, 0);
        o.Complete(0, s, v, o.Tick(), StoreState.Maybe);
        long rs = o.Tick();
        Assert.True(o.CheckRead(0, 0, rs, o.Tick(), 1, 0, "initial zero: the failed store may not have happened"));
        Assert.True(o.CheckRead(0, v, rs, o.Tick(), 1, 1, "or it may have"));
        Assert.Equal(0, o.ViolationCount);
    }

    [Fact]
    public void AValueNoStoreOfThisPageEverWroteIsAViolationEvenAfterTheHistoryWasPruned()
    {
        var o = new StressOracle(2);
        for (uint i = 1; i <= StressOracle.Depth * 3; i++)
        {
            ulong v = StressOracle.MakeValue(0, 0, i);
            long s = o.Begin(0, v, 0, (int)i);
            o.Complete(0, s, v, o.Tick(), StoreState.Definite);
        }
        long rs = o.Tick();
        Assert.False(o.CheckRead(0, StressOracle.MakeValue(1, 0, 1), rs, o.Tick(), 1, 0, "another page's value"));
        Assert.False(o.CheckRead(0, StressOracle.MakeValue(0, 0, 1), rs, o.Tick(), 1, 1, "a pruned, long overwritten value"));
        Assert.True(o.CheckRead(0, StressOracle.MakeValue(0, 0, StressOracle.Depth * 3), rs, o.Tick(), 1, 2, "the last value"));
        Assert.Equal(2, o.ViolationCount);
    }

    [Fact]
    public void APendingMoveAcceptsAnyValueAndItsCandidatesReplaceIt()
    {
        var o = new StressOracle(2);
        ulong moved = StressOracle.MakeValue(1, 0, 7);
        long s = o.Begin(0, StressOracle.Moving, 0, 0);
        long rs = o.Tick();
        Assert.True(o.CheckRead(0, moved, rs, o.Tick(), 1, 0, "during the move"));
        o.CompleteMove(0, s, o.Tick(), [moved], 0, 0);
        long after = o.Tick();
        Assert.True(o.CheckRead(0, moved, after, o.Tick(), 1, 1, "the moved value"));
        Assert.False(o.CheckRead(0, 0, after, o.Tick(), 1, 2, "the value before the move"));
    }

    [Fact]
    public void TheSameSeedGivesEachWorkerTheSameOperationSequence()
    {
        int seed = Seed.Get(output, nameof(TheSameSeedGivesEachWorkerTheSameOperationSequence));
        for (int worker = 0; worker < 3; worker++)
        {
            var a = new StressOpGenerator(seed, worker, s_layout);
            var b = new StressOpGenerator(seed, worker, s_layout);
            var sa = Enumerable.Range(0, 20000).Select(_ => a.Next()).ToList();
            var sb = Enumerable.Range(0, 20000).Select(_ => b.Next()).ToList();
            Assert.Equal(sa, sb);
            Assert.Equal(Enum.GetValues<StressOpKind>().Length, sa.Select(op => op.Kind).Distinct().Count());
        }
        var other = new StressOpGenerator(seed + 1, 0, s_layout);
        var first = new StressOpGenerator(seed, 0, s_layout);
        Assert.NotEqual(Enumerable.Range(0, 50).Select(_ => first.Next()), Enumerable.Range(0, 50).Select(_ => other.Next()));
    }

    [Fact]
    public void ASingleThreadRunWithTheSameSeedExecutesTheSameOperations()
    {
        int seed = Seed.Get(output, nameof(ASingleThreadRunWithTheSameSeedExecutesTheSameOperations));
        List<StressOp> Once()
        {
            using var memory = new PhysicalMemory(64UL << 20);
            OracleStressResult r = OracleStress.Run(memory, new OracleStressOptions
            {
                Seed = seed, Threads = 1, MaxOperations = 400, Duration = TimeSpan.FromMinutes(5), RecordWorker0 = true,
            });
            Assert.True(r.Violations == 0, r.Report);
            Assert.Equal(0, r.LeakedFrames);
            Assert.Equal(400, r.Operations);
            return r.Worker0Ops!;
        }
        List<StressOp> a = Once();
        List<StressOp> b = Once();
        Assert.Equal(400, a.Count);
        Assert.Equal(a, b);
    }

    [Fact]
    public void AFewSecondsOfConcurrentStressFindNoViolationAndLeakNothing()
    {
        int seed = Seed.Get(output, nameof(AFewSecondsOfConcurrentStressFindNoViolationAndLeakNothing));
        using var memory = new PhysicalMemory(64UL << 20);
        bool inv = Invariants.Enabled;
        Invariants.Enabled = true;
        OracleStressResult r;
        try
        {
            r = OracleStress.Run(memory, new OracleStressOptions
            {
                Seed = seed, Threads = 3, Duration = TimeSpan.FromSeconds(3), ReplayCommand = $"HETMEM_SEED={seed}",
            });
        }
        finally
        {
            Invariants.Enabled = inv;
        }
        output.WriteLine($"{r.Operations} operations, {r.DeviceOperations} device, {r.Checks} checks, {r.Invalidations} invalidations");
        Assert.True(r.Violations == 0, r.Report);
        Assert.True(r.Errors.Count == 0, string.Join("\n", r.Errors));
        Assert.Equal(0, r.LeakedFrames);
        Assert.Equal(0, r.NotifiersLeft);
        Assert.True(r.Operations > 0 && r.DeviceOperations > 0 && r.Checks > 0 && r.Invalidations > 0);
    }

    [Fact]
    public void ADeviceThatKeepsItsTranslationPastInvalidationIsCaughtAndTheReplayCommandIsPrinted()
    {
        int seed = Seed.Get(output, nameof(ADeviceThatKeepsItsTranslationPastInvalidationIsCaughtAndTheReplayCommandIsPrinted));
        using var memory = new PhysicalMemory(64UL << 20);
        const string replay = "hetmem stress --seed 1 --seconds 5 --threads 3 --ram 64M --filter oracle";
        OracleStressResult r = OracleStress.Run(memory, new OracleStressOptions
        {
            Seed = seed, Threads = 3, Duration = TimeSpan.FromSeconds(5), PlantStaleBug = true, ReplayCommand = replay,
        });
        output.WriteLine(r.Report);
        Assert.True(r.Violations > 0, $"the planted stale translation went unnoticed in {r.Operations} operations");
        Assert.Contains("VIOLATION: probe device", r.Report, StringComparison.Ordinal);
        Assert.Contains("replay: " + replay, r.Report, StringComparison.Ordinal);
        Assert.Contains("operations around it", r.Report, StringComparison.Ordinal);
    }
}
