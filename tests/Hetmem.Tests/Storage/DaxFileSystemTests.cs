using Hetmem.Physical;
using Hetmem.Storage;
using static Hetmem.Tests.Storage.StorageTest;

namespace Hetmem.Tests.Storage;

public sealed class DaxFileSystemTests : IDisposable
{
    private const ulong Mib = 1UL << 20;
    private const ulong PmdBlocks = 1UL << Page.PmdOrder;

    private readonly TempDir _dir = new(Directory.Exists("/dev/shm") ? "/dev/shm" : null);
    private readonly PhysicalMemory _memory = new(RamBytes);
    private readonly long _usedAtStart;

    public DaxFileSystemTests() => _usedAtStart = _memory.UsedFrames;

    public void Dispose()
    {
        // DAX files live in the namespace: no RAM frame is ever used for them.
        Assert.Equal(_usedAtStart, _memory.UsedFrames);
        _memory.Dispose();
        _dir.Dispose();
    }

    private DaxNamespace Namespace(ulong bytes, PhysicalMemory? memory = null) => new(memory ?? _memory, _dir.File("pmem0"), bytes);

    [Fact]
    public void FilesSurviveUnmountAndRemountFromAnotherPhysicalMemory()
    {
        byte[] a = Pattern((int)(3 * Mib) + 5, 41);
        byte[] b = Pattern(1000, 42);
        using (var ns = Namespace(32 * Mib))
        using (var fs = DaxFileSystem.Format(ns))
        {
            using FileHandle fa = fs.Create("alpha");
            fa.Write(0, a);
            using FileHandle fb = fs.Create("beta");
            fb.Write(7 * Mib, b);
            fa.Fsync();
        }
        using var other = new PhysicalMemory(RamBytes);
        using (var ns = Namespace(32 * Mib, other))
        using (var fs = DaxFileSystem.Mount(ns))
        {
            Assert.Equal(new[] { "alpha", "beta" }, fs.List());
            using FileHandle fa = fs.Open("alpha", FileAccess.Read);
            Assert.Equal(a, ReadAll(fa.Inode));
            using FileHandle fb = fs.Open("beta", FileAccess.Read);
            Assert.Equal(7 * Mib + 1000, fb.Size);
            byte[] all = ReadAll(fb.Inode);
            Assert.All(all.AsSpan(0, (int)(7 * Mib)).ToArray(), x => Assert.Equal(0, x));
            Assert.Equal(b, all.AsSpan((int)(7 * Mib)).ToArray());
        }
    }

    [Fact]
    public void AWholeTwoMibChunkIsAllocatedAlignedAndReportedAsOrderNine()
    {
        using var ns = Namespace(16 * Mib);
        using var fs = DaxFileSystem.Format(ns);
        using FileHandle f = fs.Create("a");
        var file = (DaxFile)f.Inode;
        f.Truncate(4 * Mib);
        Assert.Equal(0UL, file.AllocatedBlocks);
        Assert.Equal(Errno.Ok, file.GetPage(700, write: true, maxOrder: Page.PmdOrder, out ulong pfn, out int order));
        Assert.Equal(Page.PmdOrder, order);
        Assert.True(Page.IsAligned(pfn, PmdBlocks));
        Assert.True(file.TryMapBlock(512, out ulong block));
        Assert.Equal(ns.FirstPfn + block, pfn);
        Assert.Equal(1, ns.Memory.Frame(pfn).RefCount);
        Assert.Same(file, ns.Memory.Frame(pfn).Mapping);
        Assert.Equal(512UL, ns.Memory.Frame(pfn).Index);
        DaxExtent e = Assert.Single(file.Extents);
        Assert.Equal((512UL, PmdBlocks), (e.FileBlock, e.Length));
        Assert.True(Page.IsAligned(e.PhysicalBlock, PmdBlocks));
        ns.Memory.Put(pfn);
        Assert.Equal(0, ns.Memory.Frame(pfn).RefCount);

        // The same block through a PTE: order 0, the frame of that exact page.
        Assert.Equal(Errno.Ok, file.GetPage(700, false, 0, out ulong small, out order));
        Assert.Equal(0, order);
        Assert.Equal(pfn + (700 - 512), small);
        ns.Memory.Put(small);
    }

