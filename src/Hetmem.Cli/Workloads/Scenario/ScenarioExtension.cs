namespace Hetmem.Cli.Workloads.Scenario;

/// <summary>
/// Registers the address-space scenarios: the <c>mm</c> and <c>mirror-race</c> demo sections, the workloads of
/// <c>hetmem run</c> (<c>anon-cow</c>, <c>dax-truncate</c>, <c>reclaim</c>, <c>mirror-race</c>) and the stress scenarios.
/// </summary>
internal sealed class ScenarioExtension : ICliExtension
{
    /// <inheritdoc/>
    public void Register(CliRegistries registries)
    {
        registries.DemoSections.Add(new AddressSpaceSection());
        registries.DemoSections.Add(new MirrorRaceWorkload(TimeSpan.FromSeconds(2)));
        registries.Workloads.Add(new AnonCowWorkload());
        registries.Workloads.Add(new DaxTruncateWorkload());
        registries.Workloads.Add(new ReclaimWorkload());
        registries.Workloads.Add(new MirrorRaceWorkload(TimeSpan.FromSeconds(3)));
        registries.Stress.Add(new MirrorRaceWorkload());
        registries.Stress.Add(new MirrorRaceWorkload(name: "mm-random", extraOps: true));
    }
}
