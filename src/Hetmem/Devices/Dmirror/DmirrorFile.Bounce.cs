using System.Runtime.InteropServices;

namespace Hetmem.Devices.Dmirror;

/// <summary>The bounce buffer of READ, WRITE and the migrate-to-device read-back (kernel: dmirror_bounce_init / _fini).</summary>
/// <remarks>
/// The kernel allocates the bounce buffer with kvmalloc per command. Here that memory is real host memory, and a fresh
/// allocation of a large buffer costs one host page fault (and a host zeroing) per 4 KiB on first touch, which would
/// dominate the migration figures of <c>benchmark_thp_migration</c>. So the file keeps its largest buffer for the next
/// command: a command takes it (or allocates a new one when it is missing or too small) and gives it back; a buffer
/// that is not kept is freed. <c>_bounceLock</c> (a leaf) guards the cached pointer and size; the buffer itself is
/// owned by the one command that took it. <see cref="Close"/> frees it.
/// </remarks>
public sealed unsafe partial class DmirrorFile
{
    private const ulong MaxCachedBounce = 1UL << 30;   // larger buffers are freed after the command
    private readonly Lock _bounceLock = new();
    private byte* _bounceCache;                          // guarded by _bounceLock
    private ulong _bounceCacheSize;                      // guarded by _bounceLock

    /// <summary>A bounce buffer of at least <paramref name="size"/> bytes, or null when the host has no memory for it.</summary>
    private byte* RentBounce(ulong size, out ulong capacity)
    {
        lock (_bounceLock)
        {
            if (_bounceCache != null && _bounceCacheSize >= size)
            {
                byte* p = _bounceCache;
                capacity = _bounceCacheSize;
                _bounceCache = null;
                _bounceCacheSize = 0;
                return p;
            }
        }
        capacity = size;
        return AllocBounce(size);
    }

    /// <summary>Gives a buffer from <see cref="RentBounce"/> back: kept when it is the largest so far (and not huge), else freed.</summary>
    private void ReturnBounce(byte* buffer, ulong capacity)
    {
        byte* free = buffer;
        if (capacity <= MaxCachedBounce)
        {
            lock (_bounceLock)
            {
                // _closed is set before Close takes this lock to free the cache: checked here, nothing is kept after it.
                if (Volatile.Read(ref _closed) == 0 && (_bounceCache == null || _bounceCacheSize < capacity))
                {
                    free = _bounceCache;
                    _bounceCache = buffer;
                    _bounceCacheSize = capacity;
                }
            }
        }
        if (free != null)
        {
            NativeMemory.Free(free);
        }
    }

    /// <summary>Frees the cached bounce buffer (at <see cref="Close"/>).</summary>
    private void FreeBounceCache()
    {
        byte* p;
        lock (_bounceLock)
        {
            p = _bounceCache;
            _bounceCache = null;
            _bounceCacheSize = 0;
        }
        if (p != null)
        {
            NativeMemory.Free(p);
        }
    }
}
