using System.Diagnostics;
using System.Text.Json;
using Hetmem.Diagnostics;

namespace Hetmem.Tests.Diagnostics;

public class PerfettoExporterTests
{
    // Exporter tests build snapshots by hand, so they need no process-wide state.
    private static TraceSnapshot Sample()
    {
        const long Epoch = 1_000_000;
        long tps = Stopwatch.Frequency;
        var tracks = new List<TraceTrackInfo> { new(1, "cpu0", "hetmem"), new(2, "dmirror0", "devices") };
        var events = new List<TraceEvent>
        {
            new(TraceEventKind.Complete, TraceCategory.CpuFault, 1, "anon", Epoch + tps / 1000, tps / 1_000_000 * 3,
                TraceArg.Address(0x7f00_0000_1000), TraceArg.Pages(1), 0),
            new(TraceEventKind.Instant, TraceCategory.Invalidate, 2, "unmap", Epoch + tps / 500, 0, default, default, 0),
            new(TraceEventKind.Counter, TraceCategory.Memory, 1, "resident_pages", Epoch + tps / 400, 0, new TraceArg("ram", 0), default, 42),
        };
        return new TraceSnapshot(events, tracks, dropped: 5, Epoch, tps);
    }

    private static JsonDocument Export(TraceSnapshot s)
    {
        using var ms = new MemoryStream();
        PerfettoExporter.Write(ms, s);
        return JsonDocument.Parse(ms.ToArray());
    }

    [Fact]
    public void TheOutputIsATraceEventsObjectWithProcessAndThreadNames()
    {
        using JsonDocument doc = Export(Sample());
        JsonElement[] ev = [.. doc.RootElement.GetProperty("traceEvents").EnumerateArray()];
        Assert.Contains(ev, e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("name").GetString() == "process_name"
            && e.GetProperty("args").GetProperty("name").GetString() == "devices");
        Assert.Contains(ev, e => e.GetProperty("ph").GetString() == "M" && e.GetProperty("name").GetString() == "thread_name"
            && e.GetProperty("tid").GetInt32() == 2 && e.GetProperty("args").GetProperty("name").GetString() == "dmirror0");
        Assert.Equal(5, doc.RootElement.GetProperty("otherData").GetProperty("dropped_events").GetInt64());
    }

    [Fact]
    public void ACompleteSpanHasItsTimesInMicrosecondsSinceTheEpoch()
    {
        using JsonDocument doc = Export(Sample());
        JsonElement x = doc.RootElement.GetProperty("traceEvents").EnumerateArray().Single(e => e.GetProperty("ph").GetString() == "X");
        Assert.Equal("anon", x.GetProperty("name").GetString());
        Assert.Equal("cpu_fault", x.GetProperty("cat").GetString());
        Assert.Equal(1000.0, x.GetProperty("ts").GetDouble(), 3);
        Assert.Equal(3.0, x.GetProperty("dur").GetDouble(), 1);
        Assert.Equal("0x7f0000001000", x.GetProperty("args").GetProperty("address").GetString());
        Assert.Equal(1, x.GetProperty("args").GetProperty("pages").GetInt64());
    }

    [Fact]
    public void TracksOfDifferentProcessGroupsGetDifferentPids()
    {
        using JsonDocument doc = Export(Sample());
        JsonElement[] ev = [.. doc.RootElement.GetProperty("traceEvents").EnumerateArray().Where(e => e.GetProperty("ph").GetString() != "M")];
        int cpuPid = ev.Single(e => e.GetProperty("name").GetString() == "anon").GetProperty("pid").GetInt32();
        int devPid = ev.Single(e => e.GetProperty("name").GetString() == "unmap").GetProperty("pid").GetInt32();
        Assert.NotEqual(cpuPid, devPid);
    }

    [Fact]
    public void ACounterSampleIsNamedByCounterWithTheSeriesAsItsArgument()
    {
        using JsonDocument doc = Export(Sample());
        JsonElement c = doc.RootElement.GetProperty("traceEvents").EnumerateArray().Single(e => e.GetProperty("ph").GetString() == "C");
        Assert.Equal("resident_pages", c.GetProperty("name").GetString());
        Assert.Equal(42, c.GetProperty("args").GetProperty("ram").GetDouble());
    }

    [Fact]
    public void AnInstantEventHasThreadScope()
    {
        using JsonDocument doc = Export(Sample());
        JsonElement i = doc.RootElement.GetProperty("traceEvents").EnumerateArray().Single(e => e.GetProperty("ph").GetString() == "i");
        Assert.Equal("t", i.GetProperty("s").GetString());
        Assert.Equal("invalidate", i.GetProperty("cat").GetString());
    }

    [Fact]
    public void AnEmptySnapshotExportsAnEmptyButValidTrace()
    {
        using JsonDocument doc = Export(new TraceSnapshot([], [], 0, 0, Stopwatch.Frequency));
        Assert.Equal(0, doc.RootElement.GetProperty("traceEvents").GetArrayLength());
    }
}
