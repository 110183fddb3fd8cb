using Hetmem.Diagnostics;

namespace Hetmem.Tests.Diagnostics;

[Collection(GlobalDiagnosticsCollection.Name)]
public class TimelineTests
{
    [Fact]
    public void CountersAreSampledAsEventsSinceTheTimelineStarted()
    {
        using var tl = new Timeline(TimeSpan.FromSeconds(10)); // only the explicit samples
        Counters.Add(Counter.ThpSplitPmd, 5);
        TimelineSeries s = tl.AddCounter(Counter.ThpSplitPmd, "thp");
        tl.Start();
        Counters.Add(Counter.ThpSplitPmd, 3);
        tl.Sample();
        tl.Stop();
        Assert.Equal(3, tl.Times.Count);
        Assert.Equal(0, s.Values[0]);
        Assert.True(s.Values[1] >= 3); // other tests may bump the process-wide counter too
        Assert.Equal("ThpSplitPmd", s.Name);
        Assert.Equal(TimelineSeriesKind.Counter, s.Kind);
    }

    [Fact]
    public void GaugesAreSampledByTheBackgroundThreadUntilStopped()
    {
        using var tl = new Timeline(TimeSpan.FromMilliseconds(2));
        int reads = 0;
        TimelineSeries g = tl.AddGauge("ram", "resident pages", () => Interlocked.Increment(ref reads));
        tl.Start();
        Assert.True(tl.IsRunning);
        SpinWait.SpinUntil(() => Volatile.Read(ref reads) >= 5, TimeSpan.FromSeconds(10));
        tl.Stop();
        Assert.False(tl.IsRunning);
        int n = tl.Times.Count;
        Assert.True(n >= 5, $"{n} samples");
        Assert.Equal(n, g.Values.Count);
        Assert.True(tl.Times.Zip(tl.Times.Skip(1)).All(p => p.First <= p.Second));
        Thread.Sleep(10);
        Assert.Equal(n, tl.Times.Count);
    }

    [Fact]
    public void ASeriesAddedLateIsPaddedToOneValuePerSample()
    {
        using var tl = new Timeline(TimeSpan.FromSeconds(10));
        tl.AddGauge("a", "g", () => 1);
        tl.Start();
        tl.Sample();
        TimelineSeries late = tl.AddGauge("b", "g", () => 2);
        tl.Stop();
        Assert.Equal(tl.Times.Count, late.Values.Count);
    }

    [Fact]
    public void TheSameSeriesCannotBeAddedTwice()
    {
        using var tl = new Timeline(TimeSpan.FromSeconds(1));
        tl.AddGauge("ram", "resident pages", () => 0);
        Assert.Throws<ArgumentException>(() => tl.AddGauge("ram", "resident pages", () => 0));
    }

    [Fact]
    public void TheDefaultCountersCoverFaultsInvalidationsAndMigrations()
    {
        using var tl = new Timeline(TimeSpan.FromSeconds(1));
        tl.AddDefaultCounters();
        Assert.Equal(["faults", "invalidations", "migrations"], tl.Series.Select(s => s.Group).Distinct());
    }

    [Fact]
    public void SamplesBecomeTraceCountersWhileTheTraceRecords()
    {
        TraceLog.Start();
        try
        {
            using var tl = new Timeline(TimeSpan.FromSeconds(10));
            tl.AddGauge("dax", "resident pages", () => 12);
            tl.Sample();
        }
        finally
        {
            TraceLog.Stop();
        }
        TraceEvent e = TraceLog.Snapshot().Events.Single(x => x.Kind == TraceEventKind.Counter && x.Name == "resident_pages" && x.Arg0.Name == "dax");
        Assert.Equal(12, e.Value);
        TraceLog.Clear();
    }
}
