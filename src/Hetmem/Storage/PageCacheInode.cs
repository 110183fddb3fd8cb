using System.Diagnostics;
using System.Runtime.CompilerServices;
using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Storage;

/// <summary>
/// A file whose pages live in the page cache: RAM frames indexed by file page, filled from a backing store on
/// first use and written back when dirty (kernel: an address_space with i_pages, mm/filemap.c). The base of
/// <see cref="PageCacheFile"/> (host-file backing) and <see cref="ShmemFile"/> (swap backing).
/// </summary>
/// <remarks>
/// <para><b>Page ownership.</b> A cached page holds exactly one reference for the cache; <see cref="GetPage"/>
/// returns one more for the caller. Its <see cref="FrameInfo.Mapping"/> is this inode and
/// <see cref="FrameInfo.Index"/> its page offset, set while the frame is exclusively owned and cleared under the
/// frame lock when the page leaves the cache. A page that leaves the cache (truncate, hole punch, eviction,
/// reclaim) loses the cache's reference after every inode lock is dropped, so a page someone else still
/// references (a pin, a device) is freed only by that last reference.</para>
/// <para><b>Locking.</b> <c>_pagesLock</c> (kernel: the i_pages xa_lock) protects the index and is a leaf: under it
/// only references are taken and frame locks tried, so <see cref="MarkDirty"/> may be called with page-table locks
/// held. A page being filled is inserted locked and not up to date; other users take a reference, wait for the
/// frame lock (kernel: folio_lock / wait_on_page_locked) and re-check that the page still belongs to this file.
/// Writeback and reclaim lock the frame while they copy it out; truncate locks it to detach it, so it waits for
/// them.</para>
/// </remarks>
public abstract class PageCacheInode : Inode
{
    private readonly object _pagesLock = new();             // leaf (kernel: i_pages lock)
    private readonly Dictionary<ulong, ulong> _pages = [];  // guarded by _pagesLock: pgoff → pfn, one cache reference each

    /// <summary>Creates the inode.</summary>
    private protected PageCacheInode(PhysicalMemory memory, ulong size, ulong maxFileSize, bool linked, int references)
        : base(size, maxFileSize, linked, references)
    {
        ArgumentNullException.ThrowIfNull(memory);
        Memory = memory;
    }

    /// <summary>The physical memory the pages come from.</summary>
    public PhysicalMemory Memory { get; }

    /// <summary>Number of pages in the cache (kernel: mapping->nrpages).</summary>
    public int CachedPages
    {
        get
        {
            lock (_pagesLock)
            {
                return _pages.Count;
            }
        }
    }

    /// <summary>True when the pages are swap-backed (shmem): their frames carry <see cref="FrameFlags.SwapBacked"/>.</summary>
    private protected virtual bool SwapBackedPages => false;

    /// <summary>
    /// Looks up the cached page at <paramref name="pgoff"/> without taking a reference (diagnostics and tests;
    /// kernel: filemap_get_entry without the folio reference). The page may leave the cache at any time.
    /// </summary>
    public bool TryFindPage(ulong pgoff, out ulong pfn)
    {
        lock (_pagesLock)
        {
            return _pages.TryGetValue(pgoff, out pfn);
        }
    }

    /// <inheritdoc/>
    /// <remarks>
    /// Kernel: filemap_fault (page cache) / shmem_fault. Always order 0. A write (shared write fault) marks the page
    /// dirty (kernel: page_mkwrite → folio_mark_dirty); callers copying for a private COW pass
    /// <paramref name="write"/> = false. Allocation-free when the page is cached. Returns ENOMEM when no frame is
    /// free, EIO when the backing store failed, EFAULT at or beyond the end of the file.
    /// </remarks>
    public override Errno GetPage(ulong pgoff, bool write, int maxOrder, out ulong pfn, out int order)
    {
        order = 0;
        if (pgoff >= PagesInSize || IsEvicted)
        {
            pfn = Page.NoPfn;
            return Errno.EFAULT;
        }
        Errno e = FindOrCreatePage(pgoff, read: true, out pfn);
        if (e != Errno.Ok)
        {
            pfn = Page.NoPfn;
            return e;
        }
        if (write)
        {
            Memory.SetFlags(pfn, FrameFlags.Dirty);
        }
        return Errno.Ok;
    }

