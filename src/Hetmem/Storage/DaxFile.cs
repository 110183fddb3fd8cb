using System.Diagnostics;
using System.Runtime.InteropServices;
using Hetmem.Physical;

namespace Hetmem.Storage;

/// <summary>One extent of a DAX file: file blocks [FileBlock, +Length) live in namespace blocks [PhysicalBlock, +Length) (kernel: struct ext4_extent, or a FIEMAP record).</summary>
/// <param name="FileBlock">First file block (4 KiB units).</param>
/// <param name="PhysicalBlock">First namespace block.</param>
/// <param name="Length">Number of blocks.</param>
public readonly record struct DaxExtent(ulong FileBlock, ulong PhysicalBlock, ulong Length);

/// <summary>
/// A file on a <see cref="DaxFileSystem"/>: its pages are the namespace's devmap frames themselves, so mappings,
/// reads and writes reach persistent memory with no page cache in between (kernel: an S_DAX inode; fs/dax.c
/// dax_iomap_fault and dax_iomap_rw over ext4/xfs iomap).
/// </summary>
/// <remarks>
/// <para><b>Faults.</b> <see cref="GetPage"/> allocates zeroed blocks for a hole inside the size (a whole 2 MiB-aligned
/// chunk of the file, or a 1 GiB one when the caller could map a PUD), and returns the largest order ≤ the caller's
/// whose naturally aligned range is one physically contiguous, equally aligned run of this file's blocks inside the
/// size, so the mm can install PMD / PUD entries. The reference it returns is on the head frame of that run; an
/// idle DAX frame has reference count 0 (kernel: fsdax folios since 6.15).</para>
/// <para><b>Truncate and hole punch</b> take <see cref="Inode.InvalidateLock"/> for write, unmap, then wait until
/// every frame they are about to free is idle (kernel: dax_layout_busy_page_range + ___wait_var_event in
/// ext4_break_layouts), so a pin or DMA in flight never sees its block handed to another file. Freed blocks are
/// zeroed before any reuse. A long-term pin therefore blocks truncate, which is why pinned (non-ODP) RDMA
/// registration of fsdax memory is refused.</para>
/// <para><b>Locking.</b> <c>_extentLock</c> (kernel: i_data_sem) protects the extent map and the overflow chain and
/// serialises writing the on-media entry; it nests inside <see cref="Inode.InvalidateLock"/> and outside the file
/// system's allocation lock. Data is copied without it: blocks cannot be freed while the copier holds the
/// invalidate lock for read or the inode lock.</para>
/// </remarks>
public sealed unsafe class DaxFile : Inode
{
    private readonly object _extentLock = new();       // kernel: i_data_sem
    private readonly List<DaxExtent> _extents;         // guarded by _extentLock: sorted by FileBlock, disjoint, merged when contiguous
    private readonly List<ulong> _overflow;            // guarded by _extentLock: on-media overflow blocks of the extent list
    private bool _orphan;                              // guarded by _extentLock: unlinked (on media: orphan)

    internal DaxFile(DaxFileSystem fileSystem, int slot, string name, ulong size, List<DaxExtent> extents, List<ulong> overflow, bool linked)
        : base(size, DaxFileSystem.MaxFileSize, linked, references: 0)
    {
        FileSystem = fileSystem;
        InodeNumber = slot;
        Name = name;
        _extents = extents;
        _overflow = overflow;
        MergeAllLocked();
    }

    /// <inheritdoc/>
    public override MappableKind Kind => MappableKind.Dax;

    /// <summary>The file system the file lives on.</summary>
    public DaxFileSystem FileSystem { get; }

    /// <summary>The inode number (its slot in the on-media inode table).</summary>
    public int InodeNumber { get; }

    /// <summary>The name the file was created under.</summary>
    public string Name { get; }

    /// <summary>A snapshot of the extent map (kernel: FIEMAP).</summary>
    public IReadOnlyList<DaxExtent> Extents
    {
        get
        {
            lock (_extentLock)
            {
                return [.. _extents];
            }
        }
    }

    /// <summary>Blocks allocated to the file (kernel: st_blocks / 8).</summary>
    public ulong AllocatedBlocks
    {
        get
        {
            lock (_extentLock)
            {
                ulong n = 0;
                foreach (DaxExtent e in _extents)
                {
                    n += e.Length;
                }
                return n;
            }
        }
    }

