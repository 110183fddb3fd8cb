using Hetmem.Mm;
using Hetmem.Physical;
using Xunit.Abstractions;
using static Hetmem.Tests.Hmm.Kit;

namespace Hetmem.Tests.Hmm;

/// <summary>The interval-notifier rules of spec §1.5 and invariants 9 and 10 of §7.</summary>
public sealed class MmuIntervalNotifierTests : IDisposable
{
    private readonly ITestOutputHelper _output;
    private readonly PhysicalMemory _mem;
    private readonly AddressSpace _mm;

    public MmuIntervalNotifierTests(ITestOutputHelper output)
    {
        _output = output;
        _mem = Memory();
        _mm = new AddressSpace(_mem);
    }

    public void Dispose()
    {
        _mm.Exit();
        _mem.Dispose();
    }

    private MmuNotifierSubscriptions N => _mm.Notifiers;

    [Fact]
    public void TheSequenceStartsAtTwoAndAFreshNotifierHoldsTheOddValueBelowIt()
    {
        Assert.Equal(2, N.InvalidateSeq);
        var ops = new RecordingOps();
        var sub = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x10000, ops);
        Assert.Equal(2, N.InvalidateSeq);
        long seq = sub.ReadBegin();
        Assert.Equal(1, seq);
        Assert.False(sub.ReadRetry(seq));
        Assert.False(sub.CheckRetry(seq));
        sub.Remove();
    }

    [Fact]
    public void AnIntersectingInvalidationPassesAnOddCurSeqAndTheSequenceIsOddUntilTheEnd()
    {
        var ops = new RecordingOps();
        var sub = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x10000, ops);
        long seq = sub.ReadBegin();
        var r = Range(_mm, 0x108000, 0x120000);
        Assert.Equal(Errno.Ok, N.InvalidateRangeStart(r));
        var call = Assert.Single(ops.Calls);
        Assert.Equal(3, call.CurSeq);
        Assert.Equal(1, call.CurSeq & 1);
        Assert.Equal(3, call.MmSeqDuring);
        Assert.Equal(3, N.InvalidateSeq);
        Assert.True(sub.ReadRetry(seq));
        N.InvalidateRangeEnd(r);
        Assert.Equal(4, N.InvalidateSeq);
        Assert.Equal(0, N.ActiveRanges);
        long seq2 = sub.ReadBegin();
        Assert.Equal(3, seq2);
        Assert.False(sub.ReadRetry(seq2));
        sub.Remove();
    }

    [Fact]
    public void AnInvalidationThatTouchesNoNotifierLeavesTheSequenceEvenAndCallsNobody()
    {
        var ops = new RecordingOps();
        var sub = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x10000, ops);
        long seq = sub.ReadBegin();
        // Adjacent on both sides: [start, end) is half-open.
        foreach ((ulong s, ulong e) in new[] { (0x80000UL, 0x100000UL), (0x110000UL, 0x200000UL) })
        {
            var r = Range(_mm, s, e);
            Assert.Equal(Errno.Ok, N.InvalidateRangeStart(r));
            Assert.Equal(2, N.InvalidateSeq);
            Assert.Equal(1, N.ActiveRanges);
            N.InvalidateRangeEnd(r);
        }
        Assert.Equal(0, ops.Count);
        Assert.Equal(2, N.InvalidateSeq);
        Assert.False(sub.ReadRetry(seq));
        sub.Remove();
    }

    [Fact]
    public void NestedInvalidationsKeepTheSequenceOddUntilTheLastEndAndBumpItOnce()
    {
        var a = new RecordingOps();
        var b = new RecordingOps();
        var sa = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, a);
        var sb = MmuIntervalNotifier.Insert(_mm, 0x200000, 0x1000, b);
        var r1 = Range(_mm, 0x100000, 0x101000);
        var r2 = Range(_mm, 0x200000, 0x201000, MmuNotifierEvent.Unmap);
        N.InvalidateRangeStart(r1);
        N.InvalidateRangeStart(r2);
        Assert.Equal(3, a.Calls.Single().CurSeq);
        Assert.Equal(3, b.Calls.Single().CurSeq);
        N.InvalidateRangeEnd(r1);
        Assert.Equal(3, N.InvalidateSeq);
        Assert.Equal(1, N.ActiveRanges);
        N.InvalidateRangeEnd(r2);
        Assert.Equal(4, N.InvalidateSeq);
        Assert.Equal(MmuNotifierEvent.Unmap, b.Calls.Single().Event);
        sa.Remove();
        sb.Remove();
    }

    [Fact]
    public void ReadBeginBlocksWhileAnInvalidationTouchingTheNotifierRunsAndNotForOthers()
    {
        var ops = new RecordingOps();
        var other = new RecordingOps();
        var sub = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, ops);
        var far = MmuIntervalNotifier.Insert(_mm, 0x900000, 0x1000, other);
        var r = Range(_mm, 0x100000, 0x101000);
        N.InvalidateRangeStart(r);
        // The untouched notifier reads on: its sequence is not the current odd one.
        Assert.Equal(1, far.ReadBegin());
        long seen = -1;
        Thread t = Start(() => seen = sub.ReadBegin(), "read_begin");
        StaysBlocked(t, "read_begin returned while an invalidation touching its notifier was running");
        N.InvalidateRangeEnd(r);
        Join(t);
        Assert.Equal(3, seen);
        Assert.False(sub.ReadRetry(seen));
        sub.Remove();
        far.Remove();
    }

    [Fact]
    public void ANotifierInsertedWhileAnUntouchedInvalidationRunsIsTreatedAsInvalidated()
    {
        // Active range, sequence even: the insert goes straight into the tree and makes the sequence odd.
        var r = Range(_mm, 0x500000, 0x501000);
        N.InvalidateRangeStart(r);
        Assert.Equal(2, N.InvalidateSeq);
        var ops = new RecordingOps();
        var sub = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, ops);
        Assert.Equal(1, N.IntervalCount);
        Assert.Equal(3, N.InvalidateSeq);
        long seen = -1;
        Thread t = Start(() => seen = sub.ReadBegin(), "read_begin");
        StaysBlocked(t, "read_begin of a notifier inserted during an invalidation did not wait for its end");
        N.InvalidateRangeEnd(r);
        Join(t);
        Assert.Equal(3, seen);
        Assert.Equal(4, N.InvalidateSeq);
        Assert.Equal(0, ops.Count);
        sub.Remove();
    }

    [Fact]
    public void ANotifierInsertedDuringAnIntersectingInvalidationIsDeferredToTheLastEnd()
    {
        var first = new RecordingOps();
        var s1 = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, first);
        var r = Range(_mm, 0x100000, 0x101000);
        N.InvalidateRangeStart(r);
        var late = new RecordingOps();
        var s2 = MmuIntervalNotifier.Insert(_mm, 0x300000, 0x1000, late);
        Assert.Equal(1, N.IntervalCount);
        // A nested invalidation over the late notifier's interval does not reach it: it is not in the tree yet.
        var r2 = Range(_mm, 0x300000, 0x301000);
        N.InvalidateRangeStart(r2);
        N.InvalidateRangeEnd(r2);
        Assert.Equal(0, late.Count);
        Assert.Equal(3, N.InvalidateSeq);
        long seen = -1;
        Thread t = Start(() => seen = s2.ReadBegin(), "read_begin");
        StaysBlocked(t, "read_begin of a deferred notifier returned before the invalidation ended");
        N.InvalidateRangeEnd(r);
        Join(t);
        Assert.Equal(3, seen);
        Assert.True(s2.ReadRetry(3) == false);
        Assert.Equal(2, N.IntervalCount);
        N.ValidateTree();
        // Now it is in the tree and sees invalidations.
        var r3 = Range(_mm, 0x300000, 0x301000);
        N.InvalidateRangeStart(r3);
        N.InvalidateRangeEnd(r3);
        Assert.Equal(5, late.Calls.Single().CurSeq);
        Assert.True(s2.ReadRetry(seen));
        s1.Remove();
        s2.Remove();
    }

    [Fact]
    public void RemovingANotifierWhoseInsertIsStillDeferredReturnsAtOnceAndItNeverJoins()
    {
        var s1 = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, new RecordingOps());
        var r = Range(_mm, 0x100000, 0x101000);
        N.InvalidateRangeStart(r);
        var late = new RecordingOps();
        var s2 = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, late);
        Thread t = Start(s2.Remove, "remove");
        Join(t);
        N.InvalidateRangeEnd(r);
        Assert.Equal(1, N.IntervalCount);
        N.InvalidateRangeStart(r);
        N.InvalidateRangeEnd(r);
        Assert.Equal(0, late.Count);
        s1.Remove();
        Assert.Equal(0, N.IntervalCount);
    }

    [Fact]
    public void RemoveWaitsForARunningCallbackAndNoCallbackRunsAfterItReturned()
    {
        var ops = new RecordingOps { Entered = new(false), Gate = new(false) };
        var sub = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, ops);
        var r = Range(_mm, 0x100000, 0x101000);
        Thread inv = Start(() =>
        {
            N.InvalidateRangeStart(r);
            N.InvalidateRangeEnd(r);
        }, "invalidate");
        Assert.True(ops.Entered.Wait(TimeSpan.FromSeconds(30)));
        bool removed = false;
        Thread rem = Start(() =>
        {
            sub.Remove();
            Volatile.Write(ref removed, true);
        }, "remove");
        StaysBlocked(rem, "remove returned while the notifier's callback was still running");
        Assert.Equal(0, ops.Count);
        ops.Gate.Set();
        Join(inv);
        Join(rem);
        Assert.True(removed);
        Assert.Equal(1, ops.Count);
        Assert.Equal(0, N.IntervalCount);
        ops.Entered = null;
        ops.Gate = null;
        N.InvalidateRangeStart(r);
        N.InvalidateRangeEnd(r);
        Assert.Equal(1, ops.Count);
    }

    [Fact]
    public void RemoveWhileOnlyUntouchedInvalidationsRunIsImmediate()
    {
        var sub = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, new RecordingOps());
        var r = Range(_mm, 0x900000, 0x901000);
        N.InvalidateRangeStart(r);
        Thread t = Start(sub.Remove, "remove");
        Join(t);
        Assert.Equal(0, N.IntervalCount);
        N.InvalidateRangeEnd(r);
        Assert.Equal(2, N.InvalidateSeq);
        sub.Remove(); // idempotent
    }

    [Fact]
    public void RemoveFromTheNotifiersOwnCallbackIsRejectedInsteadOfDeadlocking()
    {
        InvalidOperationException? seen = null;
        var ops = new CallbackOps((MmuIntervalNotifier sub, in MmuNotifierRange r, long cur) =>
        {
            sub.SetSeq(cur);
            seen = Assert.Throws<InvalidOperationException>(sub.Remove);
            return true;
        });
        var s = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, ops);
        var range = Range(_mm, 0x100000, 0x101000);
        N.InvalidateRangeStart(range);
        N.InvalidateRangeEnd(range);
        Assert.NotNull(seen);
        s.Remove();
    }

    [Fact]
    public void ReadBeginFromACallbackThatWouldWaitForItselfIsRejected()
    {
        InvalidOperationException? seen = null;
        var ops = new CallbackOps((MmuIntervalNotifier sub, in MmuNotifierRange r, long cur) =>
        {
            sub.SetSeq(cur);
            seen = Assert.Throws<InvalidOperationException>(() => sub.ReadBegin());
            return true;
        });
        var s = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, ops);
        var range = Range(_mm, 0x100000, 0x101000);
        N.InvalidateRangeStart(range);
        N.InvalidateRangeEnd(range);
        Assert.NotNull(seen);
        Assert.Equal(3, s.ReadBegin());
        s.Remove();
    }

    [Fact]
    public void ANonBlockableStartThatACallbackRefusesFailsWithEagainAndClosesTheBracketItself()
    {
        var refusing = new RecordingOps { Refuse = true };
        var classic = new RecordingNotifier();
        _mm.RegisterNotifier(classic);
        var sub = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, refusing);
        var r = Range(_mm, 0x100000, 0x101000, MmuNotifierEvent.Unmap, blockable: false);
        Assert.Equal(Errno.EAGAIN, N.InvalidateRangeStart(r));
        Assert.False(refusing.Calls.Single().Blockable);
        Assert.Equal(0, N.ActiveRanges);
        Assert.Equal(4, N.InvalidateSeq);
        // The interval side refused first: the classic subscription was never started (kernel order).
        Assert.Equal((0, 0), (classic.Starts, classic.Ends));
        Assert.Equal(0, N.Warnings);
        sub.Remove();
        _mm.UnregisterNotifier(classic);
    }

    [Fact]
    public void ANonBlockableClassicFailureStillCallsEveryStartThenEveryEndAndReturnsEagain()
    {
        var ok = new RecordingNotifier();
        var failing = new RecordingNotifier { FailNonBlocking = true, ImplementsEnd = false };
        var ok2 = new RecordingNotifier();
        _mm.RegisterNotifier(ok);
        _mm.RegisterNotifier(failing);
        _mm.RegisterNotifier(ok2);
        var ops = new RecordingOps();
        var sub = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, ops);
        var r = Range(_mm, 0x100000, 0x101000, MmuNotifierEvent.Unmap, blockable: false);
        Assert.Equal(Errno.EAGAIN, N.InvalidateRangeStart(r));
        Assert.Equal((1, 1), (ok.Starts, ok.Ends));
        Assert.Equal((1, 1), (ok2.Starts, ok2.Ends));
        Assert.Equal(1, failing.Starts);
        Assert.Single(ops.Calls);
        Assert.Equal(0, N.ActiveRanges);
        Assert.Equal(4, N.InvalidateSeq);
        Assert.Equal(0, N.Warnings);
        sub.Remove();
        foreach (RecordingNotifier n in new[] { ok, failing, ok2 })
        {
            _mm.UnregisterNotifier(n);
        }
    }

    [Fact]
    public void ABlockableRangeThatACallbackRefusesIsAWarningAndTheInvalidationGoesOn()
    {
        var refusing = new RecordingOps { Refuse = true };
        var after = new RecordingOps();
        var s1 = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, refusing);
        var s2 = MmuIntervalNotifier.Insert(_mm, 0x101000, 0x1000, after);
        var r = Range(_mm, 0x100000, 0x102000);
        Assert.Equal(Errno.Ok, N.InvalidateRangeStart(r));
        Assert.Equal(1, N.Warnings);
        Assert.Single(after.Calls);
        N.InvalidateRangeEnd(r);
        Assert.Equal(4, N.InvalidateSeq);
        s1.Remove();
        s2.Remove();
    }

    [Fact]
    public void ACallbackThatForgetsSetSeqBreaksTheRetryProtocol()
    {
        // Invariant 10: the faulty driver is told nothing by read_retry, so it would program stale entries.
        var faulty = new RecordingOps { SetSeq = false };
        var sub = MmuIntervalNotifier.Insert(_mm, 0x100000, 0x1000, faulty);
        long seq = sub.ReadBegin();
        var r = Range(_mm, 0x100000, 0x101000);
        N.InvalidateRangeStart(r);
        N.InvalidateRangeEnd(r);
        Assert.Single(faulty.Calls);
        Assert.False(sub.ReadRetry(seq));
        // The same driver calling SetSeq is told to retry.
        faulty.SetSeq = true;
        N.InvalidateRangeStart(r);
        N.InvalidateRangeEnd(r);
        Assert.True(sub.ReadRetry(seq));
        sub.Remove();
    }

    [Fact]
    public void InsertRejectsEmptyAndWrappingIntervalsAndDeadAddressSpaces()
    {
        var ops = new RecordingOps();
        Assert.Equal(Errno.EOVERFLOW, Assert.Throws<MmException>(() => MmuIntervalNotifier.Insert(_mm, 0x1000, 0, ops)).Errno);
        Assert.Equal(Errno.EOVERFLOW, Assert.Throws<MmException>(() => MmuIntervalNotifier.Insert(_mm, ulong.MaxValue - 0xfff, 0x2000, ops)).Errno);
        var top = MmuIntervalNotifier.Insert(_mm, ulong.MaxValue - 0xfff, 0x1000, ops);
        Assert.Equal(ulong.MaxValue, top.End);
        top.Remove();
        var dead = new AddressSpace(_mem);
        dead.Exit();
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => MmuIntervalNotifier.Insert(dead, 0x1000, 0x1000, ops)).Errno);
        Assert.Equal(0, N.IntervalCount);
    }

    [Fact]
    public void ExitSendsOneBlockableReleaseOverEverythingThenUnmapsAndTheNotifierStaysRegistered()
    {
        var mm = new AddressSpace(_mem);
        ulong a = mm.Mmap(0, 4 * Kib4, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        var ops = new RecordingOps();
        var classic = new RecordingNotifier();
        mm.RegisterNotifier(classic);
        var sub = MmuIntervalNotifier.Insert(mm, a, 4 * Kib4, ops);
        long seq = sub.ReadBegin();
        mm.Exit();
        var calls = ops.Calls.ToArray();
        Assert.Equal(MmuNotifierEvent.Release, calls[0].Event);
        Assert.Equal((0UL, ulong.MaxValue, true), (calls[0].Start, calls[0].End, calls[0].Blockable));
        Assert.Contains(calls.Skip(1), c => c.Event == MmuNotifierEvent.Unmap && c.Start == a);
        Assert.Equal(1, classic.Releases);
        Assert.DoesNotContain(classic.Log, l => l.StartsWith("start", StringComparison.Ordinal));
        Assert.Equal(1, mm.Notifiers.IntervalCount);
        Assert.True(sub.ReadRetry(seq));
        // read_begin on a dead address space still works.
        long s2 = sub.ReadBegin();
        Assert.False(sub.ReadRetry(s2));
        Assert.Equal(0, mm.Notifiers.ActiveRanges);
        sub.Remove();
        Assert.Equal(0, mm.Notifiers.IntervalCount);
    }

    [Fact]
    public void AnInvalidationReachesEveryIntersectingNotifierAmongManyAndOnlyThose()
    {
        // Many notifiers (a GPU uses one per 512 MiB window): the tree finds exactly the intersecting ones.
        const int n = 2000;
        var ops = new RecordingOps[n];
        var subs = new MmuIntervalNotifier[n];
        for (int i = 0; i < n; i++)
        {
            ops[i] = new RecordingOps();
            subs[i] = MmuIntervalNotifier.Insert(_mm, (ulong)i << 29, 1UL << 29, ops[i]);
        }
        N.ValidateTree();
        Assert.True(N.TreeHeight <= 16, $"tree height {N.TreeHeight} for {n} notifiers");
        var r = Range(_mm, (5UL << 29) + 0x1000, (8UL << 29) + 1);
        N.InvalidateRangeStart(r);
        N.InvalidateRangeEnd(r);
        for (int i = 0; i < n; i++)
        {
            Assert.Equal(i is >= 5 and <= 8 ? 1 : 0, ops[i].Count);
        }
        foreach (MmuIntervalNotifier s in subs)
        {
            s.Remove();
        }
        Assert.Equal(0, N.IntervalCount);
    }

    [Fact]
    public void TheIntervalTreeAgreesWithABruteForceScanUnderRandomInsertsAndRemoves()
    {
        int seed = Seed(_output, nameof(TheIntervalTreeAgreesWithABruteForceScanUnderRandomInsertsAndRemoves));
        var rng = new Random(seed);
        var live = new List<(MmuIntervalNotifier Sub, RecordingOps Ops)>();
        for (int step = 0; step < 3000; step++)
        {
            int op = rng.Next(10);
            if (op < 5 || live.Count == 0)
            {
                ulong start = (ulong)rng.Next(0, 1 << 20) << 12;
                ulong len = (ulong)rng.Next(1, 1 << (rng.Next(1, 14))) << 12;
                var o = new RecordingOps();
                live.Add((MmuIntervalNotifier.Insert(_mm, start, len, o), o));
            }
            else if (op < 8)
            {
                int i = rng.Next(live.Count);
                live[i].Sub.Remove();
                live.RemoveAt(i);
            }
            else
            {
                ulong s = (ulong)rng.Next(0, 1 << 20) << 12;
                ulong e = s + ((ulong)rng.Next(1, 1 << 12) << 12);
                var before = live.Select(x => x.Ops.Count).ToArray();
                var r = Range(_mm, s, e);
                N.InvalidateRangeStart(r);
                N.InvalidateRangeEnd(r);
                for (int i = 0; i < live.Count; i++)
                {
                    bool hit = live[i].Sub.Intersects(s, e);
                    Assert.True(live[i].Ops.Count - before[i] == (hit ? 1 : 0), $"seed {seed} step {step}: {live[i].Sub} vs [0x{s:x}, 0x{e:x})");
                }
            }
            if (step % 97 == 0)
            {
                N.ValidateTree();
            }
        }
        N.ValidateTree();
        Assert.Equal(live.Count, N.IntervalCount);
        Assert.True(N.TreeHeight <= 1.45 * Math.Log2(live.Count + 2) + 2, $"seed {seed}: height {N.TreeHeight} for {live.Count}");
        foreach (var x in live)
        {
            x.Sub.Remove();
        }
    }

    [Fact]
    public void ConcurrentInvalidationsInsertsRemovesAndReadersKeepEveryGuarantee()
    {
        // Real threads. Writers bump a version of their interval between start and end, like a CPU page-table change.
        // A reader that passes read_retry under its update lock must still see the version it read after read_begin
        // (invariant 8/9), no callback may run after remove returned, and the sequence must end idle.
        int seed = Seed(_output, nameof(ConcurrentInvalidationsInsertsRemovesAndReadersKeepEveryGuarantee));
        const int slots = 8;
        const ulong slotSize = 0x10000;
        long[] version = new long[slots];
        var readerOps = new VersionOps();
        var readers = new MmuIntervalNotifier[slots];
        for (int i = 0; i < slots; i++)
        {
            readers[i] = MmuIntervalNotifier.Insert(_mm, (ulong)i * slotSize, slotSize, readerOps);
        }
        int stop = 0;
        long violations = 0;
        long checks = 0;
        var threads = new List<Thread>();
        for (int w = 0; w < 2; w++)
        {
            int ws = seed + w;
            threads.Add(Start(() =>
            {
                var rng = new Random(ws);
                while (Volatile.Read(ref stop) == 0)
                {
                    int i = rng.Next(slots);
                    var r = Range(_mm, (ulong)i * slotSize, (ulong)(i + 1) * slotSize);
                    N.InvalidateRangeStart(r);
                    Interlocked.Increment(ref version[i]);
                    N.InvalidateRangeEnd(r);
                }
            }, "writer"));
        }
        threads.Add(Start(() =>
        {
            var rng = new Random(seed + 10);
            while (Volatile.Read(ref stop) == 0)
            {
                int i = rng.Next(slots);
                MmuIntervalNotifier sub = readers[i];
                long seq = sub.ReadBegin();
                long v = Volatile.Read(ref version[i]);
                lock (readerOps.UpdateLock)
                {
                    if (!sub.ReadRetry(seq))
                    {
                        Interlocked.Increment(ref checks);
                        if (Volatile.Read(ref version[i]) != v)
                        {
                            Interlocked.Increment(ref violations);
                        }
                    }
                }
            }
        }, "reader"));
        threads.Add(Start(() =>
        {
            var rng = new Random(seed + 20);
            while (Volatile.Read(ref stop) == 0)
            {
                var o = new GuardOps();
                var s = MmuIntervalNotifier.Insert(_mm, (ulong)rng.Next(slots) * slotSize, slotSize * 2, o);
                Thread.SpinWait(rng.Next(200));
                s.Remove();
                Volatile.Write(ref o.Removed, 1);
            }
        }, "churn"));
        Thread.Sleep(1500);
        Volatile.Write(ref stop, 1);
        threads.ForEach(Join);
        Assert.Equal(0, Interlocked.Read(ref violations));
        Assert.True(Interlocked.Read(ref checks) > 0, "the reader never got a stable read");
        Assert.Equal(0, GuardOps.LateCalls);
        Assert.Equal(0, N.ActiveRanges);
        Assert.Equal(0, N.InvalidateSeq & 1);
        Assert.Equal(0, N.Warnings);
        N.ValidateTree();
        Assert.Equal(slots, N.IntervalCount);
        foreach (MmuIntervalNotifier s in readers)
        {
            s.Remove();
        }
    }

    private sealed class VersionOps : IMmuIntervalNotifierOps
    {
        public readonly Lock UpdateLock = new();

        public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
        {
            lock (UpdateLock)
            {
                subscription.SetSeq(curSeq);
            }
            return true;
        }
    }

    private sealed class GuardOps : IMmuIntervalNotifierOps
    {
        public static long LateCalls;
        public int Removed;

        public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
        {
            if (Volatile.Read(ref Removed) != 0)
            {
                Interlocked.Increment(ref LateCalls);
            }
            subscription.SetSeq(curSeq);
            Thread.SpinWait(50);
            return true;
        }
    }
}

internal delegate bool InvalidateFn(MmuIntervalNotifier sub, in MmuNotifierRange range, long curSeq);

internal sealed class CallbackOps(InvalidateFn fn) : IMmuIntervalNotifierOps
{
    public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq) => fn(subscription, range, curSeq);
}
