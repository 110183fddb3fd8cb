using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using static Hetmem.Tests.Hmm.Kit;

namespace Hetmem.Tests.Hmm;

/// <summary>
/// HmmRange.Fault against every row of spec §2.4 for 4 KiB entries, and the rules of §2.3 and §2.5 (request
/// combining, EBUSY before each walk, partial output, sticky bits, snapshot purity). Huge mappings are in
/// <see cref="HmmRangeHugeTests"/>.
/// </summary>
public sealed unsafe class HmmRangeFaultTests : IDisposable
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;
    private const HmmPfnFlags Fault = HmmPfnFlags.ReqFault;
    private const HmmPfnFlags FaultWrite = HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite;
    private const ulong V = (ulong)HmmPfnFlags.Valid;
    private const ulong W = (ulong)HmmPfnFlags.Write;
    private const ulong E = (ulong)HmmPfnFlags.Error;

    private readonly HmmTestBed _bed = new(swapSlots: 256);
    private readonly AddressSpace _mm;
    private readonly PhysicalMemory _mem;

    public HmmRangeFaultTests()
    {
        _mm = _bed.NewSpace();
        _mem = _bed.Memory;
    }

    public void Dispose() => _bed.Dispose();

    private MmuIntervalNotifier Watch(ulong start, ulong end) => _bed.Own(new Sub(MmuIntervalNotifier.Insert(_mm, start, end - start, new RecordingOps()))).N;

    private sealed class Sub(MmuIntervalNotifier n) : IDisposable
    {
        public MmuIntervalNotifier N { get; } = n;
        public void Dispose() => N.Remove();
    }

    private HmmRange Range(ulong start, ulong end, HmmPfnFlags defaults = 0, HmmPfnFlags mask = 0, object? owner = null)
        => new(Watch(start, end), start, end) { DefaultFlags = defaults, PfnFlagsMask = mask, DevPrivateOwner = owner };

    /// <summary>read_begin, then the walk under the mmap read lock.</summary>
    private static Errno Walk(HmmRange r, bool readBegin = true)
    {
        if (readBegin)
        {
            r.NotifierSeq = r.Notifier.ReadBegin();
        }
        using (r.Space.MmapLock.Read())
        {
            return r.Fault();
        }
    }

    /// <summary>Walks until it stops returning EBUSY and reports how many EBUSY it saw.</summary>
    private static Errno WalkRetrying(HmmRange r, out int busy)
    {
        busy = 0;
        while (true)
        {
            Errno e = Walk(r);
            if (e != Errno.EBUSY)
            {
                return e;
            }
            busy++;
            Assert.True(busy < 100, "EBUSY forever");
        }
    }

    private ulong MapAnon(ulong pages, Prot prot = Rw, ulong at = 0)
        => _mm.Mmap(at, pages * Kib4, prot, Anon | (at != 0 ? MapFlags.Fixed : 0));

    private void Touch(ulong va, ulong pages, bool write = true)
    {
        using var cpu = new Cpu(_mm);
        for (ulong i = 0; i < pages; i++)
        {
            if (write)
            {
                cpu.Write(va + i * Kib4, (long)(va + i * Kib4));
            }
            else
            {
                _ = cpu.Read<long>(va + i * Kib4);
            }
        }
    }

    private static ulong Pfn(ulong e) => HmmPfn.ToPfn(e);

    private static ulong Flags(ulong e) => e & HmmPfn.FlagsMask;

    // ---- no VMA, special VMAs, permissions ------------------------------------------------------------------

    [Fact]
    public void AGapBetweenVmasAndTheSpaceBeyondTheLastAreErrorForASnapshotAndEfaultForAFault()
    {
        ulong a = MapAnon(4, at: 0x10000000);
        ulong b = MapAnon(4, at: 0x10008000);
        Touch(a, 4);
        HmmRange r = Range(a, b + 8 * Kib4);
        Assert.Equal(Errno.Ok, Walk(r));
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(V | W, Flags(r.HmmPfns[i]));
            Assert.Equal(E, r.HmmPfns[4 + i]);   // gap
            Assert.Equal(0UL, r.HmmPfns[8 + i]); // b: unpopulated
            Assert.Equal(E, r.HmmPfns[12 + i]);  // beyond the last VMA
        }
        r.DefaultFlags = Fault;
        Assert.Equal(Errno.EFAULT, Walk(r));
    }

    [Fact]
    public void AFaultThatFailsLeavesTheEntriesFromTheFailurePointHoldingTheirInput()
    {
        ulong a = MapAnon(4, at: 0x10000000);
        MapAnon(4, at: 0x10008000);
        HmmRange r = Range(a, a + 12 * Kib4, mask: HmmPfnFlags.ReqFault);
        const ulong Input = 0x1234;   // not honoured by the mask: a pure marker
        Array.Fill(r.HmmPfns, Input);
        for (int i = 0; i < 12; i++)
        {
            r.HmmPfns[i] |= V; // request a fault everywhere
        }
        Assert.Equal(Errno.EFAULT, Walk(r));
        for (int i = 0; i < 4; i++)
        {
            Assert.True(HmmPfn.Has(r.HmmPfns[i], HmmPfnFlags.Valid), $"entry {i} before the gap holds output");
            Assert.NotEqual(Input, Pfn(r.HmmPfns[i]));
        }
        for (int i = 4; i < 12; i++)
        {
            Assert.Equal(Input | V, r.HmmPfns[i]);
        }
    }

    [Fact]
    public void PfnMapAndIoVmasAreErrorAndTheWalkGoesOnWithTheNextVma()
    {
        ulong frame = _mem.Allocate(2, zero: true);
        ulong p = _mm.MapPfnRange(0x20000000, frame, 4, Rw);
        ulong a = MapAnon(4, at: p + 4 * Kib4);
        Touch(a, 4);
        HmmRange r = Range(p, a + 4 * Kib4);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.All(r.HmmPfns[..4], e => Assert.Equal(E, e));
        Assert.All(r.HmmPfns[4..], e => Assert.Equal(V | W, Flags(e)));
        r.DefaultFlags = Fault;
        Assert.Equal(Errno.EFAULT, Walk(r));
        _mm.Munmap(p, 4 * Kib4);
        _mem.Put(frame);
    }

    [Fact]
    public void AnUnreadableVmaIsErrorAndFaultingItIsEfault()
    {
        ulong a = MapAnon(4);
        Touch(a, 4);
        _mm.Mprotect(a, 2 * Kib4, Prot.None);
        HmmRange r = Range(a, a + 4 * Kib4);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(new[] { E, E }, r.HmmPfns[..2]);
        Assert.All(r.HmmPfns[2..], e => Assert.Equal(V | W, Flags(e)));
        r.DefaultFlags = Fault;
        Assert.Equal(Errno.EFAULT, Walk(r));
    }

    [Fact]
    public void AWriteRequestOnAReadOnlyVmaIsEpermAndNothingIsFaultedForWrite()
    {
        ulong a = MapAnon(4, Prot.Read);
        Touch(a, 2, write: false);   // zero-page PTEs
        HmmRange r = Range(a, a + 4 * Kib4, FaultWrite);
        Assert.Equal(Errno.EPERM, Walk(r));
        for (ulong i = 0; i < 4; i++)
        {
            Pte e = _mm.QueryPte(a + i * Kib4, out _);
            Assert.False(e.IsWritable);
            Assert.True(i < 2 ? e.Pfn == _mem.ZeroPfn : e.IsNone, $"page {i}: {e}");
        }
        // A read request is fine and reports read-only entries.
        r.DefaultFlags = Fault;
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.All(r.HmmPfns, e => Assert.Equal(V, Flags(e)));
    }

    [Fact]
    public void AWriteRequestOnAReadOnlyPrivateFileMappingIsEperm()
    {
        ShmemFile shm = _bed.Shmem(4 * Kib4);
        ulong a = _mm.Mmap(0, 4 * Kib4, Prot.Read, MapFlags.Private, shm, 0, FileAccess.Read);
        HmmRange r = Range(a, a + 4 * Kib4, FaultWrite);
        Assert.Equal(Errno.EPERM, Walk(r));
        r.DefaultFlags = Fault;
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.All(r.HmmPfns, e => Assert.Equal(V, Flags(e)));
        _mm.Munmap(a, 4 * Kib4);
    }

    // ---- empty, present, zero page, COW --------------------------------------------------------------------

    [Fact]
    public void EmptyEntriesAreZeroForASnapshotAndAWriteFaultGivesWritableDirtyExclusivePages()
    {
        ulong a = MapAnon(8);
        HmmRange r = Range(a, a + 8 * Kib4);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.All(r.HmmPfns, e => Assert.Equal(0UL, e));
        r.DefaultFlags = FaultWrite;
        Assert.Equal(Errno.Ok, Walk(r));
        var pfns = new HashSet<ulong>();
        for (int i = 0; i < 8; i++)
        {
            ulong e = r.HmmPfns[i];
            Assert.Equal(V | W, Flags(e));
            Assert.Equal(0, HmmPfn.MapOrder(e));
            Pte cpu = _mm.QueryPte(a + (ulong)i * Kib4, out _);
            Assert.True(cpu.IsWritable && cpu.IsDirty && cpu.Pfn == Pfn(e), $"invariant 3: {cpu}");
            Assert.Equal(1, _mem.Frame(Pfn(e)).MapCount);
            pfns.Add(Pfn(e));
        }
        Assert.Equal(8, pfns.Count);
    }

    [Fact]
    public void TheZeroPageIsReportedValidAndReadOnlyAndAWriteRequestReplacesItAfterOneEbusy()
    {
        ulong a = MapAnon(2);
        HmmRange r = Range(a, a + 2 * Kib4, Fault);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.All(r.HmmPfns, e => Assert.Equal(_mem.ZeroPfn | V, e));
        r.DefaultFlags = FaultWrite;
        Assert.Equal(Errno.Ok, WalkRetrying(r, out int busy));
        Assert.Equal(1, busy);
        Assert.All(r.HmmPfns, e =>
        {
            Assert.Equal(V | W, Flags(e));
            Assert.NotEqual(_mem.ZeroPfn, Pfn(e));
        });
    }

    [Fact]
    public void AReadOnlyPresentPageAndAWriteRequestFaultsForWriteAndReusesAnExclusivePage()
    {
        ulong a = MapAnon(1);
        Touch(a, 1);
        ulong pfn = _mm.QueryPte(a, out _).Pfn;
        _mm.Mprotect(a, Kib4, Prot.Read);
        _mm.Mprotect(a, Kib4, Rw);
        Assert.False(_mm.QueryPte(a, out _).IsWritable);
        HmmRange r = Range(a, a + Kib4, FaultWrite);
        Assert.Equal(Errno.Ok, WalkRetrying(r, out _));
        Assert.Equal(pfn | V | W, r.HmmPfns[0]);
        Assert.True(_mm.QueryPte(a, out _).IsWritable);
    }

    [Fact]
    public void AfterForkTheParentSeesProtectionPageAndAWriteRequestGivesEbusyThenANewPfn()
    {
        ulong a = MapAnon(2);
        Touch(a, 2);
        var ops = new RecordingOps();
        using var sub = new Sub(MmuIntervalNotifier.Insert(_mm, a, 2 * Kib4, ops));
        ulong old = _mm.QueryPte(a, out _).Pfn;
        AddressSpace child = _mm.Fork();
        Assert.Contains(ops.Calls, c => c.Event == MmuNotifierEvent.ProtectionPage && c.Start <= a && c.End >= a + 2 * Kib4);
        var r = new HmmRange(sub.N, a, a + 2 * Kib4) { DefaultFlags = Fault };
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(old | V, r.HmmPfns[0]);   // shared with the child, read-only
        r.DefaultFlags = FaultWrite;
        Assert.Equal(Errno.Ok, WalkRetrying(r, out int busy));
        Assert.Equal(1, busy);
        Assert.Equal(V | W, Flags(r.HmmPfns[0]));
        Assert.NotEqual(old, Pfn(r.HmmPfns[0]));
        child.Exit();
        // The second page: the child is gone, so the page is reused in place (invariant 12 allows either).
        Assert.Equal(Errno.Ok, WalkRetrying(r, out _));
        Assert.Equal(V | W, Flags(r.HmmPfns[1]));
    }

    [Fact]
    public void APrivateFilePageIsReportedReadOnlyAndAWriteRequestCopiesIt()
    {
        ShmemFile shm = _bed.Shmem(2 * Kib4);
        shm.Write(0, [7, 7, 7]);
        ulong a = _mm.Mmap(0, 2 * Kib4, Rw, MapFlags.Private, shm);
        HmmRange r = Range(a, a + 2 * Kib4, Fault);
        Assert.Equal(Errno.Ok, Walk(r));
        ulong filePfn = Pfn(r.HmmPfns[0]);
        Assert.Equal(V, Flags(r.HmmPfns[0]));
        Assert.Equal(7, _mem.FrameSpan(filePfn)[0]);
        r.DefaultFlags = FaultWrite;
        Assert.Equal(Errno.Ok, WalkRetrying(r, out int busy));
        Assert.Equal(1, busy);
        Assert.Equal(V | W, Flags(r.HmmPfns[0]));
        Assert.NotEqual(filePfn, Pfn(r.HmmPfns[0]));
        Assert.Equal(7, _mem.FrameSpan(Pfn(r.HmmPfns[0]))[0]);
        _mm.Munmap(a, 2 * Kib4);
    }

    [Fact]
    public void ASharedFilePageIsWrittenInPlaceAndMarkedDirty()
    {
        ShmemFile shm = _bed.Shmem(Kib4);
        ulong a = _mm.Mmap(0, Kib4, Rw, MapFlags.Shared, shm);
        HmmRange r = Range(a, a + Kib4, FaultWrite);
        Assert.Equal(Errno.Ok, WalkRetrying(r, out _));
        ulong pfn = Pfn(r.HmmPfns[0]);
        Assert.Equal(V | W, Flags(r.HmmPfns[0]));
        Assert.Same(shm, _mem.Frame(pfn).Mapping);
        Assert.True(_mem.Frame(pfn).Has(FrameFlags.Dirty));
        _mm.Munmap(a, Kib4);
    }

    [Fact]
    public void AFaultBeyondTheEndOfAFileIsEfaultAndASnapshotThereIsZero()
    {
        ShmemFile shm = _bed.Shmem(Kib4);
        ulong a = _mm.Mmap(0, 2 * Kib4, Prot.Read, MapFlags.Shared, shm, 0, FileAccess.Read);
        HmmRange r = Range(a, a + 2 * Kib4);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(new ulong[] { 0, 0 }, r.HmmPfns);
        r.DefaultFlags = Fault;
        Assert.Equal(Errno.EFAULT, Walk(r));
        _mm.Munmap(a, 2 * Kib4);
    }

    // ---- PROT_NONE (NUMA hinting), special, swap, migration, exclusive, poison -----------------------------

    /// <summary>Replaces the PTE at <paramref name="va"/> the way another mm path would (test-only surgery).</summary>
    private ulong Swap(ulong va, Pte replacement)
    {
        Pte old = _mm.Lookup(va, out _, out ulong* slot);
        lock (_mm.PtlFor(slot))
        {
            *slot = replacement.Value;
        }
        _mm.FlushTlb();
        return old.Value;
    }

    private void Restore(ulong va, ulong value)
    {
        _mm.Lookup(va, out _, out ulong* slot);
        lock (_mm.PtlFor(slot))
        {
            *slot = value;
        }
    }

    [Fact]
    public void ANumaHintingProtNoneEntryInAReadableVmaIsZeroAndFaultable()
    {
        ulong a = MapAnon(1);
        Touch(a, 1);
        Pte e = _mm.QueryPte(a, out _);
        Swap(a, new Pte((e.Value & ~Pte.Present) | Pte.ProtNone));
        HmmRange r = Range(a, a + Kib4);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(0UL, r.HmmPfns[0]);
        r.DefaultFlags = Fault;
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(e.Pfn | V, r.HmmPfns[0] & ~W);
    }

    [Fact]
    public void InsertedPagesOfAMixedMapAreValidButASpecialEntryIsErrorAndEfaultWhenRequested()
    {
        ulong a = _mm.MapMixedPages(0, 2 * Kib4, Rw, MapFlags.Shared);
        HmmRange r = Range(a, a + 2 * Kib4);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.All(r.HmmPfns, e => Assert.Equal(V | W, Flags(e)));
        Pte e1 = _mm.QueryPte(a + Kib4, out _);
        ulong saved = Swap(a + Kib4, e1.With(Pte.Special));   // as vm_insert_pfn would have made it
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(E, r.HmmPfns[1]);
        r.DefaultFlags = Fault;
        Assert.Equal(Errno.EFAULT, Walk(r));
        Restore(a + Kib4, saved);
        _mm.Munmap(a, 2 * Kib4);
    }

    [Fact]
    public void ASwappedOutPageIsZeroForASnapshotAndAFaultSwapsItBackIn()
    {
        ulong a = MapAnon(4);
        Touch(a, 4);
        _mm.Madvise(a, 4 * Kib4, Advice.PageOut);
        Assert.Equal(SwapEntryType.Swap, _mm.QueryPte(a, out _).SwapType);
        HmmRange r = Range(a, a + 4 * Kib4);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.All(r.HmmPfns, e => Assert.Equal(0UL, e));
        r.DefaultFlags = Fault;
        Assert.Equal(Errno.Ok, Walk(r));
        for (int i = 0; i < 4; i++)
        {
            Assert.True(HmmPfn.Has(r.HmmPfns[i], HmmPfnFlags.Valid));
            Assert.Equal((long)(a + (ulong)i * Kib4), BitConverter.ToInt64(_mem.FrameSpan(Pfn(r.HmmPfns[i]))));
        }
    }

    [Fact]
    public void AMigrationEntryIsZeroForASnapshotAndAFaultWaitsUntilTheMigrationEnds()
    {
        ulong a = MapAnon(1);
        Touch(a, 1);
        Pte e = _mm.QueryPte(a, out _);
        ulong saved = Swap(a, Pte.MakeSwap(SwapEntryType.Migration, e.Pfn, writable: true));
        HmmRange r = Range(a, a + Kib4);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(0UL, r.HmmPfns[0]);
        r.DefaultFlags = Fault;
        Errno result = Errno.EINVAL;
        Thread t = Start(() => result = Walk(r), "fault");
        StaysBlocked(t, "hmm_range_fault went past a migration entry without waiting");
        Restore(a, saved);
        Join(t);
        Assert.Equal(Errno.Ok, result);
        Assert.Equal(e.Pfn | V | W, r.HmmPfns[0]);
    }

    [Fact]
    public void ADeviceExclusiveEntryIsZeroForASnapshotAndAFaultRestoresItWithAClear()
    {
        ulong a = MapAnon(1);
        Touch(a, 1);
        Pte e = _mm.QueryPte(a, out _);
        Swap(a, Pte.MakeSwap(SwapEntryType.DeviceExclusive, e.Pfn, writable: true));
        var ops = new RecordingOps();
        using var sub = new Sub(MmuIntervalNotifier.Insert(_mm, a, Kib4, ops));
        var r = new HmmRange(sub.N, a, a + Kib4);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(0UL, r.HmmPfns[0]);
        Assert.Equal(0, ops.Count);
        r.DefaultFlags = Fault;
        Assert.Equal(Errno.Ok, WalkRetrying(r, out _));
        Assert.Equal(e.Pfn | V, r.HmmPfns[0] & ~W);
        Assert.Contains(ops.Calls, c => c.Event == MmuNotifierEvent.Clear);
    }

    [Fact]
    public void APoisonedEntryIsZeroForASnapshotAndEfaultForAFault()
    {
        ulong a = MapAnon(2);
        Touch(a, 2);
        ulong saved = Swap(a + Kib4, Pte.MakeSwap(SwapEntryType.HwPoison, 0x1234, writable: false));
        HmmRange r = Range(a, a + 2 * Kib4);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(0UL, r.HmmPfns[1]);
        r.DefaultFlags = Fault;
        Assert.Equal(Errno.EFAULT, Walk(r));
        Restore(a + Kib4, saved);
    }

    // ---- device-private memory ------------------------------------------------------------------------------

    [Fact]
    public void OwnDevicePrivatePagesAreReportedAndNeverMigratedEvenForAWriteRequestOnAReadOnlyEntry()
    {
        object owner = new();
        TestDevicePrivateMemory dev = _bed.Own(new TestDevicePrivateMemory(_mem, 16, owner));
        ulong a = MapAnon(2);
        Touch(a, 2);
        ulong d0 = dev.MoveToDevice(_mm, a, writable: true);
        ulong d1 = dev.MoveToDevice(_mm, a + Kib4, writable: false);
        HmmRange r = Range(a, a + 2 * Kib4, FaultWrite, owner: owner);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(d0 | V | W, r.HmmPfns[0]);
        Assert.Equal(d1 | V, r.HmmPfns[1]);
        Assert.Equal(0, dev.MigratedBack);
        Assert.Equal(SwapEntryType.DevicePrivate, _mm.QueryPte(a + Kib4, out _).SwapType);
    }

    [Fact]
    public void OtherOwnersDevicePrivatePagesAreZeroForASnapshotAndMigratedBackByAFault()
    {
        object owner = new();
        TestDevicePrivateMemory dev = _bed.Own(new TestDevicePrivateMemory(_mem, 16, owner));
        ulong a = MapAnon(2);
        Touch(a, 2);
        dev.MoveToDevice(_mm, a);
        dev.MoveToDevice(_mm, a + Kib4);
        foreach (object? someoneElse in new[] { new object(), null })
        {
            HmmRange snap = Range(a, a + 2 * Kib4, owner: someoneElse);
            Assert.Equal(Errno.Ok, Walk(snap));
            Assert.Equal(new ulong[] { 0, 0 }, snap.HmmPfns);
        }
        Assert.Equal(0, dev.MigratedBack);
        HmmRange r = Range(a, a + 2 * Kib4, Fault, owner: new object());
        Assert.Equal(Errno.Ok, WalkRetrying(r, out _));
        Assert.Equal(2, dev.MigratedBack);
        for (int i = 0; i < 2; i++)
        {
            ulong pfn = Pfn(r.HmmPfns[i]);
            Assert.True(_mem.IsRam(pfn));
            Assert.Equal((long)(a + (ulong)i * Kib4), BitConverter.ToInt64(_mem.FrameSpan(pfn)));
        }
        Assert.Equal(16, dev.FreePages);
    }

    // ---- request combining, EBUSY, sticky bits, purity -------------------------------------------------------

    [Fact]
    public void PerPageRequestsFaultTheRequestedPagesAndWriteOnlyWhereAsked()
    {
        ulong a = MapAnon(8);
        HmmRange r = Range(a, a + 8 * Kib4, mask: HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite);
        r.HmmPfns[1] = (ulong)Fault;
        r.HmmPfns[5] = (ulong)FaultWrite;
        r.HmmPfns[6] = (ulong)HmmPfnFlags.ReqWrite; // write without fault: no request at all
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(_mem.ZeroPfn | V, r.HmmPfns[1]);
        Assert.Equal(V | W, Flags(r.HmmPfns[5]));
        Assert.Equal(0UL, r.HmmPfns[6]);
    }

    [Fact]
    public void DefaultFaultWithAWriteMaskMakesOnlyTheMarkedPagesWritable()
    {
        ulong a = MapAnon(4);
        HmmRange r = Range(a, a + 4 * Kib4, Fault, HmmPfnFlags.ReqWrite);
        r.HmmPfns[2] = W;
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(V, Flags(r.HmmPfns[0]));
        Assert.Equal(V | W, Flags(r.HmmPfns[2]));
    }

    [Fact]
    public void InputBitsOutsideTheMaskAreIgnored()
    {
        ulong a = MapAnon(2);
        HmmRange r = Range(a, a + 2 * Kib4);
        r.HmmPfns[0] = (ulong)FaultWrite;
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(0UL, r.HmmPfns[0]);
        Assert.True(_mm.QueryPte(a, out _).IsNone);
    }

    [Fact]
    public void AStaleSequenceIsEbusyBeforeAnythingIsWalked()
    {
        ulong a = MapAnon(2);
        Touch(a, 2);
        HmmRange r = Range(a, a + 2 * Kib4, Fault);
        r.HmmPfns[0] = 77;
        r.NotifierSeq = r.Notifier.ReadBegin();
        _mm.Madvise(a + Kib4, Kib4, Advice.DontNeed);
        Assert.Equal(Errno.EBUSY, Walk(r, readBegin: false));
        Assert.Equal(77UL, r.HmmPfns[0]);
        Assert.Equal(0UL, r.HmmPfns[1]);
    }

    [Fact]
    public void StickyDmaBitsSurviveTheWalkAndEverythingElseIsReplaced()
    {
        ulong a = MapAnon(3);
        Touch(a, 1);
        HmmRange r = Range(a, a + 3 * Kib4, mask: HmmPfnFlags.ReqFault);
        ulong sticky = (ulong)(HmmPfnFlags.DmaMapped | HmmPfnFlags.P2pDma);
        r.HmmPfns[0] = sticky | 0x55;
        r.HmmPfns[1] = (ulong)HmmPfnFlags.P2pDmaBus | 0x66;
        r.HmmPfns[2] = sticky | V;    // request a fault and keep the bits
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.Equal(sticky | V | W, Flags(r.HmmPfns[0]));
        Assert.Equal(_mm.QueryPte(a, out _).Pfn, Pfn(r.HmmPfns[0]));
        Assert.Equal((ulong)HmmPfnFlags.P2pDmaBus, r.HmmPfns[1]);
        Assert.Equal(sticky | V, Flags(r.HmmPfns[2]));
    }

    [Fact]
    public void ASnapshotNeverChangesPageTablesNeverNotifiesAndAllocatesNothing()
    {
        ulong a = MapAnon(64);
        Touch(a, 16);
        Touch(a + 16 * Kib4, 8, write: false);
        _mm.Madvise(a + 4 * Kib4, 2 * Kib4, Advice.PageOut);
        var counter = new EventCounter();
        _mm.RegisterNotifier(counter);
        HmmRange r = Range(a, a + 64 * Kib4);
        ulong[] before = Dump(a, 64);
        long used = _mem.UsedFrames;
        long tables = _mm.PageTableFrames;
        Assert.Equal(Errno.Ok, Walk(r));   // warm up
        r.NotifierSeq = r.Notifier.ReadBegin();
        _mm.MmapLock.EnterRead();
        long bytes = GC.GetAllocatedBytesForCurrentThread();
        Errno e = r.Fault();
        bytes = GC.GetAllocatedBytesForCurrentThread() - bytes;
        _mm.MmapLock.ExitRead();
        Assert.Equal(Errno.Ok, e);
        Assert.Equal(0, bytes);
        Assert.Equal(before, Dump(a, 64));
        Assert.Equal(used, _mem.UsedFrames);
        Assert.Equal(tables, _mm.PageTableFrames);
        Assert.Equal(0, counter.Starts);
        for (int i = 24; i < 64; i++)
        {
            Assert.Equal(0UL, r.HmmPfns[i]);
        }
        Assert.Equal(0UL, r.HmmPfns[4]);
        Assert.Equal(_mem.ZeroPfn | V, r.HmmPfns[20]);
        _mm.UnregisterNotifier(counter);
    }

    private ulong[] Dump(ulong a, int pages)
    {
        var d = new ulong[pages];
        for (int i = 0; i < pages; i++)
        {
            d[i] = _mm.QueryPte(a + (ulong)i * Kib4, out _).Value;
        }
        return d;
    }
}
