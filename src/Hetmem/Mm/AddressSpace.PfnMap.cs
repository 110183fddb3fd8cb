using Hetmem.Physical;

namespace Hetmem.Mm;

/// <summary>Special mappings: remap_pfn_range (VM_PFNMAP|VM_IO) and vm_insert_page (VM_MIXEDMAP).</summary>
public sealed unsafe partial class AddressSpace
{
    /// <summary>
    /// Maps <paramref name="pageCount"/> frames from <paramref name="firstPfn"/> as a VM_PFNMAP | VM_IO region with special
    /// entries, like a driver's remap_pfn_range of a register window. The pages are not reference counted; HMM
    /// reports them as errors and devices cannot fault them.
    /// </summary>
    /// <remarks><paramref name="address"/> is a hint, as for mmap without MAP_FIXED: rounded down to its page, raised to
    /// mmap_min_addr when below it (round_hint_to_min), and used when that range is free and inside user space;
    /// otherwise a free range is chosen. Nothing is ever mapped below mmap_min_addr or above TASK_SIZE.</remarks>
    /// <exception cref="MmException">EINVAL for a zero count, unknown protection bits, or PFNs without host memory;
    /// ENOMEM when the range is larger than user space, or no room or page-table memory is left (nothing is mapped then).</exception>
    public ulong MapPfnRange(ulong address, ulong firstPfn, ulong pageCount, Prot prot)
    {
        if (pageCount == 0)
        {
            MmException.Throw(Errno.EINVAL, "remap_pfn_range of zero pages");
        }
        if ((prot & ~(Prot.Read | Prot.Write | Prot.Exec)) != 0)
        {
            MmException.Throw(Errno.EINVAL, $"remap_pfn_range: unknown protection bits 0x{(int)prot:x}");
        }
        if (pageCount > TaskSize >> Page.Shift || firstPfn + pageCount < firstPfn)
        {
            MmException.Throw(Errno.ENOMEM, $"remap_pfn_range of 0x{pageCount:x} pages is larger than user space");
        }
        for (ulong i = 0; i < pageCount; i++)
        {
            if (Memory.Address(firstPfn + i) == null)
            {
                MmException.Throw(Errno.EINVAL, $"PFN 0x{firstPfn + i:x} has no memory behind it");
            }
        }
        ulong len = pageCount << Page.Shift;
        using (MmapLock.Write())
        {
            ThrowIfDead();
            ulong start = GetUnmappedAreaLocked(RoundHintToMin(address), len, Page.Size);
            var vma = new Vma(this, start, start + len, (VmFlags)(int)prot | VmFlags.Shared | VmFlags.MayRead | VmFlags.MayWrite | VmFlags.PfnMap | VmFlags.Io | VmFlags.DontExpand,
                VmaKind.PfnMap, null, firstPfn, null);
            // kernel: remap_pfn_range builds its entries from vma->vm_page_prot, so PAGE_NONE gives PROT_NONE entries
            // (not present for the hardware: a CPU access faults and the VMA check raises SIGSEGV).
            ulong entry = Pte.Make(0, (prot & Prot.Write) != 0, Pte.Special | Pte.Dirty).Value;
            if ((prot & (Prot.Read | Prot.Write | Prot.Exec)) == 0)
            {
                entry = (entry & ~(Pte.Present | Pte.Write)) | Pte.ProtNone;
            }
            for (ulong i = 0; i < pageCount; i++)
            {
                ulong* pte = PteEntry(start + (i << Page.Shift), alloc: true);
                if (pte == null)
                {
                    for (ulong k = 0; k < i; k++)
                    {
                        *PteEntry(start + (k << Page.Shift), alloc: false) = 0;
                    }
                    FreePgTables(start, start + len, Vmas.FindLastStartingBelow(start)?.End ?? 0, Vmas.FindFirstEndingAbove(start)?.Start ?? TaskSize + 1);
                    MmException.Throw(Errno.ENOMEM, "remap_pfn_range: no memory for page tables");
                }
                *pte = entry | ((firstPfn + i) << Page.Shift);
            }
            Vmas.Insert(vma);
            return start;
        }
    }

    /// <summary>kernel: round_hint_to_min — a hint is rounded down to its page, and a non-zero one below mmap_min_addr is raised to it.</summary>
    private static ulong RoundHintToMin(ulong hint)
    {
        hint = Page.AlignDown(hint, Page.Size);
        return hint is > 0 and < MmapMinAddr ? MmapMinAddr : hint;
    }

