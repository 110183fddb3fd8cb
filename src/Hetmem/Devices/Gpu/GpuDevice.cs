using System.Diagnostics;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>
/// A GPU with shared virtual memory (kernel: an NVIDIA UVM / nouveau / Xe SVM device): execution units that run C#
/// kernels over the process's own pointers through a GPU MMU (per-unit TLBs, a page table per GPU VM with 4 KiB,
/// 64 KiB and 2 MiB entries), a replayable fault buffer serviced in batches by a dedicated thread, VRAM as
/// device-private memory with a batched copy engine, and UVM's prefetch, thrashing and eviction policies.
/// </summary>
/// <remarks>
/// <para>Overview: create one <see cref="GpuContext"/> per address space (<see cref="CreateContext"/>), then
/// <see cref="GpuContext.Launch"/> kernels on it. A kernel access that misses writes a <see cref="GpuFaultRecord"/>
/// to the <see cref="FaultBuffer"/> and its warp stalls; the servicing thread fetches up to
/// <see cref="GpuDeviceOptions.BatchSize"/> records, merges and sorts them (<see cref="FaultBatch"/>), services each
/// 2 MiB block once (SVM range lookup, placement, migration, get-pages and bind) and replays according to
/// <see cref="GpuDeviceOptions.ReplayPolicy"/>.</para>
/// <para>Locking (outermost first): <c>_serviceLock</c> (driver-owned, held by the servicing thread around a batch and
/// by context teardown; the analogue of Xe's vm lock, taken before the mmap lock) → the mmap lock → a context's
/// <see cref="GpuSvm.NotifierLock"/> (the device update lock of LockOrder.cs) → the VRAM allocator lock (a leaf with
/// the page-map allocators). The replay lock, the fault buffer lock and the access-counter queue lock are leaves taken
/// with nothing else held. <c>MigrateToRam</c> (a CPU fault on VRAM) takes no driver lock but the VRAM and policy
/// leaves.</para>
/// </remarks>
public sealed unsafe partial class GpuDevice : IDisposable
{
    private readonly ExecutionUnit[] _units;               // immutable
    private readonly object _launchLock = new();           // one launch at a time
    private readonly object _serviceLock = new();          // see remarks
    private readonly object _replayLock = new();           // leaf; guards _replaySeq waits
    private readonly object _contextsLock = new();         // leaf; guards _contexts copy-on-write
    private GpuContext?[] _contexts = [];                  // copy-on-write under _contextsLock, indexed by context id
    private long _replaySeq;                               // written under _replayLock, read with Volatile
    private GpuLaunch? _current;                           // the running launch, or null (written under _launchLock)
    private readonly Thread _servicer;
    private volatile bool _stopping;
    private bool _disposed;
    private readonly TraceTrack _track;

    /// <summary>Creates a GPU over <paramref name="memory"/>; VRAM (if any) is registered as device-private memory.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range.</exception>
    /// <exception cref="MmException">ENOMEM when the host cannot provide the VRAM arena.</exception>
    public GpuDevice(PhysicalMemory memory, GpuDeviceOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(memory);
        Options = options ?? new GpuDeviceOptions();
        Options.Validate();
        Memory = memory;
        CheckingStale = Options.CheckStaleTranslations;
        FaultBuffer = new FaultBuffer(Options.FaultBufferEntries);
        _batch = new GpuFaultRecord[Math.Max(Options.BatchSize, 1)];
        _track = TraceLog.RegisterTrack(Options.Name, "gpu");
        if (Options.VramBytes > 0)
        {
            _vram = new Vram(this, Options.VramBytes);
        }
        _units = new ExecutionUnit[Options.ExecutionUnits];
        for (int i = 0; i < _units.Length; i++)
        {
            _units[i] = new ExecutionUnit(this, i);
        }
        _servicer = new Thread(ServiceLoop) { IsBackground = true, Name = $"{Options.Name}-fault-bh" };
        _servicer.Start();
    }

