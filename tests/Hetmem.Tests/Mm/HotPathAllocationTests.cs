using Hetmem.Mm;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

/// <summary>The mm hot paths allocate nothing once warm (measured on this thread with the GC's byte counter).</summary>
public class HotPathAllocationTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    private static long Allocated(Action a)
    {
        a();   // warm: JIT, first-use caches, lazily created objects
        long before = GC.GetAllocatedBytesForCurrentThread();
        a();
        return GC.GetAllocatedBytesForCurrentThread() - before;
    }

    private sealed class SeqOnly : IMmuIntervalNotifierOps
    {
        public bool Invalidate(MmuIntervalNotifier sub, in MmuNotifierRange range, long curSeq)
        {
            sub.SetSeq(curSeq);
            return true;
        }
    }

    [Fact]
    public void TlbHitsAnonymousWriteFaultsAndWholeVmaMunmapAllocateNothing()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 64 * Kib4, Rw, Anon);
        MmuIntervalNotifier sub = MmuIntervalNotifier.Insert(mm, a, 64 * Kib4, new SeqOnly());
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, 1L);
        Assert.Equal(0, Allocated(() =>
        {
            for (ulong i = 0; i < 512; i++)
            {
                cpu.Write(a + (i & 7) * 8, (long)i);
                _ = cpu.Read<long>(a + (i & 7) * 8);
            }
        }));
        // Write faults on fresh (DONTNEED'd) pages of a VMA that has faulted before (the first round warms up).
        long faults = -1;
        for (int round = 0; round < 2; round++)
        {
            mm.Madvise(a, 64 * Kib4, Advice.DontNeed);
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (ulong i = 0; i < 64; i++)
            {
                cpu.Write(a + i * Kib4, 7L);
            }
            faults = GC.GetAllocatedBytesForCurrentThread() - before;
        }
        Assert.Equal(0, faults);

        // A munmap of a whole, faulted VMA under an interval notifier: warm up (lists reach their size, statics
        // initialise), then measure the same munmap again.
        const ulong B = 0x1000_0000_0000;
        MmuIntervalNotifier sub2 = MmuIntervalNotifier.Insert(mm, B, 16 * Kib4, new SeqOnly());
        long last = -1;
        for (int round = 0; round < 3; round++)
        {
            ulong b = mm.Mmap(B, 16 * Kib4, Rw, Anon | MapFlags.Fixed);
            for (ulong i = 0; i < 16; i++)
            {
                cpu.Write(b + i * Kib4, 1L);
            }
            long before = GC.GetAllocatedBytesForCurrentThread();
            mm.Munmap(b, 16 * Kib4);
            last = GC.GetAllocatedBytesForCurrentThread() - before;
        }
        Assert.Equal(0, last);
        sub2.Remove();
        sub.Remove();
    }
}
