using System.CommandLine;
using System.Globalization;
using Hetmem.Cli.Rendering;
using Hetmem.Cli.Selftests;
using Hetmem.Cli.Workloads;

namespace Hetmem.Cli.Commands;

/// <summary><c>hetmem selftest [--filter NAME]</c>: TAP output, exit 0 only when nothing failed.</summary>
internal static class SelftestCommand
{
    public static (Command Command, string[] Examples) Create(CliApp app)
    {
        var filter = new Option<string?>("--filter")
        {
            Description = "Run only self-tests whose name contains NAME (or matches it as a glob with * and ?)",
            HelpName = "NAME",
        };
        var list = new Option<bool>("--list") { Description = "List the self-test names and exit" };
        var cmd = new Command("selftest",
            "Run the self-tests (kernel: tools/testing/selftests) and print TAP: 'ok N name', 'not ok N name # reason', " +
            "closing with 'N passed, N failed'. Exit code 0 only when none failed.");
        cmd.Options.Add(filter);
        cmd.Options.Add(list);
        cmd.SetAction((parse, ct) => Task.FromResult(app.Execute(parse, "selftest", ct, s =>
        {
            string? f = parse.GetValue(filter);
            IReadOnlyList<SelftestCase> cases = app.Registries.Selftests.Select(f);
            if (parse.GetValue(list))
            {
                return List(app, s, cases);
            }
            if (cases.Count == 0)
            {
                throw new UsageException($"no self-test matches '{f}' ({app.Registries.Selftests.Cases.Count} registered; see 'hetmem selftest --list')");
            }
            return Run(app, s, cases);
        })));
        return (cmd,
        [
            "hetmem selftest",
            "hetmem selftest --filter 'hmm.hmm_device_private.*'",
            "hetmem selftest --filter hetmem. --json",
            "hetmem selftest --list",
        ]);
    }

    public static int Run(CliApp app, CommandSession session, IReadOnlyList<SelftestCase> cases)
    {
        TextWriter? tap = session.Settings.Json ? null : app.Io.Out;
        SelftestSummary summary = SelftestRegistry.Run(cases, () =>
        {
            WorkloadContext ctx = session.NewContext();
            ctx.Comments = tap; // self-tests write "# " comment lines into the TAP stream
            return ctx;
        }, tap, session.Cancellation);
        IReadOnlyList<string> notes = session.Finish();
        if (session.Settings.Json)
        {
            Json.WriteObject(app.Io.Out, w =>
            {
                w.WriteString("command", "selftest");
                w.WriteBoolean("passed", summary.Failed == 0);
                w.WriteNumber("seed", session.Settings.Seed);
                w.WriteNumber("passed_count", summary.Passed);
                w.WriteNumber("failed_count", summary.Failed);
                w.WriteNumber("skipped_count", summary.Skipped);
                w.WriteStartArray("tests");
                foreach (SelftestResult r in summary.Results)
                {
                    w.WriteStartObject();
                    w.WriteNumber("number", r.Number);
                    w.WriteString("name", r.Name);
                    w.WriteString("outcome", r.Outcome.ToString().ToLowerInvariant());
                    if (r.Reason is null)
                    {
                        w.WriteNull("reason");
                    }
                    else
                    {
                        w.WriteString("reason", r.Reason);
                    }
                    w.WriteNumber("elapsed_ms", Math.Round(r.Elapsed.TotalMilliseconds, 3));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteString("summary", summary.SummaryLine);
                ResultRenderer.WriteArtifacts(w, session.Settings);
            });
        }
        else
        {
            foreach (string n in notes)
            {
                app.Io.Out.WriteLine("# " + n);
            }
            app.Io.Out.WriteLine(summary.SummaryLine);
            app.Io.Out.Flush();
        }
        return summary.ExitCode;
    }

    private static int List(CliApp app, CommandSession session, IReadOnlyList<SelftestCase> cases)
    {
        session.Finish();
        if (session.Settings.Json)
        {
            Json.WriteObject(app.Io.Out, w =>
            {
                w.WriteStartArray("selftests");
                foreach (SelftestCase c in cases)
                {
                    w.WriteStringValue(c.Name);
                }
                w.WriteEndArray();
            });
        }
        else
        {
            foreach (SelftestCase c in cases)
            {
                app.Io.Out.WriteLine(c.Name);
            }
            app.Io.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{cases.Count} self-tests"));
        }
        return ExitCodes.Ok;
    }
}
