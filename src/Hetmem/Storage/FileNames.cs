using System.Text;

namespace Hetmem.Storage;

/// <summary>File-name rules shared by the file systems (kernel: the checks of lookup_one_len and NAME_MAX).</summary>
internal static class FileNames
{
    /// <summary>Longest name in UTF-8 bytes (kernel: NAME_MAX).</summary>
    public const int MaxBytes = 255;

    /// <summary>Throws when <paramref name="name"/> is not a single, valid path component.</summary>
    /// <exception cref="ArgumentNullException">When <paramref name="name"/> is null.</exception>
    /// <exception cref="MmException">ENOENT for an empty name (as open("")); EINVAL for ".", "..", a name with '/'
    /// or NUL, or one longer than 255 bytes (the kernel's ENAMETOOLONG, which <see cref="Errno"/> does not carry).</exception>
    public static void Validate(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.Length == 0)
        {
            MmException.Throw(Errno.ENOENT, "empty file name");
        }
        if (name is "." or ".." || name.Contains('/') || name.Contains('\0'))
        {
            MmException.Throw(Errno.EINVAL, $"'{name}' is not a plain file name");
        }
        if (Encoding.UTF8.GetByteCount(name) > MaxBytes)
        {
            MmException.Throw(Errno.EINVAL, $"file name of {Encoding.UTF8.GetByteCount(name)} bytes exceeds NAME_MAX ({MaxBytes})");
        }
    }
}
