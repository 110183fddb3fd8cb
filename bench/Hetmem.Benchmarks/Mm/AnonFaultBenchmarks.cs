using BenchmarkDotNet.Attributes;
using Hetmem.Cli.Bench;

namespace Hetmem.Benchmarks.Mm;

/// <summary>
/// The first write to fresh anonymous memory, allocation and zeroing included, per 4 KiB page (DESIGN.md target
/// ≤ 600 ns; the host's MADV_POPULATE_WRITE is ≈ 1000 ns): through one <c>Cpu</c> store a page (TLB miss + write
/// fault) and through <c>madvise(MADV_POPULATE_WRITE)</c>. Each iteration starts from MADV_DONTNEED'd memory.
/// Budget: 0 B for the CPU-store path.
/// </summary>
[MemoryDiagnoser]
[InvocationCount(1)]
[WarmupCount(2)]
[IterationCount(15)]
public class AnonFaultBenchmarks
{
    private const int Pages = 4096;
    private AnonFaultFixture _fx = null!;

    [GlobalSetup]
    public void Setup() => _fx = new AnonFaultFixture(Pages);

    [GlobalCleanup]
    public void Cleanup() => _fx.Dispose();

    [IterationSetup]
    public void Fresh() => _fx.Drop();

    [Benchmark(OperationsPerInvoke = Pages)]
    public void CpuWrite() => _fx.CpuWrites();

    [Benchmark(OperationsPerInvoke = Pages)]
    public void PopulateWrite() => _fx.Populate();
}
