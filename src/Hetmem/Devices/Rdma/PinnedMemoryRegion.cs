using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Rdma;

/// <summary>
/// A classic memory region (kernel: ib_umem_get → pin_user_pages(FOLL_LONGTERM | FOLL_WRITE)): every page is faulted in
/// and pinned at registration and stays pinned until <see cref="MemoryRegion.Deregister"/>, whatever the CPU does with
/// its mapping afterwards (an munmap leaves the NIC on the old frames, which are freed only at deregistration).
/// </summary>
/// <remarks>
/// The pages are refused on an fsdax mapping (EOPNOTSUPP): a long-term pin would keep truncate and hole punch waiting
/// for the block forever, which is why ODP is the way to do RDMA to fsdax. Locking: the PFN array is immutable; the
/// pins keep every frame alive, so accesses need no lock (the use count of <see cref="MemoryRegion"/> orders them
/// before the unpin).
/// </remarks>
public sealed unsafe class PinnedMemoryRegion : MemoryRegion
{
    private readonly ulong[] _pfns;   // immutable: one pinned PFN per page of [_start, _start + pages)
    private readonly ulong _start;    // immutable, page aligned
    private readonly bool _writable;  // immutable: pinned with FOLL_WRITE

    private PinnedMemoryRegion(ProtectionDomain pd, ulong addr, ulong length, AccessFlags access, ulong start, ulong[] pfns, bool writable)
        : base(pd, addr, length, access)
    {
        _start = start;
        _pfns = pfns;
        _writable = writable;
    }

    /// <inheritdoc/>
    public override MrKind Kind => MrKind.Pinned;

    /// <summary>Pages pinned.</summary>
    public int PinnedPages => _pfns.Length;

    /// <summary>The frame pinned for <paramref name="va"/>, or <see cref="Page.NoPfn"/> outside the region.</summary>
    public ulong PinnedPfn(ulong va) => va >= _start && va - _start < (ulong)_pfns.Length << Page.Shift ? _pfns[(va - _start) >> Page.Shift] : Page.NoPfn;

    internal static MemoryRegion Create(ProtectionDomain pd, ulong addr, ulong length, AccessFlags access)
    {
        ulong start = Page.AlignDown(addr, Page.Size);
        ulong end = Page.AlignUp(addr + length, Page.Size);
        ulong pages = (end - start) >> Page.Shift;
        if (pages > int.MaxValue)
        {
            MmException.Throw(Errno.ENOMEM, $"reg_mr: {pages} pages cannot be pinned at once");
        }
        // ib_umem_get pins writable when the region may be written by anyone (IB_ACCESS_WRITABLE).
        bool writable = (access & (AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_ATOMIC)) != 0;
        GupFlags flags = (writable ? GupFlags.Write : GupFlags.None) | GupFlags.LongTerm | GupFlags.Pin;
        ulong[] chunk = new ulong[Math.Min(pages, 512UL)];
        // The PFN array grows with what is actually pinned (kernel: ib_umem_get appends each batch to its scatterlist),
        // so a huge registration over unmapped memory fails before allocating for pages it never pinned.
        ulong[] pfns = new ulong[chunk.Length];
        int pinned = 0;
        while ((ulong)pinned < pages)
        {
            // Like ib_umem_get: pin in chunks; a short count means the next call reports why the next page failed.
            int want = (int)Math.Min((ulong)chunk.Length, pages - (ulong)pinned);
            Errno e = pd.Space.GetUserPages(start + ((ulong)pinned << Page.Shift), want, flags, chunk, out int done);
            if (e != Errno.Ok || done == 0)
            {
                pd.Space.UnpinUserPages(pfns.AsSpan(0, pinned), makeDirty: false);
                Errno why = e == Errno.Ok ? Errno.EFAULT : e;
                MmException.Throw(why, $"reg_mr: pinning [0x{start:x}, 0x{end:x}) failed at 0x{start + ((ulong)pinned << Page.Shift):x}" +
                    (why == Errno.EOPNOTSUPP ? " (long-term pins of fsdax pages are refused: register with ON_DEMAND)" : ""));
            }
            if (pinned + done > pfns.Length)
            {
                // Doubling, capped at the region's size: the last growth is the exact size when everything pins.
                Array.Resize(ref pfns, (int)Math.Min(pages, Math.Max((ulong)(pinned + done), (ulong)pfns.Length * 2)));
            }
            Array.Copy(chunk, 0, pfns, pinned, done);
            pinned += done;
        }
        return new PinnedMemoryRegion(pd, addr, length, access, start, pfns, writable);
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private byte* AddressOf(ulong va) => Memory.Address(_pfns[(va - _start) >> Page.Shift]) + (va & Page.OffsetMask);

    internal override MrStatus Read(ulong va, Span<byte> dst, IOdpFaultWaiter waiter, out Errno err)
    {
        err = Errno.Ok;
        int done = 0;
        while (done < dst.Length)
        {
            ulong a = va + (ulong)done;
            int n = Math.Min(Page.Size - (int)(a & Page.OffsetMask), dst.Length - done);
            new ReadOnlySpan<byte>(AddressOf(a), n).CopyTo(dst.Slice(done, n));
            done += n;
        }
        return MrStatus.Ok;
    }

    internal override MrStatus Write(ulong va, ReadOnlySpan<byte> src, IOdpFaultWaiter waiter, out Errno err)
    {
        err = Errno.Ok;
        if (!_writable)
        {
            err = Errno.EACCES;
            return MrStatus.AccessError;
        }
        int done = 0;
        while (done < src.Length)
        {
            ulong a = va + (ulong)done;
            int n = Math.Min(Page.Size - (int)(a & Page.OffsetMask), src.Length - done);
            src.Slice(done, n).CopyTo(new Span<byte>(AddressOf(a), n));
            done += n;
        }
        return MrStatus.Ok;
    }

    internal override MrStatus Atomic(ulong va, OdpAtomic op, ulong a, ulong b, out ulong original, IOdpFaultWaiter waiter, out Errno err)
    {
        err = Errno.Ok;
        original = 0;
        if (!_writable)
        {
            err = Errno.EACCES;
            return MrStatus.AccessError;
        }
        long* p = (long*)AddressOf(va);
        original = op switch
        {
            OdpAtomic.CompareAndSwap => (ulong)Interlocked.CompareExchange(ref *p, (long)b, (long)a),
            OdpAtomic.FetchAndAdd => (ulong)(Interlocked.Add(ref *p, (long)a) - (long)a),
            _ => (ulong)Interlocked.Exchange(ref *p, (long)a),
        };
        return MrStatus.Ok;
    }

    /// <inheritdoc/>
    /// <remarks>Pinned regions are never DAX (refused at registration), so RAM needs nothing beyond ordering.</remarks>
    internal override MrStatus Flush(ulong va, ulong length, IOdpFaultWaiter waiter, out Errno err)
    {
        err = Errno.Ok;
        Interlocked.MemoryBarrier();
        return MrStatus.Ok;
    }

    private protected override void TearDown() => Pd.Space.UnpinUserPages(_pfns, makeDirty: _writable);
}