    /// <summary>The options the device was built with.</summary>
    public GpuDeviceOptions Options { get; }
    /// <summary>Physical memory the device maps and migrates.</summary>
    public PhysicalMemory Memory { get; }
    /// <summary>The device's counters.</summary>
    public GpuCounters Counters { get; } = new();
    /// <summary>The replayable fault buffer.</summary>
    public FaultBuffer FaultBuffer { get; }
    /// <summary>The owner cookie of the device's private pages (kernel: pgmap->owner, UVM's &amp;g_uvm_global).</summary>
    public object Owner { get; } = new();
    /// <summary>The VRAM page map, or null when the device has no VRAM.</summary>
    public DevicePageMap? VramMap => _vram?.Map;
    /// <summary>VRAM 2 MiB chunks in use (allocated to a block or still draining after eviction).</summary>
    public int VramChunksInUse => _vram?.ChunksInUse ?? 0;
    /// <summary>VRAM pages holding data now.</summary>
    public long VramPagesInUse => _vram?.PagesInUse ?? 0;
    /// <summary>Total VRAM chunks.</summary>
    public int VramChunks => _vram?.ChunkCount ?? 0;
    /// <summary>True when the stale-translation checks run (immutable).</summary>
    internal bool CheckingStale { get; }

    /// <summary>
    /// Creates the GPU VM for <paramref name="space"/> with SVM turned on (kernel: nouveau's NOUVEAU_SVM_INIT, Xe's
    /// xe_vm_create with the SVM flag, UVM's va_space registration).
    /// </summary>
    /// <exception cref="MmException">EINVAL when the address space is dead; ENODEV when the device is shut down.</exception>
    public GpuContext CreateContext(AddressSpace space)
    {
        ArgumentNullException.ThrowIfNull(space);
        if (!space.IsAlive)
        {
            MmException.Throw(Errno.EINVAL, "cannot create a GPU context for a dead address space");
        }
        lock (_contextsLock)
        {
            if (_disposed)
            {
                MmException.Throw(Errno.ENODEV, $"{Options.Name} is shut down");
            }
            int id = Array.IndexOf(_contexts, null);
            if (id < 0)
            {
                id = _contexts.Length;
            }
            var ctx = new GpuContext(this, space, id);
            GpuContext?[] next = id < _contexts.Length ? (GpuContext?[])_contexts.Clone() : [.. _contexts, null];
            next[id] = ctx;
            Volatile.Write(ref _contexts, next);
            return ctx;
        }
    }

    internal GpuContext? ContextById(int id)
    {
        GpuContext?[] all = Volatile.Read(ref _contexts);
        return (uint)id < (uint)all.Length ? all[id] : null;
    }

    internal GpuContext? ContextOf(AddressSpace space)
    {
        foreach (GpuContext? c in Volatile.Read(ref _contexts))
        {
            if (c is not null && ReferenceEquals(c.Space, space))
            {
                return c;
            }
        }
        return null;
    }

    internal void RemoveContext(GpuContext ctx)
    {
        lock (_contextsLock)
        {
            GpuContext?[] next = (GpuContext?[])_contexts.Clone();
            if ((uint)ctx.Id < (uint)next.Length && next[ctx.Id] == ctx)
            {
                next[ctx.Id] = null;
            }
            Volatile.Write(ref _contexts, next);
        }
    }

    /// <summary>Serialises context teardown against the servicing thread.</summary>
    internal object ServiceLock => _serviceLock;

    // ---- launches ------------------------------------------------------------------------------------

    internal void RunLaunch(GpuLaunch launch)
    {
        lock (_launchLock)
        {
            if (_stopping)
            {
                throw new GpuLaunchException(Errno.ENODEV, 0, GpuAccess.Read, -1, $"{Options.Name} is shut down");
            }
            Volatile.Write(ref _current, launch);
            try
            {
                foreach (ExecutionUnit u in _units)
                {
                    u.Start(launch);
                }
                launch.Done.Wait();
            }
            finally
            {
                Volatile.Write(ref _current, null);
                launch.Done.Dispose();
            }
        }
        if (launch.Error is { } e)
        {
            throw e;
        }
    }

    // ---- faults and replays --------------------------------------------------------------------------

    /// <summary>Called by a unit whose access missed: writes the fault record and stalls until the next replay.</summary>
    internal void RaiseFaultAndWait(ExecutionUnit unit, GpuContext ctx, ulong va, GpuAccess access)
    {
        GpuLaunch? launch = Volatile.Read(ref _current);
        long seq = Volatile.Read(ref _replaySeq);
        if (launch is null || launch.Aborted || _stopping)
        {
            throw GpuWarpAbort.Instance;
        }
        var rec = new GpuFaultRecord(ctx.Id, Page.AlignDown(va, Page.Size), access, unit.Id, Stopwatch.GetTimestamp());
        if (!FaultBuffer.Write(rec))
        {
            launch.Fail(new GpuLaunchException(Errno.ENODEV, va, access, unit.Id, $"{Options.Name} shut down while a warp was stalled"));
            throw GpuWarpAbort.Instance;
        }
        lock (_replayLock)
        {
            while (_replaySeq == seq && !launch.Aborted && !_stopping)
            {
                Monitor.Wait(_replayLock, 100);
            }
        }
        if (launch.Aborted || _stopping)
        {
            if (_stopping)
            {
                launch.Fail(new GpuLaunchException(Errno.ENODEV, va, access, unit.Id, $"{Options.Name} shut down while a warp was stalled"));
            }
            throw GpuWarpAbort.Instance;
        }
    }

