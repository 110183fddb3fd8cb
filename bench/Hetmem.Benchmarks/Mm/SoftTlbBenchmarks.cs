using BenchmarkDotNet.Attributes;
using Hetmem.Cli.Bench;

namespace Hetmem.Benchmarks.Mm;

/// <summary>
/// <c>Cpu.Read&lt;long&gt;</c> hitting the software TLB: a chain of dependent loads through 16 KiB, per 8-byte read
/// (DESIGN.md target ≤ 3 ns; a native dependent load is ≈ 1 ns). Budget: 0 B.
/// </summary>
[MemoryDiagnoser]
public class SoftTlbBenchmarks
{
    private const int Reads = 4096;
    private TlbHitFixture _fx = null!;

    [GlobalSetup]
    public void Setup() => _fx = new TlbHitFixture();

    [GlobalCleanup]
    public void Cleanup() => _fx.Dispose();

    [Benchmark(OperationsPerInvoke = Reads)]
    public long Hit() => _fx.Chase(Reads);
}
