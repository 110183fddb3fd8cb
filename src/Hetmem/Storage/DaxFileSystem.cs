using System.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Storage;

/// <summary>
/// A file system on a <see cref="DaxNamespace"/> whose files are mapped straight onto namespace blocks, never
/// through the page cache (kernel: ext4 or xfs mounted -o dax on a pmem namespace, with fs/dax.c). Its superblock
/// and file table live in the namespace's first 2 MiB, so unmounting, closing the namespace, reopening the host
/// file (even from another <see cref="PhysicalMemory"/> or process) and mounting again shows the same files with
/// the same bytes.
/// </summary>
/// <remarks>
/// <para><b>On-media layout</b> (little-endian, 4 KiB blocks; see <c>DaxFileSystem.Layout.cs</c>): block 0 is the
/// superblock (magic "HETMDAX1", version, block size, block count, inode table start and count, first data block,
/// checksum); blocks 1..511 are the inode table, one block per file: state (free, linked, orphan), name, size,
/// extent count, the first 158 extents (file block, namespace block, length) and a chain of overflow blocks for
/// more; data blocks start at block 512 (2 MiB). There is no journal: metadata is written in place and made durable
/// by <see cref="Inode.Fsync"/>, <see cref="Sync"/> and unmount; an unlinked file that is still open is an orphan
/// on media and is freed at the next mount if it was never closed (kernel: the ext4 orphan list).</para>
/// <para><b>Allocation.</b> Blocks are allocated in extents aligned like the file offsets they back, so the fault
/// handler can map them with PMD (2 MiB) or PUD (1 GiB) entries: a request covering a 1 GiB-aligned GiB of the file
/// gets a 1 GiB-aligned extent when one is free, a 2 MiB-aligned piece gets a 2 MiB-aligned extent, smaller pieces
/// are placed at the same offset within a 2 MiB block (or right after the file's previous extent) so the file can
/// later grow into a PMD-mappable run; when aligned space runs out, any free blocks do. Every newly allocated block
/// is zeroed before the file can see it (a freed block's old bytes are never exposed); a large range is zeroed by
/// punching the host file (fallocate), which also returns its memory on tmpfs. ENOSPC when the namespace is full,
/// also when all 511 inodes are used.</para>
/// <para><b>Locking.</b> <c>_lock</c> protects the name table and is taken before any inode lock; <c>_allocLock</c>
/// is a leaf protecting the block allocator and the inode-slot map, taken by files under their extent lock (so
/// eviction never needs <c>_lock</c>). On-media inode entries are written only by their file under its extent
/// lock.</para>
/// </remarks>
public sealed unsafe partial class DaxFileSystem : IDisposable
{
    /// <summary>Largest file size (kernel: ext4's s_maxbytes for 4 KiB blocks, 16 TiB); files may be sparse beyond the namespace.</summary>
    public const ulong MaxFileSize = 1UL << 44;

    private const ulong PmdBlocks = 1UL << Page.PmdOrder;
    private const ulong PudBlocks = 1UL << Page.PudOrder;
    private const ulong NoGoal = ulong.MaxValue;
    private const int ZeroByPunchBlocks = 256; // 1 MiB: above this, zero by punching the host file

    private readonly object _lock = new();                                          // name table
    private readonly Dictionary<string, DaxFile> _files = new(StringComparer.Ordinal); // guarded by _lock
    private readonly object _allocLock = new();                                     // leaf: allocator + inode slots
    private readonly DaxBlockAllocator _allocator;                                  // guarded by _allocLock
    private readonly bool[] _slotUsed;                                              // guarded by _allocLock
    private readonly int _hostFd;                                                   // immutable: fd for hole punching, or -1
    private bool _disposed;                                                         // guarded by _lock

    private DaxFileSystem(DaxNamespace ns, ulong totalBlocks, int inodeCount, ulong dataStart)
    {
        Namespace = ns;
        TotalBlocks = totalBlocks;
        InodeCount = inodeCount;
        DataStartBlock = dataStart;
        _allocator = new DaxBlockAllocator(dataStart, totalBlocks);
        _slotUsed = new bool[inodeCount];
        _hostFd = Libc.Open(ns.Path, Libc.ORdWr, 0);
    }

    /// <summary>The namespace the file system lives on.</summary>
    public DaxNamespace Namespace { get; }

    /// <summary>The physical memory the namespace's frames are registered with.</summary>
    public PhysicalMemory Memory => Namespace.Memory;

    /// <summary>Blocks the file system spans (metadata included).</summary>
    public ulong TotalBlocks { get; }

    /// <summary>First data block (2 MiB aligned).</summary>
    public ulong DataStartBlock { get; }

    /// <summary>Number of inodes (the most files the file system holds).</summary>
    public int InodeCount { get; }

    /// <summary>Free data blocks (kernel: statfs f_bfree).</summary>
    public ulong FreeBlocks
    {
        get
        {
            lock (_allocLock)
            {
                return _allocator.FreeBlocks;
            }
        }
    }

