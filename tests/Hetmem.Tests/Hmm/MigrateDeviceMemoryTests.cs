using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Hmm;

/// <summary>Device-memory life cycle around migration: eviction, coherent memory, fork, munmap and exit, THPs.</summary>
public unsafe class MigrateDeviceMemoryTests
{
    private const ulong Mib = 1UL << 20;

    private static Pte EntryAt(AddressSpace mm, ulong va) => mm.Lookup(va, out _, out _);

    private static void Fill(Cpu cpu, ulong a, ulong pages, long seed)
    {
        for (ulong i = 0; i < pages; i++)
        {
            cpu.Write(a + i * Page.Size, seed + (long)i);
            cpu.Write(a + i * Page.Size + Page.Size - 8, ~(seed + (long)i));
        }
    }

    private static void Check(Cpu cpu, ulong a, ulong pages, long seed)
    {
        for (ulong i = 0; i < pages; i++)
        {
            Assert.Equal(seed + (long)i, cpu.Read<long>(a + i * Page.Size));
            Assert.Equal(~(seed + (long)i), cpu.Read<long>(a + i * Page.Size + Page.Size - 8));
        }
    }

    [Fact]
    public void EvictingTheDeviceBringsEveryPageBackAsPresentEntriesWithTheDeviceData()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 128);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, 32 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using var cpu = new Cpu(mm);
        Fill(cpu, a, 32, 500);
        Assert.Equal(32, dev.MigrateToDevice(mm, a, a + 32 * Page.Size));
        ulong dp = EntryAt(mm, a + 7 * Page.Size).Pfn;
        BitConverter.TryWriteBytes(dev.DeviceBytes(dp), 99L);
        var rec = new MigrateRecordingNotifier();
        mm.RegisterNotifier(rec);
        Assert.Equal(32, dev.EvictAll());
        Assert.Equal(32, rec.Starts.Count);   // one invalidation per unmapped device entry
        mm.UnregisterNotifier(rec);
        Assert.Equal(128, dev.FreePages);
        Assert.Equal(32, dev.PageFrees);
        for (ulong i = 0; i < 32; i++)
        {
            Pte e = EntryAt(mm, a + i * Page.Size);
            Assert.True(e.IsPresent && e.IsWritable && mem.IsRam(e.Pfn));
        }
        Assert.Equal(0, dev.MigrateToRamCalls);
        Assert.Equal(99L, cpu.Read<long>(a + 7 * Page.Size));
        cpu.Write(a + 7 * Page.Size, 507L);
        Check(cpu, a, 32, 500);
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void EvictionFindsPagesThatMremapMovedAndRejectsRamRanges()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 64);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, 8 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(mm))
        {
            Fill(cpu, a, 8, 70);
        }
        Assert.Equal(8, dev.MigrateToDevice(mm, a, a + 8 * Page.Size));
        ulong b = mm.Mremap(a, 8 * Page.Size, 8 * Page.Size, MremapFlags.MayMove | MremapFlags.Fixed, a + 64 * Mib);
        Assert.NotEqual(a, b);
        Assert.Equal(SwapEntryType.DevicePrivate, EntryAt(mm, b).SwapType);
        Assert.Equal(8, dev.EvictAll());
        using (var cpu = new Cpu(mm))
        {
            Check(cpu, b, 8, 70);
        }
        Assert.Equal(Errno.EINVAL, MigrateDevice.MigrateDeviceRange(mem, new ulong[4], PhysicalMemory.RamFirstPfn + 16, 4));
        Assert.Equal(Errno.EINVAL, MigrateDevice.MigrateDeviceRange(mem, new ulong[2], dev.Map.FirstPfn, 4));
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(64, dev.FreePages);
    }

    [Fact]
    public void MunmapAndExitFreeDevicePagesThroughPageFree()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 64);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, 16 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        Assert.Equal(16, dev.MigrateToDevice(mm, a, a + 16 * Page.Size)); // all holes: fresh zeroed device pages
        mm.Munmap(a, 4 * Page.Size);
        Assert.Equal(4, dev.PageFrees);
        mm.Exit();
        Assert.Equal(16, dev.PageFrees);
        Assert.Equal(64, dev.FreePages);
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(0, dev.MigrateToRamCalls);
    }

    [Fact]
    public void MadviseDontNeedDropsDevicePagesAndTheRangeRefaultsAsZeroes()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 64);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, 8 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using var cpu = new Cpu(mm);
        Fill(cpu, a, 8, 5);
        Assert.Equal(8, dev.MigrateToDevice(mm, a, a + 8 * Page.Size));
        mm.Madvise(a, 4 * Page.Size, Advice.DontNeed);
        Assert.Equal(4, dev.PageFrees);
        Assert.True(EntryAt(mm, a).IsNone);
        Assert.Equal(0L, cpu.Read<long>(a + Page.Size));
        Assert.Equal(5L + 6, cpu.Read<long>(a + 6 * Page.Size));
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(64, dev.FreePages);
    }

    [Fact]
    public void ForkSharesDevicePagesReadOnlyAndEachProcessGetsItsOwnCopyOnWrite()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 64);
        var parent = new AddressSpace(mem);
        ulong a = parent.Mmap(0, 4 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var pc = new Cpu(parent))
        {
            Fill(pc, a, 4, 10);
        }
        Assert.Equal(4, dev.MigrateToDevice(parent, a, a + 4 * Page.Size));
        AddressSpace child = parent.Fork();
        Pte pe = EntryAt(parent, a);
        Pte ce = EntryAt(child, a);
        Assert.Equal(SwapEntryType.DevicePrivate, pe.SwapType);
        Assert.Equal(SwapEntryType.DevicePrivate, ce.SwapType);
        Assert.Equal(pe.Pfn, ce.Pfn);
        Assert.False(pe.SwapWritable);
        Assert.False(ce.SwapWritable);
        using (var cc = new Cpu(child))
        {
            Check(cc, a, 4, 10);
            cc.Write(a, 1000L);
            Assert.Equal(1000L, cc.Read<long>(a));
        }
        using (var pc = new Cpu(parent))
        {
            Check(pc, a, 4, 10);
            pc.Write(a + Page.Size, 2000L);
        }
        child.Exit();
        parent.Exit();
        Assert.Equal(64, dev.FreePages);
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void DeviceCoherentPagesAreMappedPresentAndMigrateBackToRam()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 64, MemoryType.DeviceCoherent);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, 8 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using var cpu = new Cpu(mm);
        Fill(cpu, a, 8, 300);
        Assert.Equal(8, dev.MigrateToDevice(mm, a, a + 8 * Page.Size));
        Pte e = EntryAt(mm, a + 3 * Page.Size);
        Assert.True(e.IsPresent && e.IsWritable && e.IsDevMap);
        Assert.True(dev.Map.Contains(e.Pfn));
        // The CPU reads and writes coherent memory directly: no migration back.
        Check(cpu, a, 8, 300);
        cpu.Write(a + 3 * Page.Size + 16, 5L);
        Assert.Equal(5L, BitConverter.ToInt64(dev.DeviceBytes(e.Pfn)[16..]));
        Assert.Equal(0, dev.MigrateToRamCalls);
        Assert.Equal(8, dev.MigrateToSystem(mm, a, a + 8 * Page.Size));
        Assert.True(mem.IsRam(EntryAt(mm, a + 3 * Page.Size).Pfn));
        Assert.Equal(5L, cpu.Read<long>(a + 3 * Page.Size + 16));
        Check(cpu, a, 8, 300);
        Assert.Equal(64, dev.FreePages);
        // Coherent pages are evictable too.
        Assert.Equal(8, dev.MigrateToDevice(mm, a, a + 8 * Page.Size));
        Assert.Equal(8, dev.EvictAll());
        Check(cpu, a, 8, 300);
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(64, dev.FreePages);
    }

    [Fact]
    public void AThpIsSplitAndMigratedPageByPageWithoutTheCompoundFlag()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 1024);
        var mm = new AddressSpace(mem);
        ulong raw = mm.Mmap(0, 4 * Mib, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        ulong a = Page.AlignUp(raw, Page.PmdSize);
        mm.Madvise(a, 2 * Mib, Advice.HugePage);
        using var cpu = new Cpu(mm);
        Fill(cpu, a, 512, 9000);
        mm.Lookup(a, out int order, out _);
        Assert.Equal(Page.PmdOrder, order);
        // Half of the THP only: the PMD is split and the THP broken into base pages.
        Assert.Equal(256, dev.MigrateToDevice(mm, a, a + Mib));
        Pte e = mm.Lookup(a, out order, out _);
        Assert.Equal(0, order);
        Assert.Equal(SwapEntryType.DevicePrivate, e.SwapType);
        Pte kept = EntryAt(mm, a + Mib);
        Assert.True(kept.IsPresent);
        Assert.Equal(0, mem.Frame(kept.Pfn).Order);
        Check(cpu, a, 512, 9000);
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(1024, dev.FreePages);
    }

    [Fact]
    public void AThpMigratesAsOneUnitWithTheCompoundFlagAndSplitsOnPartialMunmap()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 2048);
        var mm = new AddressSpace(mem);
        ulong raw = mm.Mmap(0, 4 * Mib, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        ulong a = Page.AlignUp(raw, Page.PmdSize);
        mm.Madvise(a, 2 * Mib, Advice.HugePage);
        using var cpu = new Cpu(mm);
        Fill(cpu, a, 512, 1);
        ulong thp = mm.Lookup(a, out _, out _).Pfn;
        Assert.Equal(512, dev.MigrateToDevice(mm, a, a + 2 * Mib, MigrateVmaSelect.System | MigrateVmaSelect.Compound));
        Pte e = mm.Lookup(a + 3 * Page.Size, out int order, out _);
        Assert.Equal(Page.PmdOrder, order);
        Assert.Equal(SwapEntryType.DevicePrivate, e.SwapType);
        Assert.True(e.SwapHuge && e.SwapWritable);
        Assert.Equal(0, mem.Frame(thp).RefCount);   // the THP went back to the buddy allocator
        // A partial munmap splits the PMD-level device entry; the rest keeps its data.
        mm.Munmap(a + Mib, Mib);
        e = mm.Lookup(a + 5 * Page.Size, out order, out _);
        Assert.True(order == 0 && e.SwapType == SwapEntryType.DevicePrivate,
            $"after the partial munmap the kept half must be PTE-level device-private entries, found {e} at order {order} "
            + "(AddressSpace.SplitHugeAtLocked must split a PMD-level device-private/migration entry at a VMA boundary, not zap it)");
        Check(cpu, a, 256, 1);
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(2048, dev.FreePages);
    }

    [Fact]
    public void AnEmptyPmdIsFilledWithOneHugeDevicePageAndComesBackOnFault()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 2048);
        var mm = new AddressSpace(mem);
        ulong raw = mm.Mmap(0, 4 * Mib, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        ulong a = Page.AlignUp(raw, Page.PmdSize);
        Assert.Equal(512, dev.MigrateToDevice(mm, a, a + 2 * Mib, MigrateVmaSelect.System | MigrateVmaSelect.Compound));
        Pte e = mm.Lookup(a, out int order, out _);
        Assert.Equal(Page.PmdOrder, order);
        Assert.True(e.SwapHuge);
        BitConverter.TryWriteBytes(dev.DeviceBytes(e.Pfn + 100), 31L);
        using (var cpu = new Cpu(mm))
        {
            Assert.Equal(31L, cpu.Read<long>(a + 100 * Page.Size));
            Assert.Equal(0L, cpu.Read<long>(a + 200 * Page.Size));
        }
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(2048, dev.FreePages);
    }
    [Fact]
    public void AHugeSourceIsSplitInPagesWhenTheDriverOnlyHasBasePages()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 1024);
        var mm = new AddressSpace(mem);
        ulong raw = mm.Mmap(0, 4 * Mib, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        ulong a = Page.AlignUp(raw, Page.PmdSize);
        mm.Madvise(a, 2 * Mib, Advice.HugePage);
        using var cpu = new Cpu(mm);
        Fill(cpu, a, 512, 77);
        using (mm.MmapLock.Read())
        {
            var m = new MigrateVma
            {
                Vma = mm.Vmas.Find(a)!,
                Start = a,
                End = a + 2 * Mib,
                Src = new ulong[512],
                Dst = new ulong[512],
                PgmapOwner = dev.Owner,
                Flags = MigrateVmaSelect.System | MigrateVmaSelect.Compound,
            };
            Assert.Equal(Errno.Ok, m.Setup());
            Assert.Equal(1UL, m.Cpages);
            Assert.NotEqual(0UL, m.Src[0] & MigratePfn.Compound);
            ulong head = MigratePfn.ToPfn(m.Src[0]);
            for (int k = 0; k < 512; k++)
            {
                ulong d = dev.AllocPage();
                mem.CopyFrame(d, head + (ulong)k);
                m.Dst[k] = MigratePfn.Make(d);
            }
            m.Pages();
            Assert.All(m.Src, x => Assert.Equal(MigratePfn.Migrate, x & (MigratePfn.Migrate | MigratePfn.Compound)));
            m.Finalize();
        }
        Pte e = mm.Lookup(a + 9 * Page.Size, out int order, out _);
        Assert.Equal(0, order);
        Assert.Equal(SwapEntryType.DevicePrivate, e.SwapType);
        Assert.Equal(512, 1024 - dev.FreePages);
        Check(cpu, a, 512, 77);
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(1024, dev.FreePages);
    }
    [Theory]
    [InlineData(MemoryType.DevicePrivate, true)]
    [InlineData(MemoryType.DevicePrivate, false)]
    [InlineData(MemoryType.DeviceCoherent, true)]
    [InlineData(MemoryType.DeviceCoherent, false)]
    public void TheHugeZeroPageMigratesAsOneHugeHoleOrPageByPage(MemoryType type, bool hugeDestination)
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 2048, type);
        var mm = new AddressSpace(mem);
        ulong raw = mm.Mmap(0, 4 * Mib, Prot.Read, MapFlags.Private | MapFlags.Anonymous);
        ulong a = Page.AlignUp(raw, Page.PmdSize);
        mm.Madvise(a, 2 * Mib, Advice.HugePage);
        using var cpu = new Cpu(mm);
        Assert.Equal(0L, cpu.Read<long>(a));
        Pte z = mm.Lookup(a, out int order, out _);
        Assert.True(order == Page.PmdOrder && z.IsHugeLeaf, $"expected the huge zero page, found {z} at order {order}");
        int moved;
        using (mm.MmapLock.Read())
        {
            var m = new MigrateVma
            {
                Vma = mm.Vmas.Find(a)!,
                Start = a,
                End = a + 2 * Mib,
                Src = new ulong[512],
                Dst = new ulong[512],
                PgmapOwner = dev.Owner,
                Flags = MigrateVmaSelect.System | MigrateVmaSelect.Compound,
            };
            Assert.Equal(Errno.Ok, m.Setup());
            Assert.Equal(MigratePfn.Migrate | MigratePfn.Compound, m.Src[0]);
            if (hugeDestination)
            {
                ulong d = dev.AllocPage(Page.PmdOrder);
                mem.ZeroFrames(d, 512);
                m.Dst[0] = MigratePfn.Make(d) | MigratePfn.Compound;
            }
            else
            {
                for (int k = 0; k < 512; k++)
                {
                    ulong d = dev.AllocPage();
                    mem.ZeroFrames(d, 1);
                    m.Dst[k] = MigratePfn.Make(d);
                }
            }
            m.Pages();
            moved = m.Src.Count(x => (x & MigratePfn.Migrate) != 0) * (hugeDestination ? 512 : 1);
            m.Finalize();
        }
        Assert.Equal(512, moved);
        Pte e = mm.Lookup(a + 7 * Page.Size, out order, out _);
        Assert.Equal(hugeDestination ? Page.PmdOrder : 0, order);
        Assert.True(dev.Map.Contains(e.Pfn), $"expected a device page, found {e}");
        Assert.Equal(0L, cpu.Read<long>(a + 7 * Page.Size));
        Assert.Equal(0L, cpu.Read<long>(a + 2 * Mib - 8));
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(2048, dev.FreePages);
    }
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ADeviceThpMovedByMremapToAnUnalignedAddressComesBackPageByPage(bool evict)
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 2048);
        var mm = new AddressSpace(mem);
        ulong raw = mm.Mmap(0, 8 * Mib, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        ulong a = Page.AlignUp(raw, Page.PmdSize);
        mm.Madvise(a, 2 * Mib, Advice.HugePage);
        using var cpu = new Cpu(mm);
        Fill(cpu, a, 512, 600);
        Assert.Equal(512, dev.MigrateToDevice(mm, a, a + 2 * Mib, MigrateVmaSelect.System | MigrateVmaSelect.Compound));
        ulong b = mm.Mremap(a, 2 * Mib, 2 * Mib, MremapFlags.MayMove | MremapFlags.Fixed, a + 2 * Mib + 512 * 1024);
        Pte e = mm.Lookup(b + 5 * Page.Size, out int order, out _);
        Assert.Equal(0, order);
        Assert.Equal(SwapEntryType.DevicePrivate, e.SwapType);
        if (evict)
        {
            Assert.Equal(512, dev.EvictAll());
            Assert.True(mem.IsRam(mm.Lookup(b + 300 * Page.Size, out _, out _).Pfn));
            Assert.Equal(0, dev.MigrateToRamCalls);
        }
        Check(cpu, b, 512, 600);
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(2048, dev.FreePages);
    }
    [Fact]
    public void ACoherentDeviceThpIsAPresentHugeEntryThatSplitsOnPartialMunmapAndComesBack()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 2048, MemoryType.DeviceCoherent);
        var mm = new AddressSpace(mem);
        ulong raw = mm.Mmap(0, 4 * Mib, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        ulong a = Page.AlignUp(raw, Page.PmdSize);
        mm.Madvise(a, 2 * Mib, Advice.HugePage);
        using var cpu = new Cpu(mm);
        Fill(cpu, a, 512, 40);
        Assert.Equal(512, dev.MigrateToDevice(mm, a, a + 2 * Mib, MigrateVmaSelect.System | MigrateVmaSelect.Compound));
        Pte e = mm.Lookup(a, out int order, out _);
        Assert.Equal(Page.PmdOrder, order);
        Assert.True(e.IsHugeLeaf && e.IsWritable && dev.Map.Contains(e.Pfn));
        Check(cpu, a, 512, 40);
        mm.Munmap(a + Mib, Mib);
        e = mm.Lookup(a + 3 * Page.Size, out order, out _);
        Assert.Equal(0, order);
        Assert.True(e.IsPresent && dev.Map.Contains(e.Pfn));
        Check(cpu, a, 256, 40);
        Assert.Equal(256, dev.MigrateToSystem(mm, a, a + Mib));
        Assert.True(mem.IsRam(mm.Lookup(a + 3 * Page.Size, out _, out _).Pfn));
        Check(cpu, a, 256, 40);
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(2048, dev.FreePages);
    }
}
