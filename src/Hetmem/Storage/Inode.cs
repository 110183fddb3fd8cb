using System.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Storage;

/// <summary>
/// A file: size, lifetime, the locks every file system shares, and the file operations shaped like the system
/// calls that reach them (kernel: struct inode + its address_space + the generic parts of fs/read_write.c,
/// fs/open.c do_truncate and fs/open.c vfs_fallocate). Concrete files (<see cref="PageCacheFile"/>,
/// <see cref="ShmemFile"/>, <see cref="DaxFile"/>, <see cref="HugetlbFile"/>) supply the storage.
/// </summary>
/// <remarks>
/// <para><b>Locking.</b> Three locks, outermost first:</para>
/// <list type="number">
/// <item><c>_lock</c> (kernel: i_rwsem): serialises everything that changes the size or the block/page layout from
/// the system-call side: <see cref="Write"/>, <see cref="Truncate"/>, <see cref="PunchHole"/> and eviction. Never
/// taken by the fault path, so it can sit outside <see cref="InvalidateLock"/>.</item>
/// <item><see cref="InvalidateLock"/> (kernel: mapping->invalidate_lock): faults hold it for read across "get
/// page, install PTE"; <see cref="Read"/> and <see cref="Write"/> hold it for read while they instantiate pages;
/// <see cref="Truncate"/>, <see cref="PunchHole"/> and eviction hold it for write while they unmap and remove
/// pages, so no page they remove can be mapped again.</item>
/// <item>per-kind leaf locks (the page index of a <see cref="PageCacheInode"/>, the extent map of a
/// <see cref="DaxFile"/>, the page index of a <see cref="HugetlbFile"/>), then <see cref="MappingSet"/>'s lock and
/// the page-table locks it reaches through <see cref="IMappingSpace.UnmapMappingRange"/>.</item>
/// </list>
/// <para>Page references are dropped and pages returned to their allocator only after every inode lock is
/// released.</para>
/// <para><b>Lifetime</b> (kernel: ihold/iput, i_nlink). An inode has a link count (1 while a name refers to it) and
/// a reference count (open <see cref="FileHandle"/>s, mappings, anonymous creators). When both are zero the inode
/// is evicted (kernel: evict → truncate_inode_pages_final): its pages and blocks are freed and every later
/// operation fails with EIO. A file system's Dispose (unmount) evicts every inode.</para>
/// </remarks>
public abstract class Inode : IMappable
{
    private protected readonly object _lock = new();   // i_rwsem: size/layout changes from the syscall side
    private readonly ReaderWriterLockSlim _invalidateLock = new(LockRecursionPolicy.NoRecursion);
    private long _size;                                // written under _lock (shrinks also under InvalidateLock write); read with Volatile
    private int _refs;                                 // guarded by _lock: open handles, mappings, anonymous creators
    private int _links;                                // guarded by _lock: names referring to the inode (0 or 1)
    private volatile bool _evicted;                    // set once under _lock (and InvalidateLock write); read lock-free

    /// <summary>Creates an inode.</summary>
    /// <param name="size">Initial size in bytes.</param>
    /// <param name="maxFileSize">Largest size the file system allows (kernel: s_maxbytes).</param>
    /// <param name="linked">True when a name refers to the inode; false for anonymous (already unlinked) inodes.</param>
    /// <param name="references">Initial references (1 for an anonymous inode handed to its creator).</param>
    private protected Inode(ulong size, ulong maxFileSize, bool linked, int references)
    {
        Debug.Assert(size <= maxFileSize && maxFileSize <= long.MaxValue);
        _size = (long)size;
        MaxFileSize = maxFileSize;
        _links = linked ? 1 : 0;
        _refs = references;
    }

    /// <inheritdoc/>
    /// <remarks>Read lock-free; stable while <see cref="InvalidateLock"/> or the inode lock is held.</remarks>
    public ulong Size => (ulong)Volatile.Read(ref _size);

    /// <inheritdoc/>
    public abstract MappableKind Kind { get; }

    /// <inheritdoc/>
    public virtual int HugeOrder => 0;

    /// <inheritdoc/>
    public ReaderWriterLockSlim InvalidateLock => _invalidateLock;

    /// <inheritdoc/>
    public MappingSet Mappings { get; } = new();

