using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace Hetmem.Diagnostics;

/// <summary>
/// An opt-in, process-wide recorder of Chrome trace events: complete spans, instant events and counter samples,
/// each on a named track (a thread such as <c>cpu0</c> or a device such as <c>dmirror0</c>), exported for Perfetto by
/// <see cref="PerfettoExporter"/> (kernel: the ftrace ring buffer with the mm, hmm and migrate tracepoints).
/// </summary>
/// <remarks>
/// <para><b>Cost.</b> Recording is off by default. Off, every recording method costs one volatile bool read
/// (<see cref="Enabled"/>) and allocates nothing; <see cref="Span(TraceCategory, string, TraceArg, TraceArg)"/> returns
/// an empty token whose <c>Dispose</c> is a null check. On, an event is a struct store into a per-thread buffer
/// (no lock, no allocation except one 4096-event chunk every 4096 events).</para>
/// <para><b>Names.</b> Event and argument names are stored by reference: pass literals or cached strings
/// (<see cref="TraceNames.Of{TEnum}(TEnum)"/> for enum values), never interpolated strings on a hot path.</para>
/// <para><b>Locking.</b> <c>s_lock</c> (a leaf, outside the <see cref="LockClass"/> tree because nothing is taken
/// under it) protects the session: the buffer list, the capacity and the epoch. Each buffer is written only by its
/// owner thread and published with <see cref="Volatile"/> writes of its count, paired with the volatile reads in
/// <see cref="Snapshot"/>. Tracks are copy-on-write under <c>s_tracksLock</c> and read lock-free.</para>
/// </remarks>
public static class TraceLog
{
    /// <summary>Default maximum number of events kept per session (about 72 MiB); later events are counted as dropped.</summary>
    public const int DefaultCapacity = 1 << 20;

    /// <summary>Events per buffer chunk.</summary>
    internal const int ChunkSize = 4096;

    private static bool s_enabled;                         // Volatile; written under s_lock, read lock-free
    private static readonly object s_lock = new();
    private static readonly List<TraceBuffer> s_buffers = []; // guarded by s_lock
    private static int s_session;                          // guarded by s_lock for writes; read with Volatile
    private static long s_capacity = DefaultCapacity;      // guarded by s_lock
    private static long s_reserved;                        // Interlocked; events reserved by chunks this session
    private static long s_dropped;                         // Interlocked; events dropped this session
    private static long s_epoch = Stopwatch.GetTimestamp(); // guarded by s_lock

    private static readonly object s_tracksLock = new();
    private static TraceTrackInfo[] s_tracks = [new TraceTrackInfo(0, "(current thread)", "hetmem")]; // copy-on-write under s_tracksLock
    private static readonly Dictionary<(string Process, string Name), int> s_trackIds = []; // guarded by s_tracksLock

    [ThreadStatic] private static int t_track;             // this thread's track id, 0 until first needed
    [ThreadStatic] private static TraceBuffer? t_buffer;   // this thread's buffer of the current session

