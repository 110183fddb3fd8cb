using Hetmem.Diagnostics.Scheduling;
using Xunit.Abstractions;

namespace Hetmem.Tests.Races;

[Collection("Races")]
public sealed class ControlledSchedulerTests(ITestOutputHelper output)
{
    private static Func<RaceScenario> LostUpdate(Action<int> onResult)
        => () =>
        {
            var box = new int[1];
            void Increment()
            {
                SchedulePoint.Here("load");
                int v = box[0];
                SchedulePoint.Here("store");
                box[0] = v + 1;
            }
            return new RaceScenario
            {
                Check = () =>
                {
                    onResult(box[0]);
                    RaceKit.Require(box[0] == 2, $"lost update: counter is {box[0]}");
                },
            }.Thread("a", Increment).Thread("b", Increment);
        };

    [Fact]
    public void BoundedDepthFirstSearchEnumeratesEveryInterleavingOfTwoThreadsAndFindsTheLostUpdate()
    {
        var results = new List<int>();
        ExplorationReport report = RaceKit.Explore(output, "lost update", LostUpdate(results.Add), new BoundedDfsStrategy(preemptionBound: 2, maxExecutions: 1000));
        Assert.True(report.Exhausted);
        Assert.Equal(report.Executions, report.DistinctSchedules);
        Assert.Contains(1, results);
        Assert.Contains(2, results);
        Assert.True(report.ViolationCount > 0);
        Assert.Contains("lost update", report.Violations[0].Failure);
    }

    [Fact]
    public void AReportedScheduleReplaysToTheSameFailureAndTheSameChoices()
    {
        ExplorationReport report = RaceKit.Explore(output, "lost update", LostUpdate(_ => { }), new BoundedDfsStrategy(2, 1000), new ExplorationOptions { StopOnFirstViolation = true });
        ExecutionResult bad = Assert.Single(report.Violations);
        for (int i = 0; i < 3; i++)
        {
            ExecutionResult again = RaceExplorer.Replay(LostUpdate(_ => { }), bad.Schedule);
            Assert.Equal(bad.Failure, again.Failure);
            Assert.Equal(bad.Schedule, again.Schedule);
            Assert.Equal(bad.Trace, again.Trace);
        }
    }

    [Fact]
    public void WithoutPreemptionsOnlyTheStartOrderVaries()
    {
        ExplorationReport report = RaceKit.Explore(output, "bound 0", LostUpdate(_ => { }), new BoundedDfsStrategy(0, 1000));
        Assert.True(report.Exhausted);
        Assert.Equal(2, report.Executions);
        Assert.Equal(0, report.ViolationCount);
    }

    [Fact]
    public void TwoThreadsTakingTwoInstrumentedLocksInOppositeOrderAreReportedAsADeadlockInsteadOfHanging()
    {
        Func<RaceScenario> factory = () =>
        {
            var l1 = new Lock();
            var l2 = new Lock();
            void Take(Lock first, Lock second)
            {
                SchedulePoint.BeforeAcquire(first, "first");
                lock (first)
                {
                    SchedulePoint.BeforeAcquire(second, "second");
                    lock (second)
                    {
                    }
                }
            }
            return new RaceScenario().Thread("ab", () => Take(l1, l2)).Thread("ba", () => Take(l2, l1));
        };
        ExplorationReport report = RaceKit.Explore(output, "abba", factory, new BoundedDfsStrategy(2, 1000), new ExplorationOptions { StopOnFirstViolation = true });
        ExecutionResult deadlock = Assert.Single(report.Violations);
        Assert.StartsWith("deadlock", deadlock.Failure);
        Assert.False(deadlock.Abandoned);
    }