    /// <summary>Largest file size (kernel: sb->s_maxbytes); writes at or past it fail with EFBIG.</summary>
    public ulong MaxFileSize { get; }

    /// <summary>True once the inode was evicted (unlinked and unreferenced, or its file system unmounted).</summary>
    public bool IsEvicted => _evicted;

    /// <summary>Number of names referring to the inode (kernel: i_nlink).</summary>
    public int LinkCount
    {
        get
        {
            lock (_lock)
            {
                return _links;
            }
        }
    }

    /// <summary>References held by handles, mappings and creators (kernel: i_count).</summary>
    public int ReferenceCount
    {
        get
        {
            lock (_lock)
            {
                return _refs;
            }
        }
    }

    /// <inheritdoc/>
    public abstract Errno GetPage(ulong pgoff, bool write, int maxOrder, out ulong pfn, out int order);

    /// <inheritdoc/>
    public abstract void MarkDirty(ulong pgoff);

    /// <summary>
    /// Takes a reference on the inode (kernel: ihold / get_file). A mapping must hold one for as long as it can
    /// fault on the file, so an unlinked file is not evicted under it.
    /// </summary>
    /// <exception cref="MmException">EIO when the inode was already evicted.</exception>
    public void Hold()
    {
        lock (_lock)
        {
            ThrowIfEvicted();
            _refs++;
        }
    }

    /// <summary>
    /// Drops a reference taken by <see cref="Hold"/>, by a <see cref="FileHandle"/> or handed out by an anonymous
    /// constructor (kernel: iput / fput). The last reference of an unlinked inode evicts it.
    /// </summary>
    /// <exception cref="InvalidOperationException">When no reference is held (a double release).</exception>
    public void Release()
    {
        bool evict;
        lock (_lock)
        {
            if (_refs <= 0)
            {
                throw new InvalidOperationException("inode reference count would go negative (double release)");
            }
            _refs--;
            evict = _refs == 0 && _links == 0;
        }
        if (evict)
        {
            Evict();
        }
    }

    /// <summary>Opens the inode (kernel: dentry_open): a handle with <paramref name="access"/> that holds a reference.</summary>
    /// <exception cref="MmException">EIO when the inode was evicted.</exception>
    public FileHandle Open(FileAccess access = FileAccess.ReadWrite) => new(this, access);

    /// <summary>
    /// Reads up to <paramref name="buffer"/>.Length bytes at <paramref name="offset"/> (kernel: pread64 →
    /// vfs_read). Returns the number of bytes read: short at end of file, 0 at or beyond it.
    /// </summary>
    /// <exception cref="MmException">EINVAL when <paramref name="offset"/> or offset + length overflows a signed
    /// 64-bit file offset; ENOMEM when no page could be allocated before any byte was read; EIO on a backing-store
    /// error or after eviction.</exception>
    public int Read(ulong offset, Span<byte> buffer)
    {
        CheckRange(offset, (ulong)buffer.Length, "pread");
        if (buffer.IsEmpty)
        {
            return 0;
        }
        _invalidateLock.EnterReadLock();
        try
        {
            ThrowIfEvicted();
            ulong size = Size;
            if (offset >= size)
            {
                return 0;
            }
            int n = (int)Math.Min((ulong)buffer.Length, size - offset);
            return ReadLocked(offset, buffer[..n]);
        }
        finally
        {
            _invalidateLock.ExitReadLock();
        }
    }

    /// <summary>
    /// Writes <paramref name="data"/> at <paramref name="offset"/>, extending the file when it ends beyond the
    /// size (kernel: pwrite64 → vfs_write → generic_perform_write / dax_iomap_rw). Returns the bytes written: short
    /// when the write crosses <see cref="MaxFileSize"/> or storage ran out after some bytes were written.
    /// </summary>
    /// <exception cref="MmException">EINVAL for an overflowing offset or a file system without write (hugetlbfs);
    /// EFBIG when <paramref name="offset"/> is at or beyond <see cref="MaxFileSize"/>; ENOMEM / ENOSPC when nothing
    /// could be written; EIO on a backing-store error or after eviction. Nothing changes when it throws.</exception>
    public int Write(ulong offset, ReadOnlySpan<byte> data)
    {
        CheckRange(offset, (ulong)data.Length, "pwrite");
        if (!SupportsWrite)
        {
            MmException.Throw(Errno.EINVAL, $"{Kind} files have no write method (write to 0x{offset:x})");
        }
        if (data.IsEmpty)
        {
            return 0;
        }
        if (offset >= MaxFileSize)
        {
            MmException.Throw(Errno.EFBIG, $"write at 0x{offset:x} is at or beyond the maximum file size 0x{MaxFileSize:x}");
        }
        if ((ulong)data.Length > MaxFileSize - offset)
        {
            data = data[..(int)(MaxFileSize - offset)];
        }
        lock (_lock)
        {
            ThrowIfEvicted();
            _invalidateLock.EnterReadLock();
            try
            {
                return WriteLocked(offset, data);
            }
            finally
            {
                _invalidateLock.ExitReadLock();
            }
        }
    }