    /// <summary>True while events are being recorded. One volatile read.</summary>
    public static bool Enabled
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Volatile.Read(ref s_enabled);
    }

    /// <summary>Events dropped in this session because the capacity was reached.</summary>
    public static long DroppedEvents => Interlocked.Read(ref s_dropped);

    /// <summary>
    /// Starts a new recording session: forgets earlier events, sets the time origin to now and turns recording on.
    /// </summary>
    /// <param name="capacity">Maximum number of events kept (rounded up to whole 4096-event chunks).</param>
    /// <exception cref="ArgumentOutOfRangeException">When <paramref name="capacity"/> is not positive.</exception>
    public static void Start(int capacity = DefaultCapacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        lock (s_lock)
        {
            ResetLocked();
            s_capacity = capacity;
            s_epoch = Stopwatch.GetTimestamp();
            Volatile.Write(ref s_enabled, true);
        }
    }

    /// <summary>Stops recording; the recorded events stay available to <see cref="Snapshot"/> and the exporter.</summary>
    public static void Stop()
    {
        lock (s_lock)
        {
            Volatile.Write(ref s_enabled, false);
        }
    }

    /// <summary>Forgets every recorded event (recording stays on or off as it was).</summary>
    public static void Clear()
    {
        lock (s_lock)
        {
            ResetLocked();
        }
    }

    private static void ResetLocked()
    {
        Debug.Assert(Monitor.IsEntered(s_lock));
        s_buffers.Clear();
        Volatile.Write(ref s_session, s_session + 1);
        Interlocked.Exchange(ref s_reserved, 0);
        Interlocked.Exchange(ref s_dropped, 0);
    }

    /// <summary>
    /// Names the calling thread's track (e.g. <c>cpu0</c>, <c>gpu0-fault-worker</c>). Threads that never call this get a
    /// track named after <see cref="Thread.Name"/> or their managed thread id on their first event.
    /// </summary>
    /// <param name="name">The track name.</param>
    /// <param name="process">The group Perfetto shows the track under.</param>
    /// <returns>The track.</returns>
    public static TraceTrack SetThreadTrack(string name, string process = "hetmem")
    {
        TraceTrack track = RegisterTrack(name, process);
        t_track = track.Id;
        return track;
    }

    /// <summary>The calling thread's track (registered on first use).</summary>
    public static TraceTrack ThreadTrack => new(CurrentThreadTrackId());

    /// <summary>
    /// Returns the track named <paramref name="name"/> in <paramref name="process"/>, creating it on first use. Use one
    /// per device (<c>dmirror0</c>, <c>gpu0</c>) and pass it to the recording methods from any thread.
    /// </summary>
    /// <param name="name">The track name.</param>
    /// <param name="process">The group Perfetto shows the track under.</param>
    /// <returns>The track; the same value for the same name and process.</returns>
    public static TraceTrack RegisterTrack(string name, string process = "hetmem")
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentException.ThrowIfNullOrEmpty(process);
        lock (s_tracksLock)
        {
            if (s_trackIds.TryGetValue((process, name), out int id))
            {
                return new TraceTrack(id);
            }
            TraceTrackInfo[] old = s_tracks;
            id = old.Length;
            Volatile.Write(ref s_tracks, [.. old, new TraceTrackInfo(id, name, process)]);
            s_trackIds.Add((process, name), id);
            return new TraceTrack(id);
        }
    }

    internal static string TrackName(int id) => TrackInfo(id).Name;

    internal static string TrackProcess(int id) => TrackInfo(id).Process;

    private static TraceTrackInfo TrackInfo(int id)
    {
        TraceTrackInfo[] tracks = Volatile.Read(ref s_tracks);
        return (uint)id < (uint)tracks.Length ? tracks[id] : tracks[0];
    }

    private static int CurrentThreadTrackId()
    {
        int id = t_track;
        if (id == 0)
        {
            Thread t = Thread.CurrentThread;
            id = RegisterTrack(t.Name is { Length: > 0 } n ? n : $"thread-{t.ManagedThreadId}").Id;
            t_track = id;
        }
        return id;
    }

    /// <summary>The current timestamp in Stopwatch ticks, for <see cref="Complete"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long Timestamp() => Stopwatch.GetTimestamp();

    /// <summary>
    /// Opens a complete span on the calling thread's track; the span ends when the returned token is disposed
    /// (<c>using var _ = TraceLog.Span(...)</c>). Costs one volatile read when recording is off.
    /// </summary>
    /// <param name="category">The category (CPU fault, device fault, invalidation, migration, …).</param>
    /// <param name="name">The span name; a literal or cached string.</param>
    /// <param name="arg0">An optional argument (e.g. <see cref="TraceArg.Address"/>).</param>
    /// <param name="arg1">An optional second argument (e.g. <see cref="TraceArg.Pages"/>).</param>
    /// <returns>The span token; dispose it exactly once.</returns>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TraceSpan Span(TraceCategory category, string name, TraceArg arg0 = default, TraceArg arg1 = default)
    {
        if (!Volatile.Read(ref s_enabled))
        {
            return default;
        }
        return new TraceSpan(default, category, name, Stopwatch.GetTimestamp(), arg0, arg1);
    }

    /// <summary>Opens a complete span on <paramref name="track"/> (a device's track), from any thread.</summary>
    /// <param name="track">The track, from <see cref="RegisterTrack"/>.</param>
    /// <param name="category">The category.</param>
    /// <param name="name">The span name; a literal or cached string.</param>
    /// <param name="arg0">An optional argument.</param>
    /// <param name="arg1">An optional second argument.</param>
    /// <returns>The span token; dispose it exactly once.</returns>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TraceSpan Span(TraceTrack track, TraceCategory category, string name, TraceArg arg0 = default, TraceArg arg1 = default)
    {
        if (!Volatile.Read(ref s_enabled))
        {
            return default;
        }
        return new TraceSpan(track, category, name, Stopwatch.GetTimestamp(), arg0, arg1);
    }

    internal static void EndSpan(TraceTrack track, TraceCategory category, string name, long start, TraceArg arg0, TraceArg arg1)
    {
        long end = Stopwatch.GetTimestamp();
        if (Volatile.Read(ref s_enabled))
        {
            Record(new TraceEvent(TraceEventKind.Complete, category, ResolveTrack(track), name, start, end - start, arg0, arg1, 0));
        }
    }

    /// <summary>Records a complete span whose start and end were measured by the caller (Stopwatch ticks).</summary>
    /// <param name="track">The track; <see cref="TraceTrack.CurrentThread"/> for the calling thread's.</param>
    /// <param name="category">The category.</param>
    /// <param name="name">The span name.</param>
    /// <param name="startTimestamp">Start, from <see cref="Timestamp"/>.</param>
    /// <param name="endTimestamp">End, from <see cref="Timestamp"/>; not before the start.</param>
    /// <param name="arg0">An optional argument.</param>
    /// <param name="arg1">An optional second argument.</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Complete(TraceTrack track, TraceCategory category, string name, long startTimestamp, long endTimestamp,
        TraceArg arg0 = default, TraceArg arg1 = default)
    {
        if (Volatile.Read(ref s_enabled))
        {
            Record(new TraceEvent(TraceEventKind.Complete, category, ResolveTrack(track), name, startTimestamp,
                Math.Max(0, endTimestamp - startTimestamp), arg0, arg1, 0));
        }
    }

    /// <summary>Records an instant event on the calling thread's track.</summary>
    /// <param name="category">The category.</param>
    /// <param name="name">The event name; a literal or cached string.</param>
    /// <param name="arg0">An optional argument.</param>
    /// <param name="arg1">An optional second argument.</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Instant(TraceCategory category, string name, TraceArg arg0 = default, TraceArg arg1 = default)
    {
        if (Volatile.Read(ref s_enabled))
        {
            Record(new TraceEvent(TraceEventKind.Instant, category, ResolveTrack(default), name, Stopwatch.GetTimestamp(), 0, arg0, arg1, 0));
        }
    }

    /// <summary>Records an instant event on <paramref name="track"/>.</summary>
    /// <param name="track">The track.</param>
    /// <param name="category">The category.</param>
    /// <param name="name">The event name; a literal or cached string.</param>
    /// <param name="arg0">An optional argument.</param>
    /// <param name="arg1">An optional second argument.</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Instant(TraceTrack track, TraceCategory category, string name, TraceArg arg0 = default, TraceArg arg1 = default)
    {
        if (Volatile.Read(ref s_enabled))
        {
            Record(new TraceEvent(TraceEventKind.Instant, category, ResolveTrack(track), name, Stopwatch.GetTimestamp(), 0, arg0, arg1, 0));
        }
    }

    /// <summary>
    /// Records a counter sample: series <paramref name="series"/> of counter <paramref name="name"/>
    /// (e.g. <c>Counter("resident_pages", "ram", 1234)</c>, one series per memory kind: <c>ram</c>, <c>dax</c>,
    /// <c>device_private</c>, <c>device_coherent</c>).
    /// </summary>
    /// <param name="name">The counter name.</param>
    /// <param name="series">The series within the counter.</param>
    /// <param name="value">The sampled value.</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Counter(string name, string series, double value)
    {
        if (Volatile.Read(ref s_enabled))
        {
            Record(new TraceEvent(TraceEventKind.Counter, TraceCategory.Memory, ResolveTrack(default), name, Stopwatch.GetTimestamp(), 0,
                new TraceArg(series, 0), default, value));
        }
    }

    /// <summary>Records a counter sample shown under <paramref name="track"/>'s process (e.g. a device's VRAM use).</summary>
    /// <param name="track">The track whose process owns the counter.</param>
    /// <param name="name">The counter name.</param>
    /// <param name="series">The series within the counter.</param>
    /// <param name="value">The sampled value.</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Counter(TraceTrack track, string name, string series, double value)
    {
        if (Volatile.Read(ref s_enabled))
        {
            Record(new TraceEvent(TraceEventKind.Counter, TraceCategory.Memory, ResolveTrack(track), name, Stopwatch.GetTimestamp(), 0,
                new TraceArg(series, 0), default, value));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int ResolveTrack(TraceTrack track) => track.Id != 0 ? track.Id : CurrentThreadTrackId();

    private static void Record(in TraceEvent e)
    {
        TraceBuffer? b = t_buffer;
        if (b is null || b.Session != Volatile.Read(ref s_session))
        {
            b = AttachBuffer();
            if (b is null)
            {
                return;
            }
        }
        if (!b.TryAdd(in e))
        {
            Interlocked.Increment(ref s_dropped);
        }
    }

    private static TraceBuffer? AttachBuffer()
    {
        lock (s_lock)
        {
            if (!Volatile.Read(ref s_enabled))
            {
                return null;
            }
            var b = new TraceBuffer(s_session);
            s_buffers.Add(b);
            t_buffer = b;
            return b;
        }
    }

    // Called by a buffer that needs a new chunk; false when the session's capacity is used up.
    internal static bool TryReserveChunk()
    {
        long cap = Volatile.Read(ref s_capacity);
        long after = Interlocked.Add(ref s_reserved, ChunkSize);
        if (after - ChunkSize >= cap)
        {
            Interlocked.Add(ref s_reserved, -ChunkSize);
            return false;
        }
        return true;
    }

    /// <summary>
    /// Copies the events recorded so far, sorted by start time, with the tracks they use. Safe to call while other
    /// threads record (it sees a prefix of each thread's events).
    /// </summary>
    /// <returns>The snapshot.</returns>
    public static TraceSnapshot Snapshot()
    {
        var events = new List<TraceEvent>();
        long epoch;
        lock (s_lock)
        {
            epoch = s_epoch;
            foreach (TraceBuffer b in s_buffers)
            {
                b.CopyTo(events);
            }
        }
        // OrderBy is stable: events with equal timestamps keep their per-thread order.
        TraceEvent[] array = [.. events.OrderBy(e => e.Timestamp)];
        TraceTrackInfo[] tracks = Volatile.Read(ref s_tracks);
        var used = new SortedSet<int>();
        foreach (TraceEvent e in array)
        {
            used.Add(e.Track);
        }
        var usedTracks = new List<TraceTrackInfo>(used.Count);
        foreach (int id in used)
        {
            if ((uint)id < (uint)tracks.Length)
            {
                usedTracks.Add(tracks[id]);
            }
        }
        return new TraceSnapshot(array, usedTracks, DroppedEvents, epoch, Stopwatch.Frequency);
    }

    /// <summary>A per-thread event buffer: a list of fixed chunks written only by the owner thread.</summary>
    private sealed class TraceBuffer
    {
        private TraceEvent[][] _chunks = [];   // grows copy-on-write; published before _count covers it
        private int _count;                    // events written; Volatile.Write by the owner, Volatile.Read by Snapshot
        private bool _full;                    // owner thread only: the session's capacity was reached

        public TraceBuffer(int session) => Session = session;

        public int Session { get; }            // immutable

        public bool TryAdd(in TraceEvent e)
        {
            int n = _count;
            int chunk = n / ChunkSize;
            TraceEvent[][] chunks = _chunks;
            if (chunk == chunks.Length)
            {
                if (_full || !TryReserveChunk())
                {
                    _full = true;
                    return false;
                }
                chunks = [.. chunks, new TraceEvent[ChunkSize]];
                Volatile.Write(ref _chunks, chunks);
            }
            chunks[chunk][n % ChunkSize] = e;
            Volatile.Write(ref _count, n + 1);
            return true;
        }

        public void CopyTo(List<TraceEvent> into)
        {
            int n = Volatile.Read(ref _count);
            TraceEvent[][] chunks = Volatile.Read(ref _chunks);
            for (int i = 0; i < n; i++)
            {
                into.Add(chunks[i / ChunkSize][i % ChunkSize]);
            }
        }
    }
}

/// <summary>
/// The token of an open span: dispose it (with <c>using</c>) to record the span. The default token, returned while
/// recording is off, records nothing. A <c>ref struct</c> so it can neither be boxed nor outlive its scope.
/// </summary>
public ref struct TraceSpan
{
    private readonly TraceTrack _track;
    private readonly TraceCategory _category;
    private readonly TraceArg _arg0;
    private readonly TraceArg _arg1;
    private readonly long _start;
    private string? _name;                 // null once ended, or when recording was off

    internal TraceSpan(TraceTrack track, TraceCategory category, string name, long start, TraceArg arg0, TraceArg arg1)
    {
        _track = track;
        _category = category;
        _name = name;
        _start = start;
        _arg0 = arg0;
        _arg1 = arg1;
    }

    /// <summary>True when this span will be recorded on dispose.</summary>
    public readonly bool IsRecording => _name is not null;

    /// <summary>Ends the span and records it; later calls do nothing.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Dispose()
    {
        if (_name is not null)
        {
            TraceLog.EndSpan(_track, _category, _name, _start, _arg0, _arg1);
            _name = null;
        }
    }
}

/// <summary>A track as exported: its id (the <c>tid</c>), name and process group.</summary>
/// <param name="Id">The track id.</param>
/// <param name="Name">The track name.</param>
/// <param name="Process">The process group.</param>
public sealed record TraceTrackInfo(int Id, string Name, string Process);

/// <summary>The events of a trace session at one moment, sorted by start time, and the tracks they use.</summary>
public sealed class TraceSnapshot
{
    /// <summary>Creates a snapshot (used by <see cref="TraceLog.Snapshot"/>; public for tests and other producers).</summary>
    public TraceSnapshot(IReadOnlyList<TraceEvent> events, IReadOnlyList<TraceTrackInfo> tracks, long dropped, long epochTimestamp, long ticksPerSecond)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(ticksPerSecond);
        Events = events;
        Tracks = tracks;
        Dropped = dropped;
        EpochTimestamp = epochTimestamp;
        TicksPerSecond = ticksPerSecond;
    }

    /// <summary>The events, sorted by start time.</summary>
    public IReadOnlyList<TraceEvent> Events { get; }

    /// <summary>The tracks the events use.</summary>
    public IReadOnlyList<TraceTrackInfo> Tracks { get; }

    /// <summary>Events dropped because the capacity was reached.</summary>
    public long Dropped { get; }

    /// <summary>The session's time origin (Stopwatch ticks).</summary>
    public long EpochTimestamp { get; }

    /// <summary>Ticks per second of the timestamps.</summary>
    public long TicksPerSecond { get; }

    /// <summary>Microseconds since the epoch of timestamp <paramref name="timestamp"/>.</summary>
    public double ToMicroseconds(long timestamp) => (timestamp - EpochTimestamp) * 1e6 / TicksPerSecond;

    /// <summary>A duration in ticks as microseconds.</summary>
    public double DurationToMicroseconds(long ticks) => ticks * 1e6 / TicksPerSecond;
}
