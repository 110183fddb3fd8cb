using System.Globalization;
using System.Runtime.InteropServices;
using Hetmem.Mm;

namespace Hetmem.Tests.HostParity;

/// <summary>The host kernel's mm system calls through libc (x86-64 Linux), returning the errno (0 on success).</summary>
internal static unsafe partial class HostKernel
{
    public const int OReadOnly = 0, OWriteOnly = 1, OReadWrite = 2, OCreate = 0x40, OTruncate = 0x200;
    public static readonly nint MapFailed = -1;

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint SysMmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    private static partial int SysMunmap(nint addr, nuint length);

    [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
    private static partial int SysMprotect(nint addr, nuint length, int prot);

    [LibraryImport("libc", EntryPoint = "mremap", SetLastError = true)]
    private static partial nint SysMremap(nint oldAddress, nuint oldSize, nuint newSize, int flags, nint newAddress);

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    private static partial int SysMadvise(nint addr, nuint length, int advice);

    [LibraryImport("libc", EntryPoint = "msync", SetLastError = true)]
    private static partial int SysMsync(nint addr, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int Ftruncate(int fd, long length);

    private static Errno Last() => (Errno)Marshal.GetLastPInvokeError();

    public static Errno Mmap(ulong addr, ulong length, int prot, int flags, int fd, ulong offset, out ulong result)
    {
        nint r = SysMmap((nint)addr, (nuint)length, prot, flags, fd, (long)offset);
        result = (ulong)r;
        return r == MapFailed ? Last() : Errno.Ok;
    }

    public static Errno Munmap(ulong addr, ulong length) => SysMunmap((nint)addr, (nuint)length) == 0 ? Errno.Ok : Last();

    public static Errno Mprotect(ulong addr, ulong length, int prot) => SysMprotect((nint)addr, (nuint)length, prot) == 0 ? Errno.Ok : Last();

    public static Errno Mremap(ulong oldAddress, ulong oldLength, ulong newLength, int flags, ulong newAddress, out ulong result)
    {
        nint r = SysMremap((nint)oldAddress, (nuint)oldLength, (nuint)newLength, flags, (nint)newAddress);
        result = (ulong)r;
        return r == MapFailed ? Last() : Errno.Ok;
    }

    public static Errno Madvise(ulong addr, ulong length, int advice) => SysMadvise((nint)addr, (nuint)length, advice) == 0 ? Errno.Ok : Last();

    public static Errno Msync(ulong addr, ulong length, int flags) => SysMsync((nint)addr, (nuint)length, flags) == 0 ? Errno.Ok : Last();

    /// <summary>The VMAs of this process intersecting [start, end), from /proc/self/maps, as "start-end perms offset" lines.</summary>
    public static List<string> Layout(ulong start, ulong end)
    {
        var list = new List<string>();
        foreach (string line in File.ReadAllLines("/proc/self/maps"))
        {
            string[] parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            string[] range = parts[0].Split('-');
            ulong s = ulong.Parse(range[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            ulong e = ulong.Parse(range[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            if (s < end && start < e)
            {
                ulong offset = ulong.Parse(parts[2], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                list.Add(Line(s, e, parts[1], offset));
            }
        }
        return list;
    }

    /// <summary>Hetmem's VMAs intersecting [start, end) in the same format.</summary>
    public static List<string> Layout(AddressSpace mm, ulong start, ulong end)
        => [.. mm.Maps().Where(m => m.Start < end && start < m.End).Select(m => Line(m.Start, m.End, m.Perms, m.Offset))];

    private static string Line(ulong s, ulong e, string perms, ulong offset) => $"{s:x}-{e:x} {perms} {offset:x}";

    /// <summary>Writes one byte at <paramref name="addr"/> of this process (the caller checked it is mapped writable).</summary>
    public static void Touch(ulong addr, byte value) => *(byte*)addr = value;
}
