using CsCheck;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Tests.Infrastructure;

namespace Hetmem.Tests.Fuzz;

/// <summary>
/// The boundaries the host kernel cannot be asked about from inside this process: the top of user space (TASK_SIZE),
/// mmap_min_addr, MAP_HUGETLB alignment, remap_pfn_range (MapPfnRange) and fork. Random, boundary-biased calls run
/// on a fixed layout; each is checked against an independent model of the man pages' errnos (mmap(2), munmap(2),
/// mprotect(2), madvise(2), mremap(2) for the cases it decides), and:
/// a rejected call leaves the maps dump, the frames in use and the data of the sentinel pages unchanged;
/// a successful one keeps the VMAs sorted, disjoint and page aligned, passes the mm's invariant checker, and leaves the
/// data the model expects (zero for new or dropped anonymous pages, the old bytes otherwise); a fork child sees the
/// same layout and data, and its writes to private pages stay its own.
/// </summary>
/// <remarks>Replay: <c>CsCheck_Seed=&lt;printed seed&gt; dotnet test --filter FullyQualifiedName~MmModelFuzzTests</c>.</remarks>
public sealed class MmModelFuzzTests : IDisposable
{
    private const ulong P = FuzzSupport.P;
    private const ulong Huge = 2UL << 20;
    private const ulong TaskSize = AddressSpace.TaskSize, MinAddr = AddressSpace.MmapMinAddr;
    private const ulong W = 0x1000_0000_0000;           // 32 pages: [0, 8) private rw, [8, 12) shared rw, [16] PFN map
    private const ulong H = 0x2000_0000_0000;           // one 2 MiB hugetlb page
    private const ulong Top = TaskSize - 4 * P;         // [Top, TaskSize) private rw
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    private readonly MmTestBed _bed = new();
    private readonly ulong _frame;

    public MmModelFuzzTests()
    {
        _bed.Hugetlb(3);
        _frame = _bed.Memory.Allocate(0, zero: true);
        _bed.Own(new FrameRef(_bed.Memory, _frame));   // freed after the spaces exit (a PFN map holds no reference)
    }

    public void Dispose() => _bed.Dispose();

    private sealed class FrameRef(PhysicalMemory memory, ulong pfn) : IDisposable
    {
        public void Dispose() => memory.Put(pfn);
    }

    public abstract record Op;

    public sealed record MmapOp(ulong Addr, ulong Len, Prot Prot, MapFlags Flags) : Op
    {
        public override string ToString() => $"mmap(0x{Addr:x}, 0x{Len:x}, {Prot}, {Flags})";
    }

    public sealed record MunmapOp(ulong Addr, ulong Len) : Op
    {
        public override string ToString() => $"munmap(0x{Addr:x}, 0x{Len:x})";
    }

    public sealed record MprotectOp(ulong Addr, ulong Len, Prot Prot) : Op
    {
        public override string ToString() => $"mprotect(0x{Addr:x}, 0x{Len:x}, {Prot})";
    }

    public sealed record MadviseOp(ulong Addr, ulong Len, Advice Advice) : Op
    {
        public override string ToString() => $"madvise(0x{Addr:x}, 0x{Len:x}, {Advice})";
    }

    public sealed record MremapOp(ulong Addr, ulong OldLen, ulong NewLen, MremapFlags Flags, ulong NewAddr) : Op
    {
        public override string ToString() => $"mremap(0x{Addr:x}, 0x{OldLen:x}, 0x{NewLen:x}, {Flags}, 0x{NewAddr:x})";
    }

    public sealed record PfnMapOp(ulong Addr, int PfnKind, ulong Count, Prot Prot) : Op
    {
        public override string ToString() => $"map_pfn_range(0x{Addr:x}, pfn kind {PfnKind}, {Count}, {Prot})";
    }

    public sealed record ForkOp(ulong WritePage) : Op
    {
        public override string ToString() => $"fork, child writes 0x{WritePage:x}";
    }

