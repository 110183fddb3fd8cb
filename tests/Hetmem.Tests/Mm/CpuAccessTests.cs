using Hetmem.Mm;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

public class CpuAccessTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    [Fact]
    public void AnUnmappedAddressRaisesMaperrAndAForbiddenAccessRaisesAccerr()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 3 * Kib4, Rw, Anon);
        mm.Mprotect(a + Kib4, Kib4, Prot.None);
        mm.Mprotect(a + 2 * Kib4, Kib4, Prot.Read);
        Cpu cpu = bed.Cpu(mm);
        var e1 = Assert.Throws<SegmentationFault>(() => cpu.Read<int>(a + 3 * Kib4 + 4));
        Assert.Equal(SegvCode.MapErr, e1.Code);
        Assert.Equal(a + 3 * Kib4 + 4, e1.Address);
        Assert.Equal(SegvCode.MapErr, Assert.Throws<SegmentationFault>(() => cpu.Read<int>(0)).Code);
        Assert.Equal(SegvCode.MapErr, Assert.Throws<SegmentationFault>(() => cpu.Read<int>(AddressSpace.TaskSize + Kib4)).Code);
        Assert.Equal(SegvCode.AccErr, Assert.Throws<SegmentationFault>(() => cpu.Read<int>(a + Kib4)).Code);
        Assert.Equal(SegvCode.AccErr, Assert.Throws<SegmentationFault>(() => cpu.Write(a + Kib4, 1)).Code);
        Assert.Equal(SegvCode.AccErr, Assert.Throws<SegmentationFault>(() => cpu.Write(a + 2 * Kib4, 1)).Code);
        Assert.Equal(0, cpu.Read<int>(a + 2 * Kib4));
        // A span access that crosses into a forbidden page faults at the first forbidden byte.
        var buf = new byte[100];
        var e2 = Assert.Throws<SegmentationFault>(() => cpu.Write(a + Kib4 - 50, buf));
        Assert.Equal(a + Kib4, e2.Address);
        Assert.Equal(0, cpu.Read<byte>(a + Kib4 - 50));
    }

    [Fact]
    public void ProtNoneKeepsThePagesAndRestoringAccessShowsTheSameData()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 2 * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, 123L);
        ulong pfn = mm.QueryPte(a, out _).Pfn;
        mm.Mprotect(a, 2 * Kib4, Prot.None);
        Assert.True(mm.QueryPte(a, out _).IsProtNone);
        Assert.Equal(1UL, mm.Maps().Single().ResidentPages);
        Assert.Throws<SegmentationFault>(() => cpu.Read<long>(a));
        mm.Mprotect(a, 2 * Kib4, Prot.Read);
        Assert.Equal(123L, cpu.Read<long>(a));
        Assert.Equal(pfn, mm.QueryPte(a, out _).Pfn);
        bed.CheckInvariants();
    }

    [Fact]
    public void AtomicsWorkAcrossThreadsAndRespectProtection()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 2 * Kib4, Rw, Anon);
        const int threads = 4, perThread = 2000;
        var workers = Enumerable.Range(0, threads).Select(_ => new Thread(() =>
        {
            using var c = new Cpu(mm);
            for (int i = 0; i < perThread; i++)
            {
                c.Add(a, 1L);
                c.Add(a + 8, 2);
                long seen;
                do
                {
                    seen = c.Read<long>(a + 16);
                }
                while (c.CompareExchange(a + 16, seen + 3, seen) != seen);
            }
        })).ToList();
        workers.ForEach(t => t.Start());
        workers.ForEach(t => t.Join());
        Cpu cpu = bed.Cpu(mm);
        Assert.Equal((long)threads * perThread, cpu.Read<long>(a));
        Assert.Equal(2 * threads * perThread, cpu.Read<int>(a + 8));
        Assert.Equal(3L * threads * perThread, cpu.Read<long>(a + 16));
        Assert.Equal(0, cpu.CompareExchange(a + 24, 9, 0));
        Assert.Equal(9, cpu.Read<int>(a + 24));
        Assert.Equal(9, cpu.CompareExchange(a + 24, 1, 5));
        Assert.Equal(9, cpu.Read<int>(a + 24));
        Assert.Throws<ArgumentException>(() => cpu.Add(a + 4, 1L));
        mm.Mprotect(a, 2 * Kib4, Prot.Read);
        Assert.Equal(SegvCode.AccErr, Assert.Throws<SegmentationFault>(() => cpu.Add(a, 1L)).Code);
        Assert.Equal(SegvCode.AccErr, Assert.Throws<SegmentationFault>(() => cpu.CompareExchange(a + Kib4, 1L, 0L)).Code);
    }

    [Fact]
    public void AnAtomicOnAFreshPageFaultsItInForWrite()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        Assert.Equal(0L, cpu.Read<long>(a));        // zero page, read-only
        Assert.Equal(5L, cpu.Add(a, 5L));           // write fault replaces it
        Assert.NotEqual(bed.Memory.ZeroPfn, mm.QueryPte(a, out _).Pfn);
    }

    [Fact]
    public void AStaleTlbEntryIsNeverUsedAfterMunmapOrMprotect()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, 1L);
        Assert.Equal(1L, cpu.Read<long>(a));   // TLB hit from now on
        mm.Mprotect(a, Kib4, Prot.Read);
        Assert.Throws<SegmentationFault>(() => cpu.Write(a, 2L));
        mm.Munmap(a, Kib4);
        Assert.Throws<SegmentationFault>(() => cpu.Read<long>(a));
        ulong b = mm.Mmap(a, Kib4, Rw, Anon | MapFlags.Fixed);
        Assert.Equal(0L, cpu.Read<long>(b));
    }
}
