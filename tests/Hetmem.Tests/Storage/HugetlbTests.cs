using Hetmem.Physical;
using Hetmem.Storage;
using static Hetmem.Tests.Storage.StorageTest;

namespace Hetmem.Tests.Storage;

public sealed class HugetlbTests : IDisposable
{
    private const ulong Huge = 2UL << 20;
    private const ulong HugePgoffs = 1UL << Page.PmdOrder;

    private readonly PhysicalMemory _memory = new(RamBytes);
    private readonly long _usedAtStart;

    public HugetlbTests() => _usedAtStart = _memory.UsedFrames;

    public void Dispose()
    {
        Assert.Equal(_usedAtStart, _memory.UsedFrames);
        _memory.Dispose();
    }

    [Fact]
    public void ThePoolTakesItsPagesUpFrontAndGivesThemBackOnDispose()
    {
        using (var pool = new HugetlbPool(_memory, Page.PmdOrder, 4))
        {
            Assert.Equal(_usedAtStart + 4 * 512, _memory.UsedFrames);
            Assert.Equal((4UL, 4UL, 0UL), (pool.Total, pool.Free, pool.Reserved));
            Assert.Equal(Huge, pool.PageBytes);
        }
        Assert.Equal(_usedAtStart, _memory.UsedFrames);
    }

    [Fact]
    public void APoolThatCannotBeFilledIsEnomemAndKeepsNothing()
    {
        Throws(Errno.ENOMEM, () => _ = new HugetlbPool(_memory, Page.PmdOrder, 32));
        List<ulong> hog = Exhaust(_memory);
        FreeAll(_memory, hog.Take(10).ToList()); // ten 2 MiB blocks free
        long used = _memory.UsedFrames;
        Throws(Errno.ENOMEM, () => _ = new HugetlbPool(_memory, Page.PmdOrder, 11));
        Assert.Equal(used, _memory.UsedFrames);
        FreeAll(_memory, hog.Skip(10).ToList());
    }

    [Fact]
    public void GigantPagesNeedGiganticMemoryAndOtherOrdersAreEinval()
    {
        Assert.False(_memory.SupportsGigantic);
        Throws(Errno.EINVAL, () => _ = new HugetlbPool(_memory, Page.PudOrder, 1));
        Throws(Errno.EINVAL, () => _ = new HugetlbPool(_memory, 3, 1));
    }

    [Fact]
    public void ReservationsAreAccountedLikeHugePagesRsvd()
    {
        using var pool = new HugetlbPool(_memory, Page.PmdOrder, 4);
        Assert.Equal(Errno.Ok, pool.Reserve(3));
        Assert.Equal(Errno.ENOMEM, pool.Reserve(2));
        Assert.Equal(3UL, pool.Reserved);
        Assert.Equal(Errno.Ok, pool.AllocatePage(useReservation: false, out ulong unreserved));
        Assert.Equal(Errno.ENOMEM, pool.AllocatePage(useReservation: false, out _));
        Assert.Equal(Page.NoPfn, pool.AllocateSurplus());
        Assert.Equal(Errno.Ok, pool.AllocatePage(useReservation: true, out ulong reserved));
        Assert.Equal((2UL, 2UL), (pool.Free, pool.Reserved));
        pool.ReleasePage(reserved);
        _memory.Put(unreserved); // a plain put: the pool notices at its next look
        Assert.Equal(4UL, pool.Free);
        pool.Unreserve(2);
        Assert.Equal(0UL, pool.Reserved);
        Assert.Throws<InvalidOperationException>(() => pool.Unreserve(1));
    }

