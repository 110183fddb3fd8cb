using System.CommandLine;
using System.Globalization;
using Hetmem.Cli.Bench;
using Hetmem.Cli.Rendering;
using Spectre.Console;

namespace Hetmem.Cli.Commands;

/// <summary><c>hetmem bench [--quick]</c>: Hetmem next to the host kernel in one run.</summary>
internal static class BenchCommand
{
    public static (Command Command, string[] Examples) Create(CliApp app)
    {
        var quick = new Option<bool>("--quick") { Description = "Fewer pages and repetitions: the whole run takes well under a minute" };
        var cmd = new Command("bench",
            "Measure Hetmem's hot paths side by side with the host kernel on the same machine (madvise populate, munmap, " +
            "mprotect, native loads, memcpy) and compare both with the DESIGN.md targets. Values are per 4 KiB page unless the unit says otherwise.");
        var markdown = new Option<string?>("--markdown")
        {
            Description = "Also write the results as Markdown to FILE (docs/vs-kernel.md): the generated block between its markers is replaced, the rest of the file is kept",
            HelpName = "FILE",
        };
        cmd.Options.Add(quick);
        cmd.Options.Add(markdown);
        cmd.SetAction((parse, ct) => Task.FromResult(app.Execute(parse, "bench", ct, s => Run(app, s, parse.GetValue(quick), parse.GetValue(markdown)))));
        return (cmd,
        [
            "hetmem bench --quick",
            "hetmem bench --json > bench.json",
            "hetmem bench --quick --trace bench-trace.json",
            "hetmem bench --markdown docs/vs-kernel.md",
        ]);
    }

    public static int Run(CliApp app, CommandSession session, bool quick, string? markdown = null)
    {
        var options = new BenchOptions(session.Settings, quick, session.Cancellation);
        BenchRegistry registry = app.Registries.Bench;
        TextWriter? log = session.Settings.Verbose ? app.Io.Err : null;
        BenchReport report;
        if (app.Io.IsTerminal && !session.Settings.Json)
        {
            BenchReport? r = null;
            app.Io.Ui.Progress()
                .AutoClear(true)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new SpinnerColumn())
                .Start(ctx =>
                {
                    ProgressTask task = ctx.AddTask("bench", maxValue: BenchKeys.All.Count + registry.Measures.Count);
                    r = registry.Run(options, (key, i, n) =>
                    {
                        task.Description = key;
                        task.MaxValue = n;
                        task.Value = i;
                    }, log);
                    task.Value = task.MaxValue;
                });
            report = r!;
        }
        else
        {
            report = registry.Run(options, null, log);
        }
        IReadOnlyList<string> notes = session.Finish();
        if (markdown is not null)
        {
            BenchMarkdown.WriteFile(markdown, report, quick);
            app.Io.Err.WriteLine($"bench: wrote {markdown}");
        }
        if (session.Settings.Json)
        {
            // Exactly the standard keys (issue 8's list), null when not measured; extra measurements are table-only.
            Json.WriteObject(app.Io.Out, w =>
            {
                foreach (string key in BenchKeys.All)
                {
                    Json.NumberOrNull(w, key, report[key]);
                }
            });
        }
        else
        {
            RenderTable(app.Io, report, quick);
            ResultRenderer.WriteNotes(app.Io, notes);
            int measured = report.Keys.Count(k => report[k] is not null);
            app.Io.Ui.MarkupLine(report.Errors.Count == 0
                ? string.Create(CultureInfo.InvariantCulture, $"[green bold]DONE[/] bench{(quick ? " --quick" : "")}: {measured} of {report.Keys.Count} values measured")
                : Markup.Escape(string.Create(CultureInfo.InvariantCulture, $"FAIL bench: {report.Errors.Count} measurements failed ({string.Join(", ", report.Errors)})")));
        }
        return report.Errors.Count == 0 ? ExitCodes.Ok : ExitCodes.Failed;
    }

    private static void RenderTable(CliIo io, BenchReport report, bool quick)
    {
        var t = new Table { Border = TableBorder.Rounded, Title = new TableTitle(quick ? "hetmem bench --quick" : "hetmem bench") };
        t.AddColumn("operation");
        t.AddColumn("unit");
        t.AddColumn(new TableColumn("Hetmem").RightAligned());
        t.AddColumn(new TableColumn("host").RightAligned());
        t.AddColumn(new TableColumn("Hetmem/host").RightAligned());
        t.AddColumn(new TableColumn("target").RightAligned());
        t.AddColumn("status");
        foreach (BenchComparison c in BenchKeys.Comparisons)
        {
            double? h = report[c.HetmemKey];
            double? host = c.HostKey is { } hk ? report[hk] : c.HostValue;
            string ratio = h is { } a && host is { } b && b != 0 ? (a / b).ToString("0.00", CultureInfo.InvariantCulture) + "×" : "–";
            string target = c.Target is { } tv ? (c.HigherIsBetter ? "≥ " : "≤ ") + Format(tv) : "–";
            string status = h is { } v
                ? (c.MeetsTarget(v) ? "[green]meets target[/]" : "[yellow]misses target[/]")
                : Markup.Escape(report.Note(c.HetmemKey) ?? "not measured");
            t.AddRow(
                Markup.Escape(c.Operation),
                Markup.Escape(c.Unit),
                h is { } hv ? Format(hv) : "n/a",
                host is { } hostv ? Format(hostv) : Markup.Escape(c.HostKey is { } k ? "n/a (" + (report.Note(k) ?? "?") + ")" : "n/a"),
                ratio,
                target,
                status);
        }
        io.Ui.Write(t);
        var extra = report.Keys.Where(k => !BenchKeys.All.Contains(k)).ToList();
        if (extra.Count > 0)
        {
            var e = new Table { Border = TableBorder.Simple };
            e.AddColumn("other measurement");
            e.AddColumn(new TableColumn("value").RightAligned());
            foreach (string k in extra)
            {
                e.AddRow(Markup.Escape(k), report[k] is { } v ? Format(v) : Markup.Escape(report.Note(k) ?? "n/a"));
            }
            io.Ui.Write(e);
        }
    }

    private static string Format(double v) =>
        v.ToString(Math.Abs(v) >= 100 ? "#,0" : Math.Abs(v) >= 10 ? "0.#" : "0.##", CultureInfo.InvariantCulture);
}
