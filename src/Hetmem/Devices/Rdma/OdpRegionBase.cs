using Hetmem.Hmm;
using Hetmem.Physical;

namespace Hetmem.Devices.Rdma;

/// <summary>
/// What explicit and implicit ODP regions share: the data path over <see cref="OdpUmem"/> spans with faults taken
/// outside the span lock (kernel: rxe_odp_map_range_and_lock, with the fault delegated to the device's page-fault
/// worker as mlx5 does), prefetch, and a view of the NIC's translations.
/// </summary>
/// <remarks>
/// An access is cut at span boundaries (one span for an explicit region, 1 GiB children for an implicit one). Each
/// piece is tried under its span lock; a missing or read-only translation is handed to the
/// <see cref="IOdpFaultWaiter"/>, and the piece is tried again. A span that died meanwhile (an emptied implicit child)
/// is looked up again.
/// </remarks>
public abstract class OdpRegionBase : MemoryRegion
{
    private protected OdpRegionBase(ProtectionDomain pd, ulong addr, ulong length, AccessFlags access)
        : base(pd, addr, length, access)
    {
    }

    /// <summary>
    /// The NIC's translation of <paramref name="va"/> (diagnostics; kernel: reading back an MTT entry): its mapping
    /// order (0 = 4 KiB, 9 = PMD, 18 = PUD), or −1 when the NIC has no translation.
    /// </summary>
    public int TranslationOrder(ulong va)
    {
        ulong e = TranslationOf(va);
        return e == 0 ? -1 : HmmPfn.MapOrder(e);
    }

    /// <summary>True when the NIC has a translation of <paramref name="va"/>, writable if <paramref name="write"/>.</summary>
    public bool IsPresent(ulong va, bool write = false)
    {
        ulong e = TranslationOf(va);
        return HmmPfn.Has(e, HmmPfnFlags.Valid) && (!write || HmmPfn.Has(e, HmmPfnFlags.Write));
    }

    /// <summary>The frame the NIC would access for <paramref name="va"/>, or <see cref="Page.NoPfn"/>.</summary>
    public ulong TranslatedPfn(ulong va)
    {
        ulong e = TranslationOf(va);
        return e == 0 ? Page.NoPfn : HmmPfn.ToPfn(e);
    }

    /// <summary>Pages with a translation in all spans.</summary>
    public abstract long PresentPages { get; }

    /// <summary>The span covering <paramref name="va"/>, creating it when <paramref name="create"/> (implicit children); null with the errno otherwise.</summary>
    internal abstract OdpUmem? UmemFor(ulong va, bool create, out Errno err);

    private ulong TranslationOf(ulong va)
    {
        if (!Contains(va, 1))
        {
            return 0;
        }
        OdpUmem? u = UmemFor(va, create: false, out _);
        return u is null || u.IsDead ? 0 : u.Translation(va);
    }

    /// <summary>
    /// Faults or snapshots [start, end) (clipped to the region) synchronously, span by span; counts the pages as
    /// prefetched (kernel: mlx5_ib_prefetch_mr_work / rxe_ib_prefetch_sg_list).
    /// </summary>
    internal Errno Prefetch(ulong start, ulong end, OdpFaultKind kind)
    {
        ulong a = Page.AlignDown(start, Page.Size);
        end = Page.AlignUp(end, Page.Size);
        while (a < end)
        {
            OdpUmem? u = UmemFor(a, create: true, out Errno err);
            if (u is null)
            {
                return err;
            }
            ulong e = Math.Min(end, u.End);
            Errno r = u.Fault(a, e, kind, out _);
            if (r == Errno.EAGAIN)
            {
                continue;
            }
            if (r != Errno.Ok)
            {
                return r;
            }
            Stats.AddPrefetch((long)((e - a) >> Page.Shift));
            a = e;
        }
        return Errno.Ok;
    }

