using Hetmem.Physical;

namespace Hetmem.Mm;

/// <summary>mremap flags (kernel: MREMAP_*).</summary>
[Flags]
public enum MremapFlags
{
    /// <summary>Resize in place only.</summary>
    None = 0,
    /// <summary>The mapping may move.</summary>
    MayMove = 1,
    /// <summary>Move to exactly the new address (needs MayMove).</summary>
    Fixed = 2,
    /// <summary>Move the pages but leave the old range mapped and empty (needs MayMove, same size, private anonymous).</summary>
    DontUnmap = 4,
}

/// <summary>mremap (kernel: mm/mremap.c).</summary>
public sealed unsafe partial class AddressSpace
{
    /// <summary>
    /// Resizes and/or moves a mapping (kernel: mremap). Returns the new address. Shrinking unmaps the tail; growing
    /// extends in place when the space after the VMA is free, else moves (MREMAP_MAYMOVE); MREMAP_FIXED moves to
    /// exactly <paramref name="newAddress"/>, replacing what is there; MREMAP_DONTUNMAP moves the pages and leaves
    /// the old range mapped and empty. An old length of 0 duplicates a shared mapping. A moved VMA merges with
    /// compatible neighbours; an anonymous VMA that never faulted takes the page offset of its new address.
    /// </summary>
    /// <exception cref="MmException">EINVAL (unknown flags, unaligned address, zero new length or one beyond user space, FIXED or DONTUNMAP
    /// without MAYMOVE, DONTUNMAP that resizes or targets a VM_PFNMAP/VM_DONTEXPAND mapping, fixed target unaligned,
    /// beyond user space or overlapping the old range, old length 0 on a private mapping, a hugetlb mapping that grows
    /// or is cut off its huge-page boundary), EFAULT (no VMA at the old address, the old range runs past its VMA, or a
    /// VM_PFNMAP/VM_DONTEXPAND mapping would grow), EPERM (a fixed target below mmap_min_addr), ENOMEM (cannot grow in place without MAYMOVE, or no room).</exception>
    public ulong Mremap(ulong oldAddress, ulong oldLength, ulong newLength, MremapFlags flags, ulong newAddress = 0)
    {
        if ((flags & ~(MremapFlags.MayMove | MremapFlags.Fixed | MremapFlags.DontUnmap)) != 0)
        {
            MmException.Throw(Errno.EINVAL, $"mremap: unknown flags 0x{(int)flags:x}");
        }
        if ((flags & MremapFlags.Fixed) != 0 && (flags & MremapFlags.MayMove) == 0)
        {
            MmException.Throw(Errno.EINVAL, "mremap: MREMAP_FIXED needs MREMAP_MAYMOVE");
        }
        ulong oldLen = Page.AlignUp(oldLength, Page.Size);
        ulong newLen = Page.AlignUp(newLength, Page.Size);
        bool dontUnmap = (flags & MremapFlags.DontUnmap) != 0;
        if (dontUnmap && ((flags & MremapFlags.MayMove) == 0 || oldLen != newLen))
        {
            MmException.Throw(Errno.EINVAL, "mremap: MREMAP_DONTUNMAP needs MREMAP_MAYMOVE and cannot resize");
        }
        if (!Page.IsAligned(oldAddress, Page.Size))
        {
            MmException.Throw(Errno.EINVAL, $"mremap: address 0x{oldAddress:x} is not page aligned");
        }
        if (newLen == 0)
        {
            MmException.Throw(Errno.EINVAL, "mremap: new length is zero or overflows");
        }
        if (newLen > TaskSize)
        {
            MmException.Throw(Errno.EINVAL, $"mremap: new length 0x{newLen:x} is larger than user space");   // kernel: check_mremap_params
        }
        bool fixedMove = (flags & MremapFlags.Fixed) != 0;
        if (fixedMove || dontUnmap)
        {
            // kernel: check_mremap_params checks the new address whenever it is used (vrm_implies_new_addr: FIXED, or
            // DONTUNMAP, where it is a hint).
            if (!Page.IsAligned(newAddress, Page.Size))
            {
                MmException.Throw(Errno.EINVAL, $"mremap: fixed target 0x{newAddress:x} is not page aligned");
            }
            if (newAddress < oldAddress + oldLen && oldAddress < newAddress + newLen)
            {
                MmException.Throw(Errno.EINVAL, "mremap: fixed target overlaps the old range");
            }
            if (newLen > TaskSize || newAddress > TaskSize - newLen)
            {
                MmException.Throw(Errno.EINVAL, $"mremap: fixed target [0x{newAddress:x}, +0x{newLen:x}) is beyond user space");
            }
        }
        using (MmapLock.Write())
        {
            ThrowIfDead();
            Vma? vma = Vmas.Find(oldAddress);
            if (vma is null)
            {
                MmException.Throw(Errno.EFAULT, $"mremap: no mapping at 0x{oldAddress:x}");
            }
            if (vma.Kind == VmaKind.HugeTlb)
            {
                ulong hs = Page.Bytes(vma.HugeOrder);
                if (!Page.IsAligned(oldAddress, hs))
                {
                    MmException.Throw(Errno.EINVAL, $"mremap: 0x{oldAddress:x} is not aligned to the huge page size");
                }
                oldLen = Page.AlignUp(oldLen, hs);
                newLen = Page.AlignUp(newLen, hs);
                if (newLen > oldLen)
                {
                    MmException.Throw(Errno.EINVAL, "mremap: a hugetlb mapping cannot grow");
                }
            }
            if (oldLen > newLen && (oldAddress + newLen > TaskSize || oldLen - newLen > TaskSize - (oldAddress + newLen)))
            {
                // The old tail would go by munmap, which refuses a range beyond user space (do_vmi_munmap): checked
                // before anything is unmapped, so the rejected call changes nothing.
                MmException.Throw(Errno.EINVAL, $"mremap: the old tail [0x{oldAddress + newLen:x}, +0x{oldLen - newLen:x}) is beyond user space");
            }
            if (!fixedMove && !dontUnmap && oldLen >= newLen)
            {
                // Shrink in place (kernel: mremap_shrink): the tail is unmapped whatever maps it.
                if (oldLen > newLen)
                {
                    UnmapForMremapLocked(oldAddress + newLen, oldLen - newLen);
                }
                return oldAddress;
            }
            // A fixed move that shrinks unmaps the old tail first (kernel: mremap_to), so only the kept part must fit.
            ulong keptLen = fixedMove ? Math.Min(oldLen, newLen) : oldLen;
            bool multi = false;
            if (keptLen > vma.End - oldAddress)
            {
                // Linux 6.17+: a move that does not resize may span several VMAs and the holes between them, but only
                // as a MREMAP_FIXED move (kernel: vrm_move_only); DONTUNMAP alone takes the one-VMA path.
                multi = fixedMove && oldLen == newLen;
                if (!multi)
                {
                    MmException.Throw(Errno.EFAULT, $"mremap: [0x{oldAddress:x}, +0x{oldLen:x}) runs past the end of {vma}");
                }
                foreach (Vma v in Vmas.Intersecting(oldAddress, oldAddress + keptLen))
                {
                    if (v.Kind == VmaKind.HugeTlb || (v.Flags & (VmFlags.DontExpand | VmFlags.PfnMap)) != 0)
                    {
                        MmException.Throw(Errno.EFAULT, $"mremap: {v} cannot be moved together with other VMAs");
                    }
                }
            }
            if (oldLen == 0 && !vma.IsShared)
            {
                MmException.Throw(Errno.EINVAL, "mremap: an old length of 0 duplicates only shared mappings");
            }
            if (!multi && (vma.Flags & (VmFlags.DontExpand | VmFlags.PfnMap)) != 0)
            {
                if (dontUnmap)
                {
                    MmException.Throw(Errno.EINVAL, $"mremap: MREMAP_DONTUNMAP is not allowed on {vma}");
                }
                if (newLen > oldLen)
                {
                    MmException.Throw(Errno.EFAULT, $"mremap: {vma} cannot grow");
                }
            }
            if (!fixedMove && !dontUnmap && oldLen != 0 && !multi)
            {
                // Grow in place when the VMA ends with the old range and the space after it is free.
                ulong growEnd = oldAddress + newLen;
                if (oldAddress + oldLen == vma.End && growEnd <= TaskSize && growEnd > oldAddress && Vmas.IsFree(vma.End, growEnd))
                {
                    Vma grown = new(this, vma.Start, growEnd, vma.Flags, vma.Kind, vma.File, vma.Pgoff, vma.Anon) { Reservation = vma.Reservation };
                    ReplaceVmasLocked([vma], [grown]);
                    MergeAroundLocked(grown);
                    return oldAddress;
                }
            }
            if ((flags & MremapFlags.MayMove) == 0)
            {
                MmException.Throw(Errno.ENOMEM, "mremap: cannot grow in place and MREMAP_MAYMOVE is not set");
            }
            ulong align = vma.Kind == VmaKind.HugeTlb ? Page.Bytes(vma.HugeOrder) : Page.Size;
            if (fixedMove && !Page.IsAligned(newAddress, align))
            {
                MmException.Throw(Errno.EINVAL, $"mremap: fixed target 0x{newAddress:x} is not aligned to the huge page size");
            }
            if (fixedMove && newAddress < MmapMinAddr)
            {
                // kernel: mremap_to's get_unmapped_area(MAP_FIXED) → security_mmap_addr, before anything moves.
                MmException.Throw(Errno.EPERM, $"mremap: fixed target 0x{newAddress:x} is below mmap_min_addr 0x{MmapMinAddr:x}");
            }
            ulong target = fixedMove ? newAddress : GetUnmappedAreaLocked(dontUnmap ? newAddress : 0, newLen, align);
            if (fixedMove)
            {
                if (!multi)
                {
                    UnmapForMremapLocked(target, newLen);   // a multi-VMA move unmaps the target piece by piece
                }
                if (oldLen > newLen)
                {
                    UnmapForMremapLocked(oldAddress + newLen, oldLen - newLen);
                    oldLen = newLen;
                }
            }
            if (oldLen == 0)
            {
                return DuplicateSharedLocked(vma, oldAddress, target, newLen);
            }
            if (multi)
            {
                return MoveRangeLocked(oldAddress, oldLen, target, dontUnmap && !fixedMove, dontUnmap);
            }
            return MoveVmaLocked(oldAddress, oldLen, target, newLen, dontUnmap);
        }
    }