    /// <inheritdoc/>
    /// <remarks>Kernel: folio_mark_dirty. Takes only the leaf index lock, so it may be called under page-table locks; a page no longer cached is ignored.</remarks>
    public override void MarkDirty(ulong pgoff)
    {
        lock (_pagesLock)
        {
            if (_pages.TryGetValue(pgoff, out ulong pfn))
            {
                Memory.SetFlags(pfn, FrameFlags.Dirty);
            }
        }
    }

    /// <summary>
    /// Writes back the dirty pages in [<paramref name="firstPgoff"/>, <paramref name="endPgoff"/>) and waits for them
    /// (kernel: filemap_write_and_wait_range). Mapped pages are written even when not marked dirty: the mapping
    /// contract has no write-protect-for-writeback (folio_mkclean), so a write through a still-writable PTE after
    /// the last writeback could otherwise be missed.
    /// </summary>
    /// <returns>Ok, or the first backing-store error (the page stays dirty).</returns>
    /// <remarks>Takes <see cref="Inode.InvalidateLock"/> for read unless the caller holds it.</remarks>
    public Errno Writeback(ulong firstPgoff, ulong endPgoff)
    {
        if (!HasWriteback || firstPgoff >= endPgoff)
        {
            return Errno.Ok;
        }
        bool take = !InvalidateLock.IsReadLockHeld && !InvalidateLock.IsWriteLockHeld;
        if (take)
        {
            InvalidateLock.EnterReadLock();
        }
        try
        {
            if (IsEvicted)
            {
                return Errno.Ok;
            }
            var batch = new List<(ulong Pgoff, ulong Pfn)>();
            lock (_pagesLock)
            {
                foreach (KeyValuePair<ulong, ulong> kv in _pages)
                {
                    if (kv.Key >= firstPgoff && kv.Key < endPgoff)
                    {
                        ref FrameInfo f = ref Memory.Frame(kv.Value);
                        if (f.Has(FrameFlags.Dirty) || Volatile.Read(ref f.MapCount) != 0)
                        {
                            Memory.Get(kv.Value);
                            batch.Add((kv.Key, kv.Value));
                        }
                    }
                }
            }
            batch.Sort(static (a, b) => a.Pgoff.CompareTo(b.Pgoff));
            Errno result = Errno.Ok;
            foreach ((ulong pgoff, ulong pfn) in batch)
            {
                Memory.LockFrame(pfn);
                ref FrameInfo f = ref Memory.Frame(pfn);
                if (ReferenceEquals(f.Mapping, this) && f.Index == pgoff)
                {
                    uint old = Interlocked.And(ref f.Flags, ~(uint)FrameFlags.Dirty);
                    if ((old & (uint)FrameFlags.Dirty) != 0 || Volatile.Read(ref f.MapCount) != 0)
                    {
                        Memory.SetFlags(pfn, FrameFlags.Writeback);
                        Errno e = WritePage(pgoff, pfn);
                        Memory.ClearFlags(pfn, FrameFlags.Writeback);
                        if (e != Errno.Ok)
                        {
                            Memory.SetFlags(pfn, FrameFlags.Dirty);
                            if (result == Errno.Ok)
                            {
                                result = e;
                            }
                        }
                    }
                }
                Memory.UnlockFrame(pfn);
                Memory.Put(pfn);
            }
            return result;
        }
        finally
        {
            if (take)
            {
                InvalidateLock.ExitReadLock();
            }
        }
    }

