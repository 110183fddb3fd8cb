using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Rdma;

/// <summary>
/// A protection domain (rdma-core: struct ibv_pd; ibv_alloc_pd). It binds the NIC to one address space (the user
/// context's mm) and groups the memory regions and queue pairs that may be used together: a request is served only
/// from a region of the responder QP's domain, a local SGE only from a region of the requester QP's domain.
/// </summary>
/// <remarks>Locking: <c>_lock</c> (a leaf) protects the member sets.</remarks>
public sealed class ProtectionDomain : IDisposable
{
    private readonly object _lock = new();
    private readonly HashSet<MemoryRegion> _mrs = [];   // guarded by _lock
    private readonly HashSet<QueuePair> _qps = [];      // guarded by _lock
    private bool _deallocated;                           // guarded by _lock

    internal ProtectionDomain(RdmaDevice device, AddressSpace space)
    {
        Device = device;
        Space = space;
    }

    /// <summary>The device.</summary>
    public RdmaDevice Device { get; }

    /// <summary>The address space whose memory the domain's regions register (kernel: the ib_ucontext's mm).</summary>
    public AddressSpace Space { get; }

    /// <summary>Registered regions.</summary>
    public int RegionCount
    {
        get
        {
            lock (_lock)
            {
                return _mrs.Count;
            }
        }
    }

    /// <summary>
    /// Registers memory (ibv_reg_mr). With <see cref="AccessFlags.ON_DEMAND"/> the region is an ODP region (nothing is
    /// pinned; pages already present are snapshotted); with <paramref name="addr"/> = 0, <paramref name="length"/> =
    /// <see cref="ulong.MaxValue"/> and ON_DEMAND it is an implicit ODP region over the whole address space. Without
    /// ON_DEMAND every page is faulted in and pinned (get_user_pages with FOLL_LONGTERM | FOLL_PIN) until
    /// deregistration.
    /// </summary>
    /// <exception cref="MmException">
    /// EINVAL: zero length, unknown flags, REMOTE_WRITE / REMOTE_ATOMIC without LOCAL_WRITE (ib_check_mr_access), an
    /// implicit region without ON_DEMAND or with HUGETLB, a range that wraps, longer than max_mr_size, (pinned) more than
    /// UINT_MAX pages, a pinned range whose page-aligned end wraps, or the domain is deallocated. EOVERFLOW: an ODP range
    /// whose page-aligned end wraps. EFAULT: the range leaves user space, or (pinned) a page is unmapped, VM_IO/VM_PFNMAP, or not writable
    /// when write access was asked. EOPNOTSUPP: pinned registration of a file-system DAX mapping (long-term pins of fsdax
    /// pages are refused, check_vma_flags). ENOMEM: pinning ran out of memory, or an ODP region needs more than INT_MAX
    /// bytes of PFN entries.
    /// </exception>
    public MemoryRegion RegMr(ulong addr, ulong length, AccessFlags access)
    {
        const AccessFlags known = AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ
            | AccessFlags.REMOTE_ATOMIC | AccessFlags.ON_DEMAND | AccessFlags.HUGETLB | AccessFlags.FLUSH_GLOBAL
            | AccessFlags.FLUSH_PERSISTENT;
        if ((access & ~known) != 0)
        {
            MmException.Throw(Errno.EINVAL, $"reg_mr: unknown access flags 0x{(int)(access & ~known):x}");
        }
        if ((access & (AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_ATOMIC)) != 0 && (access & AccessFlags.LOCAL_WRITE) == 0)
        {
            MmException.Throw(Errno.EINVAL, "reg_mr: REMOTE_WRITE and REMOTE_ATOMIC need LOCAL_WRITE");
        }
        if (length == 0)
        {
            MmException.Throw(Errno.EINVAL, $"reg_mr at 0x{addr:x}: zero length");
        }
        bool odp = (access & AccessFlags.ON_DEMAND) != 0;
        bool implicitOdp = addr == 0 && length == ulong.MaxValue;
        if (implicitOdp && !odp)
        {
            MmException.Throw(Errno.EINVAL, "reg_mr(NULL, SIZE_MAX) is implicit ODP and needs ON_DEMAND");
        }
        if (implicitOdp && (access & AccessFlags.HUGETLB) != 0)
        {
            MmException.Throw(Errno.EINVAL, "implicit ODP cannot be registered with HUGETLB (ib_umem_odp_alloc_implicit)");
        }
        if (!implicitOdp)
        {
            if (addr + length < addr)
            {
                MmException.Throw(Errno.EINVAL, $"reg_mr [0x{addr:x}, +0x{length:x}) wraps");
            }
            if (length > Device.Attr.MaxMrSize)
            {
                MmException.Throw(Errno.EINVAL, $"reg_mr of 0x{length:x} bytes exceeds max_mr_size 0x{Device.Attr.MaxMrSize:x}");
            }
            if (Page.AlignUp(addr + length, Page.Size) < addr + length)
            {
                // Its page-aligned end wraps: ib_umem_get says EINVAL, ib_init_umem_odp (ODP) EOVERFLOW.
                MmException.Throw(odp ? Errno.EOVERFLOW : Errno.EINVAL, $"reg_mr [0x{addr:x}, +0x{length:x}) wraps when page aligned");
            }
            if (Page.AlignUp(addr + length, Page.Size) > AddressSpace.TaskSize)
            {
                MmException.Throw(Errno.EFAULT, $"reg_mr [0x{addr:x}, +0x{length:x}) leaves user space");
            }
        }
        lock (_lock)
        {
            if (_deallocated)
            {
                MmException.Throw(Errno.EINVAL, "reg_mr on a deallocated protection domain");
            }
        }
        if (odp && !implicitOdp)
        {
            // ib_init_umem_odp allocates one PFN entry a page with kvcalloc, which refuses more than INT_MAX bytes.
            ulong pages = (Page.AlignUp(addr + length, Page.Size) - Page.AlignDown(addr, Page.Size)) >> Page.Shift;
            if (pages > int.MaxValue / sizeof(ulong))
            {
                MmException.Throw(Errno.ENOMEM, $"reg_mr [0x{addr:x}, +0x{length:x}): {pages} ODP entries exceed what kvcalloc gives");
            }
        }
        if (!odp)
        {
            // ib_umem_get's own check before it pins anything: at most UINT_MAX pages.
            ulong first = Page.AlignDown(addr, Page.Size), last = Page.AlignUp(addr + length, Page.Size);
            if ((last - first) >> Page.Shift > uint.MaxValue)
            {
                MmException.Throw(Errno.EINVAL, $"reg_mr [0x{addr:x}, +0x{length:x}) has more than UINT_MAX pages to pin");
            }
        }
        MemoryRegion mr;
        if (implicitOdp)
        {
            var imr = new ImplicitOdpMemoryRegion(this, access);
            Device.RememberImplicit(imr);
            mr = imr;
        }
        else if (odp)
        {
            mr = new OdpMemoryRegion(this, addr, length, access);
        }
        else
        {
            mr = PinnedMemoryRegion.Create(this, addr, length, access);
        }
        Device.AllocKey(mr);
        lock (_lock)
        {
            _mrs.Add(mr);
        }
        return mr;
    }

