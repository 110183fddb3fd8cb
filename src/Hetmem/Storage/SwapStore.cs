using System.Diagnostics;
using System.Runtime.InteropServices;
using Hetmem.Physical;
using Microsoft.Win32.SafeHandles;

namespace Hetmem.Storage;

/// <summary>
/// A swap area of fixed capacity: 4 KiB slots in native memory (kernel: zram) or in a host file (kernel: a
/// swapfile), each with a swap count so fork can share a swapped-out page (kernel: swap_info_struct with its
/// swap_map, mm/swapfile.c).
/// </summary>
/// <remarks>
/// <para><b>Slots.</b> <see cref="Allocate"/> hands out a slot with count 1; <see cref="Duplicate"/> adds one per
/// extra swap entry referring to it (fork); <see cref="Free"/> drops one and releases the slot at zero. Slot
/// contents are written with <see cref="Write"/> and read with <see cref="Read"/>; the caller guarantees nobody
/// writes a slot while another thread reads it (the swap entry is installed only after the write).</para>
/// <para><b>Locking.</b> <c>_lock</c> is a leaf protecting the free stack and the counts; slot I/O runs outside it.
/// Every operation is allocation-free.</para>
/// </remarks>
public sealed unsafe class SwapStore : IDisposable
{
    /// <summary>No slot.</summary>
    public const uint NoSlot = uint.MaxValue;

    private readonly object _lock = new();   // leaf
    private readonly int[] _counts;          // guarded by _lock; read with Volatile by Read/Write
    private readonly uint[] _freeStack;      // guarded by _lock; free slots, lowest on top
    private uint _freeTop;                   // guarded by _lock; number of entries in _freeStack
    private byte* _area;                     // native area or null; immutable until Dispose
    private readonly SafeFileHandle? _file;  // host swap file or null; immutable until Dispose
    private bool _disposed;                  // guarded by _lock

    /// <summary>Creates a swap area of <paramref name="capacity"/> slots in native memory (kernel: a zram device).</summary>
    /// <exception cref="MmException">EINVAL when <paramref name="capacity"/> is 0 or ≥ 2^31; ENOMEM when the host cannot provide the memory.</exception>
    public SwapStore(uint capacity)
        : this(capacity, null)
    {
    }