    [Fact]
    public void TheFirstFaultAllocatesAZeroedHugePageAndConsumesTheFilesReservation()
    {
        using var pool = new HugetlbPool(_memory, Page.PmdOrder, 2);
        using var fs = new HugetlbFs(pool);
        using FileHandle f = fs.Create("h");
        var file = (HugetlbFile)f.Inode;
        f.Truncate(2 * Huge);
        ulong pool0 = pool.Pfns();
        _memory.FrameSpan(pool0).Fill(0x5A); // stale bytes from a previous user
        Assert.Equal(Errno.Ok, file.ReserveRange(0, 2 * HugePgoffs));
        Assert.Equal(Errno.Ok, file.ReserveRange(0, 2 * HugePgoffs)); // already promised: no new reservation
        Assert.Equal((2UL, 2), (pool.Reserved, file.ReservedPages));
        Assert.Equal(Errno.Ok, file.GetPage(HugePgoffs + 7, true, 0, out ulong pfn, out int order));
        Assert.Equal(Page.PmdOrder, order);
        Assert.True(Page.IsAligned(pfn, HugePgoffs));
        Assert.Same(file, _memory.Frame(pfn).Mapping);
        Assert.Equal(HugePgoffs, _memory.Frame(pfn).Index);
        Assert.Equal(3, _memory.Frame(pfn).RefCount); // pool + file + caller
        for (ulong k = 0; k < HugePgoffs; k++)
        {
            Assert.All(_memory.FrameSpan(pfn + k).ToArray(), b => Assert.Equal(0, b));
        }
        Assert.Equal((1UL, 1UL, 1), (pool.Free, pool.Reserved, file.ReservedPages));
        _memory.Put(pfn);
        Assert.Equal(Errno.EFAULT, file.GetPage(2 * HugePgoffs, false, 9, out _, out _));
    }

    [Fact]
    public void AFaultWithoutReservationFailsWhenEveryFreePageIsPromised()
    {
        using var pool = new HugetlbPool(_memory, Page.PmdOrder, 2);
        using var fs = new HugetlbFs(pool);
        using FileHandle a = fs.Create("a");
        using FileHandle b = fs.Create("b");
        a.Truncate(2 * Huge);
        b.Truncate(Huge);
        Assert.Equal(Errno.Ok, ((HugetlbFile)a.Inode).ReserveRange(0, 2 * HugePgoffs));
        Assert.Equal(Errno.ENOMEM, ((HugetlbFile)b.Inode).ReserveRange(0, HugePgoffs));
        Assert.Equal(Errno.ENOMEM, b.Inode.GetPage(0, true, 9, out ulong pfn, out _)); // MAP_NORESERVE → SIGBUS
        Assert.Equal(Page.NoPfn, pfn);
        Assert.Equal(Errno.Ok, a.Inode.GetPage(0, true, 9, out pfn, out _));
        _memory.Put(pfn);
    }

    [Fact]
    public void TruncateAndUnlinkReturnPagesAndReservationsToThePoolNotTheBuddy()
    {
        using var pool = new HugetlbPool(_memory, Page.PmdOrder, 3);
        long used = _memory.UsedFrames;
        using var fs = new HugetlbFs(pool);
        FileHandle f = fs.Create("h");
        var file = (HugetlbFile)f.Inode;
        f.Truncate(3 * Huge);
        Assert.Equal(Errno.Ok, file.ReserveRange(0, 3 * HugePgoffs));
        var mm = new FakeAddressSpace(_memory);
        FakeMapping m = mm.Map(file, 0x40000000, 0, 3 * HugePgoffs);
        Assert.Equal(Errno.Ok, mm.Fault(file, m, m.Start, true, 9, out _, out _));
        Assert.Equal(Errno.Ok, mm.Fault(file, m, m.Start + Huge, true, 9, out ulong second, out _));
        Assert.Equal(Errno.Ok, file.GetPage(HugePgoffs, false, 9, out ulong pinned, out _));
        Assert.Equal((1UL, 1UL), (pool.Free, pool.Reserved));
        f.Truncate(Huge);
        Assert.Equal((m.Start + Huge, m.End, true), Assert.Single(mm.Unmaps));
        Assert.Equal(0UL, pool.Reserved);
        Assert.Equal(1UL, pool.Free);          // the second page is still pinned
        Assert.Null(_memory.Frame(second).Mapping);
        _memory.Put(pinned);
        Assert.Equal(2UL, pool.Free);
        Assert.Equal(used, _memory.UsedFrames); // nothing went back to the buddy allocator
        Throws(Errno.EINVAL, () => f.Truncate(Huge + Page.Size));
        Throws(Errno.EINVAL, () => f.Write(0, [1]));
        mm.Unmap(file, m);
        fs.Unlink("h");
        Assert.Equal(2UL, pool.Free);
        f.Dispose();
        Assert.Equal(3UL, pool.Free);
        Assert.Equal(used, _memory.UsedFrames);
    }

