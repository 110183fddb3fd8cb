using CsCheck;
using Hetmem.Cli;
using Hetmem.Cli.Workloads;
using Hetmem.Tests.Cli;
using Hetmem.Tests.Diagnostics;
using Hetmem.Tests.Infrastructure;

namespace Hetmem.Tests.Fuzz;

/// <summary>
/// Random argument vectors for <c>hetmem</c> (its subcommands, options, values, junk) run in-process against small
/// fake registries: nothing escapes as an exception, the exit code is one of the documented ones (0 ok, 1 failed checks,
/// 2 usage, 3 error), a failure prints exactly one <c>hetmem: …</c> error line on stderr, a success prints none, and no
/// stack trace reaches stderr unless <c>--verbose</c> asked for one.
/// </summary>
/// <remarks>
/// Runs in the process-wide diagnostics collection: <c>--trace</c> starts the global trace recorder and
/// <c>stress</c> flips the global invariant switches. File arguments point into a scratch directory only. Replay:
/// <c>CsCheck_Seed=&lt;printed seed&gt; dotnet test --filter FullyQualifiedName~CliFuzzTests</c>.
/// </remarks>
[Collection(GlobalDiagnosticsCollection.Name)]
public sealed class CliFuzzTests : IDisposable
{
    private readonly ScratchDir _dir = new();

    public void Dispose() => _dir.Dispose();

    private static CliRegistries FakeRegistries()
    {
        var r = new CliRegistries();
        IWorkload Ok(string name) => new DelegateWorkload(name, "a fake workload", _ =>
        {
            var res = new WorkloadResult(name);
            res.Check("it ran", () => "yes");
            return res;
        });
        r.DemoSections.Add(Ok("alpha"));
        r.Workloads.Add(new DemoWorkload(r.DemoSections));
        r.Workloads.Add(Ok("noop"));
        r.Workloads.Add(new DelegateWorkload("boom", "throws", _ => throw new InvalidOperationException("kaput\n   at a fake frame")));
        r.Stress.Add(Ok("calm"));
        r.Selftests.Add("fuzz.ok", () => { });
        r.Selftests.Add("fuzz.bad", () => throw new InvalidOperationException("a failing self-test"));
        r.Bench.Add("fuzz_measure", _ => 1.0, "a constant");
        return r;
    }

    private Gen<string[]> Argv()
    {
        string file = _dir.File("out.json"), png = _dir.File("out.png");
        Gen<string> command = Gen.OneOf("demo", "run", "selftest", "bench", "stress", "help", "", "DEMO", "rn", "--", "-");
        Gen<string> option = Gen.OneOf("--json", "--trace", "--plot", "--ram", "--dax-dir", "--seed", "--verbose", "-v", "--quick",
            "--duration", "--seconds", "--fail-rate", "--threads", "--filter", "--list", "--help", "-h", "-?", "--version", "--bogus", "---", "--ram=1G", "--seed=");
        Gen<string> value = Gen.Frequency<string>(
            (4, Gen.OneOf("noop", "alpha", "calm", "boom", "demo", "fuzz.*", "fuzz.ok", "fuzz.bad", "*", "nothing-matches")),
            (3, Gen.OneOf("0", "1", "-1", "7", "0.001", "2147483648", "1e9", "NaN", "86401", "1024", "1025")),
            (3, Gen.OneOf("4M", "3M", "1G", "1T", "2T", "256MiB", "1.5G", "-1M", "99999999999999999999T", "banana", "")),
            (2, Gen.OneOf(file, png, _dir.Path, _dir.File("no/such/dir/t.json"), "/nonexistent-hetmem-dir/t.json")),
            (1, Gen.OneOf(" ", "\t", "ä\u0001", new string('x', 5000), "--", "-1e308")));
        Gen<string> token = Gen.Frequency<string>((3, option), (4, value), (1, command));
        return Gen.Select(command, token.Array[0, 6], (c, rest) => c.Length == 0 ? rest : [c, .. rest]);
    }

    [Fact]
    public void RandomArgumentsNeverCrashAndFailWithOneErrorLineAndADocumentedExitCode()
    {
        CliRegistries registries = FakeRegistries();
        int failures = 0;
        Argv().Sample(argv =>
        {
            // A real duration would make every valid stress run last seconds; cap what reaches the command.
            string[] args = [.. argv.Select((a, i) => i > 0 && argv[i - 1] is "--duration" or "--seconds" && double.TryParse(a, out double d) && d > 0.05 ? "0.01" : a)];
            CliHost.Outcome r;
            try
            {
                r = CliHost.RunAsync(registries, args).GetAwaiter().GetResult();
            }
            catch (Exception e)
            {
                throw new InvalidOperationException($"hetmem {Show(args)} threw {e.GetType().Name}: {e.Message}", e);
            }
            string what = $"hetmem {Show(args)} (exit {r.ExitCode})\nstderr:\n{r.Err}";
            Assert.True(r.ExitCode is ExitCodes.Ok or ExitCodes.Failed or ExitCodes.Usage or ExitCodes.Error, what);
            string[] errors = [.. r.ErrLines.Where(l => l.StartsWith("hetmem: ", StringComparison.Ordinal))];
            if (r.ExitCode is ExitCodes.Usage or ExitCodes.Error)
            {
                failures++;
                Assert.True(errors.Length == 1, $"{what}\nexpected exactly one 'hetmem: ' error line");
                Assert.True(errors[0].Length > "hetmem: ".Length + 3, $"{what}\nthe error line says nothing");
            }
            else
            {
                Assert.True(errors.Length == 0, $"{what}\na successful run printed an error line");
            }
            bool verbose = args.Any(a => a is "--verbose" or "-v");
            Assert.True(verbose || !r.ErrLines.Any(l => l.TrimStart().StartsWith("at ", StringComparison.Ordinal) && l.Contains('(')),
                $"{what}\na stack trace reached stderr without --verbose");
        }, iter: FuzzSupport.Iter(300), threads: 1, print: argv => Show(argv));
        Assert.True(failures > 0, "no random argument vector was rejected: the generator is too tame");
    }

    private static string Show(string[] args) => string.Join(' ', args.Select(a => a.Length > 40 ? $"'{a[..20]}…({a.Length})'" : $"'{a}'"));
}
