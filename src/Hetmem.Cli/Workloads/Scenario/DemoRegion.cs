using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Cli.Workloads.Scenario;

/// <summary>
/// One mapped region of a scenario and the data it is expected to hold: every page carries three 8-byte words (at
/// offsets 0, 2048 and 4088) whose values follow from the seed, the region, the page and the page's generation, so
/// any reader (a CPU, a device, a forked child) can check what it sees without a copy of the data.
/// </summary>
internal sealed class DemoRegion
{
    /// <summary>Byte offsets of the checked words inside a page.</summary>
    public static readonly ulong[] WordOffsets = [0, 2048, Page.Size - 8];

    private readonly int[] _gen;   // written by one thread per page (pages are split between threads), read after a join

    public DemoRegion(string name, VmaKind kind, ulong start, ulong length, int index, int seed)
    {
        Name = name;
        Kind = kind;
        Start = start;
        Length = length;
        Index = index;
        Seed = seed;
        _gen = new int[length >> Page.Shift];
    }

    private DemoRegion(DemoRegion other)
    {
        Name = other.Name;
        Kind = other.Kind;
        Start = other.Start;
        Length = other.Length;
        Index = other.Index;
        Seed = other.Seed;
        _gen = (int[])other._gen.Clone();
    }

    public string Name { get; }

    public VmaKind Kind { get; }

    public ulong Start { get; }

    public ulong Length { get; }

    public ulong End => Start + Length;

    public int Index { get; }

    public int Seed { get; }

    public ulong Pages => Length >> Page.Shift;

    /// <summary>A copy of the expectations (a fork child's view of a private region).</summary>
    public DemoRegion Clone() => new(this);

    public ulong PageAddress(ulong page) => Start + (page << Page.Shift);

    public ulong WordAddress(ulong page, int word) => PageAddress(page) + WordOffsets[word];

    public int Generation(ulong page) => _gen[page];

    /// <summary>Moves <paramref name="page"/> to its next generation and returns it.</summary>
    public int Bump(ulong page) => ++_gen[page];

    /// <summary>Sets the generation of <paramref name="page"/> (to mirror a write seen through a shared mapping).</summary>
    public void SetGeneration(ulong page, int gen) => _gen[page] = gen;

    /// <summary>The value word <paramref name="word"/> of <paramref name="page"/> holds at generation <paramref name="gen"/>; 0 at generation 0 (never written).</summary>
    public long Expected(ulong page, int word, int gen)
    {
        if (gen == 0)
        {
            return 0;
        }
        ulong x = ((ulong)(uint)Seed << 32) ^ ((ulong)Index << 56) ^ (page << 12) ^ ((ulong)word << 8) ^ (ulong)gen;
        x += 0x9E3779B97F4A7C15UL;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
        x ^= x >> 31;
        return (long)(x | 1); // never 0, so a zero-filled page never passes for written data
    }

    /// <summary>The value the word holds now.</summary>
    public long Expected(ulong page, int word) => Expected(page, word, _gen[page]);

    /// <summary>True when [<paramref name="start"/>, <paramref name="end"/>) lies in the region.</summary>
    public bool Contains(ulong start, ulong end) => start >= Start && end <= End;

    public override string ToString() => $"{Name} [0x{Start:x}, 0x{End:x})";
}
