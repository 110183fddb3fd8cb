using System.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Storage;

/// <summary>
/// A hugetlbfs file: its pages are huge pages from a <see cref="HugetlbPool"/>, allocated zeroed on first fault
/// and returned to the pool when the file is truncated, has a hole punched or is evicted (kernel:
/// fs/hugetlbfs/inode.c with mm/hugetlb.c). There is no backing store: data lives as long as the file does.
/// </summary>
/// <remarks>
/// <para><b>Sizes.</b> The size is always a multiple of the huge page size (ftruncate to anything else is EINVAL);
/// page offsets (<c>pgoff</c>) are in 4 KiB units, as everywhere in <see cref="IMappable"/>; a huge page's
/// <see cref="FrameInfo.Index"/> is the pgoff of its first base page. There is no write(2) (EINVAL); read(2) works
/// and reads holes as zeroes.</para>
/// <para><b>Reservations</b> (kernel: the inode's resv_map for shared mappings). <see cref="ReserveRange"/>
/// promises pool pages to page indices that have neither a page nor a promise; the first fault of a promised
/// index consumes the promise, a fault elsewhere needs an unpromised free page or fails with ENOMEM (SIGBUS).
/// Truncate, hole punch and eviction give back the promises of the indices they remove.</para>
/// <para><b>Locking.</b> <c>_pagesLock</c> is a leaf (above the pool's lock) protecting the page index and the
/// promises; a fault that allocates holds one of <c>_faultMutexes</c> (kernel: hugetlb_fault_mutex_table, hashed
/// by index) so two faults on one index allocate once, while the zeroing of 2 MiB runs outside the index lock.
/// Each page in the index holds one reference for the file on top of the pool's.</para>
/// </remarks>
public sealed class HugetlbFile : Inode
{
    private const int FaultMutexes = 16;

    private readonly object _pagesLock = new();             // leaf above HugetlbPool._lock
    private readonly Dictionary<ulong, ulong> _pages = [];  // guarded by _pagesLock: huge index → head PFN
    private readonly HashSet<ulong> _reserved = [];         // guarded by _pagesLock: promised huge indices without a page
    private readonly object[] _faultMutexes;                // immutable array of fault mutexes

    internal HugetlbFile(HugetlbFs fileSystem, string? name, ulong size, bool linked, int references)
        : base(size, MaxSizeFor(fileSystem.Pool), linked, references)
    {
        FileSystem = fileSystem;
        Pool = fileSystem.Pool;
        Name = name;
        _faultMutexes = new object[FaultMutexes];
        for (int i = 0; i < FaultMutexes; i++)
        {
            _faultMutexes[i] = new object();
        }
    }

    /// <inheritdoc/>
    public override MappableKind Kind => MappableKind.Hugetlb;

    /// <inheritdoc/>
    public override int HugeOrder => Pool.Order;

    /// <summary>The pool the pages come from.</summary>
    public HugetlbPool Pool { get; }

    /// <summary>The file system the file belongs to.</summary>
    public HugetlbFs FileSystem { get; }

    /// <summary>The name, or null for an anonymous (MAP_HUGETLB) file.</summary>
    public string? Name { get; }

    /// <summary>Number of huge pages the file holds.</summary>
    public int HugePages
    {
        get
        {
            lock (_pagesLock)
            {
                return _pages.Count;
            }
        }
    }

    /// <summary>Promised huge pages not yet faulted in (this file's share of <see cref="HugetlbPool.Reserved"/>).</summary>
    public int ReservedPages
    {
        get
        {
            lock (_pagesLock)
            {
                return _reserved.Count;
            }
        }
    }

