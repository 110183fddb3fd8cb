namespace Hetmem.Devices.Dmirror;

/// <summary>
/// The commands of the HMM test device (kernel: the <c>HMM_DMIRROR_*</c> ioctls of lib/test_hmm_uapi.h,
/// <c>_IOWR('H', n, struct hmm_dmirror_cmd)</c>); the value is the ioctl number n.
/// </summary>
public enum DmirrorCommand
{
    /// <summary>The device reads [addr, +npages) into ptr, faulting its mirror as needed (HMM_DMIRROR_READ).</summary>
    Read = 0x00,
    /// <summary>The device writes ptr into [addr, +npages), faulting for write as needed (HMM_DMIRROR_WRITE).</summary>
    Write = 0x01,
    /// <summary>Migrate the range to this device's memory, then read it back through the mirror (HMM_DMIRROR_MIGRATE_TO_DEV).</summary>
    MigrateToDevice = 0x02,
    /// <summary>Migrate this device's pages in the range back to system memory (HMM_DMIRROR_MIGRATE_TO_SYS).</summary>
    MigrateToSystem = 0x03,
    /// <summary>Describe the CPU page table of the range, one byte per page, without faulting (HMM_DMIRROR_SNAPSHOT).</summary>
    Snapshot = 0x04,
    /// <summary>Take device-exclusive (atomic) access to each page, then read the range (HMM_DMIRROR_EXCLUSIVE).</summary>
    Exclusive = 0x05,
    /// <summary>EPERM when any page of the range is still held exclusively (HMM_DMIRROR_CHECK_EXCLUSIVE).</summary>
    CheckExclusive = 0x06,
    /// <summary>Evict and free every memory chunk of the device (HMM_DMIRROR_RELEASE).</summary>
    Release = 0x07,
    /// <summary>Set this file's flag word to npages (HMM_DMIRROR_FLAGS).</summary>
    Flags = 0x08,
    /// <summary>Reserved: a proposed unlockable read (HMM_DMIRROR_READ_UNLOCKABLE); rejected with EINVAL like any unknown command.</summary>
    ReadUnlockable = 0x09,
}

/// <summary>
/// The argument of every dmirror command (kernel: struct hmm_dmirror_cmd, five u64 fields). On success the device
/// updates <see cref="Cpages"/> and <see cref="Faults"/>; on failure the caller's copy is left untouched, as the
/// kernel does not copy the structure back.
/// </summary>
public struct DmirrorCmd
{
    /// <summary>In: start virtual address (page aligned) the device acts on.</summary>
    public ulong Addr;
    /// <summary>In: user buffer the device copies to (read, migrate, exclusive, snapshot: one byte a page) or from (write).</summary>
    public ulong Ptr;
    /// <summary>In: number of pages; for <see cref="DmirrorCommand.Flags"/> the flag word.</summary>
    public ulong Npages;
    /// <summary>Out: pages copied, migrated or described.</summary>
    public ulong Cpages;
    /// <summary>Out: fault passes the device needed to fill its mirror.</summary>
    public ulong Faults;
}

/// <summary>Snapshot byte encoding (kernel: HMM_DMIRROR_PROT_*).</summary>
public static class DmirrorProt
{
    /// <summary>No valid entry can exist (no VMA, unreadable, I/O or PFN-map VMA); used alone.</summary>
    public const byte Error = 0xFF;
    /// <summary>Not populated or no access; also the base of an ordinary present page.</summary>
    public const byte None = 0x00;
    /// <summary>Present, read-only.</summary>
    public const byte Read = 0x01;
    /// <summary>Present, writable.</summary>
    public const byte Write = 0x02;
    /// <summary>Mapped by a PMD-level huge entry.</summary>
    public const byte Pmd = 0x04;
    /// <summary>Mapped by a PUD-level huge entry.</summary>
    public const byte Pud = 0x08;
    /// <summary>The shared zero page.</summary>
    public const byte Zero = 0x10;
    /// <summary>A device-private page of this device.</summary>
    public const byte DevPrivateLocal = 0x20;
    /// <summary>A device-private page of another device.</summary>
    public const byte DevPrivateRemote = 0x30;
    /// <summary>A device-coherent page of this device.</summary>
    public const byte DevCoherentLocal = 0x40;
    /// <summary>A device-coherent page of another device.</summary>
    public const byte DevCoherentRemote = 0x50;
}

/// <summary>Flag bits of <see cref="DmirrorCommand.Flags"/> (kernel: HMM_DMIRROR_FLAG_*).</summary>
[Flags]
public enum DmirrorFlags : ulong
{
    /// <summary>No flag.</summary>
    None = 0,
    /// <summary>The next device-memory allocation of a migration (either direction) fails once (HMM_DMIRROR_FLAG_FAIL_ALLOC).</summary>
    FailAlloc = 1UL << 0,
}

/// <summary>Memory type of a dmirror device (kernel: HMM_DMIRROR_MEMORY_DEVICE_*; 0 is reserved as "unset").</summary>
public enum DmirrorMemoryType
{
    /// <summary>Device-private memory the CPU cannot address (nodes 0 and 1).</summary>
    DevicePrivate = 1,
    /// <summary>Device-coherent memory the CPU maps directly (nodes 2 and 3).</summary>
    DeviceCoherent = 2,
}
