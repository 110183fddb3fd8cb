using Hetmem.Cli.Bench;
using Hetmem.Cli.Workloads;
using Hetmem.Physical;

namespace Hetmem.Cli;

/// <summary>
/// The built-in entries: the physical-memory and DAX-namespace demo sections, the physical stress run and the host
/// half of the benchmarks. Everything else (the address-space scenarios, the devices, the hmm-tests port with Hetmem's
/// own self-tests after it, the Hetmem half of the benchmarks) plugs in through <see cref="ICliExtension"/>.
/// </summary>
internal static class Builtins
{
    public static void Register(CliRegistries r)
    {
        r.DemoSections.Add(new PhysicalMemorySection());
        r.DemoSections.Add(new DaxNamespaceSection());
        r.Workloads.Add(new DemoWorkload(r.DemoSections));
        r.Stress.Add(new PhysicalStressWorkload());
        HostBenchmarks.Register(r.Bench);
        r.Bench.Add(BenchKeys.FrameMetadataBytes, _ => PhysicalMemory.FrameMetadataBytes, "bytes of metadata a frame");
    }
}
