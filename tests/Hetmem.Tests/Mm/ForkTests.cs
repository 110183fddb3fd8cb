using Hetmem.Mm;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

public class ForkTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    [Fact]
    public void ParentAndChildSharePagesUntilEitherWritesThenEachSeesOnlyItsOwnWrites()
    {
        using var bed = new MmTestBed();
        AddressSpace parent = bed.NewSpace();
        ulong a = parent.Mmap(0, 8 * Kib4, Rw, Anon);
        Cpu pc = bed.Cpu(parent);
        for (ulong i = 0; i < 8; i++)
        {
            pc.Write(a + i * Kib4, 100 + (long)i);
        }
        long beforeFork = bed.Memory.UsedFrames;
        AddressSpace child = bed.Fork(parent);
        // The pages are shared: the child only needed page tables.
        Assert.True(bed.Memory.UsedFrames - beforeFork <= 4);
        Assert.Equal(parent.QueryPte(a, out _).Pfn, child.QueryPte(a, out _).Pfn);
        Assert.False(parent.QueryPte(a, out _).IsWritable);
        Assert.False(child.QueryPte(a, out _).IsWritable);
        bed.CheckInvariants();

        Cpu cc = bed.Cpu(child);
        Assert.Equal(103L, cc.Read<long>(a + 3 * Kib4));
        cc.Write(a + 3 * Kib4, -3L);
        pc.Write(a + 5 * Kib4, -5L);
        Assert.Equal(103L, pc.Read<long>(a + 3 * Kib4));
        Assert.Equal(-3L, cc.Read<long>(a + 3 * Kib4));
        Assert.Equal(105L, cc.Read<long>(a + 5 * Kib4));
        Assert.Equal(-5L, pc.Read<long>(a + 5 * Kib4));
        Assert.NotEqual(parent.QueryPte(a + 3 * Kib4, out _).Pfn, child.QueryPte(a + 3 * Kib4, out _).Pfn);
        Assert.Equal(parent.QueryPte(a + 4 * Kib4, out _).Pfn, child.QueryPte(a + 4 * Kib4, out _).Pfn);
        bed.CheckInvariants();
    }

    [Fact]
    public void TheLastSharerOfACowPageReusesItWithoutCopying()
    {
        using var bed = new MmTestBed();
        AddressSpace parent = bed.NewSpace();
        ulong a = parent.Mmap(0, Kib4, Rw, Anon);
        Cpu pc = bed.Cpu(parent);
        pc.Write(a, 1L);
        ulong pfn = parent.QueryPte(a, out _).Pfn;
        AddressSpace child = bed.Fork(parent);
        child.Exit();
        Assert.Equal(1, bed.Memory.Frame(pfn).MapCount);
        long used = bed.Memory.UsedFrames;
        pc.Write(a, 2L);
        Assert.Equal(pfn, parent.QueryPte(a, out _).Pfn);
        Assert.Equal(used, bed.Memory.UsedFrames);
        Assert.True(parent.QueryPte(a, out _).IsWritable);
    }

    [Fact]
    public void FramesBalanceWhicheverSideExitsFirst()
    {
        foreach (bool parentFirst in new[] { true, false })
        {
            using var bed = new MmTestBed();
            AddressSpace parent = bed.NewSpace();
            ulong a = parent.Mmap(0, 32 * Kib4, Rw, Anon);
            using (var pc = new Cpu(parent))
            {
                pc.Fill(a, 32 * Kib4, 0x5A);
            }
            AddressSpace child = bed.Fork(parent);
            using (var cc = new Cpu(child))
            {
                cc.Fill(a, 16 * Kib4, 0xC3);
                Assert.Equal(0x5A, cc.Read<byte>(a + 20 * Kib4));
            }
            bed.CheckInvariants();
            (parentFirst ? parent : child).Exit();
            bed.CheckInvariants();
            AddressSpace survivor = parentFirst ? child : parent;
            using (var sc = new Cpu(survivor))
            {
                Assert.Equal(parentFirst ? 0xC3 : 0x5A, sc.Read<byte>(a));
                Assert.Equal(0x5A, sc.Read<byte>(a + 31 * Kib4));
            }
            survivor.Exit();
            Assert.Equal(bed.UsedAtStart, bed.Memory.UsedFrames);
        }
    }

    [Fact]
    public void ForkWriteProtectsTheParentInsideOneProtectionPageBracketPerCowVma()
    {
        using var bed = new MmTestBed();
        AddressSpace parent = bed.NewSpace();
        ulong a = parent.Mmap(0, 4 * Kib4, Rw, Anon);
        ulong s = parent.Mmap(0, 4 * Kib4, Rw, MapFlags.Shared | MapFlags.Anonymous);
        Cpu pc = bed.Cpu(parent);
        pc.Write(a, 1L);
        pc.Write(s, 2L);
        var rec = RecordingNotifier.Attach(parent);
        AddressSpace child = bed.Fork(parent);
        List<NotifierRecord> r = rec.Take();
        // Only the private VMA is COW: one PROTECTION_PAGE pair over it; the shared one sends nothing.
        RecordingNotifier.AssertSinglePair(r, MmuNotifierEvent.ProtectionPage, a, a + 4 * Kib4);
        Assert.True(RecordingNotifier.Pairs(r)[0].End <= a + 4 * Kib4);
        rec.Detach();
        Assert.True(child.IsAlive);
    }

    [Fact]
    public void SharedAnonymousMemoryStaysSharedAcrossFork()
    {
        using var bed = new MmTestBed();
        AddressSpace parent = bed.NewSpace();
        ulong s = parent.Mmap(0, 8 * Kib4, Rw, MapFlags.Shared | MapFlags.Anonymous);
        Cpu pc = bed.Cpu(parent);
        pc.Write(s, 11L);
        AddressSpace child = bed.Fork(parent);
        Cpu cc = bed.Cpu(child);
        Assert.Equal(11L, cc.Read<long>(s));
        cc.Write(s + Kib4, 22L);
        pc.Write(s + 2 * Kib4, 33L);
        Assert.Equal(22L, pc.Read<long>(s + Kib4));
        Assert.Equal(33L, cc.Read<long>(s + 2 * Kib4));
        Assert.Equal(parent.QueryPte(s + Kib4, out _).Pfn, child.QueryPte(s + Kib4, out _).Pfn);
        parent.Exit();
        // The object lives on in the child.
        Assert.Equal(11L, cc.Read<long>(s));
        cc.Write(s, 44L);
        Assert.Equal(44L, cc.Read<long>(s));
    }

    [Fact]
    public void AForkedReadOnlyPrivateMappingSharesPagesWithoutCow()
    {
        using var bed = new MmTestBed();
        AddressSpace parent = bed.NewSpace();
        ulong a = parent.Mmap(0, 2 * Kib4, Rw, Anon);
        Cpu pc = bed.Cpu(parent);
        pc.Write(a, 9L);
        parent.Mprotect(a, 2 * Kib4, Prot.Read);
        AddressSpace child = bed.Fork(parent);
        Cpu cc = bed.Cpu(child);
        Assert.Equal(9L, cc.Read<long>(a));
        Assert.Equal(SegvCode.AccErr, Assert.Throws<SegmentationFault>(() => cc.Write(a, 1L)).Code);
        // Making it writable again in the child copies on write.
        child.Mprotect(a, 2 * Kib4, Rw);
        cc.Write(a, 10L);
        Assert.Equal(9L, pc.Read<long>(a));
        Assert.Equal(10L, cc.Read<long>(a));
    }

    [Fact]
    public void NestedForksKeepEveryGenerationIndependent()
    {
        using var bed = new MmTestBed();
        AddressSpace g0 = bed.NewSpace();
        ulong a = g0.Mmap(0, 4 * Kib4, Rw, Anon);
        using (var c = new Cpu(g0))
        {
            c.Write(a, 0L);
        }
        var spaces = new List<AddressSpace> { g0 };
        for (int gen = 1; gen <= 4; gen++)
        {
            AddressSpace child = bed.Fork(spaces[^1]);
            using (var c = new Cpu(child))
            {
                Assert.Equal((long)(gen - 1), c.Read<long>(a));
                c.Write(a, (long)gen);
            }
            spaces.Add(child);
        }
        bed.CheckInvariants();
        for (int gen = 0; gen < spaces.Count; gen++)
        {
            using var c = new Cpu(spaces[gen]);
            Assert.Equal((long)gen, c.Read<long>(a));
        }
    }
}
