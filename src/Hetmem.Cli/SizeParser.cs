using System.Globalization;

namespace Hetmem.Cli;

/// <summary>Parses sizes such as <c>256M</c>, <c>1G</c>, <c>512MiB</c>, <c>4096k</c> or plain bytes.</summary>
public static class SizeParser
{
    /// <summary>Parses <paramref name="text"/>; suffixes K, M, G, T (optionally followed by <c>iB</c> or <c>B</c>) are powers of 1024.</summary>
    /// <returns>False with an <paramref name="error"/> when the text is not a size.</returns>
    public static bool TryParse(string? text, out ulong bytes, out string? error)
    {
        bytes = 0;
        error = null;
        string s = (text ?? "").Trim();
        if (s.Length == 0)
        {
            error = "a size is required (for example 256M or 1G)";
            return false;
        }
        int end = s.Length;
        string upper = s.ToUpperInvariant();
        if (upper.EndsWith("IB", StringComparison.Ordinal))
        {
            end -= 2;
        }
        else if (upper.EndsWith('B') && end >= 2 && char.IsLetter(upper[end - 2]))
        {
            end -= 1;
        }
        int shift = 0;
        if (end > 0)
        {
            shift = char.ToUpperInvariant(s[end - 1]) switch
            {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => 0,
            };
            if (shift != 0)
            {
                end--;
            }
        }
        if (end != s.Length && shift == 0 && !upper.EndsWith('B'))
        {
            error = $"'{text}' is not a size (use a number with an optional K, M, G or T suffix, for example 256M)";
            return false;
        }
        if (!ulong.TryParse(s.AsSpan(0, end), NumberStyles.None, CultureInfo.InvariantCulture, out ulong n))
        {
            error = $"'{text}' is not a size (use a number with an optional K, M, G or T suffix, for example 256M)";
            return false;
        }
        if (shift > 0 && n > (ulong.MaxValue >> shift))
        {
            error = $"'{text}' is too large";
            return false;
        }
        bytes = n << shift;
        return true;
    }

    /// <summary>Formats a byte count the way <see cref="TryParse"/> reads it (e.g. <c>256M</c>).</summary>
    public static string Format(ulong bytes)
    {
        foreach ((int shift, string unit) in new[] { (40, "T"), (30, "G"), (20, "M"), (10, "K") })
        {
            if (bytes != 0 && bytes % (1UL << shift) == 0)
            {
                return (bytes >> shift).ToString(CultureInfo.InvariantCulture) + unit;
            }
        }
        return bytes.ToString(CultureInfo.InvariantCulture);
    }
}
