using Hetmem.Devices.Dmirror;

namespace Hetmem.Tests.Devices.Dmirror;

public sealed class DmirrorPageTableTests
{
    [Fact]
    public void StoredEntriesKeepTheirPfnAndTagUntilErased()
    {
        var pt = new DmirrorPageTable();
        pt.Store(5, 0x40001, DmirrorTag.Write);
        pt.Store(6, 0x40002, DmirrorTag.Atomic);
        pt.Store(5, 0x40003, DmirrorTag.Read);
        Assert.Equal(2, pt.Count);
        Assert.True(pt.TryGet(5, out ulong pfn, out DmirrorTag tag));
        Assert.Equal((0x40003UL, DmirrorTag.Read), (pfn, tag));
        Assert.True(pt.AnyWithTag(0, 10, DmirrorTag.Atomic));
        pt.Erase(6);
        Assert.False(pt.TryGet(6, out _, out _));
        Assert.False(pt.AnyWithTag(0, 10, DmirrorTag.Atomic));
    }

    [Fact]
    public void EraseRangeRemovesExactlyTheRangeAcrossLeavesAndForTheWholeAddressSpace()
    {
        var pt = new DmirrorPageTable();
        for (ulong v = 500; v < 1600; v++)
        {
            pt.Store(v, 0x40000 + v, DmirrorTag.Write);
        }
        pt.EraseRange(511, 1025);
        Assert.True(pt.TryGet(510, out _, out _));
        Assert.False(pt.TryGet(511, out _, out _));
        Assert.False(pt.TryGet(1024, out _, out _));
        Assert.True(pt.TryGet(1025, out _, out _));
        Assert.Equal(1100 - 514, pt.Count);
        pt.EraseRange(0, ulong.MaxValue >> 12);
        Assert.Equal(0, pt.Count);
        pt.Store(1UL << 40, 0x40000, DmirrorTag.Read);
        pt.Clear();
        Assert.Equal(0, pt.Count);
    }
}
