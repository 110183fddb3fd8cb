using Hetmem.Physical;

namespace Hetmem.Mm;

/// <summary>mprotect (kernel: mm/mprotect.c).</summary>
public sealed unsafe partial class AddressSpace
{
    /// <summary>
    /// Changes the protection of [<paramref name="address"/>, +<paramref name="length"/>) (kernel: mprotect). Only
    /// VMAs whose flags change are split; the changed pieces merge with compatible neighbours afterwards. Making a
    /// private mapping writable for the first time adds VM_ACCOUNT, as the kernel does.
    /// </summary>
    /// <remarks>Unlike the kernel, which changes the VMAs before the first hole and then fails, a call that fails
    /// with ENOMEM (or EACCES) changes nothing: the whole range is validated first.</remarks>
    /// <exception cref="MmException">EINVAL (unaligned address, unknown protection bits, PROT_GROWSDOWN/PROT_GROWSUP on
    /// a mapping that does not grow, or both at once, a hugetlb VMA cut off its huge-page boundary), ENOMEM (the range wraps or part of it is unmapped), EACCES (PROT_WRITE on a shared
    /// mapping of a file not open for writing).</exception>
    public void Mprotect(ulong address, ulong length, Prot prot)
    {
        // PROT_GROWSDOWN / PROT_GROWSUP (kernel: do_mprotect_pkey strips them first; both at once is EINVAL).
        const Prot GrowsDown = (Prot)0x0100_0000, GrowsUp = (Prot)0x0200_0000;
        Prot grows = prot & (GrowsDown | GrowsUp);
        prot &= ~(GrowsDown | GrowsUp);
        if (grows == (GrowsDown | GrowsUp))
        {
            MmException.Throw(Errno.EINVAL, "mprotect: PROT_GROWSDOWN and PROT_GROWSUP together");
        }
        if (!Page.IsAligned(address, Page.Size))
        {
            MmException.Throw(Errno.EINVAL, $"mprotect: address 0x{address:x} is not page aligned");
        }
        if (length == 0)
        {
            return;
        }
        ulong len = Page.AlignUp(length, Page.Size);
        ulong end = address + len;
        if (len == 0 || end <= address)
        {
            MmException.Throw(Errno.ENOMEM, "mprotect: range wraps");
        }
        const Prot ProtSem = (Prot)8;   // accepted and ignored on x86 (kernel: arch_validate_prot)
        if ((prot & ~(Prot.Read | Prot.Write | Prot.Exec | ProtSem)) != 0)
        {
            MmException.Throw(Errno.EINVAL, $"mprotect: unknown protection bits 0x{(int)prot:x}");
        }
        prot &= Prot.Read | Prot.Write | Prot.Exec;
        using (MmapLock.Write())
        {
            ThrowIfDead();
            // Validate everything before changing anything: the range must be fully mapped, permissions allowed.
            List<Vma> vmas = Vmas.Snapshot(address, end);
            if (grows != 0)
            {
                // Hetmem has no VM_GROWSDOWN/VM_GROWSUP VMAs: no VMA in the range is ENOMEM (for GROWSUP: none at the
                // start), any other case EINVAL, as the kernel decides for a VMA that does not grow that way.
                bool none = vmas.Count == 0 || grows == GrowsUp && vmas[0].Start > address;
                MmException.Throw(none ? Errno.ENOMEM : Errno.EINVAL, $"mprotect: {(grows == GrowsUp ? "PROT_GROWSUP" : "PROT_GROWSDOWN")} on a mapping that does not grow");
            }
            ulong cursor = address;
            foreach (Vma v in vmas)
            {
                if (v.Start > cursor)
                {
                    MmException.Throw(Errno.ENOMEM, $"mprotect: 0x{cursor:x} is not mapped");
                }
                if ((prot & Prot.Write) != 0 && (v.Flags & VmFlags.MayWrite) == 0)
                {
                    MmException.Throw(Errno.EACCES, $"mprotect: {v} may not become writable");
                }
                if (v.Kind == VmaKind.HugeTlb)
                {
                    ulong hs = Page.Bytes(v.HugeOrder);
                    if (address > v.Start && !Page.IsAligned(address, hs) || end < v.End && !Page.IsAligned(end, hs))
                    {
                        MmException.Throw(Errno.EINVAL, $"mprotect splits hugetlb VMA {v} off a huge-page boundary");
                    }
                }
                cursor = v.End;
            }
            if (cursor < end)
            {
                MmException.Throw(Errno.ENOMEM, $"mprotect: 0x{cursor:x} is not mapped");
            }
            foreach (Vma v in vmas)
            {
                VmFlags nf = NewProtectionFlags(v, prot);
                if (nf == v.Flags)
                {
                    continue;
                }
                Vma piece = SplitVmaLocked(v, Math.Max(v.Start, address), Math.Min(v.End, end));
                Vma nv = piece.With(piece.Start, piece.End, nf);
                ReplaceVmasLocked([piece], [nv]);
                ChangeProtection(nv, prot);
                MergeAroundLocked(nv);
            }
        }
    }

