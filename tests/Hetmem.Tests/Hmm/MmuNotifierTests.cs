using Hetmem.Mm;
using Hetmem.Physical;
using Xunit.Abstractions;
using static Hetmem.Tests.Hmm.Kit;

namespace Hetmem.Tests.Hmm;

/// <summary>Classic (whole-mm) notifier rules of spec §1.4 and §1.7, and invariant 13 of §7.</summary>
public sealed class MmuNotifierTests(ITestOutputHelper output) : IDisposable
{
    private readonly PhysicalMemory _mem = Memory();

    public void Dispose() => _mem.Dispose();

    [Fact]
    public void EveryStartIsPairedWithOneEndCarryingTheSameRange()
    {
        var mm = new AddressSpace(_mem);
        var n = new PairChecker();
        mm.RegisterNotifier(n);
        ulong a = mm.Mmap(0, 64 * Kib4, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(mm))
        {
            for (ulong i = 0; i < 64; i++)
            {
                cpu.Write(a + i * Kib4, i);
            }
        }
        mm.Mprotect(a, 32 * Kib4, Prot.Read);
        mm.Madvise(a + 32 * Kib4, 8 * Kib4, Advice.DontNeed);
        AddressSpace child = mm.Fork();
        mm.Munmap(a, 16 * Kib4);
        child.Exit();
        Assert.Equal(0, n.Open);
        Assert.True(n.Pairs >= 4, $"{n.Pairs} brackets");
        Assert.Contains(MmuNotifierEvent.ProtectionVma, n.Events);
        Assert.Contains(MmuNotifierEvent.Clear, n.Events);
        Assert.Contains(MmuNotifierEvent.ProtectionPage, n.Events);
        Assert.Contains(MmuNotifierEvent.Unmap, n.Events);
        mm.Exit();
        Assert.Equal(1, n.Releases);
        Assert.Equal(0, n.Open);
    }