    /// <inheritdoc/>
    /// <remarks>
    /// Kernel: the page-cache half of shrink_folio_list. The page must be unmapped (MapCount 0) with only the
    /// cache's reference (RefCount 1) and unlocked; a dirty page of a host-backed file is written back first, a
    /// shmem page is written to swap. The checks are repeated under the index lock after the I/O, so a reference
    /// taken meanwhile aborts the reclaim and keeps the page.
    /// </remarks>
    public override Errno TryReclaimPage(ulong pfn)
    {
        if (!Memory.IsRam(pfn))
        {
            return Errno.ENOENT;
        }
        ref FrameInfo f = ref Memory.Frame(pfn);
        if (!ReferenceEquals(Volatile.Read(ref f.Mapping), this))
        {
            return Errno.ENOENT;
        }
        ulong pgoff = f.Index;
        lock (_pagesLock)
        {
            if (!_pages.TryGetValue(pgoff, out ulong cur) || cur != pfn)
            {
                return Errno.ENOENT;
            }
            if (Volatile.Read(ref f.MapCount) != 0 || Volatile.Read(ref f.RefCount) != 1 || !Memory.TryLockFrame(pfn))
            {
                return Errno.EBUSY;
            }
        }
        bool dirty = f.Has(FrameFlags.Dirty);
        ulong backing = 0;
        if (dirty || MustPageOut)
        {
            bool take = !InvalidateLock.IsReadLockHeld && !InvalidateLock.IsWriteLockHeld;
            if (take && !InvalidateLock.TryEnterReadLock(0))
            {
                Memory.UnlockFrame(pfn);
                return Errno.EBUSY;
            }
            Errno e;
            try
            {
                Memory.ClearFlags(pfn, FrameFlags.Dirty);
                e = PageOut(pgoff, pfn, out backing);
            }
            finally
            {
                if (take)
                {
                    InvalidateLock.ExitReadLock();
                }
            }
            if (e != Errno.Ok)
            {
                if (dirty)
                {
                    Memory.SetFlags(pfn, FrameFlags.Dirty);
                }
                Memory.UnlockFrame(pfn);
                return e;
            }
        }
        bool removed = false;
        lock (_pagesLock)
        {
            // Truncate may have detached the page meanwhile (it waits for our frame lock with the cache reference
            // in hand), so the index must still point at this frame.
            if (_pages.TryGetValue(pgoff, out ulong cur) && cur == pfn
                && Volatile.Read(ref f.MapCount) == 0 && Volatile.Read(ref f.RefCount) == 1)
            {
                _pages.Remove(pgoff);
                AttachBackingLocked(pgoff, backing);
                removed = true;
            }
        }
        if (!removed)
        {
            AbortPageOut(backing);
            if (dirty)
            {
                Memory.SetFlags(pfn, FrameFlags.Dirty);
            }
            Memory.UnlockFrame(pfn);
            return Errno.EBUSY;
        }
        f.Mapping = null;
        Memory.UnlockFrame(pfn);
        Memory.Put(pfn);
        Counters.Inc(backing != 0 ? Counter.SwapOut : Counter.PageCacheDropped);
        return Errno.Ok;
    }

    /// <summary>True when the backing store takes writeback (host files); false for shmem.</summary>
    private protected virtual bool HasWriteback => false;

    /// <summary>True when reclaim must page out even a clean page (shmem: swap is the only other copy).</summary>
    private protected virtual bool MustPageOut => false;

    /// <summary>
    /// Fills a new, locked page from the backing store. <paramref name="backing"/> is what
    /// <see cref="DetachBackingLocked"/> returned; <paramref name="needContent"/> is false when the caller will
    /// overwrite the whole page (then zeroing suffices).
    /// </summary>
    private protected abstract Errno FillPage(ulong pgoff, ulong pfn, ulong backing, bool needContent);

    /// <summary>Writes one locked page to the backing store, clipped to the size (kernel: writepage).</summary>
    private protected virtual Errno WritePage(ulong pgoff, ulong pfn) => Errno.Ok;

    /// <summary>Reclaim's write-out of a locked page; returns a backing cookie attached when the page leaves the cache.</summary>
    private protected virtual Errno PageOut(ulong pgoff, ulong pfn, out ulong backing)
    {
        backing = 0;
        return WritePage(pgoff, pfn);
    }

