using System.Globalization;
using System.Text.Json;
using Hetmem.Cli.Workloads;
using Hetmem.Diagnostics;
using Spectre.Console;

namespace Hetmem.Cli.Rendering;

/// <summary>Renders workload results: a Spectre table of checks, a table of counters and a verdict line, or one JSON object.</summary>
internal static class ResultRenderer
{
    public static void Render(CliIo io, CliSettings settings, IReadOnlyList<WorkloadResult> results, string title,
        IReadOnlyList<string> notes, Action<Utf8JsonWriter>? extraJson = null)
    {
        if (settings.Json)
        {
            Json.WriteObject(io.Out, w =>
            {
                w.WriteString("command", settings.Command);
                w.WriteString("title", title);
                w.WriteBoolean("passed", results.All(r => r.Passed));
                w.WriteNumber("seed", settings.Seed);
                w.WriteNumber("ram_bytes", settings.RamBytes);
                w.WriteNumber("elapsed_ms", Math.Round(results.Sum(r => r.Elapsed.TotalMilliseconds), 3));
                extraJson?.Invoke(w);
                w.WriteStartArray("workloads");
                foreach (WorkloadResult r in results)
                {
                    w.WriteStartObject();
                    w.WriteString("name", r.Name);
                    w.WriteBoolean("passed", r.Passed);
                    w.WriteNumber("elapsed_ms", Math.Round(r.Elapsed.TotalMilliseconds, 3));
                    w.WriteStartArray("checks");
                    foreach (WorkloadCheck c in r.Checks)
                    {
                        w.WriteStartObject();
                        w.WriteString("section", c.Section);
                        w.WriteString("name", c.Name);
                        w.WriteBoolean("passed", c.Passed);
                        if (c.Detail is null)
                        {
                            w.WriteNull("detail");
                        }
                        else
                        {
                            w.WriteString("detail", c.Detail);
                        }
                        w.WriteNumber("elapsed_ms", Math.Round(c.Elapsed.TotalMilliseconds, 3));
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                    w.WriteStartObject("counters");
                    foreach ((string k, double v) in r.Counters)
                    {
                        Json.NumberOrNull(w, k, v);
                    }
                    w.WriteEndObject();
                    w.WriteStartArray("tables");
                    foreach (ResultTable t in r.Tables)
                    {
                        WriteTableJson(w, t);
                    }
                    w.WriteEndArray();
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteStartObject("vmstat");
                foreach ((string k, long v) in Counters.Snapshot())
                {
                    w.WriteNumber(k, v);
                }
                w.WriteEndObject();
                WriteArtifacts(w, settings);
            });
            return;
        }

        var table = new Table { Border = TableBorder.Rounded, Title = new TableTitle(Markup.Escape(title)) };
        table.AddColumn("section");
        table.AddColumn("check");
        table.AddColumn(new TableColumn("result").Centered());
        table.AddColumn("detail");
        foreach (WorkloadResult r in results)
        {
            foreach (WorkloadCheck c in r.Checks)
            {
                table.AddRow(
                    new Markup(Markup.Escape(c.Section)),
                    new Markup(Markup.Escape(c.Name)),
                    new Markup(c.Passed ? "[green]PASS[/]" : "[red bold]FAIL[/]"),
                    new Markup(Markup.Escape(c.Detail ?? "")));
            }
        }
        io.Ui.Write(table);
        foreach (ResultTable t in results.SelectMany(r => r.Tables))
        {
            io.Ui.Write(ToSpectre(t));
        }

        var counters = results.SelectMany(r => r.Counters.Select(kv => (Key: results.Count > 1 || r.Name != title ? $"{r.Name}.{kv.Key}" : kv.Key, kv.Value))).ToList();
        if (counters.Count > 0)
        {
            var ct = new Table { Border = TableBorder.Simple };
            ct.AddColumn("counter");
            ct.AddColumn(new TableColumn("value").RightAligned());
            foreach ((string k, double v) in counters)
            {
                ct.AddRow(Markup.Escape(k), v.ToString("#,0.###", CultureInfo.InvariantCulture));
            }
            io.Ui.Write(ct);
        }
        WriteNotes(io, notes);
        io.Ui.MarkupLine(Verdict(results, title, markup: true));
    }

    /// <summary>A Spectre table of <paramref name="t"/>.</summary>
    public static Table ToSpectre(ResultTable t)
    {
        var table = new Table { Border = TableBorder.Rounded, Title = new TableTitle(Markup.Escape(t.Title)) };
        for (int i = 0; i < t.Columns.Count; i++)
        {
            var c = new TableColumn(Markup.Escape(t.Columns[i]));
            table.AddColumn(t.RightAligned.Contains(i) ? c.RightAligned() : c);
        }
        foreach (IReadOnlyList<string> row in t.Rows)
        {
            table.AddRow(row.Select(cell => new Markup(Markup.Escape(cell))).ToArray());
        }
        return table;
    }

    private static void WriteTableJson(Utf8JsonWriter w, ResultTable t)
    {
        w.WriteStartObject();
        w.WriteString("title", t.Title);
        w.WriteStartArray("columns");
        foreach (string c in t.Columns)
        {
            w.WriteStringValue(c);
        }
        w.WriteEndArray();
        w.WriteStartArray("rows");
        foreach (IReadOnlyList<string> row in t.Rows)
        {
            w.WriteStartArray();
            foreach (string cell in row)
            {
                w.WriteStringValue(cell);
            }
            w.WriteEndArray();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    public static void WriteNotes(CliIo io, IReadOnlyList<string> notes)
    {
        foreach (string n in notes)
        {
            io.Ui.WriteLine(n);
        }
    }

    public static void WriteArtifacts(Utf8JsonWriter w, CliSettings settings)
    {
        w.WriteStartObject("artifacts");
        if (settings.TracePath is { } t)
        {
            w.WriteString("trace", Path.GetFullPath(t));
        }
        if (settings.PlotPath is { } p)
        {
            w.WriteString("plot", Path.GetFullPath(p));
        }
        w.WriteEndObject();
    }

    /// <summary>
    /// The verdict line: <c>PASS demo: 11 of 11 checks passed in 0.31 s</c> or
    /// <c>FAIL demo: 2 of 11 checks failed (dax: …)</c>.
    /// </summary>
    public static string Verdict(IReadOnlyList<WorkloadResult> results, string title, bool markup)
    {
        int total = results.Sum(r => r.Checks.Count);
        var failed = results.SelectMany(r => r.Checks).Where(c => !c.Passed).ToList();
        double seconds = results.Sum(r => r.Elapsed.TotalSeconds);
        string pass = markup ? "[green bold]PASS[/]" : "PASS";
        string fail = markup ? "[red bold]FAIL[/]" : "FAIL";
        string t = markup ? Markup.Escape(title) : title;
        if (failed.Count == 0)
        {
            return string.Create(CultureInfo.InvariantCulture, $"{pass} {t}: {total} of {total} checks passed in {seconds:F2} s");
        }
        string first = string.Join("; ", failed.Take(3).Select(c => $"{c.Section}: {c.Name}"));
        if (markup)
        {
            first = Markup.Escape(first);
        }
        return string.Create(CultureInfo.InvariantCulture, $"{fail} {t}: {failed.Count} of {total} checks failed ({first}{(failed.Count > 3 ? "; …" : "")})");
    }
}
