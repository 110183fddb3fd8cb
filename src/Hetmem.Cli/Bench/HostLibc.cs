using System.Runtime.InteropServices;

namespace Hetmem.Cli.Bench;

/// <summary>The host libc calls <c>hetmem bench</c> times (x86-64 Linux values).</summary>
internal static unsafe partial class HostLibc
{
    public const int ProtRead = 1;
    public const int ProtWrite = 2;
    public const int MapPrivate = 2;
    public const int MapAnonymous = 0x20;
    public const int MadvNoHugePage = 15;
    public const int MadvPopulateRead = 22;
    public const int MadvPopulateWrite = 23;
    public const int EInval = 22;
    public static readonly nint MapFailed = -1;

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    public static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(nint addr, nuint length);

    [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
    public static partial int Mprotect(nint addr, nuint length, int prot);

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    public static partial int Madvise(nint addr, nuint length, int advice);

    [LibraryImport("libc", EntryPoint = "memcpy")]
    public static partial nint Memcpy(void* dst, void* src, nuint length);

    public static int LastError() => Marshal.GetLastPInvokeError();
}
