using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

/// <summary>Regression tests for bugs the mm fuzzers found (PFN/mixed maps, madvise on hugetlb).</summary>
public sealed class FuzzFindingsTests : IDisposable
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const ulong Pmd = 2 * Mib;

    private readonly MmTestBed _bed = new();
    private readonly AddressSpace _mm;
    private readonly ulong _frame;   // two RAM frames a PFN map can point at

    public FuzzFindingsTests()
    {
        _mm = _bed.NewSpace();
        _frame = _bed.Memory.Allocate(1, zero: true);
    }

    public void Dispose()
    {
        _bed.Memory.Put(_frame);
        _bed.Dispose();   // checks the invariants, exits the space and checks that every frame (page tables too) came back
    }

    private sealed class NoOps : IMmuIntervalNotifierOps
    {
        public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
        {
            subscription.SetSeq(curSeq);
            return true;
        }
    }

    private void Rejected(Errno expected, Action call)
    {
        string before = _mm.MapsText();
        long used = _bed.Memory.UsedFrames;
        var ex = Assert.Throws<MmException>(call);
        Assert.Equal(expected, ex.Errno);
        Assert.Equal(before, _mm.MapsText());
        Assert.Equal(used, _bed.Memory.UsedFrames);
    }

    private void AssertInsideUserSpace(ulong start, ulong len)
    {
        Assert.True(start >= AddressSpace.MmapMinAddr, $"mapped at 0x{start:x}, below mmap_min_addr");
        Assert.True(start + len <= AddressSpace.TaskSize, $"mapped [0x{start:x}, +0x{len:x}) above TASK_SIZE");
        Assert.Equal(0UL, start % Kib4);
    }

    // ---- remap_pfn_range / vm_insert_page placement -------------------------------------------------------------

    [Fact]
    public void APfnMapHintBelowMmapMinAddrOrBeyondTaskSizeIsAdjustedLikeAnMmapHintAndNeverUsedAsIs()
    {
        ulong low = _mm.MapPfnRange(0xF000, _frame, 1, Prot.Read);
        Assert.Equal(AddressSpace.MmapMinAddr, low);                                       // round_hint_to_min
        ulong tiny = _mm.MapPfnRange(0x800, _frame, 1, Prot.Read);                       // rounds to 0: anywhere
        AssertInsideUserSpace(tiny, Kib4);
        ulong top = _mm.MapPfnRange(AddressSpace.TaskSize, _frame, 1, Prot.Read);
        AssertInsideUserSpace(top, Kib4);
        ulong straddling = _mm.MapPfnRange(AddressSpace.TaskSize - Kib4, _frame, 2, Prot.Read);
        AssertInsideUserSpace(straddling, 2 * Kib4);
        ulong beyond = _mm.MapPfnRange(ulong.MaxValue & ~(Kib4 - 1), _frame, 2, Prot.Read);
        AssertInsideUserSpace(beyond, 2 * Kib4);
        ulong unaligned = _mm.MapPfnRange(0x3000_0000_0123, _frame, 1, Prot.Read);
        Assert.Equal(0x3000_0000_0000UL, unaligned);                                        // a hint is rounded down to its page
        Assert.All(_mm.Maps(), m => Assert.True(m.Start >= AddressSpace.MmapMinAddr && m.End <= AddressSpace.TaskSize, $"{m.Start:x}-{m.End:x}"));
        _mm.CheckInvariants();
        // Every page table these mappings took comes back at exit (checked by the bed's teardown).
    }

    [Fact]
    public void AMixedMapHintBelowMmapMinAddrOrBeyondTaskSizeIsAdjustedLikeAnMmapHint()
    {
        ulong low = _mm.MapMixedPages(0xF000, Kib4, Rw, MapFlags.Shared);
        Assert.Equal(AddressSpace.MmapMinAddr, low);
        ulong top = _mm.MapMixedPages(AddressSpace.TaskSize - Kib4, 2 * Kib4, Rw, MapFlags.Shared);
        AssertInsideUserSpace(top, 2 * Kib4);
        Assert.All(_mm.Maps(), m => Assert.True(m.Start >= AddressSpace.MmapMinAddr && m.End <= AddressSpace.TaskSize, $"{m.Start:x}-{m.End:x}"));
        _mm.CheckInvariants();
    }

    [Fact]
    public void AFixedMixedMapOutsideUserSpaceIsRejectedWithMmapsErrnosAndChangesNothing()
    {
        const MapFlags SharedFixed = MapFlags.Shared | MapFlags.Fixed;
        Rejected(Errno.EPERM, () => _mm.MapMixedPages(0xF000, Kib4, Rw, SharedFixed));
        Rejected(Errno.EPERM, () => _mm.MapMixedPages(0x1000, Kib4, Rw, MapFlags.Shared | MapFlags.FixedNoReplace));
        Rejected(Errno.ENOMEM, () => _mm.MapMixedPages(AddressSpace.TaskSize - Kib4, 2 * Kib4, Rw, SharedFixed));
        Rejected(Errno.ENOMEM, () => _mm.MapMixedPages(AddressSpace.TaskSize, Kib4, Rw, SharedFixed));
        Rejected(Errno.EINVAL, () => _mm.MapMixedPages(0x3000_0000_0123, Kib4, Rw, SharedFixed));
        ulong a = _mm.MapMixedPages(0x3000_0000_0000, 2 * Kib4, Rw, SharedFixed);
        Assert.Equal(0x3000_0000_0000UL, a);
        Rejected(Errno.EEXIST, () => _mm.MapMixedPages(a + Kib4, 2 * Kib4, Rw, MapFlags.Shared | MapFlags.FixedNoReplace));
        _mm.CheckInvariants();
    }

    // ---- PROT_NONE PFN maps ---------------------------------------------------------------------------------------

    [Fact]
    public void AProtNonePfnMapInstallsProtNoneEntriesThatFaultAndHmmReportsAsErrors()
    {
        using (Cpu w = _bed.Cpu(_mm))
        {
            ulong rw = _mm.MapPfnRange(0, _frame, 1, Rw);
            w.Write(rw + 8, 0x1234L);
            _mm.Munmap(rw, Kib4);
        }
        ulong a = _mm.MapPfnRange(0, _frame, 2, Prot.None);
        for (ulong p = 0; p < 2; p++)
        {
            Pte e = _mm.QueryPte(a + p * Kib4, out int order);
            Assert.Equal(0, order);
            Assert.True(e.IsProtNone && !e.IsPresent, $"page {p}: {e}");
            Assert.Equal(_frame + p, e.Pfn);
        }
        _mm.CheckInvariants();   // rejected present entries in a PROT_NONE VMA before the fix

        Cpu cpu = _bed.Cpu(_mm);
        Assert.Throws<SegmentationFault>(() => cpu.Read<long>(a + 8));
        Assert.Throws<SegmentationFault>(() => cpu.Write(a + Kib4, 1L));

        var n = MmuIntervalNotifier.Insert(_mm, a, 2 * Kib4, new NoOps());
        try
        {
            var r = new HmmRange(n, a, a + 2 * Kib4);
            r.NotifierSeq = n.ReadBegin();
            using (_mm.MmapLock.Read())
            {
                Assert.Equal(Errno.Ok, r.Fault());
            }
            Assert.All(r.HmmPfns, e => Assert.Equal((ulong)HmmPfnFlags.Error, e));
            r.DefaultFlags = HmmPfnFlags.ReqFault;
            r.NotifierSeq = n.ReadBegin();
            using (_mm.MmapLock.Read())
            {
                Assert.Equal(Errno.EFAULT, r.Fault());
            }
        }
        finally
        {
            n.Remove();
        }

        _mm.Mprotect(a, 2 * Kib4, Prot.Read);   // the frames become readable again
        Assert.Equal(0x1234L, cpu.Read<long>(a + 8));
        Assert.True(_mm.QueryPte(a, out _).IsPresent);
        _mm.CheckInvariants();
        _mm.Munmap(a, 2 * Kib4);
        Assert.Equal(1, _bed.Memory.Frame(_frame).RefCount);   // special entries never took a reference
    }

    /// <summary>
    /// Known bug in AddressSpace.Mprotect.cs (not this task's file): leaving PROT_NONE restores a special entry as
    /// present but read-only (the write bit is restored only for entries that were present and dirty), and a write
    /// fault on a special entry is SIGSEGV, so the PFN map can never be written again. The kernel's change_pte_range
    /// gives a VM_PFNMAP VMA (no write notification) the VMA's full protection, write included.
    /// </summary>
    [Fact]
    public void APfnMapMadeProtNoneThenReadWriteIsWritableAgain()
    {
        ulong a = _mm.MapPfnRange(0, _frame, 1, Rw);
        Cpu cpu = _bed.Cpu(_mm);
        cpu.Write(a + 8, 1L);
        _mm.Mprotect(a, Kib4, Prot.None);
        _mm.Mprotect(a, Kib4, Rw);
        SegmentationFault? segv = Record.Exception(() => cpu.Write(a + 8, 2L)) as SegmentationFault;
        // mprotect leaves the clean special entry read-only; the write fault makes it writable (wp_pfn_shared).
        Assert.True(segv is null, $"writing a shared PFN map after mprotect(PROT_NONE) then mprotect(RW) raised SIGSEGV ({segv?.Message})");
        Assert.Equal(2L, cpu.Read<long>(a + 8));
    }

    // ---- mremap(MREMAP_DONTUNMAP) past the end of its VMA ---------------------------------------------------------

    [Fact]
    public void ADontunmapMremapWhoseOldRangeRunsPastItsVmaIsEfaultAndChangesNothing()
    {
        // Found by the host-parity fuzzer (seed 7WDTTIFNt0W1): only a MREMAP_FIXED move that keeps the length may span
        // several VMAs and holes (vrm_move_only, Linux 6.17+); MREMAP_DONTUNMAP with a hint takes the one-VMA path.
        ulong a = _mm.Mmap(0, 8 * Kib4, Rw, MapFlags.Private | MapFlags.Anonymous);
        _mm.Munmap(a + 4 * Kib4, 4 * Kib4);
        Cpu cpu = _bed.Cpu(_mm);
        cpu.Write(a + 2 * Kib4, 5L);
        Rejected(Errno.EFAULT, () => _mm.Mremap(a + 2 * Kib4, 4 * Kib4, 4 * Kib4, MremapFlags.MayMove | MremapFlags.DontUnmap, 0));
        Assert.Equal(5L, cpu.Read<long>(a + 2 * Kib4));
        // Within the VMA the same call succeeds and leaves the old range mapped.
        ulong moved = _mm.Mremap(a + 2 * Kib4, 2 * Kib4, 2 * Kib4, MremapFlags.MayMove | MremapFlags.DontUnmap, 0);
        Assert.NotEqual(a + 2 * Kib4, moved);
        Assert.Equal(5L, cpu.Read<long>(moved));
        Assert.NotNull(_mm.Vmas.Find(a + 2 * Kib4));
    }

    // ---- MADV_DONTNEED on hugetlb ---------------------------------------------------------------------------------

    [Fact]
    public void DontneedOnAHugetlbVmaStartingOffAHugePageIsEinvalAndChangesNothing()
    {
        _bed.Hugetlb(4);
        ulong a = _mm.Mmap(0, 2 * Pmd, Rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb);
        Cpu cpu = _bed.Cpu(_mm);
        cpu.Write(a + 8, 11L);
        cpu.Write(a + Pmd + 8, 22L);

        Rejected(Errno.EINVAL, () => _mm.Madvise(a + Kib4, Pmd, Advice.DontNeed));
        Rejected(Errno.EINVAL, () => _mm.Madvise(a + Pmd - Kib4, 2 * Kib4, Advice.DontNeed));
        Assert.Equal(11L, cpu.Read<long>(a + 8));
        Assert.Equal(22L, cpu.Read<long>(a + Pmd + 8));

        // An aligned start is accepted; the end is rounded down to a huge page, so only whole huge pages go.
        _mm.Madvise(a, Pmd + Kib4, Advice.DontNeed);
        Assert.Equal(0L, cpu.Read<long>(a + 8));
        Assert.Equal(22L, cpu.Read<long>(a + Pmd + 8));
        _mm.CheckInvariants();
    }

    [Fact]
    public void DontneedFromAnAnonymousVmaIntoAHugetlbVmaChecksTheHugetlbPartAtItsOwnStart()
    {
        _bed.Hugetlb(2);
        ulong h = _mm.Mmap(0, Pmd, Rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb);
        ulong anon = _mm.Mmap(h - 2 * Kib4, 2 * Kib4, Rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.FixedNoReplace);
        Cpu cpu = _bed.Cpu(_mm);
        cpu.Write(anon, 5L);
        cpu.Write(h + 8, 6L);
        _mm.Madvise(anon + Kib4, Kib4 + Pmd, Advice.DontNeed);   // the hugetlb part starts at its VMA's (aligned) start
        Assert.Equal(5L, cpu.Read<long>(anon));
        Assert.Equal(0L, cpu.Read<long>(h + 8));
        _mm.CheckInvariants();
    }
}