    /// <summary>Undoes a <see cref="PageOut"/> whose page could not be removed.</summary>
    private protected virtual void AbortPageOut(ulong backing)
    {
    }

    /// <summary>Takes the backing entry (a swap slot) of a page being instantiated; 0 when none.</summary>
    /// <remarks>Caller holds <c>_pagesLock</c>.</remarks>
    private protected virtual ulong DetachBackingLocked(ulong pgoff) => 0;

    /// <summary>Records a backing entry for a page leaving the cache (reclaim) or whose fill failed.</summary>
    /// <remarks>Caller holds <c>_pagesLock</c>.</remarks>
    private protected virtual void AttachBackingLocked(ulong pgoff, ulong backing)
    {
    }

    /// <summary>Frees the backing entries in [<paramref name="firstPgoff"/>, <paramref name="endPgoff"/>) (truncate, punch, evict).</summary>
    /// <remarks>Caller holds <c>_pagesLock</c>.</remarks>
    private protected virtual void DropBackingLocked(ulong firstPgoff, ulong endPgoff)
    {
    }

    /// <summary>True when an uncached page has no backing data, so it reads as zeroes without a page (shmem holes).</summary>
    /// <remarks>Caller holds <c>_pagesLock</c>.</remarks>
    private protected virtual bool IsHoleLocked(ulong pgoff) => false;

    /// <summary>Makes the backing store at least <paramref name="size"/> long before a write or truncate extends the file (host ftruncate).</summary>
    private protected virtual void ExtendBacking(ulong size)
    {
    }

    /// <summary>Cuts the backing store to <paramref name="size"/> (host ftruncate down).</summary>
    private protected virtual void TrimBacking(ulong size)
    {
    }

    /// <summary>Deallocates whole backing pages [<paramref name="firstPgoff"/>, <paramref name="endPgoff"/>) (host fallocate punch).</summary>
    private protected virtual void PunchBacking(ulong firstPgoff, ulong endPgoff)
    {
    }

