using System.Globalization;
using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Cli.Workloads;

/// <summary>
/// What a workload, self-test or stress scenario gets to run with: the parsed settings, a seeded random source,
/// a lazily created <see cref="PhysicalMemory"/> of <c>--ram</c> bytes, a DAX directory, the run's timeline and a
/// cancellation token. Disposing it frees the memory and deletes a temporary DAX directory.
/// </summary>
/// <remarks>Not thread-safe except <see cref="Log"/>, <see cref="Cancellation"/> and the already-created <see cref="Memory"/>.</remarks>
public sealed class WorkloadContext : IDisposable
{
    private readonly TextWriter? _log;
    private PhysicalMemory? _memory;
    private string? _daxDirectory;
    private bool _ownsDaxDirectory;

    /// <summary>Creates a context.</summary>
    /// <param name="settings">The parsed options.</param>
    /// <param name="log">Where <see cref="Log"/> writes when <see cref="CliSettings.Verbose"/> is set (stderr); null for none.</param>
    /// <param name="timeline">The run's timeline when <c>--plot</c> was given.</param>
    /// <param name="cancellation">Cancelled on Ctrl+C.</param>
    public WorkloadContext(CliSettings settings, TextWriter? log = null, Timeline? timeline = null, CancellationToken cancellation = default)
    {
        Settings = settings;
        _log = log;
        Timeline = timeline;
        Cancellation = cancellation;
        Random = new Random(settings.Seed);
    }

    /// <summary>The parsed options.</summary>
    public CliSettings Settings { get; }

    /// <summary>The seed (<c>--seed</c>).</summary>
    public int Seed => Settings.Seed;

    /// <summary>A random source seeded with <see cref="Seed"/>.</summary>
    public Random Random { get; }

    /// <summary>The run's timeline (only with <c>--plot</c>): add gauges such as resident pages per memory kind.</summary>
    public Timeline? Timeline { get; }

    /// <summary>Cancelled when the user interrupts the run.</summary>
    public CancellationToken Cancellation { get; }

    /// <summary>How long a stress scenario runs (<c>--duration</c>).</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How many threads a stress scenario uses (<c>--threads</c>).</summary>
    public int Threads { get; init; } = Math.Max(2, Environment.ProcessorCount);

    /// <summary>The simulated machine's physical memory, created on first use with <c>--ram</c> bytes.</summary>
    /// <exception cref="MmException">EINVAL for a bad size, ENOMEM when the host cannot provide it.</exception>
    public PhysicalMemory Memory => _memory ??= new PhysicalMemory(Settings.RamBytes);

    /// <summary>True when <see cref="Memory"/> has been created.</summary>
    public bool HasMemory => _memory is not null;

    /// <summary>
    /// The directory for DAX namespace files: <c>--dax-dir</c> (created if needed, files kept) or a fresh temporary
    /// directory deleted on dispose.
    /// </summary>
    public string DaxDirectory
    {
        get
        {
            if (_daxDirectory is null)
            {
                if (Settings.DaxDir is { } dir)
                {
                    Directory.CreateDirectory(dir);
                    _daxDirectory = dir;
                }
                else
                {
                    _daxDirectory = Directory.CreateTempSubdirectory("hetmem-dax-").FullName;
                    _ownsDaxDirectory = true;
                }
            }
            return _daxDirectory;
        }
    }

    /// <summary>True when DAX files outlive the run (<c>--dax-dir</c> was given).</summary>
    public bool KeepsDaxFiles => Settings.DaxDir is not null;

    /// <summary>
    /// Where a self-test writes diagnostic lines that belong in the output as TAP comments (benchmark tables, child
    /// failures); each line must start with <c>"# "</c>. Null when they are not wanted (<c>--json</c>, workloads).
    /// </summary>
    public TextWriter? Comments { get; set; }

    /// <summary>Where the workload reports its phases (progress bars on a terminal); ignores everything by default.</summary>
    public IWorkloadProgress Progress { get; set; } = NullWorkloadProgress.Instance;

    /// <summary>Reports that <paramref name="workload"/> is in <paramref name="phase"/>, <paramref name="fraction"/> done, and logs it with <c>--verbose</c>.</summary>
    public void Report(string workload, string phase, double fraction)
    {
        Progress.Report(workload, phase, Math.Clamp(fraction, 0, 1));
        Log($"{workload}: {phase}");
    }

    /// <summary>Writes a progress line to stderr when <c>--verbose</c> is set.</summary>
    public void Log(string message)
    {
        if (Settings.Verbose && _log is not null)
        {
            lock (_log)
            {
                _log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[{DateTime.Now:HH:mm:ss.fff}] {message}"));
            }
        }
    }

    /// <summary>Frees the memory and deletes a temporary DAX directory.</summary>
    public void Dispose()
    {
        _memory?.Dispose();
        _memory = null;
        if (_ownsDaxDirectory && _daxDirectory is not null)
        {
            try
            {
                Directory.Delete(_daxDirectory, recursive: true);
            }
            catch (IOException)
            {
                // best effort: a leftover temporary directory is harmless
            }
            catch (UnauthorizedAccessException)
            {
            }
            _daxDirectory = null;
        }
    }
}
