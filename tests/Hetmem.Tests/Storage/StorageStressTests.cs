using Hetmem.Physical;
using Hetmem.Storage;
using Xunit.Abstractions;
using static Hetmem.Tests.Storage.StorageTest;

namespace Hetmem.Tests.Storage;

/// <summary>
/// Seeded races between faults (through a fake mm that maps and zaps), reads, writes, reclaim, writeback,
/// truncate and hole punch. They check that nothing deadlocks or throws unexpectedly and that frame and
/// reference counts balance afterwards. Reproduce a failure with HETMEM_SEED=&lt;printed seed&gt;.
/// </summary>
public sealed class StorageStressTests(ITestOutputHelper output)
{
    private const int Pages = 64;

    private int Seed()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("HETMEM_SEED"), out int s) ? s : Environment.TickCount;
        output.WriteLine($"seed {seed}");
        return seed;
    }

    [Fact]
    public void PageCacheFaultsReclaimWritesAndTruncatesRaceWithoutLeaks()
    {
        int seed = Seed();
        using var dir = new TempDir();
        using var memory = new PhysicalMemory(RamBytes);
        long usedAtStart = memory.UsedFrames;
        using (var fs = new PageCacheFileSystem(memory, dir.Path))
        {
            using FileHandle f = fs.Create("stress");
            var file = (PageCacheFile)f.Inode;
            f.Truncate(Pages * (ulong)Page.Size);
            Run(seed, file, memory, (rng, mm, m) =>
            {
                switch (rng.Next(8))
                {
                    case 0:
                        f.Write((ulong)rng.Next(Pages * Page.Size), new byte[rng.Next(1, 3 * Page.Size)]);
                        break;
                    case 1:
                        f.Read((ulong)rng.Next(Pages * Page.Size), new byte[rng.Next(1, 2 * Page.Size)]);
                        break;
                    case 2:
                        if (file.TryFindPage((ulong)rng.Next(Pages), out ulong pfn))
                        {
                            file.TryReclaimPage(pfn);
                        }
                        break;
                    case 3:
                        f.Truncate((ulong)rng.Next(Pages * Page.Size));
                        break;
                    case 4:
                        f.PunchHole((ulong)rng.Next(Pages * Page.Size), (ulong)rng.Next(1, 8 * Page.Size));
                        break;
                    case 5:
                        file.Writeback(0, ulong.MaxValue);
                        break;
                    default:
                        mm.Fault(file, m, m.Start + ((ulong)rng.Next(Pages) << Page.Shift), rng.Next(2) == 0, 0, out _, out _);
                        break;
                }
            });
        }
        Assert.Equal(usedAtStart, memory.UsedFrames);
    }

    [Fact]
    public void DaxFaultsWritesAndTruncatesRaceWithoutLeakingBlocksOrReferences()
    {
        int seed = Seed();
        using var dir = new TempDir(Directory.Exists("/dev/shm") ? "/dev/shm" : null);
        using var memory = new PhysicalMemory(RamBytes);
        using var ns = new DaxNamespace(memory, dir.File("pmem"), 16UL << 20);
        using var fs = DaxFileSystem.Format(ns);
        ulong free = fs.FreeBlocks;
        using (FileHandle f = fs.Create("stress"))
        {
            var file = (DaxFile)f.Inode;
            ulong size = 4 * (1UL << Page.PmdShift);
            f.Truncate(size);
            Run(seed, file, memory, (rng, mm, m) =>
            {
                switch (rng.Next(6))
                {
                    case 0:
                        f.Write((ulong)rng.Next((int)size), new byte[rng.Next(1, 3 * Page.Size)]);
                        break;
                    case 1:
                        f.Read((ulong)rng.Next((int)size), new byte[rng.Next(1, 2 * Page.Size)]);
                        break;
                    case 2:
                        f.Truncate((ulong)rng.Next((int)size));
                        break;
                    case 3:
                        f.PunchHole((ulong)rng.Next((int)size), (ulong)rng.Next(1, 600 * Page.Size));
                        break;
                    default:
                        ulong va = m.Start + ((ulong)rng.Next((int)(size >> Page.Shift)) << Page.Shift);
                        mm.Fault(file, m, va, rng.Next(2) == 0, rng.Next(2) == 0 ? Page.PmdOrder : 0, out _, out _);
                        break;
                }
            }, pages: (int)(size >> Page.Shift));
            f.Truncate(0);
        }
        fs.Unlink("stress");
        Assert.Equal(free, fs.FreeBlocks);
    }

    [Fact]
    public void HugetlbFaultsAndTruncatesRaceWithoutLosingPoolPages()
    {
        int seed = Seed();
        using var memory = new PhysicalMemory(RamBytes);
        long usedAtStart = memory.UsedFrames;
        using (var pool = new HugetlbPool(memory, Page.PmdOrder, 4))
        using (var fs = new HugetlbFs(pool))
        {
            using (FileHandle f = fs.Create("h"))
            {
                var file = (HugetlbFile)f.Inode;
                ulong huge = pool.PageBytes;
                f.Truncate(4 * huge);
                Run(seed, file, memory, (rng, mm, m) =>
                {
                    switch (rng.Next(5))
                    {
                        case 0:
                            f.Truncate((ulong)rng.Next(5) * huge);
                            break;
                        case 1:
                            f.PunchHole((ulong)rng.Next(4) * huge, huge);
                            break;
                        case 2:
                            file.ReserveRange(0, Math.Min(f.Size, 2 * huge) >> Page.Shift);
                            break;
                        default:
                            mm.Fault(file, m, m.Start + (ulong)rng.Next(4) * huge, true, Page.PmdOrder, out _, out _);
                            break;
                    }
                }, pages: 4 << Page.PmdOrder);
                f.Truncate(0);
            }
            fs.Unlink("h");
            Assert.Equal((4UL, 0UL), (pool.Free, pool.Reserved));
        }
        Assert.Equal(usedAtStart, memory.UsedFrames);
    }

    /// <summary>Four threads, each with its own fake address space mapping the whole file, run random operations for a while.</summary>
    private static void Run(int seed, Inode file, PhysicalMemory memory, Action<Random, FakeAddressSpace, FakeMapping> op, int pages = Pages)
    {
        const int threads = 4;
        var spaces = new FakeAddressSpace[threads];
        var maps = new FakeMapping[threads];
        for (int t = 0; t < threads; t++)
        {
            spaces[t] = new FakeAddressSpace(memory);
            maps[t] = spaces[t].Map(file, 1UL << 40, 0, (ulong)pages);
        }
        var errors = new List<Exception>();
        var workers = new Thread[threads];
        DateTime stop = DateTime.UtcNow.AddMilliseconds(700);
        for (int t = 0; t < threads; t++)
        {
            int id = t;
            workers[t] = new Thread(() =>
            {
                var rng = new Random(seed + id);
                try
                {
                    while (DateTime.UtcNow < stop)
                    {
                        op(rng, spaces[id], maps[id]);
                    }
                }
                catch (Exception ex)
                {
                    lock (errors)
                    {
                        errors.Add(ex);
                    }
                }
            });
            workers[t].Start();
        }
        foreach (Thread w in workers)
        {
            Assert.True(w.Join(TimeSpan.FromSeconds(60)), $"a worker hung (seed {seed}): deadlock?");
        }
        for (int t = 0; t < threads; t++)
        {
            spaces[t].Unmap(file, maps[t]);
            Assert.Equal(0, spaces[t].MappedEntries);
        }
        Assert.Empty(errors);
    }
}