    internal override MrStatus Read(ulong va, Span<byte> dst, IOdpFaultWaiter waiter, out Errno err)
    {
        err = Errno.Ok;
        int done = 0;
        while (done < dst.Length)
        {
            ulong a = va + (ulong)done;
            OdpUmem? u = UmemFor(a, create: true, out err);
            if (u is null)
            {
                return MrStatus.AccessError;
            }
            int n = (int)Math.Min((ulong)(dst.Length - done), u.End - a);
            Span<byte> piece = dst.Slice(done, n);
            for (int round = 0; ; round++)
            {
                OdpAccess r = u!.TryRead(a, piece, out ulong missing);
                if (r == OdpAccess.Done)
                {
                    break;
                }
                MrStatus s = Retry(ref u, r, a, a + (ulong)n, missing, OdpFaultKind.Read, round, waiter, out err);
                if (s != MrStatus.Ok)
                {
                    return s;
                }
            }
            done += n;
        }
        return MrStatus.Ok;
    }

    internal override MrStatus Write(ulong va, ReadOnlySpan<byte> src, IOdpFaultWaiter waiter, out Errno err)
    {
        err = Errno.Ok;
        int done = 0;
        while (done < src.Length)
        {
            ulong a = va + (ulong)done;
            OdpUmem? u = UmemFor(a, create: true, out err);
            if (u is null)
            {
                return MrStatus.AccessError;
            }
            int n = (int)Math.Min((ulong)(src.Length - done), u.End - a);
            ReadOnlySpan<byte> piece = src.Slice(done, n);
            for (int round = 0; ; round++)
            {
                OdpAccess r = u!.TryWrite(a, piece, out ulong missing);
                if (r == OdpAccess.Done)
                {
                    break;
                }
                MrStatus s = Retry(ref u, r, a, a + (ulong)n, missing, OdpFaultKind.Write, round, waiter, out err);
                if (s != MrStatus.Ok)
                {
                    return s;
                }
            }
            done += n;
        }
        return MrStatus.Ok;
    }

    internal override MrStatus Atomic(ulong va, OdpAtomic op, ulong a, ulong b, out ulong original, IOdpFaultWaiter waiter, out Errno err)
    {
        original = 0;
        OdpUmem? u = UmemFor(va, create: true, out err);
        if (u is null)
        {
            return MrStatus.AccessError;
        }
        for (int round = 0; ; round++)
        {
            OdpAccess r = u!.TryAtomic(va, op, a, b, out original, out ulong missing);
            if (r == OdpAccess.Done)
            {
                return MrStatus.Ok;
            }
            MrStatus s = Retry(ref u, r, va, va + 8, missing, OdpFaultKind.Write, round, waiter, out err);
            if (s != MrStatus.Ok)
            {
                return s;
            }
        }
    }

    internal override MrStatus Flush(ulong va, ulong length, IOdpFaultWaiter waiter, out Errno err)
    {
        err = Errno.Ok;
        ulong done = 0;
        while (done < length)
        {
            ulong a = va + done;
            OdpUmem? u = UmemFor(a, create: true, out err);
            if (u is null)
            {
                return MrStatus.AccessError;
            }
            ulong n = Math.Min(length - done, u.End - a);
            for (int round = 0; ; round++)
            {
                OdpAccess r = u!.TryFlush(a, n, out ulong missing);
                if (r == OdpAccess.Done)
                {
                    break;
                }
                MrStatus s = Retry(ref u, r, a, a + n, missing, OdpFaultKind.Read, round, waiter, out err);
                if (s != MrStatus.Ok)
                {
                    return s;
                }
            }
            done += n;
        }
        return MrStatus.Ok;
    }

    private MrStatus Retry(ref OdpUmem? u, OdpAccess r, ulong a, ulong accessEnd, ulong missing, OdpFaultKind kind, int round, IOdpFaultWaiter waiter, out Errno err)
    {
        err = Errno.Ok;
        switch (r)
        {
            case OdpAccess.Dead:
                u = UmemFor(a, create: true, out err);
                return u is null ? MrStatus.AccessError : MrStatus.Ok;
            case OdpAccess.IoError:
                err = Errno.EIO;
                return MrStatus.IoError;
            default:
                return waiter.WaitForFault(this, u!, missing, accessEnd, kind, round, out err);
        }
    }
}
