using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

public class DaxMappingTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const ulong Pmd = Page.PmdSize;
    private const ulong Pud = Page.PudSize;
    private const ulong Base = 0x3000_0000_0000;   // 1 GiB aligned

    [Fact]
    public void AnAlignedSharedMappingInstallsPmdEntriesAndDataGoesStraightToTheFile()
    {
        using var bed = new MmTestBed();
        DaxFileSystem fs = bed.Dax(64 * Mib);
        using FileHandle fh = fs.Create("pmd");
        fh.Truncate(8 * Mib);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.MmapFile(Base, 8 * Mib, Rw, MapFlags.Shared | MapFlags.Fixed, fh);
        Cpu cpu = bed.Cpu(mm);
        long used = bed.Memory.UsedFrames;
        Assert.Equal(0L, cpu.Read<long>(a + Pmd + 64));
        Pte e = mm.QueryPte(a + Pmd + 64, out int order);
        Assert.Equal(Page.PmdOrder, order);
        Assert.True(e.IsHugeLeaf && e.IsDevMap);
        Assert.False(e.IsWritable);
        Assert.False(bed.Memory.IsRam(e.Pfn));
        cpu.Write(a + Pmd + 64, 0x0102_0304_0506_0708L);
        Assert.True(mm.QueryPte(a + Pmd, out _).IsWritable);
        var b = new byte[8];
        fh.Read(Pmd + 64, b);
        Assert.Equal(0x0102_0304_0506_0708L, BitConverter.ToInt64(b));
        // No RAM page was used for the data (only page tables).
        Assert.True(bed.Memory.UsedFrames - used <= 3);
        MapsEntry m = mm.Maps().Single();
        Assert.Equal(1UL, m.PmdEntries);
        Assert.Equal(VmaKind.Dax, m.Kind);
        bed.CheckInvariants();
    }

    [Fact]
    public void AMisalignedOffsetFallsBackToPteEntries()
    {
        using var bed = new MmTestBed();
        DaxFileSystem fs = bed.Dax(64 * Mib);
        using FileHandle fh = fs.Create("pte");
        fh.Truncate(8 * Mib);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.MmapFile(Base, 4 * Mib, Rw, MapFlags.Shared | MapFlags.Fixed, fh, offset: Kib4);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a + Pmd, 5L);
        mm.QueryPte(a + Pmd, out int order);
        Assert.Equal(0, order);
        var b = new byte[8];
        fh.Read(Pmd + Kib4, b);
        Assert.Equal(5L, BitConverter.ToInt64(b));
    }

    [Fact]
    public void AOneGibAlignedMappingOfATwoGibNamespaceInstallsAPudEntry()
    {
        using var bed = new MmTestBed();
        DaxFileSystem fs = bed.Dax(2 * Pud);
        using FileHandle fh = fs.Create("pud");
        fh.Truncate(Pud);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.MmapFile(Base, Pud, Rw, MapFlags.Shared | MapFlags.Fixed, fh);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a + 300 * Mib + 8, 99L);
        Pte e = mm.QueryPte(a + 300 * Mib, out int order);
        Assert.Equal(Page.PudOrder, order);
        Assert.True(e.IsHugeLeaf && e.IsWritable);
        Assert.Equal(99L, cpu.Read<long>(a + 300 * Mib + 8));
        Assert.Equal(1UL, mm.Maps().Single().PudEntries);
        var b = new byte[8];
        fh.Read(300 * Mib + 8, b);
        Assert.Equal(99L, BitConverter.ToInt64(b));

        // Unmapping 2 MiB out of the middle drops the PUD (CLEAR over the whole GiB); the rest refaults smaller.
        var rec = RecordingNotifier.Attach(mm);
        mm.Munmap(a + 512 * Mib, Pmd);
        List<NotifierRecord> r = rec.Take();
        Assert.Contains(RecordingNotifier.Pairs(r), p => p.Event == MmuNotifierEvent.Clear && p.Start == a && p.End == a + Pud);
        Assert.Contains(RecordingNotifier.Pairs(r), p => p.Event == MmuNotifierEvent.Unmap && p.Start == a + 512 * Mib);
        Assert.Equal(99L, cpu.Read<long>(a + 300 * Mib + 8));
        mm.QueryPte(a + 300 * Mib, out order);
        Assert.Equal(Page.PmdOrder, order);
        Assert.Throws<SegmentationFault>(() => cpu.Read<long>(a + 512 * Mib));
        rec.Detach();
        bed.CheckInvariants();
    }

    [Fact]
    public void TruncatingADaxFileUnmapsItAndLaterAccessRaisesBusError()
    {
        using var bed = new MmTestBed();
        DaxFileSystem fs = bed.Dax(64 * Mib);
        using FileHandle fh = fs.Create("trunc");
        fh.Truncate(4 * Mib);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.MmapFile(Base, 4 * Mib, Rw, MapFlags.Shared | MapFlags.Fixed, fh);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a + 3 * Mib, 1L);
        cpu.Write(a, 2L);
        var rec = RecordingNotifier.Attach(mm);
        fh.Truncate(Pmd + 3 * Kib4);
        Assert.Contains(RecordingNotifier.Pairs(rec.Take()), p => p.Event == MmuNotifierEvent.Clear && p.End >= a + 4 * Mib);
        Assert.Throws<BusError>(() => cpu.Read<long>(a + 3 * Mib));
        Assert.Throws<BusError>(() => cpu.Write(a + Pmd + 3 * Kib4, 1L));
        Assert.Equal(2L, cpu.Read<long>(a));
        Assert.Equal(0L, cpu.Read<long>(a + Pmd));
        rec.Detach();
    }

    [Fact]
    public void DataWrittenThroughAMappingSurvivesRemountingTheNamespaceFile()
    {
        using var bed = new MmTestBed();
        string path = bed.Dir.File("persist");
        using (var ns = new DaxNamespace(bed.Memory, path, 16 * Mib))
        using (DaxFileSystem fs = DaxFileSystem.Format(ns))
        {
            AddressSpace mm = bed.NewSpace();
            using (FileHandle fh = fs.Create("keep"))
            {
                fh.Truncate(Pmd);
                ulong a = mm.MmapFile(Base, Pmd, Rw, MapFlags.SharedValidate | MapFlags.Sync | MapFlags.Fixed, fh);
                using (var cpu = new Cpu(mm))
                {
                    cpu.Write(a + 4000, 0x5555_AAAAu);
                }
                mm.Msync(a, Pmd, AddressSpace.MsyncFlags.Sync);
            }
            mm.Exit();
        }
        using var other = new PhysicalMemory(16 * Mib);
        using var ns2 = new DaxNamespace(other, path, 16 * Mib);
        using DaxFileSystem fs2 = DaxFileSystem.Mount(ns2);
        using FileHandle f2 = fs2.Open("keep", FileAccess.Read);
        var b = new byte[4];
        f2.Read(4000, b);
        Assert.Equal(0x5555_AAAAu, BitConverter.ToUInt32(b));
    }

    [Fact]
    public void APrivateDaxMappingCopiesOnWriteIntoRam()
    {
        using var bed = new MmTestBed();
        DaxFileSystem fs = bed.Dax(64 * Mib);
        using FileHandle fh = fs.Create("priv");
        fh.Write(0, [1, 2, 3, 4]);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.MmapFile(0, Kib4, Rw, MapFlags.Private, fh);
        Cpu cpu = bed.Cpu(mm);
        Assert.Equal(0x0403_0201u, cpu.Read<uint>(a));
        Assert.False(bed.Memory.IsRam(mm.QueryPte(a, out _).Pfn));
        cpu.Write(a, 0xFFFF_FFFFu);
        Assert.True(bed.Memory.IsRam(mm.QueryPte(a, out _).Pfn));
        var b = new byte[4];
        fh.Read(0, b);
        Assert.Equal(new byte[] { 1, 2, 3, 4 }, b);
    }

    [Fact]
    public void AForkedChildSeesAndSharesTheDaxMapping()
    {
        using var bed = new MmTestBed();
        DaxFileSystem fs = bed.Dax(64 * Mib);
        using FileHandle fh = fs.Create("fork");
        fh.Truncate(Pmd);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.MmapFile(Base, Pmd, Rw, MapFlags.Shared | MapFlags.Fixed, fh);
        Cpu pc = bed.Cpu(mm);
        pc.Write(a, 1L);
        AddressSpace child = bed.Fork(mm);
        Cpu cc = bed.Cpu(child);
        Assert.Equal(1L, cc.Read<long>(a));
        cc.Write(a + 8, 2L);
        Assert.Equal(2L, pc.Read<long>(a + 8));
    }

    [Fact]
    public void MapSyncIsAcceptedOnDaxAndRefusedOnThePageCache()
    {
        using var bed = new MmTestBed();
        DaxFileSystem fs = bed.Dax(64 * Mib);
        using FileHandle dax = fs.Create("s");
        dax.Truncate(Kib4);
        using FileHandle pc = bed.PageCache.Create("s");
        pc.Truncate(Kib4);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.MmapFile(0, Kib4, Rw, MapFlags.SharedValidate | MapFlags.Sync, dax);
        Assert.Equal(VmaKind.Dax, mm.Maps().Single().Kind);
        string before = mm.MapsText();
        Assert.Equal(Errno.EOPNOTSUPP, Assert.Throws<MmException>(() => mm.MmapFile(0, Kib4, Rw, MapFlags.SharedValidate | MapFlags.Sync, pc)).Errno);
        Assert.Equal(before, mm.MapsText());
        // Without MAP_SHARED_VALIDATE the flag is ignored, as the kernel does.
        mm.MmapFile(0, Kib4, Rw, MapFlags.Shared | MapFlags.Sync, pc);
        Assert.Equal(2, mm.Maps().Count);
        Assert.True(a != 0);
    }
}
