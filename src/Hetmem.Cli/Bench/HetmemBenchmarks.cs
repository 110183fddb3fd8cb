using Hetmem.Physical;

namespace Hetmem.Cli.Bench;

/// <summary>
/// The Hetmem half of <c>hetmem bench</c>, on the same sizes as the host half (<see cref="BenchOptions.Pages"/> pages,
/// capped at a quarter of <c>--ram</c>): <c>snapshot_ns</c>, <c>anon_fault_ns</c>, <c>munmap_mirrored_ns</c>,
/// <c>mprotect_mirrored_ns</c>, <c>tlb_hit_ns</c>, plus table-only details (page walk, anonymous fault through CPU
/// stores, DAX PMD snapshot). Each measurement builds its machine from <see cref="HotPaths"/> fixtures.
/// </summary>
internal sealed class HetmemBenchmarks : ICliExtension
{
    /// <summary>Table-only: a lock-free page walk of one resident 4 KiB page, ns.</summary>
    public const string PageWalk = "page_walk_ns";

    /// <summary>Table-only: first write to fresh anonymous memory through one Cpu store a page, ns a page.</summary>
    public const string AnonFaultCpu = "anon_fault_cpu_ns";

    /// <summary>Table-only: <c>hmm_range_fault</c> snapshot of a DAX mapping made of PMD entries, ns a 4 KiB page.</summary>
    public const string DaxPmdSnapshot = "dax_pmd_snapshot_ns";

    /// <summary>Table-only: the <c>tlb_hit_ns</c> chain, best of many short runs (robust to a loaded machine), ns/read.</summary>
    public const string TlbHitBest = "tlb_hit_best_ns";

    /// <summary>Table-only: migration of the same range back from device-private memory to RAM, GB/s.</summary>
    public const string MigrateToRamGbps = "migrate_to_ram_gbps";

    /// <inheritdoc/>
    public void Register(CliRegistries registries)
    {
        BenchRegistry r = registries.Bench;
        r.Add(BenchKeys.Snapshot, SnapshotNs, "HmmRange.Fault over a resident anonymous range, ns/page");
        r.Add(BenchKeys.AnonFault, AnonFaultNs, "madvise(MADV_POPULATE_WRITE) of fresh anonymous memory, ns/page");
        r.Add(BenchKeys.MunmapMirrored, MunmapMirroredNs, "munmap of a range mirrored by two devices, ns/page");
        r.Add(BenchKeys.MprotectMirrored, MprotectMirroredNs, "mprotect(PROT_READ) of a range mirrored by two devices, ns/page");
        r.Add(BenchKeys.TlbHit, TlbHitNs, "Cpu.Read<long> through the software TLB (dependent loads, hits), ns/read");
        r.Add(TlbHitBest, TlbHitBestNs, "the tlb_hit_ns chain, best of 100 (300) runs of 2^18 reads, ns/read");
        r.Add(BenchKeys.MigrateGbps, o => MigrateGbps(o, toDevice: true), "MigrateVma of 256 MiB (64 MiB quick) to device-private memory, GB/s");
        r.Add(MigrateToRamGbps, o => MigrateGbps(o, toDevice: false), "MigrateVma of the same range back to RAM, GB/s");
        r.Add(PageWalk, PageWalkNs, "page-table walk of a resident page (QueryPte), ns/page");
        r.Add(AnonFaultCpu, AnonFaultCpuNs, "first Cpu store to fresh anonymous memory (fault + zero), ns/page");
        r.Add(DaxPmdSnapshot, DaxPmdSnapshotNs, "HmmRange.Fault over a DAX mapping of PMD entries, ns/page");
    }

    /// <summary>Pages a measurement touches: the host's size, at most a quarter of the machine.</summary>
    /// <exception cref="BenchUnavailableException">When <c>--ram</c> is too small for a meaningful run.</exception>
    public static int PagesFor(BenchOptions o)
    {
        ArgumentNullException.ThrowIfNull(o);
        long cap = (long)(o.Settings.RamBytes >> Page.Shift) / 4;
        int pages = (int)Math.Min(o.Pages, cap);
        if (pages < 256)
        {
            throw new BenchUnavailableException($"--ram {SizeParser.Format(o.Settings.RamBytes)} is too small (needs 4M or more)");
        }
        return pages;
    }

    public static double SnapshotNs(BenchOptions o)
    {
        int pages = PagesFor(o);
        using var fx = new ResidentRangeFixture(pages, o.Settings.RamBytes);
        return o.Median(() => BenchOptions.NsPer(pages, () => Expect(fx.Snapshot(), "hmm_range_fault")));
    }

