using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

/// <summary>The debug invariant checker finds what it is meant to find (a checker that never fails proves nothing).</summary>
public unsafe class DebugInvariantTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    [Fact]
    public void AWritableEntryInAReadOnlyVmaIsReported()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, Kib4, Rw, Anon);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(a, 1L);
        }
        mm.Mprotect(a, Kib4, Prot.Read);
        mm.CheckInvariants();
        mm.Lookup(a, out _, out ulong* slot);
        ulong saved = *slot;
        *slot = saved | Pte.Write;
        var ex = Assert.Throws<InvalidOperationException>(() => mm.CheckInvariants());
        Assert.Contains("without VM_WRITE", ex.Message);
        *slot = saved;
        mm.CheckInvariants();
    }

    [Fact]
    public void AMapCountThatDisagreesWithThePageTablesIsReported()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, Kib4, Rw, Anon);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(a, 1L);
        }
        ulong pfn = mm.QueryPte(a, out _).Pfn;
        bed.Memory.AddMap(pfn);
        var ex = Assert.Throws<InvalidOperationException>(() => AddressSpace.CheckMapCounts(mm));
        Assert.Contains($"0x{pfn:x}", ex.Message);
        bed.Memory.RemoveMap(pfn);
        AddressSpace.CheckMapCounts(mm);
    }

    [Fact]
    public void AnEntryOutsideEveryVmaAndAFreedFrameStillMappedAreReported()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 2 * Kib4, Rw, Anon);
        mm.Munmap(a + Kib4, Kib4);
        ulong* stray = mm.PteEntry(a + Kib4, alloc: true);
        ulong pfn = bed.Memory.Allocate(0);
        *stray = Pte.Make(pfn, false).Value;
        bed.Memory.AddMap(pfn);
        Assert.Contains("outside every VMA", Assert.Throws<InvalidOperationException>(() => mm.CheckInvariants()).Message);
        *stray = 0;
        bed.Memory.RemoveMap(pfn);
        bed.Memory.Put(pfn);
        ulong* inside = mm.PteEntry(a, alloc: true);
        *inside = Pte.Make(pfn, false).Value;   // pfn is free now: a use after free
        Assert.Contains("free", Assert.Throws<InvalidOperationException>(() => mm.CheckInvariants()).Message);
        *inside = 0;
        mm.CheckInvariants();
    }

    [Fact]
    public void ZappingAPresentEntryOutsideANotifierBracketIsCaught()
    {
        Assert.True(Invariants.CompiledIn, "this check needs a build with HETMEM_INVARIANTS");
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, Kib4, Rw, Anon);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(a, 1L);
        }
        Vma vma = mm.Vmas.Find(a)!;
        AddressSpace.MmuGather g = AddressSpace.MmuGather.Rent();
        Assert.Throws<InvariantViolationException>(() => mm.ZapRange(vma, a, a + Kib4, g));
        AddressSpace.MmuGather.Return(g);
        Assert.True(mm.QueryPte(a, out _).IsPresent);
    }
}