    /// <summary>Unmaps for mremap, applying munmap's hugetlb boundary rule.</summary>
    private void UnmapForMremapLocked(ulong start, ulong len)
    {
        foreach (Vma v in Vmas.Intersecting(start, start + len))
        {
            if (v.Kind == VmaKind.HugeTlb)
            {
                ulong hs = Page.Bytes(v.HugeOrder);
                if (start > v.Start && !Page.IsAligned(start, hs) || start + len < v.End && !Page.IsAligned(start + len, hs))
                {
                    MmException.Throw(Errno.EINVAL, $"mremap would split the hugetlb VMA {v} off a huge-page boundary");
                }
            }
        }
        UnmapLocked(start, start + len);
    }

    /// <summary>
    /// Moves every VMA piece of [<paramref name="oldAddress"/>, +<paramref name="len"/>) to the same offset from
    /// <paramref name="target"/>, leaving the holes between them (kernel 6.17+: a move over several VMAs). Each
    /// piece's target is unmapped just before it moves, unless <paramref name="targetIsFree"/>; the caller checked that
    /// every VMA may take part.
    /// </summary>
    private ulong MoveRangeLocked(ulong oldAddress, ulong len, ulong target, bool targetIsFree, bool dontUnmap)
    {
        foreach (Vma v in Vmas.Snapshot(oldAddress, oldAddress + len))
        {
            ulong s = Math.Max(v.Start, oldAddress), e = Math.Min(v.End, oldAddress + len);
            ulong t = target + (s - oldAddress);
            if (!targetIsFree)
            {
                UnmapForMremapLocked(t, e - s);
            }
            MoveVmaLocked(s, e - s, t, e - s, dontUnmap);
        }
        return target;
    }

