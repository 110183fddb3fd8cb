using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Mm;

/// <summary>mmap and the VMA bookkeeping shared by the system calls (kernel: mm/mmap.c, mm/vma.c).</summary>
public sealed unsafe partial class AddressSpace
{
    // Kernel: LEGACY_MAP_MASK: the flags MAP_SHARED_VALIDATE accepts besides MAP_SYNC. MAP_FIXED_NOREPLACE is newer and
    // not in it, so MAP_SHARED_VALIDATE | MAP_FIXED_NOREPLACE is EOPNOTSUPP (as the host kernel answers).
    // Raw x86-64 values for the ones Hetmem ignores: 32BIT 0x40, GROWSDOWN 0x100, DENYWRITE 0x800, EXECUTABLE 0x1000,
    // LOCKED 0x2000, NONBLOCK 0x10000, STACK 0x20000, UNINITIALIZED 0x4000000, HUGE_2MB 0x54000000, HUGE_1GB 0x78000000.
    private const MapFlags KnownLegacyFlags = MapFlags.SharedValidate | MapFlags.Fixed | MapFlags.Anonymous | MapFlags.NoReserve
        | MapFlags.Populate | MapFlags.HugeTlb
        | (MapFlags)(0x40 | 0x100 | 0x800 | 0x1000 | 0x2000 | 0x10000 | 0x20000 | 0x4000000 | 0x54000000 | 0x78000000);

