using Hetmem.Devices.Gpu;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Tests.Devices.Gpu;

/// <summary>
/// Kernels read and write every mapping kind through the GPU MMU (spec devices.md §1.2: DAX, hugetlb and file-backed
/// pages are never migrated, only mapped where they are, with the CPU's mapping order).
/// </summary>
public sealed class GpuMappingKindTests : IDisposable
{
    private const ulong Mib = GpuTestRig.Mib;
    private const ulong Pmd = Page.PmdSize;
    private const ulong Base = 0x2000_0000_0000; // 1 GiB aligned

    private readonly string _dir = Path.Combine(Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath(), "hetmem-gpu-" + Guid.NewGuid().ToString("N"));

    public GpuMappingKindTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Doubles <paramref name="count"/> longs at <paramref name="va"/> and adds the index (one thread per long).</summary>
    private static void DoubleAndAdd(GpuContext ctx, ulong va, long count)
        => ctx.Launch((int)((count + 127) / 128), 128, t =>
        {
            long i = t.GlobalId;
            if (i < count)
            {
                ulong p = va + (ulong)i * 8;
                t.Store(p, 2 * t.Load<long>(p) + i);
            }
        });

    private static byte[] Longs(long count, Func<long, long> f)
    {
        var b = new byte[count * 8];
        for (long i = 0; i < count; i++)
        {
            BitConverter.TryWriteBytes(b.AsSpan((int)(i * 8)), f(i));
        }
        return b;
    }

    private static long LongAt(byte[] b, long i) => BitConverter.ToInt64(b, (int)(i * 8));

