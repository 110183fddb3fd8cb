using Hetmem.Hmm;
using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>
/// A chunk-sized range of a <see cref="GpuSvmNotifier"/> window, created on GPU fault and never split (kernel:
/// <c>struct drm_gpusvm_range</c> embedded in Xe's <c>struct xe_svm_range</c>). Its size is the largest chunk
/// (2 MiB, 64 KiB, 4 KiB) that, aligned around the faulting address, fits the VMA and the window and overlaps no
/// other range. It owns the page array filled by the get-pages helper (the "DMA mapping").
/// </summary>
/// <remarks>
/// Locking: <see cref="Start"/>, <see cref="End"/>, <see cref="Notifier"/>, <see cref="Migratable"/> and
/// <see cref="Writable"/> are immutable. The flags and the page array are protected by the SVM's
/// <see cref="GpuSvm.NotifierLock"/>; <see cref="Hmm"/> is used by the get-pages helper without it (only the GPU's
/// servicing thread calls that helper for a range, so no two walks of one range overlap).
/// </remarks>
public sealed class GpuSvmRange
{
    private readonly ulong[] _requests;   // per page request flags of the next get-pages call; servicing thread only

    internal GpuSvmRange(GpuSvmNotifier notifier, ulong start, ulong end, bool migratable, bool writable, object? devicePrivateOwner)
    {
        Notifier = notifier;
        Start = start;
        End = end;
        Migratable = migratable;
        Writable = writable;
        Hmm = new HmmRange(notifier.Interval, start, end)
        {
            DefaultFlags = HmmPfnFlags.None,
            PfnFlagsMask = HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite,
            DevPrivateOwner = devicePrivateOwner,
        };
        _requests = new ulong[Hmm.PageCount];
        ReloadRequests = _ => ReloadRequestsCore();
    }

    /// <summary>The notifier window holding this range.</summary>
    public GpuSvmNotifier Notifier { get; }
    /// <summary>First address (aligned to the range size).</summary>
    public ulong Start { get; }
    /// <summary>End address (exclusive).</summary>
    public ulong End { get; }
    /// <summary>Number of 4 KiB pages.</summary>
    public int PageCount => (int)((End - Start) >> Page.Shift);
    /// <summary>Private anonymous memory that may move to device memory (kernel: drm_gpusvm_range_flags.migrate_devmem); fixed at creation.</summary>
    public bool Migratable { get; }
    /// <summary>The VMA allowed writes when the range was created.</summary>
    public bool Writable { get; }
    /// <summary>The hmm_range whose <c>HmmPfns</c> is this range's page array (kernel: drm_gpusvm_pages.dma_addr).</summary>
    public HmmRange Hmm { get; }
    /// <summary>The notifier sequence the current pages were read under (kernel: drm_gpusvm_pages.notifier_seq).</summary>
    public long NotifierSeq { get; internal set; }

    /// <summary>Set by an UNMAP invalidation; the range is only waiting for the garbage collector (kernel: flags.unmapped).</summary>
    public bool Unmapped { get; internal set; }
    /// <summary>Only part of the range was unmapped; it is destroyed whole anyway (kernel: flags.partial_unmap).</summary>
    public bool PartialUnmap { get; internal set; }
    /// <summary>The page array holds valid mappings (kernel: flags.has_dma_mapping).</summary>
    public bool HasDmaMapping { get; internal set; }
    /// <summary>Some pages of the array are device (VRAM) pages (kernel: flags.has_devmem_pages).</summary>
    public bool HasDevmemPages { get; internal set; }
    /// <summary>GPU entries for the range exist (kernel: xe_svm_range.tile_present).</summary>
    public bool Bound { get; internal set; }

    internal bool InGc;                 // guarded by the notifier lock: queued for the garbage collector
    internal GpuSvmRange? GcNext;       // guarded by the notifier lock: next queued range
    internal bool Removed;              // guarded by the notifier lock: no longer in its notifier's list

    /// <summary>Reloads the request flags into the page array before each walk (given to the retry helper; allocated once).</summary>
    internal Action<int> ReloadRequests { get; }

    /// <summary>Clears every request (the next get-pages call only snapshots).</summary>
    public void ClearRequests() => Array.Clear(_requests);

    /// <summary>Asks get-pages to fault page <paramref name="index"/> in, writable when <paramref name="write"/>.</summary>
    public void Request(int index, bool write)
        => _requests[index] |= (ulong)HmmPfnFlags.ReqFault | (write ? (ulong)HmmPfnFlags.ReqWrite : 0);

    /// <summary>The request flags of page <paramref name="index"/>.</summary>
    public ulong RequestOf(int index) => _requests[index];

    private void ReloadRequestsCore()
    {
        ulong[] pfns = Hmm.HmmPfns;
        for (int i = 0; i < pfns.Length; i++)
        {
            pfns[i] = (pfns[i] & HmmPfn.Sticky) | _requests[i];
        }
    }

    /// <inheritdoc/>
    public override string ToString() => $"svm range [0x{Start:x}, 0x{End:x}){(Unmapped ? " unmapped" : "")}{(Bound ? " bound" : "")}";
}
