using System.CommandLine;
using System.CommandLine.Parsing;
using Hetmem.Physical;

namespace Hetmem.Cli;

/// <summary>The options every subcommand accepts (<c>--json</c>, <c>--trace</c>, <c>--plot</c>, <c>--ram</c>, <c>--dax-dir</c>, <c>--seed</c>, <c>--verbose</c>).</summary>
public sealed class CommonOptions
{
    /// <summary>Creates the option objects (one set per root command).</summary>
    public CommonOptions()
    {
        Trace.Validators.Add(r => ValidateOutputFile(r, "--trace"));
        Plot.Validators.Add(r => ValidateOutputFile(r, "--plot"));
    }

    /// <summary><c>--json</c>.</summary>
    public Option<bool> Json { get; } = new("--json")
    {
        Description = "Print one JSON object on stdout instead of tables (nothing else goes to stdout)",
        Recursive = true,
    };

    /// <summary><c>--trace FILE</c>.</summary>
    public Option<string?> Trace { get; } = new("--trace")
    {
        Description = "Record a Chrome trace-event JSON file of the run (open it in ui.perfetto.dev)",
        HelpName = "FILE",
        Recursive = true,
    };

    /// <summary><c>--plot FILE.png</c>.</summary>
    public Option<string?> Plot { get; } = new("--plot")
    {
        Description = "Render faults, migrations and resident pages per memory kind over time to a PNG",
        HelpName = "FILE.png",
        Recursive = true,
    };

    /// <summary><c>--ram SIZE</c>.</summary>
    public Option<ulong?> Ram { get; } = new("--ram")
    {
        Description = "Simulated RAM, a multiple of 2M between 4M and 1T (default 256M)",
        HelpName = "SIZE",
        Recursive = true,
        CustomParser = ParseRam,
    };

    /// <summary><c>--dax-dir DIR</c>.</summary>
    public Option<string?> DaxDir { get; } = new("--dax-dir")
    {
        Description = "Directory for DAX namespace files, kept after the run (default: a temporary directory)",
        HelpName = "DIR",
        Recursive = true,
    };

    /// <summary><c>--seed N</c>.</summary>
    public Option<int?> Seed { get; } = new("--seed")
    {
        Description = "Seed for every random choice (default 1; stress picks and prints one)",
        HelpName = "N",
        Recursive = true,
    };

    /// <summary><c>--verbose</c>.</summary>
    public Option<bool> Verbose { get; } = new("--verbose", "-v")
    {
        Description = "Log progress, and stack traces of errors, to stderr",
        Recursive = true,
    };

    /// <summary>All of them, in help order.</summary>
    public IEnumerable<Option> All => [Json, Trace, Plot, Ram, DaxDir, Seed, Verbose];

    /// <summary>Reads the settings of a parse.</summary>
    public CliSettings Read(ParseResult result, string command)
    {
        ArgumentNullException.ThrowIfNull(result);
        int? seed = result.GetValue(Seed);
        return new CliSettings
        {
            Command = command,
            Json = result.GetValue(Json),
            TracePath = NullIfEmpty(result.GetValue(Trace)),
            PlotPath = NullIfEmpty(result.GetValue(Plot)),
            RamBytes = result.GetValue(Ram) ?? PhysicalMemory.DefaultRamBytes,
            DaxDir = NullIfEmpty(result.GetValue(DaxDir)),
            Seed = seed ?? 1,
            SeedGiven = seed is not null,
            Verbose = result.GetValue(Verbose),
        };
    }

    private static string? NullIfEmpty(string? s) => string.IsNullOrWhiteSpace(s) ? null : s;

    private static ulong? ParseRam(ArgumentResult r)
    {
        string text = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
        if (!SizeParser.TryParse(text, out ulong bytes, out string? error))
        {
            r.AddError($"--ram: {error}");
            return null;
        }
        if (bytes < (4UL << 20) || bytes > (1UL << 40) || bytes % (2UL << 20) != 0)
        {
            r.AddError($"--ram: {text} must be a multiple of 2M between 4M and 1T");
            return null;
        }
        return bytes;
    }

    private static void ValidateOutputFile(OptionResult r, string name)
    {
        string? path = r.Tokens.Count > 0 ? r.Tokens[0].Value : null;
        if (string.IsNullOrWhiteSpace(path))
        {
            return;
        }
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null && !Directory.Exists(dir))
        {
            r.AddError($"{name}: directory '{dir}' does not exist");
        }
        else if (Directory.Exists(path))
        {
            r.AddError($"{name}: '{path}' is a directory, expected a file");
        }
    }
}