    /// <summary>mremap with old length 0: a second mapping of the same shared object (kernel: the "duplicate shm area" case).</summary>
    private ulong DuplicateSharedLocked(Vma vma, ulong oldAddress, ulong target, ulong newLen)
    {
        var dup = new Vma(this, target, target + newLen, vma.Flags, vma.Kind, vma.File, vma.PgoffOf(oldAddress), null);
        Vmas.Insert(dup);
        vma.File?.Mappings.Add(dup);
        HoldFile(vma.File, 1);
        MergeAroundLocked(dup);
        return target;
    }

    /// <summary>
    /// The allocating half of a move, done before any entry moves: splits the anonymous THPs the move cannot keep whole
    /// and allocates every destination table (kernel: move_vma moves the entries back when move_page_tables runs out
    /// of memory; allocating first gives the same result, nothing moved).
    /// </summary>
    /// <exception cref="MmException">ENOMEM when a split or a destination table finds no frame; no entry has moved,
    /// and the destination tables allocated so far are freed.</exception>
    private void PrepareMoveLocked(Vma src, ulong oldAddress, ulong target, ulong moveLen)
    {
        try
        {
            for (ulong off = 0; off < moveLen;)
            {
                ulong a = oldAddress + off;
                Pte e = Lookup(a, out int order, out ulong* slot);
                ulong step = Page.Bytes(order);
                if (slot == null || e.IsNone || order > 0 && (e.Value & Pte.Huge) == 0)
                {
                    off = Page.AlignDown(a, step) + step - oldAddress;
                    continue;
                }
                if (order > 0)
                {
                    bool aligned = Page.IsAligned(a, step) && Page.IsAligned(target + off, step) && off + step <= moveLen;
                    if (!aligned && order == Page.PmdOrder && src.Kind == VmaKind.Anonymous)
                    {
                        SplitHugePmd(Page.AlignDown(a, step), slot);
                        continue;
                    }
                    if (!aligned)
                    {
                        off = Page.AlignDown(a, step) + step - oldAddress;
                        continue;
                    }
                }
                ulong* dst = order switch
                {
                    0 => PteEntry(target + off, alloc: true),
                    Page.PmdOrder => PmdEntry(target + off, alloc: true),
                    _ => PudEntry(target + off, alloc: true),
                };
                if (dst == null)
                {
                    MmException.Throw(Errno.ENOMEM, "mremap: no memory for page tables");
                }
                off += step;
            }
        }
        catch (MmException)
        {
            Vma? before = Vmas.FindLastStartingBelow(target);
            Vma? after = Vmas.FindFirstEndingAbove(target);
            FreePgTables(target, target + moveLen, before?.End ?? 0, after?.Start ?? TaskSize + 1);
            throw;
        }
    }

