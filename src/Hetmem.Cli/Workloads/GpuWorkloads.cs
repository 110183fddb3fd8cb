using Hetmem.Devices.Gpu.Workloads;

namespace Hetmem.Cli.Workloads;

/// <summary>Registers the GPU workloads (gpu-stream, gpu-gups, gpu-bfs-dax) with <c>hetmem run</c>; see docs/gpu.md.</summary>
internal sealed class GpuWorkloadsExtension : ICliExtension
{
    public void Register(CliRegistries r)
    {
        r.Workloads.Add(new DelegateWorkload("gpu-stream", "c = a + s·b over anonymous memory larger than VRAM",
            ctx => Report(ctx, "gpu-stream", GpuWorkloads.Stream(ctx.Memory, new GpuWorkloadOptions { Seed = ctx.Seed }))));
        r.Workloads.Add(new DelegateWorkload("gpu-gups", "random read-modify-write over a hugetlbfs table",
            ctx => Report(ctx, "gpu-gups", GpuWorkloads.Gups(ctx.Memory, new GpuWorkloadOptions { Seed = ctx.Seed }))));
        r.Workloads.Add(new DelegateWorkload("gpu-bfs-dax", "BFS over a CSR graph in a DAX file rewritten by the CPU",
            ctx => Report(ctx, "gpu-bfs-dax", GpuBfsDax.Run(ctx.Memory, new GpuWorkloadOptions { Seed = ctx.Seed }, ctx.DaxDirectory))));
    }

    private static WorkloadResult Report(WorkloadContext ctx, string name, GpuWorkloadReport g)
    {
        var result = new WorkloadResult(name);
        result.Check("the GPU result equals the CPU reference", g.Verified, g.Detail);
        result.Check("every frame came back after teardown", g.FramesBalanced);
        foreach (var kv in g.JsonSummary())
        {
            result.Counter(kv.Key, kv.Value is bool b ? (b ? 1 : 0) : Convert.ToDouble(kv.Value));
        }
        ResultTable t = result.Table($"{name} counters", "counter", "value");
        foreach (var kv in g.Counters.Where(kv => kv.Value != 0))
        {
            t.AddRow(kv.Key, kv.Value.ToString());
        }
        return result;
    }
}
