namespace Hetmem.Hmm;

/// <summary>
/// A driver-defined entry encoding of the 5.1-era API (kernel 5.1: the <c>flags[]</c>, <c>values[]</c> and
/// <c>pfn_shift</c> fields of struct hmm_range). An entry holding a page is <c>(pfn &lt;&lt; PfnShift) | flag bits</c>;
/// the three outcomes without a page are whole entry values chosen by the driver. Immutable.
/// </summary>
public sealed class HmmPfnEncoding
{
    /// <summary>Creates an encoding.</summary>
    /// <param name="valid">Bit meaning "valid page" on output and "fault it in" on input (kernel: flags[HMM_PFN_VALID]).</param>
    /// <param name="write">Bit meaning "writable" on output and "fault for write" on input (kernel: flags[HMM_PFN_WRITE]).</param>
    /// <param name="devicePrivate">Bit meaning "device-private page" on output and "fault device-private pages back too" on
    /// input (kernel: flags[HMM_PFN_DEVICE_PRIVATE]).</param>
    /// <param name="error">Entry value for "no page can ever be mapped here" (kernel: values[HMM_PFN_ERROR]).</param>
    /// <param name="none">Entry value for "nothing mapped now" (kernel: values[HMM_PFN_NONE]).</param>
    /// <param name="special">Entry value for a special mapping without a page (kernel: values[HMM_PFN_SPECIAL]); may equal <paramref name="error"/>.</param>
    /// <param name="pfnShift">Where the PFN starts in an entry (kernel: pfn_shift); every flag bit must lie below it.</param>
    /// <exception cref="ArgumentException">A flag is zero, two flags share a bit, a flag lies at or above <paramref name="pfnShift"/>,
    /// <paramref name="pfnShift"/> is outside 0..11, or <paramref name="none"/> equals <paramref name="error"/> or <paramref name="special"/>.</exception>
    public HmmPfnEncoding(ulong valid, ulong write, ulong devicePrivate, ulong error, ulong none, ulong special, int pfnShift)
    {
        if (pfnShift is < 0 or > 11)
        {
            throw new ArgumentException($"pfn_shift {pfnShift} leaves no room for a 52-bit PFN", nameof(pfnShift));
        }
        ulong flagsSpace = pfnShift == 0 ? 0 : (1UL << pfnShift) - 1;
        foreach ((ulong f, string name) in new[] { (valid, nameof(valid)), (write, nameof(write)), (devicePrivate, nameof(devicePrivate)) })
        {
            if (f == 0 || (f & ~flagsSpace) != 0)
            {
                throw new ArgumentException($"flag {name}=0x{f:x} must be non-zero and below bit {pfnShift}", name);
            }
        }
        if ((valid & write) != 0 || (valid & devicePrivate) != 0 || (write & devicePrivate) != 0)
        {
            throw new ArgumentException("the VALID, WRITE and DEVICE_PRIVATE flags must be distinct bits");
        }
        if (none == error || none == special)
        {
            throw new ArgumentException("values[NONE] must differ from values[ERROR] and values[SPECIAL]", nameof(none));
        }
        Valid = valid;
        Write = write;
        DevicePrivate = devicePrivate;
        Error = error;
        None = none;
        Special = special;
        PfnShift = pfnShift;
    }

    /// <summary>kernel: flags[HMM_PFN_VALID].</summary>
    public ulong Valid { get; }
    /// <summary>kernel: flags[HMM_PFN_WRITE].</summary>
    public ulong Write { get; }
    /// <summary>kernel: flags[HMM_PFN_DEVICE_PRIVATE].</summary>
    public ulong DevicePrivate { get; }
    /// <summary>kernel: values[HMM_PFN_ERROR].</summary>
    public ulong Error { get; }
    /// <summary>kernel: values[HMM_PFN_NONE].</summary>
    public ulong None { get; }
    /// <summary>kernel: values[HMM_PFN_SPECIAL].</summary>
    public ulong Special { get; }
    /// <summary>kernel: pfn_shift.</summary>
    public int PfnShift { get; }

    /// <summary>The nouveau-style encoding of the 2019 driver: V/W/VRAM in bits 0–2, NONE = 0, ERROR = SPECIAL = ~V, PFN from bit 8.</summary>
    public static HmmPfnEncoding NouveauStyle { get; } = new(1UL << 0, 1UL << 1, 1UL << 2, ~1UL, 0, ~1UL, 8);

    /// <summary>Encodes a valid page (kernel: hmm_device_entry_from_pfn).</summary>
    /// <param name="pfn">The page frame number.</param>
    /// <returns><c>(pfn &lt;&lt; PfnShift) | Valid</c>.</returns>
    public ulong FromPfn(ulong pfn) => (pfn << PfnShift) | Valid;

    /// <summary>Decodes an entry (kernel: hmm_device_entry_to_pfn).</summary>
    /// <param name="entry">An entry of <see cref="HmmMirrorRange.Pfns"/>.</param>
    /// <returns>The PFN, or <see cref="ulong.MaxValue"/> (the kernel's -1) when the entry is one of the three values or lacks <see cref="Valid"/>.</returns>
    public ulong ToPfn(ulong entry)
        => entry == None || entry == Error || entry == Special || (entry & Valid) == 0 ? ulong.MaxValue : entry >> PfnShift;

    /// <summary>True when the entry holds a page with <see cref="Write"/>.</summary>
    /// <param name="entry">An entry.</param>
    /// <returns>True for a writable page entry.</returns>
    public bool IsWritable(ulong entry) => ToPfn(entry) != ulong.MaxValue && (entry & Write) != 0;
}