    [Fact]
    public void ASharedPageCacheMappingIsWrittenThroughTheFileAndNeverMigrated()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.MigrateOnFirstTouch });
        using var fs = new PageCacheFileSystem(rig.Memory, _dir);
        long n = 3 * 512 + 100;
        using (FileHandle f = fs.Create("data"))
        {
            f.Write(0, Longs(n, i => i * 5));
            ulong a = rig.Space.Mmap(0, (ulong)n * 8, Prot.Read | Prot.Write, MapFlags.Shared, f.Inode);
            DoubleAndAdd(rig.Context, a, n);
            var back = new byte[n * 8];
            f.Read(0, back);
            for (long i = 0; i < n; i++)
            {
                Assert.Equal(2 * (i * 5) + i, LongAt(back, i));
            }
            rig.Space.Munmap(a, (ulong)n * 8);
        }
        Assert.Equal(0L, rig[GpuCounter.PagesMigratedIn]);
        Assert.True(rig[GpuCounter.RemoteMappedPages] > 0);
        rig.ExitSpace();
    }

    [Fact]
    public void APrivateFileMappingGetsCopyOnWriteCopiesAndLeavesTheFileAlone()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.RemoteMap });
        using var fs = new PageCacheFileSystem(rig.Memory, _dir);
        long n = 1000;
        using (FileHandle f = fs.Create("data"))
        {
            f.Write(0, Longs(n, i => i + 1));
            ulong a = rig.Space.Mmap(0, (ulong)n * 8, Prot.Read | Prot.Write, MapFlags.Private, f.Inode);
            DoubleAndAdd(rig.Context, a, n);
            for (long i = 0; i < n; i++)
            {
                Assert.Equal(2 * (i + 1) + i, rig.Cpu.Read<long>(a + (ulong)i * 8));
            }
            var back = new byte[n * 8];
            f.Read(0, back);
            Assert.Equal(Longs(n, i => i + 1), back);
            rig.Space.Munmap(a, (ulong)n * 8);
        }
        rig.ExitSpace();
    }

    [Fact]
    public void SharedAnonymousMemoryIsSharedWithTheCpuAndNeverMigrated()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.MigrateOnFirstTouch });
        long n = 2048;
        ulong a = rig.Space.Mmap(0, (ulong)n * 8, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Anonymous);
        rig.FillLongs(a, n, i => -i);
        DoubleAndAdd(rig.Context, a, n);
        for (long i = 0; i < n; i++)
        {
            Assert.Equal(-2 * i + i, rig.Cpu.Read<long>(a + (ulong)i * 8));
        }
        Assert.Equal(0L, rig[GpuCounter.PagesMigratedIn]);
    }

    private (DaxNamespace Ns, DaxFileSystem Fs) Dax(PhysicalMemory mem, ulong bytes)
    {
        var ns = new DaxNamespace(mem, Path.Combine(_dir, "pmem0"), bytes);
        return (ns, DaxFileSystem.Format(ns));
    }

    [Fact]
    public void ADaxMappingIsMappedInPlaceWithTwoMibEntriesAndTheKernelWritesTheFile()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.MigrateOnFirstTouch });
        (DaxNamespace ns, DaxFileSystem fs) = Dax(rig.Memory, 64 * Mib);
        long n = (long)(2 * Pmd / 8);
        using (FileHandle f = fs.Create("graph"))
        {
            f.Truncate(4 * Pmd);
            f.Write(0, Longs(n, i => 7 * i));
            ulong a = rig.Space.Mmap(Base, 4 * Pmd, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Fixed, f.Inode);
            DoubleAndAdd(rig.Context, a, n);
            Assert.Equal(Page.PmdOrder, rig.CpuOrder(a));
            Assert.True(rig[GpuCounter.Map2M] >= 2, $"expected 2 MiB GPU entries for PMD-mapped DAX, got {rig[GpuCounter.Map2M]}");
            Assert.True(rig.Context.PageTable.Entries2M >= 2);
            var back = new byte[n * 8];
            f.Read(0, back);
            for (long i = 0; i < n; i += 97)
            {
                Assert.Equal(2 * (7 * i) + i, LongAt(back, i));
            }
            rig.Space.Munmap(a, 4 * Pmd);
        }
        Assert.Equal(0L, rig[GpuCounter.PagesMigratedIn]);
        Assert.Equal(0L, rig.Context.PageTable.Entries2M + rig.Context.PageTable.Entries64K + rig.Context.PageTable.Entries4K);
        rig.ExitSpace();
        fs.Dispose();
        ns.Dispose();
    }

    [Fact]
    public void AOneGibDaxMappingIsMappedWithTwoMibEntriesCutFromThePud()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.MigrateOnFirstTouch });
        (DaxNamespace ns, DaxFileSystem fs) = Dax(rig.Memory, 3UL << 30);
        using (FileHandle f = fs.Create("big"))
        {
            f.Truncate(Page.PudSize);
            ulong a = rig.Space.Mmap(Base, Page.PudSize, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Fixed, f.Inode);
            // One thread per 2 MiB block of the first 8 blocks and of the last one.
            rig.Context.Launch(9, 1, t =>
            {
                ulong block = t.BlockIdx < 8 ? (ulong)t.BlockIdx : 511;
                ulong p = a + block * Pmd + 8 * (ulong)t.BlockIdx;
                t.Store(p, 1000L + t.BlockIdx);
            });
            Assert.Equal(Page.PudOrder, rig.CpuOrder(a));
            Assert.Equal(9L, rig.Context.PageTable.Entries2M);
            var buf = new byte[8];
            for (int b = 0; b < 9; b++)
            {
                ulong block = b < 8 ? (ulong)b : 511;
                f.Read(block * Pmd + 8 * (ulong)b, buf);
                Assert.Equal(1000L + b, BitConverter.ToInt64(buf));
            }
            rig.Space.Munmap(a, Page.PudSize);
        }
        Assert.Equal(0L, rig[GpuCounter.PagesMigratedIn]);
        rig.ExitSpace();
        fs.Dispose();
        ns.Dispose();
    }

    [Fact]
    public void TruncatingADaxFileUnderTheGpuMakesItsNextAccessBeyondTheEndFailWithEfault()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { CheckStaleTranslations = true });
        (DaxNamespace ns, DaxFileSystem fs) = Dax(rig.Memory, 64 * Mib);
        using (FileHandle f = fs.Create("t"))
        {
            f.Truncate(2 * Pmd);
            f.Write(Pmd + 64, Longs(1, _ => 77));
            ulong a = rig.Space.Mmap(Base, 2 * Pmd, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Fixed, f.Inode);
            long seen = 0;
            rig.Context.Launch(1, 1, t => seen = t.Load<long>(a + Pmd + 64));
            Assert.Equal(77L, seen);
            f.Truncate(Pmd); // truncate zaps every mapping of the cut part, the GPU's included
            Assert.True(rig[GpuCounter.Invalidations] > 0);
            var e = Assert.Throws<GpuLaunchException>(() => rig.Context.Launch(1, 1, t => t.Load<long>(a + Pmd + 64)));
            Assert.Equal(Errno.EFAULT, e.Errno);
            rig.Context.Launch(1, 1, t => t.Store(a + 8, 5L)); // the part that is left still works
            var buf = new byte[8];
            f.Read(8, buf);
            Assert.Equal(5L, BitConverter.ToInt64(buf));
            rig.Space.Munmap(a, 2 * Pmd);
        }
        rig.ExitSpace();
        fs.Dispose();
        ns.Dispose();
    }

    [Fact]
    public void AHugetlbfsMappingIsMappedInPlaceWithTwoMibEntries()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.MigrateOnFirstTouch });
        using var pool = new HugetlbPool(rig.Memory, Page.PmdOrder, 4);
        using var hfs = new HugetlbFs(pool);
        long n = (long)(3 * Pmd / 8);
        using (FileHandle h = hfs.Create("table"))
        {
            h.Truncate(4 * Pmd);
            ulong a = rig.Space.Mmap(Base, 4 * Pmd, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Fixed, h.Inode);
            rig.FillLongs(a, n, i => i ^ 0x55);
            DoubleAndAdd(rig.Context, a, n);
            for (long i = 0; i < n; i += 101)
            {
                Assert.Equal(2 * (i ^ 0x55) + i, rig.Cpu.Read<long>(a + (ulong)i * 8));
            }
            Assert.Equal(3L, rig.Context.PageTable.Entries2M);
            rig.Space.Munmap(a, 4 * Pmd);
        }
        Assert.Equal(0L, rig[GpuCounter.PagesMigratedIn]);
        rig.ExitSpace();
    }
}