    /// <summary>
    /// Maps memory (kernel: mmap). Anonymous when <paramref name="flags"/> has MAP_ANONYMOUS (then
    /// <paramref name="file"/> is ignored, as the kernel ignores the fd); otherwise maps <paramref name="file"/> from
    /// <paramref name="offset"/> with the open mode <paramref name="access"/>. Returns the start address. The checks
    /// run in the kernel's order (do_mmap, __get_unmapped_area, the file's mmap), and a rejected call changes nothing.
    /// </summary>
    /// <remarks>Unknown PROT bits and unknown MAP bits (without MAP_SHARED_VALIDATE) are ignored, as the kernel does.
    /// Every VMA of a file holds a reference on its inode (kernel: get_file), dropped when the VMA goes.</remarks>
    /// <exception cref="MmException">
    /// EBADF (no file without MAP_ANONYMOUS); EINVAL (zero length, unaligned offset or fixed address, no or an
    /// invalid mapping type, MAP_HUGETLB on a non-hugetlbfs file or without a pool, anonymous MAP_SHARED_VALIDATE, MAP_FIXED
    /// cutting a hugetlb mapping off a huge-page boundary);
    /// ENOMEM (length overflows when aligned, no room, beyond user space, hugetlb reservation failed); EOVERFLOW
    /// (offset + length beyond the file's limits); EPERM (fixed address below mmap_min_addr); EEXIST
    /// (MAP_FIXED_NOREPLACE over a mapping); EOPNOTSUPP (MAP_SHARED_VALIDATE with MAP_SYNC on a non-DAX file, or
    /// unknown flags); EACCES (the file's open mode does not allow the mapping); EIO (the file was evicted).
    /// </exception>
    public ulong Mmap(ulong address, ulong length, Prot prot, MapFlags flags, IMappable? file = null, ulong offset = 0, FileAccess access = FileAccess.ReadWrite)
    {
        // The offset first: x86's sys_mmap rejects an unaligned one before it looks up the file descriptor.
        if (!Page.IsAligned(offset, Page.Size))
        {
            MmException.Throw(Errno.EINVAL, $"offset 0x{offset:x} is not page aligned");
        }
        bool anonymous = (flags & MapFlags.Anonymous) != 0;
        if (anonymous)
        {
            file = null;
        }
        else if (file is null)
        {
            MmException.Throw(Errno.EBADF, "mmap without MAP_ANONYMOUS needs a file");
        }
        prot &= Prot.Read | Prot.Write | Prot.Exec;
        MapFlags type = flags & MapFlags.SharedValidate;
        bool hugetlb = anonymous ? (flags & MapFlags.HugeTlb) != 0 : file!.Kind == MappableKind.Hugetlb;
        if (!anonymous && !hugetlb && (flags & MapFlags.HugeTlb) != 0)
        {
            MmException.Throw(Errno.EINVAL, "MAP_HUGETLB needs an anonymous mapping or a hugetlbfs file");
        }
        HugetlbFs? hugeFs = null;
        ulong align = Page.Size;
        if (hugetlb)
        {
            if (anonymous)
            {
                hugeFs = DefaultHugetlb;
                if (hugeFs is null)
                {
                    MmException.Throw(Errno.EINVAL, "MAP_HUGETLB without a default hugetlbfs (DefaultHugetlb)");
                }
            }
            align = anonymous ? hugeFs!.Pool.PageBytes : Page.Bytes(file!.HugeOrder);
            length = Page.AlignUp(length, align);   // wraps to 0 on overflow: EINVAL below, as the kernel
        }
        if (length == 0)
        {
            MmException.Throw(Errno.EINVAL, "length is zero");
        }
        ulong len = Page.AlignUp(length, Page.Size);
        if (len == 0)
        {
            MmException.Throw(Errno.ENOMEM, $"length 0x{length:x} overflows when page aligned");
        }
        ulong pgoff = offset >> Page.Shift;
        if (pgoff + (len >> Page.Shift) < pgoff)
        {
            MmException.Throw(Errno.EOVERFLOW, $"offset 0x{offset:x} + length 0x{len:x} overflows");
        }
        // The mapping type is checked after the address is chosen (kernel: do_mmap's switch on MAP_TYPE follows
        // __get_unmapped_area and the MAP_FIXED_NOREPLACE check), so a bad type with a bad address reports the address.
        bool typeValid = type is MapFlags.Shared or MapFlags.Private || type == MapFlags.SharedValidate && !anonymous;
        bool shared = type != MapFlags.Private;

        // __get_unmapped_area's checks for a fixed address.
        bool fixedMap = (flags & (MapFlags.Fixed | MapFlags.FixedNoReplace)) != 0;
        if (!fixedMap && address != 0)
        {
            // kernel: round_hint_to_min — a hint is rounded down to its page, and one below mmap_min_addr is raised to it.
            address = Page.AlignDown(address, Page.Size);
            address = address is > 0 and < MmapMinAddr ? MmapMinAddr : address;
        }
        if (len > TaskSize)
        {
            MmException.Throw(Errno.ENOMEM, $"length 0x{len:x} exceeds user space");
        }
        if (fixedMap)
        {
            if (address > TaskSize - len)
            {
                MmException.Throw(Errno.ENOMEM, $"[0x{address:x}, +0x{len:x}) is beyond the top of user space");
            }
            if (!Page.IsAligned(address, align))
            {
                MmException.Throw(Errno.EINVAL, $"fixed address 0x{address:x} is not aligned to 0x{align:x}");
            }
            if (address < MmapMinAddr)
            {
                MmException.Throw(Errno.EPERM, $"0x{address:x} is below mmap_min_addr 0x{MmapMinAddr:x}");
            }
        }

        VmFlags vmFlags = (VmFlags)(int)prot | VmFlags.MayRead | VmFlags.MayExec;
        if (!shared || anonymous || (access & FileAccess.Write) != 0)
        {
            vmFlags |= VmFlags.MayWrite;
        }
        if (shared)
        {
            vmFlags |= VmFlags.Shared | VmFlags.MayShare;
        }
        if ((flags & MapFlags.NoReserve) != 0)
        {
            vmFlags |= VmFlags.NoReserve;
        }
        if (hugetlb)
        {
            vmFlags |= VmFlags.HugeTlb | VmFlags.DontExpand;
        }
        else if ((vmFlags & (VmFlags.NoReserve | VmFlags.Shared | VmFlags.Write)) == VmFlags.Write)
        {
            vmFlags |= VmFlags.Account;   // kernel: accountable_mapping
        }
        if ((flags & MapFlags.Sync) != 0 && type == MapFlags.SharedValidate)
        {
            vmFlags |= VmFlags.Sync;
        }

        using (MmapLock.Write())
        {
            ThrowIfDead();
            ulong start;
            if (fixedMap)
            {
                start = address;
                if ((flags & MapFlags.FixedNoReplace) != 0 && !Vmas.IsFree(start, start + len))
                {
                    MmException.Throw(Errno.EEXIST, $"[0x{start:x}, 0x{start + len:x}) overlaps an existing mapping");
                }
            }
            else if (file?.Kind == MappableKind.Dax && align == Page.Size && len >= Page.PmdSize)
            {
                start = GetUnmappedAreaHugeLocked(address, len, offset);
            }
            else
            {
                start = GetUnmappedAreaLocked(address, len, align);
            }
            CheckMappingType(anonymous, typeValid, shared, type, flags, file, prot, access, pgoff, len);
            if (fixedMap)
            {
                // The old mappings go as by munmap: a hugetlb VMA may not be cut off a huge-page boundary (kernel:
                // __split_vma → hugetlb_vm_op_split), before anything is reserved or changed.
                foreach (Vma v in Vmas.Intersecting(start, start + len))
                {
                    ulong hs = Page.Bytes(v.HugeOrder);
                    if (v.Kind == VmaKind.HugeTlb && (start > v.Start && !Page.IsAligned(start, hs) || start + len < v.End && !Page.IsAligned(start + len, hs)))
                    {
                        MmException.Throw(Errno.EINVAL, $"MAP_FIXED [0x{start:x}, +0x{len:x}) would split the hugetlb VMA {v} off a huge-page boundary");
                    }
                }
            }

            // The backing object: anonymous shared memory is a shmem object, MAP_HUGETLB an unlinked hugetlbfs
            // file; either starts with the one reference the VMA will own. A mapped file gets a new reference.
            IMappable? backing = file;
            VmaKind kind;
            if (anonymous)
            {
                pgoff = hugetlb || shared ? 0 : start >> Page.Shift;
                if (hugetlb)
                {
                    backing = hugeFs!.CreateAnonymous(len);
                    kind = VmaKind.HugeTlb;
                }
                else if (shared)
                {
                    backing = new ShmemFile(Memory, len, Swap);
                    kind = VmaKind.File;
                }
                else
                {
                    kind = VmaKind.Anonymous;
                }
            }
            else
            {
                (backing as Inode)?.Hold();
                kind = file!.Kind switch
                {
                    MappableKind.Dax => VmaKind.Dax,
                    MappableKind.Hugetlb => VmaKind.HugeTlb,
                    _ => VmaKind.File,
                };
            }

            // Reserve huge pages before changing anything (kernel: hugetlb_reserve_pages at mmap): a shared mapping
            // reserves in the file (its promises outlive the mapping), a private one for the VMA alone.
            HugeReservation? reservation = null;
            if (kind == VmaKind.HugeTlb && (vmFlags & VmFlags.NoReserve) == 0)
            {
                var hf = (HugetlbFile)backing!;
                Errno err;
                if (shared)
                {
                    err = hf.ReserveRange(pgoff, pgoff + (len >> Page.Shift));
                }
                else
                {
                    ulong pages = len >> (Page.Shift + hf.Pool.Order);
                    err = hf.Pool.Reserve(pages);
                    if (err == Errno.Ok)
                    {
                        reservation = new HugeReservation { Remaining = (long)pages };
                    }
                }
                if (err != Errno.Ok)
                {
                    ReleaseFile(backing, 1);
                    MmException.Throw(err == Errno.EIO ? Errno.EIO : Errno.ENOMEM,
                        $"cannot reserve {len >> (Page.Shift + hf.Pool.Order)} huge pages (free {hf.Pool.Free}, reserved {hf.Pool.Reserved})");
                }
            }

            if (fixedMap)
            {
                UnmapLocked(start, start + len);
            }
            var vma = new Vma(this, start, start + len, vmFlags, kind, backing, pgoff, null)
            {
                Reservation = reservation,
            };
            Vmas.Insert(vma);
            backing?.Mappings.Add(vma);
            MergeAroundLocked(vma);
            if ((flags & MapFlags.Populate) != 0)
            {
                PopulateLocked(start, start + len, write: (vmFlags & (VmFlags.Write | VmFlags.Shared)) == VmFlags.Write, ignoreErrors: true);
            }
            return start;
        }
    }

