namespace Hetmem.Devices.Rdma;

/// <summary>
/// A classic (pinned) memory region (kernel: ib_umem_get → pin_user_pages(FOLL_LONGTERM)). Placeholder until
/// get_user_pages exists in the mm (AddressSpace.Gup.cs).
/// </summary>
public sealed class PinnedMemoryRegion
{
    private PinnedMemoryRegion()
    {
    }

    internal static MemoryRegion Create(ProtectionDomain pd, ulong addr, ulong length, AccessFlags access)
    {
        MmException.Throw(Errno.EOPNOTSUPP, $"pinned reg_mr of [0x{addr:x}, +0x{length:x}) needs get_user_pages, which the mm does not provide yet (pd of {pd.Device.Name}, {access})");
        return null!;
    }
}
