using System.CommandLine;
using Hetmem.Cli;

namespace Hetmem.Tests.Cli;

public class ParsingTests
{
    [Theory]
    [InlineData("256M", 256UL << 20)]
    [InlineData("1G", 1UL << 30)]
    [InlineData("1g", 1UL << 30)]
    [InlineData("512MiB", 512UL << 20)]
    [InlineData("2GB", 2UL << 30)]
    [InlineData("4096k", 4UL << 20)]
    [InlineData("1T", 1UL << 40)]
    [InlineData("12345", 12345UL)]
    public void SizesAcceptPlainBytesAndBinarySuffixes(string text, ulong bytes)
    {
        Assert.True(SizeParser.TryParse(text, out ulong parsed, out string? error), error);
        Assert.Equal(bytes, parsed);
    }

    [Theory]
    [InlineData("")]
    [InlineData("banana")]
    [InlineData("-1M")]
    [InlineData("1.5G")]
    [InlineData("12X")]
    [InlineData("99999999999999999999T")]
    public void MalformedSizesAreRejectedWithAReason(string text)
    {
        Assert.False(SizeParser.TryParse(text, out _, out string? error));
        Assert.False(string.IsNullOrEmpty(error));
    }

    [Fact]
    public void SizesFormatTheWayTheyAreWritten()
    {
        Assert.Equal("256M", SizeParser.Format(256UL << 20));
        Assert.Equal("1G", SizeParser.Format(1UL << 30));
        Assert.Equal("4097", SizeParser.Format(4097));
    }

    [Theory]
    [InlineData("demo")]
    [InlineData("run", "demo")]
    [InlineData("selftest")]
    [InlineData("bench")]
    [InlineData("stress")]
    public void EverySubcommandAcceptsTheSharedOptions(params string[] command)
    {
        var app = new CliApp(new CliRegistries(), CliIo.ForWriters(TextWriter.Null, TextWriter.Null));
        RootCommand root = Program.BuildRootCommand(app);
        string[] args = [.. command, "--json", "--trace", "t.json", "--plot", "p.png", "--ram", "1G", "--dax-dir", "/tmp/d", "--seed", "9", "--verbose"];
        ParseResult parse = root.Parse(args);
        Assert.Empty(parse.Errors);
        CliSettings s = app.Options.Read(parse, command[0]);
        Assert.True(s.Json);
        Assert.Equal("t.json", s.TracePath);
        Assert.Equal("p.png", s.PlotPath);
        Assert.Equal(1UL << 30, s.RamBytes);
        Assert.Equal("/tmp/d", s.DaxDir);
        Assert.Equal(9, s.Seed);
        Assert.True(s.SeedGiven);
        Assert.True(s.Verbose);
    }

    [Fact]
    public void WithoutOptionsTheDefaultsApply()
    {
        var app = new CliApp(new CliRegistries(), CliIo.ForWriters(TextWriter.Null, TextWriter.Null));
        CliSettings s = app.Options.Read(Program.BuildRootCommand(app).Parse(["demo"]), "demo");
        Assert.False(s.Json);
        Assert.Null(s.TracePath);
        Assert.Equal(256UL << 20, s.RamBytes);
        Assert.Equal(1, s.Seed);
        Assert.False(s.SeedGiven);
    }

    [Theory]
    [InlineData("demo", "--ram", "3M")]
    [InlineData("demo", "--ram", "banana")]
    [InlineData("demo", "--no-such-option")]
    [InlineData("nosuchcommand")]
    [InlineData("run")]
    [InlineData("demo", "--seed", "x")]
    [InlineData("demo", "--trace", "/no/such/dir/t.json")]
    [InlineData("stress", "--duration", "-1")]
    public async Task ACommandLineMistakePrintsOneLineOnStderrAndExitsWithTwo(params string[] args)
    {
        CliHost.Outcome r = await CliHost.RunAsync(new CliRegistries(), args);
        Assert.Equal(ExitCodes.Usage, r.ExitCode);
        string line = Assert.Single(r.ErrLines);
        Assert.StartsWith("hetmem: ", line, StringComparison.Ordinal);
        Assert.Equal("", r.Out);
    }

    [Fact]
    public async Task HelpDescribesTheCommandsAndShowsExamples()
    {
        CliHost.Outcome r = await CliHost.RunAsync(new CliRegistries(), "--help");
        Assert.Equal(0, r.ExitCode);
        foreach (string c in new[] { "demo", "run", "selftest", "bench", "stress", "--json", "--trace", "--plot", "--ram", "--dax-dir", "--seed", "--verbose", "Examples:" })
        {
            Assert.Contains(c, r.Out, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData("demo")]
    [InlineData("run")]
    [InlineData("selftest")]
    [InlineData("bench")]
    [InlineData("stress")]
    public async Task EachSubcommandHasHelpWithExamples(string command)
    {
        CliHost.Outcome r = await CliHost.RunAsync(new CliRegistries(), command, "--help");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("Examples:", r.Out, StringComparison.Ordinal);
        Assert.Contains("hetmem " + command, r.Out, StringComparison.Ordinal);
        Assert.Contains("--ram", r.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task HetmemAloneShowsTheHelp()
    {
        CliHost.Outcome r = await CliHost.RunAsync(new CliRegistries());
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("Usage:", r.Out, StringComparison.Ordinal);
    }
}