    /// <summary>The namespace block backing file block <paramref name="fileBlock"/> (kernel: bmap / FIBMAP).</summary>
    /// <returns>False for a hole.</returns>
    public bool TryMapBlock(ulong fileBlock, out ulong block)
    {
        lock (_extentLock)
        {
            int i = FindLocked(fileBlock);
            if (i < 0)
            {
                block = 0;
                return false;
            }
            DaxExtent e = _extents[i];
            block = e.PhysicalBlock + (fileBlock - e.FileBlock);
            return true;
        }
    }

    /// <inheritdoc/>
    /// <remarks>
    /// Kernel: dax_iomap_fault (PTE, PMD and PUD). Returns EFAULT at or beyond the end of file (SIGBUS), ENOSPC when
    /// a hole cannot be filled. Allocation-free when the block exists. Caller holds <see cref="Inode.InvalidateLock"/>
    /// for read until the entry is installed, and drops the reference with <see cref="PhysicalMemory.Put"/> on the
    /// returned PFN.
    /// </remarks>
    public override Errno GetPage(ulong pgoff, bool write, int maxOrder, out ulong pfn, out int order)
    {
        pfn = Page.NoPfn;
        order = 0;
        ulong eof = PagesInSize;
        if (pgoff >= eof || IsEvicted)
        {
            return Errno.EFAULT;
        }
        ulong block;
        ulong headPgoff;
        lock (_extentLock)
        {
            int i = FindLocked(pgoff);
            if (i < 0)
            {
                Errno e = AllocateForFaultLocked(pgoff, maxOrder, eof);
                if (e != Errno.Ok)
                {
                    return e;
                }
                i = FindLocked(pgoff);
                Debug.Assert(i >= 0);
            }
            DaxExtent x = CollectionsMarshal.AsSpan(_extents)[i];
            order = LargestOrder(x, pgoff, maxOrder, eof);
            headPgoff = pgoff & ~((1UL << order) - 1);
            block = x.PhysicalBlock + (headPgoff - x.FileBlock);
        }
        if (Hetmem.Diagnostics.FaultInjection.Enabled && Hetmem.Diagnostics.FaultInjection.ShouldFail(Hetmem.Diagnostics.FaultSites.DaxIo, FileSystem.Namespace.Memory)) { order = 0; return Errno.EIO; } // media error (kernel: dax_direct_access → -EIO → VM_FAULT_SIGBUS)
        ref FrameInfo f = ref FileSystem.FrameOf(block);
        Interlocked.Increment(ref f.RefCount);
        // The extent map owns the block; the frame's owner fields mirror it for rmap-style users. They are
        // (re)written when a reference is taken because a frame whose count fell to 0 had them cleared.
        if (!ReferenceEquals(f.Mapping, this) || f.Index != headPgoff)
        {
            f.Mapping = this;
            f.Index = headPgoff;
        }
        pfn = FileSystem.Namespace.FirstPfn + block;
        return Errno.Ok;
    }

    /// <inheritdoc/>
    /// <remarks>DAX writes go straight to the media and <see cref="Inode.Fsync"/> flushes every block of the file, so there is no dirty state to record (the kernel tags the DAX xarray entry so msync flushes only dirty entries).</remarks>
    public override void MarkDirty(ulong pgoff)
    {
    }

    /// <summary>
    /// Makes the file bytes [<paramref name="offset"/>, +<paramref name="length"/>) durable (kernel: dax_flush /
    /// arch_wb_cache_pmem; the target side of an RDMA FLUSH). The part beyond the size and holes are skipped.
    /// </summary>
    /// <exception cref="MmException">EINVAL when the range overflows a signed 64-bit offset; EIO after eviction or
    /// when msync fails.</exception>
    public void Flush(ulong offset, ulong length)
    {
        if (offset > long.MaxValue || length > long.MaxValue - offset)
        {
            MmException.Throw(Errno.EINVAL, $"flush of 0x{length:x} bytes at 0x{offset:x} overflows a file offset");
        }
        ThrowIfEvicted();
        ulong end = Math.Min(offset + length, Size);
        if (offset >= end)
        {
            return;
        }
        ulong first = offset >> Page.Shift;
        ulong last = Page.AlignUp(end, Page.Size) >> Page.Shift;
        var runs = new List<(ulong Block, ulong Count)>();
        lock (_extentLock)
        {
            foreach (DaxExtent e in _extents)
            {
                ulong a = Math.Max(first, e.FileBlock);
                ulong b = Math.Min(last, e.FileBlock + e.Length);
                if (a < b)
                {
                    runs.Add((e.PhysicalBlock + (a - e.FileBlock), b - a));
                }
            }
        }
        try
        {
            foreach ((ulong block, ulong count) in runs)
            {
                FileSystem.Namespace.Flush(block, count);
            }
        }
        catch (MmException ex)
        {
            MmException.Throw(Errno.EIO, $"flushing {Name}: {ex.Message}");
        }
    }