    [Fact]
    public void ATailShorterThanTwoMibIsNotOrderNineButLinesUpToGrowIntoIt()
    {
        using var ns = Namespace(16 * Mib);
        using var fs = DaxFileSystem.Format(ns);
        using FileHandle f = fs.Create("a");
        var file = (DaxFile)f.Inode;
        f.Truncate(2 * Mib + 10 * (ulong)Page.Size);
        Assert.Equal(Errno.Ok, file.GetPage(0, false, Page.PmdOrder, out ulong pfn, out int order));
        Assert.Equal(Page.PmdOrder, order);
        ns.Memory.Put(pfn);
        Assert.Equal(Errno.Ok, file.GetPage(515, false, Page.PmdOrder, out pfn, out order));
        Assert.Equal(0, order);
        ns.Memory.Put(pfn);
        // The tail was placed right after the first chunk, so it is one extent.
        DaxExtent e = Assert.Single(file.Extents);
        Assert.Equal(PmdBlocks + 10, e.Length);
    }

    [Fact]
    public void AOneGibAlignedFileRangeGetsAOneGibExtentReportedAsOrderEighteen()
    {
        using var ns = Namespace(3UL << 30);
        using var fs = DaxFileSystem.Format(ns);
        using FileHandle f = fs.Create("big");
        var file = (DaxFile)f.Inode;
        f.Truncate(1UL << 30);
        Assert.Equal(Errno.Ok, file.GetPage(12345, true, Page.PudOrder, out ulong pfn, out int order));
        Assert.Equal(Page.PudOrder, order);
        Assert.True(Page.IsAligned(pfn, 1UL << Page.PudOrder));
        DaxExtent e = Assert.Single(file.Extents);
        Assert.Equal(1UL << Page.PudOrder, e.Length);
        ns.Memory.Put(pfn);
        // A PMD-sized view of the same extent.
        Assert.Equal(Errno.Ok, file.GetPage(12345, false, Page.PmdOrder, out ulong pmd, out order));
        Assert.Equal(Page.PmdOrder, order);
        Assert.Equal(pfn + (12345UL & ~(PmdBlocks - 1)), pmd);
        ns.Memory.Put(pmd);
        // Bytes written through the file are the bytes of the frames.
        f.Write((1UL << 30) - 3, [1, 2, 3]);
        unsafe
        {
            byte* last = ns.Memory.Address(pfn + (1UL << Page.PudOrder) - 1);
            Assert.Equal(3, last[Page.Size - 1]);
        }
    }