    private static readonly Gen<ulong> s_addr = Gen.Frequency<ulong>(
        (4, Gen.Int[0, 31].Select(i => W + (ulong)i * P)),
        (3, Gen.Int[0, 6].Select(i => TaskSize - (ulong)i * P)),
        (2, Gen.OneOf(MinAddr - P, MinAddr, MinAddr + P, P, 0UL)),
        (2, Gen.OneOf(H, H + P, H + Huge, H - P, H + Huge / 2)),
        (1, Gen.OneOf(W + 1, TaskSize + P, ulong.MaxValue & ~(P - 1), 1UL << 63)));

    private static readonly Gen<ulong> s_len = Gen.Frequency<ulong>(
        (5, Gen.Int[1, 6].Select(i => (ulong)i * P)),
        (2, Gen.OneOf(Huge, Huge + P, Huge - P, 2 * Huge)),
        (2, Gen.OneOf(0UL, 1UL, P - 1, P + 1)),
        (1, Gen.OneOf(TaskSize, TaskSize + P, ulong.MaxValue, ulong.MaxValue - P + 1, 1UL << 63)));

    private static readonly Gen<Prot> s_prot = Gen.Frequency<Prot>(
        (6, Gen.OneOf(Prot.Read | Prot.Write, Prot.Read, Prot.None, Prot.Read | Prot.Exec)),
        (1, Gen.OneOf((Prot)8, (Prot)0x10, (Prot)0x0100_0000)));

    private static readonly Gen<Op> s_op = Gen.Frequency<Op>(
        (5, Gen.Select(s_addr, s_len, s_prot, Gen.Frequency<MapFlags>(
            (5, Gen.Const(Anon | MapFlags.Fixed)), (2, Gen.Const(Anon | MapFlags.FixedNoReplace)), (2, Gen.Const(Anon)),
            (2, Gen.OneOf(Anon | MapFlags.HugeTlb | MapFlags.Fixed, Anon | MapFlags.HugeTlb)), (1, Gen.OneOf(MapFlags.Anonymous | MapFlags.Fixed, MapFlags.Shared | MapFlags.Anonymous | MapFlags.Fixed))),
            (a, l, p, f) => (Op)new MmapOp(a, l, p & ~(Prot)0x0100_0008, f))),
        (3, Gen.Select(s_addr, s_len, (a, l) => (Op)new MunmapOp(a, l))),
        (3, Gen.Select(s_addr, s_len, s_prot, (a, l, p) => (Op)new MprotectOp(a, l, p))),
        (2, Gen.Select(s_addr, s_len, Gen.OneOf(Advice.DontNeed, Advice.WillNeed, Advice.Free, Advice.PopulateWrite, (Advice)999), (a, l, v) => (Op)new MadviseOp(a, l, v))),
        (2, Gen.Select(s_addr, s_len, s_len, Gen.OneOf(MremapFlags.None, MremapFlags.MayMove, MremapFlags.MayMove | MremapFlags.Fixed, (MremapFlags)8), s_addr,
            (a, o, n, f, t) => (Op)new MremapOp(a, o, n, f, t))),
        // PFN maps take their address as a hint (mmap's rules: raised to mmap_min_addr, anywhere when it does not fit);
        // the model places them only at addresses that fit, so hints outside user space become 0 ("anywhere") here.
        (2, Gen.Select(s_addr, Gen.Int[0, 3], Gen.OneOf(1UL, 2UL, 0UL, TaskSize, ulong.MaxValue), s_prot,
            (a, k, c, p) => (Op)new PfnMapOp(a >= MinAddr && c <= TaskSize / P && a <= TaskSize - c * P ? a : 0, k, c, p))),
        (1, Gen.Int[0, 11].Select(i => (Op)new ForkOp(W + (ulong)i * P))));

