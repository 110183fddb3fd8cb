using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using Hetmem.Cli.Commands;

namespace Hetmem.Cli;

/// <summary>Entry point of the <c>hetmem</c> command; builds the command tree.</summary>
public static class Program
{
    /// <summary>Runs <c>hetmem</c> on the console with the default registries.</summary>
    public static Task<int> Main(string[] args) => RunAsync(args, CliIo.ForConsole(), CliRegistries.Default);

    /// <summary>
    /// Parses and runs <paramref name="args"/>. A parse error prints one line on stderr and returns 2; otherwise the
    /// command's exit code (0 ok, 1 failed checks, 3 error).
    /// </summary>
    public static async Task<int> RunAsync(string[] args, CliIo io, CliRegistries registries)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(io);
        RootCommand root = BuildRootCommand(new CliApp(registries, io));
        ParseResult parse = root.Parse(args);
        if (parse.Action is ParseErrorAction)
        {
            string errors = string.Join("; ", parse.Errors.Select(e => e.Message).Distinct());
            io.Err.WriteLine($"hetmem: {errors} (see 'hetmem --help')");
            return ExitCodes.Usage;
        }
        var config = new InvocationConfiguration
        {
            Output = io.Out,
            Error = io.Err,
            EnableDefaultExceptionHandler = false,
        };
        return await parse.InvokeAsync(config).ConfigureAwait(false);
    }

    /// <summary>Builds <c>hetmem</c> with its subcommands <c>demo</c>, <c>run</c>, <c>selftest</c>, <c>bench</c> and <c>stress</c>.</summary>
    public static RootCommand BuildRootCommand(CliApp app)
    {
        ArgumentNullException.ThrowIfNull(app);
        var root = new RootCommand(
            "hetmem: Linux's Heterogeneous Memory Management (HMM) in user space. Address spaces over real host memory, " +
            "MMU notifiers, hmm_range_fault, device memory and migration, with in-tree devices that mirror them.");
        foreach (Option o in app.Options.All)
        {
            root.Options.Add(o);
        }
        var examples = new Dictionary<Command, string[]>
        {
            [root] =
            [
                "hetmem demo                                         run the main job on the embedded default set-up",
                "hetmem demo --trace t.json --plot p.png             with a Perfetto trace and a plot",
                "hetmem run dax-truncate --dax-dir /mnt/pmem --json  one workload, files kept, JSON out",
                "hetmem selftest --filter 'hmm.*'                    the kernel's hmm-tests, TAP out",
                "hetmem bench --quick                                Hetmem next to the host kernel, in under a minute",
                "hetmem stress --duration 30 --seed 7                seeded multi-threaded invariant run",
            ],
        };
        foreach ((Command cmd, string[] ex) in new[]
        {
            DemoCommand.Create(app),
            RunCommand.Create(app),
            SelftestCommand.Create(app),
            BenchCommand.Create(app),
            StressCommand.Create(app),
        })
        {
            root.Subcommands.Add(cmd);
            examples[cmd] = ex;
        }
        HelpOption help = root.Options.OfType<HelpOption>().Single();
        var helpWithExamples = new HelpWithExamplesAction((HelpAction)help.Action!, examples);
        help.Action = helpWithExamples;
        root.SetAction(helpWithExamples.Invoke); // `hetmem` alone shows the help
        return root;
    }

    /// <summary>The default help, followed by an "Examples:" section for the command.</summary>
    private sealed class HelpWithExamplesAction(HelpAction inner, IReadOnlyDictionary<Command, string[]> examples) : SynchronousCommandLineAction
    {
        public override bool ClearsParseErrors => true;

        public override int Invoke(ParseResult parseResult)
        {
            int rc = inner.Invoke(parseResult);
            if (examples.TryGetValue(parseResult.CommandResult.Command, out string[]? lines))
            {
                TextWriter output = parseResult.InvocationConfiguration.Output;
                output.WriteLine("Examples:");
                foreach (string l in lines)
                {
                    output.WriteLine("  " + l);
                }
                output.WriteLine();
            }
            return rc;
        }
    }
}