    [Fact]
    public void AThreadBlockedOnALockThatItsHolderReleasesAfterItsLastPointRunsOnceTheHolderFinishes()
    {
        Func<RaceScenario> factory = () =>
        {
            var l = new Lock();
            int[] entered = [0];
            return new RaceScenario { Check = () => RaceKit.Require(entered[0] == 2, $"{entered[0]} threads entered the lock") }
                .Thread("holder", () =>
                {
                    SchedulePoint.BeforeAcquire(l, "acquire");
                    lock (l)
                    {
                        entered[0]++;
                        SchedulePoint.Here("inside");
                    } // released with no point after it: the thread finishes next
                })
                .Thread("waiter", () =>
                {
                    SchedulePoint.Here("before");
                    SchedulePoint.BeforeAcquire(l, "acquire");
                    lock (l)
                    {
                        entered[0]++;
                    }
                });
        };
        ExplorationReport report = RaceKit.Explore(output, "release at finish", factory, new BoundedDfsStrategy(2, 1000));
        Assert.True(report.Exhausted);
        Assert.True(report.DistinctSchedules >= 3, $"only {report.DistinctSchedules} schedules explored");
        Assert.Equal(0, report.ViolationCount);
    }

    [Fact]
    public void BlockingOnALockWithoutAHookIsReportedAsAnUncontrolledBlockAndTheThreadsStillFinish()
    {
        Func<RaceScenario> factory = () =>
        {
            var l = new Lock();
            return new RaceScenario()
                .Thread("holder", () =>
                {
                    lock (l)
                    {
                        SchedulePoint.Here("inside an uninstrumented lock");
                    }
                })
                .Thread("waiter", () =>
                {
                    SchedulePoint.Here("before");
                    lock (l)
                    {
                    }
                });
        };
        ExplorationReport report = RaceKit.Explore(output, "uncontrolled", factory, new BoundedDfsStrategy(2, 100),
            new ExplorationOptions { StopOnFirstViolation = true, HangTimeout = TimeSpan.FromMilliseconds(300) });
        ExecutionResult stalled = Assert.Single(report.Violations);
        Assert.StartsWith("uncontrolled block: thread waiter", stalled.Failure);
        Assert.False(stalled.Abandoned);
    }

    [Fact]
    public void SeededRandomAndPctStrategiesAreReproducibleFromTheirSeed()
    {
        int seed = RaceKit.Seed(output, nameof(SeededRandomAndPctStrategiesAreReproducibleFromTheirSeed), 1234);
        foreach (Func<ISchedulingStrategy> make in new Func<ISchedulingStrategy>[] { () => new RandomWalkStrategy(seed, 50), () => new PctStrategy(seed, 50, 2) })
        {
            var first = new List<string>();
            var second = new List<string>();
            foreach (List<string> into in new[] { first, second })
            {
                ISchedulingStrategy s = make();
                while (s.BeginExecution())
                {
                    var scenario = LostUpdate(_ => { })();
                    into.Add(ControlledScheduler.Run(scenario.Threads, s, null, 1000, TimeSpan.FromSeconds(10)).Schedule);
                }
            }
            Assert.Equal(first, second);
            Assert.True(first.Distinct().Count() > 1);
        }
    }

    [Fact]
    public void SchedulePointsAndTheMmapLockAllocateNothingWhenNoRunIsActive()
    {
        var l = new Lock();
        var rw = new ReaderWriterLockSlim();
        var mmapLock = new Hetmem.Mm.MmapLock();
        var state = new object();
        for (int round = 0; round < 2; round++)   // the first round warms up (JIT, static delegates)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 1000; i++)
            {
                SchedulePoint.Here("idle");
                SchedulePoint.BeforeAcquire(l, "idle");
                SchedulePoint.BeforeEnterRead(rw, "idle");
                SchedulePoint.BeforeEnterWrite(rw, "idle");
                SchedulePoint.BeforeWait("idle", static o => o is not null, state);
                mmapLock.EnterRead();
                mmapLock.ExitRead();
            }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (round == 1)
            {
                Assert.Equal(0, allocated);
            }
        }
        mmapLock.Dispose();
        rw.Dispose();
    }

    [Fact]
    public void ThreadsOutsideAControlledRunPassSchedulePointsUntouched()
    {
        var box = new int[1];
        SchedulePoint.Here("outside");
        var l = new Lock();
        SchedulePoint.BeforeAcquire(l, "outside");
        lock (l)
        {
            box[0]++;
        }
        Assert.Null(SchedulePoint.s_active);
        Assert.Equal(1, box[0]);
    }
}