    /// <summary>Marks the file unlinked on media (an orphan until its last reference goes).</summary>
    internal void MarkOrphan()
    {
        lock (_extentLock)
        {
            _orphan = true;
            PersistLocked();
        }
        FileSystem.AddOrphan(this);
    }

    /// <inheritdoc/>
    private protected override int ReadLocked(ulong offset, Span<byte> buffer)
    {
        Debug.Assert(InvalidateLock.IsReadLockHeld);
        int done = 0;
        while (done < buffer.Length)
        {
            ulong pos = offset + (ulong)done;
            ulong fileBlock = pos >> Page.Shift;
            int inBlock = (int)(pos & Page.OffsetMask);
            int n = Math.Min(Page.Size - inBlock, buffer.Length - done);
            Span<byte> dst = buffer.Slice(done, n);
            if (TryMapBlock(fileBlock, out ulong block))
            {
                if (Hetmem.Diagnostics.FaultInjection.Enabled && Hetmem.Diagnostics.FaultInjection.ShouldFail(Hetmem.Diagnostics.FaultSites.DaxIo, FileSystem.Namespace.Memory)) { return done > 0 ? done : throw new MmException(Errno.EIO, $"media error reading {Name} at 0x{pos:x}"); }
                new ReadOnlySpan<byte>(FileSystem.BlockAddress(block) + inBlock, n).CopyTo(dst);
            }
            else
            {
                dst.Clear();
            }
            done += n;
        }
        return done;
    }

