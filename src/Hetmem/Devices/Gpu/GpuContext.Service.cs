using Hetmem.Diagnostics;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>Servicing of the faults of one 2 MiB block (kernel: UVM's per-va_block servicing, Xe's __xe_svm_handle_pagefault).</summary>
public sealed partial class GpuContext
{
    private readonly List<GpuSvmRange> _touched = [];           // servicing thread only
    private readonly List<int> _touchedFirstFault = [];         // servicing thread only: index of a fault per touched range
    private readonly MigrateVma _migrate = new() { Src = new ulong[BlockMask.Pages], Dst = new ulong[BlockMask.Pages] }; // servicing thread only
    private readonly CopyEngine _copy = new(BlockMask.Pages);   // servicing thread only

    /// <summary>
    /// Services the faults of one block (servicing thread, holding the device's service lock, no mmap lock):
    /// drops faults already satisfied, applies thrashing hints, finds or creates the SVM ranges, migrates to VRAM
    /// what the placement policy wants (with density-tree prefetching), then gets pages and binds each range.
    /// </summary>
    /// <param name="blockVa">The 2 MiB-aligned block.</param>
    /// <param name="faults">The block's preprocessed faults.</param>
    /// <param name="forceMigrate">An access-counter notification: migrate the faulted granule even though it is mapped.</param>
    /// <param name="fatalIndex">Index of a fault that must be cancelled, or -1.</param>
    /// <param name="fatal">Why it must be cancelled.</param>
    internal void ServiceBlock(ulong blockVa, Span<GpuFaultRecord> faults, bool forceMigrate, out int fatalIndex, out Errno fatal)
    {
        fatalIndex = -1;
        fatal = Errno.Ok;
        GpuDeviceOptions o = Device.Options;
        GpuCounters counters = Device.Counters;
        var svmCtx = new GpuSvmContext(TimeoutMs: o.GetPagesTimeoutMs);
        bool vram = Device.VramInternal is not null;
        bool wantMigrate = vram && (forceMigrate || o.Placement == PlacementPolicy.MigrateOnFirstTouch);
        long now = GpuDevice.NowNs();
        GpuVaBlock block = GetOrCreateBlock(blockVa);
        BlockMask toMigrate = default;
        BlockMask thrashing = default;
        _touched.Clear();
        _touchedFirstFault.Clear();

        for (int k = 0; k < faults.Length; k++)
        {
            GpuFaultRecord f = faults[k];
            if (!forceMigrate && GpuPte.Permits(PageTable.Lookup(f.Address), f.Access))
            {
                continue; // serviced by an earlier batch; the replay lets the warp through
            }
            int page = (int)((f.Address - blockVa) >> Page.Shift);
            ThrashingHint hint = GetThrashingHint(block, page, now, ref thrashing);
            if (hint == ThrashingHint.Throttle)
            {
                counters.Inc(GpuCounter.ThrottledFaults);
                continue;
            }
            bool write = f.Access >= GpuAccess.Write;
            Errno e = Svm.FindOrInsertRange(f.Address, write, svmCtx, out GpuSvmRange? range, out bool created);
            if (e == Errno.EAGAIN)
            {
                continue; // an unmapped range waits for the garbage collector; the warp faults again after the replay
            }
            if (e != Errno.Ok)
            {
                if (fatalIndex < 0)
                {
                    fatalIndex = k;
                    fatal = e == Errno.ENOENT ? Errno.EFAULT : e;
                }
                continue;
            }
            if (created)
            {
                counters.Inc(GpuCounter.RangesCreated);
            }
            int slot = _touched.IndexOf(range!);
            if (slot < 0)
            {
                range!.ClearRequests();
                _touched.Add(range);
                _touchedFirstFault.Add(k);
            }
            int index = (int)((f.Address - range!.Start) >> Page.Shift);
            if (f.Access != GpuAccess.Prefetch)
            {
                range.Request(index, write);
                if (write)
                {
                    counters.Inc(GpuCounter.WriteRequestedPages);
                }
                if (wantMigrate && range.Migratable && hint != ThrashingHint.Pin)
                {
                    toMigrate.Set(page);
                }
            }
        }

        if (!toMigrate.IsEmpty)
        {
            long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            foreach (GpuSvmRange r in _touched)
            {
                if (r.Migratable)
                {
                    MigrateRangeToVram(block, r, toMigrate, thrashing, forceMigrate);
                }
            }
            counters.Add(GpuCounter.MigrateNs, GpuDevice.ElapsedNs(t0));
        }

        for (int t = 0; t < _touched.Count; t++)
        {
            GpuSvmRange r = _touched[t];
            counters.Inc(GpuCounter.GetPages);
            Errno e = Svm.GetPages(r, _binder, svmCtx);
            if (e is Errno.Ok or Errno.EAGAIN or Errno.EBUSY)
            {
                continue; // EAGAIN/EBUSY: the warps fault again after the replay
            }
            if (fatalIndex < 0)
            {
                fatalIndex = FaultInRange(faults, r, e);
                fatal = e;
            }
        }
    }

