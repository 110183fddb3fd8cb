using System.CommandLine;
using System.CommandLine.Parsing;
using System.Diagnostics;
using System.Globalization;
using Hetmem.Cli.Rendering;
using Hetmem.Cli.Selftests;
using Hetmem.Cli.Stress;
using Hetmem.Cli.Workloads;
using Hetmem.Diagnostics;
using Spectre.Console;

namespace Hetmem.Cli.Commands;

/// <summary><c>hetmem stress</c>: seeded multi-threaded runs with invariant checking and lock-order validation on.</summary>
internal static class StressCommand
{
    public static (Command Command, string[] Examples) Create(CliApp app)
    {
        var duration = new Option<double>("--seconds", "--duration")
        {
            Description = "Seconds each scenario runs (--duration is the old name)",
            HelpName = "SECONDS",
            DefaultValueFactory = _ => 5,
        };
        duration.Validators.Add(r =>
        {
            if (!Converted(r, out double d))
            {
                return;
            }
            if (!(d > 0 && d <= 86400))
            {
                r.AddError("--seconds must be between 0 and 86400 seconds");
            }
        });
        var failRate = new Option<double>("--fail-rate")
        {
            Description = "Probability (0..1) that a frame, page-table or device-memory allocation fails (fault injection; failures are counted, not violations)",
            HelpName = "P",
        };
        failRate.Validators.Add(r =>
        {
            if (!Converted(r, out double p))
            {
                return;
            }
            if (!(p >= 0 && p <= 1))
            {
                r.AddError("--fail-rate must be between 0 and 1");
            }
        });
        var threads = new Option<int?>("--threads")
        {
            Description = "Threads per scenario (default: the number of cores, at least 2)",
            HelpName = "N",
        };
        threads.Validators.Add(r =>
        {
            if (Converted(r, out int? n) && n is { } v && (v < 1 || v > 1024))
            {
                r.AddError("--threads must be between 1 and 1024");
            }
        });
        var filter = new Option<string?>("--filter")
        {
            Description = "Run only scenarios whose name contains NAME (or matches a glob; 'all' runs every scenario). Default: " + OracleStressWorkload.ScenarioName,
            HelpName = "NAME",
        };
        var cmd = new Command("stress",
            "Run the oracle-checked stress (scenario '" + OracleStressWorkload.ScenarioName + "', the default) or the other stress scenarios (" +
            string.Join(", ", app.Registries.Stress.Names) + ") on several threads with invariant checks and lock-order validation on. " +
            "Prints its seed; reproduce a failure with --seed (or HETMEM_SEED).");
        cmd.Options.Add(duration);
        cmd.Options.Add(threads);
        cmd.Options.Add(filter);
        cmd.Options.Add(failRate);
        cmd.SetAction((parse, ct) => Task.FromResult(app.Execute(parse, "stress", ct,
            s => Run(app, s, TimeSpan.FromSeconds(parse.GetValue(duration)), parse.GetValue(threads), parse.GetValue(filter), parse.GetValue(failRate)),
            settings => settings.SeedGiven ? settings : settings with { Seed = SeedFromEnvironment() ?? Random.Shared.Next(1, int.MaxValue), SeedGiven = true })));
        return (cmd,
        [
            "hetmem stress",
            "hetmem stress --seconds 20 --json",
            "hetmem stress --seconds 600 --threads 8 --ram 128M",
            "hetmem stress --seed 12345 --threads 1 --seconds 5",
            "hetmem stress --fail-rate 0.001 --seconds 30",
            "hetmem stress --filter all --seconds 10",
            "hetmem stress --seed 12345 --filter mirror-race --trace stress.json",
            "HETMEM_SEED=7 hetmem stress --filter mm-random --duration 60",
        ]);
    }

    /// <summary>
    /// The option's value, or false when its token did not convert: the parser reports that error on its own, and
    /// reading the value in a validator would throw instead.
    /// </summary>
    private static bool Converted<T>(OptionResult r, out T value)
    {
        value = default!;
        if (r.Errors.Any() || r.Tokens.Any(t => !TokenConverts<T>(t.Value)))
        {
            return false;
        }
        value = r.GetValueOrDefault<T>();
        return true;
    }

    private static bool TokenConverts<T>(string token) =>
        typeof(T) == typeof(double)
            ? double.TryParse(token, NumberStyles.Float, CultureInfo.InvariantCulture, out _)
            : int.TryParse(token, NumberStyles.Integer, CultureInfo.InvariantCulture, out _);

    /// <summary>The seed in <c>HETMEM_SEED</c> (the tests' convention), when set and valid.</summary>
    private static int? SeedFromEnvironment() =>
        int.TryParse(Environment.GetEnvironmentVariable("HETMEM_SEED"), NumberStyles.Integer, CultureInfo.InvariantCulture, out int s) ? s : null;

