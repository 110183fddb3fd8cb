using System.Reflection;
using Hetmem.Cli.Bench;
using Hetmem.Cli.Selftests;
using Hetmem.Cli.Workloads;

namespace Hetmem.Cli;

/// <summary>
/// Everything the <c>hetmem</c> commands resolve by name: workloads (<c>run</c>), the sections of <c>demo</c>, stress
/// scenarios (<c>stress</c>), self-tests (<c>selftest</c>) and benchmark measurements (<c>bench</c>).
/// </summary>
/// <remarks>
/// <see cref="Default"/> holds the built-ins plus every <see cref="ICliExtension"/> in this assembly, so a new
/// workload, self-test or measurement plugs in by adding one class, without editing a shared list. Tests build
/// their own empty instance with <c>new CliRegistries()</c>.
/// </remarks>
public sealed class CliRegistries
{
    private static readonly Lazy<CliRegistries> s_default = new(CreateDefault, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Workloads of <c>hetmem run NAME</c> (includes <c>demo</c> and every demo section).</summary>
    public WorkloadRegistry Workloads { get; } = new();

    /// <summary>The sections <c>hetmem demo</c> runs, in order.</summary>
    public WorkloadRegistry DemoSections { get; } = new();

    /// <summary>Scenarios of <c>hetmem stress</c>.</summary>
    public WorkloadRegistry Stress { get; } = new();

    /// <summary>Cases of <c>hetmem selftest</c>.</summary>
    public SelftestRegistry Selftests { get; } = new();

    /// <summary>Measurements of <c>hetmem bench</c>.</summary>
    public BenchRegistry Bench { get; } = new();

    /// <summary>The process-wide registries: built-ins plus discovered extensions (built on first use).</summary>
    public static CliRegistries Default => s_default.Value;

    /// <summary>Builds a registry set with the built-ins and every <see cref="ICliExtension"/> of this assembly.</summary>
    public static CliRegistries CreateDefault()
    {
        var r = new CliRegistries();
        Builtins.Register(r);
        foreach (ICliExtension ext in DiscoverExtensions(typeof(CliRegistries).Assembly))
        {
            ext.Register(r);
        }
        return r;
    }

    /// <summary>Instances of the concrete <see cref="ICliExtension"/> types of <paramref name="assembly"/>, ordered by full name.</summary>
    public static IReadOnlyList<ICliExtension> DiscoverExtensions(Assembly assembly) =>
        [.. assembly.GetTypes()
            .Where(t => typeof(ICliExtension).IsAssignableFrom(t) && t is { IsAbstract: false, IsInterface: false }
                && t.GetConstructor(Type.EmptyTypes) is not null)
            .OrderBy(t => t.FullName, StringComparer.Ordinal)
            .Select(t => (ICliExtension)Activator.CreateInstance(t)!)];
}

/// <summary>
/// A plug-in of the <c>hetmem</c> command: any public or internal class of Hetmem.Cli implementing it (with a
/// parameterless constructor) is found at start-up and asked to register its workloads, demo sections, stress
/// scenarios, self-tests and benchmark measurements.
/// </summary>
/// <example>
/// <code>
/// internal sealed class DmirrorExtension : ICliExtension
/// {
///     public void Register(CliRegistries r)
///     {
///         r.DemoSections.Add(new DmirrorSection());             // also runnable as `hetmem run dmirror`
///         r.Selftests.Add("hmm.anon_read", ctx => { ... });
///         r.Bench.Add(BenchKeys.Snapshot, o => MeasureSnapshotNs(o));
///     }
/// }
/// </code>
/// </example>
public interface ICliExtension
{
    /// <summary>Adds this extension's entries.</summary>
    void Register(CliRegistries registries);
}