    public static double AnonFaultNs(BenchOptions o)
    {
        int pages = PagesFor(o);
        using var fx = new AnonFaultFixture(pages, o.Settings.RamBytes);
        return o.Median(() =>
        {
            fx.Drop();
            return BenchOptions.NsPer(pages, fx.Populate);
        });
    }

    public static double AnonFaultCpuNs(BenchOptions o)
    {
        int pages = PagesFor(o);
        using var fx = new AnonFaultFixture(pages, o.Settings.RamBytes);
        return o.Median(() =>
        {
            fx.Drop();
            return BenchOptions.NsPer(pages, fx.CpuWrites);
        });
    }

    public static double MunmapMirroredNs(BenchOptions o)
    {
        int pages = PagesFor(o);
        using var fx = new MirroredRangeFixture(pages, devices: 2, o.Settings.RamBytes);
        return o.Median(() =>
        {
            fx.Map();
            return BenchOptions.NsPer(pages, fx.Unmap);
        });
    }

    public static double MprotectMirroredNs(BenchOptions o)
    {
        int pages = PagesFor(o);
        using var fx = new MirroredRangeFixture(pages, devices: 2, o.Settings.RamBytes);
        fx.Map();
        return o.Median(() =>
        {
            fx.Unprotect();
            fx.MirrorAll();
            return BenchOptions.NsPer(pages, fx.Protect);
        });
    }

    public static double TlbHitNs(BenchOptions o)
    {
        int reads = o.Quick ? 1 << 22 : 1 << 24;
        using var fx = new TlbHitFixture(o.Seed);
        long sink = 0;
        double ns = o.Median(() => BenchOptions.NsPer(reads, () => sink += fx.Chase(reads)));
        GC.KeepAlive(sink);
        return ns;
    }

    public static double TlbHitBestNs(BenchOptions o)
    {
        ArgumentNullException.ThrowIfNull(o);
        const int Reads = 1 << 18;
        using var fx = new TlbHitFixture(o.Seed);
        long sink = 0;
        double ns = o.Best(() => BenchOptions.NsPer(Reads, () => sink += fx.Chase(Reads)), o.Quick ? 100 : 300);
        GC.KeepAlive(sink);
        return ns;
    }

    public static double PageWalkNs(BenchOptions o)
    {
        int pages = PagesFor(o);
        using var fx = new ResidentRangeFixture(pages, o.Settings.RamBytes);
        ulong sink = 0;
        double ns = o.Median(() => BenchOptions.NsPer(pages, () => sink ^= fx.PageWalk()));
        GC.KeepAlive(sink);
        return ns;
    }

    public static double DaxPmdSnapshotNs(BenchOptions o)
    {
        ulong bytes = Page.AlignUp((ulong)o.Pages << Page.Shift, Page.PmdSize);
        using var fx = new DaxPmdFixture(bytes);
        if (fx.PmdEntries == 0)
        {
            throw new BenchUnavailableException("the DAX file was not mapped with PMD entries");
        }
        return o.Median(() => BenchOptions.NsPer(fx.Pages, () => Expect(fx.Snapshot(), "hmm_range_fault")));
    }

    /// <summary>
    /// Bandwidth of migrating 256 MiB (64 MiB with --quick) of anonymous memory to device-private memory
    /// (<paramref name="toDevice"/>) or back, median of the round trips; the machine is sized for the range, not by --ram.
    /// </summary>
    public static double MigrateGbps(BenchOptions o, bool toDevice)
    {
        ArgumentNullException.ThrowIfNull(o);
        ulong bytes = o.Quick ? 64UL << 20 : 256UL << 20;
        using var fx = new MigrateFixture(bytes);
        double result = o.Median(() =>
        {
            long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            long there = fx.ToDevice();
            long t1 = System.Diagnostics.Stopwatch.GetTimestamp();
            long back = fx.ToRam();
            long t2 = System.Diagnostics.Stopwatch.GetTimestamp();
            long pages = (long)(bytes >> Page.Shift);
            if (there != pages || back != pages)
            {
                throw new InvalidOperationException($"migrated {there} pages to the device and {back} back, expected {pages}");
            }
            double seconds = System.Diagnostics.Stopwatch.GetElapsedTime(toDevice ? t0 : t1, toDevice ? t1 : t2).TotalSeconds;
            return bytes / seconds / 1e9;
        });
        if (!fx.DataIntact())
        {
            throw new InvalidOperationException("data changed in the migration round trips");
        }
        return result;
    }

    private static void Expect(Errno e, string what)
    {
        if (e != Errno.Ok)
        {
            throw new MmException(e, $"{what} failed during the measurement");
        }
    }
}
