using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Hmm;

/// <summary>Records every invalidation a space sends.</summary>
internal sealed class MigrateRecordingNotifier : MmuNotifier
{
    private readonly List<MmuNotifierRange> _starts = [];

    public List<MmuNotifierRange> Starts
    {
        get
        {
            lock (_starts)
            {
                return [.. _starts];
            }
        }
    }

    public override Errno InvalidateRangeStart(in MmuNotifierRange range)
    {
        lock (_starts)
        {
            _starts.Add(range);
        }
        return Errno.Ok;
    }

    public void Clear()
    {
        lock (_starts)
        {
            _starts.Clear();
        }
    }
}

public unsafe class MigrateVmaTests
{
    private const ulong Mib = 1UL << 20;

    private static ulong MapAnon(AddressSpace mm, ulong pages, Prot prot = Prot.Read | Prot.Write)
        => mm.Mmap(0, pages * Page.Size, prot, MapFlags.Private | MapFlags.Anonymous);

    private static void FillPages(Cpu cpu, ulong a, ulong pages, long seed)
    {
        for (ulong i = 0; i < pages; i++)
        {
            for (ulong w = 0; w < Page.Size; w += 512)
            {
                cpu.Write(a + i * Page.Size + w, seed + (long)(i * 1000 + w));
            }
        }
    }

    private static void CheckPages(Cpu cpu, ulong a, ulong pages, long seed)
    {
        for (ulong i = 0; i < pages; i++)
        {
            for (ulong w = 0; w < Page.Size; w += 512)
            {
                Assert.Equal(seed + (long)(i * 1000 + w), cpu.Read<long>(a + i * Page.Size + w));
            }
        }
    }

    private static Pte EntryAt(AddressSpace mm, ulong va) => mm.Lookup(va, out _, out _);