    [Fact]
    public void UnregisterDeliversReleaseOnceAndNothingAfterward()
    {
        var mm = new AddressSpace(_mem);
        ulong a = mm.Mmap(0, 4 * Kib4, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        var n = new RecordingNotifier();
        mm.RegisterNotifier(n);
        Assert.Same(mm, n.Space);
        mm.UnregisterNotifier(n);
        Assert.Equal(1, n.Releases);
        Assert.Null(n.Space);
        mm.Munmap(a, 4 * Kib4);
        mm.Exit();
        Assert.Equal(1, n.Releases);
        Assert.Equal(0, n.Starts);
        mm.UnregisterNotifier(n); // not listed: no second release
        Assert.Equal(1, n.Releases);
    }

    [Fact]
    public void RegisteringTwiceOrOnADeadAddressSpaceIsEinval()
    {
        var mm = new AddressSpace(_mem);
        var n = new RecordingNotifier();
        mm.RegisterNotifier(n);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.RegisterNotifier(n)).Errno);
        mm.Exit();
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.RegisterNotifier(new RecordingNotifier())).Errno);
        Assert.Equal(1, n.Releases);
    }

    [Fact]
    public void UnregisterWaitsForACallbackThatIsRunning()
    {
        var mm = new AddressSpace(_mem);
        var n = new SlowStart { Entered = new(false), Gate = new(false) };
        mm.RegisterNotifier(n);
        var r = Range(mm, 0x100000, 0x101000);
        Thread inv = Start(() =>
        {
            mm.Notifiers.InvalidateRangeStart(r);
            mm.Notifiers.InvalidateRangeEnd(r);
        }, "invalidate");
        Assert.True(n.Entered.Wait(TimeSpan.FromSeconds(30)));
        Thread un = Start(() => mm.UnregisterNotifier(n), "unregister");
        StaysBlocked(un, "unregister returned while a start callback was running");
        n.Gate.Set();
        Join(inv);
        Join(un);
        Assert.Equal(0, Volatile.Read(ref n.Running));
        Assert.Equal(1, n.Releases);
        mm.Exit();
    }

    [Fact]
    public void ExitWaitsForAReleaseThatAConcurrentUnregisterIsRunning()
    {
        var mm = new AddressSpace(_mem);
        var n = new RecordingNotifier { InRelease = new(false), ReleaseGate = new(false) };
        mm.RegisterNotifier(n);
        Thread un = Start(() => mm.UnregisterNotifier(n), "unregister");
        Assert.True(n.InRelease.Wait(TimeSpan.FromSeconds(30)));
        Thread exit = Start(mm.Exit, "exit");
        StaysBlocked(exit, "exit went on to free pages while a release was still running");
        n.ReleaseGate.Set();
        Join(un);
        Join(exit);
        Assert.Equal(1, n.Releases);
    }

    [Fact]
    public void ReleaseIsDeliveredExactlyOnceWhenExitAndUnregisterRace()
    {
        int seed = Seed(output, nameof(ReleaseIsDeliveredExactlyOnceWhenExitAndUnregisterRace));
        var rng = new Random(seed);
        for (int round = 0; round < 200; round++)
        {
            var mm = new AddressSpace(_mem);
            var ns = new RecordingNotifier[3];
            for (int i = 0; i < ns.Length; i++)
            {
                ns[i] = new RecordingNotifier();
                mm.RegisterNotifier(ns[i]);
            }
            int spin = rng.Next(2000);
            using var go = new Barrier(2);
            Thread un = Start(() =>
            {
                go.SignalAndWait();
                Thread.SpinWait(spin);
                mm.UnregisterNotifier(ns[1]);
            }, "unregister");
            go.SignalAndWait();
            mm.Exit();
            Join(un);
            foreach (RecordingNotifier n in ns)
            {
                Assert.True(n.Releases == 1, $"seed {seed} round {round}: {n.Releases} releases");
            }
            Assert.Equal(0, mm.Notifiers.ClassicCount);
        }
    }

    [Fact]
    public void RegisteringWaitsUntilNoInvalidationIsInFlightSoItNeverSeesAnEndWithoutItsStart()
    {
        var mm = new AddressSpace(_mem);
        var r = Range(mm, 0x100000, 0x101000);
        Assert.Equal(Errno.Ok, mm.Notifiers.InvalidateRangeStart(r));
        var n = new PairChecker();
        Thread reg = Start(() => mm.RegisterNotifier(n), "register");
        StaysBlocked(reg, "a classic notifier was registered in the middle of an invalidation");
        mm.Notifiers.InvalidateRangeEnd(r);
        Join(reg);
        Assert.Equal((0, 0), (n.Pairs, n.Open));
        Assert.Equal(Errno.Ok, mm.Notifiers.InvalidateRangeStart(r));
        mm.Notifiers.InvalidateRangeEnd(r);
        Assert.Equal((1, 0), (n.Pairs, n.Open));
        mm.Exit();
    }

    [Fact]
    public void AReleaseCallbackMayUnregisterItsOwnSubscription()
    {
        var mm = new AddressSpace(_mem);
        var n = new SelfUnregistering();
        mm.RegisterNotifier(n);
        Thread exit = Start(mm.Exit, "exit");
        Join(exit);
        Assert.Equal(1, n.Releases);
    }

    private sealed class PairChecker : MmuNotifier
    {
        private readonly Dictionary<(ulong, ulong, MmuNotifierEvent), int> _open = [];
        public readonly List<MmuNotifierEvent> Events = [];
        public int Pairs;
        public int Releases;

        public int Open
        {
            get
            {
                lock (_open)
                {
                    return _open.Values.Sum();
                }
            }
        }

        public override Errno InvalidateRangeStart(in MmuNotifierRange range)
        {
            lock (_open)
            {
                var k = (range.Start, range.End, range.Event);
                _open[k] = _open.GetValueOrDefault(k) + 1;
                Events.Add(range.Event);
            }
            return Errno.Ok;
        }

        public override void InvalidateRangeEnd(in MmuNotifierRange range)
        {
            lock (_open)
            {
                var k = (range.Start, range.End, range.Event);
                Assert.True(_open.GetValueOrDefault(k) > 0, $"end without start for {k}");
                _open[k]--;
                Pairs++;
            }
        }

        public override void Release(AddressSpace space) => Releases++;
    }

    private sealed class SlowStart : RecordingNotifier
    {
        public ManualResetEventSlim? Entered;
        public ManualResetEventSlim? Gate;
        public int Running;

        public override Errno InvalidateRangeStart(in MmuNotifierRange range)
        {
            Interlocked.Increment(ref Running);
            Entered?.Set();
            Gate?.Wait();
            Interlocked.Decrement(ref Running);
            return Errno.Ok;
        }
    }

    private sealed class SelfUnregistering : MmuNotifier
    {
        public int Releases;

        public override void Release(AddressSpace space)
        {
            Releases++;
            space.UnregisterNotifier(this);
        }
    }
}
