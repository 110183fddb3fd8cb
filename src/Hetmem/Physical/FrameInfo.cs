using System.Runtime.InteropServices;

namespace Hetmem.Physical;

/// <summary>Frame flag bits kept in <see cref="FrameInfo.Flags"/> (kernel: page flags).</summary>
[Flags]
public enum FrameFlags : uint
{
    /// <summary>No flag.</summary>
    None = 0,
    /// <summary>Frame lock bit (PG_locked); taken with <see cref="PhysicalMemory.LockFrame"/>.</summary>
    Locked = 1 << 0,
    /// <summary>Contents differ from backing store (PG_dirty).</summary>
    Dirty = 1 << 1,
    /// <summary>Contents valid (PG_uptodate).</summary>
    UpToDate = 1 << 2,
    /// <summary>Anonymous page (PageAnon): <see cref="FrameInfo.Mapping"/> is the anon owner.</summary>
    Anon = 1 << 3,
    /// <summary>Free in the buddy allocator (PageBuddy).</summary>
    Buddy = 1 << 4,
    /// <summary>Reserved frame, never allocated (PG_reserved), e.g. the zero page.</summary>
    Reserved = 1 << 5,
    /// <summary>Frame holds a page table (PageTable).</summary>
    PageTable = 1 << 6,
    /// <summary>First frame of a compound page (PG_head).</summary>
    Head = 1 << 7,
    /// <summary>Non-first frame of a compound page.</summary>
    Tail = 1 << 8,
    /// <summary>Page belongs to a hugetlbfs pool.</summary>
    HugeTlb = 1 << 9,
    /// <summary>ZONE_DEVICE frame (DAX, device-private, device-coherent).</summary>
    DevMap = 1 << 10,
    /// <summary>Swap-backed (anon or shmem) page.</summary>
    SwapBacked = 1 << 11,
    /// <summary>Page is under writeback.</summary>
    Writeback = 1 << 12,
    /// <summary>Transparent huge page head.</summary>
    Thp = 1 << 13,
    /// <summary>Hardware poison.</summary>
    HwPoison = 1 << 14,
    /// <summary>Page was referenced recently (PG_referenced).</summary>
    Referenced = 1 << 15,
    /// <summary>Anon page is exclusive to one process (PageAnonExclusive).</summary>
    AnonExclusive = 1 << 16,
}

/// <summary>
/// Metadata of one 4 KiB frame, 32 bytes (kernel: struct page, 64 bytes). Indexed by PFN in a struct array;
/// the frame's bytes live elsewhere (RAM arena, DAX namespace, device arena).
/// </summary>
/// <remarks>
/// Locking: <see cref="RefCount"/>, <see cref="MapCount"/> and <see cref="Flags"/> are atomic (Interlocked);
/// <see cref="Mapping"/> and <see cref="Index"/> change only under the frame lock or while the frame is
/// exclusively owned (just allocated, being freed). For a free (buddy) frame <see cref="Index"/> holds the
/// free-list links, protected by the buddy lock.
/// </remarks>
[StructLayout(LayoutKind.Sequential)]
public struct FrameInfo
{
    /// <summary>Owner of the page: an inode, an anon owner, a page map; null when free. (kernel: page->mapping)</summary>
    public object? Mapping;
    /// <summary>Page offset in the owner (file page index, or VA &gt;&gt; 12 for anonymous pages). (kernel: page->index)</summary>
    public ulong Index;
    /// <summary>References (kernel: _refcount). Atomic. Kept on the head frame of a compound page.</summary>
    public int RefCount;
    /// <summary>Number of page-table entries mapping the frame (kernel: _mapcount + 1). Atomic.</summary>
    public int MapCount;
    /// <summary><see cref="FrameFlags"/> in the low 24 bits; compound order in bits 24..31. Atomic.</summary>
    public uint Flags;
    /// <summary>Bumped each time the frame is freed, so a stale PFN holder can be caught (use after free).</summary>
    public uint Generation;

    /// <summary>Order of the compound page this frame belongs to (0 for a base page).</summary>
    public readonly int Order => (int)(Flags >> 24);

    /// <summary>True when <paramref name="flag"/> is set.</summary>
    public readonly bool Has(FrameFlags flag) => (Flags & (uint)flag) != 0;
}
