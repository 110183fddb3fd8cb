using System.Diagnostics;

namespace Hetmem.Cli.Bench;

/// <summary>
/// How a benchmark measurement should run. Measurements size their work from <see cref="Pages"/> and
/// <see cref="Repetitions"/> so that <c>hetmem bench --quick</c> stays under a minute on two cores.
/// </summary>
public sealed class BenchOptions
{
    /// <summary>Creates options for a quick or a full run.</summary>
    public BenchOptions(CliSettings settings, bool quick, CancellationToken cancellation = default)
    {
        Settings = settings;
        Quick = quick;
        Cancellation = cancellation;
        Pages = quick ? 4096 : 16384;
        Repetitions = quick ? 5 : 15;
        WarmupTime = TimeSpan.FromMilliseconds(quick ? 300 : 1000);
    }

    /// <summary>The parsed options (<c>--ram</c>, <c>--dax-dir</c>, <c>--seed</c>).</summary>
    public CliSettings Settings { get; }

    /// <summary><c>--quick</c>: fewer pages and repetitions; every measurement together must take well under a minute.</summary>
    public bool Quick { get; }

    /// <summary>Pages a measurement should touch (4096 = 16 MiB quick, 16384 = 64 MiB full).</summary>
    public int Pages { get; init; }

    /// <summary>Timed repetitions after the warm-up.</summary>
    public int Repetitions { get; init; }

    /// <summary>
    /// How long <see cref="Median"/> keeps warming up (at least one untimed run): long enough for tiered compilation to
    /// replace first-call code with optimised code, as BenchmarkDotNet's warm-up does.
    /// </summary>
    public TimeSpan WarmupTime { get; init; }

    /// <summary>Cancelled when the user interrupts the run.</summary>
    public CancellationToken Cancellation { get; }

    /// <summary>The seed (<c>--seed</c>).</summary>
    public int Seed => Settings.Seed;

    /// <summary>
    /// Runs <paramref name="sample"/> untimed until <see cref="WarmupTime"/> has passed (at least once), then
    /// <see cref="Repetitions"/> times, and returns the median of those.
    /// </summary>
    public double Median(Func<double> sample)
    {
        ArgumentNullException.ThrowIfNull(sample);
        long warm = Stopwatch.GetTimestamp();
        do
        {
            Cancellation.ThrowIfCancellationRequested();
            sample();
        }
        while (Stopwatch.GetElapsedTime(warm) < WarmupTime);
        var v = new double[Math.Max(1, Repetitions)];
        for (int i = 0; i < v.Length; i++)
        {
            Cancellation.ThrowIfCancellationRequested();
            v[i] = sample();
        }
        Array.Sort(v);
        return v.Length % 2 == 1 ? v[v.Length / 2] : (v[(v.Length / 2) - 1] + v[v.Length / 2]) / 2;
    }

    /// <summary>
    /// Runs <paramref name="sample"/> <paramref name="runs"/> times (no separate warm-up: the early, slower runs lose)
    /// and returns the smallest value: a latency estimate that a loaded machine disturbs far less than the median.
    /// </summary>
    public double Best(Func<double> sample, int runs)
    {
        ArgumentNullException.ThrowIfNull(sample);
        double best = double.PositiveInfinity;
        for (int i = 0; i < Math.Max(1, runs); i++)
        {
            Cancellation.ThrowIfCancellationRequested();
            best = Math.Min(best, sample());
        }
        return best;
    }

    /// <summary>Nanoseconds <paramref name="action"/> takes, divided by <paramref name="count"/>.</summary>
    public static double NsPer(int count, Action action)
    {
        ArgumentNullException.ThrowIfNull(action);
        long t0 = Stopwatch.GetTimestamp();
        action();
        return Stopwatch.GetElapsedTime(t0).TotalNanoseconds / Math.Max(1, count);
    }
}
