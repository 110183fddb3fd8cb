using System.Globalization;
using System.Text;

namespace Hetmem.Cli.Stress;

/// <summary>How sure the oracle is that a recorded store happened.</summary>
internal enum StoreState : byte
{
    /// <summary>Issued, not yet returned: may have happened at any instant after its start.</summary>
    Pending,
    /// <summary>Returned successfully: it took effect at one instant inside [start, end].</summary>
    Definite,
    /// <summary>Failed or partly failed (a device write that hit EFAULT midway): it may or may not have taken effect.</summary>
    Maybe,
}

/// <summary>One store the reference model knows of: a value that became current at some instant of [Start, End].</summary>
internal struct StoreEvent
{
    public long Start;      // global tick taken (under the page lock) before the store was issued
    public long End;        // global tick taken after it returned; long.MaxValue while pending
    public ulong Value;     // the page's first word from then on (Unmapped: the page is not mapped)
    public StoreState State;
    public byte Thread;     // the worker that issued it
    public int Op;          // that worker's operation number
}

/// <summary>An observation the oracle rejected, with the page's recorded history at that moment.</summary>
internal sealed record OracleViolation(ulong Page, ulong Observed, long ReadStart, long ReadEnd, int Thread, int Op, string What, string History);

/// <summary>
/// The reference model of <c>hetmem stress</c>: per page of the stress arena, the recent stores to its first word
/// (CPU stores, device writes, and the zeroing or unmapping done by munmap, mmap, MADV_DONTNEED, truncate and punch
/// hole), each with the interval [start, end] of a global monotonic clock in which it took effect; and the check that
/// every observed value (a CPU load, a device read, a fork child's load) was current at some instant of the
/// observation.
/// </summary>
/// <remarks>
/// <para><b>The check</b> (regular-register semantics, sound for any interleaving): a read over [rs, re] that returned
/// v is legal when some recorded store W of v has W.start &lt; re and no <i>definite</i> store W' both began after W
/// ended and ended before the read began (W.end &lt; W'.start ∧ W'.end &lt; rs). Pending and failed stores are legal
/// candidates but never count as overwriters, so a violation is always a real one: the value had been replaced,
/// for certain, before the read started.</para>
/// <para><b>Pruning.</b> Each page keeps its last <see cref="Depth"/> stores; dropped ones raise the page's
/// <c>prunedEnd</c> watermark. A value not found among the kept stores is a violation only when some kept definite
/// store began after <c>prunedEnd</c> and ended before the read began (so every dropped store, and any store the
/// page never had, was certainly overwritten).</para>
/// <para><b>Clock and visibility.</b> A store's start tick is taken while holding its page's lock, so any check that
/// runs after a read's end tick sees every store that started before it (the start tick and the append are one
/// critical section). Ticks come from <see cref="Interlocked.Increment(ref long)"/>, a full fence.</para>
/// <para><b>Locking.</b> One lock per page (a leaf: nothing is called with it held). Violations are collected under
/// <c>_violationsLock</c>.</para>
/// </remarks>
internal sealed class StressOracle
{
    /// <summary>The value standing for "not mapped" (never observable: reads of it fault).</summary>
    public const ulong Unmapped = ulong.MaxValue;

    /// <summary>
    /// The placeholder of a store whose value is known only after it returns (an mremap carrying the source's
    /// value): while pending it makes any observation legal; <see cref="CompleteMove"/> replaces it.
    /// </summary>
    public const ulong Moving = ulong.MaxValue - 1;

    /// <summary>
    /// A store of an unknown value (an mremap moved a page whose possible values were too many, or partly pruned):
    /// it matches any observation for as long as it may be current.
    /// </summary>
    public const ulong Unknown = ulong.MaxValue - 2;

    /// <summary>Stores kept per page.</summary>
    public const int Depth = 24;

    private readonly PageHistory[] _pages;                    // immutable array; each entry guarded by itself
    private readonly Lock _violationsLock = new();
    private readonly List<OracleViolation> _violations = [];  // guarded by _violationsLock (first MaxReports only)
    private long _clock;                                      // atomic
    private long _violationCount;                             // atomic
    private long _checks;                                     // atomic

    /// <summary>Creates the model for <paramref name="pages"/> pages, each starting as a definite store of <paramref name="initial"/>.</summary>
    public StressOracle(int pages, ulong initial = 0)
    {
        _pages = new PageHistory[pages];
        long t = Tick();
        for (int i = 0; i < pages; i++)
        {
            _pages[i] = new PageHistory();
            _pages[i].Append(new StoreEvent { Start = t, End = t, Value = initial, State = StoreState.Definite, Thread = byte.MaxValue, Op = -1 });
        }
        Tick();
    }

    /// <summary>Violations reported in full (the rest are only counted).</summary>
    public const int MaxReports = 8;

