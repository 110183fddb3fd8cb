using Hetmem.Physical;
using Hetmem.Tests.Infrastructure;

namespace Hetmem.Tests.Physical;

public class PhysicalMemoryTests
{
    private const ulong Mib = 1UL << 20;

    [Fact]
    public void FrameMetadataFitsInThirtyTwoBytes() => Assert.True(PhysicalMemory.FrameMetadataBytes <= 32);

    [Fact]
    public void EveryOrderIsNaturallyAlignedAndFreeingMergesEverythingBack()
    {
        using var mem = new PhysicalMemory(16 * Mib);
        long free0 = mem.FreeFrames;
        ulong[] top0 = mem.BuddyInfo();
        var pfns = new List<(ulong Pfn, int Order)>();
        for (int order = 0; order <= PhysicalMemory.MaxOrder; order++)
        {
            ulong pfn = mem.Allocate(order, zero: true);
            Assert.NotEqual(Page.NoPfn, pfn);
            Assert.Equal(0UL, pfn & ((1UL << order) - 1));
            Assert.True(mem.IsRam(pfn));
            Assert.Equal(order, mem.Frame(pfn).Order);
            Assert.Equal(1, mem.Frame(pfn).RefCount);
            if (order > 0)
            {
                Assert.True(mem.Frame(pfn).Has(FrameFlags.Head));
                Assert.True(mem.Frame(pfn + 1).Has(FrameFlags.Tail));
                Assert.Equal(pfn, mem.Head(pfn + (1UL << order) - 1));
            }
            pfns.Add((pfn, order));
        }
        Assert.Equal(free0 - ((1L << (PhysicalMemory.MaxOrder + 1)) - 1), mem.FreeFrames);
        foreach ((ulong pfn, _) in pfns)
        {
            Assert.True(mem.Put(pfn));
        }
        Assert.Equal(free0, mem.FreeFrames);
        Assert.Equal(top0, mem.BuddyInfo());
    }

    [Fact]
    public void ZeroedAllocationsAreZeroAndTheZeroPageIsTheReservedLastFrame()
    {
        using var mem = new PhysicalMemory(8 * Mib);
        Assert.Equal(PhysicalMemory.RamFirstPfn + mem.RamFrames - 1, mem.ZeroPfn);
        Assert.True(mem.Frame(mem.ZeroPfn).Has(FrameFlags.Reserved));
        Assert.All(mem.FrameSpan(mem.ZeroPfn).ToArray(), b => Assert.Equal(0, b));
        ulong a = mem.Allocate(0);
        mem.FrameSpan(a).Fill(0xEE);
        mem.Put(a);
        ulong b = mem.Allocate(0, zero: true);
        Assert.All(mem.FrameSpan(b).ToArray(), x => Assert.Equal(0, x));
        mem.Put(b);
        Assert.Throws<InvalidOperationException>(() => mem.Put(mem.ZeroPfn));
    }

    [Fact]
    public void ReferencesCountDownToAFreeAndTheGenerationCatchesAUseAfterFree()
    {
        using var mem = new PhysicalMemory(8 * Mib);
        ulong pfn = mem.Allocate(2);
        uint gen = mem.Frame(pfn).Generation;
        mem.Get(pfn + 3);                              // a tail reference counts on the head
        Assert.Equal(2, mem.Frame(pfn).RefCount);
        Assert.True(mem.TryGet(pfn + 1));
        Assert.False(mem.Put(pfn + 2));
        Assert.False(mem.Put(pfn));
        Assert.True(mem.Put(pfn));
        Assert.NotEqual(gen, mem.Frame(pfn).Generation);
        Assert.False(mem.TryGet(pfn));                 // get_page_unless_zero on a free page
        Assert.Throws<InvalidOperationException>(() => mem.Put(pfn));
    }

    [Fact]
    public void FreeingAMappedFrameIsRefused()
    {
        using var mem = new PhysicalMemory(8 * Mib);
        ulong pfn = mem.Allocate(0);
        mem.AddMap(pfn);
        Assert.Throws<InvalidOperationException>(() => mem.Put(pfn));
        mem.Frame(pfn).RefCount = 1;
        mem.RemoveMap(pfn);
        Assert.True(mem.Put(pfn));
    }