    /// <summary>The first fault in <paramref name="r"/> that asked for something the failing get-pages could not give.</summary>
    private static int FaultInRange(Span<GpuFaultRecord> faults, GpuSvmRange r, Errno e)
    {
        int any = -1;
        for (int k = 0; k < faults.Length; k++)
        {
            if (faults[k].Address < r.Start || faults[k].Address >= r.End || faults[k].Access == GpuAccess.Prefetch)
            {
                continue;
            }
            if (e != Errno.EPERM || faults[k].Access >= GpuAccess.Write)
            {
                return k;
            }
            any = any < 0 ? k : any;
        }
        return any < 0 ? 0 : any;
    }

    private ThrashingHint GetThrashingHint(GpuVaBlock block, int page, long now, ref BlockMask thrashing)
    {
        ThrashingOptions o = Device.Options.Thrashing;
        if (!o.Enabled)
        {
            return ThrashingHint.None;
        }
        lock (_policyLock)
        {
            PageThrashingState[]? states = block.Thrashing;
            if (states is null)
            {
                return ThrashingHint.None;
            }
            ref PageThrashingState s = ref states[page];
            byte throttles = s.Throttles;
            bool pinned = s.Pinned;
            ThrashingHint h = ThrashingDetector.GetHint(ref s, now, o);
            if (s.IsThrashing(o) || s.Pinned)
            {
                thrashing.Set(page);
            }
            if (h == ThrashingHint.Throttle && s.Throttles != throttles)
            {
                Device.Counters.Inc(GpuCounter.Throttles);
                Trace("ThrottlingStart", block.Va + ((ulong)page << Page.Shift));
            }
            else if (h == ThrashingHint.Pin && !pinned)
            {
                Device.Counters.Inc(GpuCounter.PinsRemote);
                Trace("PinRemote", block.Va + ((ulong)page << Page.Shift));
            }
            return h;
        }
    }

    /// <summary>Records a migration or revocation of <paramref name="page"/> of <paramref name="block"/> for thrashing detection.</summary>
    internal void RecordMigrationEvent(GpuVaBlock block, int page, long now)
    {
        ThrashingOptions o = Device.Options.Thrashing;
        if (!o.Enabled)
        {
            return;
        }
        lock (_policyLock)
        {
            block.Thrashing ??= new PageThrashingState[BlockMask.Pages];
            if (ThrashingDetector.RecordEvent(ref block.Thrashing[page], now, o) == ThrashingEvent.Detected)
            {
                Device.Counters.Inc(GpuCounter.Thrashing);
                Trace("ThrashingDetected", block.Va + ((ulong)page << Page.Shift));
            }
        }
    }

    private static void Trace(string name, ulong va)
    {
        if (TraceLog.Enabled)
        {
            TraceLog.Instant(TraceCategory.DeviceFault, name, TraceArg.Address(va));
        }
    }