    [Fact]
    public void GetPageBeyondTheEndOfFileIsEfaultAndTheHotPathDoesNotAllocate()
    {
        using var ns = Namespace(8 * Mib);
        using var fs = DaxFileSystem.Format(ns);
        using FileHandle f = fs.Create("a");
        f.Write(0, new byte[Page.Size + 1]);
        Assert.Equal(Errno.EFAULT, f.Inode.GetPage(2, false, 0, out ulong pfn, out _));
        Assert.Equal(Page.NoPfn, pfn);
        f.Inode.GetPage(1, false, 0, out pfn, out _);
        ns.Memory.Put(pfn);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++)
        {
            f.Inode.GetPage(1, false, 9, out pfn, out _);
            ns.Memory.Put(pfn);
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void TruncateUnmapsEveryMappingWithEvenCowsAndFreesTheBlocks()
    {
        using var ns = Namespace(16 * Mib);
        using var fs = DaxFileSystem.Format(ns);
        using FileHandle f = fs.Create("a");
        var file = (DaxFile)f.Inode;
        f.Truncate(4 * Mib);
        var mm1 = new FakeAddressSpace(ns.Memory);
        var mm2 = new FakeAddressSpace(ns.Memory);
        FakeMapping m1 = mm1.Map(file, 0x40000000, 0, 1024);
        FakeMapping m2 = mm2.Map(file, 0x80000000, 512, 512);
        Assert.Equal(Errno.Ok, mm1.Fault(file, m1, m1.Start, true, Page.PmdOrder, out _, out int o1));
        Assert.Equal(Errno.Ok, mm1.Fault(file, m1, m1.Start + 2 * Mib, true, Page.PmdOrder, out ulong p2, out _));
        Assert.Equal(Errno.Ok, mm2.Fault(file, m2, m2.Start + 5 * (ulong)Page.Size, false, 0, out _, out _));
        Assert.Equal(Page.PmdOrder, o1);
        ulong free = fs.FreeBlocks;
        f.Truncate(Mib);
        Assert.Equal((m1.Start + Mib, m1.End, true), Assert.Single(mm1.Unmaps));
        Assert.Equal((m2.Start, m2.End, true), Assert.Single(mm2.Unmaps));
        Assert.Equal(0, mm2.MappedEntries);
        Assert.Equal(0, mm1.MappedEntries);     // the 2 MiB entry straddled the new end: zapped whole
        Assert.Equal(0, ns.Memory.Frame(p2).RefCount);
        Assert.Equal(free + 1024 - 256, fs.FreeBlocks);
        Assert.Equal(256UL, file.AllocatedBlocks);
        mm1.Unmap(file, m1);
        mm2.Unmap(file, m2);
    }

    [Fact]
    public void PunchHoleUnmapsOnlyWholePagesWithoutEvenCowsAndZeroesTheEdges()
    {
        using var ns = Namespace(16 * Mib);
        using var fs = DaxFileSystem.Format(ns);
        using FileHandle f = fs.Create("a");
        var file = (DaxFile)f.Inode;
        byte[] data = Pattern(8 * Page.Size, 43);
        f.Write(0, data);
        var mm = new FakeAddressSpace(ns.Memory);
        FakeMapping m = mm.Map(file, 0x40000000, 0, 8);
        ulong free = fs.FreeBlocks;
        f.PunchHole(Page.Size + 100, 3 * (ulong)Page.Size);
        Assert.Equal((m.Start + 2 * (ulong)Page.Size, m.Start + 4 * (ulong)Page.Size, false), Assert.Single(mm.Unmaps));
        Assert.Equal(free + 2, fs.FreeBlocks);
        Assert.False(file.TryMapBlock(2, out _));
        Assert.False(file.TryMapBlock(3, out _));
        byte[] expected = (byte[])data.Clone();
        Array.Clear(expected, Page.Size + 100, 3 * Page.Size);
        Assert.Equal(expected, ReadAll(file));
        Assert.Equal(8UL * Page.Size, f.Size);
        mm.Unmap(file, m);
    }

    [Fact]
    public void TruncateWaitsUntilTransientReferencesAreDropped()
    {
        using var ns = Namespace(8 * Mib);
        using var fs = DaxFileSystem.Format(ns);
        using FileHandle f = fs.Create("a");
        f.Write(0, new byte[2 * Page.Size]);
        Assert.Equal(Errno.Ok, f.Inode.GetPage(1, false, 0, out ulong pinned, out _)); // e.g. a GUP pin or DMA in flight
        ulong free = fs.FreeBlocks;
        var truncate = new Thread(() => f.Truncate(Page.Size));
        truncate.Start();
        Assert.False(truncate.Join(200));
        Assert.Equal(free, fs.FreeBlocks);          // the pinned block is not free while the pin lasts
        ns.Memory.Put(pinned);
        Assert.True(truncate.Join(10_000));
        Assert.Equal(free + 1, fs.FreeBlocks);
        Assert.Equal((ulong)Page.Size, f.Size);
        Assert.False(((DaxFile)f.Inode).TryMapBlock(1, out _));
    }

    [Fact]
    public void ReusedBlocksAreZeroedBeforeAnotherFileSeesThem()
    {
        using var ns = Namespace(8 * Mib);
        using var fs = DaxFileSystem.Format(ns);
        ulong[] oldBlocks;
        using (FileHandle a = fs.Create("a"))
        {
            a.Write(0, Enumerable.Repeat((byte)0xA5, (int)(2 * Mib)).ToArray());
            oldBlocks = [.. Enumerable.Range(0, 512).Select(i => ((DaxFile)a.Inode).TryMapBlock((ulong)i, out ulong b) ? b : 0)];
            a.Truncate(0);
        }
        using FileHandle bh = fs.Create("b");
        var b = (DaxFile)bh.Inode;
        bh.Truncate(2 * Mib);
        Assert.Equal(Errno.Ok, b.GetPage(0, true, Page.PmdOrder, out ulong pfn, out _));
        ns.Memory.Put(pfn);
        Assert.True(b.TryMapBlock(0, out ulong reused));
        Assert.Contains(reused, oldBlocks);
        Assert.All(ReadAll(b), x => Assert.Equal(0, x));
        // A small write into a block another file just freed (full of its bytes) exposes nothing either.
        bh.Write(0, Enumerable.Repeat((byte)0xCC, (int)(2 * Mib)).ToArray());
        ulong[] bBlocks = [.. Enumerable.Range(0, 512).Select(i => b.TryMapBlock((ulong)i, out ulong x) ? x : 0)];
        using FileHandle ch = fs.Create("c");
        fs.Unlink("b");
        bh.Dispose();
        ch.Write(10, [1]);
        Assert.True(((DaxFile)ch.Inode).TryMapBlock(0, out ulong cBlock));
        Assert.Contains(cBlock, bBlocks);
        byte[] c = ReadAll(ch.Inode);
        Assert.Equal(11, c.Length);
        Assert.All(c[..10], x => Assert.Equal(0, x));
    }

    [Fact]
    public void AFullFileSystemGivesEnospcAndChangesNothing()
    {
        using var ns = Namespace(4 * Mib);
        using var fs = DaxFileSystem.Format(ns);
        using FileHandle f = fs.Create("a");
        f.Write(0, new byte[2 * Mib]);
        Assert.Equal(0UL, fs.FreeBlocks);
        Throws(Errno.ENOSPC, () => f.Write(2 * Mib, [1]));
        Assert.Equal(2 * Mib, f.Size);
        f.Truncate(3 * Mib);
        Assert.Equal(Errno.ENOSPC, f.Inode.GetPage(600, true, 0, out ulong pfn, out _));
        Assert.Equal(Page.NoPfn, pfn);
        f.Truncate(Mib);
        Assert.Equal(256UL, fs.FreeBlocks);
        // A write that only partly fits is short.
        Assert.Equal((int)Mib, f.Write(Mib, new byte[2 * Mib]));
        Assert.Equal(2 * Mib, f.Size);
    }

    [Fact]
    public void AFragmentedExtentListOverflowsItsInodeAndStillPersists()
    {
        var expected = new Dictionary<ulong, byte>();
        using (var ns = Namespace(16 * Mib))
        using (var fs = DaxFileSystem.Format(ns))
        using (FileHandle f = fs.Create("frag"))
        {
            for (ulong i = 0; i < 400; i++)
            {
                f.Write(2 * i * Page.Size, [(byte)(i + 1)]);
                expected[2 * i] = (byte)(i + 1);
            }
            Assert.Equal(400, ((DaxFile)f.Inode).Extents.Count);
        }
        using (var ns = Namespace(16 * Mib))
        using (var fs = DaxFileSystem.Mount(ns))
        using (FileHandle f = fs.Open("frag"))
        {
            var file = (DaxFile)f.Inode;
            Assert.Equal(400, file.Extents.Count);
            foreach ((ulong block, byte value) in expected)
            {
                var b = new byte[2];
                f.Read(block * Page.Size, b);
                Assert.Equal(value, b[0]);
                Assert.Equal(0, b[1]);
            }
            ulong free = fs.FreeBlocks;
            f.Truncate(0);
            Assert.Empty(file.Extents);
            Assert.Equal(free + 400 + 2, fs.FreeBlocks); // data blocks plus two overflow blocks
        }
    }

    [Fact]
    public void AnUnlinkedFileIsFreedAtItsLastCloseAndStaysGoneAfterRemount()
    {
        using var ns = Namespace(8 * Mib);
        ulong free;
        using (var fs = DaxFileSystem.Format(ns))
        {
            free = fs.FreeBlocks;
            FileHandle f = fs.Create("tmp");
            byte[] data = Pattern((int)Mib, 45);
            f.Write(0, data);
            fs.Unlink("tmp");
            Assert.Equal(free - 256, fs.FreeBlocks);
            Assert.Empty(fs.List());
            Assert.Equal(data, ReadAll(f.Inode));
            f.Dispose();
            Assert.Equal(free, fs.FreeBlocks);
            FileHandle open = fs.Create("open-at-unmount");
            open.Write(0, new byte[Page.Size]);
            fs.Unlink("open-at-unmount");
            // Unmounting with the orphan still open frees it too.
        }
        using (var fs = DaxFileSystem.Mount(ns))
        {
            Assert.Empty(fs.List());
            Assert.Equal(free, fs.FreeBlocks);
        }
    }

    [Fact]
    public void AnOrphanLeftByACrashIsFreedAtTheNextMount()
    {
        ulong free;
        using (var ns = Namespace(8 * Mib))
        {
            // No unmount: the process "crashes" with the unlinked file still open.
            var fs = DaxFileSystem.Format(ns);
            free = fs.FreeBlocks;
            FileHandle open = fs.Create("orphan");
            open.Write(0, new byte[3 * Mib]);
            fs.Create("kept").Write(0, [42]);
            fs.Unlink("orphan");
            Assert.Equal(free - 768 - 1, fs.FreeBlocks);
        }
        using (var ns = Namespace(8 * Mib))
        using (var fs = DaxFileSystem.Mount(ns))
        {
            Assert.Equal(new[] { "kept" }, fs.List());
            Assert.Equal(free - 1, fs.FreeBlocks);
        }
    }

    [Fact]
    public void MountingSomethingThatIsNotADaxFileSystemIsEinval()
    {
        using var ns = Namespace(4 * Mib);
        Throws(Errno.EINVAL, () => DaxFileSystem.Mount(ns));
        using (DaxFileSystem.Format(ns))
        {
        }
        ns.Block(0)[20] ^= 0xFF;
        Throws(Errno.EINVAL, () => DaxFileSystem.Mount(ns));
        using var tiny = new DaxNamespace(_memory, _dir.File("tiny"), 2 * Mib);
        Throws(Errno.EINVAL, () => DaxFileSystem.Format(tiny));
    }

    [Fact]
    public void NamesAndInodesFollowTheKernelRules()
    {
        using var ns = Namespace(4 * Mib);
        using var fs = DaxFileSystem.Format(ns);
        using (fs.Create("x"))
        {
        }
        Throws(Errno.EEXIST, () => fs.Create("x"));
        Throws(Errno.ENOENT, () => fs.Open("y"));
        Throws(Errno.ENOENT, () => fs.Unlink("y"));
        Throws(Errno.EINVAL, () => fs.Create("a/b"));
        for (int i = 1; i < fs.InodeCount; i++)
        {
            fs.Create("f" + i).Dispose();
        }
        Throws(Errno.ENOSPC, () => fs.Create("one-too-many"));
        fs.Unlink("f1");
        fs.Create("fits-again").Dispose();
    }

    [Fact]
    public void FlushAndFsyncAcceptValidRangesAndRejectOverflow()
    {
        using var ns = Namespace(4 * Mib);
        using var fs = DaxFileSystem.Format(ns);
        using FileHandle f = fs.Create("a");
        f.Write(0, Pattern(3 * Page.Size, 44));
        var file = (DaxFile)f.Inode;
        file.Flush(100, 2 * (ulong)Page.Size);
        file.Flush(1UL << 40, 10);
        f.Fsync();
        fs.Sync();
        Throws(Errno.EINVAL, () => file.Flush(ulong.MaxValue - 1, 10));
        Throws(Errno.EINVAL, () => f.Read(ulong.MaxValue, new byte[1]));
        Throws(Errno.EFBIG, () => f.Truncate(DaxFileSystem.MaxFileSize + Page.Size));
        Assert.Equal(Pattern(3 * Page.Size, 44), ReadAll(file));
    }
}
