using BenchmarkDotNet.Attributes;
using Hetmem.Cli.Bench;

namespace Hetmem.Benchmarks.Mm;

/// <summary>
/// A lock-free 4-level page walk of a resident 4 KiB page (kernel: a hardware walk / follow_page), per page.
/// Budget: 0 B.
/// </summary>
[MemoryDiagnoser]
public class PageWalkBenchmarks
{
    private const int Pages = 4096;
    private ResidentRangeFixture _fx = null!;

    [GlobalSetup]
    public void Setup() => _fx = new ResidentRangeFixture(Pages);

    [GlobalCleanup]
    public void Cleanup() => _fx.Dispose();

    [Benchmark(OperationsPerInvoke = Pages)]
    public ulong Walk() => _fx.PageWalk();
}
