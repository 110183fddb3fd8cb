using Hetmem.Physical;
using Microsoft.Win32.SafeHandles;

namespace Hetmem.Storage;

/// <summary>Host-file I/O helpers shared by the file systems: full reads, errno mapping, hole punching.</summary>
internal static class HostIo
{
    private const int FallocPunchHole = 0x02;   // FALLOC_FL_PUNCH_HOLE
    private const int FallocKeepSize = 0x01;    // FALLOC_FL_KEEP_SIZE

    /// <summary>The errno of a host I/O exception (.NET carries the raw errno in HResult on Unix).</summary>
    public static Errno ToErrno(Exception ex) => ex switch
    {
        FileNotFoundException or DirectoryNotFoundException => Errno.ENOENT,
        UnauthorizedAccessException => Errno.EACCES,
        IOException io when io.HResult == (int)Errno.ENOSPC => Errno.ENOSPC,
        IOException io when io.HResult == (int)Errno.EFBIG => Errno.EFBIG,
        IOException io when io.HResult == (int)Errno.EEXIST => Errno.EEXIST,
        _ => Errno.EIO,
    };

    /// <summary>Reads up to <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>, zero-filling past the host end of file.</summary>
    /// <returns>Ok or the host errno.</returns>
    public static Errno ReadFull(SafeFileHandle file, Span<byte> buffer, long offset)
    {
        try
        {
            int done = 0;
            while (done < buffer.Length)
            {
                int n = RandomAccess.Read(file, buffer[done..], offset + done);
                if (n == 0)
                {
                    buffer[done..].Clear();
                    break;
                }
                done += n;
            }
            return Errno.Ok;
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or UnauthorizedAccessException)
        {
            return ex is IOException ? ToErrno(ex) : Errno.EIO;
        }
    }

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>.</summary>
    /// <returns>Ok or the host errno.</returns>
    public static Errno WriteFull(SafeFileHandle file, ReadOnlySpan<byte> data, long offset)
    {
        try
        {
            RandomAccess.Write(file, data, offset);
            return Errno.Ok;
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or UnauthorizedAccessException)
        {
            return ex is IOException ? ToErrno(ex) : Errno.EIO;
        }
    }

    /// <summary>
    /// Deallocates [<paramref name="offset"/>, +<paramref name="length"/>) of a host file, keeping its size, so the
    /// range reads as zeroes (fallocate PUNCH_HOLE | KEEP_SIZE); falls back to writing zeroes when the host file
    /// system cannot punch.
    /// </summary>
    /// <returns>Ok or the host errno.</returns>
    public static Errno ZeroRange(SafeFileHandle file, long offset, long length)
    {
        if (length <= 0)
        {
            return Errno.Ok;
        }
        bool added = false;
        try
        {
            file.DangerousAddRef(ref added);
            int fd = (int)file.DangerousGetHandle();
            if (Libc.Fallocate(fd, FallocPunchHole | FallocKeepSize, offset, length) == 0)
            {
                return Errno.Ok;
            }
        }
        finally
        {
            if (added)
            {
                file.DangerousRelease();
            }
        }
        Span<byte> zeroes = stackalloc byte[Page.Size];
        zeroes.Clear();
        for (long done = 0; done < length; done += Page.Size)
        {
            Errno e = WriteFull(file, zeroes[..(int)Math.Min(Page.Size, length - done)], offset + done);
            if (e != Errno.Ok)
            {
                return e;
            }
        }
        return Errno.Ok;
    }
}
