namespace Hetmem.Storage;

/// <summary>
/// Something an address space can map: a page-cache file, a DAX file, a hugetlbfs file (kernel: the
/// vm_operations_struct of a file plus its address_space; gVisor: memmap.Mappable).
/// </summary>
/// <remarks>
/// Locking: the fault handler calls <see cref="GetPage"/> with the mmap lock held for read and
/// <see cref="InvalidateLock"/> held for read, and installs the returned page before dropping the latter;
/// truncate and hole punch take <see cref="InvalidateLock"/> for write, so no new mapping of a removed
/// page can appear after they unmapped the range.
/// </remarks>
public interface IMappable
{
    /// <summary>File size in bytes (faults at or beyond it raise SIGBUS).</summary>
    ulong Size { get; }

    /// <summary>The kind of backing (decides the fault path and the mapping sizes).</summary>
    MappableKind Kind { get; }

    /// <summary>For hugetlbfs: the huge page order (9 or 18); otherwise 0.</summary>
    int HugeOrder { get; }

    /// <summary>Held for read across "get page, install PTE" by faults, for write by truncate/punch hole (kernel: mapping->invalidate_lock).</summary>
    ReaderWriterLockSlim InvalidateLock { get; }

    /// <summary>Reverse map: the address spaces that map this file.</summary>
    MappingSet Mappings { get; }

    /// <summary>
    /// Finds or creates the page backing file page <paramref name="pgoff"/> and returns it with one extra
    /// reference for the caller (kernel: filemap_fault / dax_iomap_fault / hugetlb_fault).
    /// <paramref name="maxOrder"/> is the largest mapping order the caller could install at this address
    /// (decided by VA alignment and VMA bounds); DAX returns the largest order ≤ it that its extent allows,
    /// hugetlbfs always its huge order (pfn is then the head of the huge page), the page cache 0.
    /// </summary>
    /// <returns>Ok; EFAULT when <paramref name="pgoff"/> is at or beyond the end of file (SIGBUS);
    /// ENOMEM when no memory (hugetlbfs: pool exhausted → SIGBUS); ENOSPC when a DAX file system is full; EIO on poison.</returns>
    Errno GetPage(ulong pgoff, bool write, int maxOrder, out ulong pfn, out int order);

    /// <summary>Marks the page at <paramref name="pgoff"/> dirty (kernel: set_page_dirty from a dirty PTE or a device write).</summary>
    void MarkDirty(ulong pgoff);
}

/// <summary>Backing kinds of an <see cref="IMappable"/>.</summary>
public enum MappableKind
{
    /// <summary>Ordinary page-cache file (pages are RAM frames owned by the file).</summary>
    PageCache,
    /// <summary>Shared anonymous memory / tmpfs object: page cache with swap backing.</summary>
    Shmem,
    /// <summary>File on a DAX file system (pages are devmap frames of a namespace, never in the page cache).</summary>
    Dax,
    /// <summary>hugetlbfs file (pages are huge pages from the pool).</summary>
    Hugetlb,
    /// <summary>A device file mapping (vm_insert_page-style VM_MIXEDMAP).</summary>
    Device,
}

/// <summary>One VMA's mapping of a file, as the file's reverse map sees it (kernel: a vma on i_mmap).</summary>
/// <remarks>Start, End and Pgoff are immutable: a VMA that changes its range is replaced in the set.</remarks>
public interface IFileMapping
{
    /// <summary>The address space the mapping lives in.</summary>
    IMappingSpace Space { get; }
    /// <summary>First virtual address.</summary>
    ulong Start { get; }
    /// <summary>End virtual address (exclusive).</summary>
    ulong End { get; }
    /// <summary>File page index mapped at <see cref="Start"/>.</summary>
    ulong Pgoff { get; }
}

/// <summary>An address space as seen by a file: something whose mappings of that file can be zapped (gVisor: memmap.MappingSpace).</summary>
public interface IMappingSpace
{
    /// <summary>
    /// Removes every page-table entry of <paramref name="mapping"/> in [<paramref name="start"/>,
    /// <paramref name="end"/>) that maps the file (kernel: unmap_mapping_range → zap_page_range_single),
    /// inside an MMU_NOTIFY_CLEAR bracket. Private COW copies are kept unless <paramref name="evenCows"/>.
    /// Called with <see cref="IMappable.InvalidateLock"/> held for write and the mapping-set lock held; must
    /// not take the mmap lock.
    /// </summary>
    void UnmapMappingRange(IFileMapping mapping, ulong start, ulong end, bool evenCows);
}

/// <summary>The reverse map of one file: which VMAs map it (kernel: address_space->i_mmap).</summary>
/// <remarks>Locking: <c>_lock</c> protects the set; it is held across <see cref="UnmapRange"/>, so a VMA cannot
/// leave the set (and its page tables cannot be torn down) while the file zaps it. Lock order: mmap lock →
/// invalidate lock → mapping-set lock → page-table locks.</remarks>
public sealed class MappingSet
{
    private readonly object _lock = new();
    private readonly HashSet<IFileMapping> _mappings = [];   // guarded by _lock

    /// <summary>Adds a VMA's mapping.</summary>
    public void Add(IFileMapping mapping)
    {
        lock (_lock)
        {
            _mappings.Add(mapping);
        }
    }

    /// <summary>Removes a VMA's mapping.</summary>
    public void Remove(IFileMapping mapping)
    {
        lock (_lock)
        {
            _mappings.Remove(mapping);
        }
    }

    /// <summary>Atomically replaces one mapping by others (VMA split, merge or move), so no zap can miss it.</summary>
    public void Replace(IFileMapping? old, ReadOnlySpan<IFileMapping> replacements)
    {
        lock (_lock)
        {
            if (old is not null)
            {
                _mappings.Remove(old);
            }
            foreach (IFileMapping m in replacements)
            {
                _mappings.Add(m);
            }
        }
    }

    /// <summary>Number of VMAs mapping the file.</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _mappings.Count;
            }
        }
    }

    /// <summary>Zaps every mapping of file pages [<paramref name="firstPgoff"/>, <paramref name="endPgoff"/>) in every VMA that maps them.</summary>
    public void UnmapRange(ulong firstPgoff, ulong endPgoff, bool evenCows)
    {
        lock (_lock)
        {
            foreach (IFileMapping m in _mappings)
            {
                ulong pages = (m.End - m.Start) >> Physical.Page.Shift;
                ulong lo = Math.Max(firstPgoff, m.Pgoff);
                ulong hi = Math.Min(endPgoff, m.Pgoff + pages);
                if (lo < hi)
                {
                    m.Space.UnmapMappingRange(m, m.Start + ((lo - m.Pgoff) << Physical.Page.Shift), m.Start + ((hi - m.Pgoff) << Physical.Page.Shift), evenCows);
                }
            }
        }
    }
}
