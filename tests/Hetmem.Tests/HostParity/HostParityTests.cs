using Hetmem.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Hetmem.Tests.HostParity;

/// <summary>
/// The same mmap/mprotect/munmap/mremap/madvise/msync sequences, good and bad, against the host kernel (P/Invoke in
/// a private window of this process) and against Hetmem: the same errno for every call and the same VMA layout
/// (ranges, permissions, offsets, and therefore the same merging) after every call.
/// </summary>
[Collection("host address space")]
public class HostParityTests(ITestOutputHelper output)
{
    private const long P = (long)ParityWorld.Page;
    private const int R = 1, W = 2, X = 4, Rw = R | W;
    private const int Shared = 1, Private = 2, SharedValidate = 3, Fixed = 0x10, Anonymous = 0x20, NoReserve = 0x4000, FixedNoReplace = 0x100000, Sync = 0x80000;
    private const int MayMove = 1, MFixed = 2, DontUnmap = 4;
    private const int DontNeed = 4, WillNeed = 3, Free = 8, HugePage = 14, NoHugePage = 15, PopulateRead = 22, PopulateWrite = 23;

    private static bool HostIsLinuxX64 => OperatingSystem.IsLinux() && System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture == System.Runtime.InteropServices.Architecture.X64;

    private void Check(ParityWorld w, IEnumerable<ParityOp> ops)
    {
        int step = 0;
        foreach (ParityOp op in ops)
        {
            step++;
            (Errno he, ulong hr, Errno me, ulong mr) = w.Run(op);
            Assert.True(he == me, $"step {step} {op.Describe()}: host {he}, Hetmem {me}");
            if (he == Errno.Ok && op is MmapOp { Flags: var f } && (f & (Fixed | FixedNoReplace)) != 0 || op is MremapOp { Flags: var rf } && (rf & MFixed) != 0 && he == Errno.Ok)
            {
                Assert.True(hr == mr, $"step {step} {op.Describe()}: host returned 0x{hr:x}, Hetmem 0x{mr:x}");
            }
            List<string> host = w.HostLayout(), mine = w.HetmemLayout();
            Assert.True(host.SequenceEqual(mine),
                $"step {step} {op.Describe()} ({he}): layouts differ\nhost:\n  {string.Join("\n  ", host)}\nHetmem:\n  {string.Join("\n  ", mine)}");
        }
    }

    [Fact]
    public void AnonymousMappingsSplitAndMergeLikeTheHostKernel()
    {
        Assert.True(HostIsLinuxX64, "host parity needs Linux on x86-64");
        using var w = new ParityWorld();
        Check(w,
        [
            new MmapOp(0, 16 * P, R, Private | Anonymous | Fixed),
            new MmapOp(16 * P, 8 * P, R, Private | Anonymous | Fixed),          // merges with the first
            new MprotectOp(4 * P, 4 * P, Rw),                                    // splits in three, adds VM_ACCOUNT
            new MprotectOp(4 * P, 4 * P, R),                                     // never faulted: VM_ACCOUNT goes, merges back
            new MprotectOp(0, 4 * P, Rw),
            new TouchOp(P),
            new MprotectOp(0, 4 * P, R),                                         // faulted: VM_ACCOUNT stays, no merge back
            new MprotectOp(10 * P, 2 * P, R),                                    // no change: no split
            new MmapOp(30 * P, 4 * P, Rw, Private | Anonymous | Fixed),
            new MmapOp(34 * P, 4 * P, Rw, Private | Anonymous | Fixed),          // merges (both accounted)
            new TouchOp(30 * P),
            new MmapOp(40 * P, 4 * P, Rw, Private | Anonymous | Fixed),
            new TouchOp(40 * P),
            new MmapOp(38 * P, 2 * P, Rw, Private | Anonymous | Fixed),          // between two faulted VMAs: merges with one
            new MunmapOp(2 * P, P),
            new MunmapOp(2 * P, P),                                              // unmapping nothing is fine
            new MadviseOp(20 * P, 2 * P, HugePage),
            new MadviseOp(20 * P, 2 * P, NoHugePage),
            new MadviseOp(20 * P, 2 * P, HugePage),
            new MadviseOp(0, 24 * P, HugePage),                                  // over the hole at 2: ENOMEM, rest advised
            new MmapOp(2 * P, P, R, Private | Anonymous | Fixed),
            new MmapOp(50 * P, 4 * P, ProtNone, Private | Anonymous | Fixed | NoReserve),
            new MmapOp(54 * P, 4 * P, ProtNone, Private | Anonymous | Fixed),    // NORESERVE differs: no merge
            new MmapOp(60 * P, 4 * P, R | X, Private | Anonymous | Fixed),
            new MunmapOp(0, 64 * P),
        ]);
    }

