using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Mm;

/// <summary>Memory protections (kernel: PROT_*).</summary>
[Flags]
public enum Prot
{
    /// <summary>No access.</summary>
    None = 0,
    /// <summary>Readable.</summary>
    Read = 1,
    /// <summary>Writable.</summary>
    Write = 2,
    /// <summary>Executable.</summary>
    Exec = 4,
}

/// <summary>mmap flags (kernel: MAP_*, x86-64 values).</summary>
[Flags]
public enum MapFlags
{
    /// <summary>No flag (invalid alone: one of Shared/Private is required).</summary>
    None = 0,
    /// <summary>Share changes.</summary>
    Shared = 0x01,
    /// <summary>Changes are private (copy on write).</summary>
    Private = 0x02,
    /// <summary>Shared, and reject unknown flags.</summary>
    SharedValidate = 0x03,
    /// <summary>Interpret the address exactly, replacing what is there.</summary>
    Fixed = 0x10,
    /// <summary>Not backed by a file.</summary>
    Anonymous = 0x20,
    /// <summary>Do not reserve swap / huge pages.</summary>
    NoReserve = 0x4000,
    /// <summary>Populate (prefault) the mapping.</summary>
    Populate = 0x8000,
    /// <summary>Use huge pages (hugetlbfs).</summary>
    HugeTlb = 0x40000,
    /// <summary>Synchronous page faults for DAX (requires SharedValidate).</summary>
    Sync = 0x80000,
    /// <summary>Like Fixed but fail with EEXIST instead of replacing.</summary>
    FixedNoReplace = 0x100000,
}

/// <summary>VMA flags (kernel: VM_*).</summary>
[Flags]
public enum VmFlags : uint
{
    /// <summary>No flag.</summary>
    None = 0,
    /// <summary>VM_READ.</summary>
    Read = 1 << 0,
    /// <summary>VM_WRITE.</summary>
    Write = 1 << 1,
    /// <summary>VM_EXEC.</summary>
    Exec = 1 << 2,
    /// <summary>VM_SHARED.</summary>
    Shared = 1 << 3,
    /// <summary>VM_MAYREAD.</summary>
    MayRead = 1 << 4,
    /// <summary>VM_MAYWRITE.</summary>
    MayWrite = 1 << 5,
    /// <summary>VM_MAYEXEC.</summary>
    MayExec = 1 << 6,
    /// <summary>VM_MAYSHARE.</summary>
    MayShare = 1 << 7,
    /// <summary>VM_IO: memory-mapped I/O.</summary>
    Io = 1 << 14,
    /// <summary>VM_DONTEXPAND.</summary>
    DontExpand = 1 << 18,
    /// <summary>VM_ACCOUNT: private writable memory charged to the commit limit (invisible in maps, but VMAs that differ in it do not merge).</summary>
    Account = 1 << 20,
    /// <summary>VM_NORESERVE.</summary>
    NoReserve = 1 << 21,
    /// <summary>VM_HUGETLB.</summary>
    HugeTlb = 1 << 22,
    /// <summary>VM_SYNC (DAX synchronous faults).</summary>
    Sync = 1 << 23,
    /// <summary>VM_PFNMAP: raw PFNs, no page metadata semantics.</summary>
    PfnMap = 1 << 10,
    /// <summary>VM_MIXEDMAP: mix of pages and raw PFNs.</summary>
    MixedMap = 1 << 28,
    /// <summary>VM_HUGEPAGE (MADV_HUGEPAGE).</summary>
    HugePage = 1 << 29,
    /// <summary>VM_NOHUGEPAGE (MADV_NOHUGEPAGE).</summary>
    NoHugePage = 1 << 30,
    /// <summary>VM_LOCKED.</summary>
    Locked = 1 << 13,
    /// <summary>VM_SPECIAL = IO | DONTEXPAND | PFNMAP | MIXEDMAP.</summary>
    Special = Io | DontExpand | PfnMap | MixedMap,
}

/// <summary>What backs a VMA.</summary>
public enum VmaKind
{
    /// <summary>Private anonymous memory.</summary>
    Anonymous,
    /// <summary>A page-cache file or shared anonymous (shmem) object.</summary>
    File,
    /// <summary>A file on a DAX file system.</summary>
    Dax,
    /// <summary>hugetlbfs (file or MAP_HUGETLB).</summary>
    HugeTlb,
    /// <summary>A VM_PFNMAP | VM_IO register window (remap_pfn_range).</summary>
    PfnMap,
    /// <summary>A VM_MIXEDMAP device mapping (vm_insert_page).</summary>
    MixedMap,
}

/// <summary>
/// Anonymous-memory owner shared by the VMAs of a fork family (kernel: anon_vma). Anonymous frames point to it
/// through <see cref="FrameInfo.Mapping"/>.
/// </summary>
public sealed class AnonVma
{
}

