using BenchmarkDotNet.Attributes;
using Hetmem.Cli.Bench;

namespace Hetmem.Benchmarks.Hmm;

/// <summary>
/// <c>HmmRange.Fault</c> over resident memory, the way a driver calls it (read-begin, mmap read lock, fault), per
/// 4 KiB page (DESIGN.md target ≤ 10 ns; the host's MADV_POPULATE_READ is ≈ 200 ns): a 256 MiB range of 4 KiB pages
/// (the RAM arena is virtual, only touched pages cost), and a DAX file of the same size mapped by 2 MiB PMD entries.
/// Budget: 0 B.
/// </summary>
[MemoryDiagnoser]
public class RangeSnapshotBenchmarks
{
    private const ulong Bytes = 256UL << 20;
    private const int Pages = (int)(Bytes >> 12);
    private ResidentRangeFixture _anon = null!;
    private DaxPmdFixture _dax = null!;

    [GlobalSetup(Target = nameof(AnonSnapshot))]
    public void SetupAnon() => _anon = new ResidentRangeFixture(Pages);

    [GlobalCleanup(Target = nameof(AnonSnapshot))]
    public void CleanupAnon() => _anon.Dispose();

    [GlobalSetup(Target = nameof(DaxPmdSnapshot))]
    public void SetupDax() => _dax = new DaxPmdFixture(Bytes);

    [GlobalCleanup(Target = nameof(DaxPmdSnapshot))]
    public void CleanupDax() => _dax.Dispose();

    [Benchmark(OperationsPerInvoke = Pages)]
    public Errno AnonSnapshot() => _anon.Snapshot();

    [Benchmark(OperationsPerInvoke = Pages)]
    public Errno DaxPmdSnapshot() => _dax.Snapshot();
}
