using BenchmarkDotNet.Attributes;
using Hetmem.Cli.Bench;

namespace Hetmem.Benchmarks.Hmm;

/// <summary>
/// <c>MigrateVma</c> of 64 MiB of anonymous memory to device-private memory and back (2 MiB chunks, vectorised copy
/// of contiguous runs), per 4 KiB page moved; <c>hetmem bench</c> reports the same as GB/s (DESIGN.md target
/// ≥ 8 GB/s). Budget: 0 B (one MigrateVma and its arrays are reused for every chunk).
/// </summary>
[MemoryDiagnoser]
[InvocationCount(1)]
[WarmupCount(1)]
[IterationCount(10)]
public class MigrateBenchmarks
{
    private const ulong Bytes = 64UL << 20;
    private const int Pages = (int)(Bytes >> 12);
    private MigrateFixture _fx = null!;

    [GlobalSetup]
    public void Setup() => _fx = new MigrateFixture(Bytes);

    [GlobalCleanup]
    public void Cleanup() => _fx.Dispose();

    [IterationCleanup(Target = nameof(MigrateToDevice))]
    public void Back() => _fx.ToRam();

    [IterationSetup(Target = nameof(MigrateToRam))]
    public void There() => _fx.ToDevice();

    [Benchmark(OperationsPerInvoke = Pages)]
    public long MigrateToDevice() => _fx.ToDevice();

    [Benchmark(OperationsPerInvoke = Pages)]
    public long MigrateToRam() => _fx.ToRam();
}
