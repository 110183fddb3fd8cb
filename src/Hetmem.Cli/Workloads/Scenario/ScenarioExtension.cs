namespace Hetmem.Cli.Workloads.Scenario;

/// <summary>Registers the address-space scenarios: the <c>mm</c> demo section, the workloads of <c>hetmem run</c> and the stress scenarios.</summary>
internal sealed class ScenarioExtension : ICliExtension
{
    /// <inheritdoc/>
    public void Register(CliRegistries registries)
    {
        registries.DemoSections.Add(new AddressSpaceSection());
    }
}