    internal void RaisePrefetchFault(ExecutionUnit unit, GpuContext ctx, ulong va)
        => FaultBuffer.Write(new GpuFaultRecord(ctx.Id, Page.AlignDown(va, Page.Size), GpuAccess.Prefetch, unit.Id, Stopwatch.GetTimestamp()));

    /// <summary>Wakes every stalled warp so it retries its access (kernel: GP100_VMM_VN_FAULT_REPLAY / UVM replay push).</summary>
    private void Replay()
    {
        long t0 = Stopwatch.GetTimestamp();
        lock (_replayLock)
        {
            _replaySeq++;
            Monitor.PulseAll(_replayLock);
        }
        Counters.Inc(GpuCounter.Replays);
        Counters.Add(GpuCounter.ReplayNs, ElapsedNs(t0));
        if (TraceLog.Enabled)
        {
            TraceLog.Instant(_track, TraceCategory.DeviceFault, "GpuFaultReplay", TraceArg.Of("replay", Volatile.Read(ref _replaySeq)));
        }
    }

    /// <summary>Fails the running launch of <paramref name="ctx"/> for a fault the servicer cannot satisfy (kernel: a cancel).</summary>
    private void CancelFault(GpuContext ctx, in GpuFaultRecord f, Errno why)
    {
        GpuLaunch? launch = Volatile.Read(ref _current);
        if (launch is null || launch.Context != ctx || f.Timestamp < launch.StartTimestamp)
        {
            return; // a stale record of an earlier launch
        }
        Counters.Inc(GpuCounter.FatalFaults);
        string what = why switch
        {
            Errno.EPERM => "write to memory the GPU may not write",
            Errno.EFAULT => "access to an address no mapping can back",
            _ => $"fault that could not be serviced ({why})",
        };
        launch.Fail(new GpuLaunchException(why, f.Address, f.Access, f.Unit, $"{Options.Name}: {f.Access} fault at 0x{f.Address:x} on unit {f.Unit}: {what}"));
        if (TraceLog.Enabled)
        {
            TraceLog.Instant(_track, TraceCategory.DeviceFault, "FatalFault", TraceArg.Address(f.Address), TraceArg.Of("errno", (long)why));
        }
    }

    /// <summary>
    /// Invalidates every unit's TLB entries of <paramref name="ctx"/> and waits until no unit can still use one
    /// (kernel: a GPU TLB invalidate + membar). Caller holds the context's notifier lock or is the servicing thread.
    /// </summary>
    internal void InvalidateTlbs(GpuContext ctx)
    {
        ctx.BumpTlbGeneration();
        Interlocked.MemoryBarrierProcessWide();
        foreach (ExecutionUnit u in _units)
        {
            u.WaitForQuiescence();
        }
        Counters.Inc(GpuCounter.TlbInvalidations);
    }

    internal static long ElapsedNs(long t0) => (long)((Stopwatch.GetTimestamp() - t0) * (1e9 / Stopwatch.Frequency));

    internal static long NowNs() => (long)(Stopwatch.GetTimestamp() * (1e9 / Stopwatch.Frequency));

    /// <summary>
    /// Shuts the device down: stops the units and the servicer, migrates every VRAM page back to system memory,
    /// tears down the contexts (their notifiers are removed) and unregisters VRAM. Idempotent.
    /// </summary>
    public void Dispose()
    {
        lock (_contextsLock)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
        }
        _stopping = true;
        lock (_replayLock)
        {
            Monitor.PulseAll(_replayLock);
        }
        FaultBuffer.Close();
        lock (_launchLock)
        {
            foreach (ExecutionUnit u in _units)
            {
                u.Stop();
            }
        }
        _servicer.Join();
        lock (_serviceLock)
        {
            _vram?.EvictAll();
            foreach (GpuContext? c in Volatile.Read(ref _contexts))
            {
                c?.TeardownLocked();
            }
        }
        _vram?.Dispose();
        _cpuScratch.Dispose();
    }
}