    /// <summary>Number of pages modelled.</summary>
    public int PageCount => _pages.Length;

    /// <summary>Observations rejected.</summary>
    public long ViolationCount => Interlocked.Read(ref _violationCount);

    /// <summary>Observations checked.</summary>
    public long Checks => Interlocked.Read(ref _checks);

    /// <summary>The first <see cref="MaxReports"/> violations.</summary>
    public IReadOnlyList<OracleViolation> Violations
    {
        get
        {
            lock (_violationsLock)
            {
                return [.. _violations];
            }
        }
    }

    /// <summary>The current clock value (a new tick).</summary>
    public long Tick() => Interlocked.Increment(ref _clock);

    /// <summary>The value a writer stores: unique to (page, writer, sequence), never 0 or <see cref="Unmapped"/>.</summary>
    public static ulong MakeValue(int page, int writer, uint seq) => ((ulong)(page + 1) << 40) | ((ulong)(byte)writer << 32) | seq;

    /// <summary>The page a value made by <see cref="MakeValue"/> names (-1 for 0 or <see cref="Unmapped"/>).</summary>
    public static int PageOf(ulong value) => value is 0 or Unmapped or Moving or Unknown ? -1 : (int)((value >> 40) - 1);

    /// <summary>
    /// Records that a store of <paramref name="value"/> to <paramref name="page"/> is being issued; returns its start
    /// tick, to be passed to <see cref="Complete"/>. Call it before issuing the store.
    /// </summary>
    public long Begin(int page, ulong value, int thread, int op)
    {
        PageHistory h = _pages[page];
        lock (h)
        {
            long t = Tick();
            h.Append(new StoreEvent { Start = t, End = long.MaxValue, Value = value, State = StoreState.Pending, Thread = (byte)thread, Op = op });
            return t;
        }
    }

    /// <summary>
    /// Records the outcome of the store begun at <paramref name="start"/>: it returned at <paramref name="end"/>
    /// and happened (<see cref="StoreState.Definite"/>) or may have (<see cref="StoreState.Maybe"/>).
    /// </summary>
    public void Complete(int page, long start, ulong value, long end, StoreState state)
    {
        PageHistory h = _pages[page];
        lock (h)
        {
            h.Complete(start, value, end, state);
        }
    }

    /// <summary>
    /// Completes a <see cref="Moving"/> store begun at <paramref name="start"/>: records one store per value the page
    /// may now hold (definite when there is exactly one and <paramref name="certain"/>: the page surely received one
    /// of them), then retires the placeholder.
    /// </summary>
    public void CompleteMove(int page, long start, long end, List<ulong> values, int thread, int op, bool certain = true)
    {
        PageHistory h = _pages[page];
        lock (h)
        {
            StoreState state = certain && values.Count == 1 ? StoreState.Definite : StoreState.Maybe;
            foreach (ulong v in values)
            {
                h.Append(new StoreEvent { Start = start, End = end, Value = v, State = state, Thread = (byte)thread, Op = op });
            }
            h.Complete(start, Moving, end, StoreState.Maybe);
        }
    }

    /// <summary>
    /// The values <paramref name="page"/> may have held at some instant of [<paramref name="start"/>,
    /// <paramref name="end"/>] (what an mremap moving it during that window carried along), into <paramref name="into"/>.
    /// </summary>
    /// <returns>False when the list is incomplete: a pruned store, or an <see cref="Unknown"/> one, may have been current.</returns>
    public bool Candidates(int page, long start, long end, List<ulong> into)
    {
        PageHistory h = _pages[page];
        lock (h)
        {
            bool complete = h.PrunedCertainlyReplacedBefore(start);
            for (int i = 0; i < h.Count; i++)
            {
                ref StoreEvent w = ref h.At(i);
                if (w.Value != Moving && !into.Contains(w.Value) && h.Legal(ref w, start, end))
                {
                    if (w.Value == Unknown)
                    {
                        complete = false;
                        continue;
                    }
                    into.Add(w.Value);
                }
            }
            return complete;
        }
    }

    /// <summary>
    /// Checks that <paramref name="observed"/>, read from <paramref name="page"/> over [<paramref name="start"/>,
    /// <paramref name="end"/>], was current at some instant of that window. Records a violation otherwise.
    /// </summary>
    /// <returns>True when the observation is legal.</returns>
    public bool CheckRead(int page, ulong observed, long start, long end, int thread, int op, string what)
    {
        Interlocked.Increment(ref _checks);
        PageHistory h = _pages[page];
        string? history = null;
        lock (h)
        {
            if (h.IsLegal(observed, start, end))
            {
                return true;
            }
            history = h.Describe();
        }
        Report(new OracleViolation((ulong)page, observed, start, end, thread, op, what, history));
        return false;
    }

