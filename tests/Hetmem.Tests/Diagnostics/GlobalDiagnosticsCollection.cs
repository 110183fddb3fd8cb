namespace Hetmem.Tests.Diagnostics;

/// <summary>
/// Tests that start and stop the process-wide trace recorder or flip the process-wide invariant and lock-validation
/// switches. They run one at a time, after the parallel collections, so they never disturb other tests.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class GlobalDiagnosticsCollection
{
    public const string Name = "Process-wide diagnostics state";
}
