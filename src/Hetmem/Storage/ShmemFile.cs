using System.Diagnostics;
using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Storage;

/// <summary>
/// An anonymous shared-memory object: page-cache pages with no file behind them, zero-filled on first use and
/// swapped out to a <see cref="SwapStore"/> under reclaim (kernel: mm/shmem.c; the object behind
/// MAP_SHARED | MAP_ANONYMOUS from shmem_zero_setup, and memfd/tmpfs files).
/// </summary>
/// <remarks>
/// <para><b>Lifetime.</b> The object starts unlinked with one reference owned by its creator. Every mapping or
/// handle holds its own (<see cref="Inode.Hold"/> / <see cref="Inode.Release"/>, or <see cref="Inode.Open"/>); the
/// last release frees its pages and swap slots.</para>
/// <para><b>Locking.</b> See <see cref="PageCacheInode"/>. <c>_swapped</c> is guarded by <c>_swapLock</c>, a leaf the
/// backing hooks take inside the base class's index lock, so moving a page between the cache and swap is one
/// atomic step: a page is always either cached or swapped, never both and never lost.</para>
/// </remarks>
public sealed class ShmemFile : PageCacheInode
{
    /// <summary>Largest size (kernel: MAX_LFS_FILESIZE, page aligned).</summary>
    public const ulong MaxSize = (ulong)long.MaxValue & ~Page.OffsetMask;

    private readonly object _swapLock = new();              // leaf, nested in the base index lock
    private readonly Dictionary<ulong, uint> _swapped = []; // guarded by _swapLock: pgoff → swap slot

    /// <summary>
    /// Creates a shared-memory object of <paramref name="size"/> bytes (kernel: shmem_kernel_file_setup). The caller
    /// owns one reference and drops it with <see cref="Inode.Release"/>.
    /// </summary>
    /// <exception cref="MmException">EINVAL when <paramref name="size"/> exceeds <see cref="MaxSize"/>.</exception>
    public ShmemFile(PhysicalMemory memory, ulong size, SwapStore? swap = null)
        : base(memory, CheckSize(size), MaxSize, linked: false, references: 1)
    {
        Swap = swap;
    }

    /// <inheritdoc/>
    public override MappableKind Kind => MappableKind.Shmem;

    /// <summary>The swap store pages go to under reclaim, or null (then pages are never reclaimed).</summary>
    public SwapStore? Swap { get; }

    /// <summary>Pages currently swapped out (kernel: info->swapped).</summary>
    public int SwappedPages
    {
        get
        {
            lock (_swapLock)
            {
                return _swapped.Count;
            }
        }
    }

    /// <inheritdoc/>
    public override Errno TryReclaimPage(ulong pfn) => Swap is null ? Errno.EOPNOTSUPP : base.TryReclaimPage(pfn);

    /// <inheritdoc/>
    private protected override bool SwapBackedPages => true;

    /// <inheritdoc/>
    private protected override bool MustPageOut => true;

    /// <inheritdoc/>
    private protected override Errno FillPage(ulong pgoff, ulong pfn, ulong backing, bool needContent)
    {
        Span<byte> page = Memory.FrameSpan(pfn);
        if (backing == 0)
        {
            page.Clear();
            return Errno.Ok;
        }
        Debug.Assert(Swap is not null);
        uint slot = (uint)(backing - 1);
        if (needContent)
        {
            Errno e = Swap.Read(slot, page);
            if (e != Errno.Ok)
            {
                return e;
            }
            Counters.Inc(Counter.SwapIn);
        }
        else
        {
            page.Clear();
        }
        Swap.Free(slot);
        // The swap copy is gone: the page is now the only copy of the data.
        Memory.SetFlags(pfn, FrameFlags.Dirty);
        return Errno.Ok;
    }

    /// <inheritdoc/>
    private protected override Errno PageOut(ulong pgoff, ulong pfn, out ulong backing)
    {
        backing = 0;
        if (Swap is null)
        {
            return Errno.EOPNOTSUPP;
        }
        Errno e = Swap.Allocate(out uint slot);
        if (e != Errno.Ok)
        {
            return e;
        }
        e = Swap.Write(slot, Memory.FrameSpan(pfn));
        if (e != Errno.Ok)
        {
            Swap.Free(slot);
            return e;
        }
        backing = (ulong)slot + 1;
        return Errno.Ok;
    }

    /// <inheritdoc/>
    private protected override void AbortPageOut(ulong backing)
    {
        if (backing != 0)
        {
            Swap!.Free((uint)(backing - 1));
        }
    }

    /// <inheritdoc/>
    private protected override ulong DetachBackingLocked(ulong pgoff)
    {
        lock (_swapLock)
        {
            return _swapped.Remove(pgoff, out uint slot) ? (ulong)slot + 1 : 0;
        }
    }

    /// <inheritdoc/>
    private protected override void AttachBackingLocked(ulong pgoff, ulong backing)
    {
        if (backing != 0)
        {
            lock (_swapLock)
            {
                _swapped.Add(pgoff, (uint)(backing - 1));
            }
        }
    }

    /// <inheritdoc/>
    private protected override void DropBackingLocked(ulong firstPgoff, ulong endPgoff)
    {
        lock (_swapLock)
        {
            if (_swapped.Count == 0)
            {
                return;
            }
            var victims = new List<ulong>();
            foreach (ulong p in _swapped.Keys)
            {
                if (p >= firstPgoff && p < endPgoff)
                {
                    victims.Add(p);
                }
            }
            foreach (ulong p in victims)
            {
                _swapped.Remove(p, out uint slot);
                Swap!.Free(slot);
            }
        }
    }

    /// <inheritdoc/>
    private protected override bool IsHoleLocked(ulong pgoff)
    {
        lock (_swapLock)
        {
            return !_swapped.ContainsKey(pgoff);
        }
    }

    /// <inheritdoc/>
    private protected override Errno FsyncCore() => Errno.Ok;

    private static ulong CheckSize(ulong size)
    {
        if (size > MaxSize)
        {
            MmException.Throw(Errno.EINVAL, $"shared memory size 0x{size:x} exceeds the maximum 0x{MaxSize:x}");
        }
        return size;
    }
}
