namespace Hetmem;

/// <summary>Linux errno values (x86-64 numbering). Kernel-internal APIs return these; 0 is success.</summary>
public enum Errno
{
    /// <summary>Success.</summary>
    Ok = 0,
    /// <summary>Operation not permitted.</summary>
    EPERM = 1,
    /// <summary>No such file or directory / no such entry.</summary>
    ENOENT = 2,
    /// <summary>Interrupted.</summary>
    EINTR = 4,
    /// <summary>I/O error.</summary>
    EIO = 5,
    /// <summary>Bad file descriptor or open mode.</summary>
    EBADF = 9,
    /// <summary>Try again.</summary>
    EAGAIN = 11,
    /// <summary>Out of memory.</summary>
    ENOMEM = 12,
    /// <summary>Permission denied.</summary>
    EACCES = 13,
    /// <summary>Bad address.</summary>
    EFAULT = 14,
    /// <summary>Device or resource busy.</summary>
    EBUSY = 16,
    /// <summary>Already exists.</summary>
    EEXIST = 17,
    /// <summary>No such device.</summary>
    ENODEV = 19,
    /// <summary>Invalid argument.</summary>
    EINVAL = 22,
    /// <summary>File too large.</summary>
    EFBIG = 27,
    /// <summary>No space left on device.</summary>
    ENOSPC = 28,
    /// <summary>Result out of range / value too large.</summary>
    EOVERFLOW = 75,
    /// <summary>Operation not supported.</summary>
    EOPNOTSUPP = 95,
    /// <summary>Connection reset.</summary>
    ECONNRESET = 104,
    /// <summary>Timed out.</summary>
    ETIMEDOUT = 110,
}

/// <summary>
/// Thrown by system-call-shaped entry points (Mmap, Munmap, Mprotect, file operations, device commands)
/// when the kernel would return a negative errno. A call that throws has changed nothing.
/// </summary>
public class MmException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="errno">The errno the kernel would return.</param>
    /// <param name="message">What was wrong, naming the address and the rule.</param>
    public MmException(Errno errno, string message) : base($"{errno}: {message}") => Errno = errno;

    /// <summary>The errno the kernel would return.</summary>
    public Errno Errno { get; }

    /// <summary>Throws an <see cref="MmException"/>; kept out of line so callers stay small.</summary>
    /// <exception cref="MmException">Always.</exception>
    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    public static void Throw(Errno errno, string message) => throw new MmException(errno, message);

    /// <summary>Throws when <paramref name="errno"/> is not <see cref="Errno.Ok"/>.</summary>
    /// <exception cref="MmException">When <paramref name="errno"/> is an error.</exception>
    public static void ThrowIfError(Errno errno, string what)
    {
        if (errno != Errno.Ok)
        {
            Throw(errno, what);
        }
    }
}

/// <summary>The si_code of a SIGSEGV.</summary>
public enum SegvCode
{
    /// <summary>Address not mapped (SEGV_MAPERR).</summary>
    MapErr = 1,
    /// <summary>Invalid permissions for mapped object (SEGV_ACCERR).</summary>
    AccErr = 2,
}

/// <summary>A CPU access the kernel would answer with SIGSEGV.</summary>
public sealed class SegmentationFault : Exception
{
    /// <summary>Creates the fault.</summary>
    public SegmentationFault(ulong address, SegvCode code, string message)
        : base($"SIGSEGV ({(code == SegvCode.MapErr ? "SEGV_MAPERR" : "SEGV_ACCERR")}) at 0x{address:x}: {message}")
    {
        Address = address;
        Code = code;
    }

    /// <summary>The faulting address.</summary>
    public ulong Address { get; }

    /// <summary>MAPERR or ACCERR.</summary>
    public SegvCode Code { get; }
}

/// <summary>A CPU access the kernel would answer with SIGBUS (beyond end of file, truncated DAX, poison, OOM of hugetlb).</summary>
public sealed class BusError : Exception
{
    /// <summary>Creates the fault.</summary>
    public BusError(ulong address, string message) : base($"SIGBUS at 0x{address:x}: {message}") => Address = address;

    /// <summary>The faulting address.</summary>
    public ulong Address { get; }
}
