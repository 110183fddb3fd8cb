using System.Text.Json;
using Hetmem.Diagnostics;

namespace Hetmem.Tests.Diagnostics;

/// <summary>The examples of docs/diagnostics.md, kept compiling and passing.</summary>
[Collection(GlobalDiagnosticsCollection.Name)]
public sealed class DocExamplesTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("hetmem-doc-").FullName;

    public void Dispose()
    {
        TraceLog.Stop();
        TraceLog.Clear();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public void InstrumentingAFaultPathCostsNothingWhileRecordingIsOff()
    {
        TraceLog.SetThreadTrack("cpu0");
        long allocated = AllocationMeter.LeastAllocated(() =>
        {
            using (TraceLog.Span(TraceCategory.CpuFault, "anon", TraceArg.Address(0x7f00_0000_1000)))
            {
                Counters.Inc(Counter.PgFault);
                Counters.Inc(Counter.AnonFault);
            }
            TraceLog.Counter("resident_pages", "ram", 1);
        });
        Assert.Equal(0, allocated);
    }

    [Fact]
    public void ADevicesWorkIsExportedOnItsOwnTrack()
    {
        string path = Path.Combine(_dir, "trace.json");
        TraceLog.Start();
        TraceTrack gpu = TraceLog.RegisterTrack("gpu0", "devices");
        using (TraceLog.Span(gpu, TraceCategory.DeviceFault, "replayable", TraceArg.Pages(16)))
        {
        }
        TraceLog.Stop();
        int events = PerfettoExporter.Write(path);
        Assert.Equal(1, events);
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllBytes(path));
        Assert.Contains(doc.RootElement.GetProperty("traceEvents").EnumerateArray(),
            e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("args").GetProperty("name").GetString() == "gpu0");
    }

    [Fact]
    public void InvariantsCostNothingWhenTheyHold()
    {
        ulong pfn = 0x40001;
        int mapCount = 1;
        Invariants.Assert(mapCount >= 0, $"frame 0x{pfn:x} mapped {mapCount} times");
        if (Invariants.Enabled)
        {
            Invariants.Check(RecountFrames() == UsedFrames, "frame count drifted");
        }

        static int RecountFrames() => 3;
    }

    private static int UsedFrames => 3;

    [Fact]
    public void TheLockValidatorAcceptsTheOrderAndRejectsTheInversion()
    {
        bool was = OrderedLock.ValidationEnabled;
        OrderedLock.ValidationEnabled = true;
        try
        {
            var mmap = new OrderedLock(LockClass.MmapLock);
            var pt = new OrderedLock(LockClass.PageTable);
            using (mmap.EnterScope())
            using (pt.EnterScope())
            {
                OrderedLock.AssertHeld(LockClass.PageTable);
            }
            using (pt.EnterScope())
            {
                Assert.Throws<LockOrderViolationException>(mmap.Enter);
            }
        }
        finally
        {
            OrderedLock.ValidationEnabled = was;
        }
    }

    [Fact]
    public void ATimelineSamplesCountersAndGaugesForThePlot()
    {
        long used = 5;
        using var timeline = new Timeline(TimeSpan.FromMilliseconds(10));
        timeline.AddDefaultCounters();
        timeline.AddGauge("ram", "resident pages", () => Interlocked.Read(ref used));
        timeline.Start();
        Interlocked.Exchange(ref used, 9);
        timeline.Stop();
        Assert.Equal(9, timeline.Series.Single(s => s.Name == "ram").Values[^1]);
        Assert.True(timeline.Times.Count >= 2);
    }
}
