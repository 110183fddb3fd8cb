using Hetmem.Cli.Bench;
using Hetmem.Cli.Selftests;
using Hetmem.Cli.Workloads;
using Hetmem.Physical;

namespace Hetmem.Cli;

/// <summary>
/// The built-in entries: what runs before the mm core exists. Everything later (anon faults, dmirror, GPU, RDMA,
/// the hmm-tests port, Hetmem-side bench measurements) plugs in through <see cref="ICliExtension"/>.
/// </summary>
internal static class Builtins
{
    public static void Register(CliRegistries r)
    {
        r.DemoSections.Add(new PhysicalMemorySection());
        r.DemoSections.Add(new DaxNamespaceSection());
        r.Workloads.Add(new DemoWorkload(r.DemoSections));
        r.Stress.Add(new PhysicalStressWorkload());
        BuiltinSelftests.Register(r.Selftests);
        HostBenchmarks.Register(r.Bench);
        r.Bench.Add(BenchKeys.FrameMetadataBytes, _ => PhysicalMemory.FrameMetadataBytes, "bytes of metadata a frame");
    }
}