    [Fact]
    public void PunchHoleFreesWholeHugePagesAndZeroesPartialOnes()
    {
        using var pool = new HugetlbPool(_memory, Page.PmdOrder, 3);
        using var fs = new HugetlbFs(pool);
        using FileHandle f = fs.Create("h");
        var file = (HugetlbFile)f.Inode;
        f.Truncate(3 * Huge);
        var heads = new ulong[3];
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(Errno.Ok, file.GetPage((ulong)i * HugePgoffs, true, 9, out heads[i], out _));
            for (ulong k = 0; k < HugePgoffs; k++)
            {
                _memory.FrameSpan(heads[i] + k).Fill((byte)(i + 1));
            }
            _memory.Put(heads[i]);
        }
        f.PunchHole(Huge - 10, Huge + 20);
        Assert.Equal(3 * Huge, f.Size);
        Assert.Equal(2, file.HugePages);
        Assert.Equal(1UL, pool.Free);
        byte[] all = ReadAll(file);
        Assert.All(all[..(int)(Huge - 10)], b => Assert.Equal(1, b));
        Assert.All(all[(int)(Huge - 10)..(int)(2 * Huge + 10)], b => Assert.Equal(0, b));
        Assert.All(all[(int)(2 * Huge + 10)..], b => Assert.Equal(3, b));
    }

    [Fact]
    public void AnAnonymousFileIsFreedByItsLastReferenceAndUnmountFreesTheRest()
    {
        using var pool = new HugetlbPool(_memory, Page.PmdOrder, 2);
        var fs = new HugetlbFs(pool);
        HugetlbFile anon = fs.CreateAnonymous(Huge + 1);
        Assert.Equal(2 * Huge, anon.Size);
        Assert.Null(anon.Name);
        Assert.Equal(Errno.Ok, anon.GetPage(0, true, 9, out ulong pfn, out _));
        _memory.Put(pfn);
        Assert.Equal(1UL, pool.Free);
        anon.Release();
        Assert.Equal(2UL, pool.Free);
        HugetlbFile leaked = fs.CreateAnonymous(Huge);
        leaked.GetPage(0, true, 9, out pfn, out _);
        _memory.Put(pfn);
        FileHandle named = fs.Create("n");
        named.Truncate(Huge);
        Assert.Equal(Errno.Ok, named.Inode.GetPage(0, true, 9, out pfn, out _));
        _memory.Put(pfn);
        Assert.Equal(0UL, pool.Free);
        fs.Dispose();
        Assert.Equal(2UL, pool.Free);
        Assert.True(leaked.IsEvicted);
        named.Dispose();
        Throws(Errno.EIO, () => fs.Create("x"));
    }

    [Fact]
    public void FaultingAnExistingHugePageDoesNotAllocate()
    {
        using var pool = new HugetlbPool(_memory, Page.PmdOrder, 1);
        using var fs = new HugetlbFs(pool);
        using FileHandle f = fs.Create("h");
        f.Truncate(Huge);
        f.Inode.GetPage(0, true, 9, out ulong warm, out _);
        _memory.Put(warm);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++)
        {
            f.Inode.GetPage(5, false, 9, out ulong pfn, out _);
            _memory.Put(pfn);
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void NamesFollowTheKernelRules()
    {
        using var pool = new HugetlbPool(_memory, Page.PmdOrder, 1);
        using var fs = new HugetlbFs(pool);
        using (fs.Create("a"))
        {
        }
        Throws(Errno.EEXIST, () => fs.Create("a"));
        Throws(Errno.ENOENT, () => fs.Open("b"));
        Throws(Errno.ENOENT, () => fs.Unlink("b"));
        Assert.True(fs.Exists("a"));
        fs.Unlink("a");
        Assert.False(fs.Exists("a"));
    }
}

internal static class HugetlbPoolTestExtensions
{
    /// <summary>The PFN the next allocation from a fresh pool hands out (the pool's first page).</summary>
    public static ulong Pfns(this HugetlbPool pool)
    {
        Assert.Equal(Errno.Ok, pool.AllocatePage(false, out ulong pfn));
        pool.ReleasePage(pfn);
        return pfn;
    }
}
