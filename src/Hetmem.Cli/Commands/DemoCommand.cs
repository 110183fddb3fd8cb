using System.CommandLine;

namespace Hetmem.Cli.Commands;

/// <summary><c>hetmem demo</c>.</summary>
internal static class DemoCommand
{
    public static (Command Command, string[] Examples) Create(CliApp app)
    {
        var cmd = new Command("demo",
            "Run the main job on the embedded default set-up: every demo section (" + string.Join(", ", app.Registries.DemoSections.Names) +
            "), then print a table of checks and a verdict. Exit code 0 when every check passed.");
        cmd.SetAction((parse, ct) => Task.FromResult(app.Execute(parse, "demo", ct, s => WorkloadRunner.Run(app, s, "demo"))));
        return (cmd,
        [
            "hetmem demo",
            "hetmem demo --json > demo.json",
            "hetmem demo --trace demo-trace.json --plot demo.png --ram 1G",
            "hetmem demo --dax-dir /dev/shm/hetmem --seed 3",
        ]);
    }
}
