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
    /// <summary>Resizes and/or moves a mapping (kernel: mremap). Returns the new address.</summary>
    /// <exception cref="MmException">EINVAL (unaligned, bad flags, zero new length, overlapping fixed target, DONTUNMAP on a
    /// non-private-anonymous or resized mapping), EFAULT (the old range is not one VMA), ENOMEM (cannot grow in place
    /// without MayMove, or no room).</exception>
    public ulong Mremap(ulong oldAddress, ulong oldLength, ulong newLength, MremapFlags flags, ulong newAddress = 0)
    {
        if ((flags & ~(MremapFlags.MayMove | MremapFlags.Fixed | MremapFlags.DontUnmap)) != 0 || !Page.IsAligned(oldAddress, Page.Size))
        {
            MmException.Throw(Errno.EINVAL, $"mremap: bad flags {flags} or unaligned address 0x{oldAddress:x}");
        }
        if ((flags & (MremapFlags.Fixed | MremapFlags.DontUnmap)) != 0 && (flags & MremapFlags.MayMove) == 0)
        {
            MmException.Throw(Errno.EINVAL, "mremap: MREMAP_FIXED and MREMAP_DONTUNMAP need MREMAP_MAYMOVE");
        }
        ulong oldLen = Page.AlignUp(oldLength, Page.Size);
        ulong newLen = Page.AlignUp(newLength, Page.Size);
        if (newLen == 0 || newLen < newLength || oldLen < oldLength)
        {
            MmException.Throw(Errno.EINVAL, "mremap: new length is zero or overflows");
        }
        if ((flags & MremapFlags.DontUnmap) != 0 && oldLen != newLen)
        {
            MmException.Throw(Errno.EINVAL, "mremap: MREMAP_DONTUNMAP cannot resize");
        }
        bool fixedMove = (flags & MremapFlags.Fixed) != 0;
        if (fixedMove)
        {
            if (!Page.IsAligned(newAddress, Page.Size) || newLen > TaskSize || newAddress > TaskSize - newLen)
            {
                MmException.Throw(Errno.EINVAL, $"mremap: bad fixed target 0x{newAddress:x}");
            }
            if (newAddress < oldAddress + oldLen && oldAddress < newAddress + newLen)
            {
                MmException.Throw(Errno.EINVAL, "mremap: fixed target overlaps the old range");
            }
        }
        using (MmapLock.Write())
        {
            ThrowIfDead();
            Vma? vma = Vmas.Find(oldAddress);
            if (vma is null || oldLen == 0 || oldAddress + oldLen > vma.End)
            {
                MmException.Throw(Errno.EFAULT, $"mremap: [0x{oldAddress:x}, +0x{oldLen:x}) is not inside one VMA");
            }
            if (oldLen == 0)
            {
                MmException.Throw(Errno.EINVAL, "mremap: duplicating a mapping (old length 0) is not supported for this VMA");
            }
            if ((flags & MremapFlags.DontUnmap) != 0 && (vma.Kind != VmaKind.Anonymous || vma.IsShared))
            {
                MmException.Throw(Errno.EINVAL, "mremap: MREMAP_DONTUNMAP needs a private anonymous mapping");
            }
            if (vma.Kind is VmaKind.PfnMap or VmaKind.MixedMap && newLen > oldLen)
            {
                MmException.Throw(Errno.EFAULT, "mremap: cannot grow a special mapping");
            }
            if (!fixedMove && (flags & MremapFlags.DontUnmap) == 0)
            {
                if (newLen <= oldLen)
                {
                    if (newLen < oldLen)
                    {
                        UnmapLocked(oldAddress + newLen, oldAddress + oldLen);
                    }
                    return oldAddress;
                }
                ulong growEnd = oldAddress + newLen;
                if (oldAddress + oldLen == vma.End && growEnd <= TaskSize && Vmas.IsFree(vma.End, growEnd) && vma.Kind != VmaKind.HugeTlb)
                {
                    Vma grown = new(this, vma.Start, growEnd, vma.Flags, vma.Kind, vma.File, vma.Pgoff, vma.Anon) { Reservation = vma.Reservation };
                    ReplaceVmasLocked([vma], [grown]);
                    return oldAddress;
                }
                if ((flags & MremapFlags.MayMove) == 0)
                {
                    MmException.Throw(Errno.ENOMEM, "mremap: cannot grow in place and MREMAP_MAYMOVE is not set");
                }
            }
            ulong target = fixedMove ? newAddress : GetUnmappedAreaLocked(0, newLen, Page.Size);
            if (fixedMove)
            {
                UnmapLocked(target, target + newLen);
                vma = Vmas.Find(oldAddress)!;
            }
            return MoveVmaLocked(vma, oldAddress, oldLen, target, newLen, (flags & MremapFlags.DontUnmap) != 0);
        }
    }

    private ulong MoveVmaLocked(Vma vma, ulong oldAddress, ulong oldLen, ulong target, ulong newLen, bool dontUnmap)
    {
        List<Vma> parts = SplitForRangeLocked(oldAddress, oldAddress + oldLen);
        Vma src = parts[0];
        ulong moveLen = Math.Min(oldLen, newLen);
        var moved = new Vma(this, target, target + newLen, src.Flags, src.Kind, src.File, src.Pgoff, src.Anon) { Reservation = src.Reservation };
        Vmas.Insert(moved);
        src.File?.Mappings.Add(moved);

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
            if (order > 0)
            {
                ulong hs = Page.Bytes(order);
                bool aligned = Page.IsAligned(a, hs) && Page.IsAligned(target + off, hs) && off + hs <= moveLen;
                if (!aligned && order == Page.PmdOrder && src.Kind == VmaKind.Anonymous)
                {
                    SplitHugePmdLocked(Page.AlignDown(a, hs), slot);
                    continue;
                }
                if (!aligned)
                {
                    // File-backed huge entries are dropped and refault at the new place.
                    MmuGather g = MmuGather.Rent();
                    ZapRange(src, Page.AlignDown(a, hs), Page.AlignDown(a, hs) + hs, g);
                    FinishGather(g);
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
                *dst = v;
            }
            off += step;
        }
        FlushTlb();
        Notifiers.InvalidateRangeEnd(range);
        Vmas.Remove(src);
        src.File?.Mappings.Remove(src);
        if (dontUnmap)
        {
            InsertVmaLocked(src.With(src.Start, src.End, anon: new AnonVma()));
        }
        else
        {
            int first = Vmas.IndexOfFirstEndingAbove(oldAddress);
            ulong floor = first > 0 ? Vmas.All[first - 1].End : 0;
            ulong ceiling = first < Vmas.Count ? Vmas.All[first].Start : TaskSize + 1;
            FreePgTables(oldAddress, oldAddress + oldLen, floor, ceiling);
        }
        if (newLen < oldLen)
        {
            // Shrinking move: the tail of the old range is unmapped.
            UnmapLocked(target + newLen, target + oldLen);
        }
        return target;
    }
}
