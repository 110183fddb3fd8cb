using Hetmem.Physical;

namespace Hetmem.Devices.Rdma;

/// <summary>Outcome of a region access by the NIC.</summary>
internal enum MrStatus
{
    /// <summary>Done.</summary>
    Ok,
    /// <summary>The access is not allowed or a page could not be made present (the errno says why).</summary>
    AccessError,
    /// <summary>The receiver-not-ready budget ran out while a fault was serviced.</summary>
    RnrExceeded,
    /// <summary>Writing back persistent memory failed.</summary>
    IoError,
}

/// <summary>How the NIC waits for a page fault it cannot take itself (responder: RNR-like back-off; local: synchronous).</summary>
internal interface IOdpFaultWaiter
{
    /// <summary>
    /// An access to <paramref name="mr"/> found <paramref name="missing"/> without a usable translation: get it faulted and
    /// return <see cref="MrStatus.Ok"/> to retry the access, or the failure. <paramref name="round"/> counts the rounds
    /// of this access so far.
    /// </summary>
    MrStatus WaitForFault(OdpRegionBase mr, OdpUmem umem, ulong missing, ulong accessEnd, OdpFaultKind kind, int round, out Errno err);
}

/// <summary>
/// A registered memory region (rdma-core: struct ibv_mr; kernel: struct ib_mr + ib_umem). Created by
/// <see cref="ProtectionDomain.RegMr"/>; its <see cref="Lkey"/> names it in local scatter/gather lists and its
/// <see cref="Rkey"/> in remote requests. Deregistering waits for accesses in flight, then releases the memory.
/// </summary>
/// <remarks>
/// Locking: <c>_users</c> and <c>_dead</c> are atomic: an access takes a use with <see cref="TryAcquire"/> after finding
/// the region by key, and <see cref="Deregister"/> removes the key, then waits for the uses to drain (kernel: mlx5's
/// mkey SRCU / the rxe MR reference). The data path of each kind documents its own lock.
/// </remarks>
public abstract class MemoryRegion : IDisposable
{
    private int _users;     // Interlocked: accesses in flight
    private int _dead;      // Interlocked: 1 once deregistration started

    private protected MemoryRegion(ProtectionDomain pd, ulong addr, ulong length, AccessFlags access)
    {
        Pd = pd;
        Addr = addr;
        Length = length;
        Access = access;
    }

    /// <summary>The protection domain.</summary>
    public ProtectionDomain Pd { get; }
    /// <summary>The device.</summary>
    public RdmaDevice Device => Pd.Device;
    /// <summary>First registered address (ibv_mr.addr).</summary>
    public ulong Addr { get; }
    /// <summary>Registered bytes (ibv_mr.length); <see cref="ulong.MaxValue"/> for implicit ODP.</summary>
    public ulong Length { get; }
    /// <summary>Access rights.</summary>
    public AccessFlags Access { get; }
    /// <summary>Local key (ibv_mr.lkey).</summary>
    public uint Lkey { get; internal set; }
    /// <summary>Remote key (ibv_mr.rkey); equal to <see cref="Lkey"/>, as mlx5 and rxe hand out one key for both.</summary>
    public uint Rkey => Lkey;
    /// <summary>Pinned, ODP or implicit ODP.</summary>
    public abstract MrKind Kind { get; }
    /// <summary>ODP statistics (all zero for a pinned region).</summary>
    public OdpStats Stats { get; } = new();
    /// <summary>True until <see cref="Deregister"/>.</summary>
    public bool IsRegistered => Volatile.Read(ref _dead) == 0;

    /// <summary>
    /// Deregisters the region (ibv_dereg_mr): the key stops resolving at once, accesses in flight finish, then the
    /// memory is released (ODP: the notifier is removed; pinned: the pages are unpinned, dirtied when writable).
    /// Idempotent.
    /// </summary>
    public void Deregister()
    {
        if (Interlocked.Exchange(ref _dead, 1) != 0)
        {
            return;
        }
        Device.FreeKey(this);
        var spin = new SpinWait();
        while (Volatile.Read(ref _users) != 0)
        {
            spin.SpinOnce(sleep1Threshold: 10);
        }
        TearDown();
        Pd.Forget(this);
    }

    /// <summary>Same as <see cref="Deregister"/>.</summary>
    public void Dispose() => Deregister();

    /// <inheritdoc/>
    public override string ToString() => $"mr(lkey=0x{Lkey:x}, {Kind}, [0x{Addr:x}, +0x{Length:x}), {Access})";

    /// <summary>Takes a use for an access; false once deregistration started.</summary>
    internal bool TryAcquire()
    {
        Interlocked.Increment(ref _users);
        if (Volatile.Read(ref _dead) != 0)
        {
            Interlocked.Decrement(ref _users);
            return false;
        }
        return true;
    }

    /// <summary>Drops a use taken by <see cref="TryAcquire"/>.</summary>
    internal void Release() => Interlocked.Decrement(ref _users);

    /// <summary>True when [va, va + length) lies inside the region (kernel: mr_check_range).</summary>
    internal virtual bool Contains(ulong va, ulong length) => va >= Addr && length <= Length && va - Addr <= Length - length;

    /// <summary>Releases the memory after the last access (kernel: the driver's dereg_mr).</summary>
    private protected abstract void TearDown();

    /// <summary>Copies [va, +dst.Length) of the region into <paramref name="dst"/>. Bounds were checked.</summary>
    internal abstract MrStatus Read(ulong va, Span<byte> dst, IOdpFaultWaiter waiter, out Errno err);

    /// <summary>Copies <paramref name="src"/> into [va, +src.Length) of the region. Bounds and rights were checked.</summary>
    internal abstract MrStatus Write(ulong va, ReadOnlySpan<byte> src, IOdpFaultWaiter waiter, out Errno err);

    /// <summary>A 64-bit atomic at 8-byte-aligned <paramref name="va"/>.</summary>
    internal abstract MrStatus Atomic(ulong va, OdpAtomic op, ulong a, ulong b, out ulong original, IOdpFaultWaiter waiter, out Errno err);

    /// <summary>Makes [va, +length) persistent: DAX blocks are written back to their namespace.</summary>
    internal abstract MrStatus Flush(ulong va, ulong length, IOdpFaultWaiter waiter, out Errno err);

    /// <summary>The host memory the region's frames live in.</summary>
    private protected PhysicalMemory Memory => Pd.Space.Memory;
}
