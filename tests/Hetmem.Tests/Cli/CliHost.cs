using Hetmem.Cli;

namespace Hetmem.Tests.Cli;

/// <summary>Runs the hetmem command in-process against given registries, capturing stdout and stderr.</summary>
internal static class CliHost
{
    public sealed record Outcome(int ExitCode, string Out, string Err)
    {
        public string[] OutLines => Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToArray();

        public string[] ErrLines => Err.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToArray();
    }

    public static async Task<Outcome> RunAsync(CliRegistries registries, params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int rc = await Program.RunAsync(args, CliIo.ForWriters(o, e), registries);
        return new Outcome(rc, o.ToString(), e.ToString());
    }
}