    /// <summary>Records a violation found by another check (a device touching a freed frame).</summary>
    public void Report(OracleViolation v)
    {
        Interlocked.Increment(ref _violationCount);
        lock (_violationsLock)
        {
            if (_violations.Count < MaxReports)
            {
                _violations.Add(v);
            }
        }
    }

    /// <summary>The recorded stores of <paramref name="page"/>, oldest first, one per line.</summary>
    public string Describe(int page)
    {
        PageHistory h = _pages[page];
        lock (h)
        {
            return h.Describe();
        }
    }

    /// <summary>A value for messages: <c>0</c>, <c>unmapped</c>, or <c>0x… (page P, writer W, seq S)</c>.</summary>
    public static string Format(ulong v) => v switch
    {
        0 => "0",
        Unmapped => "unmapped",
        Moving => "(being moved by mremap)",
        Unknown => "(unknown: moved from a page with too many possible values)",
        _ => string.Create(CultureInfo.InvariantCulture, $"0x{v:x} (page {PageOf(v)}, writer {(v >> 32) & 0xFF}, seq {(uint)v})"),
    };

    /// <summary>One page's ring of recent stores. Guarded by locking the instance.</summary>
    private sealed class PageHistory
    {
        private readonly StoreEvent[] _ring = new StoreEvent[Depth];
        private int _first;          // index of the oldest kept store
        private long _prunedEndDone = long.MinValue;   // max End of dropped stores that had completed
        private int _prunedPending;                     // dropped stores still pending (their end is unknown)

        private long PrunedEnd => _prunedPending > 0 ? long.MaxValue : _prunedEndDone;

        public int Count { get; private set; }

        public ref StoreEvent At(int i) => ref _ring[(_first + i) % Depth];

        public void Append(in StoreEvent e)
        {
            if (Count == Depth)
            {
                ref StoreEvent old = ref _ring[_first];
                if (old.End == long.MaxValue)
                {
                    _prunedPending++;
                }
                else
                {
                    _prunedEndDone = Math.Max(_prunedEndDone, old.End);
                }
                _first = (_first + 1) % Depth;
                Count--;
            }
            _ring[(_first + Count) % Depth] = e;
            Count++;
        }

        public void Complete(long start, ulong value, long end, StoreState state)
        {
            for (int i = Count - 1; i >= 0; i--)
            {
                ref StoreEvent e = ref At(i);
                if (e.Start == start && e.Value == value)
                {
                    e.End = end;
                    e.State = state;
                    return;
                }
            }
            // Dropped while pending: now its end is known.
            if (_prunedPending > 0)
            {
                _prunedPending--;
                _prunedEndDone = Math.Max(_prunedEndDone, end);
            }
        }

        // True when no definite store certainly replaced w before rs (w may have been current in [rs, re]).
        public bool Legal(ref StoreEvent w, long rs, long re)
        {
            if (w.Start >= re)
            {
                return false;
            }
            for (int j = 0; j < Count; j++)
            {
                ref StoreEvent o = ref At(j);
                if (o.State == StoreState.Definite && o.Start > w.End && o.End < rs)
                {
                    return false;
                }
            }
            return true;
        }

        public bool IsLegal(ulong observed, long rs, long re)
        {
            for (int i = 0; i < Count; i++)
            {
                ref StoreEvent w = ref At(i);
                if (((w.Value == observed || w.Value == Unknown) && Legal(ref w, rs, re)) || (w.Value == Moving && w.State == StoreState.Pending && w.Start < re))
                {
                    return true;
                }
            }
            // No kept store of the value may still have been current: legal only if a dropped store might have been.
            return !PrunedCertainlyReplacedBefore(rs);
        }

        // True when every dropped store was certainly replaced by a kept definite store that ended before rs.
        public bool PrunedCertainlyReplacedBefore(long rs)
        {
            long pruned = PrunedEnd;
            if (pruned == long.MinValue)
            {
                return true;
            }
            for (int j = 0; j < Count; j++)
            {
                ref StoreEvent o = ref At(j);
                if (o.State == StoreState.Definite && o.Start > pruned && o.End < rs)
                {
                    return true;
                }
            }
            return false;
        }

        public string Describe()
        {
            var sb = new StringBuilder();
            if (PrunedEnd != long.MinValue)
            {
                sb.Append(CultureInfo.InvariantCulture, $"    (older stores dropped; they ended by t={PrunedEnd})\n");
            }
            for (int i = 0; i < Count; i++)
            {
                ref StoreEvent e = ref At(i);
                string end = e.End == long.MaxValue ? "…" : e.End.ToString(CultureInfo.InvariantCulture);
                string who = e.Op < 0 ? "initial" : string.Create(CultureInfo.InvariantCulture, $"thread {e.Thread} op #{e.Op}");
                sb.Append(CultureInfo.InvariantCulture, $"    [t={e.Start}, t={end}] {e.State,-8} {Format(e.Value)}  ({who})\n");
            }
            return sb.ToString();
        }
    }
}
