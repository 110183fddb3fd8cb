using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Hetmem.Cli.Rendering;
using Hetmem.Cli.Selftests;
using Hetmem.Cli.Workloads;
using Hetmem.Diagnostics;
using Spectre.Console;

namespace Hetmem.Cli.Commands;

/// <summary><c>hetmem stress</c>: seeded multi-threaded runs with invariant checking and lock-order validation on.</summary>
internal static class StressCommand
{
    public static (Command Command, string[] Examples) Create(CliApp app)
    {
        var duration = new Option<double>("--duration")
        {
            Description = "Seconds each scenario runs",
            HelpName = "SECONDS",
            DefaultValueFactory = _ => 5,
        };
        duration.Validators.Add(r =>
        {
            double d = r.GetValueOrDefault<double>();
            if (!(d > 0 && d <= 86400))
            {
                r.AddError("--duration must be between 0 and 86400 seconds");
            }
        });
        var threads = new Option<int?>("--threads")
        {
            Description = "Threads per scenario (default: the number of cores, at least 2)",
            HelpName = "N",
        };
        threads.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<int?>() is { } n && (n < 1 || n > 1024))
            {
                r.AddError("--threads must be between 1 and 1024");
            }
        });
        var filter = new Option<string?>("--filter") { Description = "Run only scenarios whose name contains NAME (or matches a glob)", HelpName = "NAME" };
        var cmd = new Command("stress",
            "Run the stress scenarios (" + string.Join(", ", app.Registries.Stress.Names) + ") on several threads with " +
            "invariant checks and lock-order validation on. Prints its seed; reproduce a failure with --seed (or HETMEM_SEED).");
        cmd.Options.Add(duration);
        cmd.Options.Add(threads);
        cmd.Options.Add(filter);
        cmd.SetAction((parse, ct) => Task.FromResult(app.Execute(parse, "stress", ct,
            s => Run(app, s, TimeSpan.FromSeconds(parse.GetValue(duration)), parse.GetValue(threads), parse.GetValue(filter)),
            settings => settings.SeedGiven ? settings : settings with { Seed = SeedFromEnvironment() ?? Random.Shared.Next(1, int.MaxValue), SeedGiven = true })));
        return (cmd,
        [
            "hetmem stress",
            "hetmem stress --duration 60 --threads 8",
            "hetmem stress --seed 12345 --filter mirror-race --trace stress.json",
            "HETMEM_SEED=7 hetmem stress --filter mm-random --duration 60",
        ]);
    }

    /// <summary>The seed in <c>HETMEM_SEED</c> (the tests' convention), when set and valid.</summary>
    private static int? SeedFromEnvironment() =>
        int.TryParse(Environment.GetEnvironmentVariable("HETMEM_SEED"), NumberStyles.Integer, CultureInfo.InvariantCulture, out int s) ? s : null;

    public static int Run(CliApp app, CommandSession session, TimeSpan duration, int? threads, string? filter)
    {
        int seed = session.Settings.Seed;
        app.Io.Err.WriteLine(string.Create(CultureInfo.InvariantCulture, $"hetmem stress: seed {seed} (reproduce with --seed {seed})"));
        var scenarios = app.Registries.Stress.All.Where(w => SelftestRegistry.Matches(w.Name, filter)).ToList();
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
        var all = notes.Prepend(string.Create(CultureInfo.InvariantCulture, $"seed: {seed} (reproduce with --seed {seed})")).ToList();
        ResultRenderer.Render(app.Io, session.Settings, results, "stress", all,
            w => w.WriteNumber("duration_s", duration.TotalSeconds));
        return results.All(r => r.Passed) ? ExitCodes.Ok : ExitCodes.Failed;
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
