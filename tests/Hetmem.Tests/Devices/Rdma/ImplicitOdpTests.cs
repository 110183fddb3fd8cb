using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;
using static Hetmem.Tests.Devices.Rdma.RdmaTestBed;

namespace Hetmem.Tests.Devices.Rdma;

public sealed class ImplicitOdpTests : IDisposable
{
    private const ulong Gib = 1UL << 30;
    private readonly RdmaTestBed _bed = new();
    private readonly ImplicitOdpMemoryRegion _mr;

    public ImplicitOdpTests() =>
        _mr = (ImplicitOdpMemoryRegion)_bed.ServerPd.RegMr(0, ulong.MaxValue,
            AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_ATOMIC | AccessFlags.ON_DEMAND);

    public void Dispose() => _bed.Dispose();

    private ulong MapAt(ulong address, ulong bytes) =>
        _bed.ServerMm.Mmap(address, bytes, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.FixedNoReplace);

    [Fact]
    public void AnImplicitRegionStartsEmptyAndGrowsAOneGibChildOnTheFirstFault()
    {
        Assert.Equal(MrKind.ImplicitOdp, _mr.Kind);
        Assert.Equal((0UL, ulong.MaxValue), (_mr.Addr, _mr.Length));
        Assert.Equal(0, _mr.ChildCount);
        int notifiers = _bed.ServerMm.Notifiers.IntervalCount;
        ulong a = MapAt(5 * Gib + 0x10000, 8 * Page.Size);
        _bed.ServerCpu.Write(a, 31L);
        Assert.Equal(0, _mr.ChildCount);
        Assert.Equal(31L, Le64(_bed.Read(a, _mr.Rkey, 8).Data));
        Assert.Equal(1, _mr.ChildCount);
        Assert.True(_mr.HasChild(5 * Gib));
        Assert.False(_mr.HasChild(6 * Gib));
        Assert.Equal(notifiers + 1, _bed.ServerMm.Notifiers.IntervalCount);
        Assert.True(_mr.IsPresent(a));
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a + Page.Size, _mr.Rkey, [1, 2, 3]));
        Assert.Equal(1, _mr.ChildCount);
    }

    [Fact]
    public void AWriteAcrossAGibBoundarySpansTwoChildren()
    {
        ulong a = MapAt(8 * Gib - 2 * Page.Size, 4 * Page.Size);
        byte[] data = Pattern(3 * Page.Size, 8);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a + 100, _mr.Rkey, data));
        Assert.Equal(2, _mr.ChildCount);
        byte[] cpu = new byte[data.Length];
        _bed.ServerCpu.Read(a + 100, cpu);
        Assert.Equal(data, cpu);
        Assert.Equal(data, _bed.Read(a + 100, _mr.Rkey, data.Length).Data);
    }

    [Fact]
    public void AChildWhoseLastTranslationIsInvalidatedIsDestroyedAndRecreatedOnTheNextFault()
    {
        ulong a = MapAt(3 * Gib, 4 * Page.Size);
        ulong b = MapAt(4 * Gib, 4 * Page.Size);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a, _mr.Rkey, [1]));
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(b, _mr.Rkey, [2]));
        Assert.Equal(2, _mr.ChildCount);
        int notifiers = _bed.ServerMm.Notifiers.IntervalCount;
        _bed.ServerMm.Munmap(a, 4 * Page.Size);
        SpinWait.SpinUntil(() => _mr.ChildCount == 1, WaitTime);
        Assert.Equal(1, _mr.ChildCount);
        Assert.Equal(1, _mr.ChildrenDestroyed);
        Assert.False(_mr.HasChild(3 * Gib));
        Assert.True(_mr.HasChild(4 * Gib));
        SpinWait.SpinUntil(() => _bed.ServerMm.Notifiers.IntervalCount == notifiers - 1, WaitTime);
        Assert.Equal(notifiers - 1, _bed.ServerMm.Notifiers.IntervalCount);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(a, _mr.Rkey, 8).Status);
        ulong again = MapAt(3 * Gib + Page.Size, Page.Size);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(again, _mr.Rkey, [3]));
        Assert.True(_mr.HasChild(3 * Gib));
        Assert.Equal(3, _mr.ChildrenCreated);
        Assert.True(_mr.Stats.PageInvalidations >= 1);
    }

    [Fact]
    public void AChildThatStillHasTranslationsSurvivesAPartialInvalidation()
    {
        ulong a = MapAt(2 * Gib, 8 * Page.Size);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a, _mr.Rkey, Pattern(8 * Page.Size, 9)));
        _bed.ServerMm.Munmap(a, 4 * Page.Size);
        Assert.Equal(0, _mr.CollectEmptyChildren());
        Assert.Equal(1, _mr.ChildCount);
        Assert.Equal(4, _mr.PresentPages);
        Assert.Equal(Pattern(8 * Page.Size, 9).AsSpan(4 * Page.Size, 16).ToArray(), _bed.Read(a + 4 * Page.Size, _mr.Rkey, 16).Data);
    }

    [Fact]
    public void AddressesOutsideUserSpaceOrUnmappedAreAccessErrors()
    {
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(AddressSpace.TaskSize, _mr.Rkey, 8).Status);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(AddressSpace.TaskSize - 4, _mr.Rkey, 8).Status);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(7 * Gib, _mr.Rkey, 8).Status);
        Assert.Equal(QpState.RTS, _bed.ClientQp.State);
    }

    [Fact]
    public void AdviseMrOnAnImplicitRegionCreatesTheChildrenItNeeds()
    {
        ulong a = MapAt(9 * Gib, 16 * Page.Size);
        _bed.ServerPd.AdviseMr(AdviseMrAdvice.PREFETCH_WRITE, AdviseMrFlags.FLUSH, [new Sge(a, 16 * Page.Size, _mr.Lkey)]);
        Assert.Equal(1, _mr.ChildCount);
        Assert.Equal(16, _mr.PresentPages);
        Assert.True(_mr.IsPresent(a + 15 * Page.Size, write: true));
        Assert.Equal(16, _mr.Stats.PagePrefetch);
    }

    [Fact]
    public void DeregisteringTheImplicitRegionRemovesEveryChildNotifier()
    {
        int notifiers = _bed.ServerMm.Notifiers.IntervalCount;
        ulong a = MapAt(11 * Gib, Page.Size);
        ulong b = MapAt(12 * Gib, Page.Size);
        Assert.Equal(WcStatus.SUCCESS, _bed.Read(a, _mr.Rkey, 8).Status);
        Assert.Equal(WcStatus.SUCCESS, _bed.Read(b, _mr.Rkey, 8).Status);
        Assert.Equal(notifiers + 2, _bed.ServerMm.Notifiers.IntervalCount);
        _mr.Deregister();
        Assert.Equal(notifiers, _bed.ServerMm.Notifiers.IntervalCount);
        Assert.Equal(0, _mr.ChildCount);
    }
}
