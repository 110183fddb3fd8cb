using Hetmem.Diagnostics;

namespace Hetmem.Tests.Diagnostics;

[Collection(GlobalDiagnosticsCollection.Name)]
public sealed class TraceLogTests : IDisposable
{
    public TraceLogTests()
    {
        TraceLog.Stop();
        TraceLog.Clear();
    }

    public void Dispose()
    {
        TraceLog.Stop();
        TraceLog.Clear();
    }

    private static List<TraceEvent> Named(string name) => [.. TraceLog.Snapshot().Events.Where(e => e.Name == name)];

    [Fact]
    public void RecordingIsOffByDefaultAndRecordsNothing()
    {
        Assert.False(TraceLog.Enabled);
        using (TraceLog.Span(TraceCategory.CpuFault, "off-span"))
        {
        }
        TraceLog.Instant(TraceCategory.Invalidate, "off-instant");
        TraceLog.Counter("off-counter", "ram", 1);
        Assert.DoesNotContain(TraceLog.Snapshot().Events, e => e.Name.StartsWith("off-", StringComparison.Ordinal));
    }

    [Fact]
    public void ADisabledSpanInstantAndCounterAllocateNothing()
    {
        static void Hot(int i)
        {
            using TraceSpan s = TraceLog.Span(TraceCategory.CpuFault, "anon", TraceArg.Address((ulong)i << 12), TraceArg.Pages(1));
            TraceLog.Instant(TraceCategory.Invalidate, "unmap");
            TraceLog.Counter("resident_pages", "ram", i);
        }
        Assert.Equal(0, AllocationMeter.LeastAllocated(() =>
        {
            for (int i = 0; i < 10_000; i++)
            {
                Hot(i);
            }
        }));
    }

    [Fact]
    public void ADisabledSpanTokenDoesNotRecord()
    {
        TraceSpan s = TraceLog.Span(TraceCategory.CpuFault, "x");
        Assert.False(s.IsRecording);
        s.Dispose();
    }

    [Fact]
    public void SpansInstantsAndCountersAreRecordedOnTheCallingThreadsTrack()
    {
        TraceLog.Start();
        TraceTrack cpu = TraceLog.SetThreadTrack("cpu0");
        using (TraceSpan s = TraceLog.Span(TraceCategory.CpuFault, "t1-fault", TraceArg.Address(0x1000)))
        {
            Assert.True(s.IsRecording);
            Thread.Sleep(1);
        }
        TraceLog.Instant(TraceCategory.Invalidate, "t1-instant");
        TraceLog.Counter("t1-counter", "ram", 7);
        TraceLog.Stop();

        TraceEvent span = Assert.Single(Named("t1-fault"));
        Assert.Equal(TraceEventKind.Complete, span.Kind);
        Assert.Equal(TraceCategory.CpuFault, span.Category);
        Assert.Equal(cpu.Id, span.Track);
        Assert.True(span.Duration > 0);
        Assert.Equal("address", span.Arg0.Name);
        Assert.Equal(0x1000, span.Arg0.Value);
        Assert.True(span.Arg0.Hex);
        Assert.Equal(TraceEventKind.Instant, Assert.Single(Named("t1-instant")).Kind);
        TraceEvent counter = Assert.Single(Named("t1-counter"));
        Assert.Equal(TraceEventKind.Counter, counter.Kind);
        Assert.Equal("ram", counter.Arg0.Name);
        Assert.Equal(7, counter.Value);
        Assert.Contains(TraceLog.Snapshot().Tracks, t => t.Id == cpu.Id && t.Name == "cpu0");
    }

