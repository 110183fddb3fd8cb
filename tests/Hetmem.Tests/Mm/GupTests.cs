using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using Hetmem.Tests.Hmm;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

[Collection("long-term pin migrator")]
public class GupTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    [Fact]
    public void PinnedPagesSurviveMunmapUntilUnpinned()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 4 * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        for (ulong i = 0; i < 4; i++)
        {
            cpu.Write(a + i * Kib4, 0x100 + (long)i);
        }
        var pfns = new ulong[4];
        Assert.Equal(Errno.Ok, mm.GetUserPages(a, 4, GupFlags.Pin | GupFlags.Write | GupFlags.LongTerm, pfns, out int done));
        Assert.Equal(4, done);
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(mm.QueryPte(a + (ulong)i * Kib4, out _).Pfn, pfns[i]);
            Assert.Equal(2, bed.Memory.Frame(pfns[i]).RefCount);
        }
        long used = bed.Memory.UsedFrames;
        mm.Munmap(a, 4 * Kib4);
        Assert.True(bed.Memory.UsedFrames >= used - 1);   // only the page table may go; the pinned pages stay
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(1, bed.Memory.Frame(pfns[i]).RefCount);
            Assert.Equal(0, bed.Memory.Frame(pfns[i]).MapCount);
            Assert.Equal(0x100 + i, BitConverter.ToInt64(bed.Memory.FrameSpan(pfns[i])));
        }
        long before = bed.Memory.UsedFrames;
        mm.UnpinUserPages(pfns, makeDirty: true);
        Assert.Equal(before - 4, bed.Memory.UsedFrames);
    }

    [Fact]
    public void AWritePinBreaksCowSoTheCpuAndThePinSeeTheSamePage()
    {
        using var bed = new MmTestBed();
        AddressSpace parent = bed.NewSpace();
        ulong a = parent.Mmap(0, Kib4, Rw, Anon);
        Cpu pc = bed.Cpu(parent);
        pc.Write(a, 1L);
        AddressSpace child = bed.Fork(parent);
        var pfns = new ulong[1];
        Assert.Equal(Errno.Ok, parent.GetUserPages(a, 1, GupFlags.Pin | GupFlags.Write, pfns, out _));
        Assert.NotEqual(child.QueryPte(a, out _).Pfn, pfns[0]);
        Assert.Equal(pfns[0], parent.QueryPte(a, out _).Pfn);
        Assert.True(parent.QueryPte(a, out _).IsWritable);
        // A DMA write lands where the parent's CPU reads it, and the child does not see it.
        BitConverter.TryWriteBytes(bed.Memory.FrameSpan(pfns[0]), 99L);
        Assert.Equal(99L, pc.Read<long>(a));
        pc.Write(a + 8, 5L);   // the CPU keeps writing the pinned page (no new COW)
        Assert.Equal(pfns[0], parent.QueryPte(a, out _).Pfn);
        Assert.Equal(1L, bed.Cpu(child).Read<long>(a));
        parent.UnpinUserPages(pfns, makeDirty: true);
    }

    [Fact]
    public void AReadPinOfAPageSharedWithAChildUnsharesIt()
    {
        using var bed = new MmTestBed();
        AddressSpace parent = bed.NewSpace();
        ulong a = parent.Mmap(0, Kib4, Rw, Anon);
        Cpu pc = bed.Cpu(parent);
        pc.Write(a, 1L);
        AddressSpace child = bed.Fork(parent);
        var pfns = new ulong[1];
        Assert.Equal(Errno.Ok, parent.GetUserPages(a, 1, GupFlags.Pin, pfns, out _));
        Assert.NotEqual(child.QueryPte(a, out _).Pfn, pfns[0]);
        // A later write by the child cannot change what the pin sees.
        bed.Cpu(child).Write(a, 2L);
        Assert.Equal(1L, BitConverter.ToInt64(bed.Memory.FrameSpan(pfns[0])));
        parent.UnpinUserPages(pfns, makeDirty: false);
    }

    [Fact]
    public void AReadGupOfUntouchedMemoryReturnsTheZeroPage()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 2 * Kib4, Rw, Anon);
        var pfns = new ulong[2];
        Assert.Equal(Errno.Ok, mm.GetUserPages(a, 2, GupFlags.None, pfns, out int done));
        Assert.Equal(2, done);
        Assert.All(pfns, p => Assert.Equal(bed.Memory.ZeroPfn, p));
        mm.UnpinUserPages(pfns, makeDirty: false);
        Assert.Equal(1, bed.Memory.Frame(bed.Memory.ZeroPfn).RefCount);
    }

    [Fact]
    public void GupRefusesHolesSpecialMappingsAndMissingPermissionAndReturnsPartialCounts()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 4 * Kib4, Rw, Anon);
        var pfns = new ulong[8];
        Assert.Equal(Errno.EFAULT, mm.GetUserPages(a + 4 * Kib4, 1, GupFlags.None, pfns, out int done));
        Assert.Equal(0, done);
        Assert.Equal(Errno.EINVAL, mm.GetUserPages(a, 9, GupFlags.None, pfns, out _));
        Assert.Equal(Errno.EINVAL, mm.GetUserPages(a, -1, GupFlags.None, pfns, out _));
        Assert.Equal(Errno.EFAULT, mm.GetUserPages(AddressSpace.TaskSize - Kib4, 2, GupFlags.None, pfns, out _));
        Assert.Equal(Errno.Ok, mm.GetUserPages(a, 0, GupFlags.None, pfns, out done));
        Assert.Equal(0, done);
        // Crossing the end of the VMA: the first pages are returned, as the kernel does.
        Assert.Equal(Errno.Ok, mm.GetUserPages(a + 2 * Kib4, 4, GupFlags.Write, pfns, out done));
        Assert.Equal(2, done);
        mm.UnpinUserPages(pfns.AsSpan(0, done), makeDirty: false);
        mm.Mprotect(a, Kib4, Prot.Read);
        Assert.Equal(Errno.EFAULT, mm.GetUserPages(a, 1, GupFlags.Write, pfns, out _));
        mm.Mprotect(a, Kib4, Prot.None);
        Assert.Equal(Errno.EFAULT, mm.GetUserPages(a, 1, GupFlags.None, pfns, out _));
        ulong raw = bed.Memory.Allocate(0, zero: true);
        ulong io = mm.MapPfnRange(0, raw, 1, Rw);
        Assert.Equal(Errno.EFAULT, mm.GetUserPages(io, 1, GupFlags.None, pfns, out _));
        mm.Munmap(io, Kib4);
        bed.Memory.Put(raw);
    }

    [Fact]
    public void AWriteGupOfASharedFileMarksItDirtyAndUnpinWithDirtyMarksItAgain()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        using FileHandle fh = bed.PageCache.Create("gup");
        fh.Truncate(2 * Kib4);
        ulong a = mm.MmapFile(0, 2 * Kib4, Rw, MapFlags.Shared, fh);
        var pfns = new ulong[2];
        Assert.Equal(Errno.Ok, mm.GetUserPages(a, 2, GupFlags.Pin | GupFlags.Write, pfns, out _));
        Assert.True(bed.Memory.Frame(pfns[1]).Has(FrameFlags.Dirty));
        fh.Fsync();
        Assert.False(bed.Memory.Frame(pfns[1]).Has(FrameFlags.Dirty));
        bed.Memory.FrameSpan(pfns[1])[0] = 7;   // the "device" writes
        mm.UnpinUserPages(pfns, makeDirty: true);
        Assert.True(bed.Memory.Frame(mm.QueryPte(a + Kib4, out _).Pfn).Has(FrameFlags.Dirty));
        fh.Fsync();
        Assert.Equal(7, File.ReadAllBytes(((PageCacheFile)fh.Inode).HostPath)[Kib4]);
    }

    [Fact]
    public void ALongTermPinOfFsDaxIsRefusedButAShortTermOneWorks()
    {
        using var bed = new MmTestBed();
        DaxFileSystem fs = bed.Dax(16 * Mib);
        using FileHandle fh = fs.Create("pin");
        fh.Truncate(Page.PmdSize);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.MmapFile(0x6000_0000_0000, Page.PmdSize, Rw, MapFlags.Shared | MapFlags.Fixed, fh);
        var pfns = new ulong[2];
        Assert.Equal(Errno.EOPNOTSUPP, mm.GetUserPages(a, 2, GupFlags.Pin | GupFlags.LongTerm | GupFlags.Write, pfns, out int done));
        Assert.Equal(0, done);
        Assert.Equal(Errno.Ok, mm.GetUserPages(a + 100 * Kib4, 2, GupFlags.Pin | GupFlags.Write, pfns, out done));
        Assert.Equal(2, done);
        mm.QueryPte(a, out int order);
        Assert.Equal(Page.PmdOrder, order);
        Assert.Equal(mm.QueryPte(a, out _).Pfn + 101, pfns[1]);   // the 4 KiB subpage of the PMD
        mm.UnpinUserPages(pfns, makeDirty: true);
    }

    [Fact]
    public void ADevicePrivatePageIsFaultedBackToRamBeforeItIsPinned()
    {
        using var bed = new MmTestBed();
        using var dev = new MigrateTestDevice(bed.Memory, 64);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 2 * Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a + Kib4, 4242L);
        Assert.Equal(2, dev.MigrateToDevice(mm, a, a + 2 * Kib4));
        Assert.Equal(SwapEntryType.DevicePrivate, mm.QueryPte(a + Kib4, out _).SwapType);
        var pfns = new ulong[2];
        Assert.Equal(Errno.Ok, mm.GetUserPages(a, 2, GupFlags.Pin | GupFlags.LongTerm, pfns, out int done));
        Assert.Equal(2, done);
        Assert.True(dev.MigrateToRamCalls >= 2);
        Assert.All(pfns, p => Assert.True(bed.Memory.IsRam(p)));
        Assert.Equal(4242L, BitConverter.ToInt64(bed.Memory.FrameSpan(pfns[1])));
        mm.UnpinUserPages(pfns, makeDirty: false);
        Assert.Equal(4242L, cpu.Read<long>(a + Kib4));
        mm.Exit();
    }

    [Fact]
    public void ALongTermPinMigratesDeviceCoherentPagesThroughTheRegisteredHook()
    {
        using var bed = new MmTestBed();
        using var dev = new MigrateTestDevice(bed.Memory, 64, MemoryType.DeviceCoherent);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, Kib4, Rw, Anon);
        Cpu cpu = bed.Cpu(mm);
        cpu.Write(a, 77L);
        Assert.Equal(1, dev.MigrateToDevice(mm, a, a + Kib4));
        ulong coherent = mm.QueryPte(a, out _).Pfn;
        Assert.True(dev.Map.Contains(coherent));
        var pfns = new ulong[1];
        LongTermPinMigrator? saved = AddressSpace.LongTermMigrator;
        try
        {
            AddressSpace.LongTermMigrator = null;
            Assert.Equal(Errno.EBUSY, mm.GetUserPages(a, 1, GupFlags.Pin | GupFlags.LongTerm, pfns, out _));
            // A short-term pin of coherent memory is fine.
            Assert.Equal(Errno.Ok, mm.GetUserPages(a, 1, GupFlags.Pin, pfns, out _));
            Assert.Equal(coherent, pfns[0]);
            mm.UnpinUserPages(pfns, makeDirty: false);

            int calls = 0;
            AddressSpace.LongTermMigrator = (space, address, pfn) =>
            {
                calls++;
                return MigrateOneToRam(space, address, dev);
            };
            Assert.Equal(Errno.Ok, mm.GetUserPages(a, 1, GupFlags.Pin | GupFlags.LongTerm, pfns, out _));
            Assert.Equal(1, calls);
            Assert.True(bed.Memory.IsRam(pfns[0]));
            Assert.Equal(77L, BitConverter.ToInt64(bed.Memory.FrameSpan(pfns[0])));
            mm.UnpinUserPages(pfns, makeDirty: false);
        }
        finally
        {
            AddressSpace.LongTermMigrator = saved;
        }
        mm.Exit();
    }

    /// <summary>What the HMM layer's hook does: migrate_vma of one coherent page back to system RAM (mmap lock held).</summary>
    private static Errno MigrateOneToRam(AddressSpace mm, ulong address, MigrateTestDevice dev)
    {
        var m = new MigrateVma
        {
            Vma = mm.Vmas.Find(address)!,
            Start = address,
            End = address + Kib4,
            Src = new ulong[1],
            Dst = new ulong[1],
            PgmapOwner = dev.Owner,
            Flags = MigrateVmaSelect.DeviceCoherent,
        };
        Errno e = m.Setup();
        if (e != Errno.Ok)
        {
            return e;
        }
        if ((m.Src[0] & MigratePfn.Migrate) != 0)
        {
            ulong ram = mm.Memory.Allocate(0);
            mm.Memory.LockFrame(ram);
            mm.Memory.CopyFrame(ram, MigratePfn.ToPfn(m.Src[0]));
            m.Dst[0] = MigratePfn.Make(ram);
        }
        m.Pages();
        m.Finalize();
        return Errno.Ok;
    }
}
