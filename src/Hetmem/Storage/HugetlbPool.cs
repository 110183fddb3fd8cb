using System.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Storage;

/// <summary>
/// A pool of huge pages of one size, taken from the buddy allocator once, at construction (kernel: a struct hstate
/// with nr_hugepages set; the counters are /proc/meminfo's HugePages_Total, HugePages_Free and HugePages_Rsvd).
/// </summary>
/// <remarks>
/// <para><b>Why pages never leak back to the buddy.</b> <see cref="PhysicalMemory.Put"/> frees a page when its
/// last reference goes, and the physical layer has no destructor hook (the kernel's free_huge_folio). So the pool
/// keeps one reference of its own on every page for as long as it lives: a free pool page has reference count 1,
/// a page in use has 2 or more (the pool's, plus a file's page-cache reference or a private mapping's). Users drop
/// their references with plain <see cref="PhysicalMemory.Put"/> or <see cref="ReleasePage"/>; a page whose count is
/// back to 1 is idle, and the pool takes it back onto its free list either at once (<see cref="ReleasePage"/>) or
/// the next time it looks (every <see cref="Free"/>, <see cref="Reserve"/> and failed allocation scans the pages in
/// use, kernel-style lazily). Only <see cref="Dispose"/> returns pages to the buddy allocator.</para>
/// <para><b>Reservations</b> (kernel: resv_huge_pages, hugetlb_acct_memory). <see cref="Reserve"/> promises pages
/// to a mapping at mmap time; an allocation that consumes a reservation always succeeds, one without needs a free
/// page that is not promised (Free − Reserved &gt; 0), else ENOMEM, which the fault handler turns into SIGBUS.</para>
/// <para><b>Locking.</b> <c>_lock</c> is a leaf protecting the free list, the in-use marks and the reservation count.
/// Page reference counts are atomic.</para>
/// </remarks>
public sealed class HugetlbPool : IDisposable
{
    private readonly object _lock = new();                 // leaf
    private readonly ulong[] _pfns;                        // immutable: head PFN of every pool page
    private readonly Dictionary<ulong, int> _indexOf;      // immutable after construction: head PFN → index
    private readonly bool[] _inUse;                        // guarded by _lock
    private readonly int[] _freeStack;                     // guarded by _lock
    private int _freeTop;                                  // guarded by _lock
    private ulong _reserved;                               // guarded by _lock
    private bool _disposed;                                // guarded by _lock

    /// <summary>
    /// Reserves <paramref name="pages"/> huge pages of order <paramref name="order"/> from
    /// <paramref name="memory"/> (kernel: echo N &gt; /sys/kernel/mm/hugepages/hugepages-*/nr_hugepages, except
    /// that a pool that cannot be filled fails instead of coming up short).
    /// </summary>
    /// <exception cref="MmException">EINVAL when <paramref name="order"/> is not 9, or 18 on memory that supports
    /// gigantic pages; ENOMEM when the buddy allocator cannot provide every page (nothing is kept).</exception>
    public HugetlbPool(PhysicalMemory memory, int order, ulong pages)
    {
        ArgumentNullException.ThrowIfNull(memory);
        if (order != Page.PmdOrder && !(order == Page.PudOrder && memory.SupportsGigantic))
        {
            MmException.Throw(Errno.EINVAL, $"huge page order {order}: must be {Page.PmdOrder}, or {Page.PudOrder} with at least 1 GiB of RAM");
        }
        if (pages > memory.RamFrames >> order)
        {
            MmException.Throw(Errno.ENOMEM, $"{pages} huge pages of order {order} exceed the {memory.RamBytes}-byte RAM");
        }
        Memory = memory;
        Order = order;
        _pfns = new ulong[pages];
        _indexOf = new Dictionary<ulong, int>((int)pages);
        _inUse = new bool[pages];
        _freeStack = new int[pages];
        for (ulong i = 0; i < pages; i++)
        {
            ulong pfn = memory.Allocate(order, zero: false);
            if (pfn == Page.NoPfn)
            {
                for (ulong k = 0; k < i; k++)
                {
                    memory.Put(_pfns[k]);
                }
                MmException.Throw(Errno.ENOMEM, $"only {i} of {pages} huge pages of order {order} could be allocated");
            }
            memory.SetFlags(pfn, FrameFlags.HugeTlb);
            _pfns[i] = pfn;
            _indexOf.Add(pfn, (int)i);
        }
        for (int i = 0; i < (int)pages; i++)
        {
            _freeStack[i] = (int)pages - 1 - i;
        }
        _freeTop = (int)pages;
    }

    /// <summary>The physical memory the pages came from.</summary>
    public PhysicalMemory Memory { get; }

    /// <summary>Huge page order (9 = 2 MiB, 18 = 1 GiB).</summary>
    public int Order { get; }

    /// <summary>Huge page size in bytes (kernel: huge_page_size).</summary>
    public ulong PageBytes => (ulong)Page.Size << Order;

    /// <summary>Pages in the pool (HugePages_Total).</summary>
    public ulong Total => (ulong)_pfns.Length;

    /// <summary>Pages not in use, reserved ones included (HugePages_Free). Takes back idle pages first.</summary>
    public ulong Free
    {
        get
        {
            lock (_lock)
            {
                ReapLocked();
                return (ulong)_freeTop;
            }
        }
    }

    /// <summary>Pages promised to mappings but not yet faulted in (HugePages_Rsvd).</summary>
    public ulong Reserved
    {
        get
        {
            lock (_lock)
            {
                return _reserved;
            }
        }
    }

    /// <summary>True when <paramref name="pfn"/> is the head of one of the pool's pages.</summary>
    public bool Contains(ulong pfn) => _indexOf.ContainsKey(pfn);

