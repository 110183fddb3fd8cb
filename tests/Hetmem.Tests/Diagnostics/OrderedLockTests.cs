using Hetmem.Diagnostics;

namespace Hetmem.Tests.Diagnostics;

/// <summary>The lock-order validator. These tests need validation on, which is the default in Debug builds.</summary>
[Collection(GlobalDiagnosticsCollection.Name)]
public sealed class OrderedLockTests : IDisposable
{
    private readonly bool _was;

    public OrderedLockTests()
    {
        _was = OrderedLock.ValidationEnabled;
        OrderedLock.ValidationEnabled = true;
    }

    public void Dispose()
    {
        Assert.Equal(0, OrderedLock.HeldCount);
        OrderedLock.ValidationEnabled = _was;
    }

    [Fact]
    public void LocksTakenOutermostFirstAreAccepted()
    {
        // Every class once, in the order of LockOrder.cs (outermost first).
        var locks = Enum.GetValues<LockClass>().Order().Select(c => new OrderedLock(c)).ToList();
        locks.ForEach(l => l.Enter());
        Assert.Equal(locks.Count, OrderedLock.HeldCount);
        Assert.Equal(string.Join(", ", locks.Select(l => l.Class)), OrderedLock.DescribeHeld());
        Enumerable.Reverse(locks).ToList().ForEach(l => l.Exit());
        Assert.Equal(0, OrderedLock.HeldCount);
    }

    [Fact]
    public void TheMmapLockThenAPageTableLockThenTheBuddyLockIsAValidNesting()
    {
        var mmap = new OrderedLock(LockClass.MmapLock);
        var pt = new OrderedLock(LockClass.PageTable);
        var buddy = new OrderedLock(LockClass.Buddy);
        using (mmap.EnterScope())
        using (pt.EnterScope())
        using (buddy.EnterScope())
        {
            Assert.Equal("MmapLock, PageTable, Buddy", OrderedLock.DescribeHeld());
        }
    }

    [Fact]
    public void TakingTheMmapLockUnderAPageTableLockIsReportedBeforeBlocking()
    {
        var mmap = new OrderedLock(LockClass.MmapLock);
        var pt = new OrderedLock(LockClass.PageTable);
        using (pt.EnterScope())
        {
            LockOrderViolationException ex = Assert.Throws<LockOrderViolationException>(mmap.Enter);
            Assert.Equal(LockClass.MmapLock, ex.Acquiring);
            Assert.Equal(LockClass.PageTable, ex.Held);
            Assert.Contains("held: PageTable", ex.Message, StringComparison.Ordinal);
            Assert.False(mmap.IsHeldByCurrentThread);
            Assert.Equal(1, OrderedLock.HeldCount);
        }
    }

    [Theory]
    [InlineData(LockClass.PageTable)]
    [InlineData(LockClass.Frame)]
    public void TwoLocksOfANestableClassMayBeHeldTogether(LockClass nestable)
    {
        var a = new OrderedLock(nestable);
        var b = new OrderedLock(nestable);
        using (a.EnterScope())
        using (b.EnterScope())
        {
            Assert.Equal(2, OrderedLock.HeldCount);
        }
    }

    [Theory]
    [InlineData(LockClass.MmapLock)]
    [InlineData(LockClass.NotifierSubscriptions)]
    [InlineData(LockClass.Buddy)]
    public void TwoLocksOfAnyOtherClassMayNot(LockClass cls)
    {
        var a = new OrderedLock(cls);
        var b = new OrderedLock(cls);
        using (a.EnterScope())
        {
            LockOrderViolationException ex = Assert.Throws<LockOrderViolationException>(b.Enter);
            Assert.Contains("not nestable", ex.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void ATryLockIsNotCheckedButIsRecordedAsHeld()
    {
        var pt = new OrderedLock(LockClass.PageTable);
        var mmap = new OrderedLock(LockClass.MmapLock);
        using (pt.EnterScope())
        {
            Assert.True(mmap.TryEnter()); // inverted, but a try-lock cannot deadlock
            Assert.True(OrderedLock.IsHeld(LockClass.MmapLock));
            mmap.Exit();
        }
    }

    [Fact]
    public void LocksMayBeReleasedInAnyOrder()
    {
        var mmap = new OrderedLock(LockClass.MmapLock);
        var inode = new OrderedLock(LockClass.Inode);
        mmap.Enter();
        inode.Enter();
        mmap.Exit();
        Assert.Equal("Inode", OrderedLock.DescribeHeld());
        inode.Exit();
    }

    [Fact]
    public void ReportingTheReleaseOfAClassThatIsNotHeldIsAViolation()
    {
        Assert.Throws<LockOrderViolationException>(() => OrderedLock.Exit(LockClass.Frame));
    }

    [Fact]
    public void OtherLockTypesReportThroughTheStaticHooks()
    {
        OrderedLock.Enter(LockClass.MmapLock);          // e.g. the mmap reader/writer semaphore
        OrderedLock.Enter(LockClass.PageTable);         // a split page-table lock
        OrderedLock.AssertHeld(LockClass.PageTable);
        Assert.Throws<LockOrderViolationException>(() => OrderedLock.Enter(LockClass.NotifierSubscriptions));
        OrderedLock.Exit(LockClass.PageTable);
        OrderedLock.Exit(LockClass.MmapLock);
        OrderedLock.AssertNoneHeld();
    }

    [Fact]
    public void EachThreadHasItsOwnHeldStack()
    {
        var pt = new OrderedLock(LockClass.PageTable);
        var mmap = new OrderedLock(LockClass.MmapLock);
        using (pt.EnterScope())
        {
            Exception? error = null;
            var t = new Thread(() =>
            {
                try
                {
                    using (mmap.EnterScope())
                    {
                    }
                }
                catch (Exception ex)
                {
                    error = ex;
                }
            });
            t.Start();
            t.Join();
            Assert.Null(error);
        }
    }

    [Fact]
    public void WithValidationOffNothingIsCheckedOrRecorded()
    {
        OrderedLock.ValidationEnabled = false;
        var pt = new OrderedLock(LockClass.PageTable);
        var mmap = new OrderedLock(LockClass.MmapLock);
        using (pt.EnterScope())
        using (mmap.EnterScope())
        {
            Assert.Equal(0, OrderedLock.HeldCount);
        }
        OrderedLock.ValidationEnabled = true;
    }

    [Fact]
    public void AssertHeldFailsForALockTheThreadDoesNotHold()
    {
        var l = new OrderedLock(LockClass.Inode, "inode 7");
        Assert.Throws<InvariantViolationException>(() => l.AssertHeld());
        using (l.EnterScope())
        {
            l.AssertHeld();
        }
    }

    [Fact]
    public void OnlyPageTableAndFrameAreNestable()
    {
        var nestable = Enum.GetValues<LockClass>().Where(OrderedLock.IsNestable).ToHashSet();
        Assert.True(nestable.SetEquals([LockClass.PageTable, LockClass.Frame]), string.Join(", ", nestable));
    }
}
