using System.Reflection;
using Hetmem.Diagnostics;
using ScottPlot;

namespace Hetmem.Cli.Rendering;

/// <summary>Renders a <see cref="Timeline"/> to a PNG: one panel per series group (faults, migrations, resident pages, …).</summary>
public static class PlotRenderer
{
    private const string FontName = "DejaVu Sans";
    private static readonly object s_fontLock = new();
    private static bool s_fontReady;   // guarded by s_fontLock

    /// <summary>Writes the timeline to <paramref name="path"/>; returns the number of panels.</summary>
    public static int Render(Timeline timeline, string path, string title)
    {
        ArgumentNullException.ThrowIfNull(timeline);
        bool haveFont = EnsureFont();
        double[] xs = [.. timeline.Times];
        var groups = timeline.Series.GroupBy(s => s.Group).ToList();
        var mp = new Multiplot();
        int panels = Math.Max(1, groups.Count);
        for (int g = 0; g < panels; g++)
        {
            Plot p = g < mp.Subplots.Count ? mp.Subplots.GetPlot(g) : mp.AddPlot();
            if (haveFont)
            {
                p.Font.Set(FontName);
            }
            if (groups.Count == 0)
            {
                p.Title($"{title}: no series were sampled");
                continue;
            }
            IGrouping<string, TimelineSeries> group = groups[g];
            foreach (TimelineSeries s in group)
            {
                double[] ys = [.. s.Values];
                int n = Math.Min(xs.Length, ys.Length);
                if (n == 0)
                {
                    continue;
                }
                var line = p.Add.ScatterLine(xs[..n], ys[..n]);
                line.LegendText = s.Name;
                line.LineWidth = 2;
            }
            p.Title(g == 0 ? $"{title}: {group.Key}" : group.Key);
            p.XLabel("time (s)");
            p.YLabel(group.All(s => s.Kind == TimelineSeriesKind.Counter) ? $"{group.Key} (cumulative)" : group.Key);
            p.ShowLegend(Alignment.UpperLeft);
        }
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null)
        {
            Directory.CreateDirectory(dir);
        }
        mp.SavePng(path, 1000, 300 * panels);
        return panels;
    }

    /// <summary>
    /// Registers the bundled DejaVu Sans with ScottPlot (extracted once to the temp directory) so text renders on
    /// machines without system fonts. Returns false, and plots fall back to ScottPlot's defaults, when that fails.
    /// </summary>
    public static bool EnsureFont()
    {
        lock (s_fontLock)
        {
            if (s_fontReady)
            {
                return true;
            }
            try
            {
                using Stream? res = Assembly.GetExecutingAssembly().GetManifestResourceStream("Hetmem.Cli.DejaVuSans.ttf");
                if (res is null)
                {
                    return false;
                }
                string dir = Path.Combine(Path.GetTempPath(), "hetmem-fonts");
                Directory.CreateDirectory(dir);
                string file = Path.Combine(dir, $"DejaVuSans-{res.Length}.ttf");
                if (!File.Exists(file) || new FileInfo(file).Length != res.Length)
                {
                    string tmp = file + "." + Environment.ProcessId + ".tmp";
                    using (FileStream fs = File.Create(tmp))
                    {
                        res.CopyTo(fs);
                    }
                    File.Move(tmp, file, overwrite: true);
                }
                Fonts.AddFontFile(FontName, file, bold: false, italic: false);
                Fonts.AddFontFile(FontName, file, bold: true, italic: false);
                Fonts.Default = FontName;
                Fonts.Sans = FontName;
                s_fontReady = true;
                return true;
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                return false;
            }
        }
    }
}
