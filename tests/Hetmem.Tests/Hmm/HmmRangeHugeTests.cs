using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using static Hetmem.Tests.Hmm.Kit;

namespace Hetmem.Tests.Hmm;

/// <summary>
/// HmmRange.Fault on huge mappings (spec §2.4 PMD/PUD rows, invariant 7): THP and the huge zero page, PMD migration
/// and bad entries, hugetlbfs, and FS-DAX at PTE, PMD and PUD level including punch hole and truncate (the seed patch).
/// </summary>
public sealed unsafe class HmmRangeHugeTests : IDisposable
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const ulong Pmd = Page.PmdSize;
    private const ulong Pud = Page.PudSize;
    private const ulong Base = 0x2000_0000_0000;   // 1 GiB aligned
    private const ulong V = (ulong)HmmPfnFlags.Valid;
    private const ulong W = (ulong)HmmPfnFlags.Write;
    private const ulong E = (ulong)HmmPfnFlags.Error;

    private readonly HmmTestBed _bed = new();
    private readonly AddressSpace _mm;
    private readonly PhysicalMemory _mem;

    public HmmRangeHugeTests()
    {
        _mm = _bed.NewSpace();
        _mem = _bed.Memory;
    }

    public void Dispose() => _bed.Dispose();

    private HmmRange Range(ulong start, ulong end, HmmPfnFlags defaults = 0)
    {
        var n = MmuIntervalNotifier.Insert(_mm, start, end - start, new RecordingOps());
        _bed.Own(new Removal(n));
        return new HmmRange(n, start, end) { DefaultFlags = defaults };
    }

    private sealed class Removal(MmuIntervalNotifier n) : IDisposable
    {
        public void Dispose() => n.Remove();
    }

    private static Errno Walk(HmmRange r)
    {
        for (int i = 0; ; i++)
        {
            r.NotifierSeq = r.Notifier.ReadBegin();
            Errno e;
            using (r.Space.MmapLock.Read())
            {
                e = r.Fault();
            }
            if (e != Errno.EBUSY || i > 50)
            {
                return e;
            }
        }
    }

    private static Errno WalkOnce(HmmRange r)
    {
        r.NotifierSeq = r.Notifier.ReadBegin();
        using (r.Space.MmapLock.Read())
        {
            return r.Fault();
        }
    }

    /// <summary>Invariant 7: identical flags, the order, consecutive PFNs from an order-aligned head for the order-aligned VA.</summary>
    private static void AssertHuge(HmmRange r, ulong from, ulong to, int order, ulong flags)
    {
        ulong size = Page.Bytes(order);
        ulong first = r.HmmPfns[(from - r.Start) >> Page.Shift];
        ulong head = HmmPfn.ToPfn(first) - ((from - Page.AlignDown(from, size)) >> Page.Shift);
        Assert.True(Page.IsAligned(head, 1UL << order), $"head PFN 0x{head:x} is not aligned to order {order}");
        for (ulong va = from; va < to; va += Page.Size)
        {
            ulong e = r.HmmPfns[(va - r.Start) >> Page.Shift];
            Assert.Equal(order, HmmPfn.MapOrder(e));
            Assert.Equal(flags, e & (V | W | E));
            Assert.Equal(head + ((va - Page.AlignDown(from, size)) >> Page.Shift), HmmPfn.ToPfn(e));
        }
    }

    private ulong ThpRegion(ulong bytes)
    {
        ulong a = _mm.Mmap(Base, bytes, Rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
        _mm.Madvise(a, bytes, Advice.HugePage);
        return a;
    }

    private ulong* Slot(ulong va)
    {
        _mm.Lookup(va, out _, out ulong* slot);
        return slot;
    }

    private ulong Replace(ulong va, Pte with)
    {
        ulong* slot = Slot(va);
        ulong old;
        lock (_mm.PtlFor(slot))
        {
            old = *slot;
            *slot = with.Value;
        }
        _mm.FlushTlb();
        return old;
    }

    // ---- THP --------------------------------------------------------------------------------------------------

    [Fact]
    public void ATransparentHugePageIsReportedWithOrderNineAndConsecutivePfnsAlsoFromTheMiddle()
    {
        ulong a = ThpRegion(2 * Pmd);
        using (var cpu = new Cpu(_mm))
        {
            cpu.Write(a + 5 * Page.Size, 1L);
        }
        _mm.QueryPte(a, out int order);
        Assert.Equal(Page.PmdOrder, order);
        HmmRange r = Range(a, a + 2 * Pmd);
        Assert.Equal(Errno.Ok, Walk(r));
        AssertHuge(r, a, a + Pmd, Page.PmdOrder, V | W);
        // The second PMD is empty: faulting it writes another THP.
        HmmRange mid = Range(a + Pmd + 7 * Page.Size, a + 2 * Pmd - 3 * Page.Size, HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite);
        Assert.Equal(Errno.Ok, Walk(mid));
        AssertHuge(mid, mid.Start, mid.End, Page.PmdOrder, V | W);
    }

    [Fact]
    public void TheHugeZeroPageIsValidReadOnlyOrderNineAndAWriteRequestReplacesItWithAThp()
    {
        ulong a = ThpRegion(Pmd);
        HmmRange r = Range(a, a + Pmd, HmmPfnFlags.ReqFault);
        Assert.Equal(Errno.Ok, Walk(r));
        AssertHuge(r, a, a + Pmd, Page.PmdOrder, V);
        ulong zeroHead = HmmPfn.ToPfn(r.HmmPfns[0]);
        r.DefaultFlags = HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite;
        Assert.Equal(Errno.EBUSY, WalkOnce(r));   // the THP replaced the huge zero page inside a CLEAR bracket
        Assert.Equal(Errno.Ok, WalkOnce(r));
        AssertHuge(r, a, a + Pmd, Page.PmdOrder, V | W);
        Assert.NotEqual(zeroHead, HmmPfn.ToPfn(r.HmmPfns[0]));
    }

    [Fact]
    public void AThpSplitIntoPtesIsReportedWithOrderZero()
    {
        ulong a = ThpRegion(Pmd);
        using (var cpu = new Cpu(_mm))
        {
            cpu.Write(a, 1L);
        }
        _mm.Mprotect(a, Page.Size, Prot.Read);   // splits the PMD
        HmmRange r = Range(a, a + Pmd);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.All(r.HmmPfns, e => Assert.Equal(0, HmmPfn.MapOrder(e)));
        Assert.Equal(V, r.HmmPfns[0] & (V | W));
        Assert.Equal(V | W, r.HmmPfns[1] & (V | W));
    }

    [Fact]
    public void APmdMigrationEntryIsZeroForASnapshotAndAFaultWaitsForTheMigration()
    {
        ulong a = ThpRegion(Pmd);
        using (var cpu = new Cpu(_mm))
        {
            cpu.Write(a, 1L);
        }
        Pte thp = _mm.QueryPte(a, out _);
        ulong saved = Replace(a, Pte.MakeSwap(SwapEntryType.Migration, thp.Pfn, writable: true, huge: true));
        HmmRange r = Range(a, a + Pmd);
        Assert.Equal(Errno.Ok, WalkOnce(r));
        Assert.All(r.HmmPfns, e => Assert.Equal(0UL, e));
        r.DefaultFlags = HmmPfnFlags.ReqFault;
        Errno result = Errno.EINVAL;
        Thread t = Start(() => result = WalkOnce(r), "fault");
        StaysBlocked(t, "hmm_range_fault went past a PMD migration entry without waiting");
        ulong* slot = Slot(a);
        lock (_mm.PtlFor(slot))
        {
            *slot = saved;
        }
        Join(t);
        Assert.Equal(Errno.Ok, result);
        AssertHuge(r, a, a + Pmd, Page.PmdOrder, V | W);
    }

    [Fact]
    public void ABadNonPresentPmdIsErrorForASnapshotAndEfaultForAFault()
    {
        ulong a = ThpRegion(Pmd);
        using (var cpu = new Cpu(_mm))
        {
            cpu.Write(a, 1L);
        }
        ulong saved = Replace(a, Pte.MakeSwap(SwapEntryType.HwPoison, 0x4242, writable: false, huge: true));
        HmmRange r = Range(a, a + Pmd);
        Assert.Equal(Errno.Ok, WalkOnce(r));
        Assert.All(r.HmmPfns, e => Assert.Equal(E, e));
        r.DefaultFlags = HmmPfnFlags.ReqFault;
        Assert.Equal(Errno.EFAULT, WalkOnce(r));
        Replace(a, new Pte(saved));
    }

    [Fact]
    public void AProtNoneHugePmdInAReadableVmaIsZeroAndFaultable()
    {
        ulong a = ThpRegion(Pmd);
        using (var cpu = new Cpu(_mm))
        {
            cpu.Write(a, 1L);
        }
        Pte thp = _mm.QueryPte(a, out _);
        Replace(a, new Pte((thp.Value & ~Pte.Present) | Pte.ProtNone));
        HmmRange r = Range(a, a + Pmd);
        Assert.Equal(Errno.Ok, WalkOnce(r));
        Assert.All(r.HmmPfns, e => Assert.Equal(0UL, e));
        r.DefaultFlags = HmmPfnFlags.ReqFault;
        Assert.Equal(Errno.Ok, Walk(r));
        AssertHuge(r, a, a + Pmd, Page.PmdOrder, V);
        Assert.Equal(thp.Pfn, HmmPfn.ToPfn(r.HmmPfns[0]));
    }

    // ---- hugetlbfs --------------------------------------------------------------------------------------------

    [Fact]
    public void HugetlbfsPagesAreReportedWithTheirOrderAndFaultedWhenRequested()
    {
        var pool = _bed.Own(new HugetlbPool(_mem, Page.PmdOrder, 4));
        var fs = _bed.Own(new HugetlbFs(pool));
        FileHandle h = _bed.Own(fs.Create("huge"));
        h.Truncate(4 * Pmd);
        ulong a = _mm.Mmap(Base, 4 * Pmd, Rw, MapFlags.Shared | MapFlags.Fixed, h.Inode);
        HmmRange r = Range(a, a + 4 * Pmd);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.All(r.HmmPfns, e => Assert.Equal(0UL, e));
        // Fault one page in the second huge page for read, the third for write.
        HmmRange read = Range(a + Pmd + 77 * Page.Size, a + Pmd + 78 * Page.Size, HmmPfnFlags.ReqFault);
        Assert.Equal(Errno.Ok, Walk(read));
        HmmRange write = Range(a + 2 * Pmd, a + 3 * Pmd, HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite);
        Assert.Equal(Errno.Ok, Walk(write));
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.All(r.HmmPfns[..512], e => Assert.Equal(0UL, e));
        AssertHuge(r, a + Pmd, a + 2 * Pmd, Page.PmdOrder, V);
        AssertHuge(r, a + 2 * Pmd, a + 3 * Pmd, Page.PmdOrder, V | W);
        Assert.True(pool.Contains(HmmPfn.ToPfn(r.HmmPfns[512])));
        // A write request on the read-only huge page makes the whole huge entry writable.
        r.DefaultFlags = HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite;
        Assert.Equal(Errno.Ok, Walk(r));
        for (ulong p = 0; p < 4; p++)
        {
            AssertHuge(r, a + p * Pmd, a + (p + 1) * Pmd, Page.PmdOrder, V | W);
        }
    }

    // ---- FS-DAX -----------------------------------------------------------------------------------------------

    private sealed class Dax : IDisposable
    {
        private readonly HmmTempDir _dir = new();

        public Dax(PhysicalMemory mem, ulong bytes)
        {
            Namespace = new DaxNamespace(mem, _dir.File("pmem0"), bytes);
            Fs = DaxFileSystem.Format(Namespace);
        }

        public DaxNamespace Namespace { get; }
        public DaxFileSystem Fs { get; }

        public void Dispose()
        {
            Fs.Dispose();
            Namespace.Dispose();
            _dir.Dispose();
        }
    }

    private (Dax Dax, FileHandle File) DaxFile(ulong nsBytes, ulong fileBytes)
    {
        Dax dax = _bed.Own(new Dax(_mem, nsBytes));
        FileHandle f = _bed.Own(dax.Fs.Create("f"));
        f.Truncate(fileBytes);
        return (dax, f);
    }

    [Fact]
    public void DaxPmdMappingsAreReportedWithOrderNineAndTheDeviceWritesTheFile()
    {
        (Dax dax, FileHandle f) = DaxFile(64UL << 20, 4 * Pmd);
        ulong a = _mm.Mmap(Base, 4 * Pmd, Rw, MapFlags.Shared | MapFlags.Fixed, f.Inode);
        HmmRange r = Range(a, a + 4 * Pmd, HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite);
        Assert.Equal(Errno.Ok, Walk(r));
        for (ulong p = 0; p < 4; p++)
        {
            AssertHuge(r, a + p * Pmd, a + (p + 1) * Pmd, Page.PmdOrder, V | W);
        }
        ulong pfn = HmmPfn.ToPfn(r.HmmPfns[513]);
        Assert.True(dax.Namespace.PageMap.Contains(pfn));
        _mem.Address(pfn)[9] = 0xA5;   // the device writes through the PFN it was given
        var buf = new byte[1];
        f.Read(513 * Page.Size + 9, buf);
        Assert.Equal(0xA5, buf[0]);
        // A snapshot of the same range sees the same entries without faulting.
        HmmRange snap = Range(a, a + 4 * Pmd);
        Assert.Equal(Errno.Ok, Walk(snap));
        Assert.Equal(r.HmmPfns, snap.HmmPfns);
        Assert.Equal(0L, dax.Namespace.PageMap.LiveReferences);
    }

    [Fact]
    public void DaxPudMappingsAreReportedWithOrderEighteen()
    {
        (Dax dax, FileHandle f) = DaxFile(3UL << 30, Pud);
        ulong a = _mm.Mmap(Base, Pud, Rw, MapFlags.Shared | MapFlags.Fixed, f.Inode);
        HmmRange one = Range(a + 123 * Page.Size, a + 124 * Page.Size, HmmPfnFlags.ReqFault);
        Assert.Equal(Errno.Ok, Walk(one));
        Assert.Equal(Page.PudOrder, HmmPfn.MapOrder(one.HmmPfns[0]));
        HmmRange r = Range(a, a + Pud);
        Assert.Equal(Errno.Ok, Walk(r));
        AssertHuge(r, a, a + Pud, Page.PudOrder, V);
        Assert.True(dax.Namespace.PageMap.Contains(HmmPfn.ToPfn(r.HmmPfns[0])));
    }

    [Fact]
    public void AnUnalignedDaxMappingIsReportedWithPteOrderZero()
    {
        (_, FileHandle f) = DaxFile(64UL << 20, 4 * Pmd);
        ulong a = _mm.Mmap(Base + Page.Size, Pmd, Rw, MapFlags.Shared | MapFlags.Fixed, f.Inode, Page.Size);
        HmmRange r = Range(a, a + 16 * Page.Size, HmmPfnFlags.ReqFault);
        Assert.Equal(Errno.Ok, Walk(r));
        Assert.All(r.HmmPfns, e => Assert.Equal(0, HmmPfn.MapOrder(e)));
        for (int i = 1; i < 16; i++)
        {
            Assert.Equal(HmmPfn.ToPfn(r.HmmPfns[0]) + (ulong)i, HmmPfn.ToPfn(r.HmmPfns[i]));
        }
    }

    [Fact]
    public void AfterAPunchHoleTheDeviceLosesItsMappingAndSeesTheHoleNeverTheOldData()
    {
        (_, FileHandle f) = DaxFile(64UL << 20, 2 * Pmd);
        ulong a = _mm.Mmap(Base, 2 * Pmd, Rw, MapFlags.Shared | MapFlags.Fixed, f.Inode);
        f.Write(3 * Page.Size, [1, 2, 3, 4]);
        f.Write(10 * Page.Size, [9]);
        var dev = _bed.Own(new TestMirrorDevice(_mm, a, a + 2 * Pmd));
        Assert.Equal(Errno.Ok, dev.Fault(a, a + 2 * Pmd));
        Assert.Equal((byte?)1, dev.DeviceRead(a + 3 * Page.Size));
        ulong oldPfn = TestMirrorDevice.PfnOf(dev.Pte(a + 3 * Page.Size));
        f.PunchHole(2 * Page.Size, 4 * Page.Size);
        Assert.Contains(dev.Events, e => e.Event == MmuNotifierEvent.Clear);
        Assert.Equal(0, dev.Mapped(a + 2 * Page.Size, a + 6 * Page.Size));
        Assert.Null(dev.DeviceRead(a + 3 * Page.Size));
        // The CPU side shows the hole: nothing mapped there.
        HmmRange snap = Range(a, a + 2 * Pmd);
        Assert.Equal(Errno.Ok, Walk(snap));
        Assert.All(snap.HmmPfns[2..6], e => Assert.Equal(0UL, e));
        // Faulting again reads zeroes from the hole; the rest of the file is intact.
        Assert.Equal(Errno.Ok, dev.Fault(a, a + 2 * Pmd));
        Assert.Equal((byte?)0, dev.DeviceRead(a + 3 * Page.Size));
        Assert.Equal((byte?)9, dev.DeviceRead(a + 10 * Page.Size));
        Assert.Equal(0L, dev.Violations);
        Assert.True(TestMirrorDevice.PfnOf(dev.Pte(a + 3 * Page.Size)) != oldPfn || _mem.Address(oldPfn)[0] == 0);
    }

    [Fact]
    public void AfterATruncateTheDeviceGetsErrorsAndNeverTheOldData()
    {
        (_, FileHandle f) = DaxFile(64UL << 20, 2 * Pmd);
        ulong a = _mm.Mmap(Base, 2 * Pmd, Rw, MapFlags.Shared | MapFlags.Fixed, f.Inode);
        f.Write(Pmd + 5 * Page.Size, [42]);
        var dev = _bed.Own(new TestMirrorDevice(_mm, a, a + 2 * Pmd));
        Assert.Equal(Errno.Ok, dev.Fault(a, a + 2 * Pmd));
        Assert.Equal((byte?)42, dev.DeviceRead(a + Pmd + 5 * Page.Size));
        f.Truncate(Pmd);
        Assert.Equal(0, dev.Mapped(a + Pmd, a + 2 * Pmd));
        Assert.Null(dev.DeviceRead(a + Pmd + 5 * Page.Size));
        Assert.Equal(Errno.EFAULT, dev.Fault(a + Pmd, a + 2 * Pmd));
        Assert.Equal(0, dev.Mapped(a + Pmd, a + 2 * Pmd));
        HmmRange snap = Range(a, a + 2 * Pmd);
        Assert.Equal(Errno.Ok, Walk(snap));
        Assert.All(snap.HmmPfns[512..], e => Assert.Equal(0UL, e));
        Assert.True(dev.Mapped(a, a + Pmd) == 512, "the part below the new size stays mapped");
    }
}
