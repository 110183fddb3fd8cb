using Spectre.Console;

namespace Hetmem.Cli;

/// <summary>Where a command writes: stdout (tables or JSON), stderr (errors and logs) and a Spectre console over stdout.</summary>
public sealed class CliIo
{
    private CliIo(TextWriter output, TextWriter error, IAnsiConsole ui, bool isTerminal)
    {
        Out = output;
        Err = error;
        Ui = ui;
        IsTerminal = isTerminal;
    }

    /// <summary>Standard output.</summary>
    public TextWriter Out { get; }

    /// <summary>Standard error.</summary>
    public TextWriter Err { get; }

    /// <summary>A Spectre console writing to <see cref="Out"/>.</summary>
    public IAnsiConsole Ui { get; }

    /// <summary>True when stdout is an interactive terminal (progress bars are shown only then).</summary>
    public bool IsTerminal { get; }

    /// <summary>The process's console.</summary>
    public static CliIo ForConsole()
    {
        bool terminal = !Console.IsOutputRedirected;
        IAnsiConsole ui = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(Console.Out),
            Interactive = terminal ? InteractionSupport.Detect : InteractionSupport.No,
        });
        if (!terminal)
        {
            ui.Profile.Width = 120;
        }
        return new CliIo(Console.Out, Console.Error, ui, terminal);
    }

    /// <summary>Plain writers without colours or terminal features (tests, embedding).</summary>
    public static CliIo ForWriters(TextWriter output, TextWriter error, int width = 120)
    {
        IAnsiConsole ui = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(output),
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        ui.Profile.Width = width;
        return new CliIo(output, error, ui, isTerminal: false);
    }
}
