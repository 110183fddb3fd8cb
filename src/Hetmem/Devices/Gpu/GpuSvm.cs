using System.Diagnostics;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>The driver half of a <see cref="GpuSvm"/> (kernel: <c>struct drm_gpusvm_ops</c>).</summary>
public interface IGpuSvmOps
{
    /// <summary>
    /// CPU entries of <paramref name="range"/> ∩ <paramref name="notifier"/> are about to change (kernel:
    /// <c>drm_gpusvm_ops.invalidate</c>, Xe's <c>xe_svm_invalidate</c>). Called with <see cref="GpuSvm.NotifierLock"/>
    /// held after the sequence was published. Only zap GPU entries, invalidate TLBs, unmap pages
    /// (<see cref="GpuSvm.UnmapPagesLocked"/>) and, for UNMAP, mark and queue ranges
    /// (<see cref="GpuSvm.RangeSetUnmappedLocked"/>): never allocate, destroy, or call into the mm.
    /// </summary>
    void Invalidate(GpuSvm svm, GpuSvmNotifier notifier, in MmuNotifierRange range);
}

/// <summary>Per-call options of the SVM helpers (kernel: <c>struct drm_gpusvm_ctx</c>).</summary>
/// <param name="ReadOnly">Never ask for write access (kernel: ctx.read_only).</param>
/// <param name="DevmemPossible">Device memory may back the range (kernel: ctx.devmem_possible).</param>
/// <param name="TimeoutMs">How long get-pages retries colliding invalidations before EBUSY (kernel: HMM_RANGE_DEFAULT_TIMEOUT).</param>
public readonly record struct GpuSvmContext(bool ReadOnly = false, bool DevmemPossible = false, int TimeoutMs = HmmMirrorHelper.DefaultTimeoutMs);

/// <summary>
/// Binds a range's pages into the device page table (the driver's half of get-pages): called with
/// <see cref="GpuSvm.NotifierLock"/> held after the sequence check succeeded.
/// </summary>
public interface IGpuSvmBinder
{
    /// <summary>Programs device entries for the valid pages of <paramref name="range"/>; returns Ok or the device's error.</summary>
    Errno Bind(GpuSvmRange range);
}

/// <summary>
/// Shared virtual memory bookkeeping for one GPU VM, shaped like Linux's drm_gpusvm (kernel:
/// <c>drivers/gpu/drm/drm_gpusvm.c</c>): fixed-size notifier windows each owning one interval notifier, chunk-sized
/// ranges created on fault, and one get-pages helper that runs the HMM retry protocol
/// (<see cref="HmmMirrorHelper.FaultAndProgram"/>) and binds under the notifier lock. Unmapped ranges are queued for a
/// garbage collector that the driver runs first in its next fault.
/// </summary>
/// <remarks>
/// <para>Locking (kernel: DOC: Locking of drm_gpusvm): <see cref="NotifierLock"/> is the "driver update lock" of the
/// HMM documentation; it protects the range lists, range flags and page arrays, and the GPU entries the driver writes
/// from them. The invalidate callback takes it; the get-pages helper takes it only around the sequence check and the
/// bind. The window dictionary and the creation and destruction of ranges and windows belong to the driver's single
/// servicing thread (kernel: the driver's own lock around find-or-insert and remove); it changes the range lists under
/// <see cref="NotifierLock"/> so invalidations always see a consistent list. The helpers take the mmap read lock
/// themselves and must be called without it.</para>
/// <para>Partial unmapping (kernel: DOC: Partial Unmapping of Ranges): ranges are never split; an UNMAP that touches a
/// range marks it unmapped and the garbage collector destroys it whole. The next fault creates fresh ranges that fit
/// the new VMAs.</para>
/// </remarks>
public sealed class GpuSvm
{
    /// <summary>Default notifier window (Xe uses 512 MiB).</summary>
    public const ulong DefaultNotifierSize = 512UL << 20;

    /// <summary>Default chunk sizes, largest first (kernel: Xe's {SZ_2M, SZ_64K, SZ_4K}).</summary>
    public static ReadOnlySpan<ulong> DefaultChunkSizes => [Page.PmdSize, 64 * 1024, Page.Size];

    private readonly Dictionary<ulong, GpuSvmNotifier> _notifiers = [];   // servicing thread only (see remarks)
    private readonly ulong[] _chunkSizes;                                 // immutable, descending
    private GpuSvmRange? _gcHead;                                         // guarded by NotifierLock
    private bool _closed;                                                 // servicing thread only