    /// <summary>
    /// The VMA flags after mprotect(<paramref name="prot"/>) (kernel: mprotect_fixup's newflags): becoming writable
    /// charges VM_ACCOUNT to a private mapping; an anonymous VMA that never faulted gives it back when it stops being
    /// writable.
    /// </summary>
    private static VmFlags NewProtectionFlags(Vma v, Prot prot)
    {
        VmFlags old = v.Flags;
        VmFlags nf = (old & ~(VmFlags.Read | VmFlags.Write | VmFlags.Exec)) | (VmFlags)(int)prot;
        if ((nf & VmFlags.Write) != 0)
        {
            if ((old & (VmFlags.Account | VmFlags.Write | VmFlags.HugeTlb | VmFlags.Shared | VmFlags.NoReserve)) == 0)
            {
                nf |= VmFlags.Account;
            }
        }
        else if ((old & VmFlags.Account) != 0 && v.Kind == VmaKind.Anonymous && v.Anon is null)
        {
            nf &= ~VmFlags.Account;
        }
        return nf;
    }

    /// <summary>Rewrites present entries of a VMA for a new protection inside PROTECTION_VMA brackets, one per PMD-sized chunk that has entries.</summary>
    private void ChangeProtection(Vma v, Prot prot)
    {
        bool noAccess = (prot & (Prot.Read | Prot.Write | Prot.Exec)) == 0;
        bool noWrite = (prot & Prot.Write) == 0;
        bool flush = false;
        ulong addr = v.Start;
        while (addr < v.End)
        {
            // One bracket per PMD-sized chunk; a chunk inside a PUD leaf (DAX, 1 GiB hugetlb) grows to the whole leaf,
            // since changing that one entry changes all of it. (The VMA's ends never cut a leaf: SplitVmaLocked.)
            Pte first = Lookup(addr, out int firstOrder, out _);
            bool pudLeaf = firstOrder == Page.PudOrder && (first.Value & Pte.Huge) != 0 && first.MapsPage;
            ulong chunk = v.Kind == VmaKind.HugeTlb && v.HugeOrder == Page.PudOrder || pudLeaf ? Page.PudSize : Page.PmdSize;
            ulong chunkEnd = Math.Min(Page.AlignDown(addr, chunk) + chunk, v.End);
            if (pudLeaf)
            {
                addr = Math.Max(Page.AlignDown(addr, chunk), v.Start);
            }
            if (!RangeHasEntries(addr, chunkEnd))
            {
                addr = chunkEnd;
                continue;
            }
            var range = new MmuNotifierRange(this, addr, chunkEnd, MmuNotifierEvent.ProtectionVma);
            Notifiers.InvalidateRangeStart(range);
            for (ulong a = addr; a < chunkEnd;)
            {
                Pte e = Lookup(a, out int order, out ulong* slot);
                ulong step = Page.Bytes(order);
                if (slot == null || e.IsNone)
                {
                    a = Page.AlignDown(a, step) + step;
                    continue;
                }
                if (order > 0 && (e.Value & Pte.Huge) == 0)
                {
                    a = Page.AlignDown(a, step) + step; // missing lower table
                    continue;
                }
                if (order == Page.PmdOrder && v.Kind == VmaKind.Anonymous && (Page.AlignDown(a, step) < v.Start || Page.AlignDown(a, step) + step > v.End))
                {
                    SplitHugePmdLocked(Page.AlignDown(a, step), slot);
                    flush = true;
                    continue;
                }
                AssertInBracket(a, "mprotect");
                lock (PtlFor(slot))
                {
                    var cur = new Pte(Volatile.Read(ref *slot));
                    ulong nv = cur.Value;
                    if (cur.MapsPage)
                    {
                        if (noAccess)
                        {
                            nv = (nv & ~(Pte.Present | Pte.Write)) | Pte.ProtNone;
                        }
                        else
                        {
                            if (cur.IsProtNone)
                            {
                                nv = (nv & ~Pte.ProtNone) | Pte.Present;
                            }
                            if (noWrite)
                            {
                                nv &= ~Pte.Write;
                            }
                            else if (v.IsShared && cur.IsDirty && cur.IsPresent)
                            {
                                nv |= Pte.Write; // already dirty: no need to trap the next write
                            }
                        }
                    }
                    else if (noWrite && cur.SwapWritable && cur.SwapType is SwapEntryType.DevicePrivate or SwapEntryType.Migration or SwapEntryType.DeviceExclusive)
                    {
                        nv = Pte.MakeSwap(cur.SwapType, cur.Pfn, false, cur.SwapHuge).Value;
                    }
                    if (nv != cur.Value)
                    {
                        *slot = nv;
                        flush |= cur.IsPresent;
                    }
                }
                a = Page.AlignDown(a, step) + step;
            }
            if (flush)
            {
                FlushTlb();
                flush = false;
            }
            Notifiers.InvalidateRangeEnd(range);
            addr = chunkEnd;
        }
    }

    /// <summary>True when any leaf entry exists in [start, end) (lock-free peek used to skip empty chunks).</summary>
    private bool RangeHasEntries(ulong start, ulong end)
    {
        for (ulong a = start; a < end;)
        {
            Pte e = Lookup(a, out int order, out _);
            if (!e.IsNone)
            {
                return true;
            }
            ulong step = Page.Bytes(order);
            a = Page.AlignDown(a, step) + step;
        }
        return false;
    }
}
