using Hetmem.Physical;
using Microsoft.Win32.SafeHandles;

namespace Hetmem.Storage;

/// <summary>
/// A page-cache file system over a host directory: every file is a host file of the same name whose pages are
/// cached in RAM frames of a <see cref="PhysicalMemory"/> (kernel: a disk file system such as ext4 with the page
/// cache in front). Files that already exist in the directory can be opened.
/// </summary>
/// <remarks>
/// <para><b>Inode cache.</b> An opened file's <see cref="PageCacheFile"/> stays in the file system's table (with its
/// cached pages) until it is unlinked and closed or the file system is disposed, so every open of a name shares
/// one page cache, as in the kernel's inode cache.</para>
/// <para><b>Locking.</b> <c>_lock</c> (kernel: the directory's i_rwsem) protects the name table and is taken before
/// any inode lock; inode eviction runs outside it. An inode leaves the table (unlink, unmount) before it can be
/// evicted, so eviction never needs the table lock.</para>
/// </remarks>
public sealed class PageCacheFileSystem : IDisposable
{
    /// <summary>Largest file size (kernel: ext4's s_maxbytes for 4 KiB blocks, 16 TiB).</summary>
    public const ulong MaxFileSize = 1UL << 44;

    private readonly object _lock = new();                                                // name table
    private readonly Dictionary<string, PageCacheFile> _inodes = new(StringComparer.Ordinal); // guarded by _lock
    private bool _disposed;                                                               // guarded by _lock

    /// <summary>Mounts the host directory <paramref name="root"/> (kernel: mount).</summary>
    /// <exception cref="MmException">ENOENT when the directory does not exist.</exception>
    public PageCacheFileSystem(PhysicalMemory memory, string root)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(root);
        if (!Directory.Exists(root))
        {
            MmException.Throw(Errno.ENOENT, $"page-cache file system root {root} does not exist");
        }
        Memory = memory;
        Root = Path.GetFullPath(root);
    }

    /// <summary>The physical memory the page cache uses.</summary>
    public PhysicalMemory Memory { get; }

    /// <summary>The host directory.</summary>
    public string Root { get; }

    /// <summary>Pages cached by all files of the file system.</summary>
    public int CachedPages
    {
        get
        {
            lock (_lock)
            {
                return _inodes.Values.Sum(f => f.CachedPages);
            }
        }
    }

    /// <summary>Creates a new empty file and opens it for reading and writing (kernel: open with O_CREAT | O_EXCL | O_RDWR).</summary>
    /// <exception cref="MmException">EEXIST when the name exists; EINVAL / ENOENT for a bad name; EIO after
    /// <see cref="Dispose"/>; the host errno when the host file cannot be created.</exception>
    public FileHandle Create(string name)
    {
        FileNames.Validate(name);
        lock (_lock)
        {
            ThrowIfDisposed();
            string path = Path.Combine(Root, name);
            if (_inodes.ContainsKey(name) || File.Exists(path) || Directory.Exists(path))
            {
                MmException.Throw(Errno.EEXIST, $"{name} already exists");
            }
            SafeFileHandle host = OpenHost(path, FileMode.CreateNew);
            var file = new PageCacheFile(this, name, path, host, 0);
            _inodes.Add(name, file);
            return new FileHandle(file, FileAccess.ReadWrite);
        }
    }

    /// <summary>Opens an existing file (kernel: open without O_CREAT); the size is the host file's.</summary>
    /// <exception cref="MmException">ENOENT when the name does not exist; EINVAL for a bad name or mode; EIO after
    /// <see cref="Dispose"/>; the host errno when the host file cannot be opened.</exception>
    public FileHandle Open(string name, FileAccess access = FileAccess.ReadWrite)
    {
        FileNames.Validate(name);
        lock (_lock)
        {
            ThrowIfDisposed();
            if (!_inodes.TryGetValue(name, out PageCacheFile? file))
            {
                string path = Path.Combine(Root, name);
                if (!File.Exists(path))
                {
                    MmException.Throw(Errno.ENOENT, $"{name} does not exist");
                }
                SafeFileHandle host = OpenHost(path, FileMode.Open);
                ulong size = (ulong)RandomAccess.GetLength(host);
                if (size > MaxFileSize)
                {
                    host.Dispose();
                    MmException.Throw(Errno.EFBIG, $"{name} is larger than the maximum file size");
                }
                file = new PageCacheFile(this, name, path, host, size);
                _inodes.Add(name, file);
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
            return _inodes.ContainsKey(name) || File.Exists(Path.Combine(Root, name));
        }
    }

    /// <summary>
    /// Removes a name (kernel: unlink). The host file is deleted at once; an open file keeps its data and pages
    /// until its last handle is closed, then it is evicted.
    /// </summary>
    /// <exception cref="MmException">ENOENT when the name does not exist; EINVAL for a bad name; EIO after <see cref="Dispose"/>.</exception>
    public void Unlink(string name)
    {
        FileNames.Validate(name);
        PageCacheFile? file;
        lock (_lock)
        {
            ThrowIfDisposed();
            string path = Path.Combine(Root, name);
            _inodes.Remove(name, out file);
            if (file is null && !File.Exists(path))
            {
                MmException.Throw(Errno.ENOENT, $"{name} does not exist");
            }
            try
            {
                File.Delete(path);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                if (file is not null)
                {
                    _inodes.Add(name, file);
                }
                MmException.Throw(HostIo.ToErrno(ex), $"unlink {name}: {ex.Message}");
            }
        }
        file?.DropLink();
    }

    /// <summary>
    /// Reclaims the page-cache page <paramref name="pfn"/> if it belongs to a file of this file system (kernel:
    /// shrink_folio_list for a file folio); see <see cref="Inode.TryReclaimPage"/>.
    /// </summary>
    /// <returns>As <see cref="Inode.TryReclaimPage"/>; ENOENT when the page is not one of this file system's.</returns>
    public Errno TryReclaimPage(ulong pfn)
    {
        if (!Memory.IsRam(pfn) || Volatile.Read(ref Memory.Frame(pfn).Mapping) is not PageCacheFile file || file.FileSystem != this)
        {
            return Errno.ENOENT;
        }
        return file.TryReclaimPage(pfn);
    }

    /// <summary>Writes back every file (kernel: syncfs).</summary>
    /// <exception cref="MmException">EIO when a writeback failed.</exception>
    public void Sync()
    {
        PageCacheFile[] files;
        lock (_lock)
        {
            files = [.. _inodes.Values];
        }
        foreach (PageCacheFile f in files)
        {
            if (!f.IsEvicted)
            {
                f.Fsync();
            }
        }
    }

    /// <summary>Unmounts: writes back every dirty page, then evicts every inode (open handles then fail with EIO).</summary>
    public void Dispose()
    {
        PageCacheFile[] files;
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            files = [.. _inodes.Values];
            _inodes.Clear();
        }
        foreach (PageCacheFile f in files)
        {
            f.Writeback(0, ulong.MaxValue);
            f.Evict();
        }
    }

    private static SafeFileHandle OpenHost(string path, FileMode mode)
    {
        try
        {
            return File.OpenHandle(path, mode, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            MmException.Throw(mode == FileMode.CreateNew && File.Exists(path) ? Errno.EEXIST : HostIo.ToErrno(ex), $"opening host file {path}: {ex.Message}");
            return null;
        }
    }

    private void ThrowIfDisposed()
    {
        if (_disposed)
        {
            MmException.Throw(Errno.EIO, $"the page-cache file system at {Root} is unmounted");
        }
    }
}