    private const int ProtNone = 0;

    [Fact]
    public void MremapGrowsShrinksAndMovesLikeTheHostKernel()
    {
        Assert.True(HostIsLinuxX64, "host parity needs Linux on x86-64");
        using var w = new ParityWorld();
        Check(w,
        [
            new MmapOp(0, 4 * P, Rw, Private | Anonymous | Fixed),
            new MremapOp(0, 4 * P, 8 * P, 0),                                    // grows in place
            new MmapOp(10 * P, 2 * P, Rw, Private | Anonymous | Fixed),
            new MremapOp(0, 8 * P, 12 * P, 0),                                   // would overlap: ENOMEM
            new MremapOp(0, 8 * P, 10 * P, 0),                                   // grows up to the neighbour: merges
            new MremapOp(0, 12 * P, 6 * P, 0),                                   // shrinks
            new MremapOp(2 * P, 2 * P, 2 * P, MayMove | MFixed, 20 * P),         // moves an unfaulted piece
            new MmapOp(18 * P, 2 * P, Rw, Private | Anonymous | Fixed),          // ... which merges with new neighbours
            new TouchOp(0),
            new MremapOp(0, 2 * P, 2 * P, MayMove | MFixed, 30 * P),             // a faulted piece keeps its offset
            new MmapOp(32 * P, 2 * P, Rw, Private | Anonymous | Fixed),
            new MremapOp(30 * P, 2 * P, 2 * P, MayMove | DontUnmap | MFixed, 40 * P),
            new MremapOp(18 * P, 4 * P, 8 * P, MayMove | MFixed, 50 * P),
            new MremapOp(50 * P, 8 * P, 3 * P, MayMove | MFixed, 44 * P),        // fixed move that also shrinks
            new MremapOp(44 * P, 3 * P, 3 * P, MayMove | MFixed, 45 * P),        // overlapping target: EINVAL
            new MremapOp(60 * P, P, 2 * P, 0),                                   // nothing there: EFAULT
            new MremapOp(44 * P, 6 * P, 7 * P, MayMove),                         // runs past the VMA: EFAULT
            new MremapOp(44 * P + 1, P, 2 * P, 0),
            new MremapOp(44 * P, P, 0, MayMove),
            new MremapOp(44 * P, P, 2 * P, 8),
            new MremapOp(44 * P, P, 2 * P, MFixed, 56 * P),
            new MremapOp(44 * P, P, 2 * P, MayMove | DontUnmap, 56 * P),
            new MremapOp(44 * P, P, P, MayMove | MFixed, 56 * P + 1),
            new MremapOp(44 * P, 0, P, MayMove | MFixed, 56 * P),                // old length 0 on a private mapping
        ]);
    }

