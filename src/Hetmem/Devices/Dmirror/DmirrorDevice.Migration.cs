using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Dmirror;

/// <summary>The device memory's migration paths: CPU faults on private pages and eviction (kernel: dmirror_devmem_fault, dmirror_device_evict_chunk).</summary>
public sealed unsafe partial class DmirrorDevice
{
    /// <summary>
    /// The CPU faulted on one of this node's private pages (kernel: dmirror_devmem_fault). Finds the mirror through
    /// the page, then migrates the faulting page (PTE-mapped) or the whole device folio (PMD-mapped) back to system
    /// memory with the same allocate-erase-copy step as MIGRATE_TO_SYS. Called with the mmap lock held for read.
    /// </summary>
    /// <returns>Ok (the fault is retried); EAGAIN when the page is busy (being migrated or freed); EFAULT (SIGBUS) when
    /// the page has no mirror or migrate_vma_setup refused; ENOMEM (OOM) when no system page could be allocated.</returns>
    public Errno MigrateToRam(in DevicePageFault fault)
    {
        var mm = (AddressSpace)fault.Space;
        ulong pfn = fault.Pfn;
        DmirrorChunk? c = FindChunk(pfn);
        DmirrorFile? mirror = c?.Owner[c.Offset(pfn)];
        if (c is null || mirror is null)
        {
            return Errno.EFAULT;
        }
        // A PMD-mapped device folio migrates whole; a PTE-mapped page alone (migrate_vma splits its folio).
        mm.QueryPte(fault.Address, out int level);
        int order = level != 0 && c.Order[c.Offset(pfn)] == Page.PmdOrder ? Page.PmdOrder : 0;
        if (!Memory.TryGet(pfn))
        {
            return Errno.EAGAIN;
        }
        if (!Memory.TryLockFrame(pfn))
        {
            Memory.Put(pfn);
            Thread.Yield();
            return Errno.EAGAIN;
        }
        try
        {
            ulong size = Page.Bytes(order);
            ulong start = Page.AlignDown(fault.Address, size);
            Vma? vma = mm.Vmas.Find(fault.Address);
            if (vma is null)
            {
                return Errno.EFAULT;
            }
            int nr = 1 << order;
            var args = new MigrateVma
            {
                Vma = vma,
                Start = start,
                End = start + size,
                Src = new ulong[nr],
                Dst = new ulong[nr],
                PgmapOwner = this,
                Flags = (IsPrivate ? MigrateVmaSelect.DevicePrivate : MigrateVmaSelect.DeviceCoherent) | (order != 0 ? MigrateVmaSelect.Compound : 0),
                FaultPage = pfn,
            };
            if (args.Setup() != Errno.Ok)
            {
                return Errno.EFAULT;
            }
            Errno r = mirror.DevmemFaultAllocAndCopy(args);
            if (r != Errno.Ok)
            {
                args.Finalize();
                return r;
            }
            args.Pages();
            args.Finalize();
            return Errno.Ok;
        }
        finally
        {
            Memory.UnlockFrame(pfn);
            Memory.Put(pfn);
        }
    }

    /// <summary>
    /// Migrates every page in use of <paramref name="chunk"/> back to system memory, keeping write permission and
    /// order (kernel: dmirror_device_evict_chunk over migrate_device_range).
    /// </summary>
    internal void EvictChunk(DmirrorChunk chunk)
    {
        int n = (int)chunk.PageCount;
        var src = new ulong[n];
        var dst = new ulong[n];
        if (MigrateDevice.MigrateDeviceRange(Memory, src, chunk.FirstPfn, (ulong)n) != Errno.Ok)
        {
            return;
        }
        for (int i = 0; i < n; i++)
        {
            ulong s = src[i];
            if ((s & (MigratePfn.Valid | MigratePfn.Migrate)) != (MigratePfn.Valid | MigratePfn.Migrate))
            {
                continue;
            }
            ulong spage = MigratePfn.ToPfn(s);
            int off = chunk.Offset(spage);
            int order = (s & MigratePfn.Compound) != 0 && chunk.Order[off] == Page.PmdOrder ? Page.PmdOrder : 0;
            ulong from = IsPrivate ? chunk.Backing[off] : spage;
            if (from == Page.NoPfn)
            {
                continue;
            }
            ulong dpage = Memory.Allocate(order);
            if (dpage == Page.NoPfn)
            {
                continue; // the kernel allocates with __GFP_NOFAIL; here the page stays on the device
            }
            Memory.LockFrame(dpage);
            dst[i] = MigratePfn.Make(dpage) | (s & MigratePfn.Write) | (order != 0 ? MigratePfn.Compound : 0);
            MigrateCopy.CopyPages(Memory, dpage, from, 1UL << order);
        }
        MigrateDevice.Pages(Memory, src, dst);
        MigrateDevice.Finalize(Memory, src, dst);
    }
}