    [Fact]
    public void AnonymousPagesMoveToDevicePrivateMemoryAndComeBackOnCpuAccessWithTheirData()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 256);
        var mm = new AddressSpace(mem);
        ulong a = MapAnon(mm, 16);
        using (var cpu = new Cpu(mm))
        {
            FillPages(cpu, a, 16, 7);
            Assert.Equal(16, dev.MigrateToDevice(mm, a, a + 16 * Page.Size));
            for (ulong i = 0; i < 16; i++)
            {
                Pte e = EntryAt(mm, a + i * Page.Size);
                Assert.Equal(SwapEntryType.DevicePrivate, e.SwapType);
                Assert.True(e.SwapWritable);
                Assert.True(dev.Map.Contains(e.Pfn));
                Assert.Equal(7 + (long)(i * 1000), BitConverter.ToInt64(dev.DeviceBytes(e.Pfn)));
            }
            Assert.Equal(256 - 16, dev.FreePages);
            CheckPages(cpu, a, 16, 7);
            Assert.Equal(16, dev.MigrateToRamCalls);
            Assert.Equal(16, dev.PageFrees);
            Assert.Equal(256, dev.FreePages);
            Assert.True(EntryAt(mm, a).IsPresent);
        }
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void HolesAndZeroPagesOfAnAnonymousVmaAreCollectedWithoutAPfn()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        var mm = new AddressSpace(mem);
        ulong a = MapAnon(mm, 8);
        using (var cpu = new Cpu(mm))
        {
            _ = cpu.Read<long>(a + 2 * Page.Size); // zero page
            cpu.Write(a + 3 * Page.Size, 5L);     // real page
        }
        var m = new MigrateVma { Vma = mm.Vmas.Find(a)!, Start = a, End = a + 8 * Page.Size, Src = new ulong[8], Dst = new ulong[8], Flags = MigrateVmaSelect.System };
        using (mm.MmapLock.Read())
        {
            Assert.Equal(Errno.Ok, m.Setup());
            Assert.Equal(8UL, m.Cpages);
            Assert.Equal(8UL, m.Npages);
            for (int i = 0; i < 8; i++)
            {
                if (i == 3)
                {
                    Assert.Equal(MigratePfn.Valid | MigratePfn.Migrate | MigratePfn.Write, m.Src[i] & ((1UL << MigratePfn.Shift) - 1));
                    Assert.Equal(SwapEntryType.Migration, EntryAt(mm, a + 3 * Page.Size).SwapType);
                }
                else
                {
                    Assert.Equal(MigratePfn.Migrate, m.Src[i]);
                }
            }
            m.Pages();
            m.Finalize();
        }
        // Nothing had a destination: everything is as before.
        Assert.Equal(0UL, m.Src[3] & MigratePfn.Migrate);
        using (var cpu = new Cpu(mm))
        {
            Assert.Equal(5L, cpu.Read<long>(a + 3 * Page.Size));
        }
        Assert.True(EntryAt(mm, a).IsNone);
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void SetupRejectsBadRequestsWithEinvalAndChangesNothing()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        using var dev = new MigrateTestDevice(mem, 16);
        var mm = new AddressSpace(mem);
        ulong a = MapAnon(mm, 4);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(a, 1L);
        }
        Vma vma = mm.Vmas.Find(a)!;
        ulong[] s = new ulong[4];
        ulong[] d = new ulong[4];
        ulong devPage = dev.AllocPage();
        mem.UnlockFrame(devPage);
        using (mm.MmapLock.Read())
        {
            Assert.Equal(Errno.EINVAL, new MigrateVma { Vma = null!, Start = a, End = a + 4096, Src = s, Dst = d }.Setup());
            Assert.Equal(Errno.EINVAL, new MigrateVma { Vma = vma, Start = a, End = a, Src = s, Dst = d }.Setup());
            Assert.Equal(Errno.EINVAL, new MigrateVma { Vma = vma, Start = a, End = a + 5 * Page.Size, Src = new ulong[5], Dst = new ulong[5] }.Setup());
            Assert.Equal(Errno.EINVAL, new MigrateVma { Vma = vma, Start = a - Page.Size, End = a + Page.Size, Src = s, Dst = d }.Setup());
            Assert.Equal(Errno.EINVAL, new MigrateVma { Vma = vma, Start = a, End = a + 4 * Page.Size, Src = new ulong[3], Dst = d }.Setup());
            Assert.Equal(Errno.EINVAL, new MigrateVma { Vma = vma, Start = a, End = a + 4 * Page.Size, Src = s, Dst = null! }.Setup());
            // fault_page not locked, and a RAM fault_page.
            Assert.Equal(Errno.EINVAL, new MigrateVma { Vma = vma, Start = a, End = a + Page.Size, Src = s, Dst = d, FaultPage = devPage, Flags = MigrateVmaSelect.DevicePrivate }.Setup());
            ulong ram = EntryAt(mm, a).Pfn;
            Assert.Equal(Errno.EINVAL, new MigrateVma { Vma = vma, Start = a, End = a + Page.Size, Src = s, Dst = d, FaultPage = ram, Flags = MigrateVmaSelect.DevicePrivate }.Setup());
        }
        Assert.True(EntryAt(mm, a).IsPresent);
        Assert.All(s, x => Assert.Equal(0UL, x));
        mem.Put(devPage);

        // VM_PFNMAP and hugetlb-like special VMAs are refused too.
        ulong io = mm.MapPfnRange(0, dev.Map.FirstPfn + 8, 1, Prot.Read | Prot.Write);
        using (mm.MmapLock.Read())
        {
            Assert.Equal(Errno.EINVAL, new MigrateVma { Vma = mm.Vmas.Find(io)!, Start = io, End = io + Page.Size, Src = s, Dst = d, Flags = MigrateVmaSelect.System }.Setup());
        }
        mm.Exit();
    }

    [Fact]
    public void PinnedPagesAreNotMigratedAndKeepTheirMappingAndData()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 64);
        var mm = new AddressSpace(mem);
        ulong a = MapAnon(mm, 8);
        using var cpu = new Cpu(mm);
        FillPages(cpu, a, 8, 100);
        ulong pinned = EntryAt(mm, a + 5 * Page.Size).Pfn;
        mem.Get(pinned); // an extra reference, as GUP would take
        Assert.Equal(7, dev.MigrateToDevice(mm, a, a + 8 * Page.Size));
        Pte e = EntryAt(mm, a + 5 * Page.Size);
        Assert.True(e.IsPresent);
        Assert.Equal(pinned, e.Pfn);
        Assert.Equal(SwapEntryType.DevicePrivate, EntryAt(mm, a + 4 * Page.Size).SwapType);
        Assert.False(mem.Frame(pinned).Has(FrameFlags.Locked));
        CheckPages(cpu, a, 8, 100);
        mem.Put(pinned);
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(64, dev.FreePages);
    }

    [Fact]
    public void SharedAndFileBackedMappingsMigrateNoPagesToDevicePrivateMemory()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        using var dev = new MigrateTestDevice(mem, 64);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, 8 * Page.Size, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Anonymous);
        using (var cpu = new Cpu(mm))
        {
            FillPages(cpu, a, 4, 3); // half populated, half holes
            Assert.Equal(0, dev.MigrateToDevice(mm, a, a + 8 * Page.Size));
            CheckPages(cpu, a, 4, 3);
        }
        Assert.True(EntryAt(mm, a).IsPresent);
        Assert.True(EntryAt(mm, a + 6 * Page.Size).IsNone);
        mm.Exit();
        Assert.Equal(64, dev.FreePages);
    }

    [Fact]
    public void SetupSendsExactlyOneMigrateEventWithTheOwnerBeforeUnmapping()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        using var dev = new MigrateTestDevice(mem, 64);
        var mm = new AddressSpace(mem);
        ulong a = MapAnon(mm, 8);
        using var cpu = new Cpu(mm);
        FillPages(cpu, a, 8, 1);
        var rec = new MigrateRecordingNotifier();
        mm.RegisterNotifier(rec);
        bool entriesWereMigration = false;
        dev.MigrateToDevice(mm, a, a + 8 * Page.Size, betweenSetupAndPages: _ =>
        {
            List<MmuNotifierRange> starts = rec.Starts;
            Assert.Single(starts);
            Assert.Equal(MmuNotifierEvent.Migrate, starts[0].Event);
            Assert.Same(dev.Owner, starts[0].Owner);
            Assert.Equal(a, starts[0].Start);
            Assert.Equal(a + 8 * Page.Size, starts[0].End);
            entriesWereMigration = EntryAt(mm, a).SwapType == SwapEntryType.Migration;
        });
        Assert.True(entriesWereMigration);
        // Pages() has no hole to insert: no further event.
        Assert.Single(rec.Starts);
        mm.UnregisterNotifier(rec);
        cpu.Dispose();
        mm.Exit();
    }

    [Fact]
    public void HolesGetTheirDestinationInsertedInsideOneMigrateEventFromTheFirstHole()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 64);
        var mm = new AddressSpace(mem);
        ulong a = MapAnon(mm, 8);
        using var cpu = new Cpu(mm);
        cpu.Write(a, 9L); // page 0 populated, pages 1..7 holes
        var rec = new MigrateRecordingNotifier();
        mm.RegisterNotifier(rec);
        Assert.Equal(8, dev.MigrateToDevice(mm, a, a + 8 * Page.Size));
        List<MmuNotifierRange> starts = rec.Starts;
        Assert.Equal(2, starts.Count);
        Assert.All(starts, r => Assert.Equal(MmuNotifierEvent.Migrate, r.Event));
        Assert.Equal(a + Page.Size, starts[1].Start);
        Assert.Equal(a + 8 * Page.Size, starts[1].End);
        for (ulong i = 0; i < 8; i++)
        {
            Assert.Equal(SwapEntryType.DevicePrivate, EntryAt(mm, a + i * Page.Size).SwapType);
        }
        mm.UnregisterNotifier(rec);
        Assert.Equal(9L, cpu.Read<long>(a));
        Assert.Equal(0L, cpu.Read<long>(a + 5 * Page.Size));
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(64, dev.FreePages);
    }

    [Fact]
    public void AfterFinalizeEachEntryMapsTheDestinationExactlyWhenItIsStillMarkedMigrate()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 64);
        var mm = new AddressSpace(mem);
        ulong a = MapAnon(mm, 16);
        using var cpu = new Cpu(mm);
        FillPages(cpu, a, 16, 40);
        var original = new ulong[16];
        for (ulong i = 0; i < 16; i++)
        {
            original[i] = EntryAt(mm, a + i * Page.Size).Pfn;
        }
        ulong[]? src = null;
        ulong[]? dst = null;
        dev.MigrateToDevice(mm, a, a + 16 * Page.Size, betweenSetupAndPages: m =>
        {
            // The driver skips every third page: it frees the destination it had prepared.
            for (int i = 0; i < 16; i += 3)
            {
                ulong d = MigratePfn.ToPfn(m.Dst[i]);
                mem.UnlockFrame(d);
                mem.Put(d);
                m.Dst[i] = 0;
            }
            src = m.Src;
            dst = (ulong[])m.Dst.Clone();
        });
        for (int i = 0; i < 16; i++)
        {
            Pte e = EntryAt(mm, a + (ulong)i * Page.Size);
            if ((src![i] & MigratePfn.Migrate) != 0)
            {
                Assert.Equal(SwapEntryType.DevicePrivate, e.SwapType);
                Assert.Equal(MigratePfn.ToPfn(dst![i]), e.Pfn);
            }
            else
            {
                Assert.Equal(0, i % 3);
                Assert.True(e.IsPresent && e.IsWritable);
                Assert.Equal(original[i], e.Pfn);
            }
        }
        CheckPages(cpu, a, 16, 40);
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(64, dev.FreePages);
    }

    [Fact]
    public void ReadOnlyMappingsBecomeReadOnlyDeviceEntriesAndComeBackReadOnly()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        using var dev = new MigrateTestDevice(mem, 64);
        var mm = new AddressSpace(mem);
        ulong a = MapAnon(mm, 4);
        using var cpu = new Cpu(mm);
        FillPages(cpu, a, 4, 11);
        mm.Mprotect(a, 4 * Page.Size, Prot.Read);
        Assert.Equal(4, dev.MigrateToDevice(mm, a, a + 4 * Page.Size));
        Pte e = EntryAt(mm, a);
        Assert.Equal(SwapEntryType.DevicePrivate, e.SwapType);
        Assert.False(e.SwapWritable);
        CheckPages(cpu, a, 4, 11);
        Assert.False(EntryAt(mm, a).IsWritable);
        Assert.Throws<SegmentationFault>(() => cpu.Write(a, 1L));
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(64, dev.FreePages);
    }

    [Fact]
    public void MigrateToSystemBringsDevicePagesBackWithoutACpuFault()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 64);
        var mm = new AddressSpace(mem);
        ulong a = MapAnon(mm, 8);
        using var cpu = new Cpu(mm);
        FillPages(cpu, a, 8, 21);
        Assert.Equal(8, dev.MigrateToDevice(mm, a, a + 8 * Page.Size));
        // The device writes into its copy of page 2.
        ulong dp = EntryAt(mm, a + 2 * Page.Size).Pfn;
        BitConverter.TryWriteBytes(dev.DeviceBytes(dp), 4242L);
        Assert.Equal(8, dev.MigrateToSystem(mm, a, a + 8 * Page.Size));
        Assert.Equal(0, dev.MigrateToRamCalls);
        Assert.Equal(8, dev.PageFrees);
        Assert.True(EntryAt(mm, a + 2 * Page.Size).IsPresent);
        Assert.Equal(4242L, cpu.Read<long>(a + 2 * Page.Size));
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void DevicePagesOfAnotherOwnerAreNotCollected()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        using var dev = new MigrateTestDevice(mem, 64);
        using var other = new MigrateTestDevice(mem, 64);
        var mm = new AddressSpace(mem);
        ulong a = MapAnon(mm, 4);
        using var cpu = new Cpu(mm);
        FillPages(cpu, a, 4, 2);
        Assert.Equal(4, dev.MigrateToDevice(mm, a, a + 4 * Page.Size));
        Assert.Equal(0, other.MigrateToSystem(mm, a, a + 4 * Page.Size));
        // And migrating to the other device with SELECT_SYSTEM only moves nothing either (they are not RAM pages).
        Assert.Equal(0, other.MigrateToDevice(mm, a, a + 4 * Page.Size));
        Assert.True(dev.Map.Contains(EntryAt(mm, a).Pfn));
        CheckPages(cpu, a, 4, 2);
        cpu.Dispose();
        mm.Exit();
        Assert.Equal(64, dev.FreePages);
        Assert.Equal(64, other.FreePages);
    }
    private static long LeastAllocated(Action action)
    {
        action();
        long least = long.MaxValue;
        for (int i = 0; i < 5 && least != 0; i++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            action();
            least = Math.Min(least, GC.GetAllocatedBytesForCurrentThread() - before);
        }
        return least;
    }

    [Fact]
    public void ARoundTripAllocatesNothingPerPage()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        using var dev = new MigrateTestDevice(mem, 1024);
        var mm = new AddressSpace(mem);
        ulong a = MapAnon(mm, 512);
        using (var cpu = new Cpu(mm))
        {
            FillPages(cpu, a, 512, 3);
        }
        var m = new MigrateVma { Src = new ulong[512], Dst = new ulong[512], PgmapOwner = dev.Owner };
        void Migrate(ulong pages, bool toDevice)
        {
            m.Vma = mm.Vmas.Find(a)!;
            m.Start = a;
            m.End = a + pages * Page.Size;
            m.Flags = toDevice ? MigrateVmaSelect.System : MigrateVmaSelect.DevicePrivate;
            m.FaultPage = Page.NoPfn;
            m.Setup();
            for (int i = 0; i < (int)m.Npages; i++)
            {
                ulong s = m.Src[i];
                if ((s & MigratePfn.Migrate) == 0)
                {
                    continue;
                }
                ulong d = toDevice ? dev.AllocPage() : mem.Allocate(0);
                if (!toDevice)
                {
                    mem.LockFrame(d);
                }
                mem.CopyFrame(d, MigratePfn.ToPfn(s));
                m.Dst[i] = MigratePfn.Make(d);
            }
            m.Pages();
            m.Finalize();
        }
        long small;
        long large;
        using (mm.MmapLock.Read())
        {
            small = LeastAllocated(() =>
            {
                Migrate(16, true);
                Migrate(16, false);
            });
            large = LeastAllocated(() =>
            {
                Migrate(512, true);
                Migrate(512, false);
            });
        }
        Assert.Equal(small, large);   // nothing per page
        Assert.True(large <= 512, $"a round trip allocated {large} bytes");
        using (var cpu = new Cpu(mm))
        {
            Assert.Equal(3L, cpu.Read<long>(a));
            Assert.Equal(3L + 511000, cpu.Read<long>(a + 511 * Page.Size));
        }
        mm.Exit();
        Assert.Equal(1024, dev.FreePages);
    }
}
