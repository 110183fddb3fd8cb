using System.Diagnostics;
using Hetmem.Physical;
using Microsoft.Win32.SafeHandles;

namespace Hetmem.Storage;

/// <summary>
/// A regular file of a <see cref="PageCacheFileSystem"/>: a host file whose pages are cached in RAM frames (kernel:
/// an ext4/xfs regular file with its address_space). Pages are read from the host file on first use and written
/// back by <see cref="PageCacheInode.Writeback"/>, <see cref="Inode.Fsync"/> and reclaim; the size is the host
/// file's size, which size changes update at once.
/// </summary>
/// <remarks>Locking: see <see cref="Inode"/> and <see cref="PageCacheInode"/>. <c>_host</c> is closed only at
/// eviction, under the inode lock and <see cref="Inode.InvalidateLock"/> for write, so every I/O path (which holds
/// one of them for read or the inode lock) sees it open.</remarks>
public sealed class PageCacheFile : PageCacheInode
{
    private readonly SafeFileHandle _host;   // immutable; disposed at eviction

    internal PageCacheFile(PageCacheFileSystem fileSystem, string name, string hostPath, SafeFileHandle host, ulong size)
        : base(fileSystem.Memory, size, PageCacheFileSystem.MaxFileSize, linked: true, references: 0)
    {
        FileSystem = fileSystem;
        Name = name;
        HostPath = hostPath;
        _host = host;
    }

    /// <inheritdoc/>
    public override MappableKind Kind => MappableKind.PageCache;

    /// <summary>The file system the file belongs to.</summary>
    public PageCacheFileSystem FileSystem { get; }

    /// <summary>The name the file was created or opened under.</summary>
    public string Name { get; }

    /// <summary>The host file backing it.</summary>
    public string HostPath { get; }

    /// <inheritdoc/>
    private protected override bool HasWriteback => true;

    /// <inheritdoc/>
    private protected override Errno FillPage(ulong pgoff, ulong pfn, ulong backing, bool needContent)
    {
        Span<byte> page = Memory.FrameSpan(pfn);
        if (!needContent)
        {
            page.Clear();
            return Errno.Ok;
        }
        return HostIo.ReadFull(_host, page, (long)(pgoff << Page.Shift));
    }

    /// <inheritdoc/>
    private protected override Errno WritePage(ulong pgoff, ulong pfn)
    {
        ulong start = pgoff << Page.Shift;
        ulong size = Size;
        if (start >= size)
        {
            return Errno.Ok;
        }
        int n = (int)Math.Min(Page.Size, size - start);
        return HostIo.WriteFull(_host, Memory.FrameSpan(pfn)[..n], (long)start);
    }

    /// <inheritdoc/>
    private protected override void ExtendBacking(ulong size) => SetHostLength(size);

    /// <inheritdoc/>
    private protected override void TrimBacking(ulong size) => SetHostLength(size);

    /// <inheritdoc/>
    private protected override void PunchBacking(ulong firstPgoff, ulong endPgoff)
    {
        ulong start = firstPgoff << Page.Shift;
        ulong end = Math.Min(endPgoff << Page.Shift, Page.AlignUp(Size, Page.Size));
        if (start < end)
        {
            MmException.ThrowIfError(HostIo.ZeroRange(_host, (long)start, (long)(end - start)), $"punching the host file {HostPath}");
        }
    }

    /// <inheritdoc/>
    private protected override Errno FsyncCore()
    {
        Errno e = Writeback(0, ulong.MaxValue);
        if (e != Errno.Ok)
        {
            return e;
        }
        try
        {
            RandomAccess.FlushToDisk(_host);
            return Errno.Ok;
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            return Errno.EIO;
        }
    }

    /// <inheritdoc/>
    private protected override void EvictLocked(List<ulong> release)
    {
        base.EvictLocked(release);
        _host.Dispose();
    }

    private void SetHostLength(ulong size)
    {
        Debug.Assert(size <= long.MaxValue);
        try
        {
            RandomAccess.SetLength(_host, (long)size);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            MmException.Throw(HostIo.ToErrno(ex), $"setting the length of {HostPath} to {size}: {ex.Message}");
        }
    }
}
