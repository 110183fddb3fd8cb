using Hetmem.Mm;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

public class SwapAndReclaimTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    [Fact]
    public void PageoutMovesAnonymousPagesToSwapAndAFaultBringsThemBack()
    {
        using var bed = new MmTestBed(swapSlots: 64);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 8 * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        for (ulong i = 0; i < 8; i++)
        {
            cpu.Write(a + i * Kib4 + 24, 1000 + (long)i);
        }
        long used = bed.Memory.UsedFrames;
        mm.Madvise(a, 8 * Kib4, Advice.PageOut);
        Assert.Equal(used - 8, bed.Memory.UsedFrames);
        Assert.Equal(8u, bed.Swap!.UsedSlots);
        MapsEntry m = mm.Maps().Single();
        Assert.Equal(8UL, m.SwapPages);
        Assert.Equal(0UL, m.ResidentPages);
        Assert.Equal(1UL << 62, mm.PagemapEntry(a) & (3UL << 62));
        bed.CheckInvariants();
        for (ulong i = 0; i < 8; i++)
        {
            Assert.Equal(1000 + (long)i, cpu.Read<long>(a + i * Kib4 + 24));
        }
        Assert.Equal(0u, bed.Swap.UsedSlots);
        Assert.Equal(used, bed.Memory.UsedFrames);
        Assert.Equal(8UL, mm.Maps().Single().ResidentPages);
    }

    [Fact]
    public void SwappedPagesAreSharedByForkAndEachSideSwapsInItsOwnCopy()
    {
        using var bed = new MmTestBed(swapSlots: 16);
        AddressSpace parent = bed.NewSpace();
        ulong a = parent.Mmap(0, 2 * Kib4, Rw, Anon);
        Cpu pc = bed.Cpu(parent);
        pc.Write(a, 5L);
        pc.Write(a + Kib4, 6L);
        parent.Madvise(a, 2 * Kib4, Advice.PageOut);
        AddressSpace child = bed.Fork(parent);
        Assert.Equal(2, bed.Swap!.Count((uint)parent.QueryPte(a, out _).Pfn));
        Cpu cc = bed.Cpu(child);
        Assert.Equal(5L, cc.Read<long>(a));
        cc.Write(a, 50L);
        Assert.Equal(5L, pc.Read<long>(a));
        Assert.Equal(6L, pc.Read<long>(a + Kib4));
        Assert.Equal(6L, cc.Read<long>(a + Kib4));
        child.Exit();
        parent.Exit();
        Assert.Equal(0u, bed.Swap.UsedSlots);
    }

    [Fact]
    public void MunmapOfSwappedPagesFreesTheirSlots()
    {
        using var bed = new MmTestBed(swapSlots: 16);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 4 * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        cpu.Fill(a, 4 * Kib4, 3);
        mm.Madvise(a, 4 * Kib4, Advice.PageOut);
        Assert.Equal(4u, bed.Swap!.UsedSlots);
        mm.Munmap(a, 2 * Kib4);
        Assert.Equal(2u, bed.Swap.UsedSlots);
        mm.Madvise(a + 2 * Kib4, 2 * Kib4, Advice.DontNeed);
        Assert.Equal(0u, bed.Swap.UsedSlots);
        Assert.Equal(0, cpu.Read<byte>(a + 3 * Kib4));
    }

    [Fact]
    public void WithoutSwapPageoutLeavesAnonymousPagesAlone()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 2 * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, 1L);
        long used = bed.Memory.UsedFrames;
        mm.Madvise(a, 2 * Kib4, Advice.PageOut);
        Assert.Equal(used, bed.Memory.UsedFrames);
        Assert.Equal(1L, cpu.Read<long>(a));
    }

    [Fact]
    public void SharedPagesAreNotPagedOutByOneOfTheirMappers()
    {
        using var bed = new MmTestBed(swapSlots: 16);
        AddressSpace parent = bed.NewSpace();
        ulong a = parent.Mmap(0, Kib4, Rw, Anon);
        Cpu pc = bed.Cpu(parent);
        pc.Write(a, 1L);
        AddressSpace child = bed.Fork(parent);
        parent.Madvise(a, Kib4, Advice.PageOut);
        Assert.Equal(0u, bed.Swap!.UsedSlots);
        Assert.True(parent.QueryPte(a, out _).IsPresent);
        Assert.True(child.IsAlive);
    }

    [Fact]
    public void MemoryPressureReclaimsToSwapSoAnAnonymousFaultCanStillSucceed()
    {
        using var bed = new MmTestBed(ramBytes: 4 * Mib, swapSlots: 2048);
        AddressSpace mm = bed.NewSpace();
        ulong pages = (ulong)bed.Memory.FreeFrames + 64;
        ulong a = mm.Mmap(0, pages * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        for (ulong i = 0; i < pages; i++)
        {
            cpu.Write(a + i * Kib4, (long)i);
        }
        Assert.True(bed.Swap!.UsedSlots > 0);
        for (ulong i = 0; i < pages; i += 7)
        {
            Assert.Equal((long)i, cpu.Read<long>(a + i * Kib4));
        }
    }
}