    [Fact]
    public void BoundaryCallsFollowTheManPagesAndRejectionsChangeNothing()
    {
        s_op.Array[1, 12].Sample(ops =>
        {
            AddressSpace mm = _bed.NewSpace();
            var cpu = new Cpu(mm);
            try
            {
                var data = new Dictionary<ulong, ulong>();   // page → expected first 8 bytes (tracked pages only)
                mm.Mmap(W, 8 * P, Prot.Read | Prot.Write, Anon | MapFlags.Fixed);
                mm.Mmap(W + 8 * P, 4 * P, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Anonymous | MapFlags.Fixed);
                mm.Mmap(Top, 4 * P, Prot.Read | Prot.Write, Anon | MapFlags.Fixed);
                mm.Mmap(MinAddr, 2 * P, Prot.Read | Prot.Write, Anon | MapFlags.Fixed);
                mm.Mmap(H, Huge, Prot.Read | Prot.Write, Anon | MapFlags.HugeTlb | MapFlags.Fixed);
                Assert.Equal(W + 16 * P, mm.MapPfnRange(W + 16 * P, _frame, 1, Prot.Read));
                foreach (ulong page in (ulong[])[W, W + 3 * P, W + 7 * P, W + 8 * P, W + 11 * P, Top, TaskSize - P, MinAddr, H, H + Huge - P])
                {
                    cpu.Write(page, page ^ 0xFEED);
                    data[page] = page ^ 0xFEED;
                }
                int step = 0;
                foreach (Op op in ops)
                {
                    step++;
                    Apply(mm, cpu, op, data, $"step {step} {op}");
                }
            }
            finally
            {
                cpu.Dispose();
                mm.Exit();
            }
        }, iter: FuzzSupport.Iter(250), threads: 1, print: ops => string.Join("\n", ops.Select(o => o.ToString())));
    }

    private static bool Readable(AddressSpace mm, ulong page) =>
        mm.Vmas.Find(page) is { } v && (v.Flags & VmFlags.Read) != 0 && v.Kind is not VmaKind.PfnMap;

    private static void CheckData(AddressSpace mm, Cpu cpu, Dictionary<ulong, ulong> data, string what)
    {
        foreach ((ulong page, ulong value) in data)
        {
            if (Readable(mm, page))
            {
                ulong got = cpu.Read<ulong>(page);
                Assert.True(got == value, $"{what}: page 0x{page:x} holds 0x{got:x}, expected 0x{value:x}");
            }
        }
    }

    private static void CheckLayout(AddressSpace mm, string what)
    {
        ulong last = 0;
        foreach (MapsEntry m in mm.Maps())
        {
            Assert.True(m.Start % P == 0 && m.End % P == 0 && m.Start < m.End && m.Start >= last && m.End <= TaskSize && m.Start >= MinAddr,
                $"{what}: bad VMA {m}\n{mm.MapsText()}");
            last = m.End;
        }
        mm.CheckInvariants();
    }

    /// <summary>VMAs of [start, end) in order, or an empty list.</summary>
    private static List<Vma> Vmas(AddressSpace mm, ulong start, ulong end) => end > start ? mm.Vmas.Snapshot(start, end) : [];

    private static bool Free(AddressSpace mm, ulong start, ulong end) => Vmas(mm, start, end).Count == 0;

    /// <summary>True when a hugetlb VMA of [start, end) would be cut off a huge-page boundary.</summary>
    private static bool SplitsHugetlb(AddressSpace mm, ulong start, ulong end) =>
        Vmas(mm, start, end).Any(v => v.Kind == VmaKind.HugeTlb && (start > v.Start && start % Huge != 0 || end < v.End && end % Huge != 0));

    private static ulong AlignUp(ulong x) => (x + P - 1) & ~(P - 1);

