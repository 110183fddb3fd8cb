using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Mm;

public class AddressSpaceSmokeTests
{
    [Fact]
    public void AnonymousMemoryIsZeroFilledWritableAndFreedAtExit()
    {
        using var mem = new PhysicalMemory(64UL << 20);
        long before = mem.UsedFrames;
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, 16 * 4096, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(mm))
        {
            Assert.Equal(0L, cpu.Read<long>(a + 8));
            for (ulong i = 0; i < 16; i++)
            {
                cpu.Write(a + i * 4096, (long)i + 1);
            }
            for (ulong i = 0; i < 16; i++)
            {
                Assert.Equal((long)i + 1, cpu.Read<long>(a + i * 4096));
            }
        }
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void ForkedChildSeesParentDataAndWritesStayPrivate()
    {
        using var mem = new PhysicalMemory(64UL << 20);
        long before = mem.UsedFrames;
        var parent = new AddressSpace(mem);
        ulong a = parent.Mmap(0, 4 * 4096, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using var pc = new Cpu(parent);
        pc.Write(a, 42L);
        var child = parent.Fork();
        using (var cc = new Cpu(child))
        {
            Assert.Equal(42L, cc.Read<long>(a));
            cc.Write(a, 7L);
            Assert.Equal(7L, cc.Read<long>(a));
        }
        Assert.Equal(42L, pc.Read<long>(a));
        pc.Write(a, 43L);
        Assert.Equal(43L, pc.Read<long>(a));
        child.Exit();
        pc.Dispose();
        parent.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void AccessAfterMunmapRaisesMapErrAndMprotectRaisesAccErr()
    {
        using var mem = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, 2 * 4096, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using var cpu = new Cpu(mm);
        cpu.Write(a, 1);
        mm.Mprotect(a, 4096, Prot.Read);
        var acc = Assert.Throws<SegmentationFault>(() => cpu.Write(a, 2));
        Assert.Equal(SegvCode.AccErr, acc.Code);
        Assert.Equal(1, cpu.Read<int>(a));
        mm.Munmap(a, 2 * 4096);
        var map = Assert.Throws<SegmentationFault>(() => cpu.Read<int>(a));
        Assert.Equal(SegvCode.MapErr, map.Code);
        cpu.Dispose();
        mm.Exit();
    }

    private sealed class SeqOnly : IMmuIntervalNotifierOps
    {
        public int Calls;
        public bool Invalidate(MmuIntervalNotifier s, in MmuNotifierRange r, long cur)
        {
            Calls++;
            s.SetSeq(cur);
            return true;
        }
    }

    [Fact]
    public void HmmRangeFaultReportsWritablePfnsAndEbusyAfterInvalidation()
    {
        using var mem = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, 8 * 4096, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        var ops = new SeqOnly();
        var sub = MmuIntervalNotifier.Insert(mm, a, 8 * 4096, ops);
        var range = new HmmRange(sub, a, a + 8 * 4096) { DefaultFlags = HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite };
        range.NotifierSeq = sub.ReadBegin();
        mm.MmapLock.EnterRead();
        Assert.Equal(Errno.Ok, range.Fault());
        mm.MmapLock.ExitRead();
        foreach (ulong e in range.HmmPfns)
        {
            Assert.True(HmmPfn.Has(e, HmmPfnFlags.Valid) && HmmPfn.Has(e, HmmPfnFlags.Write));
        }
        mm.Munmap(a, 4096);
        Assert.True(ops.Calls >= 1);
        mm.MmapLock.EnterRead();
        Assert.Equal(Errno.EBUSY, range.Fault());
        range.NotifierSeq = sub.ReadBegin();
        range.DefaultFlags = 0;
        Assert.Equal(Errno.Ok, range.Fault());
        mm.MmapLock.ExitRead();
        Assert.True(HmmPfn.Has(range.HmmPfns[0], HmmPfnFlags.Error));
        Assert.True(HmmPfn.Has(range.HmmPfns[1], HmmPfnFlags.Valid));
        sub.Remove();
        mm.Exit();
    }
}
