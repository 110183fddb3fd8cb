namespace Hetmem.Physical;

/// <summary>
/// A persistent-memory namespace: a real host file mapped <c>MAP_SHARED</c>, whose 4 KiB blocks are devmap
/// frames of an FS-DAX <see cref="DevicePageMap"/> (kernel: a pmem namespace in fsdax mode). Bytes written
/// through its frames are in the host file and survive the process.
/// </summary>
/// <remarks>Locking: immutable after construction; <see cref="Flush"/> may run concurrently with accesses.</remarks>
public sealed unsafe class DaxNamespace : IDisposable
{
    private readonly int _fd;         // immutable
    private byte* _base;              // immutable until Dispose
    private bool _disposed;

    /// <summary>
    /// Opens (or creates) <paramref name="path"/> as a namespace of <paramref name="bytes"/> (a multiple of
    /// 2 MiB). An existing, larger file keeps its size and contents; a smaller one is extended.
    /// </summary>
    /// <exception cref="MmException">EINVAL for a bad size; the host's errno when open, ftruncate or mmap fails.</exception>
    public DaxNamespace(PhysicalMemory memory, string path, ulong bytes)
    {
        if (bytes == 0 || !Page.IsAligned(bytes, Page.PmdSize))
        {
            MmException.Throw(Errno.EINVAL, $"DAX namespace size {bytes} must be a non-zero multiple of 2 MiB");
        }
        Path = path;
        Memory = memory;
        _fd = Libc.Open(path, Libc.ORdWr | Libc.OCreat, 0x1B6);
        if (_fd < 0)
        {
            MmException.Throw(Libc.LastErrno(), $"open({path}) for a DAX namespace failed");
        }
        long existing = new FileInfo(path).Length;
        if (existing < (long)bytes && Libc.Ftruncate(_fd, (long)bytes) != 0)
        {
            Errno e = Libc.LastErrno();
            Libc.Close(_fd);
            MmException.Throw(e, $"ftruncate({path}, {bytes}) failed");
        }
        nint p = Libc.Mmap(0, (nuint)bytes, Libc.ProtRead | Libc.ProtWrite, Libc.MapShared, _fd, 0);
        if (p == Libc.MapFailed)
        {
            Errno e = Libc.LastErrno();
            Libc.Close(_fd);
            MmException.Throw(e, $"mmap of DAX namespace {path} failed");
        }
        _base = (byte*)p;
        Bytes = bytes;
        PageMap = memory.RegisterDevicePageMap(MemoryType.FsDax, bytes >> Page.Shift, _base, this, null);
    }

    /// <summary>The host file.</summary>
    public string Path { get; }
    /// <summary>Size in bytes.</summary>
    public ulong Bytes { get; }
    /// <summary>The physical memory the namespace is registered with.</summary>
    public PhysicalMemory Memory { get; }
    /// <summary>The FS-DAX page map of the namespace's frames.</summary>
    public DevicePageMap PageMap { get; }
    /// <summary>First PFN (1 GiB aligned).</summary>
    public ulong FirstPfn => PageMap.FirstPfn;
    /// <summary>Number of 4 KiB blocks.</summary>
    public ulong Blocks => Bytes >> Page.Shift;

    /// <summary>The bytes of block <paramref name="block"/>.</summary>
    public Span<byte> Block(ulong block)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(block, Blocks);
        return new Span<byte>(_base + (block << Page.Shift), Page.Size);
    }

    /// <summary>Writes back a block range to the host file (kernel: dax_writeback_mapping_range / msync).</summary>
    /// <exception cref="MmException">The host's errno when msync fails.</exception>
    public void Flush(ulong firstBlock, ulong count)
    {
        if (count == 0)
        {
            return;
        }
        ArgumentOutOfRangeException.ThrowIfGreaterThan(firstBlock + count, Blocks);
        if (Libc.Msync((nint)(_base + (firstBlock << Page.Shift)), (nuint)(count << Page.Shift), Libc.MsSync) != 0)
        {
            MmException.Throw(Libc.LastErrno(), $"msync of DAX namespace {Path} failed");
        }
    }

    /// <summary>Unregisters the page map (waiting for live references), unmaps and closes the file.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        Memory.UnregisterDevicePageMap(PageMap);
        Libc.Msync((nint)_base, (nuint)Bytes, Libc.MsSync);
        Libc.Munmap((nint)_base, (nuint)Bytes);
        Libc.Close(_fd);
        _base = null;
    }
}
