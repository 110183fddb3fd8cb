using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using static Hetmem.Tests.Hmm.Kit;

namespace Hetmem.Tests.Hmm;

/// <summary>The IOVA allocator, the DMA device, the 5.1 hmm_range_dma_map/unmap (spec §3.8, invariant 19) and the 6.15 hmm_dma_map helper (§2.7).</summary>
public sealed class DmaMappingTests : IDisposable
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private static readonly HmmPfnEncoding Enc = HmmPfnEncoding.NouveauStyle;

    private readonly HmmTestBed _bed = new();
    private readonly AddressSpace _mm;
    private readonly PhysicalMemory _mem;

    public DmaMappingTests()
    {
        _mm = _bed.NewSpace();
        _mem = _bed.Memory;
    }

    public void Dispose() => _bed.Dispose();

    [Fact]
    public void TheIovaAllocatorHandsOutNaturallyAlignedRunsReusesFreedOnesAndReportsExhaustion()
    {
        var iova = new IovaAllocator(0x10000, 4 * Page.PmdSize);
        ulong small = iova.Allocate(0);
        Assert.Equal(0x10000UL, small);
        ulong huge = iova.Allocate(Page.PmdOrder);
        Assert.True(Page.IsAligned(huge, Page.PmdSize) && huge > small);
        Assert.Equal(513L, iova.AllocatedPages);
        iova.Free(huge, Page.PmdOrder);
        Assert.Equal(huge, iova.Allocate(Page.PmdOrder));
        Assert.NotEqual(0UL, iova.Allocate(Page.PmdOrder));
        Assert.NotEqual(0UL, iova.Allocate(Page.PmdOrder));
        Assert.Equal(0UL, iova.Allocate(Page.PmdOrder));   // the window is used up
        Assert.Throws<ArgumentException>(() => new IovaAllocator(0, Page.Size));
        Assert.Throws<ArgumentException>(() => new IovaAllocator(0x1001, Page.Size));
    }

    [Fact]
    public unsafe void ADeviceReachesMappedPagesThroughItsIommuHonoursDirectionAndFaultsElsewhere()
    {
        var dev = new DmaDevice(_mem, "nic");
        ulong pfn = _mem.Allocate(0, zero: true);
        ulong ro = _mem.Allocate(0, zero: true);
        ulong d = dev.MapPage(pfn, 0, DmaDirection.Bidirectional);
        ulong r = dev.MapPage(ro, 0, DmaDirection.ToDevice);
        Assert.NotEqual(0UL, d);
        Assert.Equal(2, dev.MappedCount);
        Assert.Equal(Errno.Ok, dev.DmaWrite(d + 100, [1, 2, 3]));
        Assert.Equal(2, _mem.Address(pfn)[101]);
        var buf = new byte[3];
        Assert.Equal(Errno.Ok, dev.DmaRead(d + 100, buf));
        Assert.Equal(new byte[] { 1, 2, 3 }, buf);
        Assert.True(dev.TryTranslate(r + 5, out ulong got, out DmaDirection dir));
        Assert.Equal((ro, DmaDirection.ToDevice), (got, dir));
        Assert.Equal(Errno.EPERM, dev.DmaWrite(r, [9]));
        Assert.Equal(0, _mem.Address(ro)[0]);
        Assert.Equal(Errno.EFAULT, dev.DmaRead(d + 100 * Page.Size, buf));
        Assert.Throws<InvalidOperationException>(() => dev.UnmapPage(d, 0, DmaDirection.ToDevice));
        dev.UnmapPage(d, 0, DmaDirection.Bidirectional);
        dev.UnmapPage(r, 0, DmaDirection.ToDevice);
        Assert.Equal(Errno.EFAULT, dev.DmaRead(d, buf));
        Assert.Equal(0, dev.MappedCount);
        Assert.Equal(0L, dev.Iova.AllocatedPages);
        _mem.Put(pfn);
        _mem.Put(ro);
    }

    [Fact]
    public void DevicePrivatePagesCannotBeDmaMapped()
    {
        var devmem = _bed.Own(new TestDevicePrivateMemory(_mem, 2, new object()));
        var dev = new DmaDevice(_mem);
        Assert.Equal(0UL, dev.MapPage(devmem.Map.FirstPfn, 0, DmaDirection.Bidirectional));
        Assert.Equal(0UL, dev.MapPage(0x12345, 0, DmaDirection.Bidirectional));
    }

    private HmmMirrorRange Registered(ulong start, ulong end, int shift = Page.Shift)
    {
        var r = new HmmMirrorRange(Enc);
        Assert.Equal(Errno.Ok, r.Register(_mm, start, end, shift));
        _bed.Own(new Unreg(r));
        return r;
    }

    private sealed class Unreg(HmmMirrorRange r) : IDisposable
    {
        public void Dispose() => r.Unregister();
    }

    private Errno DmaMap(HmmMirrorRange r, DmaDevice dev, ulong[] daddrs, out long mapped)
    {
        _mm.MmapLock.EnterRead();
        Errno e = r.DmaMap(dev, daddrs, block: true, out mapped);
        if (e != Errno.EAGAIN)
        {
            _mm.MmapLock.ExitRead();
        }
        return e;
    }

    [Fact]
    public void DmaMapFaultsAndMapsEveryPageWithTheRightDirectionAndLeavesHolesAtZero()
    {
        ulong a = _mm.Mmap(0, 4 * Kib4, Rw, MapFlags.Private | MapFlags.Anonymous);
        HmmMirrorRange r = Registered(a, a + 4 * Kib4);
        r.PfnFlagsMask = Enc.Valid | Enc.Write;
        r.Pfns[0] = Enc.Valid | Enc.Write;
        r.Pfns[1] = Enc.Valid;
        r.Pfns[3] = Enc.Valid | Enc.Write;
        var dev = new DmaDevice(_mem);
        var daddrs = new ulong[4];
        Assert.Equal(Errno.Ok, DmaMap(r, dev, daddrs, out long mapped));
        Assert.Equal(3, mapped);
        Assert.Equal(0UL, daddrs[2]);
        Assert.True(dev.TryTranslate(daddrs[0], out ulong p0, out DmaDirection d0));
        Assert.Equal((Enc.ToPfn(r.Pfns[0]), DmaDirection.Bidirectional), (p0, d0));
        Assert.True(dev.TryTranslate(daddrs[1], out _, out DmaDirection d1));
        Assert.Equal(DmaDirection.ToDevice, d1);   // the zero page, read-only
        Assert.Equal(Errno.Ok, dev.DmaWrite(daddrs[3] + 8, BitConverter.GetBytes(77L)));
        using (var cpu = new Cpu(_mm))
        {
            Assert.Equal(77L, cpu.Read<long>(a + 3 * Kib4 + 8));
        }
        Assert.Equal(Errno.Ok, r.DmaUnmap(dev, daddrs, dirty: true, out long count));
        Assert.Equal(3, count);
        Assert.Equal(0, dev.MappedCount);
        Assert.All(daddrs, x => Assert.Equal(0UL, x));
        Assert.Equal(new[] { Enc.None, Enc.None, Enc.None, Enc.None }, r.Pfns);
    }

    [Fact]
    public void AMappingErrorUndoesEverythingDmaMapDidAndIsEfault()
    {
        ulong a = _mm.Mmap(0, 4 * Kib4, Rw, MapFlags.Private | MapFlags.Anonymous);
        HmmMirrorRange r = Registered(a, a + 4 * Kib4);
        r.DefaultFlags = Enc.Valid | Enc.Write;
        var dev = new DmaDevice(_mem, "tiny", new IovaAllocator(0x10000, 2 * Page.Size));
        var daddrs = new ulong[4];
        Assert.Equal(Errno.EFAULT, DmaMap(r, dev, daddrs, out long mapped));
        Assert.Equal(0, mapped);
        Assert.Equal(0, dev.MappedCount);
        Assert.All(daddrs, x => Assert.Equal(0UL, x));
        Assert.Equal(Errno.EINVAL, DmaMap(r, dev, new ulong[3], out _));
    }

    [Fact]
    public void DmaUnmapMarksExactlyTheWritablePagesDirtyWhenAskedAndResetsTheirEntries()
    {
        ShmemFile shm = _bed.Shmem(4 * Kib4);
        ulong f = _mm.Mmap(0, 4 * Kib4, Rw, MapFlags.Shared, shm);
        ulong anon = _mm.Mmap(0, 2 * Kib4, Rw, MapFlags.Private | MapFlags.Anonymous);
        var dev = new DmaDevice(_mem);
        foreach (bool dirty in new[] { false, true })
        {
            HmmMirrorRange r = Registered(f, f + 4 * Kib4);
            r.DefaultFlags = Enc.Valid;
            r.PfnFlagsMask = Enc.Write;
            r.Pfns[0] = r.Pfns[1] = Enc.Write;
            var daddrs = new ulong[4];
            Assert.Equal(Errno.Ok, DmaMap(r, dev, daddrs, out _));
            ulong[] pfns = r.Pfns.Select(Enc.ToPfn).ToArray();
            foreach (ulong p in pfns)
            {
                _mem.ClearFlags(p, FrameFlags.Dirty);   // as if writeback had just cleaned them
            }
            Assert.Equal(Errno.Ok, r.DmaUnmap(dev, daddrs, dirty, out long count));
            Assert.Equal(4, count);
            for (int i = 0; i < 4; i++)
            {
                Assert.True(_mem.Frame(pfns[i]).Has(FrameFlags.Dirty) == (dirty && i < 2), $"dirty={dirty} page {i}");
                Assert.Equal(Enc.None, r.Pfns[i]);
            }
            r.Unregister();
        }
        HmmMirrorRange ar = Registered(anon, anon + 2 * Kib4);
        ar.DefaultFlags = Enc.Valid | Enc.Write;
        var ad = new ulong[2];
        Assert.Equal(Errno.Ok, DmaMap(ar, dev, ad, out _));
        ulong ap = Enc.ToPfn(ar.Pfns[0]);
        Assert.False(_mem.Frame(ap).Has(FrameFlags.Dirty));
        Assert.Equal(Errno.Ok, ar.DmaUnmap(dev, ad, dirty: true, out _));
        Assert.True(_mem.Frame(ap).Has(FrameFlags.Dirty));
        Assert.Equal(0, dev.MappedCount);
        Assert.Equal(Errno.EINVAL, ar.DmaUnmap(dev, new ulong[1], true, out _));
    }

    [Fact]
    public void WithTheHugePageShiftEachEntryIsOneHugeDmaMapping()
    {
        var pool = _bed.Own(new HugetlbPool(_mem, Page.PmdOrder, 2));
        var fs = _bed.Own(new HugetlbFs(pool));
        FileHandle h = _bed.Own(fs.Create("h"));
        h.Truncate(2 * Page.PmdSize);
        ulong a = _mm.Mmap(0x3000_0000_0000, 2 * Page.PmdSize, Rw, MapFlags.Shared | MapFlags.Fixed, h.Inode);
        HmmMirrorRange r = Registered(a, a + 2 * Page.PmdSize, 21);
        r.DefaultFlags = Enc.Valid | Enc.Write;
        var dev = new DmaDevice(_mem);
        var daddrs = new ulong[2];
        Assert.Equal(Errno.Ok, DmaMap(r, dev, daddrs, out long mapped));
        Assert.Equal(2, mapped);
        Assert.True(Page.IsAligned(daddrs[1], Page.PmdSize));
        Assert.True(dev.TryTranslate(daddrs[1] + 300 * Page.Size + 1, out ulong pfn, out _));
        Assert.Equal(Enc.ToPfn(r.Pfns[1]) + 300, pfn);
        Assert.Equal(1024L, dev.Iova.AllocatedPages);
        Assert.Equal(Errno.Ok, r.DmaUnmap(dev, daddrs, false, out _));
        Assert.Equal(0L, dev.Iova.AllocatedPages);
    }

    [Fact]
    public void TheModernDmaMapKeepsItsStickyBitAcrossFaultsAndUnmapsOnlyValidMappedEntries()
    {
        ulong a = _mm.Mmap(0, 4 * Kib4, Rw, MapFlags.Private | MapFlags.Anonymous);
        var sub = MmuIntervalNotifier.Insert(_mm, a, 4 * Kib4, new RecordingOps());
        var dev = new DmaDevice(_mem);
        var map = new HmmDmaMap(dev, 4);
        var range = new HmmRange(sub, a, a + 4 * Kib4, map.Pfns) { DefaultFlags = HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite };
        Fault(range);
        ulong d0 = map.MapPfn(0);
        Assert.NotEqual(0UL, d0);
        Assert.True(HmmPfn.Has(map.Pfns[0], HmmPfnFlags.DmaMapped));
        Assert.Equal(d0, map.MapPfn(0));   // already mapped: same address, no new mapping
        Assert.Equal(1, dev.MappedCount);
        Fault(range);
        Assert.True(HmmPfn.Has(map.Pfns[0], HmmPfnFlags.DmaMapped));
        Assert.Equal(d0, map.DmaAddresses[0]);
        Assert.NotEqual(0UL, map.MapPfn(1));
        Assert.True(map.UnmapPfn(0));
        Assert.False(HmmPfn.Has(map.Pfns[0], HmmPfnFlags.DmaMapped));
        Assert.False(map.UnmapPfn(0));
        Assert.False(map.UnmapPfn(2));
        Assert.Equal(1, map.UnmapAll());
        Assert.Equal(0, dev.MappedCount);
        map.Pfns[3] = 0;
        Assert.Equal(0UL, map.MapPfn(3));
        sub.Remove();
    }

    private static void Fault(HmmRange r)
    {
        Errno e;
        do
        {
            r.NotifierSeq = r.Notifier.ReadBegin();
            using (r.Space.MmapLock.Read())
            {
                e = r.Fault();
            }
        }
        while (e == Errno.EBUSY);
        Assert.Equal(Errno.Ok, e);
    }
}