    /// <inheritdoc/>
    /// <remarks>
    /// Kernel: hugetlb_fault → hugetlb_no_page for a shared mapping. Always returns the huge order and the head PFN
    /// of the huge page containing <paramref name="pgoff"/>, whatever <paramref name="maxOrder"/> is (the VMA is
    /// huge-page aligned). The first fault of an index allocates a zeroed page from the pool, consuming the index's
    /// promise if it has one. Allocation-free when the page exists. Returns EFAULT at or beyond the end of file and
    /// ENOMEM when the pool has no page for it (SIGBUS).
    /// </remarks>
    public override Errno GetPage(ulong pgoff, bool write, int maxOrder, out ulong pfn, out int order)
    {
        order = Pool.Order;
        if (pgoff >= PagesInSize || IsEvicted)
        {
            pfn = Page.NoPfn;
            return Errno.EFAULT;
        }
        ulong h = pgoff >> Pool.Order;
        if (TryGetLocked(h, out pfn))
        {
            return Errno.Ok;
        }
        lock (_faultMutexes[(int)(h % FaultMutexes)])
        {
            if (TryGetLocked(h, out pfn))
            {
                return Errno.Ok;
            }
            bool promised;
            lock (_pagesLock)
            {
                promised = _reserved.Contains(h);
            }
            Errno e = Pool.AllocatePage(promised, out ulong head);
            if (e != Errno.Ok)
            {
                pfn = Page.NoPfn;
                return e;
            }
            Memory.ZeroFrames(head, 1UL << Pool.Order);
            ref FrameInfo f = ref Memory.Frame(head);
            f.Mapping = this;
            f.Index = h << Pool.Order;
            Memory.SetFlags(head, FrameFlags.UpToDate);
            bool stalePromise;
            lock (_pagesLock)
            {
                // A promise made for this index while we allocated without one is no longer needed.
                stalePromise = _reserved.Remove(h) && !promised;
                _pages.Add(h, head);      // the allocation's reference becomes the file's
                Memory.Get(head);         // the caller's
            }
            if (stalePromise)
            {
                Pool.Unreserve(1);
            }
            pfn = head;
            return Errno.Ok;
        }
    }

    /// <inheritdoc/>
    /// <remarks>Hugetlbfs pages have no backing store, so there is nothing to write back (kernel: hugetlbfs sets no dirty accounting).</remarks>
    public override void MarkDirty(ulong pgoff)
    {
    }

    /// <summary>
    /// Finds the huge page at <paramref name="pgoff"/> without allocating, with a reference for the caller (kernel:
    /// filemap_lock_hugetlb_folio; a private mapping maps an existing file page read-only and allocates its own
    /// copies from <see cref="HugetlbPool.AllocatePage"/>).
    /// </summary>
    /// <returns>Ok; ENOENT when the index has no page.</returns>
    public Errno FindPage(ulong pgoff, out ulong pfn)
        => TryGetLocked(pgoff >> Pool.Order, out pfn) ? Errno.Ok : Errno.ENOENT;

    /// <summary>
    /// Promises pool pages to the huge pages of [<paramref name="firstPgoff"/>, <paramref name="endPgoff"/>) that
    /// have neither a page nor a promise (kernel: hugetlb_reserve_pages for a shared mapping: region_chg on the
    /// inode's resv_map, then hugetlb_acct_memory). Called at mmap of a shared mapping without MAP_NORESERVE.
    /// </summary>
    /// <returns>Ok; EINVAL when the bounds are not huge-page aligned or reversed; ENOMEM when the pool cannot promise
    /// that many pages (nothing changes); EIO after eviction.</returns>
    public Errno ReserveRange(ulong firstPgoff, ulong endPgoff)
    {
        ulong mask = (1UL << Pool.Order) - 1;
        if ((firstPgoff & mask) != 0 || (endPgoff & mask) != 0 || endPgoff < firstPgoff)
        {
            return Errno.EINVAL;
        }
        if (IsEvicted)
        {
            return Errno.EIO;
        }
        ulong first = firstPgoff >> Pool.Order;
        ulong end = endPgoff >> Pool.Order;
        lock (_pagesLock)
        {
            ulong need = 0;
            for (ulong h = first; h < end; h++)
            {
                if (!_pages.ContainsKey(h) && !_reserved.Contains(h))
                {
                    need++;
                }
            }
            if (need == 0)
            {
                return Errno.Ok;
            }
            Errno e = Pool.Reserve(need);
            if (e != Errno.Ok)
            {
                return e;
            }
            for (ulong h = first; h < end; h++)
            {
                if (!_pages.ContainsKey(h))
                {
                    _reserved.Add(h);
                }
            }
            return Errno.Ok;
        }
    }

    /// <inheritdoc/>
    private protected override bool SupportsWrite => false;

    /// <inheritdoc/>
    private protected override ulong UnmapGranule => Pool.PageBytes;

    /// <inheritdoc/>
    private protected override Errno ValidateSize(ulong size) => Page.IsAligned(size, Pool.PageBytes) ? Errno.Ok : Errno.EINVAL;