    [Fact]
    public void ADeviceTrackKeepsItsEventsTogetherWhicheverThreadRecordsThem()
    {
        TraceLog.Start();
        TraceTrack gpu = TraceLog.RegisterTrack("gpu0", "devices");
        var threads = Enumerable.Range(0, 3).Select(i => new Thread(() =>
        {
            using (TraceLog.Span(gpu, TraceCategory.DeviceFault, "gpu-fault"))
            {
            }
            TraceLog.Instant(gpu, TraceCategory.Migrate, "gpu-migrate");
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        TraceLog.Stop();
        Assert.Equal(3, Named("gpu-fault").Count);
        Assert.All(Named("gpu-fault").Concat(Named("gpu-migrate")), e => Assert.Equal(gpu.Id, e.Track));
        Assert.Equal("gpu0", gpu.Name);
        Assert.Equal("devices", gpu.Process);
        Assert.Equal(gpu, TraceLog.RegisterTrack("gpu0", "devices"));
    }

    [Fact]
    public void EventsBeyondTheCapacityAreDroppedAndCounted()
    {
        TraceLog.Start(capacity: 1);
        for (int i = 0; i < TraceLog.ChunkSize + 10; i++)
        {
            TraceLog.Instant(TraceCategory.Other, "cap");
        }
        TraceLog.Stop();
        Assert.Equal(TraceLog.ChunkSize, Named("cap").Count);
        Assert.Equal(10, TraceLog.DroppedEvents);
        Assert.Equal(10, TraceLog.Snapshot().Dropped);
    }

    [Fact]
    public void StartingANewSessionForgetsEarlierEvents()
    {
        TraceLog.Start();
        TraceLog.Instant(TraceCategory.Other, "first-session");
        TraceLog.Start();
        TraceLog.Instant(TraceCategory.Other, "second-session");
        TraceLog.Stop();
        Assert.Empty(Named("first-session"));
        Assert.Single(Named("second-session"));
    }

    [Fact]
    public void StoppingKeepsTheEventsAndAnOpenSpanEndingAfterStopIsNotRecorded()
    {
        TraceLog.Start();
        TraceSpan open = TraceLog.Span(TraceCategory.Hmm, "open-at-stop");
        TraceLog.Instant(TraceCategory.Other, "kept");
        TraceLog.Stop();
        open.Dispose();
        Assert.Single(Named("kept"));
        Assert.Empty(Named("open-at-stop"));
    }

    [Fact]
    public void ASnapshotTakenWhileThreadsRecordSeesWholeEventsInTimeOrder()
    {
        TraceLog.Start(capacity: 64 * 1024);
        using var stop = new ManualResetEventSlim();
        using var started = new CountdownEvent(2);
        var writers = Enumerable.Range(0, 2).Select(i => new Thread(() =>
        {
            TraceLog.SetThreadTrack($"writer{i}");
            bool first = true;
            while (!stop.IsSet)
            {
                using (TraceLog.Span(TraceCategory.Memory, "concurrent", TraceArg.Pages(i)))
                {
                }
                if (first)
                {
                    started.Signal();
                    first = false;
                }
            }
        })).ToList();
        writers.ForEach(t => t.Start());
        Assert.True(started.Wait(TimeSpan.FromSeconds(30)), "the writers did not start");
        for (int k = 0; k < 10; k++)
        {
            TraceSnapshot snap = TraceLog.Snapshot();
            for (int i = 0; i < snap.Events.Count; i++)
            {
                Assert.True(snap.Events[i].Name is not null, "an event was seen half-written");
                Assert.True(i == 0 || snap.Events[i - 1].Timestamp <= snap.Events[i].Timestamp, "events are not in time order");
            }
        }
        stop.Set();
        writers.ForEach(t => t.Join());
        TraceLog.Stop();
        Assert.NotEmpty(Named("concurrent"));
    }

    [Fact]
    public void CompleteRecordsASpanMeasuredByTheCaller()
    {
        TraceLog.Start();
        long t0 = TraceLog.Timestamp();
        long t1 = t0 + 1000;
        TraceLog.Complete(TraceTrack.CurrentThread, TraceCategory.Migrate, "measured", t0, t1, TraceArg.Pages(512));
        TraceLog.Stop();
        TraceEvent e = Assert.Single(Named("measured"));
        Assert.Equal(t0, e.Timestamp);
        Assert.Equal(1000, e.Duration);
    }

    [Fact]
    public void EnumNamesAreCachedAndDoNotAllocate()
    {
        Assert.Equal("InvalidateRangeStart", TraceNames.Of(Counter.InvalidateRangeStart));
        Assert.Equal(0, AllocationMeter.LeastAllocated(() => TraceNames.Of(Counter.MigrateToRam)));
        Assert.Same(TraceNames.Of(Counter.MigrateToRam), TraceNames.Of(Counter.MigrateToRam));
        Assert.Equal("cpu_fault", TraceNames.Of(TraceCategory.CpuFault));
    }
}
