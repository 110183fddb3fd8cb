using Hetmem.Cli.Rendering;
using Hetmem.Cli.Workloads;

namespace Hetmem.Cli.Commands;

/// <summary>Resolves a workload by name and runs it with rendering; shared by <c>demo</c> and <c>run</c>.</summary>
internal static class WorkloadRunner
{
    /// <summary>Finds <paramref name="name"/> among the workloads, then the demo sections, then the stress scenarios.</summary>
    public static bool TryResolve(CliRegistries r, string name, out IWorkload workload) =>
        r.Workloads.TryGet(name, out workload) || r.DemoSections.TryGet(name, out workload) || r.Stress.TryGet(name, out workload);

    /// <summary>All runnable names, without duplicates, in registry order.</summary>
    public static IReadOnlyList<string> Names(CliRegistries r) =>
        [.. r.Workloads.Names.Concat(r.DemoSections.Names).Concat(r.Stress.Names).Distinct(StringComparer.OrdinalIgnoreCase)];

    public static int Run(CliApp app, CommandSession session, string name)
    {
        if (!TryResolve(app.Registries, name, out IWorkload workload))
        {
            throw new UsageException($"unknown workload '{name}' (available: {string.Join(", ", Names(app.Registries))})");
        }
        session.Log($"running workload {workload.Name} (seed {session.Settings.Seed}, ram {SizeParser.Format(session.Settings.RamBytes)})");
        WorkloadContext ctx = session.NewContext();
        IEnumerable<string> plan = workload is DemoWorkload ? app.Registries.DemoSections.Names : [workload.Name];
        WorkloadResult result = SpectreWorkloadProgress.Run(app.Io, session.Settings, plan, progress =>
        {
            ctx.Progress = progress;
            return DemoWorkload.RunSection(workload, ctx, catchErrors: false);
        });
        IReadOnlyList<string> notes = session.Finish();
        ResultRenderer.Render(app.Io, session.Settings, [result], workload.Name, notes);
        return result.Passed ? ExitCodes.Ok : ExitCodes.Failed;
    }
}
