using CsCheck;
using Hetmem.Devices.Dmirror;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Fuzz;

/// <summary>
/// Random sequences of dmirror ioctls (READ, WRITE, MIGRATE_TO_DEV, MIGRATE_TO_SYS, SNAPSHOT, EXCLUSIVE,
/// CHECK_EXCLUSIVE, RELEASE, FLAGS and unknown numbers) with random addresses, page counts and user buffers over a
/// layout of readable, read-only, PROT_NONE, shared and unmapped ranges. Each call returns the errno lib/test_hmm.c
/// returns for that input (spec/selftests.md §1.4–1.5): EINVAL for an unaligned, empty or wrapping range or an unknown
/// command and for a migration over an unreadable page; EFAULT for an unmirrorable page or an inaccessible buffer;
/// EPERM for a write to a read-only VMA or a page still held exclusively; ENOENT when a migration left a page behind;
/// EOPNOTSUPP for exclusive access to a non-anonymous page. A failed call leaves the command structure as it was; a
/// call refused by the common validation changes nothing at all; no call changes the VMA layout, and data outside the
/// range (and the user buffer) never changes.
/// </summary>
/// <remarks>Replay: <c>CsCheck_Seed=&lt;printed seed&gt; dotnet test --filter FullyQualifiedName~DmirrorFuzzTests</c>.</remarks>
public sealed class DmirrorFuzzTests
{
    private const ulong P = FuzzSupport.P;
    private const ulong Base = 0x1000_0000_0000;
    private const ulong A = Base, R = Base + 16 * P, N = Base + 20 * P, Hole = Base + 24 * P, S = Base + 28 * P, End = Base + 32 * P;
    private const ulong Buf = 0x2000_0000_0000, BufPages = 64;

    private enum Cls
    {
        Rw,
        ReadOnly,
        None,
        Hole,
        Shared,
    }

    private static Cls ClassOf(ulong page) => page switch
    {
        >= A and < R => Cls.Rw,
        >= R and < N => Cls.ReadOnly,
        >= N and < Hole => Cls.None,
        >= S and < End => Cls.Shared,
        >= Buf and < Buf + BufPages * P => Cls.Rw,
        _ => Cls.Hole,
    };

    public sealed record Op(DmirrorCommand Command, ulong Addr, ulong Ptr, ulong Npages)
    {
        public override string ToString() => $"{Command}(addr 0x{Addr:x}, ptr 0x{Ptr:x}, npages 0x{Npages:x})";
    }

    private static readonly Gen<DmirrorCommand> s_command = Gen.Frequency<DmirrorCommand>(
        (3, Gen.Const(DmirrorCommand.Read)),
        (3, Gen.Const(DmirrorCommand.Write)),
        (2, Gen.Const(DmirrorCommand.MigrateToDevice)),
        (2, Gen.Const(DmirrorCommand.MigrateToSystem)),
        (2, Gen.Const(DmirrorCommand.Snapshot)),
        (2, Gen.Const(DmirrorCommand.Exclusive)),
        (2, Gen.Const(DmirrorCommand.CheckExclusive)),
        (1, Gen.OneOf(DmirrorCommand.Release, DmirrorCommand.Flags, DmirrorCommand.ReadUnlockable, (DmirrorCommand)10, (DmirrorCommand)(-1))));

    private static readonly Gen<ulong> s_addr = Gen.Frequency<ulong>(
        (6, Gen.Int[0, 31].Select(i => Base + (ulong)i * P)),
        (1, Gen.Int[0, 16].Select(i => Buf + (ulong)i * P)),
        (1, Gen.Select(Gen.Int[0, 31], Gen.OneOf(1, 8, 4095), (i, u) => Base + (ulong)i * P + (ulong)u)),
        (1, Gen.OneOf(0UL, AddressSpace.TaskSize - P, AddressSpace.TaskSize, ulong.MaxValue & ~(P - 1), 1UL << 63)));

    private static readonly Gen<ulong> s_npages = Gen.Frequency<ulong>(
        (8, Gen.Int[1, 20].Select(i => (ulong)i)),
        (1, Gen.OneOf(0UL, 33UL, 64UL)),
        (1, Gen.OneOf(1UL << 52, (1UL << 52) + 1, ulong.MaxValue, (1UL << 51) + 3, ulong.MaxValue >> 12)));

    private static readonly Gen<ulong> s_ptr = Gen.Frequency<ulong>(
        (8, Gen.Const(Buf)),
        (1, Gen.OneOf(Buf + 7, Buf + 3 * P + 1)),
        (1, Gen.OneOf(0UL, R, N, Hole, ulong.MaxValue - 16, Buf + BufPages * P - P)));