    /// <summary>Creates the SVM of one GPU VM over <paramref name="space"/>.</summary>
    /// <param name="space">The mirrored address space.</param>
    /// <param name="ops">The driver's invalidate callback.</param>
    /// <param name="devicePrivateOwner">The owner of the device's private pages (reported as is by get-pages), or null.</param>
    /// <param name="notifierSize">Window size: a power of two, at least the largest chunk.</param>
    /// <param name="chunkSizes">Chunk sizes, each a power of two multiple of 4 KiB, descending, ending with 4 KiB; null for the defaults.</param>
    /// <exception cref="ArgumentException">Bad window or chunk sizes.</exception>
    public GpuSvm(AddressSpace space, IGpuSvmOps ops, object? devicePrivateOwner, ulong notifierSize = DefaultNotifierSize, ulong[]? chunkSizes = null)
    {
        ArgumentNullException.ThrowIfNull(space);
        ArgumentNullException.ThrowIfNull(ops);
        _chunkSizes = chunkSizes ?? DefaultChunkSizes.ToArray();
        if (_chunkSizes.Length == 0 || _chunkSizes[^1] != Page.Size)
        {
            throw new ArgumentException("chunk sizes must end with 4 KiB", nameof(chunkSizes));
        }
        for (int i = 0; i < _chunkSizes.Length; i++)
        {
            ulong c = _chunkSizes[i];
            if ((c & (c - 1)) != 0 || c < Page.Size || (i > 0 && c >= _chunkSizes[i - 1]))
            {
                throw new ArgumentException($"chunk size 0x{c:x} must be a power of two, at least 4 KiB, in descending order", nameof(chunkSizes));
            }
        }
        if ((notifierSize & (notifierSize - 1)) != 0 || notifierSize < _chunkSizes[0])
        {
            throw new ArgumentException($"notifier size 0x{notifierSize:x} must be a power of two at least the largest chunk", nameof(notifierSize));
        }
        Space = space;
        Ops = ops;
        DevicePrivateOwner = devicePrivateOwner;
        NotifierSize = notifierSize;
    }

    /// <summary>The mirrored address space (kernel: drm_gpusvm.mm).</summary>
    public AddressSpace Space { get; }
    /// <summary>The driver callbacks.</summary>
    public IGpuSvmOps Ops { get; }
    /// <summary>Owner of the device's private pages, passed to hmm_range_fault as dev_private_owner.</summary>
    public object? DevicePrivateOwner { get; }
    /// <summary>Size of a notifier window.</summary>
    public ulong NotifierSize { get; }
    /// <summary>The notifier lock: the driver update lock of every range of this SVM (kernel: drm_gpusvm.notifier_lock).</summary>
    public Lock NotifierLock { get; } = new();
    /// <summary>Notifier windows alive now (servicing thread).</summary>
    public int NotifierCount => _notifiers.Count;
    /// <summary>Notifier windows created so far (servicing thread).</summary>
    public long NotifiersCreated { get; private set; }