    /// <summary>
    /// Creates a VM_MIXEDMAP mapping and fills it with freshly allocated, zeroed pages inserted one by one (kernel: a
    /// driver's mmap calling vm_insert_page, as the HMM test device does). A private mapping's pages are inserted
    /// read-only and copied on write.
    /// </summary>
    /// <remarks><paramref name="address"/> follows do_mmap: without MAP_FIXED(_NOREPLACE) it is a hint as for
    /// <see cref="MapPfnRange"/>; with one of them it is used as is when free. Hetmem difference: MAP_FIXED over an
    /// existing mapping does not replace it — a free range is chosen instead.</remarks>
    /// <exception cref="MmException">EINVAL for a zero length, unknown protection bits, no MAP_SHARED/MAP_PRIVATE type,
    /// or an unaligned fixed address; ENOMEM when the length overflows, a fixed range ends above TASK_SIZE, or memory or
    /// room runs out; EPERM for a fixed address below mmap_min_addr; EEXIST when a MAP_FIXED_NOREPLACE range overlaps a
    /// mapping (nothing is mapped after any error).</exception>
    public ulong MapMixedPages(ulong address, ulong length, Prot prot, MapFlags flags)
    {
        if (length == 0)
        {
            MmException.Throw(Errno.EINVAL, "vm_insert_page mapping of zero length");
        }
        if ((prot & ~(Prot.Read | Prot.Write | Prot.Exec)) != 0)
        {
            MmException.Throw(Errno.EINVAL, $"vm_insert_page mapping: unknown protection bits 0x{(int)prot:x}");
        }
        if ((flags & MapFlags.SharedValidate) == MapFlags.None)
        {
            MmException.Throw(Errno.EINVAL, "vm_insert_page mapping needs MAP_SHARED or MAP_PRIVATE");
        }
        ulong len = Page.AlignUp(length, Page.Size);
        if (len == 0 || len > TaskSize)
        {
            MmException.Throw(Errno.ENOMEM, $"vm_insert_page mapping of 0x{length:x} bytes is larger than user space");
        }
        bool shared = (flags & MapFlags.SharedValidate) != MapFlags.Private;
        // This is reached through mmap of the device file, so the address follows do_mmap's rules: a fixed address
        // must lie in [mmap_min_addr, TASK_SIZE) and be aligned; a hint is rounded (round_hint_to_min) and only used
        // when that range is free and inside user space.
        bool fixedMap = (flags & (MapFlags.Fixed | MapFlags.FixedNoReplace)) != 0;
        if (fixedMap)
        {
            if (address > TaskSize - len)
            {
                MmException.Throw(Errno.ENOMEM, $"vm_insert_page mapping: [0x{address:x}, +0x{len:x}) is beyond the top of user space");
            }
            if (!Page.IsAligned(address, Page.Size))
            {
                MmException.Throw(Errno.EINVAL, $"vm_insert_page mapping: fixed address 0x{address:x} is not page aligned");
            }
            if (address < MmapMinAddr)
            {
                MmException.Throw(Errno.EPERM, $"vm_insert_page mapping: 0x{address:x} is below mmap_min_addr 0x{MmapMinAddr:x}");
            }
        }
        using (MmapLock.Write())
        {
            ThrowIfDead();
            if ((flags & MapFlags.FixedNoReplace) != 0 && !Vmas.IsFree(address, address + len))
            {
                MmException.Throw(Errno.EEXIST, $"vm_insert_page mapping: [0x{address:x}, 0x{address + len:x}) overlaps an existing mapping");
            }
            ulong start = fixedMap && Vmas.IsFree(address, address + len) ? address : GetUnmappedAreaLocked(RoundHintToMin(address), len, Page.Size);
            VmFlags vf = (VmFlags)(int)prot | VmFlags.MayRead | VmFlags.MayWrite | VmFlags.MixedMap | (shared ? VmFlags.Shared | VmFlags.MayShare : 0);
            var vma = new Vma(this, start, start + len, vf, VmaKind.MixedMap, null, start >> Page.Shift, null);
            var installed = new List<(ulong Address, ulong Pfn)>();
            for (ulong a = start; a < start + len; a += Page.Size)
            {
                ulong pfn = Memory.Allocate(0, zero: true);
                ulong* pte = pfn == Page.NoPfn ? null : PteEntry(a, alloc: true);
                if (pte == null)
                {
                    if (pfn != Page.NoPfn)
                    {
                        Memory.Put(pfn);
                    }
                    foreach ((ulong ia, ulong ipfn) in installed)
                    {
                        *PteEntry(ia, alloc: false) = 0;
                        Memory.RemoveMap(ipfn);
                        Memory.Put(ipfn);
                    }
                    FreePgTables(start, start + len, Vmas.FindLastStartingBelow(start)?.End ?? 0, Vmas.FindFirstEndingAbove(start)?.Start ?? TaskSize + 1);
                    MmException.Throw(Errno.ENOMEM, "vm_insert_page: out of memory");
                }
                // The driver keeps no reference: the mapping's reference is the page's only one.
                *pte = Pte.Make(pfn, shared && (prot & Prot.Write) != 0).Value;
                Memory.AddMap(pfn);
                installed.Add((a, pfn));
            }
            Vmas.Insert(vma);
            return start;
        }
    }
}
