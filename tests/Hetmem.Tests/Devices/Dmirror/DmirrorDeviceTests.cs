using Hetmem.Devices.Dmirror;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Dmirror;

public sealed class DmirrorDeviceTests
{
    [Fact]
    public void TheDriverOffersTwoPrivateAndTwoCoherentNodesEachWithOneChunk()
    {
        using var fx = new DmirrorFixture();
        Assert.Equal(DmirrorDriver.DeviceCount, fx.Driver.Devices.Count);
        Assert.Equal(DmirrorMemoryType.DevicePrivate, fx.Driver.Device(0).MemoryType);
        Assert.Equal(DmirrorMemoryType.DevicePrivate, fx.Driver.Device(1).MemoryType);
        Assert.Equal(DmirrorMemoryType.DeviceCoherent, fx.Driver.Device(2).MemoryType);
        Assert.Equal(DmirrorMemoryType.DeviceCoherent, fx.Driver.Device(3).MemoryType);
        foreach (DmirrorDevice d in fx.Driver.Devices)
        {
            Assert.Equal(1, d.ChunkCount);
            Assert.Equal(DmirrorDevice.ChunksReserve, d.ChunkCapacity);
            Assert.Equal((DmirrorDevice.ChunkPages, 0UL), d.FreeListLengths);
            Assert.Equal(d.PageMapType, d.PageMaps[0].Type);
            Assert.Same(d, d.PageMaps[0].Owner);
        }
    }

    [Fact]
    public void OpeningANodeThatDoesNotExistIsEnodev()
    {
        using var fx = new DmirrorFixture();
        MmException ex = Assert.Throws<MmException>(() => fx.Driver.Open(4, fx.Mm));
        Assert.Equal(Errno.ENODEV, ex.Errno);
    }

