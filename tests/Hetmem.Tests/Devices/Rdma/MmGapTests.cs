using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Tests.Devices.Rdma;

/// <summary>Behaviour the RDMA suite depends on that lives in other layers (failing here names a bug there).</summary>
public sealed class MmGapTests
{
    [Fact]
    public void MmapOfADaxFileIsPlacedOnAPmdBoundaryLikeThpGetUnmappedArea()
    {
        using var dir = new RdmaTempDir();
        using var memory = new PhysicalMemory(16UL << 20);
        var mm = new AddressSpace(memory);
        using var ns = new DaxNamespace(memory, dir.File("pmem-align"), 16UL << 20);
        using DaxFileSystem fs = DaxFileSystem.Format(ns);
        using FileHandle f = fs.Create("f");
        f.Truncate(4UL << 20);
        mm.Mmap(0, 3 * Page.Size, Prot.Read, MapFlags.Private | MapFlags.Anonymous); // leaves the top-down cursor unaligned
        ulong a = mm.Mmap(0, 4UL << 20, Prot.Read | Prot.Write, MapFlags.Shared, f.Inode, 0, FileAccess.ReadWrite);
        mm.Exit();
        Assert.True(Page.IsAligned(a, Page.PmdSize),
            $"BUG in src/Hetmem/Mm/AddressSpace.Mmap.cs (GetUnmappedAreaLocked): a 4 MiB mapping of a DAX file was placed at 0x{a:x}, " +
            "not on a 2 MiB boundary. The kernel's DAX file systems use thp_get_unmapped_area (ext4/xfs .get_unmapped_area) so the " +
            "file's 2 MiB extents can be mapped with PMD entries; without it DAX and RDMA ODP over DAX fall back to 4 KiB entries " +
            "unless the caller passes an aligned hint.");
    }
}