/// <summary>
/// Huge pages reserved at mmap for a private hugetlb VMA and not yet consumed by its faults (kernel: the
/// vma's resv_map for a MAP_PRIVATE mapping); shared by the pieces of a split VMA.
/// </summary>
internal sealed class HugeReservation
{
    public long Remaining;   // atomic

    /// <summary>Consumes one reserved page if any is left.</summary>
    public bool TryTake()
    {
        long cur = Interlocked.Read(ref Remaining);
        while (cur > 0)
        {
            long seen = Interlocked.CompareExchange(ref Remaining, cur - 1, cur);
            if (seen == cur)
            {
                return true;
            }
            cur = seen;
        }
        return false;
    }
}

/// <summary>
/// A virtual memory area: a contiguous range with one protection and one backing (kernel: vm_area_struct).
/// Immutable: a VMA whose range, flags or backing change is replaced by new VMA objects under the mmap write lock.
/// </summary>
public sealed class Vma : IFileMapping
{
    internal Vma(AddressSpace space, ulong start, ulong end, VmFlags flags, VmaKind kind, IMappable? file, ulong pgoff, AnonVma? anon)
    {
        Space = space;
        Start = start;
        End = end;
        Flags = flags;
        Kind = kind;
        File = file;
        Pgoff = pgoff;
        _anon = anon;
    }

    private AnonVma? _anon;   // set once (CAS) by the first anonymous fault (kernel: anon_vma_prepare); read with Volatile

    /// <summary>The owning address space.</summary>
    public AddressSpace Space { get; }
    IMappingSpace IFileMapping.Space => Space;
    /// <summary>First address.</summary>
    public ulong Start { get; }
    /// <summary>End address (exclusive).</summary>
    public ulong End { get; }
    /// <summary>VM_* flags.</summary>
    public VmFlags Flags { get; }
    /// <summary>Backing kind.</summary>
    public VmaKind Kind { get; }
    /// <summary>Mapped file, or null for anonymous memory and PFN maps.</summary>
    public IMappable? File { get; }
    /// <summary>File page index at <see cref="Start"/> (for anonymous VMAs, the anon page index; for PFN maps, the first PFN).</summary>
    public ulong Pgoff { get; }
    /// <summary>
    /// Anonymous owner (private anonymous pages and COW copies), or null before the VMA's first anonymous page
    /// (kernel: vma->anon_vma, set lazily by anon_vma_prepare). Always null for shared mappings.
    /// </summary>
    public AnonVma? Anon => Volatile.Read(ref _anon);

    /// <summary>Returns <see cref="Anon"/>, creating it on first use (kernel: anon_vma_prepare). Mmap lock held (either side).</summary>
    internal AnonVma PrepareAnon()
    {
        AnonVma? a = Volatile.Read(ref _anon);
        if (a is not null)
        {
            return a;
        }
        var fresh = new AnonVma();
        return Interlocked.CompareExchange(ref _anon, fresh, null) ?? fresh;
    }
    /// <summary>Length in bytes.</summary>
    public ulong Length => End - Start;
    /// <summary>True when the VMA is shared (VM_SHARED).</summary>
    public bool IsShared => (Flags & VmFlags.Shared) != 0;
    /// <summary>True for private anonymous memory.</summary>
    public bool IsAnonymous => Kind == VmaKind.Anonymous;
    /// <summary>Protection as PROT_* bits.</summary>
    public Prot Prot => (Prot)((int)Flags & 7);
    /// <summary>For hugetlb VMAs, the huge page order; else 0.</summary>
    public int HugeOrder => File?.HugeOrder ?? 0;

    /// <summary>File (or anon) page index of <paramref name="address"/>.</summary>
    public ulong PgoffOf(ulong address) => Pgoff + ((address - Start) >> Page.Shift);

    /// <summary>Huge-page reservation of a hugetlb VMA, or null.</summary>
    internal HugeReservation? Reservation { get; init; }

    internal Vma With(ulong start, ulong end, VmFlags? flags = null, AnonVma? anon = null)
        => new(Space, start, end, flags ?? Flags, Kind, File, Pgoff + ((start - Start) >> Page.Shift), anon ?? Anon) { Reservation = Reservation };

    /// <inheritdoc/>
    public override string ToString()
    {
        char r = (Flags & VmFlags.Read) != 0 ? 'r' : '-';
        char w = (Flags & VmFlags.Write) != 0 ? 'w' : '-';
        char x = (Flags & VmFlags.Exec) != 0 ? 'x' : '-';
        char s = IsShared ? 's' : 'p';
        return $"{Start:x12}-{End:x12} {r}{w}{x}{s} {Pgoff << Page.Shift:x8} {Kind}";
    }
}
