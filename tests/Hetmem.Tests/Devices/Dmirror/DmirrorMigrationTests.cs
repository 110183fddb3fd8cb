using Hetmem.Devices.Dmirror;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Dmirror;

/// <summary>
/// The core behaviours the dmirror migration paths depend on. Each started as a minimal reproduction of a bug found
/// outside the dmirror team's files while porting the HMM self-tests; the messages still name the file to look at if
/// one of them regresses.
/// </summary>
public sealed class DmirrorMigrationTests
{
    private static ulong ThpBuffer(DmirrorFixture fx, out ulong map)
    {
        ulong size = Page.PmdSize;
        ulong raw = fx.Mm.Mmap(0, 2 * size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        map = (raw + size - 1) & ~(size - 1);
        fx.Mm.Madvise(map, size, Advice.HugePage);
        fx.Fill(map, 512, i => i);
        return raw;
    }

    [Fact]
    public void APartialMunmapOfADeviceThpKeepsTheRestOfItsData()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ThpBuffer(fx, out ulong map);
        ulong mirror = fx.MapAnon(512);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.MigrateToDevice, map, mirror, 512, out _));
        fx.Mm.QueryPte(map, out int order);
        Assert.Equal(Page.PmdOrder, order);
        fx.Mm.Munmap(map, 1UL << 20);
        Pte rest = fx.Mm.QueryPte(map + (1UL << 20), out _);
        Assert.True(rest.SwapType == SwapEntryType.DevicePrivate,
            "AddressSpace.Mmap.cs SplitHugeAtLocked: a PMD-level device-private entry straddling an munmap/mremap boundary is zapped " +
            $"whole instead of split (SplitHugePmd handles device-private PMDs); the kept half is lost (entry now {rest})");
        Assert.Equal(1 << 18, fx.Cpu.Read<int>(map + (1UL << 20)));
    }

    [Fact]
    public void MigrateVmaCollectsADevicePrivatePageThatForkShared()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(1);
        ulong mirror = fx.MapAnon(1);
        fx.Fill(buf, 1, i => i);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.MigrateToDevice, buf, mirror, 1, out _));
        AddressSpace child = fx.Mm.Fork();
        try
        {
            ulong cpages;
            using (fx.Mm.MmapLock.Read())
            {
                var args = new MigrateVma
                {
                    Vma = fx.Mm.Vmas.Find(buf)!,
                    Start = buf,
                    End = buf + (ulong)Page.Size,
                    Src = new ulong[1],
                    Dst = new ulong[1],
                    PgmapOwner = f.Device,
                    Flags = MigrateVmaSelect.DevicePrivate,
                };
                Assert.Equal(Errno.Ok, args.Setup());
                cpages = args.Cpages;
                args.Pages();
                args.Finalize();
            }
            Assert.True(cpages == 1,
                "MigrateVma.cs UnmapCheck: a device-private page mapped by parent and child after fork is never collected (MapCount must be 1); " +
                "the kernel unmaps every mapping with try_to_migrate. A CPU fault on such a page therefore never converges (anon_write_child, hmm_cow_in_device).");
        }
        finally
        {
            child.Exit();
        }
    }

    [Fact]
    public void AThpWhoseDeviceAllocationFailedMigratesAsBasePages()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ThpBuffer(fx, out ulong map);
        ulong mirror = fx.MapAnon(512);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.Flags, map, mirror, (ulong)DmirrorFlags.FailAlloc, out _));
        Errno e = fx.Cmd(f, DmirrorCommand.MigrateToDevice, map, mirror, 512, out DmirrorCmd c);
        Assert.True(e == Errno.Ok && c.Cpages == 512,
            "MigrateVma.cs Pages: a compound (THP) source whose destination entries are 512 base pages is dropped instead of split " +
            $"(kernel: migrate_vma_split_pages); migrate_anon_huge_err needs the split. Got {e}, {f.LastError}");
    }

    [Fact]
    public void TheHugeZeroPageMigratesAsBasePagesWhenNoDeviceThpIsAvailable()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong size = Page.PmdSize;
        ulong raw = fx.Mm.Mmap(0, 2 * size, Prot.Read, MapFlags.Private | MapFlags.Anonymous);
        ulong map = (raw + size - 1) & ~(size - 1);
        fx.Mm.Madvise(map, size, Advice.HugePage);
        Assert.Equal(0, fx.Cpu.Read<int>(map));
        ulong mirror = fx.MapAnon(512);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.Flags, map, mirror, (ulong)DmirrorFlags.FailAlloc, out _));
        Errno e = fx.Cmd(f, DmirrorCommand.MigrateToDevice, map, mirror, 512, out DmirrorCmd c);
        Assert.True(e == Errno.Ok && c.Cpages == 512,
            "MigrateVma.cs Pages/TryInsertHole: a compound hole backed by the huge zero PMD cannot take 512 base destinations " +
            $"(the PMD is never split, so no PTE slot exists); migrate_anon_huge_zero_err needs it. Got {e}, {f.LastError}");
    }

    [Fact]
    public void ADeviceThpRemappedToAnUnalignedAddressFaultsBackWithItsData()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong size = Page.PmdSize;
        ulong raw = fx.Mm.Mmap(0, 8 * size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        ulong map = (raw + size - 1) & ~(size - 1);
        fx.Mm.Madvise(map, size, Advice.HugePage);
        fx.Fill(map, 512, i => i);
        ulong mirror = fx.MapAnon(512);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.MigrateToDevice, map, mirror, 512, out _));
        Assert.Equal(SwapEntryType.DevicePrivate, fx.Mm.QueryPte(map, out int order).SwapType);
        Assert.Equal(Page.PmdOrder, order);
        ulong target = map + 2 * size + (1UL << 20);
        Assert.Equal(target, fx.Mm.Mremap(map, size, size, MremapFlags.MayMove | MremapFlags.Fixed, target));
        Assert.Equal(SwapEntryType.DevicePrivate, fx.Mm.QueryPte(target, out _).SwapType);
        // The 512 PTEs now span two page tables; each CPU fault migrates one page back after the core splits the folio
        // (AddressSpace.Migrate.cs TrySplitMappedCompoundAt).
        int[] seen = fx.ReadInts(target, 512);
        Assert.All(Enumerable.Range(0, seen.Length), i => Assert.Equal(i, seen[i]));
        Assert.Equal(0UL, f.Device.PagesInUse);
    }
}
