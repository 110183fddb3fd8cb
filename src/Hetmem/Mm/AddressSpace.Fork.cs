using Hetmem.Physical;

namespace Hetmem.Mm;

/// <summary>fork (kernel: dup_mmap, copy_page_range).</summary>
public sealed unsafe partial class AddressSpace
{
    /// <summary>
    /// Creates a child address space (kernel: fork → dup_mmap). Private mappings become copy-on-write: their
    /// present entries are write-protected in the parent inside one PROTECTION_PAGE bracket per VMA, and shared
    /// with the child. Shared mappings are not copied (the child refaults them). Device-exclusive entries are
    /// restored first; device-private entries are shared read-only.
    /// </summary>
    /// <exception cref="MmException">EINVAL when this space has exited; ENOMEM when page tables cannot be allocated.</exception>
    public AddressSpace Fork()
    {
        using (MmapLock.Write())
        {
            ThrowIfDead();
            var child = new AddressSpace(Memory, Swap) { DefaultHugetlb = DefaultHugetlb };
            try
            {
                ForkLocked(child);
            }
            catch
            {
                child.Exit();
                throw;
            }
            return child;
        }
    }

    /// <summary>dup_mmap with the mmap write lock held: copies every VMA and its entries into <paramref name="child"/>.</summary>
    private void ForkLocked(AddressSpace child)
    {
        foreach (Vma v in Vmas.All.ToArray())
        {
            var cv = new Vma(child, v.Start, v.End, v.Flags, v.Kind, v.File, v.Pgoff, v.Anon is null ? null : new AnonVma());
            child.Vmas.Insert(cv);
            cv.File?.Mappings.Add(cv);
            HoldFile(cv.File, 1);
            bool copy = !v.IsShared && (v.Kind is VmaKind.Anonymous or VmaKind.File or VmaKind.Dax or VmaKind.HugeTlb) || v.Kind is VmaKind.PfnMap or VmaKind.MixedMap;
            if (!copy)
            {
                continue;
            }
            bool cow = !v.IsShared && (v.Flags & VmFlags.MayWrite) != 0 && v.Kind is not VmaKind.PfnMap;
            var range = new MmuNotifierRange(this, v.Start, v.End, MmuNotifierEvent.ProtectionPage);
            if (cow)
            {
                Notifiers.InvalidateRangeStart(range);
            }
            bool flush = true;   // stays set if the copy throws half-way: entries may already be write-protected
            try
            {
                flush = CopyRange(child, v, cv, cow);
            }
            finally
            {
                if (flush)
                {
                    FlushTlb();
                }
                if (cow)
                {
                    Notifiers.InvalidateRangeEnd(range);
                }
            }
        }
    }

    private bool CopyRange(AddressSpace child, Vma v, Vma cv, bool cow)
    {
        bool flush = false;
        for (ulong a = v.Start; a < v.End;)
        {
            Pte e = Lookup(a, out int order, out ulong* slot);
            ulong step = Page.Bytes(order);
            if (slot == null || e.IsNone)
            {
                a = Page.AlignDown(a, step) + step;
                continue;
            }
            ulong* dst = order switch
            {
                0 => child.PteEntry(a, alloc: true),
                Page.PmdOrder => child.PmdEntry(a, alloc: true),
                _ => child.PudEntry(a, alloc: true),
            };
            if (dst == null)
            {
                MmException.Throw(Errno.ENOMEM, "fork: no memory for the child's page tables");
            }
            if (cow && e.IsWritable)
            {
                AssertInBracket(a, "fork's write-protect");
            }
            ulong sharedDevicePage = Page.NoPfn;
            lock (PtlFor(slot))
            {
                var cur = new Pte(Volatile.Read(ref *slot));
                if (cur.SwapType == SwapEntryType.DeviceExclusive)
                {
                    // Restore the original mapping before copying (kernel: try_restore_exclusive_pte).
                    cur = Pte.Make(cur.Pfn, cur.SwapWritable, Pte.Dirty);
                    *slot = cur.Value;
                }
                ulong childValue = cur.Value;
                if (cur.MapsPage)
                {
                    ulong pfn = cur.Pfn;
                    if (pfn == _hugeZeroPfn && child.HugeZeroPfn != pfn)
                    {
                        throw new InvalidOperationException("the child could not share the huge zero page");
                    }
                    bool counted = pfn != Memory.ZeroPfn && pfn != _hugeZeroPfn && !cur.IsSpecial;
                    if (v.Kind == VmaKind.HugeTlb && !v.IsShared && counted && Memory.Frame(pfn).Mapping is AnonVma)
                    {
                        // A private hugetlb page the parent owns is copied at fork (the kernel copies eagerly when it
                        // must; Hetmem always does, so each side keeps owning its pages). File pages are shared.
                        ulong copyPfn = CopyHugetlbPage(v, pfn, order);
                        ref FrameInfo cf = ref Memory.Frame(copyPfn);
                        cf.Mapping = cv.PrepareAnon();
                        cf.Index = Memory.Frame(pfn).Index;
                        childValue = (cur.Value & ~Pte.PfnMask) | (copyPfn << Page.Shift);
                        Memory.AddMap(copyPfn);
                    }
                    else
                    {
                        if (cow && cur.IsWritable)
                        {
                            *slot = cur.Value & ~Pte.Write;
                            childValue = *slot;
                            flush = true;
                        }
                        else if (cow)
                        {
                            childValue = cur.Value & ~Pte.Write;
                        }
                        if (counted)
                        {
                            Memory.ClearFlags(Memory.Head(pfn), FrameFlags.AnonExclusive);
                            Memory.Get(pfn);
                            Memory.AddMap(pfn);
                        }
                    }
                }
                else
                {
                    switch (cur.SwapType)
                    {
                        case SwapEntryType.Swap:
                            Swap?.Duplicate((uint)cur.Pfn);
                            break;
                        case SwapEntryType.DevicePrivate:
                            if (cur.SwapWritable && cow)
                            {
                                *slot = Pte.MakeSwap(SwapEntryType.DevicePrivate, cur.Pfn, false, cur.SwapHuge).Value;
                            }
                            childValue = Pte.MakeSwap(SwapEntryType.DevicePrivate, cur.Pfn, false, cur.SwapHuge).Value;
                            Memory.Get(cur.Pfn);
                            Memory.AddMap(cur.Pfn);
                            sharedDevicePage = cur.Pfn;
                            break;
                        default:
                            childValue = 0; // migration/poison entries are not inherited (a migration holds the write lock out)
                            break;
                    }
                }
                *dst = childValue;
            }
            if (sharedDevicePage != Page.NoPfn)
            {
                // The child's entry is a further mapping of the device page: record it so eviction finds it
                // (kernel: the child's anon_vma joins the chain rmap walks).
                DeviceRmap.Add(Memory, sharedDevicePage, child, Page.AlignDown(a, step) >> Page.Shift);
            }
            a = Page.AlignDown(a, step) + step;
        }
        return flush;
    }

    private ulong CopyHugetlbPage(Vma v, ulong pfn, int order)
    {
        var file = (Storage.HugetlbFile)v.File!;
        ulong copy = file.Pool.AllocateSurplus();
        if (copy == Page.NoPfn)
        {
            MmException.Throw(Errno.ENOMEM, "fork: no free huge page to copy a private hugetlb page");
        }
        Memory.CopyFrame(copy, pfn, 1UL << order);
        return copy;
    }
}
