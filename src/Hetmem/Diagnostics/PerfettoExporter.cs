using System.Globalization;
using System.Text.Json;

namespace Hetmem.Diagnostics;

/// <summary>
/// Writes trace events as Chrome trace-event JSON (<c>{"traceEvents":[…]}</c>), the format ui.perfetto.dev and
/// chrome://tracing open directly: one process per track group, one named thread per track, spans as phase
/// <c>X</c>, instants as <c>i</c>, counters as <c>C</c>. Timestamps are microseconds since the session start.
/// </summary>
/// <remarks>Locking: none of its own; <see cref="TraceLog.Snapshot"/> may run while other threads record.</remarks>
public static class PerfettoExporter
{
    /// <summary>Writes the events recorded so far by <see cref="TraceLog"/> to <paramref name="stream"/>.</summary>
    /// <param name="stream">A writable stream; left open.</param>
    /// <returns>The number of trace events written, excluding metadata.</returns>
    public static int Write(Stream stream) => Write(stream, TraceLog.Snapshot());

    /// <summary>Writes the events recorded so far by <see cref="TraceLog"/> to the file <paramref name="path"/> (replacing it).</summary>
    /// <param name="path">The output file.</param>
    /// <returns>The number of trace events written, excluding metadata.</returns>
    /// <exception cref="IOException">When the file cannot be written.</exception>
    public static int Write(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        using FileStream fs = File.Create(path);
        return Write(fs);
    }

    /// <summary>Writes <paramref name="snapshot"/> to <paramref name="stream"/>.</summary>
    /// <param name="stream">A writable stream; left open.</param>
    /// <param name="snapshot">The events and tracks.</param>
    /// <returns>The number of trace events written, excluding metadata.</returns>
    public static int Write(Stream stream, TraceSnapshot snapshot)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(snapshot);
        // Process ids: one per process group, in first-seen order of the tracks (1-based).
        var pids = new Dictionary<string, int>(StringComparer.Ordinal);
        var trackPid = new Dictionary<int, int>();
        foreach (TraceTrackInfo t in snapshot.Tracks)
        {
            if (!pids.TryGetValue(t.Process, out int pid))
            {
                pid = pids.Count + 1;
                pids.Add(t.Process, pid);
            }
            trackPid[t.Id] = pid;
        }
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = false, SkipValidation = false });
        w.WriteStartObject();
        w.WriteString("displayTimeUnit", "ns");
        w.WriteStartArray("traceEvents");
        foreach ((string process, int pid) in pids)
        {
            w.WriteStartObject();
            w.WriteString("name", "process_name");
            w.WriteString("ph", "M");
            w.WriteNumber("pid", pid);
            w.WriteNumber("tid", 0);
            w.WriteStartObject("args");
            w.WriteString("name", process);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        foreach (TraceTrackInfo t in snapshot.Tracks)
        {
            WriteThreadMetadata(w, trackPid[t.Id], t.Id, "thread_name", "name", t.Name);
            w.WriteStartObject();
            w.WriteString("name", "thread_sort_index");
            w.WriteString("ph", "M");
            w.WriteNumber("pid", trackPid[t.Id]);
            w.WriteNumber("tid", t.Id);
            w.WriteStartObject("args");
            w.WriteNumber("sort_index", t.Id);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        int written = 0;
        foreach (TraceEvent e in snapshot.Events)
        {
            int pid = trackPid.TryGetValue(e.Track, out int p) ? p : 1;
            w.WriteStartObject();
            w.WriteString("name", e.Name);
            w.WriteString("cat", TraceNames.Of(e.Category));
            switch (e.Kind)
            {
                case TraceEventKind.Complete:
                    w.WriteString("ph", "X");
                    WriteTime(w, "ts", snapshot.ToMicroseconds(e.Timestamp));
                    WriteTime(w, "dur", snapshot.DurationToMicroseconds(e.Duration));
                    break;
                case TraceEventKind.Instant:
                    w.WriteString("ph", "i");
                    w.WriteString("s", "t");
                    WriteTime(w, "ts", snapshot.ToMicroseconds(e.Timestamp));
                    break;
                default:
                    w.WriteString("ph", "C");
                    WriteTime(w, "ts", snapshot.ToMicroseconds(e.Timestamp));
                    break;
            }
            w.WriteNumber("pid", pid);
            w.WriteNumber("tid", e.Track);
            if (e.Kind == TraceEventKind.Counter)
            {
                w.WriteStartObject("args");
                w.WriteNumber(e.Arg0.Name ?? "value", double.IsFinite(e.Value) ? e.Value : 0);
                w.WriteEndObject();
            }
            else if (e.Arg0.IsPresent || e.Arg1.IsPresent)
            {
                w.WriteStartObject("args");
                WriteArg(w, e.Arg0);
                WriteArg(w, e.Arg1);
                w.WriteEndObject();
            }
            w.WriteEndObject();
            written++;
        }
        w.WriteEndArray();
        w.WriteStartObject("otherData");
        w.WriteString("producer", "hetmem");
        w.WriteNumber("dropped_events", snapshot.Dropped);
        w.WriteEndObject();
        w.WriteEndObject();
        w.Flush();
        return written;
    }

    private static void WriteThreadMetadata(Utf8JsonWriter w, int pid, int tid, string name, string argName, string value)
    {
        w.WriteStartObject();
        w.WriteString("name", name);
        w.WriteString("ph", "M");
        w.WriteNumber("pid", pid);
        w.WriteNumber("tid", tid);
        w.WriteStartObject("args");
        w.WriteString(argName, value);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    // Microseconds with nanosecond resolution.
    private static void WriteTime(Utf8JsonWriter w, string name, double micros) => w.WriteNumber(name, Math.Round(micros, 3));

    private static void WriteArg(Utf8JsonWriter w, TraceArg a)
    {
        if (!a.IsPresent)
        {
            return;
        }
        if (a.Hex)
        {
            w.WriteString(a.Name!, "0x" + ((ulong)a.Value).ToString("x", CultureInfo.InvariantCulture));
        }
        else
        {
            w.WriteNumber(a.Name!, a.Value);
        }
    }
}