    /// <summary>
    /// Migrates the faulted pages of <paramref name="range"/> in <paramref name="faulted"/>, plus what the density tree
    /// prefetches, to the block's VRAM chunk (kernel: UVM uvm_hmm_va_block_service_locked: pre-allocate the chunk,
    /// then migrate_vma_setup / copy / migrate_vma_pages / migrate_vma_finalize). Best effort: pages that cannot move
    /// stay in system memory and are mapped remotely.
    /// </summary>
    private void MigrateRangeToVram(GpuVaBlock block, GpuSvmRange range, in BlockMask faulted, in BlockMask thrashing, bool forceMigrate)
    {
        GpuDeviceOptions o = Device.Options;
        int first = (int)((range.Start - block.Va) >> Page.Shift);
        int outer = first + range.PageCount;
        if (range.End - range.Start > Page.PmdSize)
        {
            return;
        }
        BlockMask want = default;
        want.SetRange(first, outer);
        want.And(faulted);
        want.AndNot(thrashing);
        if (want.IsEmpty)
        {
            return;
        }
        if (forceMigrate)
        {
            // Access counters notify per page; migrate the whole granule around it.
            int gran = (int)(o.AccessCounterGranularity >> Page.Shift);
            BlockMask g = default;
            for (int p = want.NextSet(first); p < outer; p = want.NextSet(p + 1))
            {
                int lo = Math.Max(p & ~(gran - 1), first), hi = Math.Min((p & ~(gran - 1)) + gran, outer);
                g.SetRange(lo, hi);
            }
            g.AndNot(thrashing);
            want = g;
        }
        // Pre-allocate the destination chunk before taking the mmap lock (eviction must not run under it).
        VramChunk? chunk = Device.EnsureChunk(block);
        if (chunk is null)
        {
            return;
        }
        BlockMask resident = Device.VramInternal!.ResidentOf(block);
        want.AndNot(resident);
        if (want.IsEmpty)
        {
            return;
        }
        DensityPrefetcher.Compute(resident, want, thrashing, first, outer, o.Prefetch, out BlockMask prefetch);
        BlockMask all = want;
        all.Or(prefetch);

        AddressSpace mm = Space;
        if (!mm.TryGetLiveReference())
        {
            return;
        }
        long migrated = 0, prefetched = 0, bytes = 0;
        long now = GpuDevice.NowNs();
        try
        {
            mm.MmapLock.EnterRead();
            try
            {
                Vma? vma = mm.Vmas.Find(range.Start);
                if (vma is null || vma.Kind != VmaKind.Anonymous || vma.IsShared)
                {
                    return;
                }
                for (int p = all.NextSet(first); p < outer;)
                {
                    int q = p + 1;
                    while (q < outer && all.Get(q))
                    {
                        q++;
                    }
                    ulong start = Math.Max(block.Va + ((ulong)p << Page.Shift), vma.Start);
                    ulong end = Math.Min(block.Va + ((ulong)q << Page.Shift), vma.End);
                    if (start < end)
                    {
                        MigrateRun(block, chunk, vma, start, end, prefetch, now, ref migrated, ref prefetched, ref bytes);
                    }
                    p = all.NextSet(q);
                }
            }
            finally
            {
                mm.MmapLock.ExitRead();
            }
        }
        finally
        {
            mm.PutLiveReference();
        }
        GpuCounters c = Device.Counters;
        c.Add(GpuCounter.PagesMigratedIn, migrated);
        c.Add(GpuCounter.BytesHtoD, bytes);
        c.Add(GpuCounter.PrefetchBytes, prefetched << Page.Shift);
        if (TraceLog.Enabled && migrated > 0)
        {
            TraceLog.Instant(TraceCategory.Migrate, "Migration", TraceArg.Address(range.Start), TraceArg.Pages(migrated));
        }
    }

    private void MigrateRun(GpuVaBlock block, VramChunk chunk, Vma vma, ulong start, ulong end, in BlockMask prefetch, long now,
        ref long migrated, ref long prefetched, ref long bytes)
    {
        Vram vram = Device.VramInternal!;
        PhysicalMemory mem = Device.Memory;
        MigrateVma m = _migrate;
        m.Vma = vma;
        m.Start = start;
        m.End = end;
        m.PgmapOwner = Device.Owner;
        m.Flags = MigrateVmaSelect.System;
        m.FaultPage = Page.NoPfn;
        if (m.Setup() != Errno.Ok || m.Cpages == 0)
        {
            m.Finalize();
            return;
        }
        int firstPage = (int)((m.Start - block.Va) >> Page.Shift);
        int n = (int)m.Npages;
        for (int i = 0; i < n; i++)
        {
            ulong s = m.Src[i];
            if ((s & MigratePfn.Migrate) == 0)
            {
                continue;
            }
            if (!vram.TryClaimPage(chunk, firstPage + i, out ulong dpfn))
            {
                continue;
            }
            mem.LockFrame(dpfn);
            _copy.Add(MigratePfn.ToPfn(s), dpfn);
            m.Dst[i] = MigratePfn.Make(dpfn);
        }
        bytes += _copy.Submit(mem);
        m.Pages();
        for (int i = 0; i < n; i++)
        {
            if ((m.Src[i] & MigratePfn.Migrate) != 0 && (m.Dst[i] & MigratePfn.Valid) != 0)
            {
                migrated++;
                int page = firstPage + i;
                if (prefetch.Get(page))
                {
                    prefetched++;
                }
                RecordMigrationEvent(block, page, now);
            }
        }
        m.Finalize();
    }
}