    /// <summary>
    /// Creates a reliable-connected queue pair in the RESET state (ibv_create_qp with IBV_QPT_RC). Connect it with
    /// <see cref="QueuePair.Connect"/>.
    /// </summary>
    /// <exception cref="MmException">EINVAL when a queue size is out of range (1..max_qp_wr, 1..max_sge), the CQs belong to
    /// another device, or the domain is deallocated.</exception>
    public QueuePair CreateQp(QpInitAttr attr)
    {
        ArgumentNullException.ThrowIfNull(attr);
        QpCap cap = attr.Cap == default ? QpCap.Default : attr.Cap;
        DeviceAttr dev = Device.Attr;
        if (cap.MaxSendWr < 1 || cap.MaxSendWr > dev.MaxQpWr || cap.MaxRecvWr < 1 || cap.MaxRecvWr > dev.MaxQpWr
            || cap.MaxSendSge < 1 || cap.MaxSendSge > dev.MaxSge || cap.MaxRecvSge < 1 || cap.MaxRecvSge > dev.MaxSge)
        {
            MmException.Throw(Errno.EINVAL, $"create_qp: capabilities {cap} out of range (max_qp_wr {dev.MaxQpWr}, max_sge {dev.MaxSge})");
        }
        if (attr.SendCq.Device != Device || attr.RecvCq.Device != Device)
        {
            MmException.Throw(Errno.EINVAL, "create_qp: completion queues of another device");
        }
        var qp = new QueuePair(this, attr with { Cap = cap });
        lock (_lock)
        {
            if (_deallocated)
            {
                MmException.Throw(Errno.EINVAL, "create_qp on a deallocated protection domain");
            }
            _qps.Add(qp);
        }
        Device.AllocQpn(qp);
        return qp;
    }

