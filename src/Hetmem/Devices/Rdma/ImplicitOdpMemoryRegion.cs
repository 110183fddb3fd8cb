using Hetmem.Mm;

namespace Hetmem.Devices.Rdma;

/// <summary>
/// An implicit on-demand-paging region covering the whole address space (rdma-core: ibv_reg_mr(pd, NULL, SIZE_MAX,
/// IBV_ACCESS_ON_DEMAND); kernel: mlx5_ib_alloc_implicit_mr and pagefault_implicit_mr). It starts with no span: a fault
/// in a missing 1 GiB slot creates a child span there (with its own interval notifier), and a child whose last
/// translation is invalidated is destroyed by the device's page-fault worker.
/// </summary>
/// <remarks>
/// <para>The children live in a two-level table indexed by VA &gt;&gt; 30 (kernel: the parent KSM mkey's 1 GiB entries and
/// the implicit_children xarray). Concurrent creators converge with compare-and-swap: the loser destroys its child.</para>
/// <para>Locking: table slots are read lock-free and changed with compare-and-swap; each child has its own span lock.
/// The invalidate callback only pushes an emptied child on a lock-free list and wakes the worker; destruction
/// (notifier removal) runs there, never inside the callback.</para>
/// </remarks>
public sealed class ImplicitOdpMemoryRegion : OdpRegionBase, IOdpUmemOwner
{
    /// <summary>Bytes covered by one child (kernel: MLX5_IMR_MTT_SIZE = 1 GiB).</summary>
    public const ulong ChildBytes = 1UL << 30;

    private const int LeafBits = 9;
    private static readonly int s_slots = (int)((AddressSpace.TaskSize + ChildBytes - 1) >> 30);

    private readonly OdpUmem?[]?[] _table = new OdpUmem?[]?[(s_slots + (1 << LeafBits) - 1) >> LeafBits]; // CAS slots
    private OdpUmem? _emptyHead;      // Interlocked: lock-free stack of children an invalidation emptied
    private int _children;            // Interlocked
    private long _created;            // Interlocked
    private long _destroyed;          // Interlocked

    internal ImplicitOdpMemoryRegion(ProtectionDomain pd, AccessFlags access)
        : base(pd, 0, ulong.MaxValue, access)
    {
    }

    /// <inheritdoc/>
    public override MrKind Kind => MrKind.ImplicitOdp;

    /// <summary>Live 1 GiB children.</summary>
    public int ChildCount => Volatile.Read(ref _children);

    /// <summary>Children created since registration.</summary>
    public long ChildrenCreated => Interlocked.Read(ref _created);

    /// <summary>Children destroyed because they became empty.</summary>
    public long ChildrenDestroyed => Interlocked.Read(ref _destroyed);

    /// <inheritdoc/>
    public override long PresentPages
    {
        get
        {
            long n = 0;
            foreach (OdpUmem?[]? leaf in _table)
            {
                if (leaf is null)
                {
                    continue;
                }
                foreach (OdpUmem? c in leaf)
                {
                    n += c?.ValidPages ?? 0;
                }
            }
            return n;
        }
    }

    /// <summary>True when a live child covers <paramref name="va"/>.</summary>
    public bool HasChild(ulong va) => va < AddressSpace.TaskSize && Slot(va >> 30) is { IsDeadUnlocked: false };

    internal override bool Contains(ulong va, ulong length) => va < AddressSpace.TaskSize && length <= AddressSpace.TaskSize - va;

    private OdpUmem? Slot(ulong index)
    {
        OdpUmem?[]? leaf = Volatile.Read(ref _table[index >> LeafBits]);
        return leaf is null ? null : Volatile.Read(ref leaf[index & ((1 << LeafBits) - 1)]);
    }

    internal override OdpUmem? UmemFor(ulong va, bool create, out Errno err)
    {
        err = Errno.Ok;
        if (va >= AddressSpace.TaskSize)
        {
            err = Errno.EFAULT;
            return null;
        }
        ulong index = va >> 30;
        ref OdpUmem?[]? leafRef = ref _table[index >> LeafBits];
        OdpUmem?[]? leaf = Volatile.Read(ref leafRef);
        if (leaf is null)
        {
            if (!create)
            {
                return null;
            }
            Interlocked.CompareExchange(ref leafRef, new OdpUmem?[1 << LeafBits], null);
            leaf = Volatile.Read(ref leafRef)!;
        }
        ref OdpUmem? slot = ref leaf[index & ((1 << LeafBits) - 1)];
        while (true)
        {
            OdpUmem? c = Volatile.Read(ref slot);
            if (c is not null && !c.IsDeadUnlocked)
            {
                return c;
            }
            if (!create)
            {
                return null;
            }
            if (!IsRegistered)
            {
                err = Errno.EFAULT;
                return null;
            }
            ulong start = index << 30;
            ulong end = Math.Min(start + ChildBytes, AddressSpace.TaskSize);
            OdpUmem child;
            try
            {
                child = new OdpUmem(Pd.Space, start, end, Stats, (Access & AccessFlags.HUGETLB) != 0, this);
            }
            catch (MmException ex)
            {
                err = ex.Errno == Errno.EINVAL ? Errno.EFAULT : ex.Errno;
                return null;
            }
            if (Interlocked.CompareExchange(ref slot, child, c) == c)
            {
                Interlocked.Increment(ref _children);
                Interlocked.Increment(ref _created);
                return child;
            }
            child.Destroy();
        }
    }

    /// <inheritdoc/>
    void IOdpUmemOwner.OnEmpty(OdpUmem umem)
    {
        if (Interlocked.CompareExchange(ref umem._emptyQueued, 1, 0) != 0)
        {
            return;
        }
        OdpUmem? head;
        do
        {
            head = Volatile.Read(ref _emptyHead);
            umem._nextEmpty = head;
        }
        while (Interlocked.CompareExchange(ref _emptyHead, umem, head) != head);
        Device.FaultQueue.Kick();
    }

    /// <summary>
    /// Destroys the children an invalidation emptied and that are still empty (kernel: destroy_unused_implicit_child_mr,
    /// run from a work item). Runs on the device's page-fault worker; callable directly. Not from a notifier callback.
    /// </summary>
    /// <returns>Children destroyed.</returns>
    internal int CollectEmptyChildren()
    {
        OdpUmem? list = Interlocked.Exchange(ref _emptyHead, null);
        int n = 0;
        while (list is not null)
        {
            OdpUmem c = list;
            list = c._nextEmpty;
            c._nextEmpty = null;
            Volatile.Write(ref c._emptyQueued, 0);
            if (!c.TryKillIfEmpty())
            {
                continue;
            }
            ulong index = c.Start >> 30;
            OdpUmem?[] leaf = Volatile.Read(ref _table[index >> LeafBits])!;
            Interlocked.CompareExchange(ref leaf[index & ((1 << LeafBits) - 1)], null, c);
            Interlocked.Decrement(ref _children);
            Interlocked.Increment(ref _destroyed);
            n++;
        }
        return n;
    }

    private protected override void TearDown()
    {
        foreach (OdpUmem?[]? leaf in _table)
        {
            if (leaf is null)
            {
                continue;
            }
            for (int i = 0; i < leaf.Length; i++)
            {
                OdpUmem? c = Interlocked.Exchange(ref leaf[i], null);
                if (c is not null && !c.IsDeadUnlocked)
                {
                    c.Destroy();
                    Interlocked.Decrement(ref _children);
                }
            }
        }
        Volatile.Write(ref _emptyHead, null);
        Device.ForgetImplicit(this);
    }
}
