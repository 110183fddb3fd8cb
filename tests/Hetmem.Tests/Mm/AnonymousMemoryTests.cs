using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

public class AnonymousMemoryTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    [Fact]
    public void AReadFaultMapsTheSharedZeroPageReadOnlyAndAllocatesNothing()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 8 * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        long used = bed.Memory.UsedFrames;
        for (ulong i = 0; i < 8; i++)
        {
            Assert.Equal(0L, cpu.Read<long>(a + i * Kib4 + 16));
        }
        Pte e = mm.QueryPte(a, out int order);
        Assert.Equal(0, order);
        Assert.True(e.IsPresent);
        Assert.False(e.IsWritable);
        Assert.Equal(bed.Memory.ZeroPfn, e.Pfn);
        // Only a page table (PTE level, maybe PMD/PUD) was needed.
        Assert.True(bed.Memory.UsedFrames - used <= 3);
        Assert.Equal(8UL, mm.Maps()[0].ResidentPages);
    }

    [Fact]
    public void AWriteAfterAReadReplacesTheZeroPageWithAPrivateZeroedPage()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 4 * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        Assert.Equal(0, cpu.Read<int>(a + 100));
        var rec = RecordingNotifier.Attach(mm);
        cpu.Write(a + 100, 0x1234_5678);
        RecordingNotifier.AssertSinglePair(rec.Take(), MmuNotifierEvent.Clear, a, a + Kib4);
        Pte e = mm.QueryPte(a, out _);
        Assert.True(e.IsWritable);
        Assert.NotEqual(bed.Memory.ZeroPfn, e.Pfn);
        Assert.Equal(0x1234_5678, cpu.Read<int>(a + 100));
        Assert.Equal(0, cpu.Read<int>(a + 104));
        Assert.True(bed.Memory.Frame(e.Pfn).Has(FrameFlags.Anon));
        // The zero page itself is untouched.
        Assert.All(bed.Memory.FrameSpan(bed.Memory.ZeroPfn).ToArray(), b => Assert.Equal(0, b));
        rec.Detach();
    }

    [Fact]
    public void AWriteFaultOnAnEmptyEntryAllocatesOnePageWithoutANotifierBracket()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 16 * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, 1L);   // tables now exist
        var rec = RecordingNotifier.Attach(mm);
        long used = bed.Memory.UsedFrames;
        cpu.Write(a + 5 * Kib4, 5L);
        Assert.Equal(used + 1, bed.Memory.UsedFrames);
        Assert.Empty(rec.Take());
        rec.Detach();
    }

    [Fact]
    public void EveryPageKeepsItsOwnDataAcrossAManyPageMapping()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        const int pages = 300;
        ulong a = mm.Mmap(0, pages * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        for (ulong i = 0; i < pages; i++)
        {
            cpu.Write(a + i * Kib4 + (i % 512) * 8, (long)i * 7919);
        }
        for (ulong i = 0; i < pages; i++)
        {
            Assert.Equal((long)i * 7919, cpu.Read<long>(a + i * Kib4 + (i % 512) * 8));
        }
        bed.CheckInvariants();
    }

    [Fact]
    public void SpanReadsAndWritesCrossPageBoundariesAndFillWorks()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 4 * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        byte[] data = [.. Enumerable.Range(0, 10000).Select(i => (byte)(i * 31))];
        cpu.Write(a + 100, data);
        var back = new byte[data.Length];
        cpu.Read(a + 100, back);
        Assert.Equal(data, back);
        cpu.Fill(a + Kib4 - 3, 6, 0xAB);
        Assert.Equal(0xABABABABABABUL, cpu.Read<ulong>(a + Kib4 - 3) & 0xFFFF_FFFF_FFFF);
        // An unaligned typed access crossing a page boundary is split.
        cpu.Write(a + 2 * Kib4 - 4, 0x1122_3344_5566_7788UL);
        Assert.Equal(0x1122_3344_5566_7788UL, cpu.Read<ulong>(a + 2 * Kib4 - 4));
    }

    [Fact]
    public void MapPopulateFaultsEveryPageInForWriteOnAPrivateWritableMapping()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 8 * Kib4, Rw, Anon | MapFlags.Populate);
        MapsEntry m = mm.Maps().Single();
        Assert.Equal(8UL, m.ResidentPages);
        for (ulong i = 0; i < 8; i++)
        {
            Pte e = mm.QueryPte(a + i * Kib4, out _);
            Assert.True(e.IsWritable);
            Assert.NotEqual(bed.Memory.ZeroPfn, e.Pfn);
        }
    }

    [Fact]
    public void FramesAndPageTablesAreAllFreedAtExit()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 64 * Kib4, Rw, Anon);
        ulong b = mm.Mmap(0x1000_0000_0000, 4 * Kib4, Rw, Anon | MapFlags.Fixed);
        using (Cpu cpu = new(mm))
        {
            for (ulong i = 0; i < 64; i++)
            {
                cpu.Write(a + i * Kib4, i);
            }
            cpu.Write(b, 1UL);
        }
        Assert.True(mm.PageTableFrames >= 4);
        mm.Exit();
        Assert.Equal(0, mm.PageTableFrames);
        Assert.Equal(bed.UsedAtStart, bed.Memory.UsedFrames);
        Assert.False(mm.IsAlive);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mm.Mmap(0, Kib4, Rw, Anon)).Errno);
    }

    [Fact]
    public void MunmapFreesThePagesAndTheEmptyPageTablesRightAway()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        long base0 = bed.Memory.UsedFrames;
        ulong a = mm.Mmap(0, 4 * Mib, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        for (ulong off = 0; off < 4 * Mib; off += Kib4)
        {
            cpu.Write(a + off, off);
        }
        Assert.True(bed.Memory.UsedFrames - base0 >= 1024);
        mm.Munmap(a, 4 * Mib);
        // Upper-level tables (PUD, PMD) may stay until exit; all pages and PTE tables are gone.
        Assert.True(bed.Memory.UsedFrames - base0 <= 2, $"{bed.Memory.UsedFrames - base0} frames still used");
        Assert.Empty(mm.Maps());
    }
}