    [Fact]
    public void FileAndSharedMappingsFollowTheHostKernel()
    {
        Assert.True(HostIsLinuxX64, "host parity needs Linux on x86-64");
        using var w = new ParityWorld();
        Check(w,
        [
            new MmapOp(0, 8 * P, Rw, Shared | Fixed, File: 0),
            new MmapOp(8 * P, 8 * P, Rw, Shared | Fixed, File: 0, Offset: 8 * P),     // contiguous offsets: merges
            new MmapOp(16 * P, 4 * P, Rw, Shared | Fixed, File: 0, Offset: 32 * P),   // not contiguous: no merge
            new MprotectOp(2 * P, 2 * P, R),
            new MprotectOp(2 * P, 2 * P, Rw),
            new MmapOp(24 * P, 4 * P, Rw, Shared | Fixed, File: 1),                   // read-only fd: EACCES
            new MmapOp(24 * P, 4 * P, R, Shared | Fixed, File: 1),
            new MprotectOp(24 * P, 4 * P, Rw),                                        // EACCES
            new MmapOp(28 * P, 4 * P, Rw, Private | Fixed, File: 1, Offset: 4 * P),   // private: fine
            new MprotectOp(28 * P, P, R | X),
            new MadviseOp(28 * P, 4 * P, PopulateWrite),
            new MadviseOp(24 * P, 4 * P, PopulateWrite),                              // shared read-only: EINVAL
            new MadviseOp(24 * P, 4 * P, Free),                                       // EINVAL on file mappings
            new MadviseOp(0, 8 * P, WillNeed),
            new MadviseOp(0, 8 * P, DontNeed),
            new MsyncOp(0, 20 * P, 4),
            new MsyncOp(0, 40 * P, 4),                                                // hole: ENOMEM
            new MsyncOp(1, P, 4),
            new MsyncOp(0, P, 5),
            new MmapOp(36 * P, 4 * P, Rw, SharedValidate | Fixed | Sync, File: 0),    // MAP_SYNC on a non-DAX file: EOPNOTSUPP
            new MmapOp(36 * P, 4 * P, Rw, SharedValidate | Fixed | 0x200_0000, File: 0),
            new MmapOp(36 * P, 4 * P, Rw, SharedValidate | Fixed, File: 0),
            new MmapOp(40 * P, 4 * P, Rw, Shared | Anonymous | Fixed),
            new MmapOp(44 * P, 4 * P, Rw, Shared | Anonymous | Fixed),                // two shmem objects: no merge
            new MprotectOp(41 * P, P, R),
            new MremapOp(44 * P, 4 * P, 4 * P, MayMove | MFixed | DontUnmap, 56 * P),
            new MremapOp(40 * P, 0, 2 * P, MayMove | MFixed, 50 * P),                 // duplicates a shared mapping
            new MmapOp(48 * P, P, R, Shared | Fixed, File: 0, Offset: -P),
            new MmapOp(48 * P, 2 * P, R, Shared | Fixed, File: 0, Offset: 0x7FFF_FFFF_FFFF_F000L),
        ]);
    }

    [Fact]
    public void BadInputsGetTheHostKernelsErrnosAndChangeNothing()
    {
        Assert.True(HostIsLinuxX64, "host parity needs Linux on x86-64");
        using var w = new ParityWorld();
        const long huge = -P;
        Check(w,
        [
            new MmapOp(0, 8 * P, Rw, Private | Anonymous | Fixed),
            new MmapOp(16 * P, 0, Rw, Private | Anonymous | Fixed),
            new MmapOp(16 * P + 1, P, Rw, Private | Anonymous | Fixed),
            new MmapOp(16 * P + 1, P, Rw, Private | Anonymous | FixedNoReplace),
            new MmapOp(4 * P, 8 * P, Rw, Private | Anonymous | FixedNoReplace),
            new MmapOp(16 * P, P, Rw, Anonymous | Fixed),
            new MmapOp(16 * P, P, Rw, SharedValidate | Anonymous | Fixed),
            new MmapOp(16 * P, P, Rw, Private | Anonymous | Fixed, Offset: 1),
            new MmapOp(16 * P, -1, Rw, Private | Anonymous | Fixed),
            new MmapOp(16 * P, huge, Rw, Private | Anonymous | Fixed),
            new MmapOp(16 * P, P, Rw | 0x10, Private | Anonymous | Fixed | 0x4000_0000),   // unknown bits ignored
            new MunmapOp(20 * P + 1, P),
            new MunmapOp(20 * P, 0),
            new MunmapOp(20 * P, huge),
            new MprotectOp(P + 1, P, R),
            new MprotectOp(P, P, 0x100),
            new MprotectOp(P, 0, 0x100),
            new MprotectOp(P, P, R | 8),
            new MprotectOp(P, huge, R),
            new MprotectOp(40 * P, P, R),                                         // unmapped
            new MprotectOp(-P, 2 * P, R),                                         // starts in a hole (the guard ends at W)
            new MadviseOp(P + 1, P, DontNeed),
            new MadviseOp(P, P, 999),
            new MadviseOp(P, 0, DontNeed),
            new MadviseOp(P, huge, DontNeed),
            new MadviseOp(P, P, PopulateRead),
            new MsyncOp(P, huge, 4),
            new MsyncOp(P, P, 8),
            new MsyncOp(P, 0, 4),
        ]);
    }