    /// <summary>
    /// do_mmap's checks after the address is known: the file's size limit (EOVERFLOW), then the mapping type (EINVAL)
    /// and what the type needs from the file (EOPNOTSUPP for MAP_SHARED_VALIDATE flags, EACCES for the open mode).
    /// </summary>
    private static void CheckMappingType(bool anonymous, bool typeValid, bool shared, MapFlags type, MapFlags flags, IMappable? file, Prot prot, FileAccess access, ulong pgoff, ulong len)
    {
        if (!anonymous)
        {
            // kernel: file_mmap_ok with file_mmap_size_max = MAX_LFS_FILESIZE for regular files (not the file system's
            // s_maxbytes, which limits writes): a mapping may reach far beyond what the file could ever hold.
            const ulong MaxLfsFileSize = long.MaxValue;
            if (len > MaxLfsFileSize || pgoff > (MaxLfsFileSize - len) >> Page.Shift)
            {
                MmException.Throw(Errno.EOVERFLOW, $"[0x{pgoff << Page.Shift:x}, +0x{len:x}) is beyond the largest offset the file can have");
            }
        }
        if (!typeValid)
        {
            MmException.Throw(Errno.EINVAL, $"mapping type {type} is invalid (need MAP_SHARED, MAP_PRIVATE, or MAP_SHARED_VALIDATE with a file)");
        }
        if (!anonymous)
        {
            if (type == MapFlags.SharedValidate && (flags & ~(KnownLegacyFlags | MapFlags.Sync)) != 0)
            {
                MmException.Throw(Errno.EOPNOTSUPP, $"MAP_SHARED_VALIDATE with unknown flags 0x{(int)(flags & ~(KnownLegacyFlags | MapFlags.Sync)):x}");
            }
            if (type == MapFlags.SharedValidate && (flags & MapFlags.Sync) != 0 && file!.Kind != MappableKind.Dax)
            {
                MmException.Throw(Errno.EOPNOTSUPP, "MAP_SYNC needs a file on a DAX file system");
            }
            if (shared && (prot & Prot.Write) != 0 && (access & FileAccess.Write) == 0)
            {
                MmException.Throw(Errno.EACCES, "MAP_SHARED with PROT_WRITE needs a file open for writing");
            }
            if ((access & FileAccess.Read) == 0)
            {
                MmException.Throw(Errno.EACCES, "the file is not open for reading");
            }
        }
    }

