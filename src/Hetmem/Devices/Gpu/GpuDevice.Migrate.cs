using Hetmem.Diagnostics;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>VRAM residency: chunk allocation with eviction, and CPU faults on VRAM (kernel: UVM's PMM eviction, dev_pagemap_ops.migrate_to_ram).</summary>
public sealed unsafe partial class GpuDevice
{
    private readonly Vram? _vram;
    private readonly ulong[] _evictSrc = new ulong[Vram.ChunkPages];   // guarded by _serviceLock
    private readonly ulong[] _evictDst = new ulong[Vram.ChunkPages];   // guarded by _serviceLock
    private readonly CopyEngine _evictCopy = new(Vram.ChunkPages);     // guarded by _serviceLock

    // Per CPU thread and per device (MigrateToRam runs on the faulting thread): each device keeps its own request
    // objects, so nothing cached in a MigrateVma ever crosses devices or physical memories (MigrateVmaReuseTests).
    private readonly ThreadLocal<(MigrateVma Migrate, CopyEngine Copy)> _cpuScratch = new(() =>
        (new MigrateVma { Src = new ulong[BlockMask.Pages], Dst = new ulong[BlockMask.Pages] }, new CopyEngine(BlockMask.Pages)));

    internal Vram? VramInternal => _vram;

    /// <summary>
    /// The VRAM chunk of <paramref name="block"/>, allocating one and evicting the least recently filled chunks of other
    /// blocks while none is free (kernel: UVM's root-chunk allocation with <c>pick_root_chunk_to_evict</c>). Servicing
    /// thread, holding the service lock and no mmap lock. Null when nothing can be evicted (the faults are then served
    /// from system memory).
    /// </summary>
    internal VramChunk? EnsureChunk(GpuVaBlock block)
    {
        Vram vram = _vram!;
        for (int attempt = 0; attempt <= vram.ChunkCount + 1; attempt++)
        {
            long epoch = Volatile.Read(ref _replaySeq);
            long now = NowNs();
            VramChunk? c = vram.TryGetChunk(block, epoch, now);
            if (c is not null)
            {
                return c;
            }
            VramChunk? victim = vram.PickVictim(block, epoch, now, Options.MinChunkResidencyNs);
            if (victim is null)
            {
                return null;
            }
            EvictChunk(victim);
        }
        return null;
    }

    /// <summary>
    /// Evicts a VRAM chunk: migrates every page it holds back to system memory without looking at VMAs (kernel:
    /// migrate_device_range / migrate_device_pages / migrate_device_finalize, as UVM's eviction and driver unload do),
    /// then detaches it from its block. Pages that cannot move now keep the chunk draining until they are freed.
    /// Holding the service lock (or at teardown), no mmap lock.
    /// </summary>
    internal void EvictChunk(VramChunk chunk)
    {
        ulong[] src = _evictSrc, dst = _evictDst;
        long moved = 0, bytes = 0;
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        if (MigrateDevice.MigrateDeviceRange(Memory, src, chunk.BasePfn, Vram.ChunkPages) == Errno.Ok)
        {
            Array.Clear(dst);
            for (int i = 0; i < Vram.ChunkPages; i++)
            {
                ulong s = src[i];
                if ((s & (MigratePfn.Migrate | MigratePfn.Valid)) != (MigratePfn.Migrate | MigratePfn.Valid))
                {
                    continue;
                }
                ulong ram = Memory.Allocate(0);
                if (ram == Page.NoPfn)
                {
                    continue; // stays in VRAM; the chunk drains later
                }
                Memory.LockFrame(ram);
                _evictCopy.Add(MigratePfn.ToPfn(s), ram);
                dst[i] = MigratePfn.Make(ram);
            }
            bytes = _evictCopy.Submit(Memory);
            MigrateDevice.Pages(Memory, src, dst);
            for (int i = 0; i < Vram.ChunkPages; i++)
            {
                if ((src[i] & MigratePfn.Migrate) != 0 && (dst[i] & MigratePfn.Valid) != 0)
                {
                    moved++;
                }
            }
            MigrateDevice.Finalize(Memory, src, dst);
        }
        _vram!.Detach(chunk);
        Counters.Add(GpuCounter.EvictNs, ElapsedNs(t0));
        Counters.Inc(GpuCounter.Evictions);
        Counters.Add(GpuCounter.PagesMigratedOut, moved);
        Counters.Add(GpuCounter.BytesDtoH, bytes);
        if (TraceLog.Enabled)
        {
            TraceLog.Instant(_track, TraceCategory.Migrate, "Eviction", TraceArg.Pfn(chunk.BasePfn), TraceArg.Pages(moved));
        }
    }

    /// <summary>
    /// A CPU access hit a VRAM page (kernel: dev_pagemap_ops.migrate_to_ram, UVM's and nouveau's CPU fault path): migrates
    /// the aligned group of <see cref="GpuDeviceOptions.CpuFaultMigratePages"/> pages around the fault that lie in the
    /// VMA back to system memory. Runs on the faulting thread with its mmap read lock held; takes no driver lock but
    /// the VRAM and policy leaves.
    /// </summary>
    /// <returns>Ok (the fault is retried), EAGAIN when the page is busy, ENOMEM when no RAM is left, EFAULT when the
    /// address is no longer mapped.</returns>
    internal Errno MigrateToRam(in DevicePageFault fault)
    {
        if (fault.Space is not AddressSpace mm)
        {
            return Errno.EFAULT;
        }
        Counters.Inc(GpuCounter.CpuFaults);
        ulong fpfn = fault.Pfn;
        if (!Memory.TryGet(fpfn))
        {
            return Errno.EAGAIN; // freed meanwhile: the fault retries and sees the new entry
        }
        try
        {
            if (!Memory.TryLockFrame(fpfn))
            {
                return Errno.EAGAIN; // a migration of this page is in progress
            }
            try
            {
                return MigrateToRamLocked(mm, fault.Address, fpfn);
            }
            finally
            {
                Memory.UnlockFrame(fpfn);
            }
        }
        finally
        {
            Memory.Put(fpfn);
        }
    }

    private Errno MigrateToRamLocked(AddressSpace mm, ulong address, ulong fpfn)
    {
        Vma? vma = mm.Vmas.Find(address);
        if (vma is null)
        {
            return Errno.EFAULT;
        }
        ulong group = (ulong)Options.CpuFaultMigratePages << Page.Shift;
        ulong start = Math.Max(Page.AlignDown(address, group), vma.Start);
        ulong end = Math.Min(Page.AlignDown(address, group) + group, vma.End);
        (MigrateVma m, CopyEngine copy) = _cpuScratch.Value;
        m.Vma = vma;
        m.Start = start;
        m.End = end;
        m.PgmapOwner = Owner;
        m.Flags = MigrateVmaSelect.DevicePrivate;
        m.FaultPage = fpfn;
        Errno e = m.Setup();
        if (e != Errno.Ok)
        {
            return e == Errno.EINVAL ? Errno.EFAULT : e;
        }
        bool faultPageCopied = false, oom = false;
        int n = (int)m.Npages;
        for (int i = 0; i < n; i++)
        {
            ulong s = m.Src[i];
            if ((s & (MigratePfn.Migrate | MigratePfn.Valid)) != (MigratePfn.Migrate | MigratePfn.Valid))
            {
                continue;
            }
            ulong ram = Memory.Allocate(0);
            if (ram == Page.NoPfn)
            {
                oom |= MigratePfn.ToPfn(s) == fpfn;
                continue;
            }
            Memory.LockFrame(ram);
            copy.Add(MigratePfn.ToPfn(s), ram);
            m.Dst[i] = MigratePfn.Make(ram);
            faultPageCopied |= MigratePfn.ToPfn(s) == fpfn;
        }
        long bytes = copy.Submit(Memory);
        m.Pages();
        long moved = 0;
        GpuContext? ctx = ContextOf(mm);
        GpuVaBlock? block = ctx?.FindBlock(Page.AlignDown(start, Page.PmdSize));
        long now = NowNs();
        for (int i = 0; i < n; i++)
        {
            if ((m.Src[i] & MigratePfn.Migrate) != 0 && (m.Dst[i] & MigratePfn.Valid) != 0)
            {
                moved++;
                ulong va = m.Start + ((ulong)i << Page.Shift);
                if (block is not null && Page.AlignDown(va, Page.PmdSize) == block.Va)
                {
                    ctx!.RecordMigrationEvent(block, (int)((va - block.Va) >> Page.Shift), now);
                }
            }
        }
        m.Finalize();
        Counters.Add(GpuCounter.PagesMigratedOut, moved);
        Counters.Add(GpuCounter.BytesDtoH, bytes);
        if (oom && !faultPageCopied)
        {
            return Errno.ENOMEM;
        }
        return Errno.Ok;
    }
}
