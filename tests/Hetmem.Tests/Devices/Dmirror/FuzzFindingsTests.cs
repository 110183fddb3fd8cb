using Hetmem.Devices.Dmirror;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Dmirror;

/// <summary>Regression tests for bugs the fuzzers found in the dmirror driver.</summary>
public sealed class FuzzFindingsTests
{
    // Without the fix these calls walk 2^40 page numbers one by one (hours). The bound below only turns such a hang
    // into a failure; it asserts nothing about speed.
    private static readonly TimeSpan s_hangGuard = TimeSpan.FromMinutes(2);

    private static T WithoutHanging<T>(Func<T> f)
    {
        Task<T> t = Task.Run(f);
        Assert.True(t.Wait(s_hangGuard), "the call walked the range page by page instead of visiting the table's leaves");
        return t.Result;
    }

    [Fact]
    public void AnyWithTagOverAHugeRangeVisitsOnlyTheLeavesThatExist()
    {
        var pt = new DmirrorPageTable();
        const ulong Far = 1UL << 40;
        pt.Store(3, 0x40001, DmirrorTag.Write);
        pt.Store(Far - 1, 0x40002, DmirrorTag.Atomic);
        pt.Store(Far + 5, 0x40003, DmirrorTag.Atomic);

        Assert.True(WithoutHanging(() => pt.AnyWithTag(0, Far, DmirrorTag.Atomic)));
        Assert.False(WithoutHanging(() => pt.AnyWithTag(0, Far - 1, DmirrorTag.Atomic)));     // end is exclusive
        Assert.False(WithoutHanging(() => pt.AnyWithTag(4, Far - 1, DmirrorTag.Write)));      // start is inclusive, 3 is outside
        Assert.True(WithoutHanging(() => pt.AnyWithTag(3, Far - 1, DmirrorTag.Write)));
        Assert.False(WithoutHanging(() => pt.AnyWithTag(Far, Far + 5, DmirrorTag.Atomic)));
        Assert.True(WithoutHanging(() => pt.AnyWithTag(Far, ulong.MaxValue >> Page.Shift, DmirrorTag.Atomic)));
        Assert.False(pt.AnyWithTag(Far + 5, Far + 5, DmirrorTag.Atomic));                  // empty range
    }

    [Fact]
    public void CheckExclusiveOverTwoToTheFortyPagesAnswersFromTheMirroredEntries()
    {
        // Not disposed when the guard trips: the walking thread still holds the mirror's lock that Close needs.
        var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(4);
        ulong mirror = fx.MapAnon(4);
        fx.Fill(buf, 4, i => i);
        const ulong Pages = 1UL << 40;   // from address 0: 4 PiB, every byte of user space

        Assert.Equal(Errno.Ok, WithoutHanging(() => fx.Cmd(f, DmirrorCommand.CheckExclusive, 0, mirror, Pages, out _)));
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.Exclusive, buf, mirror, 4, out _));
        Assert.Equal(Errno.EPERM, WithoutHanging(() => fx.Cmd(f, DmirrorCommand.CheckExclusive, 0, mirror, Pages, out _)));
        _ = fx.ReadInts(buf, 4);   // the CPU takes the pages back
        Assert.Equal(Errno.Ok, WithoutHanging(() => fx.Cmd(f, DmirrorCommand.CheckExclusive, 0, mirror, Pages, out _)));
        fx.Dispose();
    }
}
