namespace Hetmem.Tests.Fuzz;

/// <summary>
/// Shared helpers of the bad-input property tests (CsCheck). Every property runs on one thread (the worlds are
/// stateful) with a modest iteration count so the whole Fuzz folder stays within about a minute on two cores.
/// </summary>
/// <remarks>
/// Replaying a failure: CsCheck shrinks a failing input and prints its seed in the exception message
/// (<c>Set seed: "…" or -e CsCheck_Seed=… to reproduce</c>). Run the one test again with the environment variable
/// <c>CsCheck_Seed</c> set to that value (for example
/// <c>CsCheck_Seed=0N0XIzNsQ0O2 dotnet test tests/Hetmem.Tests --filter "FullyQualifiedName~Fuzz.MmModelFuzzTests"</c>),
/// or pass it as the <c>seed:</c> argument of <c>Sample</c> while debugging. <c>CsCheck_Iter</c> scales nothing here:
/// each property passes its own <c>iter</c>, multiplied by <see cref="Scale"/> (env <c>HETMEM_FUZZ_SCALE</c>, default 1)
/// for longer local runs.
/// </remarks>
internal static class FuzzSupport
{
    public const ulong P = 4096;

    /// <summary>Iteration multiplier from HETMEM_FUZZ_SCALE (default 1).</summary>
    public static int Scale { get; } = int.TryParse(Environment.GetEnvironmentVariable("HETMEM_FUZZ_SCALE"), out int s) && s > 0 ? s : 1;

    /// <summary>Iterations for a property: <paramref name="n"/> times <see cref="Scale"/>.</summary>
    public static long Iter(int n) => (long)n * Scale;

    /// <summary>Runs <paramref name="call"/> and returns the errno it threw (Ok when it returned).</summary>
    public static Errno ErrnoOf(Action call)
    {
        try
        {
            call();
            return Errno.Ok;
        }
        catch (MmException e)
        {
            return e.Errno;
        }
    }

    /// <summary>Runs <paramref name="call"/> and returns its errno and result (0 when it threw).</summary>
    public static (Errno Errno, ulong Result) ErrnoOf(Func<ulong> call)
    {
        try
        {
            return (Errno.Ok, call());
        }
        catch (MmException e)
        {
            return (e.Errno, 0);
        }
    }
}
