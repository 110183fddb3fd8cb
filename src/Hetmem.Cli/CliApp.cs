using System.CommandLine;
using Hetmem.Diagnostics;

namespace Hetmem.Cli;

/// <summary>The state the command actions share: registries, output and the common options.</summary>
public sealed class CliApp(CliRegistries registries, CliIo io)
{
    /// <summary>What the commands resolve by name.</summary>
    public CliRegistries Registries { get; } = registries;

    /// <summary>Where to write.</summary>
    public CliIo Io { get; } = io;

    /// <summary>The shared options.</summary>
    public CommonOptions Options { get; } = new();

    /// <summary>
    /// Runs a command body inside a <see cref="CommandSession"/>: errors become one line on stderr
    /// (<c>hetmem: ENOMEM: …</c>) and exit code 3; Ctrl+C becomes exit code 130.
    /// </summary>
    public int Execute(ParseResult parse, string command, CancellationToken cancellation, Func<CommandSession, int> body,
        Func<CliSettings, CliSettings>? adjust = null)
    {
        ArgumentNullException.ThrowIfNull(parse);
        ArgumentNullException.ThrowIfNull(body);
        CliSettings settings = Options.Read(parse, command);
        if (adjust is not null)
        {
            settings = adjust(settings);
        }
        try
        {
            using var session = new CommandSession(settings, Io, cancellation);
            return body(session);
        }
        catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
        {
            Io.Err.WriteLine("hetmem: interrupted");
            return 130;
        }
        catch (UsageException ex)
        {
            Io.Err.WriteLine($"hetmem: {ex.Message}");
            return ExitCodes.Usage;
        }
        catch (Exception ex)
        {
            Io.Err.WriteLine("hetmem: " + Describe(ex));
            if (settings.Verbose)
            {
                Io.Err.WriteLine(ex.ToString());
            }
            return ExitCodes.Error;
        }
    }

    /// <summary>One line for an error: an <see cref="MmException"/> starts with its errno name.</summary>
    public static string Describe(Exception ex)
    {
        ArgumentNullException.ThrowIfNull(ex);
        string msg = ex switch
        {
            MmException mm => mm.Message,                  // "ENOMEM: …"
            InvariantViolationException iv => "invariant violated: " + iv.Message,
            _ => $"{ex.GetType().Name}: {ex.Message}",
        };
        return string.Join(' ', msg.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
    }
}

/// <summary>A command-line mistake found while running (unknown workload, filter matching nothing): exit code 2.</summary>
public sealed class UsageException(string message) : Exception(message);
