using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

public class MremapTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;
    private const ulong Base = 0x4000_0000_0000;

    private static ulong Filled(MmTestBed bed, AddressSpace mm, ulong addr, ulong pages, out Cpu cpu)
    {
        ulong a = mm.Mmap(addr, pages * Kib4, Rw, Anon | (addr != 0 ? MapFlags.Fixed : 0));
        cpu = bed.Cpu(mm);
        for (ulong i = 0; i < pages; i++)
        {
            cpu.Write(a + i * Kib4, 500 + (long)i);
        }
        return a;
    }

    [Fact]
    public void GrowingIntoFreeSpaceExtendsTheVmaInPlace()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = Filled(bed, mm, Base, 4, out Cpu cpu);
        Assert.Equal(a, mm.Mremap(a, 4 * Kib4, 8 * Kib4, MremapFlags.None));
        MapsEntry m = mm.Maps().Single();
        Assert.Equal(a + 8 * Kib4, m.End);
        Assert.Equal(503L, cpu.Read<long>(a + 3 * Kib4));
        Assert.Equal(0L, cpu.Read<long>(a + 7 * Kib4));
    }

    [Fact]
    public void GrowingIntoAMappedNeighbourNeedsMayMoveAndThenMovesThePages()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = Filled(bed, mm, Base, 4, out Cpu cpu);
        mm.Mmap(a + 4 * Kib4, Kib4, Prot.Read, Anon | MapFlags.Fixed);
        string before = mm.MapsText();
        Assert.Equal(Errno.ENOMEM, Assert.Throws<MmException>(() => mm.Mremap(a, 4 * Kib4, 8 * Kib4, MremapFlags.None)).Errno);
        Assert.Equal(before, mm.MapsText());
        ulong[] pfns = [.. Enumerable.Range(0, 4).Select(i => mm.QueryPte(a + (ulong)i * Kib4, out _).Pfn)];
        long used = bed.Memory.UsedFrames;
        ulong b = mm.Mremap(a, 4 * Kib4, 8 * Kib4, MremapFlags.MayMove);
        Assert.NotEqual(a, b);
        for (ulong i = 0; i < 4; i++)
        {
            Assert.Equal(500 + (long)i, cpu.Read<long>(b + i * Kib4));
            Assert.Equal(pfns[i], mm.QueryPte(b + i * Kib4, out _).Pfn);   // moved, not copied
        }
        Assert.Throws<SegmentationFault>(() => cpu.Read<long>(a));
        Assert.True(bed.Memory.UsedFrames <= used + 3);
        bed.CheckInvariants();
    }

    [Fact]
    public void ShrinkingUnmapsTheTail()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = Filled(bed, mm, Base, 8, out Cpu cpu);
        long used = bed.Memory.UsedFrames;
        Assert.Equal(a, mm.Mremap(a, 8 * Kib4, 3 * Kib4, MremapFlags.None));
        Assert.Equal(used - 5, bed.Memory.UsedFrames);
        Assert.Equal(502L, cpu.Read<long>(a + 2 * Kib4));
        Assert.Throws<SegmentationFault>(() => cpu.Read<long>(a + 3 * Kib4));
    }

    [Fact]
    public void AFixedMoveReplacesWhatWasAtTheTargetAndCanShrink()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = Filled(bed, mm, Base, 6, out Cpu cpu);
        ulong t = mm.Mmap(Base + 0x100_0000, 4 * Kib4, Prot.Read, Anon | MapFlags.Fixed);
        ulong b = mm.Mremap(a, 6 * Kib4, 4 * Kib4, MremapFlags.MayMove | MremapFlags.Fixed, t);
        Assert.Equal(t, b);
        Assert.Equal(503L, cpu.Read<long>(b + 3 * Kib4));
        cpu.Write(b, 1L);   // the moved VMA is writable, unlike the one it replaced
        Assert.Single(mm.Maps());
        bed.CheckInvariants();
    }

    [Fact]
    public void DontUnmapMovesThePagesAndLeavesTheOldRangeMappedAndEmpty()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = Filled(bed, mm, Base, 4, out Cpu cpu);
        ulong b = mm.Mremap(a, 4 * Kib4, 4 * Kib4, MremapFlags.MayMove | MremapFlags.DontUnmap);
        Assert.NotEqual(a, b);
        Assert.Equal(2, mm.Maps().Count);
        Assert.Equal(502L, cpu.Read<long>(b + 2 * Kib4));
        Assert.Equal(0L, cpu.Read<long>(a + 2 * Kib4));
        cpu.Write(a, 9L);
        Assert.Equal(500L, cpu.Read<long>(b));
        bed.CheckInvariants();
    }

    [Fact]
    public void AMovedThpKeepsItsPmdWhenTheTargetIsAligned()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(Base, Page.PmdSize, Rw, Anon | MapFlags.Fixed);
        mm.Madvise(a, Page.PmdSize, Advice.HugePage);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a + 8, 8L);
        ulong b = mm.Mremap(a, Page.PmdSize, Page.PmdSize, MremapFlags.MayMove | MremapFlags.Fixed, Base + 0x4000_0000);
        Assert.True(mm.QueryPte(b, out int order).IsHugeLeaf);
        Assert.Equal(Page.PmdOrder, order);
        Assert.Equal(8L, cpu.Read<long>(b + 8));
        // To an unaligned target the THP is split and moved page by page.
        ulong c = mm.Mremap(b, Page.PmdSize, Page.PmdSize, MremapFlags.MayMove | MremapFlags.Fixed, Base + 0x8000_0000 + Kib4);
        mm.QueryPte(c, out order);
        Assert.Equal(0, order);
        Assert.Equal(8L, cpu.Read<long>(c + 8));
        bed.CheckInvariants();
    }

    [Fact]
    public void OldLengthZeroDuplicatesASharedMapping()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 4 * Kib4, Rw, MapFlags.Shared | MapFlags.Anonymous);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a + Kib4, 77L);
        ulong b = mm.Mremap(a + Kib4, 0, 2 * Kib4, MremapFlags.MayMove);
        Assert.Equal(77L, cpu.Read<long>(b));
        cpu.Write(b + Kib4, 78L);
        Assert.Equal(78L, cpu.Read<long>(a + 2 * Kib4));
        ulong p = mm.Mmap(0, Kib4, Rw, MapFlags.Private | MapFlags.Anonymous);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Mremap(p, 0, Kib4, MremapFlags.MayMove)).Errno);
    }

    [Fact]
    public void AMovedFileMappingKeepsItsOffsetAndReverseMap()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("mv");
        fh.Write(0, [.. Enumerable.Range(0, 4 * (int)Kib4).Select(i => (byte)(i / (int)Kib4 + 1))]);
        ulong a = mm.MmapFile(0, 4 * Kib4, Rw, MapFlags.Shared, fh);
        ulong b = mm.Mremap(a + Kib4, 2 * Kib4, 2 * Kib4, MremapFlags.MayMove | MremapFlags.Fixed, Base);
        Cpu cpu = bed.Cpu(mm);
        Assert.Equal(2, cpu.Read<byte>(b));
        Assert.Equal(3, cpu.Read<byte>(b + Kib4));
        Assert.Equal(3, fh.Inode.Mappings.Count);
        fh.Truncate(Kib4);
        Assert.Throws<BusError>(() => cpu.Read<byte>(b));
    }
}
