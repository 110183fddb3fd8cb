using Hetmem.Mm;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

public class MadviseAndSpecialMappingTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    [Fact]
    public void DontneedFreesAnonymousPagesAndTheyReadBackAsZero()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 8 * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        cpu.Fill(a, 8 * Kib4, 0x42);
        long used = bed.Memory.UsedFrames;
        mm.Madvise(a + 2 * Kib4, 4 * Kib4, Advice.DontNeed);
        Assert.Equal(used - 4, bed.Memory.UsedFrames);
        Assert.Equal(0, cpu.Read<byte>(a + 3 * Kib4));
        Assert.Equal(0x42, cpu.Read<byte>(a + 6 * Kib4));
        Assert.Single(mm.Maps());   // madvise(DONTNEED) never splits VMAs
    }

    [Fact]
    public void PopulateReadMapsThePagesReadOnlyAndPopulateWriteMakesThemWritable()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 6 * Kib4, Rw, Anon);
        mm.Madvise(a, 6 * Kib4, Advice.PopulateRead);
        Assert.Equal(6UL, mm.Maps().Single().ResidentPages);
        Assert.Equal(bed.Memory.ZeroPfn, mm.QueryPte(a + 5 * Kib4, out _).Pfn);
        mm.Madvise(a, 6 * Kib4, Advice.PopulateWrite);
        for (ulong i = 0; i < 6; i++)
        {
            Pte e = mm.QueryPte(a + i * Kib4, out _);
            Assert.True(e.IsWritable);
            Assert.NotEqual(bed.Memory.ZeroPfn, e.Pfn);
        }
    }

    [Fact]
    public void PopulateWithoutPermissionIsEinvalAndOverAHoleIsEnomem()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 2 * Kib4, Prot.Read, Anon);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Madvise(a, 2 * Kib4, Advice.PopulateWrite)).Errno);
        Assert.Equal(0UL, mm.Maps().Single().ResidentPages);
        mm.Munmap(a + Kib4, Kib4);
        Assert.Equal(Errno.ENOMEM, Assert.Throws<MmException>(() => mm.Madvise(a, 2 * Kib4, Advice.PopulateRead)).Errno);
    }

    [Fact]
    public void HugepageAdviceOnAPartOfAVmaSplitsItAndNohugepageMergesItBack()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 8 * Kib4, Rw, Anon);
        mm.Madvise(a + 2 * Kib4, 2 * Kib4, Advice.HugePage);
        Assert.Equal(3, mm.Maps().Count);
        mm.Madvise(a + 2 * Kib4, 2 * Kib4, Advice.HugePage);   // no change: no split
        Assert.Equal(3, mm.Maps().Count);
        mm.Madvise(a, 8 * Kib4, Advice.HugePage);
        Assert.Single(mm.Maps());
    }

    [Fact]
    public void MapPfnRangeMapsRawFramesThatMunmapDoesNotFree()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong pfn = bed.Memory.Allocate(2, zero: true);   // the "device registers", owned by the test
        bed.Memory.FrameSpan(pfn + 1)[8] = 0x99;
        ulong a = mm.MapPfnRange(0, pfn, 4, Rw);
        Cpu cpu = bed.Cpu(mm);
        Assert.Equal(0x99, cpu.Read<byte>(a + Kib4 + 8));
        cpu.Write(a + 3 * Kib4, 0xABCDL);
        Assert.Equal(0xABCDL, BitConverter.ToInt64(bed.Memory.FrameSpan(pfn + 3)));
        Pte e = mm.QueryPte(a, out _);
        Assert.True(e.IsSpecial);
        MapsEntry m = mm.Maps().Single();
        Assert.Equal(VmaKind.PfnMap, m.Kind);
        Assert.Equal(0, bed.Memory.Frame(pfn).MapCount);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Madvise(a, Kib4, Advice.DontNeed)).Errno);
        Assert.Equal(Errno.EFAULT, Assert.Throws<MmException>(() => mm.Mremap(a, 4 * Kib4, 8 * Kib4, MremapFlags.MayMove)).Errno);
        mm.Munmap(a, 4 * Kib4);
        Assert.Equal(1, bed.Memory.Frame(pfn).RefCount);
        Assert.Equal(0x99, bed.Memory.FrameSpan(pfn + 1)[8]);
        bed.Memory.Put(pfn);
    }

    [Fact]
    public void AReadOnlyPfnMapRejectsWritesAndAForkedChildSharesTheFrames()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong pfn = bed.Memory.Allocate(0, zero: true);
        ulong a = mm.MapPfnRange(0, pfn, 1, Prot.Read);
        Cpu cpu = bed.Cpu(mm);
        Assert.Equal(SegvCode.AccErr, Assert.Throws<SegmentationFault>(() => cpu.Write(a, 1L)).Code);
        AddressSpace child = bed.Fork(mm);
        Assert.Equal(pfn, child.QueryPte(a, out _).Pfn);
        child.Exit();
        mm.Munmap(a, Kib4);
        bed.Memory.Put(pfn);
    }

    [Fact]
    public void MixedMapPagesAreInsertedUpFrontAndFreedWithTheMapping()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        long used = bed.Memory.UsedFrames;
        ulong a = mm.MapMixedPages(0, 4 * Kib4, Rw, MapFlags.Shared);
        Assert.True(bed.Memory.UsedFrames >= used + 4);
        Assert.Equal(4UL, mm.Maps().Single().ResidentPages);
        Assert.Equal(VmaKind.MixedMap, mm.Maps().Single().Kind);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a + Kib4, 3L);
        Assert.Equal(3L, cpu.Read<long>(a + Kib4));
        mm.Munmap(a, 4 * Kib4);
        Assert.True(bed.Memory.UsedFrames <= used + 3);
    }

    [Fact]
    public void APrivateMixedMapIsCopiedOnWrite()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.MapMixedPages(0, 2 * Kib4, Rw, MapFlags.Private);
        ulong inserted = mm.QueryPte(a, out _).Pfn;
        Assert.False(mm.QueryPte(a, out _).IsWritable);
        Cpu cpu = bed.Cpu(mm);
        Assert.Equal(0L, cpu.Read<long>(a));
        cpu.Write(a, 5L);
        Assert.NotEqual(inserted, mm.QueryPte(a, out _).Pfn);
        Assert.Equal(5L, cpu.Read<long>(a));
        bed.CheckInvariants();
    }
}
