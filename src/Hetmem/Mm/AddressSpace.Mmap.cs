using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Mm;

/// <summary>mmap and the VMA bookkeeping shared by the system calls (kernel: mm/mmap.c, mm/vma.c).</summary>
public sealed unsafe partial class AddressSpace
{
    /// <summary>
    /// Maps memory (kernel: mmap). Anonymous when <paramref name="file"/> is null (MAP_ANONYMOUS); otherwise maps
    /// <paramref name="file"/> from <paramref name="offset"/> with the open mode <paramref name="access"/>.
    /// Returns the start address.
    /// </summary>
    /// <exception cref="MmException">
    /// EINVAL (zero length, unaligned offset or fixed address, bad flag combination), ENOMEM (no room, length
    /// overflow, hugetlb reservation failed), EOVERFLOW (offset + length overflows), EACCES (file open mode does not
    /// allow the protection), EEXIST (MAP_FIXED_NOREPLACE over a mapping), EPERM (below mmap_min_addr),
    /// EOPNOTSUPP (MAP_SYNC on a non-DAX file), ENODEV (a file kind that cannot be mapped this way).
    /// </exception>
    public ulong Mmap(ulong address, ulong length, Prot prot, MapFlags flags, IMappable? file = null, ulong offset = 0, FileAccess access = FileAccess.ReadWrite)
    {
        bool anonymous = (flags & MapFlags.Anonymous) != 0 || file is null;
        if ((flags & MapFlags.Anonymous) == 0 && file is null)
        {
            MmException.Throw(Errno.EBADF, "mmap without MAP_ANONYMOUS needs a file");
        }
        if (!Page.IsAligned(offset, Page.Size))
        {
            MmException.Throw(Errno.EINVAL, $"offset 0x{offset:x} is not page aligned");
        }
        if (length == 0)
        {
            MmException.Throw(Errno.EINVAL, "length is zero");
        }
        if ((prot & ~(Prot.Read | Prot.Write | Prot.Exec)) != 0)
        {
            MmException.Throw(Errno.EINVAL, $"unknown protection bits {prot}");
        }
        MapFlags type = flags & MapFlags.SharedValidate;
        if (type == MapFlags.None)
        {
            MmException.Throw(Errno.EINVAL, "exactly one of MAP_SHARED, MAP_SHARED_VALIDATE or MAP_PRIVATE is required");
        }
        bool shared = type != MapFlags.Private;
        bool hugetlb = (flags & MapFlags.HugeTlb) != 0 && anonymous || file?.Kind == MappableKind.Hugetlb;
        HugetlbFs? hugeFs = null;
        ulong align = Page.Size;
        if (hugetlb)
        {
            int order = file?.HugeOrder ?? DefaultHugetlb?.Pool.Order ?? 0;
            if (file is null && DefaultHugetlb is null)
            {
                MmException.Throw(Errno.ENOMEM, "MAP_HUGETLB without a hugetlbfs pool");
            }
            hugeFs = DefaultHugetlb;
            align = Page.Bytes(order);
        }
        ulong len = Page.AlignUp(length, align);
        if (len == 0 || len < length)
        {
            MmException.Throw(Errno.ENOMEM, $"length 0x{length:x} overflows when aligned");
        }
        if (!anonymous && (offset >> Page.Shift) + (len >> Page.Shift) < (offset >> Page.Shift))
        {
            MmException.Throw(Errno.EOVERFLOW, "offset + length overflows");
        }
        if (type == MapFlags.SharedValidate && (flags & MapFlags.Sync) != 0 && file?.Kind != MappableKind.Dax)
        {
            MmException.Throw(Errno.EOPNOTSUPP, "MAP_SYNC needs a DAX file");
        }
        if (!anonymous)
        {
            if ((access & FileAccess.Read) == 0)
            {
                MmException.Throw(Errno.EACCES, "the file is not open for reading");
            }
            if (shared && (prot & Prot.Write) != 0 && (access & FileAccess.Write) == 0)
            {
                MmException.Throw(Errno.EACCES, "MAP_SHARED with PROT_WRITE needs a file open for writing");
            }
            if (hugetlb && !Page.IsAligned(offset, align))
            {
                MmException.Throw(Errno.EINVAL, $"offset 0x{offset:x} is not aligned to the huge page size");
            }
        }
        bool fixedMap = (flags & (MapFlags.Fixed | MapFlags.FixedNoReplace)) != 0;
        if (fixedMap)
        {
            if (!Page.IsAligned(address, align))
            {
                MmException.Throw(Errno.EINVAL, $"fixed address 0x{address:x} is not aligned to 0x{align:x}");
            }
            if (len > TaskSize || address > TaskSize - len)
            {
                MmException.Throw(Errno.ENOMEM, $"[0x{address:x}, +0x{len:x}) is beyond the top of user space");
            }
            if (address < MmapMinAddr)
            {
                MmException.Throw(Errno.EPERM, $"0x{address:x} is below mmap_min_addr");
            }
        }
        if (len > TaskSize)
        {
            MmException.Throw(Errno.ENOMEM, "length exceeds user space");
        }

        VmFlags vmFlags = (VmFlags)(int)prot | VmFlags.MayRead | VmFlags.MayExec;
        if (anonymous || shared ? (access & FileAccess.Write) != 0 || anonymous : true)
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
            else
            {
                start = GetUnmappedAreaLocked(address, len, align);
            }

            // Backing object: anonymous shared memory is a shmem object; MAP_HUGETLB an unlinked hugetlbfs file.
            IMappable? backing = file;
            VmaKind kind;
            ulong pgoff = offset >> Page.Shift;
            if (hugetlb)
            {
                backing ??= hugeFs!.CreateAnonymous(len);
                kind = VmaKind.HugeTlb;
                if (file is null)
                {
                    pgoff = 0;
                }
            }
            else if (anonymous)
            {
                if (shared)
                {
                    backing = new ShmemFile(Memory, len, Swap);
                    kind = VmaKind.File;
                    pgoff = 0;
                }
                else
                {
                    kind = VmaKind.Anonymous;
                    pgoff = start >> Page.Shift;
                }
            }
            else
            {
                kind = file!.Kind switch
                {
                    MappableKind.Dax => VmaKind.Dax,
                    MappableKind.Hugetlb => VmaKind.HugeTlb,
                    _ => VmaKind.File,
                };
            }

            // Reserve huge pages before changing anything (kernel: hugetlb_reserve_pages at mmap).
            HugeReservation? reservation = null;
            if (kind == VmaKind.HugeTlb && (vmFlags & VmFlags.NoReserve) == 0)
            {
                HugetlbPool pool = ((HugetlbFile)backing!).Pool;
                ulong pages = len >> (Page.Shift + pool.Order);
                Errno err = pool.Reserve(pages);
                if (err != Errno.Ok)
                {
                    MmException.Throw(Errno.ENOMEM, $"cannot reserve {pages} huge pages (free {pool.Free}, reserved {pool.Reserved})");
                }
                reservation = new HugeReservation { Remaining = (long)pages };
            }

            if (fixedMap)
            {
                UnmapLocked(start, start + len);
            }
            var vma = new Vma(this, start, start + len, vmFlags, kind, backing, pgoff, kind == VmaKind.File && shared || kind == VmaKind.Dax && shared ? null : new AnonVma())
            {
                Reservation = reservation,
            };
            InsertVmaLocked(vma);
            if ((flags & MapFlags.Populate) != 0)
            {
                PopulateLocked(start, start + len, write: (prot & Prot.Write) != 0 && shared || (prot & Prot.Write) != 0 && kind == VmaKind.Anonymous, ignoreErrors: true);
            }
            return start;
        }
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