    /// <inheritdoc/>
    private protected override int ReadLocked(ulong offset, Span<byte> buffer)
    {
        Debug.Assert(InvalidateLock.IsReadLockHeld);
        int done = 0;
        while (done < buffer.Length)
        {
            ulong pos = offset + (ulong)done;
            ulong pgoff = pos >> Page.Shift;
            int inPage = (int)(pos & Page.OffsetMask);
            int n = Math.Min(Page.Size - inPage, buffer.Length - done);
            bool hole;
            ulong pfn = Page.NoPfn;
            lock (_pagesLock)
            {
                hole = !_pages.ContainsKey(pgoff) && IsHoleLocked(pgoff);
            }
            if (hole)
            {
                buffer.Slice(done, n).Clear();
            }
            else
            {
                Errno e = FindOrCreatePage(pgoff, read: true, out pfn);
                if (e != Errno.Ok)
                {
                    if (done > 0)
                    {
                        return done;
                    }
                    MmException.Throw(e, $"reading file page {pgoff}");
                }
                Memory.FrameSpan(pfn).Slice(inPage, n).CopyTo(buffer.Slice(done, n));
                Memory.Put(pfn);
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
        if (end > old)
        {
            ExtendBacking(end);
        }
        if (offset > old)
        {
            ZeroPartialLocked(old, Math.Min(Page.AlignUp(old, Page.Size), offset));
        }
        int done = 0;
        Errno error = Errno.Ok;
        while (done < data.Length)
        {
            ulong pos = offset + (ulong)done;
            ulong pgoff = pos >> Page.Shift;
            int inPage = (int)(pos & Page.OffsetMask);
            int n = Math.Min(Page.Size - inPage, data.Length - done);
            // A page wholly overwritten, or wholly beyond the old end of file, needs no read: zero-filling it is enough.
            bool noRead = n == Page.Size || (pgoff << Page.Shift) >= old;
            error = FindOrCreatePage(pgoff, read: !noRead, out ulong pfn);
            if (error != Errno.Ok)
            {
                break;
            }
            Memory.LockFrame(pfn);
            Debug.Assert(ReferenceEquals(Memory.Frame(pfn).Mapping, this));
            data.Slice(done, n).CopyTo(Memory.FrameSpan(pfn)[inPage..]);
            Memory.SetFlags(pfn, FrameFlags.Dirty);
            if (pos + (ulong)n > Size)
            {
                // Grow the size while the page is locked, so writeback (which clips to the size under the frame
                // lock) and reclaim never see written bytes beyond it (kernel: i_size_write in write_end).
                SetSizeLocked(pos + (ulong)n);
            }
            Memory.UnlockFrame(pfn);
            Memory.Put(pfn);
            done += n;
        }
        if (done < data.Length && end > old)
        {
            TrimBacking(Size); // the size grew only by the pages that were written
        }
        if (done == 0)
        {
            MmException.Throw(error, $"writing file page {offset >> Page.Shift}");
        }
        return done;
    }

    /// <inheritdoc/>
    private protected override void BeforeResizeLocked(ulong oldSize, ulong newSize)
    {
        Debug.Assert(Monitor.IsEntered(_lock));
        if (newSize > oldSize)
        {
            ExtendBacking(newSize);
        }
    }

    /// <inheritdoc/>
    private protected override void ResizeLocked(ulong oldSize, ulong newSize, List<ulong> release)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && InvalidateLock.IsWriteLockHeld);
        if (newSize < oldSize)
        {
            RemovePagesLocked(Page.AlignUp(newSize, Page.Size) >> Page.Shift, ulong.MaxValue, release);
            ZeroPartialLocked(newSize, Page.AlignUp(newSize, Page.Size));
        }
        else
        {
            ZeroPartialLocked(oldSize, Math.Min(Page.AlignUp(oldSize, Page.Size), newSize));
        }
    }

    /// <inheritdoc/>
    private protected override void AfterResizeLocked(ulong oldSize, ulong newSize)
    {
        Debug.Assert(Monitor.IsEntered(_lock));
        if (newSize < oldSize)
        {
            TrimBacking(newSize);
        }
    }

    /// <inheritdoc/>
    private protected override void PrepareHoleLocked(ulong offset, ulong end)
    {
        Debug.Assert(Monitor.IsEntered(_lock));
        // The partial pages at both ends keep their other bytes, so they must be in the cache to be zeroed. Read
        // both in before changing anything (a failure then changes nothing), zero, and mark them dirty so the
        // zeroes reach the backing store.
        Span<ulong> starts = stackalloc ulong[2];
        Span<ulong> ends = stackalloc ulong[2];
        int count = 0;
        if ((offset & Page.OffsetMask) != 0)
        {
            starts[count] = offset;
            ends[count++] = Math.Min(end, Page.AlignUp(offset, Page.Size));
        }
        if ((end & Page.OffsetMask) != 0 && (count == 0 || Page.AlignDown(end, Page.Size) >= ends[0]))
        {
            starts[count] = Page.AlignDown(end, Page.Size);
            ends[count++] = end;
        }
        Span<ulong> pfns = stackalloc ulong[2];
        int loaded = 0;
        InvalidateLock.EnterReadLock();
        try
        {
            for (int i = 0; i < count; i++)
            {
                ulong pgoff = starts[i] >> Page.Shift;
                bool hole;
                lock (_pagesLock)
                {
                    hole = !_pages.ContainsKey(pgoff) && IsHoleLocked(pgoff);
                }
                if (hole)
                {
                    pfns[i] = Page.NoPfn;
                    continue;
                }
                Errno e = FindOrCreatePage(pgoff, read: true, out pfns[i]);
                if (e != Errno.Ok)
                {
                    for (int k = 0; k < i; k++)
                    {
                        if (pfns[k] != Page.NoPfn)
                        {
                            Memory.Put(pfns[k]);
                        }
                    }
                    MmException.Throw(e, $"reading partial page {pgoff} of a hole punch");
                }
                loaded++;
            }
            for (int i = 0; i < count; i++)
            {
                ulong pfn = pfns[i];
                if (pfn == Page.NoPfn)
                {
                    continue;
                }
                Memory.LockFrame(pfn);
                int from = (int)(starts[i] & Page.OffsetMask);
                Memory.FrameSpan(pfn)[from..(from + (int)(ends[i] - starts[i]))].Clear();
                Memory.SetFlags(pfn, FrameFlags.Dirty);
                Memory.UnlockFrame(pfn);
                Memory.Put(pfn);
            }
        }
        finally
        {
            InvalidateLock.ExitReadLock();
        }
        Debug.Assert(loaded <= count);
    }