    /// <summary>
    /// Creates an empty file system on <paramref name="ns"/>, destroying whatever it held, and mounts it (kernel:
    /// mkfs.ext4 + mount -o dax).
    /// </summary>
    /// <exception cref="MmException">EINVAL when the namespace is smaller than 4 MiB.</exception>
    public static DaxFileSystem Format(DaxNamespace ns)
    {
        ArgumentNullException.ThrowIfNull(ns);
        if (ns.Blocks < 2 * PmdBlocks)
        {
            MmException.Throw(Errno.EINVAL, $"DAX namespace {ns.Path} of {ns.Bytes} bytes is too small for a file system (4 MiB at least)");
        }
        var fs = new DaxFileSystem(ns, ns.Blocks, (int)PmdBlocks - 1, PmdBlocks);
        fs.FormatMedia();
        return fs;
    }

    /// <summary>
    /// Mounts the file system found on <paramref name="ns"/> (kernel: mount -o dax): reads the superblock and the
    /// file table, frees orphans, and rebuilds the free-space map.
    /// </summary>
    /// <exception cref="MmException">EINVAL when there is no valid Hetmem DAX file system on the namespace, or its
    /// metadata is inconsistent (bad magic, version, checksum, size, or overlapping extents).</exception>
    public static DaxFileSystem Mount(DaxNamespace ns)
    {
        ArgumentNullException.ThrowIfNull(ns);
        Superblock sb = ReadSuperblock(ns);
        var fs = new DaxFileSystem(ns, sb.TotalBlocks, sb.InodeCount, sb.DataStart);
        try
        {
            fs.LoadInodes();
        }
        catch
        {
            fs.CloseHost();
            throw;
        }
        return fs;
    }

    /// <summary>Creates an empty file and opens it for reading and writing (kernel: open O_CREAT | O_EXCL).</summary>
    /// <exception cref="MmException">EEXIST when the name exists; ENOSPC when every inode is used; EINVAL / ENOENT
    /// for a bad name; EIO after unmount.</exception>
    public FileHandle Create(string name)
    {
        FileNames.Validate(name);
        lock (_lock)
        {
            ThrowIfDisposed();
            if (_files.ContainsKey(name))
            {
                MmException.Throw(Errno.EEXIST, $"{name} already exists");
            }
            int slot = -1;
            lock (_allocLock)
            {
                for (int i = 0; i < _slotUsed.Length; i++)
                {
                    if (!_slotUsed[i])
                    {
                        _slotUsed[i] = true;
                        slot = i;
                        break;
                    }
                }
            }
            if (slot < 0)
            {
                MmException.Throw(Errno.ENOSPC, $"all {InodeCount} inodes of the DAX file system are in use");
            }
            var file = new DaxFile(this, slot, name, 0, [], [], linked: true);
            WriteInode(slot, InodeLinked, name, 0, [], []);
            _files.Add(name, file);
            return new FileHandle(file, FileAccess.ReadWrite);
        }
    }

    /// <summary>Opens an existing file.</summary>
    /// <exception cref="MmException">ENOENT when the name does not exist; EINVAL for a bad name or mode; EIO after unmount.</exception>
    public FileHandle Open(string name, FileAccess access = FileAccess.ReadWrite)
    {
        FileNames.Validate(name);
        lock (_lock)
        {
            ThrowIfDisposed();
            if (!_files.TryGetValue(name, out DaxFile? file))
            {
                MmException.Throw(Errno.ENOENT, $"{name} does not exist");
            }
            return new FileHandle(file, access);
        }
    }

    /// <summary>True when <paramref name="name"/> exists.</summary>
    public bool Exists(string name)
    {
        FileNames.Validate(name);
        lock (_lock)
        {
            return _files.ContainsKey(name);
        }
    }

    /// <summary>The names of all files (kernel: readdir), sorted.</summary>
    public IReadOnlyList<string> List()
    {
        lock (_lock)
        {
            return [.. _files.Keys.Order(StringComparer.Ordinal)];
        }
    }

    /// <summary>
    /// Removes a name (kernel: unlink). The file becomes an orphan on media; its blocks are freed when its last
    /// reference goes (after its mappings' transient page references drain).
    /// </summary>
    /// <exception cref="MmException">ENOENT when the name does not exist; EIO after unmount.</exception>
    public void Unlink(string name)
    {
        FileNames.Validate(name);
        DaxFile? file;
        lock (_lock)
        {
            ThrowIfDisposed();
            if (!_files.Remove(name, out file))
            {
                MmException.Throw(Errno.ENOENT, $"{name} does not exist");
            }
        }
        file.MarkOrphan();
        file.DropLink();
    }

    /// <summary>Writes the whole namespace back to stable storage (kernel: syncfs).</summary>
    /// <exception cref="MmException">The host errno when msync fails.</exception>
    public void Sync() => Namespace.Flush(0, TotalBlocks);

