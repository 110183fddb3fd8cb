using Hetmem.Devices.Dmirror;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Tests.Devices.Dmirror;

namespace Hetmem.Tests.SelfTests;

/// <summary>
/// The coherent dmirror node hands out 512-page device folios (a deliberate difference from lib/test_hmm.c, whose
/// coherent node never holds a THP), which hmm.hmm_device_coherent.migrate_anon_huge_err relies on.
/// </summary>
public sealed class CoherentDeviceThpTests
{
    [Fact]
    public void AHugePageMigratedToACoherentNodeIsOnePmdMappedAlignedDeviceFolioAndItsPagesReturnOnTheWayBack()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(2);
        DmirrorDevice dev = f.Device;
        ulong size = Page.PmdSize;
        ulong raw = fx.Mm.Mmap(0, 2 * size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        ulong map = (raw + size - 1) & ~(size - 1);
        fx.Mm.Madvise(map, size, Advice.HugePage);
        fx.Fill(map, 512, i => i);
        ulong mirror = fx.MapAnon(512);

        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.MigrateToDevice, map, mirror, 512, out DmirrorCmd c));
        Assert.Equal(512UL, c.Cpages);
        Pte pte = fx.Mm.QueryPte(map, out int order);
        Assert.Equal(Page.PmdOrder, order);
        ulong head = pte.Pfn;
        Assert.True(dev.Owns(head), $"PFN 0x{head:x} is not a page of the coherent node");
        Assert.True(Page.IsAligned(head, 512UL), $"device folio head 0x{head:x} is not 2 MiB aligned");
        Assert.Equal(512UL, dev.PagesInUse);
        Assert.Equal((DmirrorDevice.ChunkPages - 512, 0UL), dev.FreeListLengths);
        Assert.Equal(Enumerable.Range(0, 512 * 1024).ToArray(), fx.ReadInts(map, 512));

        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.MigrateToSystem, map, mirror, 512, out _));
        Assert.False(dev.Owns(fx.Mm.QueryPte(map, out _).Pfn), "the page is still on the device after MIGRATE_TO_SYS");
        Assert.Equal(Enumerable.Range(0, 512 * 1024).ToArray(), fx.ReadInts(map, 512));
        Assert.Equal(0UL, dev.PagesInUse);
        Assert.Equal((DmirrorDevice.ChunkPages, 0UL), dev.FreeListLengths);
    }
}