    /// <summary>
    /// Maps an open file (kernel: mmap with a file descriptor): <see cref="Mmap"/> with the handle's inode and
    /// open mode.
    /// </summary>
    /// <exception cref="MmException">EINVAL for an unaligned offset, then EBADF when <paramref name="handle"/> is closed;
    /// otherwise as <see cref="Mmap"/>.</exception>
    public ulong MmapFile(ulong address, ulong length, Prot prot, MapFlags flags, FileHandle handle, ulong offset = 0)
    {
        ArgumentNullException.ThrowIfNull(handle);
        if (!Page.IsAligned(offset, Page.Size))
        {
            MmException.Throw(Errno.EINVAL, $"offset 0x{offset:x} is not page aligned");   // before the descriptor, as sys_mmap
        }
        if (handle.IsClosed)
        {
            MmException.Throw(Errno.EBADF, "mmap of a closed file handle");
        }
        return Mmap(address, length, prot, flags & ~MapFlags.Anonymous, handle.Inode, offset, handle.Access);
    }

    /// <summary>The hugetlbfs used for MAP_HUGETLB anonymous mappings (kernel: the default hstate's internal mount); null disables MAP_HUGETLB.</summary>
    public HugetlbFs? DefaultHugetlb { get; set; }

    private void ThrowIfDead()
    {
        if (!IsAlive)
        {
            MmException.Throw(Errno.EINVAL, "the address space has exited");
        }
    }

    /// <summary>
    /// Finds a free range (kernel: get_unmapped_area, top-down). A hint is rounded down to the page (up to the huge
    /// page for hugetlb) and used as is when that range is free.
    /// </summary>
    /// <summary>
    /// Places a DAX file mapping so that its virtual address and file offset agree modulo the PMD (or PUD, for
    /// 1 GiB and more) size, letting faults install huge entries (kernel: thp_get_unmapped_area). A free hint wins.
    /// </summary>
    private ulong GetUnmappedAreaHugeLocked(ulong hint, ulong len, ulong offset)
    {
        if (hint != 0)
        {
            ulong h = Page.AlignDown(hint, Page.Size);
            if (h >= MmapMinAddr && len <= TaskSize && h <= TaskSize - len && Vmas.IsFree(h, h + len))
            {
                return h;
            }
        }
        ulong huge = len >= Page.PudSize ? Page.PudSize : Page.PmdSize;
        ulong padded = len + huge;
        if (padded > len && padded <= TaskSize
            && (Vmas.TryFindGapTopDown(padded, Page.Size, MmapMinAddr, MmapBase, out ulong? a)
                || Vmas.TryFindGapTopDown(padded, Page.Size, MmapMinAddr, TaskSize, out a)))
        {
            return a.Value + ((offset - a.Value) & (huge - 1));
        }
        return GetUnmappedAreaLocked(0, len, Page.Size);
    }

