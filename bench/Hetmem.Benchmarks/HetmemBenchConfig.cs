using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Jobs;

namespace Hetmem.Benchmarks;

/// <summary>
/// The Release configuration of every Hetmem benchmark: workstation, non-concurrent GC and no tiered PGO, so that
/// allocation numbers from the memory diagnoser are deterministic (allocation, not time, is what CI gates).
/// </summary>
public static class HetmemBenchConfig
{
    public static IConfig Create() =>
        DefaultConfig.Instance
            .AddJob(Job.Default
                .WithGcServer(false)
                .WithGcConcurrent(false)
                .WithEnvironmentVariable("DOTNET_TieredPGO", "0")
                .AsDefault())
            .AddDiagnoser(MemoryDiagnoser.Default);
}