    private void Apply(AddressSpace mm, Cpu cpu, Op op, Dictionary<ulong, ulong> data, string what)
    {
        CheckData(mm, cpu, data, what + " (before)");   // reads fault pages in: do it before the snapshot
        string maps = mm.MapsText();
        long frames = mm.Memory.UsedFrames;
        Errno? expected = Expect(mm, op);
        ulong? hintResult = null;   // mmap(2): a free, page-aligned hint is used as is; a nonzero one below mmap_min_addr is raised to it
        if (op is MmapOp { Flags: var hf } hm && (hf & (MapFlags.Fixed | MapFlags.FixedNoReplace | MapFlags.HugeTlb)) == 0 && hm.Addr >= P)
        {
            ulong h = hm.Addr < MinAddr ? MinAddr : hm.Addr & ~(P - 1);
            ulong hl = AlignUp(hm.Len);
            if (hl != 0 && hl <= TaskSize && h <= TaskSize - hl && Free(mm, h, h + hl))
            {
                hintResult = h;
            }
        }
        Errno got = Errno.Ok;
        ulong result = 0;
        switch (op)
        {
            case MmapOp m:
                (got, result) = FuzzSupport.ErrnoOf(() => mm.Mmap(m.Addr, m.Len, m.Prot, m.Flags));
                break;
            case MunmapOp u:
                got = FuzzSupport.ErrnoOf(() => mm.Munmap(u.Addr, u.Len));
                break;
            case MprotectOp p:
                got = FuzzSupport.ErrnoOf(() => mm.Mprotect(p.Addr, p.Len, p.Prot));
                break;
            case MadviseOp a:
                got = FuzzSupport.ErrnoOf(() => mm.Madvise(a.Addr, a.Len, a.Advice));
                break;
            case MremapOp r:
                (got, result) = FuzzSupport.ErrnoOf(() => mm.Mremap(r.Addr, r.OldLen, r.NewLen, r.Flags, r.NewAddr));
                break;
            case PfnMapOp f:
                ulong pfn = f.PfnKind switch { 0 => _frame, 1 => 0, 2 => ulong.MaxValue - 1, _ => _frame - 2 };   // frames with memory behind them
                (got, result) = FuzzSupport.ErrnoOf(() => mm.MapPfnRange(f.Addr, pfn, f.Count, f.Prot));
                break;
            case ForkOp k:
                CheckFork(mm, cpu, data, k, what);
                return;
        }
        Assert.True(expected is null || expected == got, $"{what}: expected {expected}, got {got}\n{maps}");
        // madvise advises the mapped parts before it reports a hole, and MADV_POPULATE_* faults pages in address order
        // until it meets a VMA it may not populate: both change residency and still fail, as the kernel does.
        bool partial = op is MadviseOp { Advice: var adv } && (got == Errno.ENOMEM || adv is Advice.PopulateRead or Advice.PopulateWrite);
        if (got != Errno.Ok && !partial)
        {
            Assert.True(maps == mm.MapsText(), $"{what} was rejected ({got}) but changed the maps:\nbefore:\n{maps}after:\n{mm.MapsText()}");
            Assert.True(frames == mm.Memory.UsedFrames, $"{what} was rejected ({got}) but frames in use went {frames} -> {mm.Memory.UsedFrames}");
            CheckData(mm, cpu, data, what + " (rejected)");
            return;
        }
        CheckLayout(mm, what);
        // The data model after a success.
        switch (op)
        {
            case MmapOp m:
                ulong len = (m.Flags & MapFlags.HugeTlb) != 0 ? (m.Len + Huge - 1) & ~(Huge - 1) : AlignUp(m.Len);
                Assert.True(result % P == 0, what);
                Assert.True(Vmas(mm, result, result + len).All(v => (v.Flags & (VmFlags.Read | VmFlags.Write | VmFlags.Exec)) == (VmFlags)(int)(m.Prot & (Prot)7))
                    && mm.Vmas.Find(result) is not null && mm.Vmas.Find(result + len - P) is not null,
                    $"{what}: [0x{result:x}, +0x{len:x}) is not mapped {m.Prot}\n{mm.MapsText()}");
                if ((m.Flags & (MapFlags.Fixed | MapFlags.FixedNoReplace)) != 0)
                {
                    Assert.Equal(m.Addr, result);
                }
                else if (hintResult is { } hr)
                {
                    Assert.True(hr == result, $"{what}: the free hint 0x{hr:x} was not used (got 0x{result:x})");
                }
                Forget(data, result, result + len);
                break;
            case MunmapOp u:
                Assert.True(Free(mm, u.Addr, u.Addr + AlignUp(u.Len)), $"{what}: the range is still mapped\n{mm.MapsText()}");
                Forget(data, u.Addr, u.Addr + AlignUp(u.Len));
                break;
            case MprotectOp p when p.Len != 0:
                Assert.True(Vmas(mm, p.Addr, p.Addr + AlignUp(p.Len)).All(v => (v.Flags & (VmFlags.Read | VmFlags.Write | VmFlags.Exec)) == (VmFlags)(int)(p.Prot & (Prot)7)),
                    $"{what}: protection not applied\n{mm.MapsText()}");
                break;
            case MadviseOp { Advice: Advice.Free } a:
                Forget(data, a.Addr, a.Addr + AlignUp(a.Len));   // MADV_FREE: the old bytes or zeroes, whenever reclaim comes
                break;
            case MadviseOp { Advice: Advice.DontNeed } a:
                foreach (ulong page in data.Keys.ToList())
                {
                    ulong end = a.Addr + AlignUp(a.Len);
                    Vma? v = mm.Vmas.Find(page);
                    if (page < a.Addr || page >= end || v is null)
                    {
                        continue;
                    }
                    if (v.Kind == VmaKind.Anonymous)
                    {
                        data[page] = 0;   // a private anonymous page reads back as zeroes; shared memory keeps its data
                    }
                    else if (v.Kind == VmaKind.HugeTlb && !v.IsShared)
                    {
                        ulong hp = page & ~(Huge - 1);   // only whole huge pages are dropped (the end is rounded down)
                        if (hp >= Math.Max(a.Addr, v.Start) && hp + Huge <= Math.Min(end, v.End))
                        {
                            data[page] = 0;
                        }
                    }
                }
                break;
            case MremapOp r:
                Forget(data, r.Addr, r.Addr + AlignUp(r.OldLen));
                Forget(data, result, result + AlignUp(r.NewLen));
                break;
            case PfnMapOp f:
                Assert.True(mm.Vmas.Find(result) is { Kind: VmaKind.PfnMap } pv && pv.Start == result && pv.Length == f.Count * P, $"{what}: no PFN map at 0x{result:x}");
                break;
        }
        CheckData(mm, cpu, data, what + " (after)");
    }

