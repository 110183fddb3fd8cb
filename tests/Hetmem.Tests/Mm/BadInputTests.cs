using Hetmem.Mm;
using Hetmem.Storage;
using Hetmem.Tests.Infrastructure;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Mm;

/// <summary>Every entry point validates its arguments, throws the kernel's errno, and a rejected call changes nothing.</summary>
public sealed class BadInputTests : IDisposable
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;
    private const ulong Base = 0x5000_0000_0000;

    private readonly MmTestBed _bed = new();
    private readonly AddressSpace _mm;
    private readonly ulong _a;   // [Base, +8 pages) rw anonymous, then [+8, +12) read-only

    public BadInputTests()
    {
        _mm = _bed.NewSpace();
        _a = _mm.Mmap(Base, 8 * Kib4, Rw, Anon | MapFlags.Fixed);
        _mm.Mmap(Base + 8 * Kib4, 4 * Kib4, Prot.Read, Anon | MapFlags.Fixed);
        using var cpu = new Cpu(_mm);
        cpu.Write(_a, 1L);
    }

    public void Dispose() => _bed.Dispose();

    private void Rejected(Errno expected, Action call)
    {
        string before = _mm.MapsText();
        long used = _bed.Memory.UsedFrames;
        var ex = Assert.Throws<MmException>(call);
        Assert.Equal(expected, ex.Errno);
        Assert.Equal(before, _mm.MapsText());
        Assert.Equal(used, _bed.Memory.UsedFrames);
    }

    [Fact]
    public void MmapRejectsBadArgumentsInTheKernelsOrder()
    {
        Rejected(Errno.EBADF, () => _mm.Mmap(0, Kib4, Rw, MapFlags.Private));
        Rejected(Errno.EINVAL, () => _mm.Mmap(0, Kib4, Rw, Anon, offset: 1));
        Rejected(Errno.EINVAL, () => _mm.Mmap(0, 0, Rw, Anon));
        Rejected(Errno.ENOMEM, () => _mm.Mmap(0, ulong.MaxValue, Rw, Anon));
        Rejected(Errno.ENOMEM, () => _mm.Mmap(0, ulong.MaxValue - Kib4 + 1, Rw, Anon));
        Rejected(Errno.EINVAL, () => _mm.Mmap(0, Kib4, Rw, MapFlags.Anonymous));
        Rejected(Errno.EINVAL, () => _mm.Mmap(0, Kib4, Rw, MapFlags.SharedValidate | MapFlags.Anonymous));
        Rejected(Errno.EINVAL, () => _mm.Mmap(Base + 1, Kib4, Rw, Anon | MapFlags.Fixed));
        Rejected(Errno.EINVAL, () => _mm.Mmap(Base + 1, Kib4, Rw, Anon | MapFlags.FixedNoReplace));
        Rejected(Errno.ENOMEM, () => _mm.Mmap(AddressSpace.TaskSize - Kib4, 2 * Kib4, Rw, Anon | MapFlags.Fixed));
        Rejected(Errno.ENOMEM, () => _mm.Mmap(AddressSpace.TaskSize - Kib4 + 1, 2 * Kib4, Rw, Anon | MapFlags.Fixed));   // ENOMEM before EINVAL
        Rejected(Errno.EPERM, () => _mm.Mmap(0x1000, Kib4, Rw, Anon | MapFlags.Fixed));
        Rejected(Errno.EEXIST, () => _mm.Mmap(_a + 4 * Kib4, 8 * Kib4, Rw, Anon | MapFlags.FixedNoReplace));
        Rejected(Errno.ENOMEM, () => _mm.Mmap(0, AddressSpace.TaskSize, Rw, Anon));
        Rejected(Errno.ENOMEM, () => _mm.Mmap(0, AddressSpace.TaskSize + Kib4, Rw, Anon));
    }

    [Fact]
    public void MmapIgnoresUnknownProtBitsAndUnknownFlagsLikeTheKernel()
    {
        ulong a = _mm.Mmap(0, Kib4, Rw | (Prot)0x10, Anon | (MapFlags)0x4000_0000);
        Assert.Equal("rw-p", _mm.Maps().Single(m => m.Start <= a && a < m.End).Perms);
        // MAP_SYNC without MAP_SHARED_VALIDATE is ignored too.
        ulong b = _mm.Mmap(0, Kib4, Rw, Anon | MapFlags.Sync);
        // An anonymous mapping ignores the file argument.
        using FileHandle ignored = _bed.PageCache.Create("ignored");
        ulong c = _mm.Mmap(0, Kib4, Rw, Anon, ignored.Inode);
        Assert.Equal(0, ignored.Inode.Mappings.Count);
        Assert.All(new[] { a, b, c }, x => Assert.Equal(VmaKind.Anonymous, _mm.Maps().Single(m => m.Start <= x && x < m.End).Kind));
    }

    [Fact]
    public void FileMappingsCheckTheOpenModeFlagsAndOffsets()
    {
        using FileHandle rw = _bed.PageCache.Create("f");
        rw.Truncate(4 * Kib4);
        using FileHandle ro = _bed.PageCache.Open("f", FileAccess.Read);
        using FileHandle wo = _bed.PageCache.Open("f", FileAccess.Write);
        Rejected(Errno.EACCES, () => _mm.MmapFile(0, Kib4, Rw, MapFlags.Shared, ro));
        Rejected(Errno.EACCES, () => _mm.MmapFile(0, Kib4, Prot.Read, MapFlags.Shared, wo));
        Rejected(Errno.EACCES, () => _mm.MmapFile(0, Kib4, Prot.Read, MapFlags.Private, wo));
        Rejected(Errno.EOPNOTSUPP, () => _mm.MmapFile(0, Kib4, Prot.Read, MapFlags.SharedValidate | MapFlags.Sync, rw));
        Rejected(Errno.EOPNOTSUPP, () => _mm.MmapFile(0, Kib4, Prot.Read, MapFlags.SharedValidate | (MapFlags)0x200_0000, rw));
        Rejected(Errno.EOVERFLOW, () => _mm.MmapFile(0, Kib4, Prot.Read, MapFlags.Shared, rw, offset: 0xFFFF_FFFF_FFFF_F000));
        Rejected(Errno.EOVERFLOW, () => _mm.MmapFile(0, 2 * Kib4, Prot.Read, MapFlags.Shared, rw, offset: 0x7FFF_FFFF_FFFF_F000));
        Rejected(Errno.EINVAL, () => _mm.MmapFile(0, Kib4, Prot.Read, MapFlags.Shared | MapFlags.HugeTlb, rw));
        Rejected(Errno.EINVAL, () => _mm.Mmap(0, Kib4, Rw, Anon | MapFlags.HugeTlb));
        // A private writable mapping of a read-only file is fine, and so is a shared read-only one.
        _mm.MmapFile(0, Kib4, Rw, MapFlags.Private, ro);
        _mm.MmapFile(0, Kib4, Prot.Read, MapFlags.Shared, ro);
        Rejected(Errno.EACCES, () => _mm.Mprotect(_mm.Maps().Single(m => m.Perms == "r--s").Start, Kib4, Rw));
        FileHandle closed = _bed.PageCache.Open("f", FileAccess.Read);
        closed.Dispose();
        Rejected(Errno.EBADF, () => _mm.MmapFile(0, Kib4, Prot.Read, MapFlags.Shared, closed));
    }

    [Fact]
    public void MunmapRejectsUnalignedEmptyAndOutOfRangeRequests()
    {
        Rejected(Errno.EINVAL, () => _mm.Munmap(_a + 1, Kib4));
        Rejected(Errno.EINVAL, () => _mm.Munmap(_a, 0));
        Rejected(Errno.EINVAL, () => _mm.Munmap(_a, ulong.MaxValue - Kib4 + 2));
        Rejected(Errno.EINVAL, () => _mm.Munmap(AddressSpace.TaskSize, Kib4));
        Rejected(Errno.EINVAL, () => _mm.Munmap(AddressSpace.TaskSize - Kib4, 2 * Kib4));
        // Unmapping nothing is fine.
        _mm.Munmap(Base + 0x100_0000, Kib4);
    }

    [Fact]
    public void MprotectRejectsBadRequestsAndAHoleChangesNothing()
    {
        Rejected(Errno.EINVAL, () => _mm.Mprotect(_a + 1, Kib4, Prot.Read));
        Rejected(Errno.EINVAL, () => _mm.Mprotect(_a, Kib4, (Prot)0x100));
        Rejected(Errno.ENOMEM, () => _mm.Mprotect(_a, ulong.MaxValue - Kib4, Prot.Read));
        Rejected(Errno.ENOMEM, () => _mm.Mprotect(_a, 16 * Kib4, Prot.Read));
        Rejected(Errno.ENOMEM, () => _mm.Mprotect(_a - Kib4, 2 * Kib4, Prot.Read));
        _mm.Mprotect(_a, 0, (Prot)0x100);   // a zero length succeeds before the protection is checked
        _mm.Mprotect(_a, Kib4, Rw | (Prot)8);   // PROT_SEM is accepted and ignored
        Assert.Equal(2, _mm.Maps().Count);
    }

    [Fact]
    public void MadviseRejectsBadRequests()
    {
        Rejected(Errno.EINVAL, () => _mm.Madvise(_a + 1, Kib4, Advice.DontNeed));
        Rejected(Errno.EINVAL, () => _mm.Madvise(_a, Kib4, (Advice)999));
        Rejected(Errno.EINVAL, () => _mm.Madvise(_a, ulong.MaxValue - Kib4, Advice.DontNeed));
        Rejected(Errno.EINVAL, () => _mm.Madvise(_a + 8 * Kib4, Kib4, Advice.PopulateWrite));
        using FileHandle f = _bed.PageCache.Create("adv");
        f.Truncate(Kib4);
        ulong fm = _mm.MmapFile(0, Kib4, Prot.Read, MapFlags.Shared, f);
        Rejected(Errno.EINVAL, () => _mm.Madvise(fm, Kib4, Advice.Free));
        ulong pfn = _bed.Memory.Allocate(0, zero: true);
        ulong io = _mm.MapPfnRange(0, pfn, 1, Rw);
        Rejected(Errno.EINVAL, () => _mm.Madvise(io, Kib4, Advice.DontNeed));
        Rejected(Errno.EINVAL, () => _mm.Madvise(io, Kib4, Advice.PopulateRead));
        _mm.Munmap(io, Kib4);
        _bed.Memory.Put(pfn);
        _mm.Madvise(_a, 0, Advice.DontNeed);   // empty range: nothing to do
        // A hole is ENOMEM, but the mapped part is still advised (as the kernel does).
        using var cpu = new Cpu(_mm);
        Assert.Equal(1L, cpu.Read<long>(_a));
        Assert.Equal(Errno.ENOMEM, Assert.Throws<MmException>(() => _mm.Madvise(_a - Kib4, 2 * Kib4, Advice.DontNeed)).Errno);
        Assert.Equal(0L, cpu.Read<long>(_a));
    }

    [Fact]
    public void MremapRejectsBadRequests()
    {
        Rejected(Errno.EINVAL, () => _mm.Mremap(_a, Kib4, 2 * Kib4, (MremapFlags)8));
        Rejected(Errno.EINVAL, () => _mm.Mremap(_a, Kib4, 2 * Kib4, MremapFlags.Fixed, Base + 0x100_0000));
        Rejected(Errno.EINVAL, () => _mm.Mremap(_a, Kib4, 2 * Kib4, MremapFlags.MayMove | MremapFlags.DontUnmap));
        Rejected(Errno.EINVAL, () => _mm.Mremap(_a, Kib4, Kib4, MremapFlags.DontUnmap));
        Rejected(Errno.EINVAL, () => _mm.Mremap(_a + 1, Kib4, 2 * Kib4, MremapFlags.MayMove));
        Rejected(Errno.EINVAL, () => _mm.Mremap(_a, Kib4, 0, MremapFlags.MayMove));
        Rejected(Errno.EINVAL, () => _mm.Mremap(_a, Kib4, Kib4, MremapFlags.MayMove | MremapFlags.Fixed, Base + 0x100_0001));
        Rejected(Errno.EINVAL, () => _mm.Mremap(_a, 2 * Kib4, 2 * Kib4, MremapFlags.MayMove | MremapFlags.Fixed, _a + Kib4));
        Rejected(Errno.EINVAL, () => _mm.Mremap(_a, Kib4, 2 * Kib4, MremapFlags.MayMove | MremapFlags.Fixed, AddressSpace.TaskSize - Kib4));
        Rejected(Errno.EINVAL, () => _mm.Mremap(_a, 0, Kib4, MremapFlags.MayMove));
        Rejected(Errno.EFAULT, () => _mm.Mremap(Base + 0x100_0000, Kib4, 2 * Kib4, MremapFlags.MayMove));
        Rejected(Errno.EFAULT, () => _mm.Mremap(Base + 0x100_0000, 2 * Kib4, Kib4, MremapFlags.None));
        Rejected(Errno.EFAULT, () => _mm.Mremap(_a + 7 * Kib4, 2 * Kib4, 3 * Kib4, MremapFlags.MayMove));
        Rejected(Errno.ENOMEM, () => _mm.Mremap(_a, 8 * Kib4, 9 * Kib4, MremapFlags.None));
        Rejected(Errno.EINVAL, () => _mm.Mremap(_a, 4 * Kib4, 4 * Kib4, MremapFlags.MayMove | MremapFlags.DontUnmap | MremapFlags.Fixed, _a + 2 * Kib4));
    }

    [Fact]
    public void MsyncRejectsBadRequests()
    {
        Rejected(Errno.EINVAL, () => _mm.Msync(_a + 1, Kib4, AddressSpace.MsyncFlags.Sync));
        Rejected(Errno.EINVAL, () => _mm.Msync(_a, Kib4, AddressSpace.MsyncFlags.Sync | AddressSpace.MsyncFlags.Async));
        Rejected(Errno.EINVAL, () => _mm.Msync(_a, Kib4, (AddressSpace.MsyncFlags)8));
        Rejected(Errno.ENOMEM, () => _mm.Msync(_a - Kib4, 2 * Kib4, AddressSpace.MsyncFlags.Sync));
        Rejected(Errno.ENOMEM, () => _mm.Msync(_a, ulong.MaxValue - Kib4, AddressSpace.MsyncFlags.Sync));
        _mm.Msync(_a, 0, AddressSpace.MsyncFlags.Sync);
        _mm.Msync(_a, 12 * Kib4, AddressSpace.MsyncFlags.Async);
    }

    [Fact]
    public void SpecialMappingsRejectBadRequests()
    {
        Rejected(Errno.EINVAL, () => _mm.MapPfnRange(0, _bed.Memory.ZeroPfn, 0, Prot.Read));
        Rejected(Errno.EINVAL, () => _mm.MapPfnRange(0, _bed.Memory.ZeroPfn, 1, (Prot)0x40));
        Rejected(Errno.EINVAL, () => _mm.MapPfnRange(0, 0x10, 1, Prot.Read));
        Rejected(Errno.EINVAL, () => _mm.MapPfnRange(0, _bed.Memory.ZeroPfn, 2, Prot.Read));   // the second PFN is beyond RAM
        Rejected(Errno.ENOMEM, () => _mm.MapPfnRange(0, _bed.Memory.ZeroPfn, ulong.MaxValue, Prot.Read));
        Rejected(Errno.EINVAL, () => _mm.MapMixedPages(0, 0, Prot.Read, MapFlags.Shared));
        Rejected(Errno.EINVAL, () => _mm.MapMixedPages(0, Kib4, (Prot)0x40, MapFlags.Shared));
        Rejected(Errno.EINVAL, () => _mm.MapMixedPages(0, Kib4, Prot.Read, MapFlags.None));
        Rejected(Errno.ENOMEM, () => _mm.MapMixedPages(0, ulong.MaxValue, Prot.Read, MapFlags.Shared));
    }

    [Fact]
    public void ADeadAddressSpaceRejectsEverySystemCall()
    {
        AddressSpace dead = _bed.NewSpace();
        dead.Exit();
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => dead.Mmap(0, Kib4, Rw, Anon)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => dead.Munmap(Base, Kib4)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => dead.Mprotect(Base, Kib4, Prot.Read)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => dead.Madvise(Base, Kib4, Advice.DontNeed)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => dead.Mremap(Base, Kib4, Kib4, MremapFlags.MayMove)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => dead.Fork()).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => dead.RegisterNotifier(RecordingNotifierFactory())).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => dead.MapPfnRange(0, _bed.Memory.ZeroPfn, 1, Prot.Read)).Errno);
    }

    private sealed class NullNotifier : MmuNotifier
    {
    }

    private static MmuNotifier RecordingNotifierFactory() => new NullNotifier();

    [Fact]
    public void RegisteringANotifierTwiceIsEinval()
    {
        var n = new NullNotifier();
        _mm.RegisterNotifier(n);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => _mm.RegisterNotifier(n)).Errno);
        _mm.UnregisterNotifier(n);
    }
}