    private static readonly Gen<Op> s_op = Gen.Select(s_command, s_addr, s_ptr, s_npages, (c, a, p, n) => new Op(c, a, p, n));

    [Fact]
    public void RandomCommandsReturnTheTestDriversErrnosAndRejectedCommandsChangeNothing()
    {
        s_op.Array[1, 12].Sample(ops =>
        {
            using var mem = new PhysicalMemory(64UL << 20);
            using var driver = new DmirrorDriver(mem);
            var mm = new AddressSpace(mem);
            var cpu = new Cpu(mm);
            DmirrorFile? f = null;
            try
            {
                const MapFlags Fixed = MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed;
                mm.Mmap(A, 16 * P, Prot.Read | Prot.Write, Fixed);
                mm.Mmap(R, 4 * P, Prot.Read, Fixed);
                mm.Mmap(N, 4 * P, Prot.None, Fixed);
                mm.Mmap(S, 4 * P, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Anonymous | MapFlags.Fixed);
                mm.Mmap(Buf, BufPages * P, Prot.Read | Prot.Write, Fixed);
                for (ulong a = A; a < R; a += 2 * P)
                {
                    cpu.Write(a, a ^ 0x5EED);
                }
                cpu.Write(S, 0x5A5AUL);
                f = driver.Open(0, mm);
                foreach (Op op in ops)
                {
                    Run(mm, cpu, f, op);
                }
            }
            finally
            {
                f?.Close();
                cpu.Dispose();
                mm.Exit();
            }
        }, iter: FuzzSupport.Iter(150), threads: 1);
    }

    private static string Layout(AddressSpace mm) => string.Join("\n", mm.Maps().Select(m => $"{m.Start:x}-{m.End:x} {m.Perms}"));

    private static byte[] Snapshot(Cpu cpu, ulong start, ulong end)
    {
        byte[] b = new byte[end - start];
        cpu.Read(start, b);
        return b;
    }

    private static void Run(AddressSpace mm, Cpu cpu, DmirrorFile f, Op op)
    {
        // What the driver must do, from the input alone (lib/test_hmm.c).
        ulong size = op.Npages << 12;
        bool validRange = op.Addr % P == 0 && op.Addr < op.Addr + size;
        bool knownCommand = op.Command is >= DmirrorCommand.Read and <= DmirrorCommand.Flags;
        ulong n = validRange ? size / P : 0;
        byte[] dataBefore = Snapshot(cpu, A, R);       // (reading faults pages in: take it before the maps)
        byte[] sharedBefore = Snapshot(cpu, S, End);
        string mapsBefore = mm.MapsText(), layoutBefore = Layout(mm);
        long framesBefore = mm.Memory.UsedFrames, mirroredBefore = f.MirroredPages;
        var cmd = new DmirrorCmd { Addr = op.Addr, Ptr = op.Ptr, Npages = op.Npages, Cpages = 0xC0FFEE, Faults = 0xFA };
        DmirrorCmd original = cmd;

        Errno got = f.TryIoctl(op.Command, ref cmd, cpu);

        if (!validRange || !knownCommand)
        {
            Assert.True(got == Errno.EINVAL, $"{op}: expected EINVAL, got {got}");
        }
        else if (n <= 64)
        {
            Errno expected = Expected(mm, op, n, f);
            Assert.True(expected == got, $"{op}: expected {expected}, got {got} ({f.LastError})");
        }
        if (got != Errno.Ok)
        {
            Assert.Equal(original, cmd);   // the kernel copies the structure back only on success
        }
        else if (op.Command is DmirrorCommand.Read or DmirrorCommand.Write or DmirrorCommand.MigrateToDevice or DmirrorCommand.Snapshot or DmirrorCommand.Exclusive)
        {
            Assert.True(cmd.Cpages == n, $"{op}: cpages {cmd.Cpages}, expected {n}");
        }
        if (!validRange || !knownCommand)
        {
            Assert.True(mapsBefore == mm.MapsText(), $"{op} was refused but changed the maps");
            Assert.Equal(framesBefore, mm.Memory.UsedFrames);
            Assert.Equal(mirroredBefore, f.MirroredPages);
        }
        Assert.Equal(layoutBefore, Layout(mm));

        // Data: only a WRITE changes the data of its own range, nothing else changes any data.
        CheckUnchanged(op, validRange, size, A, dataBefore, Snapshot(cpu, A, R));
        CheckUnchanged(op, validRange, size, S, sharedBefore, Snapshot(cpu, S, End));
        if (op.Command == DmirrorCommand.Flags)
        {
            if (got == Errno.Ok)
            {
                Assert.Equal((DmirrorFlags)op.Npages, f.Flags);
            }
            var clear = new DmirrorCmd { Npages = 2 };   // clears FAIL_ALLOC again (0 would be an empty range)
            Assert.Equal(Errno.Ok, f.TryIoctl(DmirrorCommand.Flags, ref clear, cpu));
        }
    }