    /// <inheritdoc/>
    private protected override void PunchHoleLocked(ulong offset, ulong end, List<ulong> release)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && InvalidateLock.IsWriteLockHeld);
        ulong first = Page.AlignUp(offset, Page.Size) >> Page.Shift;
        ulong last = end >> Page.Shift;
        if (first < last)
        {
            RemovePagesLocked(first, last, release);
            PunchBacking(first, last);
        }
    }

    /// <inheritdoc/>
    private protected override void EvictLocked(List<ulong> release)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && InvalidateLock.IsWriteLockHeld);
        RemovePagesLocked(0, ulong.MaxValue, release);
    }

    /// <inheritdoc/>
    private protected override void ReleasePages(List<ulong> pfns)
    {
        foreach (ulong pfn in pfns)
        {
            Memory.Put(pfn);
        }
    }

    /// <summary>
    /// Finds the page at <paramref name="pgoff"/> or instantiates it, returning it up to date with a reference for
    /// the caller (kernel: filemap_get_folio + filemap_create_folio / shmem_get_folio). Allocation-free when cached.
    /// </summary>
    private protected Errno FindOrCreatePage(ulong pgoff, bool read, out ulong pfn)
    {
        while (true)
        {
            bool found;
            lock (_pagesLock)
            {
                found = _pages.TryGetValue(pgoff, out pfn);
                if (found)
                {
                    Memory.Get(pfn);
                }
            }
            if (found)
            {
                if (IsReady(pfn) || WaitReady(pfn, pgoff))
                {
                    return Errno.Ok;
                }
                Memory.Put(pfn);
                continue;
            }
            Errno e = CreatePage(pgoff, read, out pfn, out bool raced);
            if (!raced)
            {
                return e;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool IsReady(ulong pfn)
        => (Volatile.Read(ref Memory.Frame(pfn).Flags) & (uint)(FrameFlags.Locked | FrameFlags.UpToDate)) == (uint)FrameFlags.UpToDate;

    /// <summary>Waits for a locked page (being filled, written back or reclaimed) and re-checks it is still ours and up to date.</summary>
    private bool WaitReady(ulong pfn, ulong pgoff)
    {
        Memory.LockFrame(pfn);
        ref FrameInfo f = ref Memory.Frame(pfn);
        bool ok = ReferenceEquals(f.Mapping, this) && f.Index == pgoff && f.Has(FrameFlags.UpToDate);
        Memory.UnlockFrame(pfn);
        return ok;
    }

    private Errno CreatePage(ulong pgoff, bool read, out ulong pfn, out bool raced)
    {
        raced = false;
        pfn = Memory.Allocate(0);
        if (pfn == Page.NoPfn)
        {
            return Errno.ENOMEM;
        }
        ref FrameInfo f = ref Memory.Frame(pfn);
        f.Mapping = this;
        f.Index = pgoff;
        bool locked = Memory.TryLockFrame(pfn);
        Debug.Assert(locked, "a just-allocated frame is exclusively ours");
        if (SwapBackedPages)
        {
            Memory.SetFlags(pfn, FrameFlags.SwapBacked);
        }
        ulong backing = 0;
        bool inserted = false;
        lock (_pagesLock)
        {
            if (!_pages.ContainsKey(pgoff))
            {
                _pages.Add(pgoff, pfn);
                Memory.Get(pfn);              // the caller's reference; the allocation's is the cache's
                backing = DetachBackingLocked(pgoff);
                inserted = true;
            }
        }
        if (!inserted)
        {
            f.Mapping = null;
            Memory.UnlockFrame(pfn);
            Memory.Put(pfn);
            pfn = Page.NoPfn;
            raced = true;
            return Errno.Ok;
        }
        Errno e = FillPage(pgoff, pfn, backing, read);
        if (e != Errno.Ok)
        {
            lock (_pagesLock)
            {
                _pages.Remove(pgoff);
                AttachBackingLocked(pgoff, backing);
            }
            f.Mapping = null;
            Memory.UnlockFrame(pfn);
            Memory.Put(pfn);
            Memory.Put(pfn);
            pfn = Page.NoPfn;
            return e;
        }
        Memory.SetFlags(pfn, FrameFlags.UpToDate);
        Memory.UnlockFrame(pfn);
        return Errno.Ok;
    }

    /// <summary>Zeroes file bytes [<paramref name="from"/>, <paramref name="to"/>) inside one cached page, if it is cached (kernel: folio_zero_range on the EOF folio).</summary>
    /// <remarks>Caller holds <c>_lock</c>.</remarks>
    private void ZeroPartialLocked(ulong from, ulong to)
    {
        Debug.Assert(Monitor.IsEntered(_lock));
        if (from >= to)
        {
            return;
        }
        Debug.Assert(from >> Page.Shift == (to - 1) >> Page.Shift);
        ulong pgoff = from >> Page.Shift;
        ulong pfn;
        lock (_pagesLock)
        {
            if (!_pages.TryGetValue(pgoff, out pfn))
            {
                return;
            }
            Memory.Get(pfn);
        }
        Memory.LockFrame(pfn);
        if (ReferenceEquals(Memory.Frame(pfn).Mapping, this))
        {
            int a = (int)(from & Page.OffsetMask);
            Memory.FrameSpan(pfn)[a..(a + (int)(to - from))].Clear();
        }
        Memory.UnlockFrame(pfn);
        Memory.Put(pfn);
    }

    /// <summary>
    /// Removes the cached pages in [<paramref name="firstPgoff"/>, <paramref name="endPgoff"/>) and their backing
    /// entries (kernel: truncate_inode_pages_range): each is detached under its frame lock (so it waits for
    /// writeback) and its cache reference goes to <paramref name="release"/>.
    /// </summary>
    /// <remarks>Caller holds <c>_lock</c> and <see cref="Inode.InvalidateLock"/> for write.</remarks>
    private void RemovePagesLocked(ulong firstPgoff, ulong endPgoff, List<ulong> release)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && InvalidateLock.IsWriteLockHeld);
        int start = release.Count;
        lock (_pagesLock)
        {
            var victims = new List<ulong>();
            if (endPgoff - firstPgoff <= (ulong)_pages.Count)
            {
                for (ulong p = firstPgoff; p < endPgoff; p++)
                {
                    if (_pages.ContainsKey(p))
                    {
                        victims.Add(p);
                    }
                }
            }
            else
            {
                foreach (ulong p in _pages.Keys)
                {
                    if (p >= firstPgoff && p < endPgoff)
                    {
                        victims.Add(p);
                    }
                }
            }
            foreach (ulong p in victims)
            {
                _pages.Remove(p, out ulong pfn);
                release.Add(pfn);
            }
            DropBackingLocked(firstPgoff, endPgoff);
        }
        for (int i = start; i < release.Count; i++)
        {
            ulong pfn = release[i];
            Memory.LockFrame(pfn);
            Memory.Frame(pfn).Mapping = null;
            Memory.ClearFlags(pfn, FrameFlags.Dirty);
            Memory.UnlockFrame(pfn);
        }
    }
}