    /// <summary>
    /// Sets the file size (kernel: ftruncate → do_truncate → truncate_setsize + truncate_pagecache). Shrinking
    /// takes <see cref="InvalidateLock"/> for write, unmaps every page from the first page wholly beyond the new
    /// size in every mapping, private COW copies included (unmap_mapping_range even_cows = 1), then removes those
    /// pages (or frees those blocks) and zeroes the tail of the new last page. A removed page that is still
    /// referenced elsewhere (a pin) leaves the file at once and is freed by its last reference. Growing makes a
    /// sparse tail that reads as zeroes.
    /// </summary>
    /// <exception cref="MmException">EINVAL when <paramref name="size"/> exceeds a signed 64-bit offset or breaks
    /// the file system's granularity (hugetlbfs: a huge page multiple); EFBIG beyond <see cref="MaxFileSize"/>; EIO
    /// on a backing-store error or after eviction. Nothing changes when it throws.</exception>
    public void Truncate(ulong size)
    {
        if (size > long.MaxValue)
        {
            MmException.Throw(Errno.EINVAL, $"truncate to 0x{size:x}: negative length");
        }
        if (size > MaxFileSize)
        {
            MmException.Throw(Errno.EFBIG, $"truncate to 0x{size:x} exceeds the maximum file size 0x{MaxFileSize:x}");
        }
        Errno e = ValidateSize(size);
        if (e != Errno.Ok)
        {
            MmException.Throw(e, $"truncate to 0x{size:x}: not a multiple of the file's page size 0x{UnmapGranule:x}");
        }
        var release = new List<ulong>();
        lock (_lock)
        {
            ThrowIfEvicted();
            ulong old = Size;
            if (size == old)
            {
                return;
            }
            BeforeResizeLocked(old, size);
            Diagnostics.Scheduling.SchedulePoint.BeforeEnterWrite(_invalidateLock, "invalidate_lock_write");
            _invalidateLock.EnterWriteLock();
            try
            {
                SetSizeLocked(size);
                if (size < old)
                {
                    ulong holeBegin = Page.AlignUp(size, UnmapGranule) >> Page.Shift;
                    Mappings.UnmapRange(holeBegin, ulong.MaxValue, evenCows: true);
                }
                ResizeLocked(old, size, release);
            }
            finally
            {
                _invalidateLock.ExitWriteLock();
            }
            AfterResizeLocked(old, size);
        }
        ReleasePages(release);
    }