    /// <summary>
    /// Advises the NIC about ODP ranges it will access (ibv_advise_mr; kernel: mlx5_ib_advise_mr / rxe_ib_advise_mr).
    /// PREFETCH faults each range in readable, PREFETCH_WRITE writable, PREFETCH_NO_FAULT only makes pages already
    /// present on the CPU present to the NIC. With <see cref="AdviseMrFlags.FLUSH"/> the work is done before returning
    /// and its errors are reported; otherwise it is queued to the device's page-fault worker, best effort.
    /// </summary>
    /// <exception cref="MmException">
    /// EINVAL: unknown advice or flags, an empty list, or an SGE naming a region that is not ODP. EFAULT: an SGE whose
    /// lkey is unknown, belongs to another domain, lies outside its region, or asks PREFETCH_WRITE of a region without
    /// LOCAL_WRITE; with FLUSH also a range the fault could not make present (no VMA, unreadable). EPERM (FLUSH,
    /// PREFETCH_WRITE): a read-only mapping. EBUSY (FLUSH): invalidations kept colliding until the timeout. Nothing is
    /// done when validation fails.
    /// </exception>
    public void AdviseMr(AdviseMrAdvice advice, AdviseMrFlags flags, ReadOnlySpan<Sge> sgList)
    {
        if (advice is < AdviseMrAdvice.PREFETCH or > AdviseMrAdvice.PREFETCH_NO_FAULT)
        {
            MmException.Throw(Errno.EINVAL, $"advise_mr: unknown advice {(int)advice}");
        }
        if ((flags & ~AdviseMrFlags.FLUSH) != 0)
        {
            MmException.Throw(Errno.EINVAL, $"advise_mr: unknown flags 0x{(int)flags:x}");
        }
        if (sgList.IsEmpty)
        {
            MmException.Throw(Errno.EINVAL, "advise_mr: empty scatter/gather list");
        }
        var regions = new OdpRegionBase[sgList.Length];
        for (int i = 0; i < sgList.Length; i++)
        {
            Sge sge = sgList[i];
            MemoryRegion? mr = Device.LookupKey(sge.Lkey);
            if (mr is null || mr.Pd != this)
            {
                MmException.Throw(Errno.EFAULT, $"advise_mr: lkey 0x{sge.Lkey:x} is not a region of this protection domain");
            }
            var odp = mr as OdpRegionBase;
            if (odp is null)
            {
                MmException.Throw(Errno.EINVAL, $"advise_mr: lkey 0x{sge.Lkey:x} is not an ODP region");
            }
            if (!mr.Contains(sge.Addr, sge.Length))
            {
                MmException.Throw(Errno.EFAULT, $"advise_mr: [0x{sge.Addr:x}, +0x{sge.Length:x}) is outside {mr}");
            }
            if (advice == AdviseMrAdvice.PREFETCH_WRITE && (mr.Access & AccessFlags.LOCAL_WRITE) == 0)
            {
                MmException.Throw(Errno.EFAULT, $"advise_mr: PREFETCH_WRITE on {mr} without LOCAL_WRITE");
            }
            regions[i] = odp;
        }
        OdpFaultKind kind = advice switch
        {
            AdviseMrAdvice.PREFETCH => OdpFaultKind.Read,
            AdviseMrAdvice.PREFETCH_WRITE => OdpFaultKind.Write,
            _ => OdpFaultKind.Snapshot,
        };
        for (int i = 0; i < sgList.Length; i++)
        {
            Sge sge = sgList[i];
            if (sge.Length == 0)
            {
                continue;
            }
            if ((flags & AdviseMrFlags.FLUSH) != 0)
            {
                if (!regions[i].TryAcquire())
                {
                    MmException.Throw(Errno.EFAULT, $"advise_mr: lkey 0x{sge.Lkey:x} was deregistered");
                }
                Errno e;
                try
                {
                    e = regions[i].Prefetch(sge.Addr, sge.Addr + sge.Length, kind);
                }
                finally
                {
                    regions[i].Release();
                }
                MmException.ThrowIfError(e, $"advise_mr {advice} of [0x{sge.Addr:x}, +0x{sge.Length:x}) in {regions[i]}");
            }
            else
            {
                Device.FaultQueue.Submit(regions[i], null, sge.Addr, sge.Addr + sge.Length, 0, kind, advice: true, waiter: false);
            }
        }
    }

    /// <summary>Deallocates the domain (ibv_dealloc_pd).</summary>
    /// <exception cref="MmException">EBUSY while regions or queue pairs remain.</exception>
    public void Dealloc()
    {
        lock (_lock)
        {
            if (_deallocated)
            {
                return;
            }
            if (_mrs.Count != 0 || _qps.Count != 0)
            {
                MmException.Throw(Errno.EBUSY, $"dealloc_pd: {_mrs.Count} regions and {_qps.Count} queue pairs remain");
            }
            _deallocated = true;
        }
        Device.ForgetPd(this);
    }

    /// <summary>Destroys the domain's queue pairs, deregisters its regions, and deallocates it.</summary>
    public void Dispose()
    {
        QueuePair[] qps;
        MemoryRegion[] mrs;
        lock (_lock)
        {
            qps = [.. _qps];
            mrs = [.. _mrs];
        }
        foreach (QueuePair qp in qps)
        {
            qp.Dispose();
        }
        foreach (MemoryRegion mr in mrs)
        {
            mr.Deregister();
        }
        Dealloc();
    }

    internal void Forget(MemoryRegion mr)
    {
        lock (_lock)
        {
            _mrs.Remove(mr);
        }
    }

    internal void Forget(QueuePair qp)
    {
        lock (_lock)
        {
            _qps.Remove(qp);
        }
    }
}
