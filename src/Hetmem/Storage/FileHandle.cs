namespace Hetmem.Storage;

/// <summary>
/// An open file: an <see cref="Inode"/> reference plus the access mode it was opened with (kernel: struct file with
/// f_mode). The mode checks of the system calls live here; the data path is the inode's.
/// </summary>
/// <remarks>
/// Locking: <c>_closed</c> is set once by <see cref="Dispose"/> (Interlocked); everything else is immutable. A
/// handle may be used from several threads; using it concurrently with <see cref="Dispose"/> is the caller's race,
/// as with close(2).
/// </remarks>
public sealed class FileHandle : IDisposable
{
    private int _closed; // Interlocked: 1 once closed

    /// <summary>Opens <paramref name="inode"/> with <paramref name="access"/> and takes a reference on it (kernel: dentry_open).</summary>
    /// <exception cref="MmException">EINVAL for an unknown access mode; EIO when the inode was evicted.</exception>
    public FileHandle(Inode inode, FileAccess access)
    {
        ArgumentNullException.ThrowIfNull(inode);
        if (access is not (FileAccess.Read or FileAccess.Write or FileAccess.ReadWrite))
        {
            MmException.Throw(Errno.EINVAL, $"unknown access mode {access}");
        }
        inode.Hold();
        Inode = inode;
        Access = access;
    }

    /// <summary>The open inode.</summary>
    public Inode Inode { get; }

    /// <summary>The access mode (kernel: FMODE_READ / FMODE_WRITE).</summary>
    public FileAccess Access { get; }

    /// <summary>True when opened for reading.</summary>
    public bool CanRead => (Access & FileAccess.Read) != 0;

    /// <summary>True when opened for writing.</summary>
    public bool CanWrite => (Access & FileAccess.Write) != 0;

    /// <summary>True after <see cref="Dispose"/>.</summary>
    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    /// <summary>The current size (kernel: fstat st_size).</summary>
    /// <exception cref="MmException">EBADF when closed.</exception>
    public ulong Size
    {
        get
        {
            ThrowIfClosed();
            return Inode.Size;
        }
    }

    /// <summary>pread(2): see <see cref="Inode.Read"/>.</summary>
    /// <exception cref="MmException">EBADF when closed or not open for reading; otherwise as <see cref="Inode.Read"/>.</exception>
    public int Read(ulong offset, Span<byte> buffer)
    {
        ThrowIfClosed();
        if (!CanRead)
        {
            MmException.Throw(Errno.EBADF, "read from a file not open for reading");
        }
        return Inode.Read(offset, buffer);
    }

    /// <summary>pwrite(2): see <see cref="Inode.Write"/>.</summary>
    /// <exception cref="MmException">EBADF when closed or not open for writing; otherwise as <see cref="Inode.Write"/>.</exception>
    public int Write(ulong offset, ReadOnlySpan<byte> data)
    {
        ThrowIfClosed();
        if (!CanWrite)
        {
            MmException.Throw(Errno.EBADF, "write to a file not open for writing");
        }
        return Inode.Write(offset, data);
    }

    /// <summary>ftruncate(2): see <see cref="Inode.Truncate"/>.</summary>
    /// <exception cref="MmException">EBADF when closed; EINVAL when not open for writing (as do_sys_ftruncate);
    /// otherwise as <see cref="Inode.Truncate"/>.</exception>
    public void Truncate(ulong size)
    {
        ThrowIfClosed();
        if (!CanWrite)
        {
            MmException.Throw(Errno.EINVAL, "ftruncate of a file not open for writing");
        }
        Inode.Truncate(size);
    }

    /// <summary>fallocate(2) with FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: see <see cref="Inode.PunchHole"/>.</summary>
    /// <exception cref="MmException">EBADF when closed or not open for writing (as vfs_fallocate); otherwise as
    /// <see cref="Inode.PunchHole"/>.</exception>
    public void PunchHole(ulong offset, ulong length)
    {
        ThrowIfClosed();
        if (!CanWrite)
        {
            MmException.Throw(Errno.EBADF, "fallocate on a file not open for writing");
        }
        Inode.PunchHole(offset, length);
    }

    /// <summary>fsync(2): see <see cref="Inode.Fsync"/>.</summary>
    /// <exception cref="MmException">EBADF when closed; otherwise as <see cref="Inode.Fsync"/>.</exception>
    public void Fsync()
    {
        ThrowIfClosed();
        Inode.Fsync();
    }

    /// <summary>dup(2): another handle on the same inode with the same mode.</summary>
    /// <exception cref="MmException">EBADF when closed; EIO when the inode was evicted.</exception>
    public FileHandle Duplicate()
    {
        ThrowIfClosed();
        return new FileHandle(Inode, Access);
    }

    /// <summary>close(2): drops the inode reference; the last one of an unlinked file evicts it (kernel: fput → iput).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _closed, 1) == 0)
        {
            Inode.Release();
        }
    }

    private void ThrowIfClosed()
    {
        if (Volatile.Read(ref _closed) != 0)
        {
            MmException.Throw(Errno.EBADF, "operation on a closed file handle");
        }
    }
}