    private static void Forget(Dictionary<ulong, ulong> data, ulong start, ulong end)
    {
        foreach (ulong page in data.Keys.Where(p => p >= start && p < end).ToList())
        {
            data.Remove(page);
        }
    }

    private void CheckFork(AddressSpace mm, Cpu cpu, Dictionary<ulong, ulong> data, ForkOp k, string what)
    {
        string maps = mm.MapsText();
        AddressSpace child;
        try
        {
            child = _bed.Fork(mm);
        }
        catch (MmException e) when (e.Errno == Errno.ENOMEM)
        {
            // fork(2): ENOMEM (here: no huge page for a private hugetlb copy); the parent is left as it was.
            Assert.True(maps == mm.MapsText(), $"{what}: a failed fork changed the parent");
            return;
        }
        var ccpu = new Cpu(child);
        try
        {
            Assert.Equal(mm.Maps().Select(m => (m.Start, m.End, m.Perms, m.Kind, m.Offset)), child.Maps().Select(m => (m.Start, m.End, m.Perms, m.Kind, m.Offset)));
            CheckData(child, ccpu, data, what + " (child)");
            if (child.Vmas.Find(k.WritePage) is { } v && (v.Flags & VmFlags.Write) != 0 && v.Kind is VmaKind.Anonymous or VmaKind.File)
            {
                bool shared = v.IsShared;
                ccpu.Write(k.WritePage, 0xC41DUL);
                ulong parentSees = cpu.Read<ulong>(k.WritePage);
                if (shared)
                {
                    Assert.True(parentSees == 0xC41DUL, $"{what}: a shared page written by the child must change in the parent");
                    data[k.WritePage] = 0xC41DUL;
                }
                else
                {
                    ulong before = data.TryGetValue(k.WritePage, out ulong d) ? d : parentSees;
                    Assert.True(parentSees == before, $"{what}: the child's write to a private page leaked into the parent");
                }
            }
            CheckLayout(child, what + " (child)");
        }
        finally
        {
            ccpu.Dispose();
            child.Exit();
        }
        CheckData(mm, cpu, data, what + " (parent after fork)");
        CheckLayout(mm, what);
    }