    public static int Run(CliApp app, CommandSession session, TimeSpan duration, int? threads, string? filter, double failRate = 0)
    {
        int seed = session.Settings.Seed;
        app.Io.Err.WriteLine(string.Create(CultureInfo.InvariantCulture, $"hetmem stress: seed {seed} (reproduce with --seed {seed})"));
        // Without --filter the oracle runs; a registry without it (a trimmed-down host) runs every scenario it has.
        bool hasOracle = app.Registries.Stress.Names.Contains(OracleStressWorkload.ScenarioName);
        string effectiveFilter = string.IsNullOrEmpty(filter) ? (hasOracle ? OracleStressWorkload.ScenarioName : "*")
            : string.Equals(filter, "all", StringComparison.OrdinalIgnoreCase) ? "*" : filter;
        var scenarios = app.Registries.Stress.All.Where(w => SelftestRegistry.Matches(w.Name, effectiveFilter))
            .OrderBy(w => w is OracleStressWorkload ? 0 : 1).ToList();
        int threadCount = threads ?? Math.Max(2, Environment.ProcessorCount);
        string replay = ReplayCommand(session.Settings, duration, threadCount, failRate);
        foreach (OracleStressWorkload o in scenarios.OfType<OracleStressWorkload>())
        {
            o.FailRate = failRate;
            o.ReplayCommand = replay;
        }
        if (scenarios.Count == 0)
        {
            throw new UsageException($"no stress scenario matches '{filter}' (available: {string.Join(", ", app.Registries.Stress.Names)})");
        }
        bool invariants = Invariants.Enabled;
        bool lockdep = OrderedLock.ValidationEnabled;
        Invariants.Enabled = true;
        OrderedLock.ValidationEnabled = true;
        var results = new List<WorkloadResult>();
        long violationsBefore = Invariants.Violations;
        try
        {
            foreach (IWorkload w in scenarios)
            {
                session.Log($"stress: {w.Name} for {duration.TotalSeconds} s");
                WorkloadContext ctx = session.NewContext(duration, threads);
                WorkloadResult r = app.Io.IsTerminal && !session.Settings.Json
                    ? WithProgress(app, w, ctx, duration)
                    : DemoWorkload.RunSection(w, ctx);
                long v = Invariants.Violations - violationsBefore;
                r.Check("no invariant violation was reported", v == 0, string.Create(CultureInfo.InvariantCulture, $"{v} violations"));
                results.Add(r);
            }
        }
        finally
        {
            Invariants.Enabled = invariants;
            OrderedLock.ValidationEnabled = lockdep;
        }
        IReadOnlyList<string> notes = session.Finish();
        OracleStressResult? oracle = scenarios.OfType<OracleStressWorkload>().Select(o => o.LastResult).FirstOrDefault(x => x is not null);
        long invariantViolations = Invariants.Violations - violationsBefore;
        long violations = (oracle?.Violations ?? 0) + invariantViolations;
        var all = notes.Prepend(string.Create(CultureInfo.InvariantCulture, $"seed: {seed} (reproduce with --seed {seed})")).ToList();
        string report = oracle?.Report ?? "";
        if (report.Length > 0)
        {
            all.AddRange(report.TrimEnd('\n').Split('\n'));
            if (session.Settings.Json)
            {
                app.Io.Err.Write(report);
            }
        }
        all.Add(string.Create(CultureInfo.InvariantCulture, $"violations: {violations}"));
        ResultRenderer.Render(app.Io, session.Settings, results, "stress", all, w =>
        {
            w.WriteNumber("duration_s", duration.TotalSeconds);
            w.WriteNumber("operations", oracle?.Operations ?? 0);
            w.WriteNumber("device_operations", oracle?.DeviceOperations ?? 0);
            w.WriteNumber("invalidations", oracle?.Invalidations ?? 0);
            w.WriteNumber("violations", violations);
            w.WriteNumber("leaked_frames", oracle?.LeakedFrames ?? 0);
            w.WriteNumber("seconds", Math.Round(oracle?.Seconds ?? results.Sum(r => r.Elapsed.TotalSeconds), 3));
            w.WriteNumber("threads", threadCount);
            if (failRate > 0)
            {
                w.WriteNumber("fail_rate", failRate);
                w.WriteNumber("injected_failures", oracle?.InjectedFailures ?? 0);
            }
            if (report.Length > 0)
            {
                w.WriteString("violation_report", report);
            }
            w.WriteString("replay", replay);
        });
        return results.All(r => r.Passed) ? ExitCodes.Ok : ExitCodes.Failed;
    }

    /// <summary>The command line that reruns this stress with the same seed and shape.</summary>
    internal static string ReplayCommand(CliSettings settings, TimeSpan duration, int threads, double failRate)
    {
        ulong mib = settings.RamBytes >> 20;
        var sb = new System.Text.StringBuilder("hetmem stress");
        sb.Append(CultureInfo.InvariantCulture, $" --seed {settings.Seed} --seconds {duration.TotalSeconds} --threads {threads} --ram {mib}M");
        if (failRate > 0)
        {
            sb.Append(CultureInfo.InvariantCulture, $" --fail-rate {failRate}");
        }
        sb.Append(" --filter ").Append(OracleStressWorkload.ScenarioName);
        return sb.ToString();
    }

    // A progress bar over the scenario's duration, shown only on a terminal.
    private static WorkloadResult WithProgress(CliApp app, IWorkload w, WorkloadContext ctx, TimeSpan duration)
    {
        WorkloadResult? result = null;
        app.Io.Ui.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new ElapsedTimeColumn(), new SpinnerColumn())
            .Start(progress =>
            {
                ProgressTask task = progress.AddTask(w.Name, maxValue: duration.TotalSeconds);
                var stopwatch = Stopwatch.StartNew();
                Task<WorkloadResult> run = Task.Factory.StartNew(() => DemoWorkload.RunSection(w, ctx), TaskCreationOptions.LongRunning);
                while (!run.Wait(100))
                {
                    task.Value = Math.Min(stopwatch.Elapsed.TotalSeconds, duration.TotalSeconds);
                }
                task.Value = task.MaxValue;
                result = run.GetAwaiter().GetResult();
            });
        return result!;
    }
}