    private static void CheckUnchanged(Op op, bool validRange, ulong size, ulong start, byte[] before, byte[] after)
    {
        for (ulong page = 0; page < (ulong)before.Length / P; page++)
        {
            ulong va = start + page * P;
            bool written = op.Command == DmirrorCommand.Write && validRange && va >= op.Addr && va - op.Addr < size;
            Assert.True(written || before.AsSpan((int)(page * P), (int)P).SequenceEqual(after.AsSpan((int)(page * P), (int)P)), $"{op}: page 0x{va:x} changed");
        }
    }

    /// <summary>The errno of a command over n valid pages.</summary>
    private static Errno Expected(AddressSpace mm, Op op, ulong n, DmirrorFile f)
    {
        var pages = new List<Cls>();
        for (ulong i = 0; i < n; i++)
        {
            pages.Add(ClassOf(op.Addr + i * P));
        }
        bool ptrWritable(ulong bytes) => bytes == 0 || op.Ptr >= Buf && op.Ptr + bytes <= Buf + BufPages * P && op.Ptr + bytes > op.Ptr;
        bool ptrReadable(ulong bytes) => ptrWritable(bytes) || op.Ptr >= R && op.Ptr + bytes <= N && op.Ptr + bytes > op.Ptr;
        switch (op.Command)
        {
            case DmirrorCommand.Read:
                if (pages.Any(c => c is Cls.Hole or Cls.None))
                {
                    return Errno.EFAULT;
                }
                return ptrWritable(n * P) ? Errno.Ok : Errno.EFAULT;
            case DmirrorCommand.Write:
                if (!ptrReadable(n * P))
                {
                    return Errno.EFAULT;
                }
                for (int i = 0; i < pages.Count; i++)
                {
                    Cls c = pages[i];
                    if (c is Cls.Hole or Cls.None)
                    {
                        return Errno.EFAULT;
                    }
                    if (c == Cls.ReadOnly)
                    {
                        // A read-only page this device holds (migrated earlier) is reported valid without WRITE and never
                        // faulted (hmm_vma_handle_pte), so the driver's write pass fails with EFAULT (dmirror_do_fault's
                        // WARN); a page in system memory needs a write fault on a read-only VMA: EPERM.
                        // Within the VMA the walk faults every page it can, so one page still in system memory is EPERM.
                        bool allOnDevice = true;
                        for (int j = i; j < pages.Count && pages[j] == Cls.ReadOnly; j++)
                        {
                            allOnDevice &= mm.QueryPte(op.Addr + (ulong)j * P, out _).SwapType == SwapEntryType.DevicePrivate;
                        }
                        return allOnDevice ? Errno.EFAULT : Errno.EPERM;
                    }
                }
                return Errno.Ok;
            case DmirrorCommand.MigrateToDevice:
                if (pages.Any(c => c is Cls.Hole or Cls.None))
                {
                    return Errno.EINVAL;
                }
                if (pages.Any(c => c == Cls.Shared))
                {
                    return Errno.ENOENT;
                }
                return ptrWritable(n * P) ? Errno.Ok : Errno.EFAULT;
            case DmirrorCommand.MigrateToSystem:
                return pages.Any(c => c is Cls.Hole or Cls.None) ? Errno.EINVAL : Errno.Ok;
            case DmirrorCommand.Snapshot:
                return ptrWritable(n) ? Errno.Ok : Errno.EFAULT;   // a bad buffer fails at the first window it cannot take
            case DmirrorCommand.Exclusive:
                foreach (Cls c in pages)
                {
                    if (c is Cls.Hole or Cls.None or Cls.ReadOnly)
                    {
                        return Errno.EFAULT;
                    }
                    if (c == Cls.Shared)
                    {
                        return Errno.EOPNOTSUPP;
                    }
                }
                return ptrWritable(n * P) ? Errno.Ok : Errno.EFAULT;
            case DmirrorCommand.CheckExclusive:
                for (ulong i = 0; i < n; i++)
                {
                    if (f.TryGetMirrorEntry(op.Addr + i * P, out _, out _, out bool atomic) && atomic)
                    {
                        return Errno.EPERM;
                    }
                }
                return Errno.Ok;
            default:
                return Errno.Ok;   // RELEASE, FLAGS
        }
    }
}
