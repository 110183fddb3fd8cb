using Hetmem.Physical;

namespace Hetmem.Devices.Rdma;

/// <summary>
/// An explicit on-demand-paging region over [<see cref="MemoryRegion.Addr"/>, +<see cref="MemoryRegion.Length"/>)
/// (kernel: rxe_odp_mr_init_user / mlx5 ODP MR over ib_umem_odp_get). Nothing is pinned: the NIC keeps one translation
/// per 4 KiB page, filled on demand and zapped by the region's <c>MmuIntervalNotifier</c>; pages already present on
/// the CPU are snapshotted at registration (rxe_odp_init_pages / mlx5 SNAPSHOT | ENABLE).
/// </summary>
/// <remarks>Locking: see <see cref="OdpUmem"/>: one span lock (umem_mutex) held across every access of the region.</remarks>
public sealed class OdpMemoryRegion : OdpRegionBase
{
    private readonly OdpUmem _umem;   // immutable

    internal OdpMemoryRegion(ProtectionDomain pd, ulong addr, ulong length, AccessFlags access)
        : base(pd, addr, length, access)
    {
        ulong start = Page.AlignDown(addr, Page.Size);
        ulong end = Page.AlignUp(addr + length, Page.Size);
        _umem = new OdpUmem(pd.Space, start, end, Stats, (access & AccessFlags.HUGETLB) != 0, owner: null);
        // Registration snapshot: what the CPU has mapped now is usable without a fault. Failures only leave pages absent.
        _umem.Fault(start, end, OdpFaultKind.Snapshot, out _);
    }

    /// <inheritdoc/>
    public override MrKind Kind => MrKind.Odp;

    /// <inheritdoc/>
    public override long PresentPages => _umem.ValidPages;

    internal OdpUmem Umem => _umem;

    internal override OdpUmem? UmemFor(ulong va, bool create, out Errno err)
    {
        err = Errno.Ok;
        return _umem;
    }

    private protected override void TearDown() => _umem.Destroy();
}
