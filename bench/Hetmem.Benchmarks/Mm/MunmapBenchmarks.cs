using BenchmarkDotNet.Attributes;
using Hetmem.Cli.Bench;

namespace Hetmem.Benchmarks.Mm;

/// <summary>
/// munmap and mprotect of a populated anonymous range that two devices mirror (two interval notifiers, every page
/// programmed in both device page tables), per 4 KiB page (DESIGN.md target for munmap ≤ 150 ns; the host's munmap
/// without mirrors is ≈ 120 ns). Each iteration maps, populates and mirrors the range again.
/// </summary>
[MemoryDiagnoser]
[InvocationCount(1)]
[WarmupCount(2)]
[IterationCount(15)]
public class MunmapBenchmarks
{
    private const int Pages = 4096;
    private MirroredRangeFixture _fx = null!;

    [GlobalSetup]
    public void Setup() => _fx = new MirroredRangeFixture(Pages);

    [GlobalCleanup]
    public void Cleanup() => _fx.Dispose();

    [IterationSetup(Target = nameof(MunmapMirrored))]
    public void MapForUnmap() => _fx.Map();

    [IterationSetup(Target = nameof(MprotectMirrored))]
    public void MapForProtect() => _fx.Map();

    [IterationCleanup(Target = nameof(MprotectMirrored))]
    public void UnmapAfterProtect() => _fx.Unmap();

    [Benchmark(OperationsPerInvoke = Pages)]
    public void MunmapMirrored() => _fx.Unmap();

    [Benchmark(OperationsPerInvoke = Pages)]
    public void MprotectMirrored() => _fx.Protect();
}