    /// <summary>Finds a free range (kernel: get_unmapped_area, top-down). A free, aligned hint is used as is.</summary>
    private ulong GetUnmappedAreaLocked(ulong hint, ulong len, ulong align)
    {
        if (hint != 0)
        {
            ulong h = Page.AlignUp(hint, align);
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

    /// <summary>Inserts a VMA, registering it with its file's reverse map, and merges it with compatible neighbours.</summary>
    private void InsertVmaLocked(Vma vma)
    {
        Vmas.Insert(vma);
        vma.File?.Mappings.Add(vma);
        MergeAroundLocked(vma);
    }

    private static bool CanMerge(Vma a, Vma b)
        => a.End == b.Start && a.Flags == b.Flags && a.Kind == b.Kind && a.File == b.File
           && a.Pgoff + (a.Length >> Page.Shift) == b.Pgoff
           && a.Kind is not (VmaKind.PfnMap or VmaKind.MixedMap) && a.Reservation == b.Reservation;

    /// <summary>Merges <paramref name="vma"/> with its neighbours when compatible (kernel: vma_merge). Returns the resulting VMA.</summary>
    private Vma MergeAroundLocked(Vma vma)
    {
        int i = Vmas.IndexOfFirstEndingAbove(vma.Start);
        IReadOnlyList<Vma> all = Vmas.All;
        Vma cur = vma;
        if (i > 0 && CanMerge(all[i - 1], cur))
        {
            Vma prev = all[i - 1];
            var merged = new Vma(this, prev.Start, cur.End, cur.Flags, cur.Kind, cur.File, prev.Pgoff, prev.Anon ?? cur.Anon);
            ReplaceVmasLocked([prev, cur], [merged]);
            cur = merged;
            i--;
        }
        all = Vmas.All;
        if (i + 1 < all.Count && CanMerge(cur, all[i + 1]))
        {
            Vma next = all[i + 1];
            var merged = new Vma(this, cur.Start, next.End, cur.Flags, cur.Kind, cur.File, cur.Pgoff, cur.Anon ?? next.Anon);
            ReplaceVmasLocked([cur, next], [merged]);
            cur = merged;
        }
        return cur;
    }

    /// <summary>Replaces VMAs in the tree and in their file's reverse map atomically with respect to truncation.</summary>
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
        foreach (Vma v in Vmas.Snapshot(start, end))
        {
            ulong s = Math.Max(v.Start, start);
            ulong e = Math.Min(v.End, end);
            if (s == v.Start && e == v.End)
            {
                inside.Add(v);
                continue;
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
            // Split huge PMDs of anonymous THPs that straddle the new boundaries (kernel: vma_adjust_trans_huge).
            SplitHugeAtLocked(v, s);
            SplitHugeAtLocked(v, e);
            ReplaceVmasLocked([v], [.. parts]);
            inside.Add(mid);
        }
        return inside;
    }

    private void SplitHugeAtLocked(Vma v, ulong boundary)
    {
        if (v.Kind != VmaKind.Anonymous || Page.IsAligned(boundary, Page.PmdSize) || boundary <= v.Start || boundary >= v.End)
        {
            return;
        }
        ulong* pmd = PmdEntry(boundary, alloc: false);
        if (pmd != null && (Volatile.Read(ref *pmd) & Pte.Huge) != 0)
        {
            SplitHugePmd(Page.AlignDown(boundary, Page.PmdSize), pmd);
        }
    }
}
