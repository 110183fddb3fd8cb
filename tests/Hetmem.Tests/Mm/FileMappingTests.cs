using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

public class FileMappingTests
{
    private const Prot Rw = Prot.Read | Prot.Write;

    private static byte[] Pattern(int length, int seed) => [.. Enumerable.Range(0, length).Select(i => (byte)(i * 13 + seed))];

    [Fact]
    public void ASharedMappingReadsTheFileAndItsWritesReachTheHostFileAtMsync()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("data");
        byte[] content = Pattern(3 * (int)Kib4, 5);
        fh.Write(0, content);
        fh.Fsync();
        ulong a = mm.MmapFile(0, 3 * Kib4, Rw, MapFlags.Shared, fh);
        Cpu cpu = bed.Cpu(mm);
        var back = new byte[content.Length];
        cpu.Read(a, back);
        Assert.Equal(content, back);
        var file = (PageCacheFile)fh.Inode;
        Assert.True(file.TryFindPage(1, out ulong pfn));
        Assert.False(bed.Memory.Frame(pfn).Has(FrameFlags.Dirty));
        Assert.False(mm.QueryPte(a + Kib4, out _).IsWritable);   // read faults map clean pages read-only

        cpu.Write(a + Kib4 + 10, 0xDEAD_BEEFu);
        Assert.True(bed.Memory.Frame(pfn).Has(FrameFlags.Dirty));
        Assert.True(mm.QueryPte(a + Kib4, out _).IsDirty);
        Assert.NotEqual(0xDEAD_BEEFu, BitConverter.ToUInt32(File.ReadAllBytes(file.HostPath), (int)Kib4 + 10));
        mm.Msync(a, 3 * Kib4, AddressSpace.MsyncFlags.Sync);
        byte[] host = File.ReadAllBytes(file.HostPath);
        Assert.Equal(0xDEAD_BEEFu, BitConverter.ToUInt32(host, (int)Kib4 + 10));
        Assert.False(bed.Memory.Frame(pfn).Has(FrameFlags.Dirty));
        // The page is clean and write-protected again; the next write makes it dirty again.
        cpu.Write(a + Kib4, (byte)1);
        Assert.True(bed.Memory.Frame(pfn).Has(FrameFlags.Dirty));
        // And a write through the file is visible through the mapping.
        fh.Write(2 * Kib4, [9, 9, 9, 9]);
        Assert.Equal(0x0909_0909u, cpu.Read<uint>(a + 2 * Kib4));
    }

    [Fact]
    public void APrivateMappingCopiesOnWriteAndNeverChangesTheFile()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("p");
        byte[] content = Pattern(2 * (int)Kib4, 1);
        fh.Write(0, content);
        using FileHandle ro = bed.PageCache.Open("p", FileAccess.Read);
        ulong a = mm.MmapFile(0, 2 * Kib4, Rw, MapFlags.Private, ro);
        Cpu cpu = bed.Cpu(mm);
        Assert.Equal(content[7], cpu.Read<byte>(a + 7));
        ulong filePfn = mm.QueryPte(a, out _).Pfn;
        cpu.Write(a + 7, (byte)0xEE);
        Pte e = mm.QueryPte(a, out _);
        Assert.NotEqual(filePfn, e.Pfn);
        Assert.True(bed.Memory.Frame(e.Pfn).Has(FrameFlags.Anon));
        Assert.Equal(0xEE, cpu.Read<byte>(a + 7));
        Assert.Equal(content[8], cpu.Read<byte>(a + 8));
        var check = new byte[1];
        fh.Read(7, check);
        Assert.Equal(content[7], check[0]);
        // A private write fault on an untouched page copies straight from the file.
        cpu.Write(a + Kib4, (byte)0x77);
        fh.Read(Kib4, check);
        Assert.Equal(content[Kib4], check[0]);
    }

    [Fact]
    public void AccessBeyondTheEndOfTheFileRaisesBusErrorInsideTheMapping()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("short");
        fh.Write(0, Pattern(100, 3));
        ulong a = mm.MmapFile(0, 4 * Kib4, Prot.Read, MapFlags.Shared, fh);
        Cpu cpu = bed.Cpu(mm);
        // The rest of the last page reads as zero.
        Assert.Equal(0, cpu.Read<byte>(a + 200));
        var bus = Assert.Throws<BusError>(() => cpu.Read<byte>(a + Kib4));
        Assert.Equal(a + Kib4, bus.Address);
        Assert.Throws<BusError>(() => cpu.Read<byte>(a + 3 * Kib4 + 5));
        // Growing the file makes the pages accessible.
        fh.Truncate(2 * Kib4);
        Assert.Equal(0, cpu.Read<byte>(a + Kib4));
    }

    [Fact]
    public void AMappingKeepsAnUnlinkedFileAliveUntilItIsUnmapped()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a;
        Inode inode;
        using (FileHandle fh = bed.PageCache.Create("gone"))
        {
            fh.Write(0, Pattern((int)Kib4, 9));
            a = mm.MmapFile(0, Kib4, Rw, MapFlags.Shared, fh);
            inode = fh.Inode;
        }
        bed.PageCache.Unlink("gone");
        Assert.False(inode.IsEvicted);
        Cpu cpu = bed.Cpu(mm);
        Assert.Equal(Pattern((int)Kib4, 9)[10], cpu.Read<byte>(a + 10));
        Assert.Equal(1, inode.ReferenceCount);
        mm.Munmap(a, Kib4);
        Assert.True(inode.IsEvicted);
    }

    [Fact]
    public void SplittingAndMergingFileVmasKeepsOneInodeReferencePerVma()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("refs");
        fh.Truncate(8 * Kib4);
        int baseRefs = fh.Inode.ReferenceCount;
        ulong a = mm.MmapFile(0, 8 * Kib4, Rw, MapFlags.Shared, fh);
        Assert.Equal(baseRefs + 1, fh.Inode.ReferenceCount);
        mm.Mprotect(a + 2 * Kib4, 2 * Kib4, Prot.Read);
        Assert.Equal(3, mm.Maps().Count);
        Assert.Equal(baseRefs + 3, fh.Inode.ReferenceCount);
        Assert.Equal(3, fh.Inode.Mappings.Count);
        mm.Mprotect(a + 2 * Kib4, 2 * Kib4, Rw);
        Assert.Single(mm.Maps());
        Assert.Equal(baseRefs + 1, fh.Inode.ReferenceCount);
        AddressSpace child = bed.Fork(mm);
        Assert.Equal(baseRefs + 2, fh.Inode.ReferenceCount);
        child.Exit();
        mm.Munmap(a + Kib4, Kib4);
        Assert.Equal(baseRefs + 2, fh.Inode.ReferenceCount);
        mm.Exit();
        Assert.Equal(baseRefs, fh.Inode.ReferenceCount);
    }

    [Fact]
    public void PageoutDropsCleanPageCachePagesAndTheyRefaultFromTheFile()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("clean");
        fh.Write(0, Pattern(4 * (int)Kib4, 7));
        fh.Fsync();
        var file = (PageCacheFile)fh.Inode;
        ulong a = mm.MmapFile(0, 4 * Kib4, Prot.Read, MapFlags.Shared, fh);
        Cpu cpu = bed.Cpu(mm);
        for (ulong i = 0; i < 4; i++)
        {
            cpu.Read<byte>(a + i * Kib4);
        }
        Assert.Equal(4, file.CachedPages);
        long used = bed.Memory.UsedFrames;
        mm.Madvise(a, 4 * Kib4, Advice.PageOut);
        Assert.Equal(0, file.CachedPages);
        Assert.Equal(used - 4, bed.Memory.UsedFrames);
        Assert.Equal(0UL, mm.Maps().Single().ResidentPages);
        Assert.Equal(Pattern(4 * (int)Kib4, 7)[3 * (int)Kib4 + 1], cpu.Read<byte>(a + 3 * Kib4 + 1));
    }

    [Fact]
    public void PageoutWritesBackDirtyFilePagesBeforeDroppingThem()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("dirty");
        fh.Truncate(Kib4);
        var file = (PageCacheFile)fh.Inode;
        ulong a = mm.MmapFile(0, Kib4, Rw, MapFlags.Shared, fh);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a + 8, 42L);
        mm.Madvise(a, Kib4, Advice.PageOut);
        Assert.Equal(0, file.CachedPages);
        Assert.Equal(42L, BitConverter.ToInt64(File.ReadAllBytes(file.HostPath), 8));
        Assert.Equal(42L, cpu.Read<long>(a + 8));
    }

    [Fact]
    public void MadvWillneedReadsFilePagesIntoThePageCacheWithoutMappingThem()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("ahead");
        fh.Write(0, Pattern(8 * (int)Kib4, 2));
        var file = (PageCacheFile)fh.Inode;
        mm.Madvise(0, 0, Advice.WillNeed);
        ulong a = mm.MmapFile(0, 8 * Kib4, Prot.Read, MapFlags.Private, fh);
        int before = file.CachedPages;
        mm.Madvise(a, 8 * Kib4, Advice.WillNeed);
        Assert.True(file.CachedPages >= Math.Max(before, 8));
        Assert.Equal(0UL, mm.Maps().Single().ResidentPages);
    }

    [Fact]
    public void MadvDontneedOnAPrivateFileMappingDropsCowCopiesAndRereadsTheFile()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("dn");
        fh.Write(0, Pattern((int)Kib4, 4));
        ulong a = mm.MmapFile(0, Kib4, Rw, MapFlags.Private, fh);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, (byte)0xFF);
        Assert.Equal(0xFF, cpu.Read<byte>(a));
        mm.Madvise(a, Kib4, Advice.DontNeed);
        Assert.Equal(Pattern((int)Kib4, 4)[0], cpu.Read<byte>(a));
    }

    [Fact]
    public void MapPopulateOfASharedWritableFileReadsWithoutDirtyingAndMsyncAsyncJustSucceeds()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("pop");
        fh.Truncate(4 * Kib4);
        ulong a = mm.MmapFile(0, 4 * Kib4, Rw, MapFlags.Shared | MapFlags.Populate, fh);
        Assert.Equal(4UL, mm.Maps().Single().ResidentPages);
        Assert.False(mm.QueryPte(a, out _).IsDirty);
        mm.Msync(a, 4 * Kib4, AddressSpace.MsyncFlags.Async);
        mm.Msync(a, 0, AddressSpace.MsyncFlags.Sync);
    }
}
