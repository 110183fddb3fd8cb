using Hetmem.Diagnostics;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>Per 2 MiB VA block state of a context (kernel: UVM's HMM <c>uvm_va_block_t</c>): its VRAM chunk and thrashing history.</summary>
internal sealed class GpuVaBlock
{
    public GpuVaBlock(GpuContext context, ulong va)
    {
        Context = context;
        Va = va;
    }

    public GpuContext Context { get; }
    public ulong Va { get; }
    public VramChunk? Chunk;                 // guarded by the VRAM lock
    public PageThrashingState[]? Thrashing;  // guarded by the context's policy lock; allocated at the first migration event
    public long LastEvictedNs;               // written under the VRAM lock, read by the servicing thread: when its chunk was evicted
    public long PinnedUntilNs;               // servicing thread: the block is served from system memory until then
}

/// <summary>
/// One GPU virtual address space bound to one process address space, with SVM on (kernel: a UVM va_space with HMM,
/// a nouveau SVMM, an Xe VM in fault mode): its GPU page table, its <see cref="GpuSvm"/> and its launches.
/// </summary>
/// <remarks>
/// Locking: the page table is written under <see cref="GpuSvm.NotifierLock"/> (bind and invalidate); the TLB
/// generation is atomic; <c>_blocks</c> and the thrashing arrays are guarded by <c>_policyLock</c> (a leaf);
/// servicing state (<c>_touched</c>, <c>_migrate</c>, <c>_copy</c>) belongs to the device's servicing thread.
/// </remarks>
public sealed partial class GpuContext : IGpuSvmOps, IDisposable
{
    private long _tlbGen = 1;                                         // atomic; see ExecutionUnit
    private readonly Lock _policyLock = new();                        // leaf
    private readonly Dictionary<ulong, GpuVaBlock> _blocks = [];      // guarded by _policyLock
    private volatile bool _dead;

    internal GpuContext(GpuDevice device, AddressSpace space, int id)
    {
        Device = device;
        Space = space;
        Id = id;
        Svm = new GpuSvm(space, this, device.Owner, device.Options.NotifierSize);
        _binder = new Binder(this);
    }

    /// <summary>The device.</summary>
    public GpuDevice Device { get; }
    /// <summary>The mirrored address space.</summary>
    public AddressSpace Space { get; }
    /// <summary>The context id carried by fault records (the "instance pointer").</summary>
    public int Id { get; }
    /// <summary>The SVM bookkeeping of this GPU VM.</summary>
    public GpuSvm Svm { get; }
    /// <summary>The GPU page table.</summary>
    public GpuPageTable PageTable { get; } = new();
    /// <summary>True once the context is torn down.</summary>
    public bool IsDead => _dead;

    internal long TlbGeneration => Volatile.Read(ref _tlbGen);

    internal void BumpTlbGeneration() => Interlocked.Increment(ref _tlbGen);

    /// <summary>
    /// Runs <paramref name="kernel"/> for <paramref name="gridDim"/> × <paramref name="blockDim"/> threads and waits for
    /// it (CUDA: a kernel launch followed by cudaDeviceSynchronize). Launches on one device run one at a time.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A dimension is not positive.</exception>
    /// <exception cref="GpuLaunchException">An access could not be serviced (EFAULT, EPERM), was misaligned (EINVAL),
    /// a kernel thread threw or servicing failed (EIO), or the device or context is gone (ENODEV).</exception>
    public void Launch(int gridDim, int blockDim, GpuKernel kernel)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(gridDim);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockDim);
        if (_dead)
        {
            throw new GpuLaunchException(Errno.ENODEV, 0, GpuAccess.Read, -1, $"GPU context {Id} is torn down");
        }
        var launch = new GpuLaunch(this, gridDim, blockDim, kernel, Device.Options.WarpSize, Device.Options.ExecutionUnits);
        Device.RunLaunch(launch);
    }

    internal GpuVaBlock GetOrCreateBlock(ulong va)
    {
        lock (_policyLock)
        {
            if (!_blocks.TryGetValue(va, out GpuVaBlock? b))
            {
                b = new GpuVaBlock(this, va);
                _blocks.Add(va, b);
            }
            return b;
        }
    }

    internal GpuVaBlock? FindBlock(ulong va)
    {
        lock (_policyLock)
        {
            return _blocks.GetValueOrDefault(va);
        }
    }

    // ---- invalidation (drm_gpusvm ops) --------------------------------------------------------------------

    /// <summary>
    /// The SVM invalidate callback (kernel: <c>xe_svm_invalidate</c>): with the notifier lock held, zaps the GPU entries
    /// of every range the invalidation touches, invalidates TLBs once, unmaps the ranges' pages and, for UNMAP, marks
    /// them unmapped and queues them for the garbage collector. Allocates nothing, destroys nothing.
    /// Soft-dirty events are ignored, as UVM does.
    /// </summary>
    public void Invalidate(GpuSvm svm, GpuSvmNotifier notifier, in MmuNotifierRange range)
    {
        Device.Counters.CountInvalidation(range.Event);
        if (range.Event == MmuNotifierEvent.SoftDirty)
        {
            return;
        }
        var zap = new ZapVisitor(this, range);
        notifier.ForEachLocked(range.Start, range.End, ref zap);
        if (zap.Zapped)
        {
            Device.InvalidateTlbs(this);
        }
        if (TraceLog.Enabled)
        {
            TraceLog.Instant(TraceCategory.Invalidate, TraceNames.Of(range.Event), TraceArg.Address(range.Start), TraceArg.Bytes((long)(range.End - range.Start)));
        }
    }

    private struct ZapVisitor(GpuContext ctx, MmuNotifierRange range) : IGpuSvmRangeVisitor
    {
        public bool Zapped;

        public void Visit(GpuSvmRange r)
        {
            if (r.Bound)
            {
                Zapped |= ctx.PageTable.ZapLocked(r.Start, r.End);
                r.Bound = false;
            }
            ctx.Svm.UnmapPagesLocked(r);
            if (range.Event == MmuNotifierEvent.Unmap)
            {
                ctx.Svm.RangeSetUnmappedLocked(r, range);
            }
        }
    }

    /// <summary>Runs the SVM garbage collector (servicing thread, first thing in a fault service).</summary>
    internal void CollectGarbage()
    {
        if (!Svm.HasGarbage)
        {
            return;
        }
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        int n = Svm.CollectGarbage();
        Device.Counters.Add(GpuCounter.RangesCollected, n);
        Device.Counters.Add(GpuCounter.GcNs, GpuDevice.ElapsedNs(t0));
    }

    /// <summary>
    /// Tears the context down (kernel: xe_vm_close / UVM va_space destroy): zaps every GPU entry, removes every range
    /// and notifier window. VRAM pages of the address space stay where they are (the device still serves CPU faults on
    /// them) until the device is disposed or the memory is unmapped.
    /// </summary>
    public void Dispose()
    {
        lock (Device.ServiceLock)
        {
            TeardownLocked();
        }
    }

    internal void TeardownLocked()
    {
        if (_dead)
        {
            return;
        }
        _dead = true;
        List<GpuSvmRange> ranges = Svm.Ranges();
        lock (Svm.NotifierLock)
        {
            foreach (GpuSvmRange r in ranges)
            {
                if (r.Bound)
                {
                    PageTable.ZapLocked(r.Start, r.End);
                    r.Bound = false;
                }
            }
        }
        Device.InvalidateTlbs(this);
        Svm.Fini();
        Device.RemoveContext(this);
    }

    /// <summary>Diagnostics: the SVM ranges alive now as (start, end, bound).</summary>
    public IReadOnlyList<(ulong Start, ulong End, bool Bound)> DescribeRanges()
    {
        lock (Device.ServiceLock)
        {
            return Svm.Ranges().Select(r => (r.Start, r.End, r.Bound)).ToList();
        }
    }

    // ---- bind ------------------------------------------------------------------------------------------

    private readonly Binder _binder;

    private readonly struct Binder(GpuContext ctx) : IGpuSvmBinder
    {
        public Errno Bind(GpuSvmRange range) => ctx.BindLocked(range);
    }

    /// <summary>
    /// Writes GPU entries for the valid pages of <paramref name="range"/> (kernel: xe_svm_range bind / nouveau PFNMAP):
    /// the largest of 2 MiB, 64 KiB, 4 KiB whose pages are all valid, physically contiguous, aligned and of one
    /// aperture and permission. VRAM pages get atomics; system pages are mapped remotely, writable only when the CPU
    /// entry is, with atomics then carried out by the host bridge. Caller holds the notifier lock.
    /// </summary>
    private Errno BindLocked(GpuSvmRange range)
    {
        ulong[] pfns = range.Hmm.HmmPfns;
        int n = pfns.Length;
        bool replaced = false;
        bool any = false;
        bool devmem = false;
        Vram? vram = Device.VramInternal;
        GpuCounters counters = Device.Counters;
        // Migrate-on-first-touch maps system pages only where a fault asked: other pages fault (and migrate) later.
        bool selective = vram is not null && range.Migratable && Device.Options.Placement == PlacementPolicy.MigrateOnFirstTouch;
        int i = 0;
        while (i < n)
        {
            ulong e = pfns[i];
            if (!HmmPfn.Has(e, HmmPfnFlags.Valid))
            {
                i++;
                continue;
            }
            ulong va = range.Start + ((ulong)i << Page.Shift);
            int pages = 1;
            GpuPageSize size = GpuPageSize.Size4K;
            if ((va & (Page.PmdSize - 1)) == 0 && i + 512 <= n && Uniform(pfns, i, 512))
            {
                pages = 512;
                size = GpuPageSize.Size2M;
            }
            else if ((va & (64 * 1024 - 1)) == 0 && i + 16 <= n && Uniform(pfns, i, 16))
            {
                pages = 16;
                size = GpuPageSize.Size64K;
            }
            ulong pfn = HmmPfn.ToPfn(e);
            bool write = HmmPfn.Has(e, HmmPfnFlags.Write);
            bool inVram = vram is not null && vram.Contains(pfn);
            if (selective && !inVram)
            {
                if (range.RequestOf(i) == 0)
                {
                    i++;
                    continue;
                }
                pages = 1;
                size = GpuPageSize.Size4K;
            }
            ulong pte = GpuPte.Make(pfn, size, write, atomic: inVram || write, vram: inVram);
            ulong old = PageTable.Lookup(va);
            if (old == pte)
            {
                any = true;
                devmem |= inVram;
                i += pages;
                continue; // already mapped exactly so
            }
            if ((old & GpuPte.Valid) != 0 && GpuPte.PfnAt(old, va) != pfn)
            {
                replaced = true;
            }
            PageTable.MapLocked(va, pte);
            for (int k = 0; k < pages; k++)
            {
                pfns[i + k] |= (ulong)HmmPfnFlags.DmaMapped;
            }
            counters.Inc(size switch { GpuPageSize.Size2M => GpuCounter.Map2M, GpuPageSize.Size64K => GpuCounter.Map64K, _ => GpuCounter.Map4K });
            if (inVram)
            {
                devmem = true;
            }
            else
            {
                counters.Add(GpuCounter.RemoteMappedPages, pages);
            }
            any = true;
            i += pages;
        }
        range.Bound |= any;
        range.HasDevmemPages = devmem;
        if (replaced)
        {
            Device.InvalidateTlbs(this);
        }
        return Errno.Ok;
    }

    /// <summary>True when entries [i, i+count) are valid, physically contiguous, aligned to count and uniform.</summary>
    private static bool Uniform(ulong[] pfns, int i, int count)
    {
        ulong first = pfns[i];
        ulong pfn0 = HmmPfn.ToPfn(first);
        if ((pfn0 & (ulong)(count - 1)) != 0)
        {
            return false;
        }
        ulong flags = first & (ulong)(HmmPfnFlags.Valid | HmmPfnFlags.Write);
        for (int k = 1; k < count; k++)
        {
            ulong e = pfns[i + k];
            if ((e & (ulong)(HmmPfnFlags.Valid | HmmPfnFlags.Write)) != flags || HmmPfn.ToPfn(e) != pfn0 + (ulong)k)
            {
                return false;
            }
        }
        return true;
    }
}