    /// <summary>
    /// Unmounts (kernel: umount, which syncs first): evicts every in-memory inode (an open orphan is freed now),
    /// writes the namespace back and closes the hole-punching descriptor. The namespace stays open; the caller
    /// disposes it.
    /// </summary>
    public void Dispose()
    {
        DaxFile[] files;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            files = [.. _files.Values, .. _orphans.Keys];
            _files.Clear();
        }
        foreach (DaxFile f in files)
        {
            f.Evict();
        }
        Namespace.Flush(0, TotalBlocks);
        CloseHost();
    }

    /// <summary>Allocates blocks for file blocks [<paramref name="fileBlock"/>, +<paramref name="count"/>) by the alignment policy, appending (namespace block, length) pieces; all or nothing.</summary>
    /// <returns>Ok or ENOSPC (then nothing was allocated).</returns>
    internal Errno AllocateExtents(ulong fileBlock, ulong count, ulong goal, List<(ulong Block, ulong Length)> pieces)
    {
        lock (_allocLock)
        {
            int first = pieces.Count;
            ulong l = fileBlock;
            ulong n = count;
            while (n > 0)
            {
                ulong start;
                ulong got = 0;
                if (l % PudBlocks == 0 && n >= PudBlocks && _allocator.TryAllocateAligned(PudBlocks, PudBlocks, goal, out start))
                {
                    got = PudBlocks;
                }
                else if (l % PmdBlocks == 0 && n >= PmdBlocks && _allocator.TryAllocateAligned(PmdBlocks, PmdBlocks, goal, out start))
                {
                    got = PmdBlocks;
                }
                else
                {
                    ulong m = Math.Min(n, PmdBlocks - l % PmdBlocks);
                    ulong colour = l % PmdBlocks;
                    start = goal;
                    if (goal != NoGoal && goal % PmdBlocks == colour)
                    {
                        got = _allocator.TryAllocateAt(goal, m);
                    }
                    if (got == 0 && _allocator.TryAllocateColoured(m, colour, PmdBlocks, out start))
                    {
                        got = m;
                    }
                    if (got == 0)
                    {
                        got = _allocator.AllocateAny(m, out start);
                    }
                }
                if (got == 0)
                {
                    for (int i = first; i < pieces.Count; i++)
                    {
                        _allocator.Free(pieces[i].Block, pieces[i].Length);
                    }
                    pieces.RemoveRange(first, pieces.Count - first);
                    return Errno.ENOSPC;
                }
                pieces.Add((start, got));
                l += got;
                n -= got;
                goal = start + got;
            }
            return Errno.Ok;
        }
    }

    /// <summary>Allocates one metadata block (an extent-list overflow block), zeroed.</summary>
    internal bool TryAllocateMetaBlock(out ulong block)
    {
        lock (_allocLock)
        {
            if (_allocator.AllocateAny(1, out block) == 0)
            {
                return false;
            }
        }
        ZeroBlocks(block, 1);
        return true;
    }

    /// <summary>Returns blocks to the free map (kernel: ext4_free_blocks). The caller made sure no reference to them is left.</summary>
    internal void FreeBlocksRange(ulong block, ulong count)
    {
        lock (_allocLock)
        {
            _allocator.Free(block, count);
        }
    }

    /// <summary>Releases an inode slot whose on-media entry was cleared.</summary>
    internal void ReleaseSlot(int slot)
    {
        lock (_allocLock)
        {
            Debug.Assert(_slotUsed[slot]);
            _slotUsed[slot] = false;
        }
    }

    /// <summary>Zeroes namespace blocks (kernel: dax_zero_page_range / blkdev_issue_zeroout): large ranges by punching the host file.</summary>
    internal void ZeroBlocks(ulong block, ulong count)
    {
        if (count >= ZeroByPunchBlocks && _hostFd >= 0
            && Libc.Fallocate(_hostFd, 0x03 /* PUNCH_HOLE | KEEP_SIZE */, (long)(block << Page.Shift), (long)(count << Page.Shift)) == 0)
        {
            return;
        }
        Memory.ZeroFrames(Namespace.FirstPfn + block, count);
    }

    /// <summary>The frame metadata of namespace block <paramref name="block"/>.</summary>
    internal ref FrameInfo FrameOf(ulong block) => ref Namespace.PageMap.Frames[block];

    /// <summary>Host address of namespace block <paramref name="block"/>.</summary>
    internal byte* BlockAddress(ulong block) => Namespace.PageMap.BaseAddress + (block << Page.Shift);

    /// <summary>Tracks an unlinked file that is still open, so unmount evicts (frees) it.</summary>
    internal void AddOrphan(DaxFile file) => _orphans.TryAdd(file, 0);

    /// <summary>Forgets an evicted orphan.</summary>
    internal void RemoveOrphan(DaxFile file) => _orphans.TryRemove(file, out _);

    private void ThrowIfDisposed()
    {
        if (_disposed)
        {
            MmException.Throw(Errno.EIO, $"the DAX file system on {Namespace.Path} is unmounted");
        }
    }

    private void CloseHost()
    {
        if (_hostFd >= 0)
        {
            Libc.Close(_hostFd);
        }
    }
}
