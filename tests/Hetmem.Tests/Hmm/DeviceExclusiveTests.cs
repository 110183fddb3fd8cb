using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Hmm;

public unsafe class DeviceExclusiveTests
{
    private const ulong Mib = 1UL << 20;
    private static readonly object s_owner = new();

    private static Pte EntryAt(AddressSpace mm, ulong va) => mm.Lookup(va, out _, out _);

    private static Errno MakeExclusive(AddressSpace mm, ulong va, out ulong pfn, object? owner = null)
    {
        using (mm.MmapLock.Read())
        {
            return DeviceExclusive.MakeDeviceExclusive(mm, va, owner ?? s_owner, out pfn);
        }
    }

    [Fact]
    public void TheEntryBecomesDeviceExclusiveAndThePageIsReturnedLockedAndReferenced()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, 4 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(a + Page.Size + 8, 5L);
        }
        ulong mapped = EntryAt(mm, a + Page.Size).Pfn;
        Assert.Equal(Errno.Ok, MakeExclusive(mm, a + Page.Size + 100, out ulong pfn));
        Assert.Equal(mapped, pfn);
        Pte e = EntryAt(mm, a + Page.Size);
        Assert.Equal(SwapEntryType.DeviceExclusive, e.SwapType);
        Assert.Equal(pfn, e.Pfn);
        Assert.True(mem.Frame(pfn).Has(FrameFlags.Locked));
        Assert.Equal(2, mem.Frame(pfn).RefCount);   // the entry's and the caller's
        Assert.Equal(1, mem.Frame(pfn).MapCount);
        mem.UnlockFrame(pfn);
        mem.Put(pfn);
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void OneExclusiveEventCarriesTheOwnerAndACpuAccessRevokesWithOneClearAndSeesTheDeviceAtomics()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, 2 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using var cpu = new Cpu(mm);
        cpu.Write(a, 10L);
        var rec = new MigrateRecordingNotifier();
        mm.RegisterNotifier(rec);
        Assert.Equal(Errno.Ok, MakeExclusive(mm, a, out ulong pfn));
        List<MmuNotifierRange> starts = rec.Starts;
        Assert.Single(starts);
        Assert.Equal(MmuNotifierEvent.Exclusive, starts[0].Event);
        Assert.Same(s_owner, starts[0].Owner);
        Assert.Equal(a, starts[0].Start);
        Assert.Equal(a + Page.Size, starts[0].End);
        // The device does its atomic add on the page, then lets go of the lock and reference.
        Interlocked.Add(ref *(long*)mem.Address(pfn), 32);
        mem.UnlockFrame(pfn);
        mem.Put(pfn);
        rec.Clear();
        Assert.Equal(42L, cpu.Read<long>(a));
        starts = rec.Starts;
        Assert.Single(starts);
        Assert.Equal(MmuNotifierEvent.Clear, starts[0].Event);
        Assert.Null(starts[0].Owner);
        Assert.Equal(a, starts[0].Start);
        Assert.Equal(a + Page.Size, starts[0].End);
        Pte e = EntryAt(mm, a);
        Assert.True(e.IsPresent);
        Assert.Equal(pfn, e.Pfn);
        cpu.Write(a, 43L);
        Assert.Equal(43L, *(long*)mem.Address(pfn));
        mm.UnregisterNotifier(rec);
        cpu.Dispose();
        mm.Exit();
    }

    [Fact]
    public void AnUnpopulatedPageIsFaultedInWritableFirst()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        Assert.Equal(Errno.Ok, MakeExclusive(mm, a, out ulong pfn));
        Assert.NotEqual(mem.ZeroPfn, pfn);
        Assert.True(mem.IsRam(pfn));
        mem.UnlockFrame(pfn);
        mem.Put(pfn);
        using (var cpu = new Cpu(mm))
        {
            Assert.Equal(0L, cpu.Read<long>(a));
        }
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void SharedFileAndMissingOrReadOnlyMappingsAreRefused()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        var mm = new AddressSpace(mem);
        ulong shared = mm.Mmap(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Anonymous);
        ulong ro = mm.Mmap(0, Page.Size, Prot.Read, MapFlags.Private | MapFlags.Anonymous);
        Assert.Equal(Errno.EOPNOTSUPP, MakeExclusive(mm, shared, out ulong p1));
        Assert.Equal(Page.NoPfn, p1);
        Assert.Equal(Errno.EFAULT, MakeExclusive(mm, ro, out _));
        Assert.Equal(Errno.EFAULT, MakeExclusive(mm, 0x1000_0000, out _));
        Assert.NotEqual(SwapEntryType.DeviceExclusive, EntryAt(mm, shared).SwapType);
        mm.Exit();
    }

    [Fact]
    public void ASecondDeviceRevokesTheFirstOneThroughTheWriteFault()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        var other = new object();
        Assert.Equal(Errno.Ok, MakeExclusive(mm, a, out ulong p1));
        mem.UnlockFrame(p1);
        mem.Put(p1);
        var rec = new MigrateRecordingNotifier();
        mm.RegisterNotifier(rec);
        Assert.Equal(Errno.Ok, MakeExclusive(mm, a, out ulong p2, other));
        Assert.Equal(p1, p2);
        List<MmuNotifierRange> starts = rec.Starts;
        Assert.Equal(2, starts.Count);
        Assert.Equal(MmuNotifierEvent.Clear, starts[0].Event);
        Assert.Equal(MmuNotifierEvent.Exclusive, starts[1].Event);
        Assert.Same(other, starts[1].Owner);
        mem.UnlockFrame(p2);
        mem.Put(p2);
        mm.UnregisterNotifier(rec);
        mm.Exit();
    }

    [Fact]
    public void ForkRestoresTheMappingAndBothProcessesSeeTheData()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(a, 77L);
        }
        Assert.Equal(Errno.Ok, MakeExclusive(mm, a, out ulong pfn));
        mem.UnlockFrame(pfn);
        mem.Put(pfn);
        AddressSpace child = mm.Fork();
        Assert.NotEqual(SwapEntryType.DeviceExclusive, EntryAt(mm, a).SwapType);
        Assert.True(EntryAt(mm, a).IsPresent);
        using (var cc = new Cpu(child))
        {
            Assert.Equal(77L, cc.Read<long>(a));
            cc.Write(a, 1L);
        }
        using (var pc = new Cpu(mm))
        {
            Assert.Equal(77L, pc.Read<long>(a));
        }
        child.Exit();
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void MunmapOfAnExclusiveEntryDropsThePage()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, 2 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        Assert.Equal(Errno.Ok, MakeExclusive(mm, a, out ulong pfn));
        mem.UnlockFrame(pfn);
        mem.Put(pfn);
        mm.Munmap(a, 2 * Page.Size);
        Assert.Equal(0, mem.Frame(pfn).RefCount);
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void APmdMappedThpIsRemappedByPtesFirst()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        var mm = new AddressSpace(mem);
        ulong raw = mm.Mmap(0, 4 * Mib, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        ulong a = Page.AlignUp(raw, Page.PmdSize);
        mm.Madvise(a, 2 * Mib, Advice.HugePage);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(a + 5 * Page.Size, 123L);
        }
        mm.Lookup(a, out int order, out _);
        Assert.Equal(Page.PmdOrder, order);
        Assert.Equal(Errno.Ok, MakeExclusive(mm, a + 5 * Page.Size, out ulong pfn));
        Pte e = mm.Lookup(a + 5 * Page.Size, out order, out _);
        Assert.Equal(0, order);
        Assert.Equal(SwapEntryType.DeviceExclusive, e.SwapType);
        Assert.Equal(123L, *(long*)mem.Address(pfn));
        mem.UnlockFrame(pfn);
        mem.Put(pfn);
        using (var cpu = new Cpu(mm))
        {
            Assert.Equal(123L, cpu.Read<long>(a + 5 * Page.Size));
            Assert.Equal(0L, cpu.Read<long>(a + 6 * Page.Size));
        }
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }
    [Fact]
    public void ACpuAccessWaitsUntilTheDeviceUnlocksTheExclusivePage()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(a, 1L);
        }
        Assert.Equal(Errno.Ok, MakeExclusive(mm, a, out ulong pfn));
        // The device still holds the page locked (mapping it): exclusivity is guaranteed until it unlocks.
        long seen = 0;
        var reader = new Thread(() =>
        {
            using var cpu = new Cpu(mm);
            Volatile.Write(ref seen, cpu.Read<long>(a));
        });
        reader.Start();
        Thread.Sleep(50);
        Pte during = EntryAt(mm, a);
        *(long*)mem.Address(pfn) = 2; // the device's atomic, still inside its exclusive window
        mem.UnlockFrame(pfn);
        mem.Put(pfn);
        reader.Join();
        Assert.True(during.SwapType == SwapEntryType.DeviceExclusive,
            $"the CPU revoked exclusivity while the device held the page locked (entry {during}): "
            + "AddressSpace.RestoreExclusive (Mm/AddressSpace.Fault.cs) must take the frame lock (kernel: folio_lock in "
            + "remove_device_exclusive_entry) before restoring the PTE");
        Assert.Equal(2L, Volatile.Read(ref seen));
        mm.Exit();
    }
}
