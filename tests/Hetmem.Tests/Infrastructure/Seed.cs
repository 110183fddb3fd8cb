using Xunit.Abstractions;

namespace Hetmem.Tests.Infrastructure;

/// <summary>Seeds for randomized and stress tests: HETMEM_SEED reproduces a run; the seed is always printed.</summary>
internal static class Seed
{
    /// <summary>Returns the seed from HETMEM_SEED, or a fresh one, and writes it to the test output and the console.</summary>
    public static int Get(ITestOutputHelper? output, string test)
    {
        string? env = Environment.GetEnvironmentVariable("HETMEM_SEED");
        int seed = env is not null && int.TryParse(env, out int s) ? s : Random.Shared.Next();
        string line = $"{test}: seed {seed} (reproduce with HETMEM_SEED={seed})";
        output?.WriteLine(line);
        Console.WriteLine(line);
        return seed;
    }
}
