using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

public class HugetlbMappingTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const ulong Pmd = Page.PmdSize;
    private const MapFlags AnonHuge = MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb;

    [Fact]
    public void MapHugetlbFaultsInTwoMibPagesFromThePoolAndGivesThemBackAtMunmap()
    {
        using var bed = new MmTestBed();
        HugetlbFs fs = bed.Hugetlb(4);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 3 * Pmd, Rw, AnonHuge);
        Assert.True(Page.IsAligned(a, Pmd));
        Assert.Equal(3UL, fs.Pool.Reserved);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a + Pmd + 100, 7L);
        Pte e = mm.QueryPte(a + Pmd, out int order);
        Assert.Equal(Page.PmdOrder, order);
        Assert.True(e.IsHugeLeaf && e.IsWritable);
        Assert.True(fs.Pool.Contains(e.Pfn));
        Assert.Equal(2UL, fs.Pool.Reserved);
        Assert.Equal(7L, cpu.Read<long>(a + Pmd + 100));
        Assert.Equal(0L, cpu.Read<long>(a + 2 * Pmd + 100));   // a read fault of a private mapping also takes a page
        Assert.Equal(1UL, fs.Pool.Reserved);
        Assert.Equal(2UL, fs.Pool.Total - fs.Pool.Free);
        mm.Munmap(a, 3 * Pmd);
        Assert.Equal(0UL, fs.Pool.Reserved);
        Assert.Equal(4UL, fs.Pool.Free);
    }

    [Fact]
    public void AReservationThePoolCannotHonourFailsTheMmapWithEnomemAndChangesNothing()
    {
        using var bed = new MmTestBed();
        HugetlbFs fs = bed.Hugetlb(2);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, Pmd, Rw, AnonHuge);
        string before = mm.MapsText();
        var ex = Assert.Throws<MmException>(() => mm.Mmap(0, 2 * Pmd, Rw, AnonHuge));
        Assert.Equal(Errno.ENOMEM, ex.Errno);
        Assert.Equal(before, mm.MapsText());
        Assert.Equal(1UL, fs.Pool.Reserved);
        // A MAP_FIXED replacement that cannot reserve leaves the old mapping in place.
        Assert.Equal(Errno.ENOMEM, Assert.Throws<MmException>(() => mm.Mmap(a, 4 * Pmd, Rw, AnonHuge | MapFlags.Fixed)).Errno);
        Assert.Equal(before, mm.MapsText());
        Assert.Equal(1UL, fs.Pool.Reserved);
    }

    [Fact]
    public void WithMapNoreserveTheMmapSucceedsAndTheFaultBeyondThePoolRaisesBusError()
    {
        using var bed = new MmTestBed();
        HugetlbFs fs = bed.Hugetlb(2);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 3 * Pmd, Rw, AnonHuge | MapFlags.NoReserve);
        Assert.Equal(0UL, fs.Pool.Reserved);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, 1L);
        cpu.Write(a + Pmd, 2L);
        var bus = Assert.Throws<BusError>(() => cpu.Write(a + 2 * Pmd, 3L));
        Assert.Equal(a + 2 * Pmd, bus.Address);
        Assert.Equal(2L, cpu.Read<long>(a + Pmd));
        // Freeing one page lets the fault succeed.
        mm.Munmap(a, Pmd);
        cpu.Write(a + 2 * Pmd, 3L);
        Assert.Equal(3L, cpu.Read<long>(a + 2 * Pmd));
    }

    [Fact]
    public void ANamedHugetlbfsFileIsSharedBetweenAddressSpacesAndKeepsItsPagesAfterUnmap()
    {
        using var bed = new MmTestBed();
        HugetlbFs fs = bed.Hugetlb(4);
        using FileHandle fh = fs.Create("shared");
        fh.Truncate(2 * Pmd);
        AddressSpace m1 = bed.NewSpace();
        AddressSpace m2 = bed.NewSpace();
        ulong a1 = m1.MmapFile(0, 2 * Pmd, Rw, MapFlags.Shared, fh);
        ulong a2 = m2.MmapFile(0, 2 * Pmd, Rw, MapFlags.Shared, fh);
        Assert.Equal(2UL, fs.Pool.Reserved);   // reserved once, in the file
        Cpu c1 = bed.Cpu(m1);
        Cpu c2 = bed.Cpu(m2);
        c1.Write(a1 + Pmd + 8, 42L);
        Assert.Equal(42L, c2.Read<long>(a2 + Pmd + 8));
        Assert.Equal(m1.QueryPte(a1 + Pmd, out _).Pfn, m2.QueryPte(a2 + Pmd, out _).Pfn);
        m1.Munmap(a1, 2 * Pmd);
        m2.Munmap(a2, 2 * Pmd);
        Assert.Equal(1, ((HugetlbFile)fh.Inode).HugePages);
        var b = new byte[8];
        fh.Read(Pmd + 8, b);
        Assert.Equal(42L, BitConverter.ToInt64(b));
    }

    [Fact]
    public void APrivateMappingOfAHugetlbfsFileCopiesOnWriteAndLeavesTheFileAlone()
    {
        using var bed = new MmTestBed();
        HugetlbFs fs = bed.Hugetlb(4);
        using FileHandle fh = fs.Create("cow");
        fh.Truncate(Pmd);
        AddressSpace owner = bed.NewSpace();
        ulong s = owner.MmapFile(0, Pmd, Rw, MapFlags.Shared, fh);
        Cpu oc = bed.Cpu(owner);
        oc.Write(s, 5L);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.MmapFile(0, Pmd, Rw, MapFlags.Private, fh);
        Cpu cpu = bed.Cpu(mm);
        Assert.Equal(5L, cpu.Read<long>(a));
        Assert.Equal(owner.QueryPte(s, out _).Pfn, mm.QueryPte(a, out _).Pfn);
        cpu.Write(a, 6L);
        Assert.NotEqual(owner.QueryPte(s, out _).Pfn, mm.QueryPte(a, out _).Pfn);
        Assert.Equal(6L, cpu.Read<long>(a));
        Assert.Equal(5L, oc.Read<long>(s));
    }

    [Fact]
    public void ForkCopiesPrivateHugePagesSoEachSideKeepsItsOwn()
    {
        using var bed = new MmTestBed();
        HugetlbFs fs = bed.Hugetlb(4);
        AddressSpace parent = bed.NewSpace();
        ulong a = parent.Mmap(0, Pmd, Rw, AnonHuge);
        Cpu pc = bed.Cpu(parent);
        pc.Write(a, 1L);
        AddressSpace child = bed.Fork(parent);
        Cpu cc = bed.Cpu(child);
        Assert.Equal(1L, cc.Read<long>(a));
        cc.Write(a, 2L);
        Assert.Equal(1L, pc.Read<long>(a));
        Assert.Equal(2L, cc.Read<long>(a));
        bed.CheckInvariants();
    }

    [Fact]
    public void HugetlbMappingsRejectUnalignedMunmapAndMprotect()
    {
        using var bed = new MmTestBed();
        bed.Hugetlb(2);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 2 * Pmd, Rw, AnonHuge);
        string before = mm.MapsText();
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Munmap(a + Kib4, Kib4)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Mprotect(a, Kib4, Prot.Read)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Mremap(a, 2 * Pmd, 4 * Pmd, MremapFlags.MayMove)).Errno);
        Assert.Equal(before, mm.MapsText());
        mm.Mprotect(a, Pmd, Prot.Read);
        Assert.Equal(2, mm.Maps().Count);
    }

    [Fact]
    public void MapHugetlbWithoutADefaultHugetlbfsIsRejected()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Mmap(0, Pmd, Rw, AnonHuge)).Errno);
        Assert.Empty(mm.Maps());
    }

    [Fact]
    public void AOneGibPoolReservesOneGibMappingsAtMmap()
    {
        // 1.25 GiB of arena is virtual memory: untouched pages cost nothing, and the pages are never faulted here
        // (a fault would zero a whole GiB).
        using var bed = new MmTestBed(ramBytes: 1280 * Mib);
        HugetlbFs fs = bed.Hugetlb(1, Page.PudOrder);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, Page.PudSize, Rw, AnonHuge);
        Assert.True(Page.IsAligned(a, Page.PudSize));
        Assert.Equal(1UL, fs.Pool.Reserved);
        Assert.Equal(Errno.ENOMEM, Assert.Throws<MmException>(() => mm.Mmap(0, Page.PudSize, Rw, AnonHuge)).Errno);
        mm.Munmap(a, Page.PudSize);
        Assert.Equal(0UL, fs.Pool.Reserved);
    }
}
