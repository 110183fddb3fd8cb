using System.Runtime.CompilerServices;

namespace Hetmem.Hmm;

/// <summary>
/// Flag bits of an <c>hmm_pfns</c> entry, 6.15+ layout (kernel: enum hmm_pfn_flags). The same bits are requests on
/// input (REQ_FAULT = VALID, REQ_WRITE = WRITE) and results on output.
/// </summary>
[Flags]
public enum HmmPfnFlags : ulong
{
    /// <summary>No flag.</summary>
    None = 0,
    /// <summary>Output: the PFN is valid and at least readable. Input: the page must be made valid (fault if needed).</summary>
    Valid = 1UL << 63,
    /// <summary>Input alias of <see cref="Valid"/>: fault the page in if needed.</summary>
    ReqFault = Valid,
    /// <summary>Output: the CPU mapping is writable. Input (with ReqFault): the page must be writable.</summary>
    Write = 1UL << 62,
    /// <summary>Input alias of <see cref="Write"/>.</summary>
    ReqWrite = Write,
    /// <summary>Output: no valid entry can exist here (no VMA, VM_IO/VM_PFNMAP, unreadable VMA, special mapping).</summary>
    Error = 1UL << 61,
    /// <summary>Sticky: the entry has a DMA mapping; preserved across <c>HmmRange.Fault</c>.</summary>
    DmaMapped = 1UL << 60,
    /// <summary>Sticky: peer-to-peer page mapped through the host bridge.</summary>
    P2pDma = 1UL << 59,
    /// <summary>Sticky: peer-to-peer bus address mapping.</summary>
    P2pDmaBus = 1UL << 58,
}

/// <summary>Helpers for <c>hmm_pfns</c> entries (kernel: hmm_pfn_to_page, hmm_pfn_to_map_order).</summary>
public static class HmmPfn
{
    /// <summary>First bit of the 5-bit order field (kernel: HMM_PFN_ORDER_SHIFT = 64 − 11).</summary>
    public const int OrderShift = 53;
    /// <summary>All flag bits, including the order field (kernel: HMM_PFN_FLAGS).</summary>
    public const ulong FlagsMask = 0x7FFUL << OrderShift;
    /// <summary>Bits kept from the input value on output (kernel: HMM_PFN_INOUT_FLAGS).</summary>
    public const ulong Sticky = (ulong)(HmmPfnFlags.DmaMapped | HmmPfnFlags.P2pDma | HmmPfnFlags.P2pDmaBus);

    /// <summary>The PFN of an output entry.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong ToPfn(ulong entry) => entry & ~FlagsMask;

    /// <summary>The mapping order of an output entry: 0 (PTE), 9 (PMD) or 18 (PUD) (kernel: hmm_pfn_to_map_order).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int MapOrder(ulong entry) => (int)((entry >> OrderShift) & 0x1F);

    /// <summary>True when the entry has <paramref name="flag"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool Has(ulong entry, HmmPfnFlags flag) => (entry & (ulong)flag) != 0;

    /// <summary>Builds an output entry.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Make(ulong pfn, bool write, int order) => pfn | (ulong)HmmPfnFlags.Valid | (write ? (ulong)HmmPfnFlags.Write : 0) | ((ulong)order << OrderShift);
}
