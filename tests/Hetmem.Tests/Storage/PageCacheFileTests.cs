using Hetmem.Diagnostics;
using Hetmem.Physical;
using Hetmem.Storage;
using static Hetmem.Tests.Storage.StorageTest;

namespace Hetmem.Tests.Storage;

public sealed class PageCacheFileTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly PhysicalMemory _memory = new(RamBytes);
    private readonly long _usedAtStart;
    private readonly PageCacheFileSystem _fs;

    public PageCacheFileTests()
    {
        _usedAtStart = _memory.UsedFrames;
        _fs = new PageCacheFileSystem(_memory, _dir.Path);
    }

    public void Dispose()
    {
        _fs.Dispose();
        Assert.Equal(_usedAtStart, _memory.UsedFrames);
        _memory.Dispose();
        _dir.Dispose();
    }

    [Fact]
    public void WrittenBytesReadBackAndSpanPageBoundaries()
    {
        using FileHandle f = _fs.Create("a");
        byte[] data = Pattern(3 * Page.Size + 123, 1);
        Assert.Equal(data.Length, f.Write(100, data));
        Assert.Equal(100UL + (ulong)data.Length, f.Size);
        var back = new byte[data.Length];
        Assert.Equal(data.Length, f.Read(100, back));
        Assert.Equal(data, back);
        var head = new byte[100];
        Assert.Equal(100, f.Read(0, head));
        Assert.All(head, b => Assert.Equal(0, b));
    }

    [Fact]
    public void ReadIsShortAtEndOfFileAndEmptyBeyondIt()
    {
        using FileHandle f = _fs.Create("a");
        f.Write(0, Pattern(5000, 2));
        var buf = new byte[4096];
        Assert.Equal(1004, f.Read(4096 - 100, buf));
        Assert.Equal(904, f.Read(4096, buf));
        Assert.Equal(0, f.Read(5000, buf));
        Assert.Equal(0, f.Read(1UL << 40, buf));
    }

    [Fact]
    public void FsyncWritesDirtyPagesToTheHostFile()
    {
        byte[] data = Pattern(2 * Page.Size + 7, 3);
        using (FileHandle f = _fs.Create("a"))
        {
            f.Write(0, data);
            f.Fsync();
        }
        Assert.Equal(data, File.ReadAllBytes(_dir.File("a")));
    }

    [Fact]
    public void WritebackOfARangeWritesOnlyThatRange()
    {
        using FileHandle f = _fs.Create("a");
        var file = (PageCacheFile)f.Inode;
        f.Write(0, Pattern(3 * Page.Size, 4));
        Assert.Equal(Errno.Ok, file.Writeback(1, 2));
        byte[] host = File.ReadAllBytes(_dir.File("a"));
        Assert.Equal(3 * Page.Size, host.Length);
        Assert.All(host.AsSpan(0, Page.Size).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(Pattern(3 * Page.Size, 4).AsSpan(Page.Size, Page.Size).ToArray(), host.AsSpan(Page.Size, Page.Size).ToArray());
        Assert.True(_memory.Frame(file.TryFindPage(0, out ulong p0) ? p0 : 0).Has(FrameFlags.Dirty));
        Assert.False(_memory.Frame(file.TryFindPage(1, out ulong p1) ? p1 : 0).Has(FrameFlags.Dirty));
    }

    [Fact]
    public void OpeningAnExistingHostFileReadsItsBytesOnFirstAccess()
    {
        byte[] data = Pattern(10_000, 5);
        File.WriteAllBytes(_dir.File("existing"), data);
        using FileHandle f = _fs.Open("existing", FileAccess.Read);
        var file = (PageCacheFile)f.Inode;
        Assert.Equal((ulong)data.Length, f.Size);
        Assert.Equal(0, file.CachedPages);
        Assert.Equal(data, ReadAll(file));
        Assert.Equal(3, file.CachedPages);
    }

    [Fact]
    public void TwoOpensOfOneNameShareOnePageCache()
    {
        using FileHandle a = _fs.Create("a");
        using FileHandle b = _fs.Open("a");
        Assert.Same(a.Inode, b.Inode);
        a.Write(0, [1, 2, 3]);
        var buf = new byte[3];
        b.Read(0, buf);
        Assert.Equal(new byte[] { 1, 2, 3 }, buf);
    }

    [Fact]
    public void GetPageReturnsACachePageWithAnExtraReferenceOwnedByTheFile()
    {
        using FileHandle f = _fs.Create("a");
        f.Write(0, Pattern(Page.Size, 6));
        Inode file = f.Inode;
        Assert.Equal(Errno.Ok, file.GetPage(0, write: false, maxOrder: 9, out ulong pfn, out int order));
        Assert.Equal(0, order);
        ref FrameInfo info = ref _memory.Frame(pfn);
        Assert.Same(file, info.Mapping);
        Assert.Equal(0UL, info.Index);
        Assert.Equal(2, info.RefCount);
        Assert.True(info.Has(FrameFlags.UpToDate));
        Assert.Equal(Pattern(Page.Size, 6), _memory.FrameSpan(pfn).ToArray());
        _memory.Put(pfn);
        Assert.Equal(1, _memory.Frame(pfn).RefCount);
    }

    [Fact]
    public void GetPageAtOrBeyondEndOfFileReturnsEfault()
    {
        using FileHandle f = _fs.Create("a");
        f.Write(0, new byte[Page.Size + 1]);
        Assert.Equal(Errno.Ok, f.Inode.GetPage(1, false, 0, out ulong pfn, out _));
        _memory.Put(pfn);
        Assert.Equal(Errno.EFAULT, f.Inode.GetPage(2, false, 0, out pfn, out _));
        Assert.Equal(Page.NoPfn, pfn);
    }

    [Fact]
    public void GetPageOfACachedPageDoesNotAllocate()
    {
        using FileHandle f = _fs.Create("a");
        f.Write(0, new byte[Page.Size]);
        Inode file = f.Inode;
        file.GetPage(0, false, 0, out ulong warm, out _);
        _memory.Put(warm);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++)
        {
            file.GetPage(0, false, 0, out ulong pfn, out _);
            _memory.Put(pfn);
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void ConcurrentFaultsOnOnePageLoadItOnce()
    {
        byte[] data = Pattern(Page.Size, 7);
        File.WriteAllBytes(_dir.File("a"), data);
        using FileHandle f = _fs.Open("a");
        var pfns = new ulong[8];
        Parallel.For(0, pfns.Length, i =>
        {
            Assert.Equal(Errno.Ok, f.Inode.GetPage(0, false, 0, out pfns[i], out _));
        });
        Assert.All(pfns, p => Assert.Equal(pfns[0], p));
        Assert.Equal(1 + pfns.Length, _memory.Frame(pfns[0]).RefCount);
        Assert.Equal(data, _memory.FrameSpan(pfns[0]).ToArray());
        foreach (ulong p in pfns)
        {
            _memory.Put(p);
        }
    }

    [Fact]
    public void WriteFaultAndMarkDirtyReachTheHostFileOnFsync()
    {
        using FileHandle f = _fs.Create("a");
        f.Truncate(2 * Page.Size);
        Inode file = f.Inode;
        Assert.Equal(Errno.Ok, file.GetPage(0, write: true, 0, out ulong p0, out _));
        _memory.FrameSpan(p0)[0] = 0xAA;
        Assert.Equal(Errno.Ok, file.GetPage(1, write: false, 0, out ulong p1, out _));
        _memory.FrameSpan(p1)[0] = 0xBB;
        file.MarkDirty(1);
        _memory.Put(p0);
        _memory.Put(p1);
        f.Fsync();
        byte[] host = File.ReadAllBytes(_dir.File("a"));
        Assert.Equal(0xAA, host[0]);
        Assert.Equal(0xBB, host[Page.Size]);
    }

    [Fact]
    public void TruncateUnmapsWithEvenCowsFromTheFirstWholePageAndShrinksTheHostFile()
    {
        using FileHandle f = _fs.Create("a");
        Inode file = f.Inode;
        f.Write(0, Pattern(4 * Page.Size, 8));
        var mm = new FakeAddressSpace(_memory);
        FakeMapping m = mm.Map(file, 0x10000000, 0, 4);
        for (ulong i = 0; i < 4; i++)
        {
            Assert.Equal(Errno.Ok, mm.Fault(file, m, m.Start + (i << Page.Shift), false, 0, out _, out _));
        }
        f.Truncate(Page.Size + 10);
        Assert.Equal((m.Start + 2 * (ulong)Page.Size, m.End, true), Assert.Single(mm.Unmaps));
        Assert.Equal(2, mm.MappedEntries);
        Assert.Equal(Page.Size + 10, new FileInfo(_dir.File("a")).Length);
        var file2 = (PageCacheFile)file;
        Assert.False(file2.TryFindPage(2, out _));
        Assert.False(file2.TryFindPage(3, out _));
        mm.Unmap(file, m);
    }

    [Fact]
    public void TruncateZeroesThePartialPageSoGrowingAgainReadsZeroes()
    {
        using FileHandle f = _fs.Create("a");
        f.Write(0, Pattern(2 * Page.Size, 9));
        f.Truncate(100);
        f.Truncate(2 * Page.Size);
        byte[] all = ReadAll(f.Inode);
        Assert.Equal(Pattern(2 * Page.Size, 9).AsSpan(0, 100).ToArray(), all.AsSpan(0, 100).ToArray());
        Assert.All(all.AsSpan(100).ToArray(), b => Assert.Equal(0, b));
        f.Fsync();
        Assert.All(File.ReadAllBytes(_dir.File("a")).AsSpan(100).ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public void WriteBeyondEndOfFileZeroesTheGap()
    {
        using FileHandle f = _fs.Create("a");
        Inode file = f.Inode;
        f.Write(0, [1, 2, 3]);
        // Garbage beyond EOF in the last page, as a write through a mapping could leave it.
        file.GetPage(0, true, 0, out ulong pfn, out _);
        _memory.FrameSpan(pfn)[3..].Fill(0xEE);
        _memory.Put(pfn);
        f.Write(10_000, [9]);
        byte[] all = ReadAll(file);
        Assert.Equal(10_001, all.Length);
        Assert.Equal(new byte[] { 1, 2, 3 }, all[..3]);
        Assert.All(all[3..10_000], b => Assert.Equal(0, b));
        Assert.Equal(9, all[10_000]);
    }

    [Fact]
    public void PunchHoleZeroesPartialPagesRemovesWholeOnesKeepsTheSizeAndKeepsCowCopies()
    {
        using FileHandle f = _fs.Create("a");
        var file = (PageCacheFile)f.Inode;
        byte[] data = Pattern(4 * Page.Size, 10);
        f.Write(0, data);
        f.Fsync();
        var mm = new FakeAddressSpace(_memory);
        FakeMapping m = mm.Map(file, 0x20000000, 0, 4);
        for (ulong i = 0; i < 4; i++)
        {
            mm.Fault(file, m, m.Start + (i << Page.Shift), false, 0, out _, out _);
        }
        ulong offset = Page.Size / 2;
        ulong length = 2 * (ulong)Page.Size;
        f.PunchHole(offset, length);
        Assert.Equal(4UL * Page.Size, f.Size);
        Assert.Equal((m.Start + (ulong)Page.Size, m.Start + 2 * (ulong)Page.Size, false), Assert.Single(mm.Unmaps));
        Assert.False(file.TryFindPage(1, out _));
        Assert.True(file.TryFindPage(0, out _));
        byte[] expected = (byte[])data.Clone();
        Array.Clear(expected, (int)offset, (int)length);
        Assert.Equal(expected, ReadAll(file));
        f.Fsync();
        Assert.Equal(expected, File.ReadAllBytes(_dir.File("a")));
        mm.Unmap(file, m);
    }

    [Fact]
    public void PunchHoleReachingTheEndOfFileRemovesThePartialLastPage()
    {
        using FileHandle f = _fs.Create("a");
        var file = (PageCacheFile)f.Inode;
        f.Write(0, Pattern(Page.Size + 100, 11));
        f.PunchHole(Page.Size, 1UL << 30);
        Assert.Equal(Page.Size + 100UL, f.Size);
        Assert.False(file.TryFindPage(1, out _));
        Assert.All(ReadAll(file).AsSpan(Page.Size).ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public void APinnedPageLeavesTheCacheOnTruncateButIsFreedOnlyByItsLastReference()
    {
        using FileHandle f = _fs.Create("a");
        var file = (PageCacheFile)f.Inode;
        f.Write(0, Pattern(2 * Page.Size, 12));
        Assert.Equal(Errno.Ok, file.GetPage(1, false, 0, out ulong pinned, out _));
        long used = _memory.UsedFrames;
        f.Truncate(Page.Size);
        Assert.False(file.TryFindPage(1, out _));
        Assert.Equal(1, _memory.Frame(pinned).RefCount);
        Assert.Null(_memory.Frame(pinned).Mapping);
        Assert.Equal(used, _memory.UsedFrames);
        Assert.Equal(Pattern(2 * Page.Size, 12).AsSpan(Page.Size).ToArray(), _memory.FrameSpan(pinned).ToArray());
        Assert.True(_memory.Put(pinned));
        Assert.Equal(used - 1, _memory.UsedFrames);
    }

    [Fact]
    public void ReclaimDropsCleanUnmappedPagesAndTheyReloadFromTheHost()
    {
        using FileHandle f = _fs.Create("a");
        var file = (PageCacheFile)f.Inode;
        byte[] data = Pattern(Page.Size, 13);
        f.Write(0, data);
        f.Fsync();
        Assert.True(file.TryFindPage(0, out ulong pfn));
        long used = _memory.UsedFrames;
        long dropped = Counters.Read(Counter.PageCacheDropped);
        Assert.Equal(Errno.Ok, _fs.TryReclaimPage(pfn));
        Assert.Equal(used - 1, _memory.UsedFrames);
        Assert.Equal(0, file.CachedPages);
        Assert.True(Counters.Read(Counter.PageCacheDropped) > dropped);
        Assert.Equal(data, ReadAll(file));
    }

    [Fact]
    public void ReclaimWritesBackADirtyPageBeforeDroppingIt()
    {
        using FileHandle f = _fs.Create("a");
        var file = (PageCacheFile)f.Inode;
        byte[] data = Pattern(Page.Size, 14);
        f.Write(0, data);
        Assert.True(file.TryFindPage(0, out ulong pfn));
        Assert.True(_memory.Frame(pfn).Has(FrameFlags.Dirty));
        Assert.Equal(Errno.Ok, file.TryReclaimPage(pfn));
        Assert.Equal(data, File.ReadAllBytes(_dir.File("a")));
        Assert.Equal(data, ReadAll(file));
    }

    [Fact]
    public void ReclaimRefusesMappedOrReferencedPagesAndForeignFrames()
    {
        using FileHandle f = _fs.Create("a");
        var file = (PageCacheFile)f.Inode;
        f.Write(0, new byte[2 * Page.Size]);
        var mm = new FakeAddressSpace(_memory);
        FakeMapping m = mm.Map(file, 0x30000000, 0, 1);
        mm.Fault(file, m, m.Start, false, 0, out ulong mapped, out _);
        Assert.Equal(Errno.EBUSY, file.TryReclaimPage(mapped));
        file.GetPage(1, false, 0, out ulong referenced, out _);
        Assert.Equal(Errno.EBUSY, file.TryReclaimPage(referenced));
        _memory.Put(referenced);
        ulong foreign = _memory.Allocate(0);
        Assert.Equal(Errno.ENOENT, file.TryReclaimPage(foreign));
        Assert.Equal(Errno.ENOENT, _fs.TryReclaimPage(foreign));
        _memory.Put(foreign);
        Assert.Equal(2, file.CachedPages);
        mm.Unmap(file, m);
    }

    [Fact]
    public void ExhaustedRamGivesEnomemAndChangesNothing()
    {
        using FileHandle f = _fs.Create("a");
        f.Write(0, Pattern(100, 15));
        f.Fsync();
        var file = (PageCacheFile)f.Inode;
        Assert.True(file.TryFindPage(0, out ulong cached));
        Assert.Equal(Errno.Ok, file.TryReclaimPage(cached));
        List<ulong> hog = Exhaust(_memory);
        try
        {
            Assert.Equal(Errno.ENOMEM, file.GetPage(0, false, 0, out ulong pfn, out _));
            Assert.Equal(Page.NoPfn, pfn);
            Throws(Errno.ENOMEM, () => f.Read(0, new byte[10]));
            Throws(Errno.ENOMEM, () => f.Write(5 * Page.Size, new byte[10]));
            Assert.Equal(100UL, f.Size);
            Assert.Equal(100, new FileInfo(_dir.File("a")).Length);
        }
        finally
        {
            FreeAll(_memory, hog);
        }
        Assert.Equal(Pattern(100, 15), ReadAll(file));
    }

    [Fact]
    public void OpenModesAreEnforcedLikeTheSystemCalls()
    {
        using (FileHandle rw = _fs.Create("a"))
        {
            rw.Write(0, [1]);
        }
        using FileHandle ro = _fs.Open("a", FileAccess.Read);
        using FileHandle wo = _fs.Open("a", FileAccess.Write);
        Throws(Errno.EBADF, () => ro.Write(0, [2]));
        Throws(Errno.EINVAL, () => ro.Truncate(0));
        Throws(Errno.EBADF, () => ro.PunchHole(0, 1));
        Throws(Errno.EBADF, () => wo.Read(0, new byte[1]));
        ro.Fsync();
        var b = new byte[1];
        ro.Read(0, b);
        Assert.Equal(1, b[0]);
        Assert.Equal(1UL, ro.Size);
        FileHandle closed = ro.Duplicate();
        closed.Dispose();
        Throws(Errno.EBADF, () => closed.Read(0, b));
    }

    [Fact]
    public void BadOffsetsAndSizesThrowTheKernelErrnoAndChangeNothing()
    {
        using FileHandle f = _fs.Create("a");
        byte[] data = Pattern(Page.Size, 16);
        f.Write(0, data);
        Throws(Errno.EINVAL, () => f.Read(1UL << 63, new byte[1]));
        Throws(Errno.EINVAL, () => f.Write(long.MaxValue, new byte[2]));
        Throws(Errno.EFBIG, () => f.Write(PageCacheFileSystem.MaxFileSize, new byte[1]));
        Throws(Errno.EINVAL, () => f.Truncate(1UL << 63));
        Throws(Errno.EFBIG, () => f.Truncate(PageCacheFileSystem.MaxFileSize + 1));
        Throws(Errno.EINVAL, () => f.PunchHole(0, 0));
        Throws(Errno.EINVAL, () => f.PunchHole(1UL << 63, 1));
        Throws(Errno.EFBIG, () => f.PunchHole(long.MaxValue - 1, 10));
        Assert.Equal((ulong)Page.Size, f.Size);
        Assert.Equal(data, ReadAll(f.Inode));
        Assert.Equal(Page.Size, new FileInfo(_dir.File("a")).Length);
    }

    [Fact]
    public void NamesFollowTheKernelRules()
    {
        using (_fs.Create("x"))
        {
        }
        Throws(Errno.EEXIST, () => _fs.Create("x"));
        File.WriteAllBytes(_dir.File("host-only"), [1]);
        Throws(Errno.EEXIST, () => _fs.Create("host-only"));
        Throws(Errno.ENOENT, () => _fs.Open("missing"));
        Throws(Errno.ENOENT, () => _fs.Unlink("missing"));
        Throws(Errno.EINVAL, () => _fs.Create("a/b"));
        Throws(Errno.EINVAL, () => _fs.Create(".."));
        Throws(Errno.EINVAL, () => _fs.Create(new string('n', 256)));
        Throws(Errno.ENOENT, () => _fs.Open(""));
        Assert.True(_fs.Exists("x"));
    }

    [Fact]
    public void AnUnlinkedOpenFileKeepsItsDataUntilTheLastClose()
    {
        FileHandle f = _fs.Create("a");
        byte[] data = Pattern(3 * Page.Size, 17);
        f.Write(0, data);
        long used = _memory.UsedFrames;
        _fs.Unlink("a");
        Assert.False(File.Exists(_dir.File("a")));
        Assert.False(_fs.Exists("a"));
        Assert.Equal(data, ReadAll(f.Inode));
        using (FileHandle again = _fs.Create("a"))
        {
            Assert.NotSame(f.Inode, again.Inode);
            Assert.Equal(0UL, again.Size);
        }
        Inode inode = f.Inode;
        f.Dispose();
        Assert.True(inode.IsEvicted);
        Assert.Equal(used - 3, _memory.UsedFrames);
        Throws(Errno.EIO, () => inode.Read(0, new byte[1]));
    }

    [Fact]
    public void UnmountWritesBackAndFreesEveryPage()
    {
        using var dir = new TempDir();
        var fs = new PageCacheFileSystem(_memory, dir.Path);
        FileHandle f = fs.Create("a");
        byte[] data = Pattern(5 * Page.Size, 18);
        f.Write(0, data);
        Assert.Equal(5, fs.CachedPages);
        fs.Dispose();
        Assert.Equal(_usedAtStart, _memory.UsedFrames);
        Assert.Equal(data, File.ReadAllBytes(dir.File("a")));
        Throws(Errno.EIO, () => f.Read(0, new byte[1]));
        Throws(Errno.EIO, () => fs.Open("a"));
        f.Dispose();
    }
}