    /// <summary>The errno the man pages give for this call on this layout, or null when the model does not decide.</summary>
    private static Errno? Expect(AddressSpace mm, Op op)
    {
        switch (op)
        {
            case MmapOp m:
            {
                bool huge = (m.Flags & MapFlags.HugeTlb) != 0;
                bool fixedMap = (m.Flags & (MapFlags.Fixed | MapFlags.FixedNoReplace)) != 0;
                ulong len = m.Len;
                if (huge)
                {
                    len = len + Huge - 1 < len ? 0 : (len + Huge - 1) & ~(Huge - 1);
                }
                if (len == 0)
                {
                    return Errno.EINVAL;
                }
                if (AlignUp(len) == 0)
                {
                    return Errno.ENOMEM;
                }
                len = AlignUp(len);
                if (len > TaskSize)
                {
                    return Errno.ENOMEM;
                }
                if (fixedMap)
                {
                    if (huge && m.Addr % Huge != 0)
                    {
                        return m.Addr > TaskSize - len ? null : Errno.EINVAL;   // which comes first is not pinned down here
                    }
                    if (m.Addr > TaskSize - len)
                    {
                        return Errno.ENOMEM;
                    }
                    if (m.Addr % P != 0)
                    {
                        return Errno.EINVAL;
                    }
                    if (m.Addr < MinAddr)
                    {
                        return Errno.EPERM;
                    }
                    if ((m.Flags & MapFlags.FixedNoReplace) != 0 && !Free(mm, m.Addr, m.Addr + len))
                    {
                        return Errno.EEXIST;
                    }
                }
                if ((m.Flags & MapFlags.SharedValidate) == 0)
                {
                    return Errno.EINVAL;
                }
                if (fixedMap && SplitsHugetlb(mm, m.Addr, m.Addr + len))
                {
                    return Errno.EINVAL;   // the replaced hugetlb VMA would be cut off a huge-page boundary
                }
                return huge || !fixedMap && len >= 1UL << 46 ? null : Errno.Ok;   // hugetlb: the pool may run out; a huge hint: no room
            }
            case MunmapOp u:
            {
                ulong len = AlignUp(u.Len);
                if (u.Addr % P != 0 || u.Len == 0 || len == 0 || len > TaskSize || u.Addr > TaskSize - len)
                {
                    return Errno.EINVAL;
                }
                return SplitsHugetlb(mm, u.Addr, u.Addr + len) ? Errno.EINVAL : Errno.Ok;
            }
            case MprotectOp p:
            {
                if (p.Addr % P != 0)
                {
                    return Errno.EINVAL;
                }
                if (p.Len == 0)
                {
                    return Errno.Ok;
                }
                ulong len = AlignUp(p.Len), end = p.Addr + len;
                if (len == 0 || end <= p.Addr)
                {
                    return Errno.ENOMEM;
                }
                if ((p.Prot & ~(Prot)0x0100_000F) != 0)
                {
                    return Errno.EINVAL;
                }
                List<Vma> vmas = Vmas(mm, p.Addr, end);
                if ((p.Prot & (Prot)0x0100_0000) != 0)
                {
                    return vmas.Count == 0 ? Errno.ENOMEM : Errno.EINVAL;   // PROT_GROWSDOWN on a mapping that does not grow
                }
                ulong cursor = p.Addr;
                foreach (Vma v in vmas)
                {
                    if (v.Start > cursor)
                    {
                        return Errno.ENOMEM;
                    }
                    if (v.Kind == VmaKind.HugeTlb && (p.Addr > v.Start && p.Addr % Huge != 0 || end < v.End && end % Huge != 0))
                    {
                        return Errno.EINVAL;
                    }
                    cursor = v.End;
                }
                return cursor < end ? Errno.ENOMEM : Errno.Ok;
            }
            case MadviseOp a:
            {
                if (a.Addr % P != 0 || !Enum.IsDefined(a.Advice))
                {
                    return Errno.EINVAL;
                }
                ulong len = AlignUp(a.Len);
                if (len < a.Len || a.Addr + len < a.Addr)
                {
                    return Errno.EINVAL;
                }
                if (len == 0)
                {
                    return Errno.Ok;
                }
                List<Vma> vmas = Vmas(mm, a.Addr, a.Addr + len);
                if (a.Advice == Advice.DontNeed && vmas.Any(v => v.Kind == VmaKind.HugeTlb && Math.Max(a.Addr, v.Start) % Huge != 0))
                {
                    // madvise_dontneed_free_valid_vma: a hugetlb VMA whose part of the range starts off a huge page.
                    return Errno.EINVAL;
                }
                if (a.Advice is Advice.DontNeed or Advice.Free && vmas.Any(v => v.Kind == VmaKind.PfnMap)
                    || a.Advice == Advice.Free && vmas.Any(v => v.Kind != VmaKind.Anonymous))
                {
                    return Errno.EINVAL;
                }
                if (a.Advice == Advice.PopulateWrite)
                {
                    return null;   // stops at the first hole (ENOMEM) or unwritable VMA (EINVAL), in address order
                }
                ulong cursor = a.Addr;
                foreach (Vma v in vmas)
                {
                    if (v.Start > cursor)
                    {
                        return Errno.ENOMEM;
                    }
                    cursor = v.End;
                }
                return cursor < a.Addr + len ? Errno.ENOMEM : Errno.Ok;
            }
            case MremapOp r:
            {
                if (((int)r.Flags & ~7) != 0 || r.Addr % P != 0 || AlignUp(r.NewLen) == 0 || AlignUp(r.NewLen) > TaskSize)
                {
                    return Errno.EINVAL;
                }
                if ((r.Flags & MremapFlags.Fixed) != 0)
                {
                    return null;   // the fixed-target rules are compared with the host kernel in MmHostParityFuzzTests
                }
                Vma? v = mm.Vmas.Find(r.Addr);
                ulong oldLen = AlignUp(r.OldLen), newLen = AlignUp(r.NewLen);
                if (v is null)
                {
                    return Errno.EFAULT;
                }
                if (v.Kind == VmaKind.HugeTlb)
                {
                    // mremap(2) on hugetlb: the address must be huge-page aligned and the mapping cannot grow.
                    return r.Addr % Huge != 0 || ((newLen + Huge - 1) & ~(Huge - 1)) > ((oldLen + Huge - 1) & ~(Huge - 1)) ? Errno.EINVAL : null;
                }
                if (oldLen > newLen && (r.Addr + newLen > TaskSize || oldLen - newLen > TaskSize - (r.Addr + newLen)))
                {
                    return Errno.EINVAL;   // the old tail would be unmapped by munmap(2), which refuses it
                }
                if (r.Flags == MremapFlags.None && v.Kind == VmaKind.Anonymous && r.Addr + oldLen == v.End && oldLen != 0 && newLen > oldLen && r.Addr + newLen > TaskSize)
                {
                    return Errno.ENOMEM;   // cannot grow past the top of user space in place, and may not move
                }
                return null;
            }
            case PfnMapOp f:
            {
                if (f.Count == 0 || (f.Prot & ~(Prot)7) != 0)
                {
                    return Errno.EINVAL;
                }
                if (f.Count > TaskSize / P)
                {
                    return Errno.ENOMEM;
                }
                if (f.PfnKind is 1 or 2)
                {
                    return f.PfnKind == 2 && f.Count > 1 ? Errno.ENOMEM : Errno.EINVAL;   // no memory behind the PFN, or the PFNs wrap
                }
                return Errno.Ok;
            }
            default:
                return null;
        }
    }
}