    /// <summary>
    /// Deallocates [<paramref name="offset"/>, offset + <paramref name="length"/>) and keeps the size (kernel:
    /// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) → truncate_pagecache_range). Takes
    /// <see cref="InvalidateLock"/> for write, unmaps the whole pages inside the hole from every mapping but keeps
    /// private COW copies (unmap_mapping_range even_cows = 0: hole punching does not remove COWed pages), removes
    /// those pages or frees those blocks, and zeroes the partial pages at both ends. The part beyond the size is
    /// ignored; a hole reaching the size includes the rest of the last page.
    /// </summary>
    /// <exception cref="MmException">EINVAL when <paramref name="length"/> is 0 or either value exceeds a signed
    /// 64-bit offset; EFBIG when offset + length overflows or exceeds <see cref="MaxFileSize"/>; ENOMEM when a
    /// partial page could not be read in; EIO on a backing-store error or after eviction.</exception>
    public void PunchHole(ulong offset, ulong length)
    {
        if (length == 0 || offset > long.MaxValue || length > long.MaxValue)
        {
            MmException.Throw(Errno.EINVAL, $"punch hole at 0x{offset:x} length 0x{length:x}: offset must be ≥ 0 and length > 0");
        }
        if (offset + length > long.MaxValue || offset + length > MaxFileSize)
        {
            MmException.Throw(Errno.EFBIG, $"punch hole 0x{offset:x}+0x{length:x} exceeds the maximum file size 0x{MaxFileSize:x}");
        }
        var release = new List<ulong>();
        lock (_lock)
        {
            ThrowIfEvicted();
            ulong size = Size;
            if (offset >= size)
            {
                return;
            }
            ulong end = offset + length >= size ? Page.AlignUp(size, UnmapGranule) : offset + length;
            PrepareHoleLocked(offset, end);
            Diagnostics.Scheduling.SchedulePoint.BeforeEnterWrite(_invalidateLock, "invalidate_lock_write");
            _invalidateLock.EnterWriteLock();
            try
            {
                ulong first = Page.AlignUp(offset, UnmapGranule) >> Page.Shift;
                ulong last = Page.AlignDown(end, UnmapGranule) >> Page.Shift;
                if (first < last)
                {
                    Mappings.UnmapRange(first, last, evenCows: false);
                }
                PunchHoleLocked(offset, end, release);
            }
            finally
            {
                _invalidateLock.ExitWriteLock();
            }
        }
        ReleasePages(release);
    }

    /// <summary>
    /// Writes the file's dirty data and metadata to stable storage and waits for it (kernel: fsync → vfs_fsync_range
    /// → filemap_write_and_wait_range + the file system's commit; DAX: dax_writeback_mapping_range).
    /// </summary>
    /// <exception cref="MmException">EIO when the backing store failed or the inode was evicted.</exception>
    public void Fsync()
    {
        ThrowIfEvicted();
        Errno e = FsyncCore();
        if (e != Errno.Ok)
        {
            MmException.Throw(e, $"fsync of a {Kind} file failed");
        }
    }

    /// <summary>
    /// Tries to free the page-cache page <paramref name="pfn"/> of this file for memory reclaim (kernel:
    /// shrink_folio_list → pageout / __remove_mapping). Only unmapped pages with no reference but the cache's are
    /// taken; a dirty page is written back (a shmem page swapped out) first.
    /// </summary>
    /// <returns>Ok when the page was freed; ENOENT when it is not a page of this file; EBUSY when it is mapped,
    /// referenced, locked or the file is being truncated; ENOSPC when swap is full; EIO when writeback failed;
    /// EOPNOTSUPP for files whose pages are not reclaimable (DAX, hugetlbfs, shmem without swap).</returns>
    public virtual Errno TryReclaimPage(ulong pfn) => Errno.EOPNOTSUPP;

    /// <summary>True when the file system implements write(2) (hugetlbfs does not).</summary>
    private protected virtual bool SupportsWrite => true;

    /// <summary>Alignment of unmapping and page removal (a base page; hugetlbfs: its huge page).</summary>
    private protected virtual ulong UnmapGranule => Page.Size;

    /// <summary>Checks a new size against the file system's rules (hugetlbfs: huge page multiples).</summary>
    private protected virtual Errno ValidateSize(ulong size) => Errno.Ok;

    /// <summary>Copies file bytes into <paramref name="buffer"/>, which lies wholly below the size.</summary>
    /// <remarks>Caller holds <see cref="InvalidateLock"/> for read.</remarks>
    private protected abstract int ReadLocked(ulong offset, Span<byte> buffer);

    /// <summary>Writes <paramref name="data"/> (within <see cref="MaxFileSize"/>), extending the size with <see cref="SetSizeLocked"/>.</summary>
    /// <remarks>Caller holds <c>_lock</c> and <see cref="InvalidateLock"/> for read.</remarks>
    private protected abstract int WriteLocked(ulong offset, ReadOnlySpan<byte> data);

    /// <summary>Prepares the backing store for a size change before anything changes; may throw (host ftruncate up).</summary>
    /// <remarks>Caller holds <c>_lock</c>.</remarks>
    private protected virtual void BeforeResizeLocked(ulong oldSize, ulong newSize)
    {
    }

    /// <summary>
    /// Applies a size change: the size is already <paramref name="newSize"/> and, when shrinking, the mappings
    /// beyond it are gone. Removes pages/blocks beyond it (PFNs to drop after unlocking go to
    /// <paramref name="release"/>) and zeroes the partial last page; when growing, zeroes stale bytes beyond the
    /// old size in the old last page.
    /// </summary>
    /// <remarks>Caller holds <c>_lock</c> and <see cref="InvalidateLock"/> for write.</remarks>
    private protected abstract void ResizeLocked(ulong oldSize, ulong newSize, List<ulong> release);