    /// <summary>
    /// Finds the range containing <paramref name="address"/> or creates one (kernel: drm_gpusvm_range_find_or_insert):
    /// creates the notifier window on first use, picks the largest chunk that fits the VMA and the window and overlaps
    /// no other range. Takes the mmap read lock. Call from the driver's servicing thread.
    /// </summary>
    /// <returns>Ok; EFAULT when the address space is gone or no VMA maps the address (or it is VM_IO/VM_PFNMAP);
    /// EPERM when <paramref name="write"/> is requested on a VMA without write permission (or the VMA is not
    /// readable); ENOENT when the SVM is closed.</returns>
    public Errno FindOrInsertRange(ulong address, bool write, in GpuSvmContext ctx, out GpuSvmRange? range, out bool created)
    {
        range = null;
        created = false;
        if (_closed)
        {
            return Errno.ENOENT;
        }
        ulong windowStart = Page.AlignDown(address, NotifierSize);
        if (_notifiers.TryGetValue(windowStart, out GpuSvmNotifier? n))
        {
            GpuSvmRange? found;
            lock (NotifierLock)
            {
                found = n.FindLocked(address);
            }
            if (found is not null && !found.Unmapped)
            {
                range = found; // write permission of an existing range is checked by hmm_range_fault (EPERM)
                return Errno.Ok;
            }
            if (found is not null)
            {
                return Errno.EAGAIN; // unmapped, waiting for the garbage collector
            }
        }
        AddressSpace mm = Space;
        if (!mm.TryGetLiveReference())
        {
            return Errno.EFAULT;
        }
        try
        {
            ulong start, end;
            bool migratable, writable;
            mm.MmapLock.EnterRead();
            try
            {
                Vma? vma = mm.Vmas.Find(address);
                if (vma is null || (vma.Flags & (VmFlags.Io | VmFlags.PfnMap)) != 0)
                {
                    return Errno.EFAULT;
                }
                if ((vma.Flags & VmFlags.Read) == 0 || (write && !ctx.ReadOnly && (vma.Flags & VmFlags.Write) == 0))
                {
                    return Errno.EPERM;
                }
                ulong wEnd = windowStart + NotifierSize;
                GpuSvmNotifier? existing = _notifiers.GetValueOrDefault(windowStart);
                start = end = 0;
                foreach (ulong c in _chunkSizes)
                {
                    ulong s = Page.AlignDown(address, c), e = s + c;
                    if (s < vma.Start || e > vma.End || s < windowStart || e > wEnd)
                    {
                        continue;
                    }
                    bool overlap;
                    if (existing is null)
                    {
                        overlap = false;
                    }
                    else
                    {
                        lock (NotifierLock)
                        {
                            overlap = existing.OverlapsLocked(s, e);
                        }
                    }
                    if (!overlap)
                    {
                        start = s;
                        end = e;
                        break;
                    }
                }
                Debug.Assert(end > start, "a 4 KiB chunk always fits");
                migratable = vma.Kind == VmaKind.Anonymous && !vma.IsShared;
                writable = (vma.Flags & VmFlags.Write) != 0;
            }
            finally
            {
                mm.MmapLock.ExitRead();
            }
            GpuSvmNotifier notifier = GetOrCreateNotifier(windowStart);
            var r = new GpuSvmRange(notifier, start, end, migratable, writable, DevicePrivateOwner);
            lock (NotifierLock)
            {
                notifier.InsertLocked(r);
            }
            range = r;
            created = true;
            return Errno.Ok;
        }
        finally
        {
            mm.PutLiveReference();
        }
    }

    private GpuSvmNotifier GetOrCreateNotifier(ulong windowStart)
    {
        if (_notifiers.TryGetValue(windowStart, out GpuSvmNotifier? n))
        {
            return n;
        }
        n = new GpuSvmNotifier(this, windowStart, windowStart + NotifierSize);
        // A notifier inserted during an invalidation starts with a sequence that makes the first read retry: safe.
        n.Interval = MmuIntervalNotifier.Insert(Space, windowStart, NotifierSize, n);
        _notifiers.Add(windowStart, n);
        NotifiersCreated++;
        return n;
    }

    /// <summary>The range containing <paramref name="address"/>, or null (servicing thread).</summary>
    public GpuSvmRange? FindRange(ulong address)
    {
        if (!_notifiers.TryGetValue(Page.AlignDown(address, NotifierSize), out GpuSvmNotifier? n))
        {
            return null;
        }
        lock (NotifierLock)
        {
            return n.FindLocked(address);
        }
    }

    /// <summary>
    /// Gets the pages of <paramref name="range"/> and binds them (kernel: drm_gpusvm_range_get_pages followed by the
    /// driver's bind under the notifier lock): runs <see cref="HmmMirrorHelper.FaultAndProgram"/> with the range's
    /// per-page requests (see <see cref="GpuSvmRange.Request"/>); under <see cref="NotifierLock"/>, after the sequence
    /// check, records the sequence, marks the pages mapped and calls <paramref name="binder"/>. Takes the mmap read
    /// lock itself.
    /// </summary>
    /// <returns>Ok; EAGAIN when the range was unmapped meanwhile (run the garbage collector and fault again); EBUSY
    /// after the timeout; EFAULT / EPERM from hmm_range_fault; or the binder's error.</returns>
    public Errno GetPages<TBinder>(GpuSvmRange range, TBinder binder, in GpuSvmContext ctx) where TBinder : IGpuSvmBinder
    {
        ArgumentNullException.ThrowIfNull(range);
        range.Hmm.PfnFlagsMask = ctx.ReadOnly ? HmmPfnFlags.ReqFault : HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite;
        var mirror = new BindMirror<TBinder>(this, range, binder);
        return HmmMirrorHelper.FaultAndProgram(mirror, range.Hmm, ctx.TimeoutMs, range.ReloadRequests);
    }

