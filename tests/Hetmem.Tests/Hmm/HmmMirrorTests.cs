using System.Collections.Concurrent;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using static Hetmem.Tests.Hmm.Kit;

namespace Hetmem.Tests.Hmm;

/// <summary>A 5.1-era mirror that records its updates and can refuse non-blocking ones.</summary>
internal sealed class RecordingMirror : HmmMirror
{
    public readonly ConcurrentQueue<HmmUpdate> Updates = new();
    public readonly Lock UpdateLock = new();
    public bool RefuseNonBlocking;
    public int Releases;
    public Action? OnRelease;

    public override Errno SyncCpuDevicePagetables(HmmUpdate update)
    {
        if (RefuseNonBlocking && !update.Blockable)
        {
            return Errno.EAGAIN;
        }
        lock (UpdateLock)
        {
            Updates.Enqueue(update);
        }
        return Errno.Ok;
    }

    public override void Release()
    {
        Interlocked.Increment(ref Releases);
        OnRelease?.Invoke();
    }
}

/// <summary>The 5.1-era API of spec §3 (mirror, struct hmm, range register/wait/snapshot/fault, encodings, hugetlb page shift) and invariants 15–18.</summary>
public sealed class HmmMirrorTests : IDisposable
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    /// <summary>Nouveau-like: V/W/VRAM in bits 0..2, NONE 0, ERROR = SPECIAL = ~V, PFN from bit 8.</summary>
    internal static readonly HmmPfnEncoding Nouveau = HmmPfnEncoding.NouveauStyle;

    /// <summary>A second, deliberately different encoding: flags high in the low byte, distinct values, PFN from bit 4.</summary>
    internal static readonly HmmPfnEncoding Other = new(valid: 1UL << 3, write: 1UL << 1, devicePrivate: 1UL << 0, error: 0xEEEE, none: 0x4, special: 0x5A5A, pfnShift: 4);

    public static TheoryData<string> Encodings => new() { "nouveau", "other" };

    private static HmmPfnEncoding Enc(string name) => name == "nouveau" ? Nouveau : Other;

    private readonly HmmTestBed _bed = new(swapSlots: 64);
    private readonly AddressSpace _mm;
    private readonly PhysicalMemory _mem;

    public HmmMirrorTests()
    {
        _mm = _bed.NewSpace();
        _mem = _bed.Memory;
    }

    public void Dispose() => _bed.Dispose();

    private ulong MapAnon(ulong pages, Prot prot = Rw) => _mm.Mmap(0, pages * Kib4, prot, Anon);

    private void Touch(ulong va, ulong pages)
    {
        using var cpu = new Cpu(_mm);
        for (ulong i = 0; i < pages; i++)
        {
            cpu.Write(va + i * Kib4, (long)(va + i * Kib4));
        }
    }

    private HmmMirrorRange Registered(HmmPfnEncoding enc, ulong start, ulong end, int shift = Page.Shift)
    {
        var r = new HmmMirrorRange(enc);
        Assert.Equal(Errno.Ok, r.Register(_mm, start, end, shift));
        _bed.Own(new Unreg(r));
        return r;
    }

    private sealed class Unreg(HmmMirrorRange r) : IDisposable
    {
        public void Dispose() => r.Unregister();
    }

    private static Errno Snapshot(HmmMirrorRange r, out long valid)
    {
        AddressSpace mm = r.Hmm!.Space;
        using (mm.MmapLock.Read())
        {
            return r.Snapshot(out valid);
        }
    }

    /// <summary>Fault under the read lock; checks invariant 16 (EAGAIN ⇔ the lock was released).</summary>
    private static Errno FaultChecked(HmmMirrorRange r, bool block, out long valid)
    {
        AddressSpace mm = r.Hmm!.Space;
        mm.MmapLock.EnterRead();
        Errno e = r.Fault(block, out valid);
        bool held = mm.MmapLock.IsReadHeld;
        if (held)
        {
            mm.MmapLock.ExitRead();
        }
        Assert.True(held == (e != Errno.EAGAIN), $"{e} returned with the mmap lock {(held ? "held" : "released")} (invariant 16)");
        return e;
    }

    // ---- mirrors and struct hmm -------------------------------------------------------------------------------

    [Fact]
    public void MirrorsShareOneReferenceCountedStateWithOneClassicNotifier()
    {
        var m1 = new RecordingMirror();
        var m2 = new RecordingMirror();
        Assert.Equal(Errno.Ok, m1.Register(_mm));
        Assert.Equal(Errno.Ok, m2.Register(_mm));
        HmmState hmm = m1.Hmm!;
        Assert.Same(hmm, m2.Hmm);
        Assert.Same(hmm, HmmState.Find(_mm));
        Assert.Equal((2, 2, 1), (hmm.References, hmm.MirrorCount, _mm.Notifiers.ClassicCount));
        Assert.Equal(Errno.EINVAL, m1.Register(_mm));
        Assert.Equal(Errno.EINVAL, new RecordingMirror().Register(null!));
        var range = new HmmMirrorRange(Nouveau);
        ulong a = MapAnon(1);
        Assert.Equal(Errno.Ok, range.Register(_mm, a, a + Kib4));
        Assert.Equal(3, hmm.References);
        m1.Unregister();
        m1.Unregister();
        range.Unregister();
        Assert.Equal((1, 1), (hmm.References, hmm.MirrorCount));
        m2.Unregister();
        Assert.Null(HmmState.Find(_mm));
        Assert.Equal(0, _mm.Notifiers.ClassicCount);
        Assert.Equal(0, m1.Releases + m2.Releases);
    }

    [Fact]
    public void EveryMirrorGetsEachInvalidationSynchronouslyWithItsRangeAndBlockability()
    {
        var m1 = new RecordingMirror();
        var m2 = new RecordingMirror();
        m1.Register(_mm);
        m2.Register(_mm);
        ulong a = MapAnon(4);
        Touch(a, 4);
        _mm.Munmap(a + Kib4, Kib4);
        foreach (RecordingMirror m in new[] { m1, m2 })
        {
            HmmUpdate u = Assert.Single(m.Updates);
            Assert.Equal(new HmmUpdate(HmmUpdateEvent.Invalidate, a + Kib4, a + 2 * Kib4, true), u);
        }
        m1.Unregister();
        m2.Unregister();
    }

    [Fact]
    public void ANonBlockingInvalidationThatAMirrorRefusesIsEagainAndStaysBalanced()
    {
        var m = new RecordingMirror { RefuseNonBlocking = true };
        m.Register(_mm);
        ulong a = MapAnon(1);
        HmmMirrorRange r = Registered(Nouveau, a, a + Kib4);
        var nb = new MmuNotifierRange(_mm, a, a + Kib4, MmuNotifierEvent.Unmap, Blockable: false);
        Assert.Equal(Errno.EAGAIN, _mm.Notifiers.InvalidateRangeStart(nb));
        Assert.Equal(0, m.Hmm!.InFlightInvalidations);
        Assert.True(r.Valid);
        Assert.Equal(0, m.Hmm.MirrorWarnings);
        // A blocking invalidation is never refused.
        var b = nb with { Blockable = true };
        Assert.Equal(Errno.Ok, _mm.Notifiers.InvalidateRangeStart(b));
        Assert.False(r.Valid);
        _mm.Notifiers.InvalidateRangeEnd(b);
        Assert.True(r.Valid);
        m.Unregister();
    }

    [Fact]
    public void ANonBlockingInvalidationFindingTheRangeLockTakenIsEagainAndStaysBalanced()
    {
        ulong a = MapAnon(1);
        HmmMirrorRange r = Registered(Nouveau, a, a + Kib4);
        HmmState hmm = r.Hmm!;
        var nb = new MmuNotifierRange(_mm, a, a + Kib4, MmuNotifierEvent.Unmap, Blockable: false);
        Errno result = Errno.Ok;
        lock (hmm.SyncRoot)
        {
            Thread t = Start(() => result = _mm.Notifiers.InvalidateRangeStart(nb), "oom-reaper");
            Join(t);
        }
        Assert.Equal(Errno.EAGAIN, result);
        Assert.Equal(0, hmm.InFlightInvalidations);
        Assert.True(r.Valid);
    }

    [Fact]
    public void ExitReleasesEachMirrorOnceMarksTheStateDeadAndWakesWaiters()
    {
        AddressSpace mm = _bed.NewSpace();
        ulong a = mm.Mmap(0, Kib4, Rw, Anon);
        var m = new RecordingMirror();
        var selfUnregistering = new RecordingMirror();
        selfUnregistering.OnRelease = selfUnregistering.Unregister;
        m.Register(mm);
        selfUnregistering.Register(mm);
        var r = new HmmMirrorRange(Nouveau);
        Assert.Equal(Errno.Ok, r.Register(mm, a, a + Kib4));
        HmmState hmm = r.Hmm!;
        // A waiter for an invalid range is woken by the release with "false".
        var inv = new MmuNotifierRange(mm, a, a + Kib4, MmuNotifierEvent.Clear);
        mm.Notifiers.InvalidateRangeStart(inv);
        bool? waited = null;
        Thread w = Start(() => waited = r.WaitUntilValid(60_000), "wait_until_valid");
        StaysBlocked(w, "wait_until_valid returned while the range was invalid");
        mm.Notifiers.InvalidateRangeEnd(inv);
        Join(w);
        Assert.True(waited);
        mm.Exit();
        Assert.True(hmm.IsDead);
        Assert.Equal((1, 1), (m.Releases, selfUnregistering.Releases));
        Assert.Equal(0, hmm.MirrorCount);
        Assert.False(r.Valid);
        Assert.False(r.WaitUntilValid(60_000));
        using (mm.MmapLock.Read())
        {
            Assert.Equal(Errno.EFAULT, r.Snapshot(out _));
        }
        m.Unregister();
        r.Unregister();
        Assert.Equal(1, m.Releases);
        Assert.Equal(Errno.EFAULT, new HmmMirrorRange(Nouveau).Register(mm, a, a + Kib4));
        Assert.Equal(Errno.ENOMEM, new RecordingMirror().Register(mm));
    }

    // ---- range register, valid, wait --------------------------------------------------------------------------

    [Fact]
    public void RegisterChecksAlignmentAndOrderAndIsValidOnlyWithoutInvalidationsInFlight()
    {
        ulong a = MapAnon(4);
        var r = new HmmMirrorRange(Nouveau);
        Assert.Equal(Errno.EINVAL, r.Register(_mm, a + 1, a + Kib4));
        Assert.Equal(Errno.EINVAL, r.Register(_mm, a, a));
        Assert.Equal(Errno.EINVAL, r.Register(_mm, a + Kib4, a));
        Assert.Equal(Errno.EINVAL, r.Register(_mm, a, a + Kib4, 21));
        var inv = new MmuNotifierRange(_mm, 0x7000_0000_0000, 0x7000_0000_1000, MmuNotifierEvent.Clear);
        var m = new RecordingMirror();
        m.Register(_mm);
        _mm.Notifiers.InvalidateRangeStart(inv);
        Assert.Equal(Errno.Ok, r.Register(_mm, a, a + 4 * Kib4));
        Assert.False(r.Valid);   // an invalidation is in flight, even far away
        Assert.Equal(4, r.Count);
        _mm.Notifiers.InvalidateRangeEnd(inv);
        Assert.True(r.Valid);
        Assert.True(r.WaitUntilValid(0));
        Assert.Equal(Errno.EINVAL, r.Register(_mm, a, a + Kib4));
        r.Unregister();
        Assert.False(r.Valid);
        r.Unregister();
        m.Unregister();
    }

    [Fact]
    public void ValidDropsOnAnyOverlappingStartAndReturnsOnlyWhenAllInvalidationsEnded()
    {
        ulong a = 0x4000_0000;
        HmmMirrorRange r = Registered(Nouveau, a, a + 4 * Kib4);
        HmmMirrorRange after = Registered(Nouveau, a + 8 * Kib4, a + 12 * Kib4);
        HmmMirrorRange before = Registered(Nouveau, a - 8 * Kib4, a - 4 * Kib4);
        var i1 = new MmuNotifierRange(_mm, a + 3 * Kib4, a + 8 * Kib4, MmuNotifierEvent.Clear);
        var i2 = new MmuNotifierRange(_mm, a - 4 * Kib4, a, MmuNotifierEvent.Clear);
        _mm.Notifiers.InvalidateRangeStart(i1);
        Assert.False(r.Valid);
        Assert.False(after.Valid);  // the kernel's test: a range starting exactly at update.end is hit as well
        Assert.True(before.Valid);
        _mm.Notifiers.InvalidateRangeStart(i2);
        Assert.True(before.Valid);  // ends exactly at update.start: not hit
        _mm.Notifiers.InvalidateRangeEnd(i1);
        Assert.False(r.Valid);      // i2 is still in flight
        Assert.Equal(1, r.Hmm!.InFlightInvalidations);
        _mm.Notifiers.InvalidateRangeEnd(i2);
        Assert.True(r.Valid && after.Valid && before.Valid);
    }

    [Fact]
    public void WaitUntilValidTimesOutWithFalseAndReturnsTrueOnceValid()
    {
        ulong a = MapAnon(1);
        HmmMirrorRange r = Registered(Nouveau, a, a + Kib4);
        Assert.True(r.WaitUntilValid(0));
        var inv = new MmuNotifierRange(_mm, a, a + Kib4, MmuNotifierEvent.Clear);
        _mm.Notifiers.InvalidateRangeStart(inv);
        Assert.False(r.WaitUntilValid(20));
        bool? got = null;
        Thread t = Start(() => got = r.WaitUntilValid(60_000), "wait");
        StaysBlocked(t, "wait_until_valid returned early");
        _mm.Notifiers.InvalidateRangeEnd(inv);
        Join(t);
        Assert.True(got);
    }

    // ---- snapshot and fault -----------------------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(Encodings))]
    public void ASnapshotEncodesPagesWithTheDriversFlagsAndValuesVerbatim(string name)
    {
        HmmPfnEncoding enc = Enc(name);
        ulong a = MapAnon(4);
        Touch(a, 2);
        using (var cpu = new Cpu(_mm))
        {
            _ = cpu.Read<long>(a + 2 * Kib4);   // zero page
        }
        HmmMirrorRange r = Registered(enc, a, a + 4 * Kib4);
        Assert.Equal(Errno.Ok, Snapshot(r, out long valid));
        Assert.Equal(4, valid);
        for (int i = 0; i < 2; i++)
        {
            ulong pfn = _mm.QueryPte(a + (ulong)i * Kib4, out _).Pfn;
            Assert.Equal((pfn << enc.PfnShift) | enc.Valid | enc.Write, r.Pfns[i]);
            Assert.Equal(pfn, enc.ToPfn(r.Pfns[i]));
            Assert.True(enc.IsWritable(r.Pfns[i]));
        }
        Assert.Equal(enc.FromPfn(_mem.ZeroPfn), r.Pfns[2]);   // later-kernel behaviour: valid, read-only
        Assert.Equal(enc.None, r.Pfns[3]);
        Assert.Equal(ulong.MaxValue, enc.ToPfn(enc.None));
        Assert.Equal(ulong.MaxValue, enc.ToPfn(enc.Error));
        Assert.Equal(ulong.MaxValue, enc.ToPfn(enc.Special));
    }

    [Theory]
    [MemberData(nameof(Encodings))]
    public void AFaultHonoursTheDriversRequestBitsDefaultFlagsAndMask(string name)
    {
        HmmPfnEncoding enc = Enc(name);
        ulong a = MapAnon(4);
        HmmMirrorRange r = Registered(enc, a, a + 4 * Kib4);
        r.DefaultFlags = enc.Valid;
        r.PfnFlagsMask = enc.Write;
        r.Pfns[1] = enc.Write;
        r.Pfns[3] = enc.Write;
        Assert.Equal(Errno.Ok, FaultChecked(r, block: true, out long valid));
        Assert.Equal(4, valid);
        Assert.Equal(enc.FromPfn(_mem.ZeroPfn), r.Pfns[0]);
        Assert.True(enc.IsWritable(r.Pfns[1]) && enc.IsWritable(r.Pfns[3]));
        Assert.Equal(_mm.QueryPte(a + Kib4, out _).Pfn, enc.ToPfn(r.Pfns[1]));
        Assert.False(enc.IsWritable(r.Pfns[2]));
    }

    [Fact]
    public void SnapshotAndFaultRejectGapsAndSpecialVmasWithEfaultAndUnreadableOnesWithEperm()
    {
        ulong a = MapAnon(2);
        HmmMirrorRange gap = Registered(Nouveau, a + 2 * Kib4, a + 3 * Kib4);
        Assert.Equal(Errno.EFAULT, Snapshot(gap, out _));
        Assert.Equal(Errno.EFAULT, FaultChecked(gap, true, out _));
        ulong mixed = _mm.MapMixedPages(0, Kib4, Rw, MapFlags.Shared);
        Assert.Equal(Errno.EFAULT, Snapshot(Registered(Nouveau, mixed, mixed + Kib4), out _));
        ulong frame = _mem.Allocate(0, zero: true);
        ulong pfnmap = _mm.MapPfnRange(0, frame, 1, Rw);
        Assert.Equal(Errno.EFAULT, Snapshot(Registered(Nouveau, pfnmap, pfnmap + Kib4), out _));
        ulong none = MapAnon(2, Prot.None);
        HmmMirrorRange unreadable = Registered(Other, none, none + 2 * Kib4);
        unreadable.Pfns[0] = 0x1234;
        Assert.Equal(Errno.EPERM, Snapshot(unreadable, out _));
        Assert.All(unreadable.Pfns, e => Assert.Equal(Other.None, e));
        _mm.Munmap(pfnmap, Kib4);
        _mem.Put(frame);
    }

    [Fact]
    public void AnInvalidRangeIsEagainForSnapshotWithTheLockHeldAndForFaultWithTheLockReleased()
    {
        ulong a = MapAnon(1);
        HmmMirrorRange r = Registered(Nouveau, a, a + Kib4);
        var inv = new MmuNotifierRange(_mm, a, a + Kib4, MmuNotifierEvent.Clear);
        _mm.Notifiers.InvalidateRangeStart(inv);
        _mm.MmapLock.EnterRead();
        Assert.Equal(Errno.EAGAIN, r.Snapshot(out _));
        Assert.True(_mm.MmapLock.IsReadHeld);
        _mm.MmapLock.ExitRead();
        Assert.Equal(Errno.EAGAIN, FaultChecked(r, block: true, out _));
        _mm.Notifiers.InvalidateRangeEnd(inv);
        Assert.Equal(Errno.Ok, FaultChecked(r, block: true, out _));
    }

    [Fact]
    public void ANonBlockingFaultThatHadToSwapInReleasesTheLockWithEagainAndTheRetrySucceeds()
    {
        ulong a = MapAnon(2);
        Touch(a, 2);
        _mm.Madvise(a, 2 * Kib4, Advice.PageOut);
        HmmMirrorRange r = Registered(Nouveau, a, a + 2 * Kib4);
        r.DefaultFlags = Nouveau.Valid;
        int eagain = 0;
        Errno e;
        while ((e = FaultChecked(r, block: false, out _)) == Errno.EAGAIN)
        {
            eagain++;
            Assert.True(r.WaitUntilValid());
            Assert.True(eagain < 10);
        }
        Assert.Equal(Errno.Ok, e);
        Assert.True(eagain >= 1);
        Assert.All(r.Pfns, p => Assert.NotEqual(ulong.MaxValue, Nouveau.ToPfn(p)));
        // Blocking faults never give up the lock.
        _mm.Madvise(a, 2 * Kib4, Advice.PageOut);
        Assert.Equal(Errno.Ok, FaultChecked(r, block: true, out _));
    }

    [Fact]
    public void AFaultWhoseOwnCopyOnWriteInvalidationAlreadyEndedSucceedsWithANewWritablePage()
    {
        ulong a = MapAnon(1);
        using (var cpu = new Cpu(_mm))
        {
            _ = cpu.Read<long>(a);
        }
        HmmMirrorRange r = Registered(Nouveau, a, a + Kib4);
        r.DefaultFlags = Nouveau.Valid | Nouveau.Write;
        // The COW's CLEAR started and ended inside the fault: the range is valid again at the re-walk (5.1 semantics).
        Assert.Equal(Errno.Ok, FaultChecked(r, block: true, out long valid));
        Assert.Equal(1, valid);
        Assert.True(Nouveau.IsWritable(r.Pfns[0]));
        Assert.NotEqual(_mem.ZeroPfn, Nouveau.ToPfn(r.Pfns[0]));
    }

    [Fact]
    public void AFaultThatLeavesAnOverlappingInvalidationInFlightIsEbusyAndSucceedsAfterWaiting()
    {
        ulong a = MapAnon(1);
        using (var cpu = new Cpu(_mm))
        {
            _ = cpu.Read<long>(a);
        }
        HmmMirrorRange r = Registered(Nouveau, a, a + Kib4);
        using var started = new ManualResetEventSlim(false);
        using var finish = new ManualResetEventSlim(false);
        var other = new MmuNotifierRange(_mm, a, a + Kib4, MmuNotifierEvent.ProtectionPage);
        Thread? helper = null;
        var m = new HookMirror(u =>
        {
            if (helper is null && u.Start == a)
            {
                // While the COW's CLEAR runs, another thread opens an invalidation over the page and keeps it open.
                helper = Start(() =>
                {
                    _mm.Notifiers.InvalidateRangeStart(other);
                    started.Set();
                    finish.Wait();
                    _mm.Notifiers.InvalidateRangeEnd(other);
                }, "invalidator");
                started.Wait();
            }
        });
        Assert.Equal(Errno.Ok, m.Register(_mm));
        r.DefaultFlags = Nouveau.Valid | Nouveau.Write;
        Assert.Equal(Errno.EBUSY, FaultChecked(r, block: true, out long valid));
        Assert.Equal(0, valid);
        Assert.Equal(Nouveau.None, r.Pfns[0]);
        Assert.False(r.WaitUntilValid(20));
        finish.Set();
        Join(helper!);
        Assert.True(r.WaitUntilValid());
        Assert.Equal(Errno.Ok, FaultChecked(r, block: true, out valid));
        Assert.True(Nouveau.IsWritable(r.Pfns[0]));
        m.Unregister();
    }

    private sealed class HookMirror(Action<HmmUpdate> hook) : HmmMirror
    {
        public override Errno SyncCpuDevicePagetables(HmmUpdate update)
        {
            hook(update);
            return Errno.Ok;
        }
    }

    [Fact]
    public void AFaultErrorSetsTheRemainingEntriesToNone()
    {
        ulong a = MapAnon(4, Prot.Read);
        HmmMirrorRange r = Registered(Other, a, a + 4 * Kib4);
        Array.Fill(r.Pfns, 0x77UL);
        r.DefaultFlags = Other.Valid | Other.Write;
        Assert.Equal(Errno.EPERM, FaultChecked(r, true, out long valid));
        Assert.Equal(0, valid);
        Assert.All(r.Pfns, e => Assert.Equal(Other.None, e));
    }

    [Fact]
    public void DevicePrivatePagesOfAnyOwnerAreReportedAndFaultedBackOnlyWhenAskedFor()
    {
        object owner = new();
        var dev = _bed.Own(new TestDevicePrivateMemory(_mem, 4, owner));
        ulong a = MapAnon(2);
        Touch(a, 2);
        ulong d0 = dev.MoveToDevice(_mm, a, writable: true);
        ulong d1 = dev.MoveToDevice(_mm, a + Kib4, writable: false);
        HmmMirrorRange r = Registered(Nouveau, a, a + 2 * Kib4);
        Assert.Equal(Errno.Ok, Snapshot(r, out _));
        Assert.Equal(Nouveau.FromPfn(d0) | Nouveau.Write | Nouveau.DevicePrivate, r.Pfns[0]);
        Assert.Equal(Nouveau.FromPfn(d1) | Nouveau.DevicePrivate, r.Pfns[1]);
        r.DefaultFlags = Nouveau.Valid | Nouveau.Write;
        Assert.Equal(Errno.Ok, FaultChecked(r, true, out _));
        Assert.Equal(0, dev.MigratedBack);
        Assert.Equal(Nouveau.FromPfn(d1) | Nouveau.DevicePrivate, r.Pfns[1]);
        r.DefaultFlags = Nouveau.Valid | Nouveau.DevicePrivate;
        Errno e;
        while ((e = FaultChecked(r, true, out _)) == Errno.EBUSY)
        {
            r.WaitUntilValid();
        }
        Assert.Equal(Errno.Ok, e);
        Assert.Equal(2, dev.MigratedBack);
        Assert.All(r.Pfns, p => Assert.True(_mem.IsRam(Nouveau.ToPfn(p)) && (p & Nouveau.DevicePrivate) == 0));
    }

    [Fact]
    public void AnInvalidationDoesNotEraseTheSnapshotItOnlyClearsValid()
    {
        ulong a = MapAnon(4);
        Touch(a, 4);
        HmmMirrorRange r = Registered(Nouveau, a, a + 4 * Kib4);
        Assert.Equal(Errno.Ok, Snapshot(r, out _));
        ulong[] before = (ulong[])r.Pfns.Clone();
        var m = new RecordingMirror();
        m.Register(_mm);
        var inv = new MmuNotifierRange(_mm, a, a + 2 * Kib4, MmuNotifierEvent.Unmap);
        _mm.Notifiers.InvalidateRangeStart(inv);
        Assert.False(r.Valid);
        Assert.Equal(before, r.Pfns);
        _mm.Notifiers.InvalidateRangeEnd(inv);
        _mm.Munmap(a, 2 * Kib4);
        Assert.Equal(before, r.Pfns);
        Assert.True(r.Valid);
        m.Unregister();
    }

    // ---- hugetlbfs page shift ---------------------------------------------------------------------------------

    [Fact]
    public void WithTheHugePageShiftOneEntryCoversAHugePageAndMisalignmentIsEinval()
    {
        var pool = _bed.Own(new HugetlbPool(_mem, Page.PmdOrder, 3));
        var fs = _bed.Own(new HugetlbFs(pool));
        FileHandle h = _bed.Own(fs.Create("h"));
        h.Truncate(3 * Page.PmdSize);
        ulong a = _mm.Mmap(0x3000_0000_0000, 3 * Page.PmdSize, Rw, MapFlags.Shared | MapFlags.Fixed, h.Inode);
        var bad = new HmmMirrorRange(Nouveau);
        Assert.Equal(Errno.EINVAL, bad.Register(_mm, a + Kib4, a + Page.PmdSize + Kib4, 21));
        HmmMirrorRange r = Registered(Nouveau, a, a + 3 * Page.PmdSize, 21);
        Assert.Equal(3, r.Count);
        r.DefaultFlags = Nouveau.Valid;
        r.PfnFlagsMask = Nouveau.Write;
        r.Pfns[1] = Nouveau.Write;
        Assert.Equal(Errno.Ok, FaultChecked(r, true, out long valid));
        Assert.Equal(3, valid);
        for (int i = 0; i < 3; i++)
        {
            ulong head = Nouveau.ToPfn(r.Pfns[i]);
            Assert.True(pool.Contains(head), $"entry {i}: 0x{head:x} is not a pool head");
            Assert.Equal(head, _mm.QueryPte(a + (ulong)i * Page.PmdSize, out _).Pfn);
            Assert.Equal(i == 1, Nouveau.IsWritable(r.Pfns[i]));
        }
        // With 4 KiB entries the same VMA is reported per page: head + offset.
        HmmMirrorRange small = Registered(Nouveau, a + Page.PmdSize, a + Page.PmdSize + 8 * Kib4);
        Assert.Equal(Errno.Ok, Snapshot(small, out _));
        for (int i = 0; i < 8; i++)
        {
            Assert.Equal(Nouveau.ToPfn(r.Pfns[1]) + (ulong)i, Nouveau.ToPfn(small.Pfns[i]));
        }
        // A huge page shift on an ordinary VMA is EINVAL at walk time.
        ulong anon = MapAnon(1024);
        ulong aligned = Page.AlignUp(anon, Page.PmdSize);
        HmmMirrorRange wrong = Registered(Nouveau, aligned, aligned + Page.PmdSize, 21);
        Assert.Equal(Errno.EINVAL, Snapshot(wrong, out _));
    }

    [Fact]
    public void EncodingsRejectOverlappingFlagsFlagsAbovePfnShiftAndNoneEqualToErrorOrSpecial()
    {
        Assert.Throws<ArgumentException>(() => new HmmPfnEncoding(1, 1, 4, ~0UL, 0, ~0UL, 8));
        Assert.Throws<ArgumentException>(() => new HmmPfnEncoding(1, 2, 1UL << 9, ~0UL, 0, ~0UL, 8));
        Assert.Throws<ArgumentException>(() => new HmmPfnEncoding(1, 2, 4, 0, 0, ~0UL, 8));
        Assert.Throws<ArgumentException>(() => new HmmPfnEncoding(1, 2, 4, ~0UL, 7, 7, 8));
        Assert.Throws<ArgumentException>(() => new HmmPfnEncoding(0, 2, 4, ~0UL, 0, ~0UL, 8));
    }
}
