using Hetmem.Mm;
using Hetmem.Storage;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

/// <summary>The table of hmm-semantics.md §1.3: exactly one start/end pair per operation, with the right event.</summary>
public class NotifierBracketTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    private static (MmTestBed Bed, AddressSpace Mm, Cpu Cpu, ulong A) Setup(ulong pages = 8)
    {
        var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, pages * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        for (ulong i = 0; i < pages; i++)
        {
            cpu.Write(a + i * Kib4, (long)i);
        }
        return (bed, mm, cpu, a);
    }

    [Fact]
    public void MunmapSendsOneUnmapPairOverTheUnmappedRange()
    {
        (MmTestBed bed, AddressSpace mm, _, ulong a) = Setup();
        using (bed)
        {
            var rec = RecordingNotifier.Attach(mm);
            mm.Munmap(a + 2 * Kib4, 3 * Kib4);
            RecordingNotifier.AssertSinglePair(rec.Take(), MmuNotifierEvent.Unmap, a + 2 * Kib4, a + 5 * Kib4);
            rec.Detach();
        }
    }

    [Fact]
    public void MunmapOfTwoVmasSendsOneUnmapPairPerVma()
    {
        (MmTestBed bed, AddressSpace mm, _, ulong a) = Setup();
        using (bed)
        {
            mm.Mprotect(a + 4 * Kib4, 4 * Kib4, Prot.Read);
            var rec = RecordingNotifier.Attach(mm);
            mm.Munmap(a, 8 * Kib4);
            var pairs = RecordingNotifier.Pairs(rec.Take());
            Assert.Equal([(MmuNotifierEvent.Unmap, a, a + 4 * Kib4), (MmuNotifierEvent.Unmap, a + 4 * Kib4, a + 8 * Kib4)], pairs);
            rec.Detach();
        }
    }

    [Fact]
    public void MprotectSendsOneProtectionVmaPairEvenWhenAddingPermissions()
    {
        (MmTestBed bed, AddressSpace mm, _, ulong a) = Setup();
        using (bed)
        {
            var rec = RecordingNotifier.Attach(mm);
            mm.Mprotect(a, 8 * Kib4, Prot.Read);
            RecordingNotifier.AssertSinglePair(rec.Take(), MmuNotifierEvent.ProtectionVma, a, a + 8 * Kib4);
            mm.Mprotect(a, 8 * Kib4, Rw);
            RecordingNotifier.AssertSinglePair(rec.Take(), MmuNotifierEvent.ProtectionVma, a, a + 8 * Kib4);
            // An mprotect that changes nothing sends nothing.
            mm.Mprotect(a, 8 * Kib4, Rw);
            Assert.Empty(rec.Take());
            rec.Detach();
        }
    }

    [Fact]
    public void ForkSendsOneProtectionPagePairOnTheParentAndNothingToTheChild()
    {
        (MmTestBed bed, AddressSpace mm, _, ulong a) = Setup();
        using (bed)
        {
            var rec = RecordingNotifier.Attach(mm);
            AddressSpace child = bed.Fork(mm);
            RecordingNotifier.AssertSinglePair(rec.Take(), MmuNotifierEvent.ProtectionPage, a, a + 8 * Kib4);
            rec.Detach();
            Assert.Equal(mm.Maps().Single().Start, child.Maps().Single().Start);
        }
    }

    [Fact]
    public void ACowWriteFaultSendsOneClearPairOverThePage()
    {
        (MmTestBed bed, AddressSpace mm, Cpu cpu, ulong a) = Setup();
        using (bed)
        {
            AddressSpace child = bed.Fork(mm);
            var rec = RecordingNotifier.Attach(mm);
            cpu.Write(a + 3 * Kib4 + 8, 1L);
            RecordingNotifier.AssertSinglePair(rec.Take(), MmuNotifierEvent.Clear, a + 3 * Kib4, a + 4 * Kib4);
            rec.Detach();
            Assert.True(child.IsAlive);
        }
    }

    [Fact]
    public void MadvDontneedSendsOneClearPairOverTheAdvisedRange()
    {
        (MmTestBed bed, AddressSpace mm, _, ulong a) = Setup();
        using (bed)
        {
            var rec = RecordingNotifier.Attach(mm);
            mm.Madvise(a + Kib4, 2 * Kib4, Advice.DontNeed);
            RecordingNotifier.AssertSinglePair(rec.Take(), MmuNotifierEvent.Clear, a + Kib4, a + 3 * Kib4);
            rec.Detach();
        }
    }

    [Fact]
    public void TruncateOfAMappedFileSendsOneClearPairOverTheMappedPartBeyondTheNewSize()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("t");
        fh.Write(0, new byte[8 * Kib4]);
        ulong a = mm.MmapFile(0, 8 * Kib4, Rw, MapFlags.Shared, fh);
        Cpu cpu = bed.Cpu(mm);
        cpu.Fill(a, 8 * Kib4, 1);
        var rec = RecordingNotifier.Attach(mm);
        fh.Truncate(5 * Kib4);
        RecordingNotifier.AssertSinglePair(rec.Take(), MmuNotifierEvent.Clear, a + 5 * Kib4, a + 8 * Kib4);
        Assert.Throws<BusError>(() => cpu.Read<byte>(a + 5 * Kib4));
        Assert.Equal(1, cpu.Read<byte>(a + 5 * Kib4 - 1));
        rec.Detach();
    }

    [Fact]
    public void MremapMoveSendsOneUnmapPairOverTheOldRange()
    {
        (MmTestBed bed, AddressSpace mm, Cpu cpu, ulong a) = Setup();
        using (bed)
        {
            var rec = RecordingNotifier.Attach(mm);
            ulong b = mm.Mremap(a, 8 * Kib4, 8 * Kib4, MremapFlags.MayMove | MremapFlags.Fixed, a + 64 * Kib4);
            RecordingNotifier.AssertSinglePair(rec.Take(), MmuNotifierEvent.Unmap, a, a + 8 * Kib4);
            Assert.Equal(7L, cpu.Read<long>(b + 7 * Kib4));
            rec.Detach();
        }
    }

    [Fact]
    public void PageoutSendsClearPairsAndSwapInSendsNone()
    {
        using var bed = new MmTestBed(swapSlots: 64);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 2 * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, 1L);
        cpu.Write(a + Kib4, 2L);
        var rec = RecordingNotifier.Attach(mm);
        mm.Madvise(a, 2 * Kib4, Advice.PageOut);
        List<NotifierRecord> r = rec.Take();
        Assert.All(RecordingNotifier.Pairs(r), p => Assert.Equal(MmuNotifierEvent.Clear, p.Event));
        Assert.Equal(2, RecordingNotifier.Pairs(r).Count);
        Assert.Equal(2L, cpu.Read<long>(a + Kib4));
        Assert.Empty(rec.Take());
        rec.Detach();
    }

    [Fact]
    public void ExitSendsReleaseThenUnmapForEveryVma()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 4 * Kib4, Rw, Anon);
        ulong b = mm.Mmap(0, 4 * Kib4, Prot.Read, Anon);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(a, 1L);
        }
        var rec = RecordingNotifier.Attach(mm);
        mm.Exit();
        List<NotifierRecord> r = rec.Take();
        // Classic subscriptions get release; interval ones see RELEASE, then UNMAP for each VMA.
        Assert.Equal(NotifierCall.Release, r.First(x => x.Call != NotifierCall.Interval).Call);
        var intervals = r.Where(x => x.Call == NotifierCall.Interval).ToList();
        Assert.Equal(MmuNotifierEvent.Release, intervals[0].Event);
        Assert.Equal(2, intervals.Count(x => x.Event == MmuNotifierEvent.Unmap));
        Assert.Contains(intervals, x => x.Event == MmuNotifierEvent.Unmap && x.Start == Math.Min(a, b));
        Assert.Contains(intervals, x => x.Event == MmuNotifierEvent.Unmap && x.Start == Math.Max(a, b));
        Assert.Equal(3, intervals.Count);
        // After release, classic notifiers get no more start/end.
        Assert.DoesNotContain(r, x => x.Call == NotifierCall.Start);
    }

    [Fact]
    public void MsyncWriteProtectsDirtySharedPagesInOneProtectionPagePair()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("m");
        fh.Truncate(4 * Kib4);
        ulong a = mm.MmapFile(0, 4 * Kib4, Rw, MapFlags.Shared, fh);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, 1L);
        var rec = RecordingNotifier.Attach(mm);
        mm.Msync(a, 4 * Kib4, AddressSpace.MsyncFlags.Sync);
        RecordingNotifier.AssertSinglePair(rec.Take(), MmuNotifierEvent.ProtectionPage, a, a + Kib4);
        Assert.False(mm.QueryPte(a, out _).IsWritable);
        // The next write faults, marks the page dirty again, and needs no bracket.
        cpu.Write(a, 2L);
        Assert.Empty(rec.Take());
        rec.Detach();
    }
}
