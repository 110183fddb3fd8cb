using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Hmm;

/// <summary>
/// A request to snapshot or fault a VA range into device-usable entries (kernel: struct hmm_range and
/// hmm_range_fault). Reuse one object per device window: <see cref="Fault"/> allocates nothing.
/// </summary>
/// <remarks>
/// Overview: read the notifier sequence with <see cref="MmuIntervalNotifier.ReadBegin"/>, store it in
/// <see cref="NotifierSeq"/>, call <see cref="Fault"/> under the mmap read lock, then take the driver's update lock
/// and check <see cref="MmuIntervalNotifier.ReadRetry"/> before programming device entries from
/// <see cref="HmmPfns"/>. <see cref="HmmMirrorHelper.FaultAndProgram"/> is that loop, written once.
/// Locking: the object is not thread-safe; one thread uses it at a time.
/// </remarks>
public sealed partial class HmmRange
{
    private MmuIntervalNotifier? _notifier;   // null only for the 5.1 facade's internal ranges
    private AddressSpace _space;              // the address space walked (the notifier's)

    /// <summary>Creates a range over [<paramref name="start"/>, <paramref name="end"/>) watched by <paramref name="notifier"/>.</summary>
    /// <param name="notifier">The interval notifier covering the range.</param>
    /// <param name="start">First address (page aligned).</param>
    /// <param name="end">End address (exclusive, page aligned, above <paramref name="start"/>).</param>
    /// <param name="hmmPfns">The entry array (one per page), or null to allocate one.</param>
    /// <exception cref="ArgumentException">Unaligned or empty range, or an entry array of the wrong size.</exception>
    public HmmRange(MmuIntervalNotifier notifier, ulong start, ulong end, ulong[]? hmmPfns = null)
    {
        ArgumentNullException.ThrowIfNull(notifier);
        _notifier = notifier;
        _space = notifier.Space;
        HmmPfns = [];
        SetRange(start, end, hmmPfns);
    }

    /// <summary>A range without an interval notifier whose staleness is the 5.1 range's <c>valid</c> flag.</summary>
    internal HmmRange(AddressSpace space, HmmMirrorRange legacy, ulong start, ulong end, ulong[] hmmPfns)
    {
        _space = space;
        _legacy = legacy;
        HmmPfns = [];
        SetRange(start, end, hmmPfns);
        PfnFlagsMask = (HmmPfnFlags)ulong.MaxValue;
    }

    /// <summary>The interval notifier covering the range; its address space is the one walked.</summary>
    /// <exception cref="ArgumentNullException">Set to null.</exception>
    /// <exception cref="InvalidOperationException">Read on an internal range of the 5.1 facade, which has none.</exception>
    public MmuIntervalNotifier Notifier
    {
        get => _notifier ?? throw new InvalidOperationException("this range belongs to the 5.1 facade and has no interval notifier");
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            _notifier = value;
            _space = value.Space;
        }
    }

    /// <summary>The address space walked (the notifier's).</summary>
    public AddressSpace Space => _space;
    /// <summary>Sequence from <see cref="MmuIntervalNotifier.ReadBegin"/>; <see cref="Fault"/> returns EBUSY when it moved.</summary>
    public long NotifierSeq { get; set; }
    /// <summary>First address (page aligned).</summary>
    public ulong Start { get; private set; }
    /// <summary>End address (exclusive, page aligned).</summary>
    public ulong End { get; private set; }
    /// <summary>One entry per page: request flags on input, PFN | flags | order on output (kernel: hmm_pfns).</summary>
    public ulong[] HmmPfns { get; private set; }
    /// <summary>Request flags applied to every page (kernel: default_flags).</summary>
    public HmmPfnFlags DefaultFlags { get; set; }
    /// <summary>Which input bits of each entry are honoured (kernel: pfn_flags_mask).</summary>
    public HmmPfnFlags PfnFlagsMask { get; set; }
    /// <summary>Device-private pages whose page map owner equals this are reported instead of faulted (kernel: dev_private_owner). Null matches nothing.</summary>
    public object? DevPrivateOwner { get; set; }
    /// <summary>Number of pages.</summary>
    public int PageCount => (int)((End - Start) >> Page.Shift);

    /// <summary>Re-targets the range (reusing the entry array when it is large enough).</summary>
    /// <param name="start">First address (page aligned).</param>
    /// <param name="end">End address (exclusive, page aligned, above <paramref name="start"/>).</param>
    /// <param name="hmmPfns">The entry array (one per page), or null to reuse the current one when its size fits.</param>
    /// <exception cref="ArgumentException">Unaligned, empty or reversed range, more than <see cref="int.MaxValue"/> pages,
    /// or an entry array of the wrong size.</exception>
    public void SetRange(ulong start, ulong end, ulong[]? hmmPfns = null)
    {
        if (!Page.IsAligned(start, Page.Size) || !Page.IsAligned(end, Page.Size) || end <= start)
        {
            throw new ArgumentException($"range [0x{start:x}, 0x{end:x}) must be non-empty and page aligned");
        }
        if ((end - start) >> Page.Shift > int.MaxValue)
        {
            throw new ArgumentException($"range [0x{start:x}, 0x{end:x}) has more pages than an entry array can hold");
        }
        int n = (int)((end - start) >> Page.Shift);
        if (hmmPfns is not null && hmmPfns.Length != n)
        {
            throw new ArgumentException($"hmm_pfns has {hmmPfns.Length} entries, the range has {n} pages");
        }
        Start = start;
        End = end;
        HmmPfns = hmmPfns ?? (HmmPfns.Length == n ? HmmPfns : new ulong[n]);
    }
}
