namespace Hetmem.Physical;

/// <summary>Page-size constants of the x86-64 4-level layout (kernel: PAGE_SIZE, PMD_SIZE, PUD_SIZE).</summary>
public static class Page
{
    /// <summary>log2 of the base page size.</summary>
    public const int Shift = 12;
    /// <summary>Base page size, 4 KiB.</summary>
    public const int Size = 1 << Shift;
    /// <summary>Mask of the page-offset bits.</summary>
    public const ulong OffsetMask = Size - 1;
    /// <summary>Order of a PMD mapping (2 MiB = 2^9 pages).</summary>
    public const int PmdOrder = 9;
    /// <summary>Order of a PUD mapping (1 GiB = 2^18 pages).</summary>
    public const int PudOrder = 18;
    /// <summary>log2 of the PMD size.</summary>
    public const int PmdShift = Shift + PmdOrder;
    /// <summary>log2 of the PUD size.</summary>
    public const int PudShift = Shift + PudOrder;
    /// <summary>2 MiB.</summary>
    public const ulong PmdSize = 1UL << PmdShift;
    /// <summary>1 GiB.</summary>
    public const ulong PudSize = 1UL << PudShift;
    /// <summary>A PFN value meaning "no frame" (kernel: NULL page).</summary>
    public const ulong NoPfn = ulong.MaxValue;

    /// <summary>Bytes covered by a mapping of <paramref name="order"/> (2^order base pages).</summary>
    public static ulong Bytes(int order) => 1UL << (Shift + order);

    /// <summary>Rounds <paramref name="value"/> down to a multiple of <paramref name="size"/> (a power of two).</summary>
    public static ulong AlignDown(ulong value, ulong size) => value & ~(size - 1);

    /// <summary>Rounds <paramref name="value"/> up to a multiple of <paramref name="size"/> (a power of two); wraps to 0 on overflow.</summary>
    public static ulong AlignUp(ulong value, ulong size) => (value + size - 1) & ~(size - 1);

    /// <summary>True when <paramref name="value"/> is a multiple of <paramref name="size"/> (a power of two).</summary>
    public static bool IsAligned(ulong value, ulong size) => (value & (size - 1)) == 0;
}
