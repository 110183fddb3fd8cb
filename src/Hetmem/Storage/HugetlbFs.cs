using System.Collections.Concurrent;
using Hetmem.Physical;

namespace Hetmem.Storage;

/// <summary>
/// A hugetlbfs mount over one <see cref="HugetlbPool"/>: named files, plus the anonymous unlinked files behind
/// MAP_HUGETLB (kernel: fs/hugetlbfs with the pagesize= of the pool; hugetlb_file_setup for the internal mount).
/// </summary>
/// <remarks>
/// Locking: <c>_lock</c> protects the name table and is taken before any inode lock. Anonymous files are tracked in
/// a concurrent set (a leaf) so that <see cref="Dispose"/> can evict them too; an evicted file removes itself from
/// it, never from the name table (it left that before it could be evicted).
/// </remarks>
public sealed class HugetlbFs : IDisposable
{
    private readonly object _lock = new();                                              // name table
    private readonly Dictionary<string, HugetlbFile> _files = new(StringComparer.Ordinal); // guarded by _lock
    private readonly ConcurrentDictionary<HugetlbFile, byte> _anonymous = new();        // leaf; live anonymous files
    private bool _disposed;                                                             // guarded by _lock

    /// <summary>Mounts a hugetlbfs whose files take their pages from <paramref name="pool"/>.</summary>
    public HugetlbFs(HugetlbPool pool)
    {
        ArgumentNullException.ThrowIfNull(pool);
        Pool = pool;
    }

    /// <summary>The pool of the mount's page size.</summary>
    public HugetlbPool Pool { get; }

    /// <summary>Creates an empty file and opens it for reading and writing (kernel: open O_CREAT | O_EXCL).</summary>
    /// <exception cref="MmException">EEXIST when the name exists; EINVAL / ENOENT for a bad name; EIO after <see cref="Dispose"/>.</exception>
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
            var file = new HugetlbFile(this, name, 0, linked: true, references: 0);
            _files.Add(name, file);
            return new FileHandle(file, FileAccess.ReadWrite);
        }
    }

    /// <summary>Opens an existing file.</summary>
    /// <exception cref="MmException">ENOENT when the name does not exist; EINVAL for a bad name or mode; EIO after <see cref="Dispose"/>.</exception>
    public FileHandle Open(string name, FileAccess access = FileAccess.ReadWrite)
    {
        FileNames.Validate(name);
        lock (_lock)
        {
            ThrowIfDisposed();
            if (!_files.TryGetValue(name, out HugetlbFile? file))
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

    /// <summary>Removes a name (kernel: unlink); the file's pages return to the pool when its last reference goes.</summary>
    /// <exception cref="MmException">ENOENT when the name does not exist; EIO after <see cref="Dispose"/>.</exception>
    public void Unlink(string name)
    {
        FileNames.Validate(name);
        HugetlbFile? file;
        lock (_lock)
        {
            ThrowIfDisposed();
            if (!_files.Remove(name, out file))
            {
                MmException.Throw(Errno.ENOENT, $"{name} does not exist");
            }
        }
        file.DropLink();
    }

    /// <summary>
    /// Creates an unlinked file of <paramref name="size"/> bytes rounded up to the huge page size, for
    /// MAP_HUGETLB (kernel: hugetlb_file_setup). The caller owns one reference (<see cref="Inode.Release"/>).
    /// Unlike the kernel, nothing is reserved here: the mapper reserves with
    /// <see cref="HugetlbFile.ReserveRange"/> unless MAP_NORESERVE.
    /// </summary>
    /// <exception cref="MmException">EINVAL when the rounded size overflows; EIO after <see cref="Dispose"/>.</exception>
    public HugetlbFile CreateAnonymous(ulong size)
    {
        ulong rounded = Page.AlignUp(size, Pool.PageBytes);
        if (rounded < size || rounded > Page.AlignDown(long.MaxValue, Pool.PageBytes))
        {
            MmException.Throw(Errno.EINVAL, $"anonymous hugetlb size 0x{size:x} overflows");
        }
        lock (_lock)
        {
            ThrowIfDisposed();
        }
        var file = new HugetlbFile(this, null, rounded, linked: false, references: 1);
        _anonymous.TryAdd(file, 0);
        return file;
    }

    /// <summary>Unmounts: evicts every file, named and anonymous, so their pages return to the pool.</summary>
    public void Dispose()
    {
        HugetlbFile[] files;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            files = [.. _files.Values];
            _files.Clear();
        }
        foreach (HugetlbFile f in files)
        {
            f.Evict();
        }
        foreach (HugetlbFile f in _anonymous.Keys)
        {
            f.Evict();
        }
    }

    /// <summary>Forgets an evicted anonymous file.</summary>
    internal void Forget(HugetlbFile file) => _anonymous.TryRemove(file, out _);

    private void ThrowIfDisposed()
    {
        if (_disposed)
        {
            MmException.Throw(Errno.EIO, "the hugetlbfs is unmounted");
        }
    }
}
