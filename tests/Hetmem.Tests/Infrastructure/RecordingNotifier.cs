using Hetmem.Mm;

namespace Hetmem.Tests.Infrastructure;

/// <summary>What a <see cref="RecordingNotifier"/> saw.</summary>
internal enum NotifierCall
{
    Start,
    End,
    Release,
    Interval,
}

/// <summary>One callback seen by a <see cref="RecordingNotifier"/>.</summary>
internal readonly record struct NotifierRecord(NotifierCall Call, MmuNotifierEvent Event, ulong Start, ulong End, int Thread)
{
    public override string ToString() => $"{Call} {Event} [0x{Start:x}, 0x{End:x})";
}

/// <summary>
/// A test double that records every notifier callback of one address space: classic start/end/release (as a
/// registered <see cref="MmuNotifier"/>) and interval invalidations (as an interval notifier over all of user space,
/// which also sees RELEASE at exit). It checks, as it goes, that every end closes a start of the same range and event
/// on the same thread, and offers assertions on the pairs one operation produced.
/// </summary>
internal sealed class RecordingNotifier : MmuNotifier, IMmuIntervalNotifierOps
{
    private readonly object _lock = new();
    private readonly List<NotifierRecord> _records = [];
    private readonly List<string> _errors = [];
    private readonly Dictionary<int, Stack<NotifierRecord>> _open = [];
    private MmuIntervalNotifier? _interval;

    private RecordingNotifier()
    {
    }

    /// <summary>Registers a recorder on <paramref name="mm"/> (classic and interval).</summary>
    public static RecordingNotifier Attach(AddressSpace mm)
    {
        var r = new RecordingNotifier();
        mm.RegisterNotifier(r);
        r._interval = MmuIntervalNotifier.Insert(mm, AddressSpace.MmapMinAddr, AddressSpace.TaskSize - AddressSpace.MmapMinAddr, r);
        return r;
    }

    /// <summary>Removes the interval notifier (call before disposing the space if the test ends early).</summary>
    public void Detach() => _interval?.Remove();

    /// <summary>Returns the records so far and forgets them; fails if a bracket was malformed.</summary>
    public List<NotifierRecord> Take()
    {
        lock (_lock)
        {
            Assert.True(_errors.Count == 0, string.Join("\n", _errors));
            List<NotifierRecord> r = [.. _records];
            _records.Clear();
            return r;
        }
    }

    /// <summary>The classic start/end pairs of <paramref name="records"/>, as (event, start, end).</summary>
    public static List<(MmuNotifierEvent Event, ulong Start, ulong End)> Pairs(IEnumerable<NotifierRecord> records)
        => [.. records.Where(r => r.Call == NotifierCall.Start).Select(r => (r.Event, r.Start, r.End))];

    /// <summary>
    /// Asserts that <paramref name="records"/> hold exactly one classic start/end pair of <paramref name="evt"/>, that it
    /// covers [<paramref name="start"/>, <paramref name="end"/>), and that no pair of another event was sent.
    /// </summary>
    public static void AssertSinglePair(List<NotifierRecord> records, MmuNotifierEvent evt, ulong start, ulong end)
    {
        var pairs = Pairs(records);
        Assert.True(pairs.Count == 1, $"expected one {evt} pair, got: {string.Join("; ", pairs)}");
        Assert.Equal(evt, pairs[0].Event);
        Assert.True(pairs[0].Start <= start && pairs[0].End >= end, $"{pairs[0]} does not cover [0x{start:x}, 0x{end:x})");
        Assert.Equal(1, records.Count(r => r.Call == NotifierCall.End));
    }

    public override Errno InvalidateRangeStart(in MmuNotifierRange range)
    {
        var rec = new NotifierRecord(NotifierCall.Start, range.Event, range.Start, range.End, Environment.CurrentManagedThreadId);
        lock (_lock)
        {
            if (!range.Blockable)
            {
                _errors.Add($"non-blockable start {rec}");
            }
            _records.Add(rec);
            if (!_open.TryGetValue(rec.Thread, out Stack<NotifierRecord>? s))
            {
                _open[rec.Thread] = s = new Stack<NotifierRecord>();
            }
            s.Push(rec);
        }
        return Errno.Ok;
    }

    public override void InvalidateRangeEnd(in MmuNotifierRange range)
    {
        var rec = new NotifierRecord(NotifierCall.End, range.Event, range.Start, range.End, Environment.CurrentManagedThreadId);
        lock (_lock)
        {
            _records.Add(rec);
            if (!_open.TryGetValue(rec.Thread, out Stack<NotifierRecord>? s) || s.Count == 0)
            {
                _errors.Add($"end without start: {rec}");
                return;
            }
            NotifierRecord st = s.Pop();
            if (st.Event != rec.Event || st.Start != rec.Start || st.End != rec.End)
            {
                _errors.Add($"end {rec} closes start {st}");
            }
        }
    }

    public override void Release(AddressSpace space)
    {
        lock (_lock)
        {
            _records.Add(new NotifierRecord(NotifierCall.Release, MmuNotifierEvent.Release, 0, ulong.MaxValue, Environment.CurrentManagedThreadId));
        }
    }

    public bool Invalidate(MmuIntervalNotifier sub, in MmuNotifierRange range, long curSeq)
    {
        sub.SetSeq(curSeq);
        lock (_lock)
        {
            _records.Add(new NotifierRecord(NotifierCall.Interval, range.Event, range.Start, range.End, Environment.CurrentManagedThreadId));
        }
        return true;
    }
}