    /// <summary>Finishes a size change once no page beyond the size exists (host ftruncate down).</summary>
    /// <remarks>Caller holds <c>_lock</c>.</remarks>
    private protected virtual void AfterResizeLocked(ulong oldSize, ulong newSize)
    {
    }

    /// <summary>Readies a hole punch before anything changes (may read the partial pages in; may throw).</summary>
    /// <remarks>Caller holds <c>_lock</c>.</remarks>
    private protected virtual void PrepareHoleLocked(ulong offset, ulong end)
    {
    }

    /// <summary>Punches [<paramref name="offset"/>, <paramref name="end"/>) (end clipped to the size, page-rounded at EOF); whole pages inside are already unmapped.</summary>
    /// <remarks>Caller holds <c>_lock</c> and <see cref="InvalidateLock"/> for write.</remarks>
    private protected abstract void PunchHoleLocked(ulong offset, ulong end, List<ulong> release);

    /// <summary>Writes back data and metadata; returns the first error.</summary>
    private protected abstract Errno FsyncCore();

    /// <summary>Drops the references collected by a truncate, hole punch or eviction; runs with no inode lock held.</summary>
    private protected abstract void ReleasePages(List<ulong> pfns);

    /// <summary>Frees everything the inode owns (pages, blocks, reservations, host handles).</summary>
    /// <remarks>Caller holds <c>_lock</c> and <see cref="InvalidateLock"/> for write; no mapping is left.</remarks>
    private protected abstract void EvictLocked(List<ulong> release);

    /// <summary>Sets the size.</summary>
    /// <remarks>Caller holds <c>_lock</c> (and <see cref="InvalidateLock"/> for write when shrinking).</remarks>
    private protected void SetSizeLocked(ulong size)
    {
        Debug.Assert(Monitor.IsEntered(_lock));
        Debug.Assert(size >= Size || _invalidateLock.IsWriteLockHeld);
        Volatile.Write(ref _size, (long)size);
    }

    /// <summary>Number of file pages below the size (kernel: DIV_ROUND_UP(i_size, PAGE_SIZE)).</summary>
    private protected ulong PagesInSize => Page.AlignUp(Size, Page.Size) >> Page.Shift;

    /// <summary>Throws EIO when the inode was evicted.</summary>
    private protected void ThrowIfEvicted()
    {
        if (_evicted)
        {
            MmException.Throw(Errno.EIO, $"the {Kind} inode was evicted (unlinked and closed, or its file system unmounted)");
        }
    }

    /// <summary>Removes a name (kernel: drop_nlink from unlink); evicts when no reference is left.</summary>
    internal void DropLink()
    {
        bool evict;
        lock (_lock)
        {
            Debug.Assert(_links > 0);
            _links--;
            evict = _links == 0 && _refs == 0;
        }
        if (evict)
        {
            Evict();
        }
    }

    /// <summary>
    /// Evicts the inode now (kernel: evict / kill_sb for an unmount): unmaps whatever is still mapped, frees every
    /// page and block, and makes later operations fail with EIO. Idempotent.
    /// </summary>
    internal void Evict()
    {
        var release = new List<ulong>();
        lock (_lock)
        {
            if (_evicted)
            {
                return;
            }
            Diagnostics.Scheduling.SchedulePoint.BeforeEnterWrite(_invalidateLock, "invalidate_lock_write");
            _invalidateLock.EnterWriteLock();
            try
            {
                _evicted = true;
                Mappings.UnmapRange(0, ulong.MaxValue, evenCows: true);
                EvictLocked(release);
            }
            finally
            {
                _invalidateLock.ExitWriteLock();
            }
        }
        ReleasePages(release);
    }

    /// <summary>Validates a file offset and length as rw_verify_area does.</summary>
    private static void CheckRange(ulong offset, ulong count, string op)
    {
        if (offset > long.MaxValue || count > long.MaxValue - offset)
        {
            MmException.Throw(Errno.EINVAL, $"{op} at 0x{offset:x} of 0x{count:x} bytes overflows a signed 64-bit file offset");
        }
    }
}
