using System.Runtime.CompilerServices;

namespace Hetmem.Mm;

/// <summary>Kinds of non-present ("swap") entries (kernel: the swap entry types of swapops.h).</summary>
public enum SwapEntryType : byte
{
    /// <summary>Not a non-present entry.</summary>
    None = 0,
    /// <summary>A real swap slot.</summary>
    Swap = 1,
    /// <summary>A page under migration; accessors wait.</summary>
    Migration = 2,
    /// <summary>A page in device-private memory.</summary>
    DevicePrivate = 3,
    /// <summary>A page held exclusively by a device.</summary>
    DeviceExclusive = 4,
    /// <summary>A poisoned page.</summary>
    HwPoison = 5,
}

/// <summary>
/// A 64-bit page-table entry at any level, x86-64 shaped (kernel: pte_t/pmd_t/pud_t plus swp_entry_t).
/// Present: bit 0 P, bit 1 RW, bit 5 A, bit 6 D, bit 7 PS (leaf PMD/PUD), bit 9 special, bit 10 devmap,
/// bits 12..51 PFN. Non-present and non-zero: bits 1..4 type, bit 5 writable, bit 7 huge, bits 12..51 offset/PFN.
/// </summary>
public readonly struct Pte : IEquatable<Pte>
{
    /// <summary>Present bit.</summary>
    public const ulong Present = 1UL << 0;
    /// <summary>Writable bit.</summary>
    public const ulong Write = 1UL << 1;
    /// <summary>Accessed bit.</summary>
    public const ulong Accessed = 1UL << 5;
    /// <summary>Dirty bit.</summary>
    public const ulong Dirty = 1UL << 6;
    /// <summary>Page-size bit: a leaf at PMD or PUD level.</summary>
    public const ulong Huge = 1UL << 7;
    /// <summary>Special: maps a PFN without page metadata semantics (VM_PFNMAP / raw insert).</summary>
    public const ulong Special = 1UL << 9;
    /// <summary>Devmap: maps a ZONE_DEVICE frame (DAX, coherent).</summary>
    public const ulong DevMap = 1UL << 10;
    /// <summary>PROT_NONE marker: not present for the hardware, but still maps the page (x86 _PAGE_PROTNONE).</summary>
    public const ulong ProtNone = 1UL << 8;
    /// <summary>PFN field mask.</summary>
    public const ulong PfnMask = ((1UL << 52) - 1) & ~0xFFFUL;
    private const ulong SwapWrite = 1UL << 5;
    private const int TypeShift = 1;
    private const ulong TypeMask = 0xFUL << TypeShift;

    /// <summary>The raw value.</summary>
    public readonly ulong Value;

    /// <summary>Wraps a raw value.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Pte(ulong value) => Value = value;

    /// <summary>The empty entry.</summary>
    public static Pte None => default;

    /// <summary>True for the empty entry.</summary>
    public bool IsNone => Value == 0;
    /// <summary>True for a present entry.</summary>
    public bool IsPresent => (Value & Present) != 0;
    /// <summary>True for a PROT_NONE entry that still maps its page.</summary>
    public bool IsProtNone => (Value & (Present | ProtNone)) == ProtNone;
    /// <summary>True when the entry maps a page (present or PROT_NONE): it holds a reference and a map count.</summary>
    public bool MapsPage => (Value & (Present | ProtNone)) != 0;
    /// <summary>True for a present, writable entry.</summary>
    public bool IsWritable => (Value & (Present | Write)) == (Present | Write);
    /// <summary>True for a present leaf at PMD/PUD level.</summary>
    public bool IsHugeLeaf => (Value & (Present | Huge)) == (Present | Huge);
    /// <summary>True for a present entry with the dirty bit.</summary>
    public bool IsDirty => (Value & Dirty) != 0;
    /// <summary>True for a special (no page semantics) entry.</summary>
    public bool IsSpecial => (Value & Special) != 0;
    /// <summary>True for a devmap entry.</summary>
    public bool IsDevMap => (Value & DevMap) != 0;
    /// <summary>The PFN (present entries) or the offset/PFN of a non-present entry.</summary>
    public ulong Pfn => (Value & PfnMask) >> 12;
    /// <summary>Type of a non-present entry (None for present or empty entries).</summary>
    public SwapEntryType SwapType => MapsPage || Value == 0 ? SwapEntryType.None : (SwapEntryType)((Value & TypeMask) >> TypeShift);
    /// <summary>Write permission carried by a migration, device-private or device-exclusive entry.</summary>
    public bool SwapWritable => !MapsPage && (Value & SwapWrite) != 0;
    /// <summary>Huge flag of a non-present PMD entry (PMD migration entry).</summary>
    public bool SwapHuge => !MapsPage && (Value & Huge) != 0;

    /// <summary>Makes a present entry.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Pte Make(ulong pfn, bool writable, ulong extra = 0) => new((pfn << 12) | Present | Accessed | (writable ? Write : 0) | extra);

    /// <summary>Makes a non-present entry of <paramref name="type"/>.</summary>
    public static Pte MakeSwap(SwapEntryType type, ulong offset, bool writable, bool huge = false)
        => new((offset << 12) | ((ulong)type << TypeShift) | (writable ? SwapWrite : 0) | (huge ? Huge : 0));

    /// <summary>This entry with the write bit cleared.</summary>
    public Pte WriteProtect() => new(Value & ~Write);
    /// <summary>This entry with the given bits set.</summary>
    public Pte With(ulong bits) => new(Value | bits);
    /// <summary>This entry with the given bits cleared.</summary>
    public Pte Without(ulong bits) => new(Value & ~bits);

    /// <inheritdoc/>
    public bool Equals(Pte other) => Value == other.Value;
    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is Pte p && Equals(p);
    /// <inheritdoc/>
    public override int GetHashCode() => Value.GetHashCode();
    /// <summary>Equality.</summary>
    public static bool operator ==(Pte a, Pte b) => a.Value == b.Value;
    /// <summary>Inequality.</summary>
    public static bool operator !=(Pte a, Pte b) => a.Value != b.Value;
    /// <inheritdoc/>
    public override string ToString() => IsPresent
        ? $"pte(pfn=0x{Pfn:x}{(IsWritable ? " W" : "")}{(IsDirty ? " D" : "")}{(IsHugeLeaf ? " PS" : "")}{(IsDevMap ? " devmap" : "")}{(IsSpecial ? " special" : "")})"
        : IsNone ? "pte(none)" : $"swp({SwapType} 0x{Pfn:x}{(SwapWritable ? " W" : "")})";
}