    /// <inheritdoc/>
    private protected override int WriteLocked(ulong offset, ReadOnlySpan<byte> data)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && InvalidateLock.IsReadLockHeld);
        ulong old = Size;
        ulong end = offset + (ulong)data.Length;
        ulong firstBlock = offset >> Page.Shift;
        ulong endBlock = Page.AlignUp(end, Page.Size) >> Page.Shift;
        ulong limitBlock = endBlock;
        Errno error = Errno.Ok;
        lock (_extentLock)
        {
            ulong p = firstBlock;
            while (p < endBlock)
            {
                int i = FindLocked(p);
                if (i >= 0)
                {
                    DaxExtent e = _extents[i];
                    p = e.FileBlock + e.Length;
                    continue;
                }
                // Fill the hole a chunk at a time (a 1 GiB-aligned GiB, else up to the next 2 MiB boundary), so
                // running out of space leaves a short write of the chunks that fit, as the kernel's write does.
                ulong holeEnd = Math.Min(endBlock, NextExtentStartLocked(p));
                ulong pud = 1UL << Page.PudOrder;
                ulong pmd = 1UL << Page.PmdOrder;
                ulong chunkEnd = p % pud == 0 && holeEnd - p >= pud ? p + pud : Math.Min(holeEnd, p - p % pmd + pmd);
                error = AllocateRangeLocked(p, chunkEnd - p);
                if (error != Errno.Ok)
                {
                    limitBlock = p;
                    break;
                }
                p = chunkEnd;
            }
        }
        ulong limit = Math.Min(end, limitBlock << Page.Shift);
        if (limit <= offset)
        {
            MmException.Throw(error, $"no space for {Name} at 0x{offset:x}");
        }
        if (offset > old)
        {
            ZeroRangeLocked(old, Math.Min(Page.AlignUp(old, Page.Size), offset));
        }
        int length = (int)(limit - offset);
        int done = 0;
        while (done < length)
        {
            ulong pos = offset + (ulong)done;
            int inBlock = (int)(pos & Page.OffsetMask);
            int n = Math.Min(Page.Size - inBlock, length - done);
            bool mapped = TryMapBlock(pos >> Page.Shift, out ulong block);
            Debug.Assert(mapped);
            if (Hetmem.Diagnostics.FaultInjection.Enabled && Hetmem.Diagnostics.FaultInjection.ShouldFail(Hetmem.Diagnostics.FaultSites.DaxIo, FileSystem.Namespace.Memory)) { if (done == 0) { MmException.Throw(Errno.EIO, $"media error writing {Name} at 0x{pos:x}"); } limit = pos; length = done; break; }
            data.Slice(done, n).CopyTo(new Span<byte>(FileSystem.BlockAddress(block) + inBlock, n));
            done += n;
        }
        if (limit > old)
        {
            SetSizeLocked(limit);
            lock (_extentLock)
            {
                PersistLocked();
            }
        }
        return length;
    }

    /// <inheritdoc/>
    private protected override void ResizeLocked(ulong oldSize, ulong newSize, List<ulong> release)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && InvalidateLock.IsWriteLockHeld);
        if (newSize < oldSize)
        {
            FreeBlocksLocked(Page.AlignUp(newSize, Page.Size) >> Page.Shift, ulong.MaxValue);
            ZeroRangeLocked(newSize, Page.AlignUp(newSize, Page.Size));
        }
        else
        {
            ZeroRangeLocked(oldSize, Math.Min(Page.AlignUp(oldSize, Page.Size), newSize));
        }
        lock (_extentLock)
        {
            PersistLocked();
        }
    }

    /// <inheritdoc/>
    private protected override void PunchHoleLocked(ulong offset, ulong end, List<ulong> release)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && InvalidateLock.IsWriteLockHeld);
        ulong first = Page.AlignUp(offset, Page.Size);
        ulong last = Page.AlignDown(end, Page.Size);
        // Partial blocks at the ends are zeroed in place (kernel: dax_zero_range via iomap_zero_range).
        if (offset < Math.Min(first, end))
        {
            ZeroRangeLocked(offset, Math.Min(first, end));
        }
        if (last < end && last >= first)
        {
            ZeroRangeLocked(last, end);
        }
        if (first < last)
        {
            FreeBlocksLocked(first >> Page.Shift, last >> Page.Shift);
            lock (_extentLock)
            {
                PersistLocked();
            }
        }
    }

    /// <inheritdoc/>
    private protected override Errno FsyncCore()
    {
        try
        {
            Flush(0, Size);
            ulong[] overflow;
            lock (_extentLock)
            {
                overflow = [.. _overflow];
            }
            FileSystem.FlushInode(InodeNumber, overflow);
            return Errno.Ok;
        }
        catch (MmException ex)
        {
            return ex.Errno;
        }
    }

    /// <inheritdoc/>
    private protected override void ReleasePages(List<ulong> pfns)
    {
        Debug.Assert(pfns.Count == 0, "DAX blocks are freed under the locks once idle; there are no page references to drop");
    }

    /// <inheritdoc/>
    private protected override void EvictLocked(List<ulong> release)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && InvalidateLock.IsWriteLockHeld);
        bool orphan;
        lock (_extentLock)
        {
            orphan = _orphan;
        }
        if (!orphan)
        {
            return; // unmount of a linked file: its blocks stay on media
        }
        FreeBlocksLocked(0, ulong.MaxValue);
        lock (_extentLock)
        {
            foreach (ulong b in _overflow)
            {
                FileSystem.FreeBlocksRange(b, 1);
            }
            _overflow.Clear();
            FileSystem.ClearInode(InodeNumber);
        }
        FileSystem.ReleaseSlot(InodeNumber);
        FileSystem.RemoveOrphan(this);
    }

    /// <summary>Largest order ≤ <paramref name="maxOrder"/> (0, 9 or 18) at which <paramref name="x"/> maps the aligned range around <paramref name="pgoff"/> contiguously and aligned, inside the size.</summary>
    private static int LargestOrder(in DaxExtent x, ulong pgoff, int maxOrder, ulong eof)
    {
        for (int o = Page.PudOrder; o > 0; o -= Page.PudOrder - Page.PmdOrder)
        {
            if (o > maxOrder)
            {
                continue;
            }
            ulong n = 1UL << o;
            ulong a = pgoff & ~(n - 1);
            if (a >= x.FileBlock && a + n <= x.FileBlock + x.Length && a + n <= eof
                && ((x.PhysicalBlock + (a - x.FileBlock)) & (n - 1)) == 0)
            {
                return o;
            }
        }
        return 0;
    }

    /// <summary>Index of the extent containing <paramref name="fileBlock"/>, or -1 (allocation-free binary search).</summary>
    /// <remarks>Caller holds <c>_extentLock</c>.</remarks>
    private int FindLocked(ulong fileBlock)
    {
        Debug.Assert(Monitor.IsEntered(_extentLock));
        ReadOnlySpan<DaxExtent> xs = CollectionsMarshal.AsSpan(_extents);
        int lo = 0;
        int hi = xs.Length - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            if (xs[mid].FileBlock <= fileBlock)
            {
                if (fileBlock < xs[mid].FileBlock + xs[mid].Length)
                {
                    return mid;
                }
                lo = mid + 1;
            }
            else
            {
                hi = mid - 1;
            }
        }
        return -1;
    }

    /// <summary>Start of the first extent after <paramref name="fileBlock"/>, or ulong.MaxValue.</summary>
    /// <remarks>Caller holds <c>_extentLock</c>.</remarks>
    private ulong NextExtentStartLocked(ulong fileBlock)
    {
        Debug.Assert(Monitor.IsEntered(_extentLock));
        foreach (DaxExtent e in CollectionsMarshal.AsSpan(_extents))
        {
            if (e.FileBlock > fileBlock)
            {
                return e.FileBlock;
            }
        }
        return ulong.MaxValue;
    }

    /// <summary>End of the last extent before <paramref name="fileBlock"/>, or 0.</summary>
    /// <remarks>Caller holds <c>_extentLock</c>.</remarks>
    private ulong PreviousExtentEndLocked(ulong fileBlock, out ulong goal)
    {
        Debug.Assert(Monitor.IsEntered(_extentLock));
        goal = ulong.MaxValue;
        ulong end = 0;
        foreach (DaxExtent e in CollectionsMarshal.AsSpan(_extents))
        {
            if (e.FileBlock >= fileBlock)
            {
                break;
            }
            end = e.FileBlock + e.Length;
            // Place the new blocks where they would be if the previous extent simply continued (kernel: ext4_ext_find_goal).
            goal = e.PhysicalBlock + (fileBlock - e.FileBlock);
        }
        return end;
    }

    /// <summary>
    /// Fills the hole around <paramref name="pgoff"/> for a fault: the 1 GiB-aligned GiB when the caller could map a
    /// PUD and all of it is a hole inside the size, else the 2 MiB-aligned chunk clipped to the hole and the size.
    /// </summary>
    /// <remarks>Caller holds <c>_extentLock</c>.</remarks>
    private Errno AllocateForFaultLocked(ulong pgoff, int maxOrder, ulong eof)
    {
        Debug.Assert(Monitor.IsEntered(_extentLock));
        ulong holeStart = PreviousExtentEndLocked(pgoff, out _);
        ulong holeEnd = Math.Min(NextExtentStartLocked(pgoff), eof);
        if (maxOrder >= Page.PudOrder)
        {
            ulong a = pgoff & ~((1UL << Page.PudOrder) - 1);
            if (a >= holeStart && a + (1UL << Page.PudOrder) <= holeEnd)
            {
                return AllocateRangeLocked(a, 1UL << Page.PudOrder);
            }
        }
        ulong c = pgoff & ~((1UL << Page.PmdOrder) - 1);
        ulong start = Math.Max(c, holeStart);
        ulong end = Math.Min(c + (1UL << Page.PmdOrder), holeEnd);
        return AllocateRangeLocked(start, end - start);
    }

    /// <summary>
    /// Allocates zeroed blocks for the hole [<paramref name="fileBlock"/>, +<paramref name="count"/>), inserts them
    /// in the extent map and writes the entry; all or nothing.
    /// </summary>
    /// <returns>Ok or ENOSPC.</returns>
    /// <remarks>Caller holds <c>_extentLock</c>.</remarks>
    private Errno AllocateRangeLocked(ulong fileBlock, ulong count)
    {
        Debug.Assert(Monitor.IsEntered(_extentLock));
        PreviousExtentEndLocked(fileBlock, out ulong goal);
        var pieces = new List<(ulong Block, ulong Length)>();
        Errno e = FileSystem.AllocateExtents(fileBlock, count, goal, pieces);
        if (e != Errno.Ok)
        {
            return e;
        }
        foreach ((ulong block, ulong length) in pieces)
        {
            FileSystem.ZeroBlocks(block, length);
            for (ulong k = 0; k < length; k++)
            {
                ref FrameInfo f = ref FileSystem.FrameOf(block + k);
                Debug.Assert(Volatile.Read(ref f.RefCount) == 0, "a free DAX block is referenced");
                f.Mapping = this;
                f.Index = fileBlock + k;
            }
        }
        DaxExtent[] saved = [.. _extents];
        ulong l = fileBlock;
        foreach ((ulong block, ulong length) in pieces)
        {
            InsertLocked(new DaxExtent(l, block, length));
            l += length;
        }
        e = PersistLocked();
        if (e != Errno.Ok)
        {
            _extents.Clear();
            _extents.AddRange(saved);
            foreach ((ulong block, ulong length) in pieces)
            {
                ReleaseFramesLocked(block, length);
                FileSystem.FreeBlocksRange(block, length);
            }
        }
        return e;
    }

    /// <summary>
    /// Frees the blocks of file blocks [<paramref name="first"/>, <paramref name="end"/>): waits until no reference
    /// to any of them is left (their mappings are already zapped), then cuts them out of the extent map and returns
    /// them to the allocator.
    /// </summary>
    /// <remarks>Caller holds <c>_lock</c> and <see cref="Inode.InvalidateLock"/> for write (no fault can refill the range).</remarks>
    private void FreeBlocksLocked(ulong first, ulong end)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && InvalidateLock.IsWriteLockHeld);
        var runs = new List<(ulong Block, ulong Count)>();
        lock (_extentLock)
        {
            CutLocked(first, end, runs);
        }
        foreach ((ulong block, ulong count) in runs)
        {
            WaitIdle(block, count);
        }
        lock (_extentLock)
        {
            foreach ((ulong block, ulong count) in runs)
            {
                ReleaseFramesLocked(block, count);
                FileSystem.FreeBlocksRange(block, count);
            }
        }
    }

    /// <summary>
    /// Waits until every frame of [<paramref name="block"/>, +<paramref name="count"/>) has reference count 0 (kernel:
    /// dax_layout_busy_page_range + the wait in ext4_break_layouts / xfs_break_dax_layouts).
    /// </summary>
    private void WaitIdle(ulong block, ulong count)
    {
        for (ulong k = 0; k < count; k++)
        {
            ref FrameInfo f = ref FileSystem.FrameOf(block + k);
            if (Volatile.Read(ref f.RefCount) == 0)
            {
                continue;
            }
            var spin = new SpinWait();
            while (Volatile.Read(ref f.RefCount) != 0)
            {
                spin.SpinOnce();
            }
        }
    }

    /// <summary>Clears the owner fields of idle frames being freed (kernel: dax_disassociate_entry).</summary>
    /// <remarks>Caller holds <c>_extentLock</c>; the frames are idle and no longer in the extent map.</remarks>
    private void ReleaseFramesLocked(ulong block, ulong count)
    {
        Debug.Assert(Monitor.IsEntered(_extentLock));
        for (ulong k = 0; k < count; k++)
        {
            ref FrameInfo f = ref FileSystem.FrameOf(block + k);
            f.Mapping = null;
            f.Index = 0;
        }
    }

    /// <summary>Removes file blocks [<paramref name="first"/>, <paramref name="end"/>) from the map, splitting extents, and lists the namespace runs they used.</summary>
    /// <remarks>Caller holds <c>_extentLock</c>.</remarks>
    private void CutLocked(ulong first, ulong end, List<(ulong Block, ulong Count)> runs)
    {
        Debug.Assert(Monitor.IsEntered(_extentLock));
        for (int i = 0; i < _extents.Count; i++)
        {
            DaxExtent e = _extents[i];
            ulong eEnd = e.FileBlock + e.Length;
            ulong a = Math.Max(first, e.FileBlock);
            ulong b = Math.Min(end, eEnd);
            if (a >= b)
            {
                continue;
            }
            runs.Add((e.PhysicalBlock + (a - e.FileBlock), b - a));
            bool keepHead = a > e.FileBlock;
            bool keepTail = b < eEnd;
            var tail = new DaxExtent(b, e.PhysicalBlock + (b - e.FileBlock), eEnd - b);
            if (keepHead)
            {
                _extents[i] = e with { Length = a - e.FileBlock };
                if (keepTail)
                {
                    _extents.Insert(i + 1, tail);
                    i++;
                }
            }
            else if (keepTail)
            {
                _extents[i] = tail;
            }
            else
            {
                _extents.RemoveAt(i);
                i--;
            }
        }
    }

    /// <summary>Inserts an extent for a hole, merging with neighbours that continue it logically and physically.</summary>
    /// <remarks>Caller holds <c>_extentLock</c>.</remarks>
    private void InsertLocked(DaxExtent x)
    {
        Debug.Assert(Monitor.IsEntered(_extentLock));
        int i = 0;
        while (i < _extents.Count && _extents[i].FileBlock < x.FileBlock)
        {
            i++;
        }
        _extents.Insert(i, x);
        if (i + 1 < _extents.Count && Continues(_extents[i], _extents[i + 1]))
        {
            _extents[i] = _extents[i] with { Length = _extents[i].Length + _extents[i + 1].Length };
            _extents.RemoveAt(i + 1);
        }
        if (i > 0 && Continues(_extents[i - 1], _extents[i]))
        {
            _extents[i - 1] = _extents[i - 1] with { Length = _extents[i - 1].Length + _extents[i].Length };
            _extents.RemoveAt(i);
        }
    }

    private void MergeAllLocked()
    {
        for (int i = _extents.Count - 1; i > 0; i--)
        {
            if (Continues(_extents[i - 1], _extents[i]))
            {
                _extents[i - 1] = _extents[i - 1] with { Length = _extents[i - 1].Length + _extents[i].Length };
                _extents.RemoveAt(i);
            }
        }
    }

    private static bool Continues(in DaxExtent a, in DaxExtent b)
        => a.FileBlock + a.Length == b.FileBlock && a.PhysicalBlock + a.Length == b.PhysicalBlock;

    /// <summary>Zeroes file bytes [<paramref name="from"/>, <paramref name="to"/>) inside one block, if it is allocated.</summary>
    /// <remarks>Caller holds <c>_lock</c>.</remarks>
    private void ZeroRangeLocked(ulong from, ulong to)
    {
        Debug.Assert(Monitor.IsEntered(_lock));
        if (from >= to)
        {
            return;
        }
        Debug.Assert(from >> Page.Shift == (to - 1) >> Page.Shift);
        if (TryMapBlock(from >> Page.Shift, out ulong block))
        {
            new Span<byte>(FileSystem.BlockAddress(block) + (from & Page.OffsetMask), (int)(to - from)).Clear();
        }
    }

    /// <summary>Writes the inode's on-media entry (size, extents), growing or shrinking the overflow chain.</summary>
    /// <returns>Ok, or ENOSPC when an overflow block was needed and none is free (the entry is then unchanged).</returns>
    /// <remarks>Caller holds <c>_extentLock</c>.</remarks>
    private Errno PersistLocked()
    {
        Debug.Assert(Monitor.IsEntered(_extentLock));
        int need = DaxFileSystem.OverflowBlocksFor(_extents.Count);
        int had = _overflow.Count;
        while (_overflow.Count < need)
        {
            if (!FileSystem.TryAllocateMetaBlock(out ulong b))
            {
                for (int k = _overflow.Count - 1; k >= had; k--)
                {
                    FileSystem.FreeBlocksRange(_overflow[k], 1);
                    _overflow.RemoveAt(k);
                }
                return Errno.ENOSPC;
            }
            _overflow.Add(b);
        }
        var spare = new List<ulong>();
        while (_overflow.Count > need)
        {
            spare.Add(_overflow[^1]);
            _overflow.RemoveAt(_overflow.Count - 1);
        }
        FileSystem.WriteInode(InodeNumber, _orphan ? DaxFileSystem.InodeOrphan : DaxFileSystem.InodeLinked, Name, Size, CollectionsMarshal.AsSpan(_extents), CollectionsMarshal.AsSpan(_overflow));
        foreach (ulong b in spare)
        {
            FileSystem.FreeBlocksRange(b, 1);
        }
        return Errno.Ok;
    }
}
