using Hetmem.Mm;

namespace Hetmem.Devices.Gpu;

/// <summary>
/// A fixed-size, aligned window of a <see cref="GpuSvm"/> that owns exactly one <see cref="MmuIntervalNotifier"/> and
/// the ranges created inside it (kernel: <c>struct drm_gpusvm_notifier</c>). Created on the first fault in the window,
/// removed when its last range goes.
/// </summary>
/// <remarks>
/// Locking: the range list is changed and walked under <see cref="GpuSvm.NotifierLock"/>; it is kept sorted by start
/// address so an invalidation finds the overlapping ranges by binary search without allocating.
/// </remarks>
public sealed class GpuSvmNotifier : IMmuIntervalNotifierOps
{
    private readonly List<GpuSvmRange> _ranges = [];   // guarded by the notifier lock; sorted by Start, disjoint

    internal GpuSvmNotifier(GpuSvm svm, ulong start, ulong end)
    {
        Svm = svm;
        Start = start;
        End = end;
    }

    /// <summary>The SVM this window belongs to.</summary>
    public GpuSvm Svm { get; }
    /// <summary>First address of the window.</summary>
    public ulong Start { get; }
    /// <summary>End of the window (exclusive).</summary>
    public ulong End { get; }
    /// <summary>The interval notifier watching the window (set right after insertion).</summary>
    public MmuIntervalNotifier Interval { get; internal set; } = null!;
    /// <summary>True once the window was taken out of its SVM (kernel: drm_gpusvm_notifier.flags.removed).</summary>
    public bool Removed { get; internal set; }

    /// <summary>Number of ranges in the window (under the notifier lock).</summary>
    public int RangeCountLocked => _ranges.Count;

    /// <summary>
    /// The interval-notifier callback (kernel: <c>drm_gpusvm_notifier_invalidate</c>): takes the notifier lock
    /// (try-lock for a non-blockable range), publishes the new sequence, then lets the driver zap.
    /// </summary>
    public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
    {
        Lock l = Svm.NotifierLock;
        if (range.Blockable)
        {
            l.Enter();
        }
        else if (!l.TryEnter())
        {
            return false;
        }
        try
        {
            subscription.SetSeq(curSeq);
            Svm.Ops.Invalidate(Svm, this, range);
        }
        finally
        {
            l.Exit();
        }
        return true;
    }

    /// <summary>Index of the first range whose end is above <paramref name="address"/>.</summary>
    private int LowerBound(ulong address)
    {
        int lo = 0, hi = _ranges.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (_ranges[mid].End <= address)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid;
            }
        }
        return lo;
    }

    /// <summary>The range containing <paramref name="address"/>, or null (caller holds the notifier lock or is the only mutator).</summary>
    public GpuSvmRange? FindLocked(ulong address)
    {
        int i = LowerBound(address);
        return i < _ranges.Count && _ranges[i].Start <= address ? _ranges[i] : null;
    }

    /// <summary>True when some range overlaps [<paramref name="start"/>, <paramref name="end"/>).</summary>
    public bool OverlapsLocked(ulong start, ulong end)
    {
        int i = LowerBound(start);
        return i < _ranges.Count && _ranges[i].Start < end;
    }

    /// <summary>
    /// Calls <paramref name="visit"/> for each range overlapping [<paramref name="start"/>, <paramref name="end"/>)
    /// (kernel: drm_gpusvm_for_each_range). Caller holds the notifier lock; the visitor must not add or remove ranges.
    /// </summary>
    public void ForEachLocked<TVisitor>(ulong start, ulong end, ref TVisitor visit) where TVisitor : struct, IGpuSvmRangeVisitor
    {
        for (int i = LowerBound(start); i < _ranges.Count && _ranges[i].Start < end; i++)
        {
            visit.Visit(_ranges[i]);
        }
    }

    internal void InsertLocked(GpuSvmRange r) => _ranges.Insert(LowerBound(r.Start), r);

    internal void RemoveLocked(GpuSvmRange r)
    {
        int i = LowerBound(r.Start);
        if (i < _ranges.Count && ReferenceEquals(_ranges[i], r))
        {
            _ranges.RemoveAt(i);
        }
    }

    internal void CopyRangesLocked(List<GpuSvmRange> into) => into.AddRange(_ranges);

    /// <inheritdoc/>
    public override string ToString() => $"svm notifier [0x{Start:x}, 0x{End:x}) {_ranges.Count} ranges";
}

/// <summary>A struct callback over ranges, so walking ranges inside an invalidation allocates nothing.</summary>
public interface IGpuSvmRangeVisitor
{
    /// <summary>Called for one range, with the notifier lock held.</summary>
    void Visit(GpuSvmRange range);
}
