using System.Diagnostics;
using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>The replayable-fault bottom half (kernel: UVM <c>uvm_parent_gpu_service_replayable_faults</c>).</summary>
public sealed unsafe partial class GpuDevice
{
    private readonly GpuFaultRecord[] _batch;                 // servicing thread only
    private readonly object _accessCounterLock = new();       // leaf; guards the notification queue
    private readonly (int Ctx, ulong Va)[] _accessCounterQueue = new (int, ulong)[256]; // guarded by _accessCounterLock
    private int _accessCounterCount;                          // guarded by _accessCounterLock
    private readonly (int Ctx, ulong Va)[] _accessCounterBatch = new (int, ulong)[256]; // servicing thread only

    private void ServiceLoop()
    {
        while (!_stopping)
        {
            FaultBuffer.WaitForEntries(20);
            if (_stopping)
            {
                return;
            }
            lock (_serviceLock)
            {
                try
                {
                    ServiceOnce();
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    // A servicing bug must not hang the stalled warps: fail the running launch and replay.
                    GpuLaunch? launch = Volatile.Read(ref _current);
                    launch?.Fail(new GpuLaunchException(Errno.EIO, 0, GpuAccess.Read, -1, $"{Options.Name}: fault servicing failed: {e.Message}", e));
                    Replay();
                }
            }
        }
    }

    /// <summary>
    /// One bottom-half run: serve access-counter notifications, then fetch and service batches until the buffer is empty
    /// or <see cref="GpuDeviceOptions.MaxBatchesPerService"/> were done; unmapped SVM ranges are garbage-collected
    /// before each batch.
    /// </summary>
    private void ServiceOnce()
    {
        CollectGarbage();
        ServiceAccessCounters();
        ReplayPolicy policy = Options.ReplayPolicy;
        bool pendingReplay = false;
        int maxBatches = policy == ReplayPolicy.Once ? int.MaxValue : Options.MaxBatchesPerService;
        for (int b = 0; b < maxBatches && !_stopping; b++)
        {
            long t0 = Stopwatch.GetTimestamp();
            int n = FaultBuffer.Fetch(_batch.AsSpan(0, Options.BatchSize));
            Counters.Add(GpuCounter.FetchNs, ElapsedNs(t0));
            if (n == 0)
            {
                break;
            }
            pendingReplay = true;
            if (b > 0)
            {
                CollectGarbage(); // first thing in every fault service (kernel: xe_svm_garbage_collector)
            }
            Counters.Inc(GpuCounter.Batches);
            Counters.Add(GpuCounter.Faults, n);
            for (int i = 0; i < n; i++)
            {
                Counters.Inc(_batch[i].Access switch
                {
                    GpuAccess.Prefetch => GpuCounter.FaultsPrefetch,
                    GpuAccess.Read => GpuCounter.FaultsRead,
                    GpuAccess.Write => GpuCounter.FaultsWrite,
                    _ => GpuCounter.FaultsAtomic,
                });
            }
            t0 = Stopwatch.GetTimestamp();
            int m = FaultBatch.Preprocess(_batch.AsSpan(0, n), out int dups);
            Counters.Add(GpuCounter.Duplicates, dups);
            Counters.Add(GpuCounter.PreprocessNs, ElapsedNs(t0));
            using (TraceLog.Span(_track, TraceCategory.DeviceFault, "ServiceBatch", TraceArg.Of("faults", n), TraceArg.Of("distinct", m)))
            {
                t0 = Stopwatch.GetTimestamp();
                ServiceBatch(_batch.AsSpan(0, m), ref pendingReplay);
                Counters.Add(GpuCounter.ServiceNs, ElapsedNs(t0));
            }
            switch (policy)
            {
                case ReplayPolicy.Batch:
                    Replay();
                    pendingReplay = false;
                    break;
                case ReplayPolicy.BatchFlush:
                    if (FaultBuffer.Flush() > 0)
                    {
                        Counters.Inc(GpuCounter.BufferFlushes);
                    }
                    Replay();
                    pendingReplay = false;
                    break;
                case ReplayPolicy.Block:
                    if (pendingReplay)
                    {
                        Replay(); // a batch whose faults were all skipped still needs its replay
                        pendingReplay = false;
                    }
                    break;
            }
        }
        if (pendingReplay)
        {
            Replay();
        }
    }

    private void CollectGarbage()
    {
        foreach (GpuContext? c in Volatile.Read(ref _contexts))
        {
            c?.CollectGarbage();
        }
    }

    private void ServiceBatch(Span<GpuFaultRecord> faults, ref bool pendingReplay)
    {
        int i = 0;
        while (i < faults.Length)
        {
            GpuFaultRecord first = faults[i];
            ulong block = Page.AlignDown(first.Address, Page.PmdSize);
            int j = i + 1;
            while (j < faults.Length && faults[j].Space == first.Space && Page.AlignDown(faults[j].Address, Page.PmdSize) == block)
            {
                j++;
            }
            GpuContext? ctx = ContextById(first.Space);
            if (ctx is not null && !ctx.IsDead)
            {
                Span<GpuFaultRecord> group = faults[i..j];
                ctx.ServiceBlock(block, group, forceMigrate: false, out int fatalIndex, out Errno fatal);
                if (fatalIndex >= 0)
                {
                    CancelFault(ctx, group[fatalIndex], fatal);
                }
            }
            if (Options.ReplayPolicy == ReplayPolicy.Block)
            {
                Replay();
                pendingReplay = false;
            }
            i = j;
        }
    }

    /// <summary>An execution unit saw <see cref="GpuDeviceOptions.AccessCounterThreshold"/> remote accesses to a page (kernel: an access-counter buffer entry).</summary>
    internal void NotifyAccessCounter(GpuContext ctx, ulong va)
    {
        Counters.Inc(GpuCounter.AccessCounterNotifications);
        lock (_accessCounterLock)
        {
            if (_accessCounterCount < _accessCounterQueue.Length)
            {
                _accessCounterQueue[_accessCounterCount++] = (ctx.Id, va);
            }
        }
        FaultBuffer.Kick();
    }

    private void ServiceAccessCounters()
    {
        int n;
        lock (_accessCounterLock)
        {
            n = _accessCounterCount;
            Array.Copy(_accessCounterQueue, _accessCounterBatch, n);
            _accessCounterCount = 0;
        }
        if (n == 0)
        {
            return;
        }
        Span<GpuFaultRecord> region = _batch.AsSpan(0, 1);
        for (int i = 0; i < n; i++)
        {
            (int id, ulong va) = _accessCounterBatch[i];
            GpuContext? ctx = ContextById(id);
            if (ctx is null || ctx.IsDead)
            {
                continue;
            }
            region[0] = new GpuFaultRecord(id, Page.AlignDown(va, Page.Size), GpuAccess.Read, -1, Stopwatch.GetTimestamp());
            ctx.ServiceBlock(Page.AlignDown(va, Page.PmdSize), region, forceMigrate: true, out _, out _);
        }
        Replay();
    }
}