    [Fact]
    public void AnUnalignedAddressIsEinvalAndTheCommandIsNotCopiedBack()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(4);
        var cmd = new DmirrorCmd { Addr = buf + 8, Ptr = buf, Npages = 1, Cpages = 77, Faults = 88 };
        Assert.Equal(Errno.EINVAL, f.TryIoctl(DmirrorCommand.Read, ref cmd, fx.Cpu));
        Assert.Equal(77UL, cmd.Cpages);
        Assert.Equal(88UL, cmd.Faults);
        MmException ex = Assert.Throws<MmException>(() => f.Ioctl(DmirrorCommand.Read, ref cmd, fx.Cpu));
        Assert.Equal(Errno.EINVAL, ex.Errno);
    }

    [Fact]
    public void ZeroPagesAndWrappingRangesAreEinvalForEveryCommand()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(4);
        foreach (DmirrorCommand c in Enum.GetValues<DmirrorCommand>())
        {
            Assert.Equal(Errno.EINVAL, fx.Cmd(f, c, buf, buf, 0, out _));
            Assert.Equal(Errno.EINVAL, fx.Cmd(f, c, ulong.MaxValue & ~Page.OffsetMask, buf, 2, out _));
        }
        // FLAGS carries the flag word in npages: a zero word is rejected like a zero length.
        Assert.Equal(DmirrorFlags.None, f.Flags);
    }

    [Fact]
    public void AnUnknownCommandIsEinval()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(1);
        Assert.Equal(Errno.EINVAL, fx.Cmd(f, DmirrorCommand.ReadUnlockable, buf, buf, 1, out _));
        Assert.Equal(Errno.EINVAL, fx.Cmd(f, (DmirrorCommand)42, buf, buf, 1, out _));
    }

    [Fact]
    public void ReadingWhereNoVmaIsIsEfaultAndWritingAReadOnlyMappingIsEperm()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(4);
        ulong ro = fx.MapAnon(4, Prot.Read);
        fx.Mm.Munmap(buf + 2 * (ulong)Page.Size, Page.Size);
        Assert.Equal(Errno.EFAULT, fx.Cmd(f, DmirrorCommand.Read, buf, ro, 4, out _));
        Assert.Equal(Errno.EPERM, fx.Cmd(f, DmirrorCommand.Write, ro, buf, 2, out _));
        Assert.Contains("EPERM", f.LastError, StringComparison.Ordinal);
    }

    [Fact]
    public void AUserBufferThatCannotBeWrittenIsEfault()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(4);
        ulong ro = fx.MapAnon(4, Prot.Read);
        Assert.Equal(Errno.EFAULT, fx.Cmd(f, DmirrorCommand.Read, buf, ro, 4, out _));
        Assert.Equal(Errno.EFAULT, fx.Cmd(f, DmirrorCommand.Snapshot, buf, ro, 4, out _));
    }

    [Fact]
    public void AReadFaultsOncePerPassAndASecondReadUsesTheMirror()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(64);
        ulong mirror = fx.MapAnon(64);
        fx.Fill(buf, 64, i => i * 7);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.Read, buf, mirror, 64, out DmirrorCmd c));
        Assert.Equal(64UL, c.Cpages);
        Assert.Equal(1UL, c.Faults);
        Assert.Equal(64, f.MirroredPages);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.Read, buf, mirror, 64, out c));
        Assert.Equal(0UL, c.Faults);
        int[] seen = fx.ReadInts(mirror, 64);
        Assert.All(Enumerable.Range(0, seen.Length), i => Assert.Equal(i * 7, seen[i]));
    }

    [Fact]
    public void AnUnmapErasesExactlyTheMirrorEntriesOfTheUnmappedPages()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(64);
        ulong mirror = fx.MapAnon(64);
        fx.Fill(buf, 64, i => i);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.Read, buf, mirror, 64, out _));
        fx.Mm.Munmap(buf + 16 * (ulong)Page.Size, 16 * (ulong)Page.Size);
        Assert.Equal(48, f.MirroredPages);
        Assert.True(f.TryGetMirrorEntry(buf + 15 * (ulong)Page.Size, out _, out bool w, out _));
        Assert.True(w);
        Assert.False(f.TryGetMirrorEntry(buf + 16 * (ulong)Page.Size, out _, out _, out _));
        Assert.True(f.TryGetMirrorEntry(buf + 32 * (ulong)Page.Size, out _, out _, out _));
    }

    [Fact]
    public void TheInvalidateCallbackIgnoresOnlyMigrateEventsOfItsOwnNode()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(8);
        ulong mirror = fx.MapAnon(8);
        fx.Fill(buf, 8, i => i);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.Read, buf, mirror, 8, out _));
        var ops = (IMmuIntervalNotifierOps)f;
        MmuIntervalNotifier sub = MmuIntervalNotifier.Insert(fx.Mm, buf, 8 * (ulong)Page.Size, new NopOps());
        ulong end = buf + 8 * (ulong)Page.Size;
        Assert.True(ops.Invalidate(sub, new MmuNotifierRange(fx.Mm, buf, end, MmuNotifierEvent.Migrate, Owner: f.Device), 3));
        Assert.Equal(8, f.MirroredPages);
        Assert.True(ops.Invalidate(sub, new MmuNotifierRange(fx.Mm, buf, buf + (ulong)Page.Size, MmuNotifierEvent.Migrate, Owner: fx.Driver.Device(1)), 5));
        Assert.Equal(7, f.MirroredPages);
        Assert.True(ops.Invalidate(sub, new MmuNotifierRange(fx.Mm, buf, end, MmuNotifierEvent.Exclusive, Owner: f.Device), 7));
        Assert.Equal(0, f.MirroredPages);
        Assert.False(sub.ReadRetry(7));
        sub.Remove();
    }

    [Fact]
    public void ANonBlockableInvalidateFailsWhileTheMirrorLockIsHeld()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        var ops = (IMmuIntervalNotifierOps)f;
        MmuIntervalNotifier sub = MmuIntervalNotifier.Insert(fx.Mm, 0x100000, Page.Size, new NopOps());
        var range = new MmuNotifierRange(fx.Mm, 0x100000, 0x101000, MmuNotifierEvent.Unmap, Blockable: false);
        bool? result = null;
        lock (((IDeviceMirror)f).UpdateLock)
        {
            var t = new Thread(() => result = ops.Invalidate(sub, range, 9));
            t.Start();
            t.Join();
        }
        Assert.False(result);
        Assert.True(ops.Invalidate(sub, range, 11));
        sub.Remove();
    }

    [Fact]
    public void SnapshotBytesFollowTheProtTable()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        DmirrorFile coherent = fx.Open(2);
        PhysicalMemory mem = fx.Memory;
        ulong ram = PhysicalMemory.RamFirstPfn + 100;
        ulong own = fx.Driver.Device(0).PageMaps[0].FirstPfn + 3;
        ulong other = fx.Driver.Device(1).PageMaps[0].FirstPfn + 3;
        ulong coh = fx.Driver.Device(2).PageMaps[0].FirstPfn + 3;
        ulong coh3 = fx.Driver.Device(3).PageMaps[0].FirstPfn + 3;
        Assert.Equal(0xFF, f.MakeEntry((ulong)HmmPfnFlags.Error));
        Assert.Equal(0x00, f.MakeEntry(0));
        Assert.Equal(0x11, f.MakeEntry(HmmPfn.Make(mem.ZeroPfn, false, 0)));
        Assert.Equal(0x01, f.MakeEntry(HmmPfn.Make(ram, false, 0)));
        Assert.Equal(0x02, f.MakeEntry(HmmPfn.Make(ram, true, 0)));
        Assert.Equal(0x06, f.MakeEntry(HmmPfn.Make(ram, true, Page.PmdOrder)));
        Assert.Equal(0x09, f.MakeEntry(HmmPfn.Make(ram, false, Page.PudOrder)));
        Assert.Equal(0x22, f.MakeEntry(HmmPfn.Make(own, true, 0)));
        Assert.Equal(0x26, f.MakeEntry(HmmPfn.Make(own, true, Page.PmdOrder)));
        Assert.Equal(0x31, f.MakeEntry(HmmPfn.Make(other, false, 0)));
        Assert.Equal(0x42, coherent.MakeEntry(HmmPfn.Make(coh, true, 0)));
        Assert.Equal(0x51, coherent.MakeEntry(HmmPfn.Make(coh3, false, 0)));
    }

    [Fact]
    public void ASnapshotDescribesEachPageWithoutFaultingAnything()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(40);
        ulong perm = fx.MapAnon(1);
        fx.Mm.Munmap(buf + (ulong)Page.Size, Page.Size);
        _ = fx.Cpu.Read<int>(buf + 2 * (ulong)Page.Size);
        fx.Cpu.Write(buf + 3 * (ulong)Page.Size, 5);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.Snapshot, buf, perm, 40, out DmirrorCmd c));
        Assert.Equal(40UL, c.Cpages);
        byte[] m = new byte[40];
        fx.Cpu.Read(perm, m);
        Assert.Equal(new byte[] { 0x00, 0xFF, 0x11, 0x02, 0x00 }, m[..5]);
        Assert.All(m[5..], b => Assert.Equal(0, b));
        Assert.Equal(0, f.MirroredPages);
        Assert.True(fx.Mm.QueryPte(buf, out _).IsNone);
    }

    [Fact]
    public void FlagsSetsTheFlagWordAndFailAllocFailsOneMigrationAllocation()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(2);
        ulong mirror = fx.MapAnon(2);
        fx.Fill(buf, 2, i => i);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.Flags, buf, mirror, (ulong)DmirrorFlags.FailAlloc, out _));
        Assert.Equal(DmirrorFlags.FailAlloc, f.Flags);
        // The first page stays in system memory, so the read-back through the mirror finds nothing there.
        Assert.Equal(Errno.ENOENT, fx.Cmd(f, DmirrorCommand.MigrateToDevice, buf, mirror, 2, out _));
        Assert.Equal(DmirrorFlags.None, f.Flags);
        Assert.Equal(SwapEntryType.None, fx.Mm.QueryPte(buf, out _).SwapType);
        Assert.Equal(SwapEntryType.DevicePrivate, fx.Mm.QueryPte(buf + (ulong)Page.Size, out _).SwapType);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.MigrateToDevice, buf, mirror, 2, out DmirrorCmd c));
        Assert.Equal(2UL, c.Cpages);
    }

    [Fact]
    public void MigrationCountsDevicePagesAndCloseEvictsThemWithTheirData()
    {
        using var fx = new DmirrorFixture();
        DmirrorDevice dev = fx.Driver.Device(0);
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(16);
        ulong mirror = fx.MapAnon(16);
        fx.Fill(buf, 16, i => i + 1);
        fx.Fill(mirror, 16, _ => 0);
        ulong allocated = dev.AllocatedPages;
        long ramBefore = fx.Memory.UsedFrames;
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.MigrateToDevice, buf, mirror, 16, out DmirrorCmd c));
        Assert.Equal(16UL, c.Cpages);
        Assert.Equal(allocated + 16, dev.AllocatedPages);
        Assert.Equal(16UL, dev.PagesInUse);
        // The source pages were freed and 16 backing pages hold the device copy.
        Assert.Equal(ramBefore, fx.Memory.UsedFrames);
        f.Close();
        Assert.Equal(0UL, dev.PagesInUse);
        Assert.Equal(SwapEntryType.None, fx.Mm.QueryPte(buf, out _).SwapType);
        int[] seen = fx.ReadInts(buf, 16);
        Assert.All(Enumerable.Range(0, seen.Length), i => Assert.Equal(i + 1, seen[i]));
    }

    [Fact]
    public void ReleaseRemovesTheChunksAndTheNextMigrationCreatesOne()
    {
        using var fx = new DmirrorFixture();
        DmirrorDevice dev = fx.Driver.Device(0);
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(4);
        ulong mirror = fx.MapAnon(4);
        fx.Fill(buf, 4, i => i);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.MigrateToDevice, buf, mirror, 4, out _));
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.Release, buf, mirror, 4, out _));
        Assert.Equal(0, dev.ChunkCount);
        Assert.Equal(0, dev.ChunkCapacity);
        Assert.Equal(SwapEntryType.None, fx.Mm.QueryPte(buf, out _).SwapType);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.MigrateToDevice, buf, mirror, 4, out DmirrorCmd c));
        Assert.Equal(4UL, c.Cpages);
        Assert.Equal(1, dev.ChunkCount);
    }

    [Fact]
    public void ACoherentNodeMigratesIntoCpuAddressableMemoryTheCpuReadsInPlace()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(2);
        ulong buf = fx.MapAnon(4);
        ulong mirror = fx.MapAnon(4);
        fx.Fill(buf, 4, i => i * 3);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.MigrateToDevice, buf, mirror, 4, out _));
        Pte e = fx.Mm.QueryPte(buf, out _);
        Assert.True(e.IsPresent);
        Assert.True(f.Device.Owns(e.Pfn));
        int[] seen = fx.ReadInts(buf, 4);
        Assert.All(Enumerable.Range(0, seen.Length), i => Assert.Equal(i * 3, seen[i]));
        Assert.True(f.Device.Owns(fx.Mm.QueryPte(buf, out _).Pfn));
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.MigrateToSystem, buf, mirror, 4, out DmirrorCmd c));
        Assert.Equal(4UL, c.Cpages);
        Assert.True(fx.Memory.IsRam(fx.Mm.QueryPte(buf, out _).Pfn));
    }

    [Fact]
    public void AMigrationOverARangeWithoutAReadableVmaIsEinval()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(4, Prot.None);
        ulong mirror = fx.MapAnon(4);
        Assert.Equal(Errno.EINVAL, fx.Cmd(f, DmirrorCommand.MigrateToDevice, buf, mirror, 4, out _));
        Assert.Equal(Errno.EINVAL, fx.Cmd(f, DmirrorCommand.MigrateToSystem, buf, mirror, 4, out _));
    }

    [Fact]
    public void ExclusiveMapsPagesAtomicUntilTheCpuTouchesThem()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(4);
        ulong mirror = fx.MapAnon(4);
        fx.Fill(buf, 4, i => i);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.Exclusive, buf, mirror, 4, out DmirrorCmd c));
        Assert.Equal(4UL, c.Cpages);
        Assert.True(f.TryGetMirrorEntry(buf, out _, out _, out bool atomic));
        Assert.True(atomic);
        Assert.Equal(Errno.EPERM, fx.Cmd(f, DmirrorCommand.CheckExclusive, buf, mirror, 4, out _));
        fx.Cpu.Write(buf + 8, 1);
        Assert.False(f.TryGetMirrorEntry(buf, out _, out _, out _));
        Assert.Equal(Errno.EPERM, fx.Cmd(f, DmirrorCommand.CheckExclusive, buf, mirror, 4, out _));
        _ = fx.ReadInts(buf, 4);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.CheckExclusive, buf, mirror, 4, out _));
    }

    [Fact]
    public void MmapOfTheDeviceFileGivesAMixedMapOfZeroedPages()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong a = f.Mmap(0, 2 * (ulong)Page.Size, Prot.Read | Prot.Write, MapFlags.Shared);
        Vma? v = fx.Mm.Vmas.Find(a);
        Assert.NotNull(v);
        Assert.Equal(VmaKind.MixedMap, v.Kind);
        Assert.Equal(0, fx.Cpu.Read<int>(a + (ulong)Page.Size));
        f.Close();
        Assert.Throws<MmException>(() => f.Mmap(0, Page.Size, Prot.Read, MapFlags.Shared));
    }

    [Fact]
    public void AClosedFileRejectsCommandsWithEbadf()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(1);
        f.Close();
        f.Close();
        Assert.True(f.IsClosed);
        Assert.Equal(Errno.EBADF, fx.Cmd(f, DmirrorCommand.Read, buf, buf, 1, out _));
    }

    private sealed class NopOps : IMmuIntervalNotifierOps
    {
        public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
        {
            subscription.SetSeq(curSeq);
            return true;
        }
    }
}
