using Hetmem.Physical;

namespace Hetmem.Cli;

/// <summary>The options every <c>hetmem</c> command shares, as parsed.</summary>
public sealed record CliSettings
{
    /// <summary>The command being run (<c>demo</c>, <c>run</c>, …).</summary>
    public string Command { get; init; } = "";

    /// <summary><c>--json</c>: print one JSON object on stdout and nothing else there.</summary>
    public bool Json { get; init; }

    /// <summary><c>--trace FILE</c>: record a Chrome/Perfetto trace to this file.</summary>
    public string? TracePath { get; init; }

    /// <summary><c>--plot FILE.png</c>: render the timeline of the run to this PNG.</summary>
    public string? PlotPath { get; init; }

    /// <summary><c>--ram SIZE</c>: bytes of simulated RAM (a multiple of 2 MiB).</summary>
    public ulong RamBytes { get; init; } = PhysicalMemory.DefaultRamBytes;

    /// <summary><c>--dax-dir DIR</c>: where DAX namespace files go (kept); null means a temporary directory (deleted).</summary>
    public string? DaxDir { get; init; }

    /// <summary><c>--seed N</c>: the seed of every random choice.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>True when <c>--seed</c> was given (stress runs otherwise pick and print a random seed).</summary>
    public bool SeedGiven { get; init; }

    /// <summary><c>--verbose</c>: log progress and stack traces to stderr.</summary>
    public bool Verbose { get; init; }
}

/// <summary>Process exit codes of <c>hetmem</c>.</summary>
public static class ExitCodes
{
    /// <summary>Everything passed.</summary>
    public const int Ok = 0;

    /// <summary>A check, self-test or stress invariant failed.</summary>
    public const int Failed = 1;

    /// <summary>The command line was wrong (unknown option, bad size, unknown workload).</summary>
    public const int Usage = 2;

    /// <summary>An error stopped the command (an <see cref="MmException"/>, an I/O error).</summary>
    public const int Error = 3;
}