    private ulong GetUnmappedAreaLocked(ulong hint, ulong len, ulong align)
    {
        if (hint != 0)
        {
            ulong h = align == Page.Size ? Page.AlignDown(hint, Page.Size) : Page.AlignUp(hint, align);
            if (h >= MmapMinAddr && len <= TaskSize && h <= TaskSize - len && Vmas.IsFree(h, h + len))
            {
                return h;
            }
        }
        if (Vmas.TryFindGapTopDown(len, align, MmapMinAddr, MmapBase, out ulong? a))
        {
            return a.Value;
        }
        if (Vmas.TryFindGapTopDown(len, align, MmapMinAddr, TaskSize, out a))
        {
            return a.Value;
        }
        MmException.Throw(Errno.ENOMEM, $"no free range of 0x{len:x} bytes");
        return 0;
    }

    /// <summary>Takes <paramref name="count"/> references on a mapped inode for new VMAs (kernel: get_file per vma).</summary>
    private static void HoldFile(IMappable? file, int count)
    {
        if (file is Inode inode)
        {
            for (int i = 0; i < count; i++)
            {
                inode.Hold();
            }
        }
    }

    /// <summary>Drops <paramref name="count"/> inode references of VMAs that went away (kernel: fput per vma).</summary>
    private static void ReleaseFile(IMappable? file, int count)
    {
        if (file is Inode inode)
        {
            for (int i = 0; i < count; i++)
            {
                inode.Release();
            }
        }
    }

    /// <summary>
    /// True when <paramref name="a"/> and <paramref name="b"/> (in that order) can become one VMA (kernel:
    /// can_vma_merge_after/before + is_mergeable_anon_vma): adjacent, same flags, kind, file and reservation,
    /// contiguous page offsets, compatible anonymous owners (either has none yet, or they are the same).
    /// </summary>
    private static bool CanMerge(Vma a, Vma b)
        => a.End == b.Start && a.Flags == b.Flags && a.Kind == b.Kind && a.File == b.File
           && a.Pgoff + (a.Length >> Page.Shift) == b.Pgoff
           && (a.Flags & VmFlags.Special) == 0
           && a.Kind is not (VmaKind.PfnMap or VmaKind.MixedMap) && a.Reservation == b.Reservation
           && (a.Anon is null || b.Anon is null || a.Anon == b.Anon);

    /// <summary>Merges <paramref name="vma"/> with its neighbours when compatible (kernel: vma_merge). Returns the resulting VMA.</summary>
    private Vma MergeAroundLocked(Vma vma)
    {
        Vma cur = vma;
        Vma? prev = Vmas.Prev(cur);
        if (prev is not null && CanMerge(prev, cur))
        {
            var merged = new Vma(this, prev.Start, cur.End, cur.Flags, cur.Kind, cur.File, prev.Pgoff, prev.Anon ?? cur.Anon) { Reservation = cur.Reservation };
            ReplaceVmasLocked([prev, cur], [merged]);
            cur = merged;
        }
        Vma? next = Vmas.Next(cur);
        if (next is not null && CanMerge(cur, next))
        {
            var merged = new Vma(this, cur.Start, next.End, cur.Flags, cur.Kind, cur.File, cur.Pgoff, cur.Anon ?? next.Anon) { Reservation = cur.Reservation };
            ReplaceVmasLocked([cur, next], [merged]);
            cur = merged;
        }
        return cur;
    }

    /// <summary>
    /// Replaces VMAs in the tree and in their file's reverse map atomically with respect to truncation, and moves
    /// the inode references with them (one per VMA). All VMAs map the same file (or none).
    /// </summary>
    internal void ReplaceVmasLocked(ReadOnlySpan<Vma> olds, ReadOnlySpan<Vma> news)
    {
        foreach (Vma o in olds)
        {
            Vmas.Remove(o);
        }
        foreach (Vma n in news)
        {
            Vmas.Insert(n);
        }
        IMappable? file = olds.Length > 0 ? olds[0].File : news.Length > 0 ? news[0].File : null;
        if (file is not null)
        {
            for (int k = 0; k < olds.Length; k++)
            {
                file.Mappings.Replace(olds[k], k == 0 ? ToMappings(news) : []);
            }
            if (olds.Length == 0)
            {
                file.Mappings.Replace(null, ToMappings(news));
            }
            if (news.Length > olds.Length)
            {
                HoldFile(file, news.Length - olds.Length);
            }
            else if (news.Length < olds.Length)
            {
                ReleaseFile(file, olds.Length - news.Length);
            }
        }
    }

    private static IFileMapping[] ToMappings(ReadOnlySpan<Vma> vmas)
    {
        var r = new IFileMapping[vmas.Length];
        for (int i = 0; i < vmas.Length; i++)
        {
            r[i] = vmas[i];
        }
        return r;
    }