    /// <summary>
    /// Creates a swap area of <paramref name="capacity"/> slots; with a <paramref name="path"/> the slots live in
    /// that host file (created or truncated, sparse), otherwise in native memory (kernel: swapon).
    /// </summary>
    /// <exception cref="MmException">EINVAL for a bad capacity; ENOMEM when native memory is short; EIO / ENOENT /
    /// EACCES when the host file cannot be created.</exception>
    public SwapStore(uint capacity, string? path)
    {
        if (capacity == 0 || capacity >= 1u << 31)
        {
            MmException.Throw(Errno.EINVAL, $"swap capacity {capacity} must be 1..2^31-1 slots");
        }
        Capacity = capacity;
        Path = path;
        ulong bytes = (ulong)capacity << Page.Shift;
        if (path is null)
        {
            try
            {
                _area = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, Page.Size);
            }
            catch (OutOfMemoryException)
            {
                MmException.Throw(Errno.ENOMEM, $"no host memory for a {bytes}-byte swap area");
            }
        }
        else
        {
            try
            {
                _file = File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None);
                RandomAccess.SetLength(_file, (long)bytes);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                _file?.Dispose();
                MmException.Throw(HostIo.ToErrno(ex), $"cannot create swap file {path}: {ex.Message}");
            }
        }
        _counts = new int[capacity];
        _freeStack = new uint[capacity];
        for (uint i = 0; i < capacity; i++)
        {
            _freeStack[i] = capacity - 1 - i;
        }
        _freeTop = capacity;
    }

    /// <summary>Number of slots.</summary>
    public uint Capacity { get; }

    /// <summary>The host swap file, or null for a native area.</summary>
    public string? Path { get; }

    /// <summary>Slots in use (kernel: total swap pages minus nr_swap_pages).</summary>
    public uint UsedSlots
    {
        get
        {
            lock (_lock)
            {
                return Capacity - _freeTop;
            }
        }
    }

    /// <summary>Allocates a slot with swap count 1 (kernel: folio_alloc_swap / get_swap_page).</summary>
    /// <returns>Ok; ENOSPC when every slot is in use; EIO after <see cref="Dispose"/>.</returns>
    public Errno Allocate(out uint slot)
    {
        lock (_lock)
        {
            if (_disposed)
            {
                slot = NoSlot;
                return Errno.EIO;
            }
            if (_freeTop == 0)
            {
                slot = NoSlot;
                return Errno.ENOSPC;
            }
            slot = _freeStack[--_freeTop];
            Debug.Assert(_counts[slot] == 0);
            _counts[slot] = 1;
            return Errno.Ok;
        }
    }

    /// <summary>Adds a reference to an allocated slot (kernel: swap_duplicate, e.g. copy_nonpresent_pte at fork).</summary>
    /// <returns>Ok; EINVAL when <paramref name="slot"/> is out of range; ENOENT when it is free; EOVERFLOW at the count limit.</returns>
    public Errno Duplicate(uint slot)
    {
        if (slot >= Capacity)
        {
            return Errno.EINVAL;
        }
        lock (_lock)
        {
            int c = _counts[slot];
            if (c == 0)
            {
                return Errno.ENOENT;
            }
            if (c == int.MaxValue)
            {
                return Errno.EOVERFLOW;
            }
            _counts[slot] = c + 1;
            return Errno.Ok;
        }
    }

    /// <summary>Drops a reference (kernel: swap_free / free_swap_and_cache); the last one releases the slot.</summary>
    /// <returns>True when the slot was released.</returns>
    /// <exception cref="InvalidOperationException">When <paramref name="slot"/> is out of range or already free (a double free).</exception>
    public bool Free(uint slot)
    {
        if (slot >= Capacity)
        {
            throw new InvalidOperationException($"swap slot {slot} is out of range (capacity {Capacity})");
        }
        lock (_lock)
        {
            int c = _counts[slot];
            if (c == 0)
            {
                throw new InvalidOperationException($"swap slot {slot} is already free (double free)");
            }
            _counts[slot] = c - 1;
            if (c > 1)
            {
                return false;
            }
            _freeStack[_freeTop++] = slot;
            return true;
        }
    }

    /// <summary>The swap count of <paramref name="slot"/> (kernel: swap_count / __swap_count); 0 when free or out of range.</summary>
    public int Count(uint slot) => slot < Capacity ? Volatile.Read(ref _counts[slot]) : 0;

    /// <summary>Writes one page into an allocated slot (kernel: swap_writepage).</summary>
    /// <returns>Ok; EINVAL when the slot is not allocated or <paramref name="page"/> is not 4 KiB; EIO on a host error or after <see cref="Dispose"/>.</returns>
    public Errno Write(uint slot, ReadOnlySpan<byte> page)
    {
        if (slot >= Capacity || page.Length != Page.Size || Volatile.Read(ref _counts[slot]) == 0)
        {
            return Errno.EINVAL;
        }
        if (_area != null)
        {
            page.CopyTo(new Span<byte>(_area + ((ulong)slot << Page.Shift), Page.Size));
            return Errno.Ok;
        }
        if (_file is null)
        {
            return Errno.EIO;
        }
        try
        {
            RandomAccess.Write(_file, page, (long)slot << Page.Shift);
            return Errno.Ok;
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            return Errno.EIO;
        }
    }

    /// <summary>Reads one page from an allocated slot (kernel: swap_read_folio).</summary>
    /// <returns>Ok; EINVAL when the slot is not allocated or <paramref name="page"/> is not 4 KiB; EIO on a host error or after <see cref="Dispose"/>.</returns>
    public Errno Read(uint slot, Span<byte> page)
    {
        if (slot >= Capacity || page.Length != Page.Size || Volatile.Read(ref _counts[slot]) == 0)
        {
            return Errno.EINVAL;
        }
        if (_area != null)
        {
            new ReadOnlySpan<byte>(_area + ((ulong)slot << Page.Shift), Page.Size).CopyTo(page);
            return Errno.Ok;
        }
        if (_file is null)
        {
            return Errno.EIO;
        }
        try
        {
            int done = 0;
            while (done < Page.Size)
            {
                int n = RandomAccess.Read(_file, page[done..], ((long)slot << Page.Shift) + done);
                if (n == 0)
                {
                    page[done..].Clear();
                    break;
                }
                done += n;
            }
            return Errno.Ok;
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            return Errno.EIO;
        }
    }

    /// <summary>Releases the area (kernel: swapoff without the page-in): later calls fail with EIO.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
        }
        if (_area != null)
        {
            NativeMemory.AlignedFree(_area);
            _area = null;
        }
        _file?.Dispose();
    }
}