    private readonly struct BindMirror<TBinder>(GpuSvm svm, GpuSvmRange range, TBinder binder) : IDeviceMirror where TBinder : IGpuSvmBinder
    {
        public Lock UpdateLock => svm.NotifierLock;

        public Errno ProgramDevice(HmmRange hmm)
        {
            if (range.Unmapped || range.Removed)
            {
                return Errno.EAGAIN;
            }
            range.NotifierSeq = hmm.NotifierSeq;
            range.HasDmaMapping = true;
            return binder.Bind(range);
        }
    }

    /// <summary>
    /// Forgets the pages of <paramref name="range"/> (kernel: drm_gpusvm_range_unmap_pages / __drm_gpusvm_unmap_pages):
    /// clears the sticky mapped bits and the flags. Caller holds <see cref="NotifierLock"/>; never allocates.
    /// </summary>
    public void UnmapPagesLocked(GpuSvmRange range)
    {
        if (!range.HasDmaMapping)
        {
            return;
        }
        ulong[] pfns = range.Hmm.HmmPfns;
        for (int i = 0; i < pfns.Length; i++)
        {
            pfns[i] = 0;
        }
        range.HasDmaMapping = false;
        range.HasDevmemPages = false;
    }

    /// <summary>
    /// Marks <paramref name="range"/> unmapped by <paramref name="mmuRange"/> and queues it for the garbage collector
    /// (kernel: drm_gpusvm_range_set_unmapped + the driver's GC queue). Caller holds <see cref="NotifierLock"/>;
    /// never allocates.
    /// </summary>
    public void RangeSetUnmappedLocked(GpuSvmRange range, in MmuNotifierRange mmuRange)
    {
        range.Unmapped = true;
        if (mmuRange.Start > range.Start || mmuRange.End < range.End)
        {
            range.PartialUnmap = true;
        }
        if (!range.InGc)
        {
            range.InGc = true;
            range.GcNext = _gcHead;
            _gcHead = range;
        }
    }

    /// <summary>True when ranges wait for the garbage collector (racy hint).</summary>
    public bool HasGarbage => Volatile.Read(ref _gcHead) is not null;

    /// <summary>
    /// Destroys every queued unmapped range, and windows left empty (kernel: xe_svm_garbage_collector, run first in
    /// the fault handler). Servicing thread, without the mmap lock. Returns the number of ranges destroyed.
    /// </summary>
    public int CollectGarbage()
    {
        GpuSvmRange? list;
        lock (NotifierLock)
        {
            list = _gcHead;
            _gcHead = null;
        }
        int n = 0;
        while (list is not null)
        {
            GpuSvmRange r = list;
            list = r.GcNext;
            r.GcNext = null;
            RemoveRange(r);
            n++;
        }
        return n;
    }

    /// <summary>
    /// Destroys <paramref name="range"/> (kernel: drm_gpusvm_range_remove): unmaps its pages, takes it out of its window,
    /// and removes the window's interval notifier when it was the last range. The caller zapped the GPU entries
    /// (an UNMAP invalidation did) or does so through <paramref name="range"/>'s invalidation before. Servicing thread.
    /// </summary>
    public void RemoveRange(GpuSvmRange range)
    {
        GpuSvmNotifier n = range.Notifier;
        bool empty;
        lock (NotifierLock)
        {
            UnmapPagesLocked(range);
            range.InGc = false;
            if (!range.Removed)
            {
                range.Removed = true;
                n.RemoveLocked(range);
            }
            empty = n.RangeCountLocked == 0 && !n.Removed;
            if (empty)
            {
                n.Removed = true;
            }
        }
        if (empty)
        {
            _notifiers.Remove(n.Start);
            n.Interval.Remove(); // waits for an invalidation in flight; never under the notifier lock
        }
    }

    /// <summary>All ranges of all windows (servicing thread; for teardown and tests).</summary>
    public List<GpuSvmRange> Ranges()
    {
        var list = new List<GpuSvmRange>();
        foreach (GpuSvmNotifier n in _notifiers.Values)
        {
            lock (NotifierLock)
            {
                n.CopyRangesLocked(list);
            }
        }
        return list;
    }

    /// <summary>
    /// Tears the SVM down (kernel: drm_gpusvm_fini): removes every range and window. The driver zapped its entries
    /// first. Call once, from the servicing thread or after it stopped, never from a callback.
    /// </summary>
    public void Fini()
    {
        _closed = true;
        CollectGarbage();
        foreach (GpuSvmRange r in Ranges())
        {
            RemoveRange(r);
        }
        Debug.Assert(_notifiers.Count == 0, "every window goes with its last range");
    }
}
