using System.Collections.Concurrent;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Hmm;

/// <summary>An interval-notifier callback that records what it saw and can be told to block or refuse.</summary>
internal sealed class RecordingOps : IMmuIntervalNotifierOps
{
    public readonly ConcurrentQueue<(MmuNotifierEvent Event, ulong Start, ulong End, bool Blockable, long CurSeq, long MmSeqDuring)> Calls = new();
    public readonly Lock UpdateLock = new();
    public bool SetSeq = true;
    public bool Refuse;
    public ManualResetEventSlim? Entered;
    public ManualResetEventSlim? Gate;
    public int Count => Calls.Count;

    public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
    {
        if (Refuse && !range.Blockable)
        {
            Calls.Enqueue((range.Event, range.Start, range.End, range.Blockable, curSeq, -1));
            return false;
        }
        Entered?.Set();
        Gate?.Wait();
        lock (UpdateLock)
        {
            if (SetSeq)
            {
                subscription.SetSeq(curSeq);
            }
            Calls.Enqueue((range.Event, range.Start, range.End, range.Blockable, curSeq, subscription.Space.Notifiers.InvalidateSeq));
        }
        return !Refuse;
    }
}

/// <summary>A classic notifier that records its callbacks.</summary>
internal class RecordingNotifier : MmuNotifier
{
    public readonly ConcurrentQueue<string> Log = new();
    public int Releases;
    public int Starts;
    public int Ends;
    public bool FailNonBlocking;
    public bool ImplementsEnd = true;
    public ManualResetEventSlim? InRelease;
    public ManualResetEventSlim? ReleaseGate;

    public override Errno InvalidateRangeStart(in MmuNotifierRange range)
    {
        Interlocked.Increment(ref Starts);
        Log.Enqueue($"start {range.Event} {range.Blockable}");
        return FailNonBlocking && !range.Blockable ? Errno.EAGAIN : Errno.Ok;
    }

    public override void InvalidateRangeEnd(in MmuNotifierRange range)
    {
        if (!ImplementsEnd)
        {
            return;
        }
        Interlocked.Increment(ref Ends);
        Log.Enqueue($"end {range.Event}");
    }

    public override void Release(AddressSpace space)
    {
        InRelease?.Set();
        ReleaseGate?.Wait();
        Interlocked.Increment(ref Releases);
        Log.Enqueue("release");
    }
}

/// <summary>Small helpers shared by the HMM tests.</summary>
internal static class Kit
{
    public const ulong Kib4 = 4096;
    public const ulong Mib = 1UL << 20;

    public static PhysicalMemory Memory() => new(64UL << 20);

    public static MmuNotifierRange Range(AddressSpace mm, ulong start, ulong end, MmuNotifierEvent ev = MmuNotifierEvent.Clear, bool blockable = true)
        => new(mm, start, end, ev, blockable);

    /// <summary>Runs <paramref name="action"/> on a new thread and returns it started.</summary>
    public static Thread Start(Action action, string name = "helper")
    {
        var t = new Thread(() => action()) { IsBackground = true, Name = name };
        t.Start();
        return t;
    }

    /// <summary>Joins a helper thread; fails the test instead of hanging it.</summary>
    public static void Join(Thread t)
        => Assert.True(t.Join(TimeSpan.FromSeconds(60)), $"thread {t.Name} did not finish (deadlock?)");

    /// <summary>Gives a thread that should stay blocked a chance to (wrongly) get through.</summary>
    public static void StaysBlocked(Thread t, string what)
        => Assert.False(t.Join(100), what);

    public static int Seed(Xunit.Abstractions.ITestOutputHelper output, string test)
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("HETMEM_SEED"), out int s) ? s : Environment.TickCount;
        output.WriteLine($"{test}: seed {seed} (set HETMEM_SEED to replay)");
        return seed;
    }
}
