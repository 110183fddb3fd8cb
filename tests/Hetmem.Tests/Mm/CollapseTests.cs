using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

/// <summary>madvise(MADV_COLLAPSE) (kernel: mm/khugepaged.c madvise_collapse).</summary>
public class CollapseTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;
    private const ulong Base = 0x2000_0000_0000;   // 1 GiB aligned
    private const ulong Pmd = Page.PmdSize;

    /// <summary>Maps 2 × PMD at <see cref="Base"/> without MADV_HUGEPAGE and writes a pattern into every page but the holes.</summary>
    private static ulong Filled(AddressSpace mm, Cpu cpu, Func<ulong, bool>? hole = null)
    {
        ulong a = mm.Mmap(Base, 2 * Pmd, Rw, Anon | MapFlags.Fixed);
        for (ulong i = 0; i < 512; i++)
        {
            if (hole?.Invoke(i) != true)
            {
                cpu.Write(a + i * Kib4 + 8 * (i % 500), 0x1000_0000L + (long)i);
            }
        }
        return a;
    }

    private static ulong[] Entries(AddressSpace mm, ulong a)
    {
        var r = new ulong[512];
        for (ulong i = 0; i < 512; i++)
        {
            r[i] = mm.QueryPte(a + i * Kib4, out _).Value;
        }
        return r;
    }

    [Fact]
    public void CollapseCopiesEveryPageIntoOnePmdMappedThpAndFreesTheOldPagesAndTable()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        Cpu cpu = bed.Cpu(mm);
        ulong a = Filled(mm, cpu, hole: i => i % 7 == 3);
        Assert.Equal(0L, cpu.Read<long>(a + 3 * Kib4));           // a zero-page entry
        long pagesBefore = 512 - (512 + 3) / 7;                     // pages written (holes at 3, 10, 17, …)
        mm.QueryPte(a, out int before);
        Assert.Equal(0, before);
        long used = bed.Memory.UsedFrames;
        long tables = mm.PageTableFrames;
        var rec = RecordingNotifier.Attach(mm);

        mm.Madvise(a, Pmd, Advice.Collapse);

        RecordingNotifier.AssertSinglePair(rec.Take(), MmuNotifierEvent.Clear, a, a + Pmd);
        Pte e = mm.QueryPte(a + Pmd - 8, out int order);
        Assert.Equal(Page.PmdOrder, order);
        Assert.True(e.IsHugeLeaf && e.IsWritable);
        Assert.True(bed.Memory.Frame(e.Pfn).Has(FrameFlags.Thp));
        Assert.Equal(tables - 1, mm.PageTableFrames);
        Assert.Equal(used - pagesBefore - 1 + 512, bed.Memory.UsedFrames);
        for (ulong i = 0; i < 512; i++)
        {
            long want = i % 7 == 3 ? 0 : 0x1000_0000L + (long)i;
            Assert.Equal(want, cpu.Read<long>(a + i * Kib4 + 8 * (i % 500)));
        }
        Assert.Equal(1UL, mm.Maps().Single(m => m.Start == a).PmdEntries);
        cpu.Write(a + 5 * Kib4, 99L);                                // writable without a fault on the THP
        Assert.Equal(e.Pfn, mm.QueryPte(a, out _).Pfn);
        bed.CheckInvariants();
    }

    [Fact]
    public void ARangeAlreadyMappedByAHugePmdIsSuccessAndChangesNothing()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(Base, Pmd, Rw, Anon | MapFlags.Fixed);
        mm.Madvise(a, Pmd, Advice.HugePage);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, 1L);
        Pte thp = mm.QueryPte(a, out int order);
        Assert.Equal(Page.PmdOrder, order);
        var rec = RecordingNotifier.Attach(mm);
        mm.Madvise(a, Pmd, Advice.Collapse);
        Assert.Empty(RecordingNotifier.Pairs(rec.Take()));
        Assert.Equal(thp, mm.QueryPte(a, out _));
    }

    [Fact]
    public void NoHugePageVmasAreRefusedWithEinvalAndKeepTheirEntries()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        Cpu cpu = bed.Cpu(mm);
        ulong a = Filled(mm, cpu);
        mm.Madvise(a, 2 * Pmd, Advice.NoHugePage);
        ulong[] before = Entries(mm, a);
        long used = bed.Memory.UsedFrames;
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Madvise(a, Pmd, Advice.Collapse)).Errno);
        Assert.Equal(before, Entries(mm, a));
        Assert.Equal(used, bed.Memory.UsedFrames);
    }

    [Fact]
    public void APinnedPageMakesTheRangeFailWithEagainUnchangedUntilItIsUnpinned()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        Cpu cpu = bed.Cpu(mm);
        ulong a = Filled(mm, cpu);
        var pfns = new ulong[1];
        Assert.Equal(Errno.Ok, mm.GetUserPages(a + 100 * Kib4, 1, GupFlags.Pin | GupFlags.Write, pfns, out int done));
        Assert.Equal(1, done);
        ulong[] before = Entries(mm, a);
        long used = bed.Memory.UsedFrames;
        var rec = RecordingNotifier.Attach(mm);

        Assert.Equal(Errno.EAGAIN, Assert.Throws<MmException>(() => mm.Madvise(a, Pmd, Advice.Collapse)).Errno);

        Assert.Empty(RecordingNotifier.Pairs(rec.Take()));
        Assert.Equal(before, Entries(mm, a));
        Assert.Equal(used, bed.Memory.UsedFrames);
        mm.UnpinUserPages(pfns, makeDirty: false);
        mm.Madvise(a, Pmd, Advice.Collapse);
        mm.QueryPte(a, out int order);
        Assert.Equal(Page.PmdOrder, order);
        Assert.Equal(0x1000_0000L + 100, cpu.Read<long>(a + 100 * Kib4 + 800));
    }

    [Fact]
    public void AnUntouchedOrReadOnlyRangeIsEinval()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        Cpu cpu = bed.Cpu(mm);
        ulong a = mm.Mmap(Base, 2 * Pmd, Rw, Anon | MapFlags.Fixed);
        // Nothing mapped at all (kernel: SCAN_PMD_NULL / SCAN_PMD_NONE).
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Madvise(a, Pmd, Advice.Collapse)).Errno);
        // Only zero-page entries: nothing writable (kernel: SCAN_PAGE_RO).
        for (ulong i = 0; i < 512; i += 16)
        {
            Assert.Equal(0L, cpu.Read<long>(a + i * Kib4));
        }
        ulong[] before = Entries(mm, a);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Madvise(a, Pmd, Advice.Collapse)).Errno);
        Assert.Equal(before, Entries(mm, a));
    }

    [Fact]
    public void ARangeInsideOnePmdIsEinvalAndAnEmptyAlignedWindowIsSuccess()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        Cpu cpu = bed.Cpu(mm);
        ulong a = Filled(mm, cpu);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Madvise(a + Kib4, 8 * Kib4, Advice.Collapse)).Errno);
        mm.Madvise(a, 8 * Kib4, Advice.Collapse);   // kernel: hstart == hend, zero of zero PMDs collapsed
        mm.QueryPte(a, out int order);
        Assert.Equal(0, order);
    }

    [Fact]
    public void SwappedOutEntriesAreSwappedInFirstAndTheirDataLandsInTheThp()
    {
        using var bed = new MmTestBed(swapSlots: 64);
        AddressSpace mm = bed.NewSpace();
        Cpu cpu = bed.Cpu(mm);
        ulong a = Filled(mm, cpu);
        mm.Madvise(a + 64 * Kib4, 16 * Kib4, Advice.PageOut);
        Assert.Equal(16u, bed.Swap!.UsedSlots);
        mm.Madvise(a, Pmd, Advice.Collapse);
        mm.QueryPte(a, out int order);
        Assert.Equal(Page.PmdOrder, order);
        Assert.Equal(0u, bed.Swap.UsedSlots);
        for (ulong i = 60; i < 84; i++)
        {
            Assert.Equal(0x1000_0000L + (long)i, cpu.Read<long>(a + i * Kib4 + 8 * (i % 500)));
        }
        bed.CheckInvariants();
    }

    [Fact]
    public void PagesSharedWithAForkedChildAreCopiedOnceOneEntryIsWritableAndTheChildKeepsItsOwn()
    {
        using var bed = new MmTestBed();
        AddressSpace parent = bed.NewSpace();
        Cpu pc = bed.Cpu(parent);
        ulong a = Filled(parent, pc);
        AddressSpace child = bed.Fork(parent);
        Cpu cc = bed.Cpu(child);
        // Right after fork every entry is write-protected: nothing writable (kernel: SCAN_PAGE_RO).
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => parent.Madvise(a, Pmd, Advice.Collapse)).Errno);
        pc.Write(a + 9 * Kib4, 9L);                                  // COW: one writable entry
        parent.Madvise(a, Pmd, Advice.Collapse);
        parent.QueryPte(a, out int order);
        Assert.Equal(Page.PmdOrder, order);
        pc.Write(a + 7 * Kib4 + 56, -1L);
        Assert.Equal(0x1000_0000L + 7, cc.Read<long>(a + 7 * Kib4 + 56));
        Assert.Equal(-1L, pc.Read<long>(a + 7 * Kib4 + 56));
        Assert.Equal(9L, pc.Read<long>(a + 9 * Kib4));
        Assert.Equal(0x1000_0000L + 9, cc.Read<long>(a + 9 * Kib4 + 72));
        child.QueryPte(a, out int childOrder);
        Assert.Equal(0, childOrder);
        bed.CheckInvariants();
    }

    [Fact]
    public void AHoleInTheRangeIsEnomemAfterTheMappedPmdsAreCollapsed()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        Cpu cpu = bed.Cpu(mm);
        ulong a = Filled(mm, cpu);
        mm.Munmap(a + Pmd, Pmd);
        Assert.Equal(Errno.ENOMEM, Assert.Throws<MmException>(() => mm.Madvise(a, 2 * Pmd, Advice.Collapse)).Errno);
        mm.QueryPte(a, out int order);
        Assert.Equal(Page.PmdOrder, order);
    }

    [Fact]
    public void ADevicePrivateEntryMakesTheRangeFailWithEinvalAndStayOnTheDevice()
    {
        using var bed = new MmTestBed();
        using var dev = new Hmm.MigrateTestDevice(bed.Memory, 16);
        AddressSpace mm = bed.NewSpace();
        Cpu cpu = bed.Cpu(mm);
        ulong a = Filled(mm, cpu);
        Assert.Equal(2, dev.MigrateToDevice(mm, a + 10 * Kib4, a + 12 * Kib4));
        ulong[] before = Entries(mm, a);
        Assert.Equal(SwapEntryType.DevicePrivate, new Pte(before[10]).SwapType);
        var rec = RecordingNotifier.Attach(mm);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Madvise(a, Pmd, Advice.Collapse)).Errno);
        Assert.Empty(RecordingNotifier.Pairs(rec.Take()));
        Assert.Equal(before, Entries(mm, a));
        Assert.Equal(0, dev.MigrateToRamCalls);
        Assert.Equal(0x1000_0000L + 10, cpu.Read<long>(a + 10 * Kib4 + 80));   // faults both back
        Assert.Equal(0x1000_0000L + 11, cpu.Read<long>(a + 11 * Kib4 + 88));
        mm.Madvise(a, Pmd, Advice.Collapse);                                      // now every entry is a RAM page
        mm.QueryPte(a, out int order);
        Assert.Equal(Page.PmdOrder, order);
        Assert.Equal(0x1000_0000L + 10, cpu.Read<long>(a + 10 * Kib4 + 80));
        Assert.Equal(16, dev.FreePages);
    }

    [Fact]
    public void SharedAndFileMappingsAreNotEligible()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        Cpu cpu = bed.Cpu(mm);
        ulong a = mm.Mmap(Base, Pmd, Rw, MapFlags.Shared | MapFlags.Anonymous | MapFlags.Fixed);
        cpu.Write(a, 1L);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Madvise(a, Pmd, Advice.Collapse)).Errno);
        Assert.Equal(1L, cpu.Read<long>(a));
    }
}
