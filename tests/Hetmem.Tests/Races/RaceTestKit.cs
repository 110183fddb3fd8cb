using Hetmem.Diagnostics.Scheduling;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;
using Xunit.Abstractions;

namespace Hetmem.Tests.Races;

/// <summary>A property of a race scenario failed (thrown inside a logical thread or a check).</summary>
internal sealed class RaceViolationException(string message) : Exception(message);

/// <summary>
/// A small device mirror for race tests: a device page table (VPN → PFN, writable) under an update lock, the
/// interval-notifier callback that erases entries, and the canonical driver loop — or, when
/// <see cref="SkipReadRetry"/> is set, the classic HMM driver bug: programming device entries under the update lock
/// without mmu_interval_read_retry.
/// </summary>
internal sealed class RaceMirror : IMmuIntervalNotifierOps, IDeviceMirror
{
    private readonly Lock _lock = new();
    private readonly Dictionary<ulong, (ulong Pfn, bool Writable)> _pt = [];   // guarded by _lock

    public RaceMirror(AddressSpace mm, ulong start, ulong length, bool skipReadRetry = false)
    {
        Space = mm;
        SkipReadRetry = skipReadRetry;
        Notifier = MmuIntervalNotifier.Insert(mm, start, length, this);
    }

    public AddressSpace Space { get; }
    public MmuIntervalNotifier Notifier { get; }

    /// <summary>The planted bug: program the device without checking the notifier sequence.</summary>
    public bool SkipReadRetry { get; }

    /// <summary>Called under the update lock for every device access (the property hook of a scenario).</summary>
    public Action<ulong, ulong, bool>? OnDeviceUse { get; set; }

    public Lock UpdateLock => _lock;

    public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
    {
        SchedulePoint.BeforeAcquire(_lock, "mirror_invalidate_lock");
        lock (_lock)
        {
            subscription.SetSeq(curSeq);
            for (ulong va = range.Start & ~(ulong)Page.OffsetMask; va < range.End; va += Page.Size)
            {
                _pt.Remove(va >> Page.Shift);
            }
        }
        return true;
    }

    public Errno ProgramDevice(HmmRange range)
    {
        ulong[] pfns = range.HmmPfns;
        for (int i = 0; i < pfns.Length; i++)
        {
            ulong e = pfns[i];
            if (!HmmPfn.Has(e, HmmPfnFlags.Valid) || HmmPfn.Has(e, HmmPfnFlags.Error))
            {
                continue;
            }
            _pt[(range.Start >> Page.Shift) + (ulong)i] = (HmmPfn.ToPfn(e), HmmPfn.Has(e, HmmPfnFlags.Write));
        }
        return Errno.Ok;
    }

    /// <summary>The device faults one page (the driver's fault handler).</summary>
    public Errno Fault(ulong va, bool write)
    {
        var range = new HmmRange(Notifier, va, va + Page.Size)
        {
            DefaultFlags = HmmPfnFlags.ReqFault | (write ? HmmPfnFlags.ReqWrite : HmmPfnFlags.None),
            PfnFlagsMask = HmmPfnFlags.None,
        };
        return SkipReadRetry ? BuggyFaultAndProgram(range) : HmmMirrorHelper.FaultAndProgram(this, range, timeoutMs: 600_000);
    }

    /// <summary>The device accesses the page through its own page table (no fault): reports the use to the property hook.</summary>
    public bool Use(ulong va, bool write)
    {
        lock (_lock)
        {
            if (!_pt.TryGetValue(va >> Page.Shift, out (ulong Pfn, bool Writable) e) || (write && !e.Writable))
            {
                return false;
            }
            OnDeviceUse?.Invoke(va, e.Pfn, write);
            return true;
        }
    }

    public bool TryGet(ulong va, out ulong pfn, out bool writable)
    {
        lock (_lock)
        {
            bool found = _pt.TryGetValue(va >> Page.Shift, out (ulong Pfn, bool Writable) e);
            pfn = e.Pfn;
            writable = e.Writable;
            return found;
        }
    }

    /// <summary>The canonical loop with the mmu_interval_read_retry check left out (the planted bug).</summary>
    private Errno BuggyFaultAndProgram(HmmRange range)
    {
        while (true)
        {
            range.NotifierSeq = range.Notifier.ReadBegin();
            Errno r;
            Space.MmapLock.EnterRead();
            try
            {
                r = range.Fault();
            }
            finally
            {
                Space.MmapLock.ExitRead();
            }
            if (r == Errno.EBUSY)
            {
                continue;
            }
            if (r != Errno.Ok)
            {
                return r;
            }
            SchedulePoint.BeforeAcquire(_lock, "device_update_lock");
            lock (_lock)
            {
                // BUG (deliberate): no range.Notifier.ReadRetry(range.NotifierSeq) here.
                return ProgramDevice(range);
            }
        }
    }
}

/// <summary>
/// The physical memory of one execution: fresh per execution so that PFNs, and therefore violation messages, are the
/// same when a schedule is replayed; <see cref="Close"/> checks that every frame came back.
/// </summary>
internal sealed class RaceWorld
{
    private readonly long _usedAtStart;

    public RaceWorld()
    {
        Memory = new PhysicalMemory(16UL << 20);
        _usedAtStart = Memory.UsedFrames;
    }

    public PhysicalMemory Memory { get; }

    /// <summary>Disposes the memory after checking the frame balance (after the world's users released everything).</summary>
    public void Close(long extraFramesAtStart = 0)
    {
        long used = Memory.UsedFrames;
        Memory.Dispose();
        RaceKit.Require(used == _usedAtStart + extraFramesAtStart, $"frame leak: {used} frames in use at the end, {_usedAtStart + extraFramesAtStart} at the start");
    }
}

/// <summary>Runs explorations and prints what they did (stats, seeds, violating schedules and their traces).</summary>
internal static class RaceKit
{
    /// <summary>Seed for the random strategies: HETMEM_SEED when set, else a fixed default (printed either way).</summary>
    public static int Seed(ITestOutputHelper output, string test, int fallback)
    {
        string? env = Environment.GetEnvironmentVariable("HETMEM_SEED");
        int seed = env is not null && int.TryParse(env, out int s) ? s : fallback;
        Log(output, $"{test}: seed {seed} (reproduce with HETMEM_SEED={seed})");
        return seed;
    }

    public static ExplorationReport Explore(ITestOutputHelper output, string name, Func<RaceScenario> factory, ISchedulingStrategy strategy, ExplorationOptions? options = null)
    {
        ExplorationReport report = RaceExplorer.Explore(factory, strategy, options);
        Log(output, $"{name}: {report}");
        foreach (ExecutionResult v in report.Violations)
        {
            Log(output, $"  violation: {v.Failure}");
            Log(output, $"  schedule (replay with RaceExplorer.Replay): {v.Schedule}");
        }
        if (report.Violations.Count > 0)
        {
            output.WriteLine("  trace of the first violation:" + Environment.NewLine + report.Violations[0].FormatTrace());
        }
        return report;
    }

    public static void Log(ITestOutputHelper output, string line)
    {
        output.WriteLine(line);
        Console.WriteLine(line);
    }

    /// <summary>Throws a <see cref="RaceViolationException"/> when <paramref name="ok"/> is false.</summary>
    public static void Require(bool ok, string message)
    {
        if (!ok)
        {
            throw new RaceViolationException(message);
        }
    }
}