    /// <summary>
    /// Splits the VMAs so that <paramref name="start"/> and <paramref name="end"/> fall on VMA boundaries
    /// (kernel: split_vma) and returns the VMAs inside [start, end).
    /// </summary>
    internal List<Vma> SplitForRangeLocked(ulong start, ulong end)
    {
        var inside = new List<Vma>();
        SplitForRangeLocked(start, end, inside);
        return inside;
    }

    /// <summary>As <see cref="SplitForRangeLocked(ulong, ulong)"/>, adding the VMAs to <paramref name="inside"/> (allocation-free when nothing splits).</summary>
    internal void SplitForRangeLocked(ulong start, ulong end, List<Vma> inside)
    {
        for (Vma? v = Vmas.FindFirstEndingAbove(start); v is not null && v.Start < end;)
        {
            Vma mid = SplitVmaLocked(v, Math.Max(v.Start, start), Math.Min(v.End, end));
            inside.Add(mid);
            v = Vmas.Next(mid);
        }
    }

    /// <summary>
    /// Splits <paramref name="v"/> so that [<paramref name="s"/>, <paramref name="e"/>) (inside it) is a VMA of its own,
    /// and returns that VMA. Huge entries straddling a new boundary are split (anonymous THP) or zapped (file, DAX)
    /// first, each in its own CLEAR bracket (kernel: vma_adjust_trans_huge → split_huge_pmd / split_huge_pud).
    /// </summary>
    internal Vma SplitVmaLocked(Vma v, ulong s, ulong e)
    {
        if (s == v.Start && e == v.End)
        {
            return v;
        }
        var parts = new List<Vma>(3);
        Vma mid = v.With(s, e);
        if (v.Start < s)
        {
            parts.Add(v.With(v.Start, s));
        }
        parts.Add(mid);
        if (e < v.End)
        {
            parts.Add(v.With(e, v.End));
        }
        SplitHugeAtLocked(v, s);
        SplitHugeAtLocked(v, e);
        ReplaceVmasLocked([v], [.. parts]);
        return mid;
    }

    /// <summary>Breaks a huge leaf of <paramref name="v"/> that straddles <paramref name="boundary"/> (see <see cref="SplitVmaLocked"/>).</summary>
    private void SplitHugeAtLocked(Vma v, ulong boundary)
    {
        if (boundary <= v.Start || boundary >= v.End || v.Kind == VmaKind.HugeTlb)
        {
            return;
        }
        if (!Page.IsAligned(boundary, Page.PudSize))
        {
            ulong* pud = PudEntry(boundary, alloc: false);
            if (pud != null && new Pte(Volatile.Read(ref *pud)) is { IsNone: false } pe && (pe.Value & Pte.Huge) != 0)
            {
                ZapHugeLeafBracketed(v, Page.AlignDown(boundary, Page.PudSize), pud, Page.PudOrder);
            }
        }
        if (!Page.IsAligned(boundary, Page.PmdSize))
        {
            ulong* pmd = PmdEntry(boundary, alloc: false);
            if (pmd != null && new Pte(Volatile.Read(ref *pmd)) is { IsNone: false } me && (me.Value & Pte.Huge) != 0)
            {
                ulong hstart = Page.AlignDown(boundary, Page.PmdSize);
                if (v.Kind == VmaKind.Anonymous && !me.IsDevMap
                    && (me.MapsPage || me.SwapType is SwapEntryType.Migration or SwapEntryType.DevicePrivate))
                {
                    SplitHugePmd(hstart, pmd);
                }
                else
                {
                    ZapHugeLeafBracketed(v, hstart, pmd, Page.PmdOrder);
                }
            }
        }
    }

    /// <summary>Zaps one huge file/DAX leaf (it refaults in smaller pieces) inside its own CLEAR bracket.</summary>
    private void ZapHugeLeafBracketed(Vma v, ulong hstart, ulong* slot, int order)
    {
        var range = new MmuNotifierRange(this, hstart, hstart + Page.Bytes(order), MmuNotifierEvent.Clear);
        Notifiers.InvalidateRangeStart(range);
        MmuGather g = MmuGather.Rent();
        ZapLeaf(v, slot, order, g, onlyFile: false, evenCows: true);
        if (g.NeedFlush)
        {
            FlushTlb();
            g.NeedFlush = false;
        }
        Notifiers.InvalidateRangeEnd(range);
        FinishGather(g);
    }
}
