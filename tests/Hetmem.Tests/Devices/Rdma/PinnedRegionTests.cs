using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;
using static Hetmem.Tests.Devices.Rdma.RdmaTestBed;

namespace Hetmem.Tests.Devices.Rdma;

public sealed class PinnedRegionTests : IDisposable
{
    private const AccessFlags Rw = AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_ATOMIC;
    private readonly RdmaTestBed _bed = new();

    public void Dispose() => _bed.Dispose();

    [Fact]
    public void PinningFaultsInEveryPageAndHoldsTheFramesUntilDeregistrationEvenAfterMunmap()
    {
        ulong a = _bed.MapServer(16 * Page.Size);
        byte[] pattern = Pattern(8 * Page.Size, 21);
        _bed.ServerCpu.Write(a, pattern);
        long before = _bed.Memory.UsedFrames;
        var mr = (PinnedMemoryRegion)_bed.ServerPd.RegMr(a, 16 * Page.Size, Rw);
        Assert.Equal(MrKind.Pinned, mr.Kind);
        Assert.Equal(16, mr.PinnedPages);
        Assert.True(_bed.Memory.UsedFrames >= before + 8, "the 8 untouched pages were not faulted in");
        ulong pfn = mr.PinnedPfn(a);
        Assert.Equal(_bed.ServerMm.QueryPte(a, out _).Pfn, pfn);
        Assert.Equal(2, _bed.Memory.Frame(pfn).RefCount); // the mapping and the pin
        Assert.Equal(0, mr.Stats.PageFaults);

        _bed.ServerMm.Munmap(a, 16 * Page.Size);
        Assert.Equal(1, _bed.Memory.Frame(pfn).RefCount);   // only the pin is left
        (WcStatus s, byte[] data) = _bed.Read(a, mr.Rkey, 8 * Page.Size);
        Assert.Equal(WcStatus.SUCCESS, s);
        Assert.Equal(pattern, data);                         // the NIC still sees the old frames
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a + 12 * Page.Size, mr.Rkey, [7, 7, 7]));
        Assert.Equal(WcStatus.SUCCESS, _bed.FetchAdd(a + 15 * Page.Size, mr.Rkey, 3).Status);

        long beforeDereg = _bed.Memory.UsedFrames;
        mr.Deregister();
        Assert.Equal(beforeDereg - 16, _bed.Memory.UsedFrames);
        Assert.Equal(0, _bed.Memory.Frame(pfn).RefCount);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(a, mr.Rkey, 8).Status);
    }

    [Fact]
    public void PinnedRegistrationOfAFsDaxMappingIsRefusedWithEopnotsuppAndLeavesNoReference()
    {
        using var dax = new MappedMemory(_bed.ServerMm, MemoryKind.DaxPmd);
        _bed.ServerCpu.Write(dax.Address, 1L);
        ulong pfn = _bed.ServerMm.QueryPte(dax.Address, out _).Pfn;
        int refs = _bed.Memory.Frame(pfn).RefCount;
        var ex = Assert.Throws<MmException>(() => _bed.ServerPd.RegMr(dax.Address, MappedMemory.Bytes, Rw));
        Assert.Equal(Errno.EOPNOTSUPP, ex.Errno);
        Assert.Equal(Errno.EOPNOTSUPP, Assert.Throws<MmException>(() => _bed.ServerPd.RegMr(dax.Address, MappedMemory.Bytes, AccessFlags.REMOTE_READ)).Errno);
        Assert.Equal(refs, _bed.Memory.Frame(pfn).RefCount);
        Assert.Equal(0, _bed.ServerPd.RegionCount);
        // ODP is the way to do RDMA to fsdax.
        MemoryRegion odp = _bed.ServerPd.RegMr(dax.Address, MappedMemory.Bytes, Rw | AccessFlags.ON_DEMAND);
        Assert.Equal(1L, Le64(_bed.Read(dax.Address, odp.Rkey, 8).Data));
        odp.Deregister();
    }

    [Fact]
    public void PinningAHoleOrWritingThroughAReadOnlyMappingFailsWithEfaultAndPinsNothing()
    {
        ulong a = _bed.MapServer(4 * Page.Size);
        _bed.ServerMm.Munmap(a + 2 * Page.Size, Page.Size);
        Assert.Equal(Errno.EFAULT, Assert.Throws<MmException>(() => _bed.ServerPd.RegMr(a, 4 * Page.Size, Rw)).Errno);
        for (ulong p = 0; p < 2; p++)
        {
            ulong pfn = _bed.ServerMm.QueryPte(a + p * Page.Size, out _).Pfn;
            Assert.Equal(1, _bed.Memory.Frame(pfn).RefCount); // faulted in by the attempt, but no pin left behind
        }
        Assert.Equal(0, _bed.ServerPd.RegionCount);
        ulong ro = _bed.MapServer(2 * Page.Size, Prot.Read);
        Assert.Equal(Errno.EFAULT, Assert.Throws<MmException>(() => _bed.ServerPd.RegMr(ro, 2 * Page.Size, Rw)).Errno);
        MemoryRegion readOnly = _bed.ServerPd.RegMr(ro, 2 * Page.Size, AccessFlags.REMOTE_READ);
        Assert.Equal(0L, Le64(_bed.Read(ro, readOnly.Rkey, 8).Data));
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Write(ro, readOnly.Rkey, [1]));
    }

    [Fact]
    public void APinnedRegionOutlivesTheProcessThatRegisteredItUntilDeregistration()
    {
        var owner = new AddressSpace(_bed.Memory);
        ProtectionDomain pd = _bed.ServerDev.AllocPd(owner);
        ulong a = owner.Mmap(0, 4 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(owner))
        {
            cpu.Write(a, 99L);
        }
        MemoryRegion mr = pd.RegMr(a, 4 * Page.Size, Rw);
        _bed.UseServerPd(pd);
        long used = _bed.Memory.UsedFrames;
        owner.Exit();
        Assert.True(_bed.Memory.UsedFrames <= used);
        Assert.Equal(99L, Le64(_bed.Read(a, mr.Rkey, 8).Data));
        long beforeDereg = _bed.Memory.UsedFrames;
        mr.Deregister();
        Assert.Equal(beforeDereg - 4, _bed.Memory.UsedFrames);
        pd.Dispose();
    }
}
