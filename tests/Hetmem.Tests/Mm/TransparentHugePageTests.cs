using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

public class TransparentHugePageTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;
    private const ulong Base = 0x2000_0000_0000;   // 1 GiB aligned
    private const ulong Pmd = Page.PmdSize;

    private static ulong HugeRegion(AddressSpace mm, ulong bytes, bool advise = true)
    {
        ulong a = mm.Mmap(Base, bytes, Rw, Anon | MapFlags.Fixed);
        if (advise)
        {
            mm.Madvise(a, bytes, Advice.HugePage);
        }
        return a;
    }

    [Fact]
    public void AWriteInAnAlignedHugePageRangeInstallsOnePmdWithAZeroedTwoMibPage()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = HugeRegion(mm, 2 * Pmd);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a + 12345 * 8, 77L);
        Pte e = mm.QueryPte(a + Pmd - 8, out int order);
        Assert.Equal(Page.PmdOrder, order);
        Assert.True(e.IsHugeLeaf && e.IsWritable);
        Assert.True(bed.Memory.Frame(e.Pfn).Has(FrameFlags.Thp));
        Assert.Equal(77L, cpu.Read<long>(a + 12345 * 8));
        Assert.Equal(0L, cpu.Read<long>(a + Pmd - 8));
        MapsEntry m = mm.Maps().Single();
        Assert.Equal(1UL, m.PmdEntries);
        Assert.Equal(512UL, m.ResidentPages);
        bed.CheckInvariants();
    }

    [Fact]
    public void WithoutMadvHugepageOrWhenUnalignedTheFaultUsesBasePages()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = HugeRegion(mm, 2 * Pmd, advise: false);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, 1L);
        mm.QueryPte(a, out int order);
        Assert.Equal(0, order);
        // A huge-page VMA that does not cover a whole aligned 2 MiB range also falls back.
        ulong b = mm.Mmap(Base + 0x4000_0000 + Kib4, Pmd, Rw, Anon | MapFlags.Fixed);
        mm.Madvise(b, Pmd, Advice.HugePage);
        cpu.Write(b + Pmd / 2, 1L);
        mm.QueryPte(b + Pmd / 2, out order);
        Assert.Equal(0, order);
    }

    [Fact]
    public void AReadMapsTheHugeZeroPageAndALaterWriteReplacesItWithARealThp()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = HugeRegion(mm, Pmd);
        Cpu cpu = bed.Cpu(mm);
        Assert.Equal(0L, cpu.Read<long>(a + 4096 * 7));
        Pte z = mm.QueryPte(a, out int order);
        Assert.Equal(Page.PmdOrder, order);
        Assert.False(z.IsWritable);
        Assert.True(bed.Memory.Frame(z.Pfn).Has(FrameFlags.Reserved));   // the huge zero page
        var rec = RecordingNotifier.Attach(mm);
        cpu.Write(a + 8, 5L);
        RecordingNotifier.AssertSinglePair(rec.Take(), MmuNotifierEvent.Clear, a, a + Pmd);
        Pte t = mm.QueryPte(a, out order);
        Assert.Equal(Page.PmdOrder, order);
        Assert.True(t.IsWritable);
        Assert.NotEqual(z.Pfn, t.Pfn);
        Assert.Equal(5L, cpu.Read<long>(a + 8));
        rec.Detach();
    }

    [Fact]
    public void PartialMunmapSplitsThePmdAndKeepsTheRestOfTheData()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = HugeRegion(mm, Pmd);
        Cpu cpu = bed.Cpu(mm);
        for (ulong off = 0; off < Pmd; off += Kib4)
        {
            cpu.Write(a + off, off + 1);
        }
        long used = bed.Memory.UsedFrames;
        mm.Munmap(a + 100 * Kib4, 10 * Kib4);
        Pte e = mm.QueryPte(a + 99 * Kib4, out int order);
        Assert.Equal(0, order);
        Assert.True(e.IsPresent);
        for (ulong off = 0; off < Pmd; off += Kib4)
        {
            if (off >= 100 * Kib4 && off < 110 * Kib4)
            {
                Assert.Equal(SegvCode.MapErr, Assert.Throws<SegmentationFault>(() => cpu.Read<ulong>(a + off)).Code);
            }
            else
            {
                Assert.Equal(off + 1, cpu.Read<ulong>(a + off));
            }
        }
        // The compound page stays allocated while any of its pages is mapped; the split needed one PTE table.
        Assert.True(bed.Memory.UsedFrames <= used + 1);
        bed.CheckInvariants();
        mm.Munmap(a, Pmd);
        Assert.True(bed.Memory.UsedFrames <= used - 512 + 1, $"{bed.Memory.UsedFrames - (used - 512)} extra frames after unmapping the whole THP");
    }

    [Fact]
    public void PartialMprotectSplitsThePmdAndOnlyTheProtectedPartRejectsWrites()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = HugeRegion(mm, Pmd);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, 1L);
        Assert.True(mm.QueryPte(a, out int order).IsHugeLeaf && order == Page.PmdOrder);
        var rec = RecordingNotifier.Attach(mm);
        mm.Mprotect(a + Kib4, Kib4, Prot.Read);
        List<NotifierRecord> r = rec.Take();
        // The split is announced (CLEAR over the huge page), then the protection change (PROTECTION_VMA).
        Assert.Contains(RecordingNotifier.Pairs(r), p => p.Event == MmuNotifierEvent.Clear && p.Start <= a && p.End >= a + Pmd);
        Assert.Contains(RecordingNotifier.Pairs(r), p => p.Event == MmuNotifierEvent.ProtectionVma && p.Start <= a + Kib4 && p.End >= a + 2 * Kib4);
        Assert.Equal(SegvCode.AccErr, Assert.Throws<SegmentationFault>(() => cpu.Write(a + Kib4, 2L)).Code);
        cpu.Write(a + 2 * Kib4, 3L);
        cpu.Write(a, 4L);
        Assert.Equal(4L, cpu.Read<long>(a));
        Assert.Equal(0L, cpu.Read<long>(a + Kib4));
        mm.QueryPte(a, out order);
        Assert.Equal(0, order);
        Assert.Equal(3, mm.Maps().Count);
        rec.Detach();
        bed.CheckInvariants();
    }

    [Fact]
    public void AForkedThpIsSharedThenCopiedPageByPageOnWrite()
    {
        using var bed = new MmTestBed();
        AddressSpace parent = bed.NewSpace();
        ulong a = HugeRegion(parent, Pmd);
        Cpu pc = bed.Cpu(parent);
        pc.Fill(a, Pmd, 0x11);
        AddressSpace child = bed.Fork(parent);
        Cpu cc = bed.Cpu(child);
        Assert.Equal(0x11, cc.Read<byte>(a + Pmd - 1));
        cc.Write(a + Kib4, (byte)0x22);
        Assert.Equal(0x11, pc.Read<byte>(a + Kib4));
        Assert.Equal(0x22, cc.Read<byte>(a + Kib4));
        pc.Write(a, (byte)0x33);
        Assert.Equal(0x11, cc.Read<byte>(a));
        bed.CheckInvariants();
    }

    [Fact]
    public void MadvDontneedOfPartOfAThpSplitsItAndZeroesOnlyThatPart()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = HugeRegion(mm, Pmd);
        Cpu cpu = bed.Cpu(mm);
        cpu.Fill(a, Pmd, 0x7E);
        mm.Madvise(a + 8 * Kib4, 8 * Kib4, Advice.DontNeed);
        Assert.Equal(0, cpu.Read<byte>(a + 8 * Kib4));
        Assert.Equal(0, cpu.Read<byte>(a + 16 * Kib4 - 1));
        Assert.Equal(0x7E, cpu.Read<byte>(a + 16 * Kib4));
        Assert.Equal(0x7E, cpu.Read<byte>(a + 8 * Kib4 - 1));
        bed.CheckInvariants();
    }

    [Fact]
    public void TheHugeZeroPageIsSharedAcrossForkAndFreedWhenTheLastUserExits()
    {
        foreach (bool parentFirst in new[] { true, false })
        {
            using var bed = new MmTestBed();
            AddressSpace parent = bed.NewSpace();
            ulong a = HugeRegion(parent, Pmd);
            using (var pc = new Cpu(parent))
            {
                Assert.Equal(0L, pc.Read<long>(a));
            }
            ulong zero = parent.QueryPte(a, out int order).Pfn;
            Assert.Equal(Page.PmdOrder, order);
            Assert.Equal(bed.Memory.HugeZeroPfn, zero);
            AddressSpace child = bed.Fork(parent);
            Assert.Equal(zero, child.QueryPte(a, out _).Pfn);
            bed.CheckInvariants();
            (parentFirst ? parent : child).Exit();
            AddressSpace survivor = parentFirst ? child : parent;
            Assert.Equal(zero, bed.Memory.HugeZeroPfn);
            using (var sc = new Cpu(survivor))
            {
                Assert.Equal(0L, sc.Read<long>(a + 4096));
                sc.Write(a, 3L);
                Assert.Equal(3L, sc.Read<long>(a));
            }
            survivor.Exit();
            Assert.Equal(Page.NoPfn, bed.Memory.HugeZeroPfn);
            Assert.Equal(bed.UsedAtStart, bed.Memory.UsedFrames);
        }
    }
}
