using System.CommandLine;

namespace Hetmem.Cli.Commands;

/// <summary><c>hetmem run WORKLOAD</c>.</summary>
internal static class RunCommand
{
    public static (Command Command, string[] Examples) Create(CliApp app)
    {
        var workload = new Argument<string>("WORKLOAD")
        {
            Description = "The workload to run: " + string.Join(", ", WorkloadRunner.Names(app.Registries)),
        };
        var cmd = new Command("run", "Run one workload by name (a demo section, a scenario or a stress scenario) and print its checks and a verdict.");
        cmd.Arguments.Add(workload);
        cmd.SetAction((parse, ct) => Task.FromResult(app.Execute(parse, "run", ct, s => WorkloadRunner.Run(app, s, parse.GetValue(workload)!))));
        return (cmd,
        [
            "hetmem run anon-cow",
            "hetmem run dax-truncate --dax-dir ./pmem --json",
            "hetmem run reclaim --trace reclaim.json",
            "hetmem run mirror-race --plot race.png",
            "hetmem run mm --ram 1G",
        ]);
    }
}
