using System.Numerics;
using System.Runtime.CompilerServices;

namespace Hetmem.Devices.Gpu;

/// <summary>
/// A 512-bit page mask over one 2 MiB block of 4 KiB pages (kernel: UVM <c>uvm_page_mask_t</c> for a
/// <c>uvm_va_block_t</c>). A value type without heap storage: copying it copies the bits.
/// </summary>
public struct BlockMask : IEquatable<BlockMask>
{
    /// <summary>Pages in a block (2 MiB / 4 KiB).</summary>
    public const int Pages = 512;
    private const int WordCount = Pages / 64;

    [InlineArray(WordCount)]
    private struct Words
    {
        private ulong _element0;
    }

    private Words _words;

    /// <summary>True when page <paramref name="page"/> is set.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly bool Get(int page) => (_words[page >> 6] & (1UL << page)) != 0;

    /// <summary>Sets page <paramref name="page"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Set(int page) => _words[page >> 6] |= 1UL << page;

    /// <summary>Clears page <paramref name="page"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Clear(int page) => _words[page >> 6] &= ~(1UL << page);

    /// <summary>Sets pages [<paramref name="first"/>, <paramref name="outer"/>).</summary>
    public void SetRange(int first, int outer)
    {
        for (int p = first; p < outer;)
        {
            int bit = p & 63;
            int n = Math.Min(64 - bit, outer - p);
            ulong m = n == 64 ? ulong.MaxValue : ((1UL << n) - 1) << bit;
            _words[p >> 6] |= m;
            p += n;
        }
    }

    /// <summary>Clears every page.</summary>
    public void ClearAll()
    {
        for (int i = 0; i < WordCount; i++)
        {
            _words[i] = 0;
        }
    }

    /// <summary>Number of set pages in [<paramref name="first"/>, <paramref name="outer"/>).</summary>
    public readonly int CountRange(int first, int outer)
    {
        int c = 0;
        for (int p = first; p < outer;)
        {
            int bit = p & 63;
            int n = Math.Min(64 - bit, outer - p);
            ulong m = n == 64 ? ulong.MaxValue : ((1UL << n) - 1) << bit;
            c += BitOperations.PopCount(_words[p >> 6] & m);
            p += n;
        }
        return c;
    }

    /// <summary>Number of set pages.</summary>
    public readonly int Count
    {
        get
        {
            int c = 0;
            for (int i = 0; i < WordCount; i++)
            {
                c += BitOperations.PopCount(_words[i]);
            }
            return c;
        }
    }

    /// <summary>True when no page is set.</summary>
    public readonly bool IsEmpty
    {
        get
        {
            for (int i = 0; i < WordCount; i++)
            {
                if (_words[i] != 0)
                {
                    return false;
                }
            }
            return true;
        }
    }

    /// <summary>This |= <paramref name="other"/>.</summary>
    public void Or(in BlockMask other)
    {
        for (int i = 0; i < WordCount; i++)
        {
            _words[i] |= other._words[i];
        }
    }

    /// <summary>This &amp;= ~<paramref name="other"/>.</summary>
    public void AndNot(in BlockMask other)
    {
        for (int i = 0; i < WordCount; i++)
        {
            _words[i] &= ~other._words[i];
        }
    }

    /// <summary>This &amp;= <paramref name="other"/>.</summary>
    public void And(in BlockMask other)
    {
        for (int i = 0; i < WordCount; i++)
        {
            _words[i] &= other._words[i];
        }
    }

    /// <summary>True when some page in [<paramref name="first"/>, <paramref name="outer"/>) is set.</summary>
    public readonly bool AnyInRange(int first, int outer) => CountRange(first, outer) != 0;

    /// <summary>The first set page at or after <paramref name="from"/>, or <see cref="Pages"/> when none.</summary>
    public readonly int NextSet(int from)
    {
        while (from < Pages)
        {
            ulong w = _words[from >> 6] >> (from & 63);
            if (w != 0)
            {
                return from + BitOperations.TrailingZeroCount(w);
            }
            from = (from | 63) + 1;
        }
        return Pages;
    }

    /// <inheritdoc/>
    public readonly bool Equals(BlockMask other)
    {
        for (int i = 0; i < WordCount; i++)
        {
            if (_words[i] != other._words[i])
            {
                return false;
            }
        }
        return true;
    }

    /// <inheritdoc/>
    public override readonly bool Equals(object? obj) => obj is BlockMask m && Equals(m);

    /// <inheritdoc/>
    public override readonly int GetHashCode()
    {
        var h = new HashCode();
        for (int i = 0; i < WordCount; i++)
        {
            h.Add(_words[i]);
        }
        return h.ToHashCode();
    }

    /// <summary>Bitwise equality.</summary>
    public static bool operator ==(BlockMask a, BlockMask b) => a.Equals(b);

    /// <summary>Bitwise inequality.</summary>
    public static bool operator !=(BlockMask a, BlockMask b) => !a.Equals(b);

    /// <inheritdoc/>
    public override readonly string ToString()
    {
        var parts = new List<string>();
        int p = NextSet(0);
        while (p < Pages)
        {
            int q = p;
            while (q + 1 < Pages && Get(q + 1))
            {
                q++;
            }
            parts.Add(p == q ? $"{p}" : $"{p}-{q}");
            p = NextSet(q + 1);
        }
        return "{" + string.Join(",", parts) + "}";
    }
}