    [Fact]
    public void AllocationFailsCleanlyWhenMemoryRunsOutAndBadOrdersThrow()
    {
        using var mem = new PhysicalMemory(4 * Mib);
        var got = new List<ulong>();
        ulong p;
        while ((p = mem.Allocate(0)) != Page.NoPfn)
        {
            got.Add(p);
        }
        Assert.Equal(0, mem.FreeFrames);
        Assert.Equal(mem.RamFrames - 1, (ulong)got.Count);
        Assert.Equal(Page.NoPfn, mem.Allocate(3));
        got.ForEach(x => mem.Put(x));
        Assert.Equal((long)mem.RamFrames - 1, mem.FreeFrames);
        Assert.Throws<ArgumentOutOfRangeException>(() => mem.Allocate(10));
        Assert.Throws<ArgumentOutOfRangeException>(() => mem.Allocate(PhysicalMemory.GiganticOrder));
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => new PhysicalMemory(3 * Mib)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => new PhysicalMemory(5 * Mib)).Errno);
    }

    [Fact]
    public void AOneAndAQuarterGibArenaCanAllocateAGiganticPage()
    {
        // The arena is untouched virtual memory: this costs the frame table, not a GiB of RAM.
        using var mem = new PhysicalMemory(1280 * Mib);
        Assert.True(mem.SupportsGigantic);
        ulong pfn = mem.Allocate(PhysicalMemory.GiganticOrder);
        Assert.NotEqual(Page.NoPfn, pfn);
        Assert.Equal(0UL, pfn & ((1UL << Page.PudOrder) - 1));
        Assert.Equal(Page.NoPfn, mem.Allocate(PhysicalMemory.GiganticOrder));
        Assert.True(mem.Put(pfn));
    }

    [Fact]
    public void TheFrameLockIsExclusive()
    {
        using var mem = new PhysicalMemory(4 * Mib);
        ulong pfn = mem.Allocate(0);
        Assert.True(mem.TryLockFrame(pfn));
        Assert.False(mem.TryLockFrame(pfn));
        bool acquired = false;
        var t = new Thread(() =>
        {
            mem.LockFrame(pfn);
            Volatile.Write(ref acquired, true);
            mem.UnlockFrame(pfn);
        });
        t.Start();
        Thread.Sleep(20);
        Assert.False(Volatile.Read(ref acquired));
        mem.UnlockFrame(pfn);
        t.Join();
        Assert.True(acquired);
        mem.Put(pfn);
    }

    private sealed class Ops : IDevicePageMapOps
    {
        public readonly List<ulong> Freed = [];

        public void PageFree(ulong pfn) => Freed.Add(pfn);

        public Errno MigrateToRam(in DevicePageFault fault) => Errno.EFAULT;
    }

    [Fact]
    public unsafe void DevicePageMapsGetTheirOwnPfnsAndHandBackFreedPages()
    {
        using var mem = new PhysicalMemory(4 * Mib);
        var ops = new Ops();
        DevicePageMap priv = mem.RegisterDevicePageMap(MemoryType.DevicePrivate, 16, null, "owner", ops);
        Assert.False(mem.IsRam(priv.FirstPfn));
        Assert.Equal(0UL, priv.FirstPfn & ((1UL << Page.PudOrder) - 1));
        Assert.Same(priv, mem.FindMap(priv.FirstPfn + 15));
        Assert.Null(mem.FindMap(priv.FirstPfn + 16));
        Assert.True(mem.Address(priv.FirstPfn) == null);
        mem.InitDevicePage(priv.FirstPfn + 3);
        Assert.Equal(1, mem.Frame(priv.FirstPfn + 3).RefCount);
        Assert.True(mem.Put(priv.FirstPfn + 3));
        Assert.Equal([priv.FirstPfn + 3], ops.Freed);
        Assert.True(priv.TryGet());
        Assert.Equal(1, priv.LiveReferences);
        priv.Put();
        mem.UnregisterDevicePageMap(priv);
        Assert.False(priv.TryGet());
        Assert.Null(mem.FindMap(priv.FirstPfn));

        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mem.RegisterDevicePageMap(MemoryType.DevicePrivate, 0, null, "o", ops)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mem.RegisterDevicePageMap(MemoryType.DevicePrivate, 4, null, null, ops)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mem.RegisterDevicePageMap(MemoryType.DeviceCoherent, 4, null, "o", ops)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mem.RegisterDevicePageMap(MemoryType.FsDax, 4, null, null, null)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => mem.RegisterDevicePageMap(MemoryType.None, 4, null, null, null)).Errno);
    }

    [Fact]
    public void ADaxNamespaceIsARealSparseFileWhoseBytesSurviveReopening()
    {
        using var dir = new ScratchDir();
        string path = dir.File("ns");
        using (var mem = new PhysicalMemory(4 * Mib))
        using (var ns = new DaxNamespace(mem, path, 4 * Mib))
        {
            Assert.Equal(1024UL, ns.Blocks);
            Assert.Equal(MemoryType.FsDax, ns.PageMap.Type);
            ns.Block(7)[100] = 0x5A;
            mem.FrameSpan(ns.FirstPfn + 8)[1] = 0xA5;   // frames and blocks are the same bytes
            ns.Flush(7, 2);
            Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => new DaxNamespace(mem, dir.File("bad"), 4096)).Errno);
        }
        Assert.Equal(4 * Mib, (ulong)new FileInfo(path).Length);
        byte[] raw = File.ReadAllBytes(path);
        Assert.Equal(0x5A, raw[7 * 4096 + 100]);
        Assert.Equal(0xA5, raw[8 * 4096 + 1]);
        using var mem2 = new PhysicalMemory(4 * Mib);
        using var ns2 = new DaxNamespace(mem2, path, 4 * Mib);
        Assert.Equal(0x5A, ns2.Block(7)[100]);
    }

    private sealed class CountingTracker : IFrameTracker
    {
        public int Allocs;
        public int Frees;

        public void Allocated(ulong pfn, int order) => Allocs++;

        public void Freed(ulong pfn, int order) => Frees++;
    }

    [Fact]
    public void TheFrameTrackerSeesEveryAllocationAndFree()
    {
        using var mem = new PhysicalMemory(4 * Mib);
        var t = new CountingTracker();
        mem.Tracker = t;
        ulong a = mem.Allocate(0), b = mem.Allocate(3);
        mem.Put(a);
        Assert.Equal(2, t.Allocs);
        Assert.Equal(1, t.Frees);
        mem.Put(b);
        Assert.Equal(2, t.Frees);
    }
}
