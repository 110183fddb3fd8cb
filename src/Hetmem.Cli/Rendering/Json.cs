using System.Text;
using System.Text.Json;

namespace Hetmem.Cli.Rendering;

/// <summary>Writes the single JSON object of <c>--json</c> output.</summary>
internal static class Json
{
    /// <summary>Builds one JSON object with <paramref name="write"/> and writes it as one line to <paramref name="output"/>.</summary>
    public static void WriteObject(TextWriter output, Action<Utf8JsonWriter> write)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            write(w);
            w.WriteEndObject();
        }
        output.WriteLine(Encoding.UTF8.GetString(ms.ToArray()));
        output.Flush();
    }

    /// <summary>Writes a number, or null when it is missing or not finite.</summary>
    public static void NumberOrNull(Utf8JsonWriter w, string name, double? value)
    {
        if (value is { } v && double.IsFinite(v))
        {
            w.WriteNumber(name, Math.Round(v, 3));
        }
        else
        {
            w.WriteNull(name);
        }
    }
}