    /// <inheritdoc/>
    private protected override int ReadLocked(ulong offset, Span<byte> buffer)
    {
        Debug.Assert(InvalidateLock.IsReadLockHeld);
        int done = 0;
        ulong hugeBytes = Pool.PageBytes;
        while (done < buffer.Length)
        {
            ulong pos = offset + (ulong)done;
            ulong h = pos / hugeBytes;
            ulong inPage = pos % hugeBytes;
            int n = (int)Math.Min(hugeBytes - inPage, (ulong)(buffer.Length - done));
            ulong head;
            bool present;
            lock (_pagesLock)
            {
                present = _pages.TryGetValue(h, out head);
            }
            Span<byte> dst = buffer.Slice(done, n);
            if (present)
            {
                // Pages leave the file only under InvalidateLock for write, which we exclude.
                CopyOut(head, inPage, dst);
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
        MmException.Throw(Errno.EINVAL, "hugetlbfs has no write method");
        return 0;
    }

    /// <inheritdoc/>
    private protected override void ResizeLocked(ulong oldSize, ulong newSize, List<ulong> release)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && InvalidateLock.IsWriteLockHeld);
        if (newSize < oldSize)
        {
            RemoveLocked(newSize / Pool.PageBytes, ulong.MaxValue, release);
        }
    }

    /// <inheritdoc/>
    private protected override void PunchHoleLocked(ulong offset, ulong end, List<ulong> release)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && InvalidateLock.IsWriteLockHeld);
        ulong hugeBytes = Pool.PageBytes;
        ulong first = Page.AlignUp(offset, hugeBytes);
        ulong last = Page.AlignDown(end, hugeBytes);
        // Partial huge pages at either end are zeroed in place (kernel: hugetlbfs_zero_partial_page).
        if (offset < Math.Min(first, end))
        {
            ZeroInPageLocked(offset, Math.Min(first, end));
        }
        if (last < end && last >= first)
        {
            ZeroInPageLocked(last, end);
        }
        if (first < last)
        {
            RemoveLocked(first / hugeBytes, last / hugeBytes, release);
        }
    }

    /// <inheritdoc/>
    private protected override Errno FsyncCore() => Errno.Ok;

    /// <inheritdoc/>
    private protected override void ReleasePages(List<ulong> pfns)
    {
        foreach (ulong pfn in pfns)
        {
            Pool.ReleasePage(pfn);
        }
    }

    /// <inheritdoc/>
    private protected override void EvictLocked(List<ulong> release)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && InvalidateLock.IsWriteLockHeld);
        RemoveLocked(0, ulong.MaxValue, release);
        FileSystem.Forget(this);
    }

    private PhysicalMemory Memory => Pool.Memory;

    private bool TryGetLocked(ulong h, out ulong pfn)
    {
        lock (_pagesLock)
        {
            if (_pages.TryGetValue(h, out pfn))
            {
                Memory.Get(pfn);
                return true;
            }
        }
        pfn = Page.NoPfn;
        return false;
    }

    private unsafe void CopyOut(ulong head, ulong inPage, Span<byte> dst)
        => new ReadOnlySpan<byte>(Memory.Address(head) + inPage, dst.Length).CopyTo(dst);

    /// <summary>Zeroes file bytes [<paramref name="from"/>, <paramref name="to"/>) inside one huge page, if present.</summary>
    /// <remarks>Caller holds <see cref="Inode.InvalidateLock"/> for write.</remarks>
    private unsafe void ZeroInPageLocked(ulong from, ulong to)
    {
        Debug.Assert(InvalidateLock.IsWriteLockHeld);
        ulong h = from / Pool.PageBytes;
        ulong head;
        lock (_pagesLock)
        {
            if (!_pages.TryGetValue(h, out head))
            {
                return;
            }
        }
        new Span<byte>(Memory.Address(head) + (from - h * Pool.PageBytes), (int)(to - from)).Clear();
    }

    /// <summary>
    /// Removes the pages and promises of huge indices [<paramref name="first"/>, <paramref name="end"/>) (kernel:
    /// remove_inode_hugepages + hugetlb_unreserve_pages): page references go to <paramref name="release"/>, promises
    /// back to the pool.
    /// </summary>
    /// <remarks>Caller holds <see cref="Inode.InvalidateLock"/> for write.</remarks>
    private void RemoveLocked(ulong first, ulong end, List<ulong> release)
    {
        Debug.Assert(InvalidateLock.IsWriteLockHeld);
        int start = release.Count;
        ulong promises = 0;
        lock (_pagesLock)
        {
            foreach (ulong h in _pages.Keys.Where(h => h >= first && h < end).ToList())
            {
                _pages.Remove(h, out ulong head);
                release.Add(head);
            }
            promises = (ulong)_reserved.RemoveWhere(h => h >= first && h < end);
        }
        if (promises != 0)
        {
            Pool.Unreserve(promises);
        }
        for (int i = start; i < release.Count; i++)
        {
            ulong head = release[i];
            Memory.LockFrame(head);
            Memory.Frame(head).Mapping = null;
            Memory.UnlockFrame(head);
        }
    }

    private static ulong MaxSizeFor(HugetlbPool pool) => Page.AlignDown(long.MaxValue, pool.PageBytes);
}