    private ulong MoveVmaLocked(ulong oldAddress, ulong oldLen, ulong target, ulong newLen, bool dontUnmap)
    {
        List<Vma> parts = SplitForRangeLocked(oldAddress, oldAddress + oldLen);
        Vma src = parts[0];
        ulong moveLen = Math.Min(oldLen, newLen);
        PrepareMoveLocked(src, oldAddress, target, moveLen); // ENOMEM here leaves every entry where it was
        // An anonymous VMA that never faulted takes the page offset of its new place, so it can merge there.
        ulong pgoff = src.Kind == VmaKind.Anonymous && src.Anon is null ? target >> Page.Shift : src.Pgoff;
        var moved = new Vma(this, target, target + newLen, src.Flags, src.Kind, src.File, pgoff, src.Anon) { Reservation = src.Reservation };
        Vmas.Insert(moved);
        src.File?.Mappings.Add(moved);
        HoldFile(src.File, 1);

        // Move the entries (kernel: move_page_tables) inside an UNMAP bracket over the old range.
        var range = new MmuNotifierRange(this, oldAddress, oldAddress + oldLen, MmuNotifierEvent.Unmap);
        Notifiers.InvalidateRangeStart(range);
        for (ulong off = 0; off < moveLen;)
        {
            ulong a = oldAddress + off;
            Pte e = Lookup(a, out int order, out ulong* slot);
            ulong step = Page.Bytes(order);
            if (slot == null || e.IsNone)
            {
                off = Page.AlignDown(a, step) + step - oldAddress;
                continue;
            }
            if (order > 0 && (e.Value & Pte.Huge) == 0)
            {
                off = Page.AlignDown(a, step) + step - oldAddress;   // a non-leaf non-present upper entry: nothing to move
                continue;
            }
            if (order > 0)
            {
                ulong hs = Page.Bytes(order);
                bool aligned = Page.IsAligned(a, hs) && Page.IsAligned(target + off, hs) && off + hs <= moveLen;
                if (!aligned && order == Page.PmdOrder && src.Kind == VmaKind.Anonymous)
                {
                    SplitHugePmd(Page.AlignDown(a, hs), slot);
                    continue;
                }
                if (!aligned)
                {
                    // File-backed huge entries are dropped and refault at the new place.
                    ZapHugeLeafBracketed(src, Page.AlignDown(a, hs), slot, order);
                    off = Page.AlignDown(a, hs) + hs - oldAddress;
                    continue;
                }
            }
            ulong* dst = order switch
            {
                0 => PteEntry(target + off, alloc: true),
                Page.PmdOrder => PmdEntry(target + off, alloc: true),
                _ => PudEntry(target + off, alloc: true),
            };
            if (dst == null)
            {
                MmException.Throw(Errno.ENOMEM, "mremap: no memory for page tables");
            }
            lock (PtlFor(slot))
            {
                ulong v = *slot;
                *slot = 0;
                Volatile.Write(ref *dst, v);
            }
            off += step;
        }
        FlushTlb();
        Notifiers.InvalidateRangeEnd(range);
        Vmas.Remove(src);
        src.File?.Mappings.Remove(src);
        if (dontUnmap)
        {
            // The old range stays mapped, empty (kernel: the source VMA loses its anon_vma).
            var empty = new Vma(this, src.Start, src.End, src.Flags, src.Kind, src.File, src.Pgoff, null) { Reservation = src.Reservation };
            Vmas.Insert(empty);
            src.File?.Mappings.Add(empty);
            MergeAroundLocked(empty);
        }
        else
        {
            Vma? before = Vmas.FindLastStartingBelow(oldAddress);
            Vma? after = Vmas.FindFirstEndingAbove(oldAddress);
            ulong floor = before?.End ?? 0;
            ulong ceiling = after?.Start ?? TaskSize + 1;
            FreePgTables(oldAddress, oldAddress + oldLen, floor, ceiling);
            ReleaseFile(src.File, 1);
        }
        MergeAroundLocked(moved);
        return target;
    }
}
