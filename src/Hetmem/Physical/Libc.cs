using System.Runtime.InteropServices;

namespace Hetmem.Physical;

/// <summary>P/Invoke declarations of the host's libc used for DAX namespaces and host-kernel comparisons (x86-64 values).</summary>
internal static unsafe partial class Libc
{
    public const int ORdOnly = 0;
    public const int ORdWr = 2;
    public const int OCreat = 0x40;
    public const int OTrunc = 0x200;
    public const int ProtNone = 0;
    public const int ProtRead = 1;
    public const int ProtWrite = 2;
    public const int MapShared = 1;
    public const int MapPrivate = 2;
    public const int MapAnonymous = 0x20;
    public const int MsSync = 4;
    public const int MadvDontneed = 4;
    public const int MadvPopulateRead = 22;
    public const int MadvPopulateWrite = 23;
    public static readonly nint MapFailed = -1;

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int Ftruncate(int fd, long length);

    [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    public static partial int Fallocate(int fd, int mode, long offset, long length);

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    public static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(nint addr, nuint length);

    [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
    public static partial int Mprotect(nint addr, nuint length, int prot);

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    public static partial int Madvise(nint addr, nuint length, int advice);

    [LibraryImport("libc", EntryPoint = "msync", SetLastError = true)]
    public static partial int Msync(nint addr, nuint length, int flags);

    public static Errno LastErrno() => (Errno)Marshal.GetLastPInvokeError();
}
