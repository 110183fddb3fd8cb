namespace Hetmem.Tests.Reliability;

/// <summary>
/// Tests that turn on the process-wide fault-injection switch. They run one at a time; each also restricts injection
/// to its own <see cref="Hetmem.Physical.PhysicalMemory"/> (the options' Domain), so tests of other collections running
/// at the same time never see an injected failure.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class FaultInjectionCollection
{
    public const string Name = "Fault injection";
}