    /// <summary>
    /// Promises <paramref name="pages"/> free pages to a mapping (kernel: hugetlb_acct_memory(+pages) from
    /// hugetlb_reserve_pages at mmap, unless MAP_NORESERVE).
    /// </summary>
    /// <returns>Ok; ENOMEM when fewer than <paramref name="pages"/> free pages are unpromised (nothing changes).</returns>
    public Errno Reserve(ulong pages)
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return Errno.ENOMEM;
            }
            if ((ulong)_freeTop - _reserved < pages)
            {
                ReapLocked();
                if ((ulong)_freeTop - _reserved < pages)
                {
                    return Errno.ENOMEM;
                }
            }
            _reserved += pages;
            return Errno.Ok;
        }
    }

    /// <summary>Returns unconsumed promises (kernel: hugetlb_acct_memory(-pages) at munmap or truncate).</summary>
    /// <exception cref="InvalidOperationException">When more pages are returned than are reserved.</exception>
    public void Unreserve(ulong pages)
    {
        lock (_lock)
        {
            if (pages > _reserved)
            {
                throw new InvalidOperationException($"unreserving {pages} huge pages but only {_reserved} are reserved");
            }
            _reserved -= pages;
        }
    }

    /// <summary>
    /// Takes a page off the free list for a fault (kernel: alloc_hugetlb_folio), with one reference for the caller
    /// (on top of the pool's). With <paramref name="useReservation"/> it consumes one reservation. The page is not
    /// zeroed; <see cref="FrameInfo.Mapping"/> is null.
    /// </summary>
    /// <returns>Ok; ENOMEM when no page is free (or every free page is promised to others and
    /// <paramref name="useReservation"/> is false, or no reservation is outstanding).</returns>
    public Errno AllocatePage(bool useReservation, out ulong pfn)
    {
        lock (_lock)
        {
            pfn = Page.NoPfn;
            if (_disposed || useReservation && _reserved == 0)
            {
                return Errno.ENOMEM;
            }
            ulong needFree = useReservation ? 1 : _reserved + 1;
            if ((ulong)_freeTop < needFree)
            {
                ReapLocked();
                if ((ulong)_freeTop < needFree)
                {
                    return Errno.ENOMEM;
                }
            }
            int i = _freeStack[--_freeTop];
            _inUse[i] = true;
            if (useReservation)
            {
                _reserved--;
            }
            pfn = _pfns[i];
            Memory.Get(pfn);
            return Errno.Ok;
        }
    }

    /// <summary>
    /// Takes a free page that is not promised to anyone, for fork's copy of a private huge page (kernel:
    /// alloc_hugetlb_folio with avoid_reserve from copy_hugetlb_page_range). Hetmem has no overcommit
    /// (nr_overcommit_hugepages = 0), so this never grows the pool.
    /// </summary>
    /// <returns>The head PFN with one reference for the caller, or <see cref="Page.NoPfn"/> when no unpromised page is free.</returns>
    public ulong AllocateSurplus() => AllocatePage(useReservation: false, out ulong pfn) == Errno.Ok ? pfn : Page.NoPfn;

    /// <summary>
    /// Drops one reference on a pool page and, if only the pool's is left, puts it back on the free list at once
    /// (kernel: folio_put → free_huge_folio). A plain <see cref="PhysicalMemory.Put"/> is also fine: the page then
    /// returns at the pool's next scan.
    /// </summary>
    public void ReleasePage(ulong pfn)
    {
        Debug.Assert(Contains(pfn), $"0x{pfn:x} is not a pool page");
        Memory.Put(pfn);
        if (!_indexOf.TryGetValue(pfn, out int i))
        {
            return;
        }
        lock (_lock)
        {
            if (!_disposed && _inUse[i] && Volatile.Read(ref Memory.Frame(pfn).RefCount) == 1)
            {
                ReturnLocked(i);
            }
        }
    }

    /// <summary>
    /// Frees the pool (kernel: nr_hugepages = 0): every idle page goes back to the buddy allocator; a page still in
    /// use loses the pool's reference and is freed by its last user.
    /// </summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }
            ReapLocked();
            _disposed = true;
        }
        foreach (ulong pfn in _pfns)
        {
            Memory.Put(pfn);
        }
    }

    /// <summary>Takes back every page in use whose only reference is the pool's.</summary>
    /// <remarks>Caller holds <c>_lock</c>.</remarks>
    private void ReapLocked()
    {
        Debug.Assert(Monitor.IsEntered(_lock));
        if (_freeTop == _pfns.Length)
        {
            return;
        }
        for (int i = 0; i < _pfns.Length; i++)
        {
            if (_inUse[i] && Volatile.Read(ref Memory.Frame(_pfns[i]).RefCount) == 1)
            {
                ReturnLocked(i);
            }
        }
    }

    /// <summary>Puts an idle page (reference count 1, unmapped) back on the free list and forgets its owner.</summary>
    /// <remarks>Caller holds <c>_lock</c>; the page is exclusively the pool's.</remarks>
    private void ReturnLocked(int i)
    {
        Debug.Assert(Monitor.IsEntered(_lock) && _inUse[i]);
        ulong pfn = _pfns[i];
        ref FrameInfo f = ref Memory.Frame(pfn);
        Debug.Assert(f.MapCount == 0, $"idle huge page 0x{pfn:x} is still mapped");
        f.Mapping = null;
        f.Index = 0;
        Memory.ClearFlags(pfn, FrameFlags.Dirty | FrameFlags.UpToDate | FrameFlags.Referenced);
        _inUse[i] = false;
        _freeStack[_freeTop++] = i;
    }
}
