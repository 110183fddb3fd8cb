using Hetmem.Diagnostics;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>Servicing of the faults of one 2 MiB block (kernel: UVM's per-va_block servicing, Xe's __xe_svm_handle_pagefault).</summary>
public sealed partial class GpuContext
{
    private readonly List<GpuSvmRange> _touched = [];           // servicing thread only
    private readonly MigrateVma _migrate = new() { Src = new ulong[BlockMask.Pages], Dst = new ulong[BlockMask.Pages] }; // servicing thread only
    private readonly CopyEngine _copy = new(BlockMask.Pages);   // servicing thread only
    private long _notifiersCounted;                             // servicing thread only: Svm.NotifiersCreated already counted

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
        if (wantMigrate && !BlockMayMigrate(block, now))
        {
            wantMigrate = false;
        }
        BlockMask toMigrate = default;
        BlockMask thrashing = default;
        _touched.Clear();

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
            }
            int index = (int)((f.Address - range!.Start) >> Page.Shift);
            if (f.Access != GpuAccess.Prefetch)
            {
                bool migrate = wantMigrate && range.Migratable && hint != ThrashingHint.Pin;
                if (migrate)
                {
                    toMigrate.Set(page);
                    range.Request(index, write);
                    counters.Add(GpuCounter.WriteRequestedPages, write ? 1 : 0);
                }
                else
                {
                    // Remote population: the fault's 64 KiB big page inside the range comes in at once, with the
                    // fault's own access (a read never asks for write, so it never breaks copy-on-write).
                    int big = o.Prefetch.Enabled ? Math.Max(1, o.Prefetch.BigPagePages) : 1;
                    int lo = Math.Max(index & ~(big - 1), 0), hi = Math.Min((index & ~(big - 1)) + big, range.PageCount);
                    for (int q = lo; q < hi; q++)
                    {
                        range.Request(q, write);
                    }
                    counters.Add(GpuCounter.WriteRequestedPages, write ? hi - lo : 0);
                }
            }
        }

        if (Svm.NotifiersCreated != _notifiersCounted)
        {
            counters.Add(GpuCounter.NotifiersCreated, Svm.NotifiersCreated - _notifiersCounted);
            _notifiersCounted = Svm.NotifiersCreated;
        }

        if (!toMigrate.IsEmpty)
        {
            long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            BlockMask migrated = MigrateToVram(block, toMigrate, thrashing, forceMigrate);
            counters.Add(GpuCounter.MigrateNs, GpuDevice.ElapsedNs(t0));
            TouchRangesOf(migrated, blockVa, svmCtx);
        }

        for (int t = 0; t < _touched.Count; t++)
        {
            GpuSvmRange r = _touched[t];
            counters.Inc(GpuCounter.GetPages);
            Errno e = Svm.GetPages(r, _binder, svmCtx);
            if (e == Errno.Ok)
            {
                e = CheckWritesGranted(faults, r, svmCtx);
            }
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

    /// <summary>
    /// hmm_range_fault reports this device's own private pages as they are, even when write was asked and their CPU
    /// entry is read-only (after mprotect, or shared copy-on-write after fork). A write fault left unsatisfied that way
    /// is either a permission error (the VMA forbids writes: EPERM) or needs the page back in system memory first: get
    /// the range's pages once more without claiming device pages, so hmm_range_fault faults them through the CPU path
    /// (migrate_to_ram, then the write fault breaks copy-on-write).
    /// </summary>
    private Errno CheckWritesGranted(Span<GpuFaultRecord> faults, GpuSvmRange r, in GpuSvmContext svmCtx)
    {
        bool needRetry = false;
        for (int k = 0; k < faults.Length; k++)
        {
            GpuFaultRecord f = faults[k];
            if (f.Access < GpuAccess.Write || f.Address < r.Start || f.Address >= r.End)
            {
                continue;
            }
            ulong pte = PageTable.Lookup(f.Address);
            if (GpuPte.Permits(pte, f.Access) || (pte & GpuPte.Valid) == 0)
            {
                continue;
            }
            if (!VmaAllowsWrite(f.Address))
            {
                return Errno.EPERM;
            }
            needRetry |= (pte & GpuPte.Vram) != 0;
        }
        if (!needRetry)
        {
            return Errno.Ok;
        }
        object? owner = r.Hmm.DevPrivateOwner;
        r.Hmm.DevPrivateOwner = null;
        try
        {
            Device.Counters.Inc(GpuCounter.GetPages);
            return Svm.GetPages(r, _binder, svmCtx);
        }
        finally
        {
            r.Hmm.DevPrivateOwner = owner;
        }
    }

    private bool VmaAllowsWrite(ulong address)
    {
        AddressSpace mm = Space;
        if (!mm.TryGetLiveReference())
        {
            return false;
        }
        try
        {
            using (mm.MmapLock.Read())
            {
                Vma? vma = mm.Vmas.Find(address);
                return vma is not null && (vma.Flags & VmFlags.Write) != 0;
            }
        }
        finally
        {
            mm.PutLiveReference();
        }
    }

    /// <summary>
    /// Oversubscription thrashing, per block: a block faulted for migration again soon after its chunk was evicted
    /// (<see cref="GpuDeviceOptions.EvictionThrashingNs"/>) would only evict another block that is still in use, so it
    /// is pinned to system memory (mapped remotely) for <see cref="ThrashingOptions.PinNs"/>. UVM's per-page detector
    /// ignores evictions and its 500 µs lapse is calibrated for hardware fault latency; this rule catches the
    /// evict/refault cycle at the simulated device's speed.
    /// </summary>
    private bool BlockMayMigrate(GpuVaBlock block, long now)
    {
        if (now < block.PinnedUntilNs)
        {
            return false;
        }
        long evicted = Volatile.Read(ref block.LastEvictedNs);
        ThrashingOptions t = Device.Options.Thrashing;
        if (t.Enabled && evicted != 0 && now - evicted < Device.Options.EvictionThrashingNs)
        {
            block.PinnedUntilNs = now + t.PinNs;
            Volatile.Write(ref block.LastEvictedNs, 0);
            Device.Counters.Inc(GpuCounter.PinsRemote);
            Trace("PinRemote", block.Va);
            return false;
        }
        return true;
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
    /// Migrates the faulted pages in <paramref name="faulted"/>, plus what the density tree prefetches inside each VMA's
    /// part of the block, to the block's VRAM chunk (kernel: UVM uvm_hmm_va_block_service_locked: pre-allocate the
    /// chunk, then migrate_vma_setup / copy / migrate_vma_pages / migrate_vma_finalize per VMA). Best effort: pages that
    /// cannot move stay in system memory and are mapped remotely. Returns the pages that moved.
    /// </summary>
    private BlockMask MigrateToVram(GpuVaBlock block, in BlockMask faulted, in BlockMask thrashing, bool forceMigrate)
    {
        BlockMask moved = default;
        GpuDeviceOptions o = Device.Options;
        // Pre-allocate the destination chunk before taking the mmap lock (eviction must not run under it).
        VramChunk? chunk = Device.EnsureChunk(block);
        if (chunk is null)
        {
            return moved;
        }
        BlockMask resident = Device.VramInternal!.ResidentOf(block);
        AddressSpace mm = Space;
        if (!mm.TryGetLiveReference())
        {
            return moved;
        }
        long migrated = 0, prefetched = 0, bytes = 0;
        long now = GpuDevice.NowNs();
        try
        {
            mm.MmapLock.EnterRead();
            try
            {
                BlockMask remaining = faulted;
                for (int p = remaining.NextSet(0); p < BlockMask.Pages; p = remaining.NextSet(0))
                {
                    ulong va = block.Va + ((ulong)p << Page.Shift);
                    Vma? vma = mm.Vmas.Find(va);
                    int lo = vma is null ? p : (int)((Math.Max(vma.Start, block.Va) - block.Va) >> Page.Shift);
                    int hi = vma is null ? p + 1 : (int)((Math.Min(vma.End, block.Va + Page.PmdSize) - block.Va) >> Page.Shift);
                    BlockMask window = default;
                    window.SetRange(lo, hi);
                    BlockMask want = remaining;
                    want.And(window);
                    remaining.AndNot(window);
                    if (vma is null || vma.Kind != VmaKind.Anonymous || vma.IsShared)
                    {
                        continue;
                    }
                    if (forceMigrate)
                    {
                        // Access counters notify per page; migrate the whole granule around it.
                        int gran = (int)(o.AccessCounterGranularity >> Page.Shift);
                        BlockMask g = default;
                        for (int q = want.NextSet(lo); q < hi; q = want.NextSet(q + 1))
                        {
                            g.SetRange(Math.Max(q & ~(gran - 1), lo), Math.Min((q & ~(gran - 1)) + gran, hi));
                        }
                        want = g;
                    }
                    want.AndNot(resident); // thrashing pages still move when faulted; they are only never prefetched
                    if (want.IsEmpty)
                    {
                        continue;
                    }
                    DensityPrefetcher.Compute(resident, want, thrashing, lo, hi, o.Prefetch, out BlockMask prefetch);
                    BlockMask all = want;
                    all.Or(prefetch);
                    for (int r = all.NextSet(lo); r < hi;)
                    {
                        int q = r + 1;
                        while (q < hi && all.Get(q))
                        {
                            q++;
                        }
                        MigrateRun(block, chunk, vma, block.Va + ((ulong)r << Page.Shift), block.Va + ((ulong)q << Page.Shift),
                            prefetch, now, ref moved, ref migrated, ref prefetched, ref bytes);
                        r = all.NextSet(q);
                    }
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
            TraceLog.Instant(TraceCategory.Migrate, "Migration", TraceArg.Address(block.Va), TraceArg.Pages(migrated));
        }
        return moved;
    }

    /// <summary>Makes sure every page in <paramref name="pages"/> has a range in <c>_touched</c>, so freshly migrated pages get bound now.</summary>
    private void TouchRangesOf(in BlockMask pages, ulong blockVa, in GpuSvmContext svmCtx)
    {
        for (int p = pages.NextSet(0); p < BlockMask.Pages; p = pages.NextSet(p + 1))
        {
            ulong va = blockVa + ((ulong)p << Page.Shift);
            bool covered = false;
            foreach (GpuSvmRange r in _touched)
            {
                if (va >= r.Start && va < r.End)
                {
                    covered = true;
                    p = Math.Max(p, (int)((Math.Min(r.End, blockVa + Page.PmdSize) - blockVa) >> Page.Shift) - 1);
                    break;
                }
            }
            if (covered)
            {
                continue;
            }
            if (Svm.FindOrInsertRange(va, write: false, svmCtx, out GpuSvmRange? range, out bool created) != Errno.Ok || range is null)
            {
                continue;
            }
            if (created)
            {
                Device.Counters.Inc(GpuCounter.RangesCreated);
            }
            range.ClearRequests();
            _touched.Add(range);
            p = Math.Max(p, (int)((Math.Min(range.End, blockVa + Page.PmdSize) - blockVa) >> Page.Shift) - 1);
        }
    }

    private void MigrateRun(GpuVaBlock block, VramChunk chunk, Vma vma, ulong start, ulong end, in BlockMask prefetch, long now,
        ref BlockMask moved, ref long migrated, ref long prefetched, ref long bytes)
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
                moved.Set(page);
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