    /// <summary>
    /// The one deliberate difference: an mprotect whose range has a hole (ENOMEM), or a VMA that may not become
    /// writable (EACCES), after its start. The kernel changes the VMAs before it and then fails; Hetmem validates
    /// first and changes nothing (a rejected call changes nothing, DESIGN.md "Errors"). Both report the same errno.
    /// </summary>
    [Fact]
    public void AnMprotectOverAHoleFailsWithEnomemOnBothButOnlyTheHostChangesTheVmasBeforeIt()
    {
        Assert.True(HostIsLinuxX64, "host parity needs Linux on x86-64");
        using var w = new ParityWorld();
        Check(w, [new MmapOp(0, 4 * P, R, Private | Anonymous | Fixed), new MmapOp(8 * P, 4 * P, R, Private | Anonymous | Fixed)]);
        List<string> before = w.HetmemLayout();
        (Errno he, _, Errno me, _) = w.Run(new MprotectOp(0, 12 * P, Rw));
        Assert.Equal(Errno.ENOMEM, he);
        Assert.Equal(Errno.ENOMEM, me);
        Assert.Equal(before, w.HetmemLayout());
        Assert.NotEqual(before, w.HostLayout());
    }

    [Fact]
    public void ARandomSequenceOfCallsKeepsTheSameErrnosAndLayout()
    {
        Assert.True(HostIsLinuxX64, "host parity needs Linux on x86-64");
        int seed = Seed.Get(output, nameof(ARandomSequenceOfCallsKeepsTheSameErrnosAndLayout));
        var rng = new Random(seed);
        using var w = new ParityWorld();
        int[] prots = [0, R, Rw, R | X, W];
        int[] advices = [DontNeed, WillNeed, HugePage, NoHugePage, PopulateRead, Free];
        var ops = new List<ParityOp>();
        for (int i = 0; i < 250; i++)
        {
            long off = rng.Next(0, 64) * P;
            long len = rng.Next(1, 9) * P;
            ParityOp op = rng.Next(10) switch
            {
                0 or 1 => new MmapOp(off, len, prots[rng.Next(prots.Length)],
                    (rng.Next(4) == 0 ? Shared : Private) | Anonymous | Fixed | (rng.Next(5) == 0 ? NoReserve : 0)),
                2 => new MmapOp(off, len, prots[rng.Next(prots.Length)], (rng.Next(2) == 0 ? Shared : Private) | Fixed,
                    File: rng.Next(2), Offset: rng.Next(0, 48) * P),
                3 => new MunmapOp(off, len),
                4 or 5 => new MprotectOp(off, len, prots[rng.Next(prots.Length)]),
                6 => new MremapOp(off, len, rng.Next(1, 9) * P, rng.Next(3) == 0 ? 0 : MayMove | MFixed | (rng.Next(4) == 0 ? DontUnmap : 0),
                    rng.Next(0, 64) * P),
                7 => new MadviseOp(off, len, advices[rng.Next(advices.Length)]),
                _ => new TouchOp(off),
            };
            // The deliberate mprotect difference (see above) is kept out of random runs.
            if (op is MprotectOp mp && WouldPartiallyApply(w, mp.Off, mp.Length, mp.Prot))
            {
                continue;
            }
            // A grown shared or file mapping may reach past its object; keep populate away from it (SIGBUS is EFAULT on
            // both sides, but the host kernel reports the last successful page first).
            ops.Add(op);
            try
            {
                Check(w, [op]);
            }
            catch (Exception e)
            {
                throw new InvalidOperationException(
                    $"seed {seed}, op {ops.Count}; the last ops were:\n  {string.Join("\n  ", ops.TakeLast(25).Select(o => o.Describe()))}\n{e.Message}", e);
            }
        }
        Assert.True(ops.Count > 150);
    }

    /// <summary>
    /// True when the kernel would change some VMAs of an mprotect and then fail (a hole, or a VMA that may not become
    /// writable, after the first VMA), where Hetmem changes nothing.
    /// </summary>
    private static bool WouldPartiallyApply(ParityWorld w, long off, long len, int prot)
    {
        ulong start = (ulong)((long)w.Base + off), end = start + (ulong)len;
        List<Hetmem.Mm.Vma> vmas = w.Mm.Vmas.Snapshot(start, end);
        if (vmas.Count == 0 || vmas[0].Start > start)
        {
            return false;   // fails at the start: both change nothing
        }
        ulong cursor = start;
        foreach (Hetmem.Mm.Vma v in vmas)
        {
            if (v.Start > cursor || (prot & W) != 0 && (v.Flags & Hetmem.Mm.VmFlags.MayWrite) == 0)
            {
                return cursor > start;
            }
            cursor = v.End;
        }
        return cursor < end;
    }
}
