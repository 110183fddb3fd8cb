using CsCheck;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Tests.Infrastructure;

namespace Hetmem.Tests.Fuzz;

/// <summary>
/// <see cref="HmmRange"/> and <see cref="HmmRange.Fault"/> with random start/end, default flags, flag masks and per-page
/// requests over a fixed layout of good and bad VMAs and holes. Each result is checked against an independent model of
/// hmm_range_fault (spec/hmm-semantics.md §2.3–2.5): the errno of the first failing VMA or hole in address order
/// (EFAULT for a hole or an unmirrorable VMA that must be faulted, EPERM for a write on a VMA without VM_WRITE, EBUSY
/// for a stale sequence), and on success every entry (ERROR, VALID/WRITE as requested, PFNs that match the CPU page
/// table, sticky bits kept). Nothing changes in the mm except legitimate faults: a pure snapshot or an EBUSY changes no
/// maps, frames or entries, and no call changes the VMA layout or the data of written pages.
/// </summary>
/// <remarks>Replay: <c>CsCheck_Seed=&lt;printed seed&gt; dotnet test --filter FullyQualifiedName~HmmRangeFuzzTests</c>.</remarks>
public sealed class HmmRangeFuzzTests : IDisposable
{
    private const ulong P = FuzzSupport.P;
    private const ulong Base = 0x1000_0000_0000;
    private const int Pages = 48;
    private const ulong ReqFault = (ulong)HmmPfnFlags.ReqFault, ReqWrite = (ulong)HmmPfnFlags.ReqWrite, ErrorBit = (ulong)HmmPfnFlags.Error;

    private enum Kind
    {
        Hole,
        Bad,        // PROT_NONE, write-only (no VM_READ), VM_PFNMAP|VM_IO: ERROR, EFAULT when a fault is requested
        ReadOnly,   // readable, not writable: EPERM when a write is requested
        Writable,
    }

    // Page ranges of the layout (start page, end page, kind); everything else in [0, 48) is a hole.
    private static readonly (int Start, int End, Kind Kind, string What)[] s_layout =
    [
        (0, 8, Kind.Writable, "anon rw, half written"),
        (8, 12, Kind.ReadOnly, "anon r, half read (zero page)"),
        (16, 20, Kind.Bad, "PROT_NONE"),
        (20, 24, Kind.Bad, "PROT_WRITE only"),
        (24, 28, Kind.Bad, "PFN map"),
        (28, 32, Kind.Writable, "shared anon rw"),
        (32, 40, Kind.Writable, "anon rw, untouched"),
    ];

    private readonly MmTestBed _bed = new();
    private readonly ulong _pfnMapFrame;

    public HmmRangeFuzzTests()
    {
        _pfnMapFrame = _bed.Memory.Allocate(0, zero: true);
        _bed.Own(new FrameRef(_bed.Memory, _pfnMapFrame));   // freed after the spaces exit (the PFN maps hold no reference)
    }

    public void Dispose() => _bed.Dispose();

    private sealed class FrameRef(PhysicalMemory memory, ulong pfn) : IDisposable
    {
        public void Dispose() => memory.Put(pfn);
    }

    private sealed class SeqOnly : IMmuIntervalNotifierOps
    {
        public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
        {
            subscription.SetSeq(curSeq);
            return true;
        }
    }

    private static Kind KindOf(int page)
    {
        foreach ((int s, int e, Kind k, _) in s_layout)
        {
            if (page >= s && page < e)
            {
                return k;
            }
        }
        return Kind.Hole;
    }

    private (AddressSpace Mm, Cpu Cpu) NewWorld()
    {
        AddressSpace mm = _bed.NewSpace();
        const MapFlags Fixed = MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed;
        mm.Mmap(Base, 8 * P, Prot.Read | Prot.Write, Fixed);
        mm.Mmap(Base + 8 * P, 4 * P, Prot.Read, Fixed);
        mm.Mmap(Base + 16 * P, 4 * P, Prot.None, Fixed);
        mm.Mmap(Base + 20 * P, 4 * P, Prot.Write, Fixed);
        Assert.Equal(Base + 24 * P, mm.MapPfnRange(Base + 24 * P, _pfnMapFrame, 1, Prot.Read | Prot.Write));
        mm.Mmap(Base + 25 * P, 3 * P, Prot.None, Fixed);   // the rest of the bad span [24, 28)
        mm.Mmap(Base + 28 * P, 4 * P, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Anonymous | MapFlags.Fixed);
        mm.Mmap(Base + 32 * P, 8 * P, Prot.Read | Prot.Write, Fixed);
        var cpu = new Cpu(mm);
        for (int i = 0; i < 8; i += 2)
        {
            cpu.Write(Base + (ulong)i * P, 0xA5A5_0000UL + (ulong)i);
        }
        cpu.Read<byte>(Base + 8 * P);
        cpu.Read<byte>(Base + 10 * P);
        cpu.Write(Base + 28 * P, 0x5A5AUL);
        return (mm, cpu);
    }

    /// <summary>One random call: the page window [Start, End) relative to Base, the flags, the per-page inputs and how the sequence is made stale.</summary>
    public sealed record Case(int Start, int End, ulong Default, ulong Mask, ulong[] Inputs, int Stale)
    {
        public override string ToString() =>
            $"pages [{Start}, {End}) default 0x{Default:x} mask 0x{Mask:x} stale {Stale} inputs [{string.Join(", ", Inputs.Take(End - Start).Select(i => $"0x{i:x}"))}]";
    }

    private static readonly Gen<ulong> s_flags = Gen.Frequency<ulong>(
        (3, Gen.Const(0UL)),
        (3, Gen.Const(ReqFault)),
        (2, Gen.Const(ReqFault | ReqWrite)),
        (1, Gen.Const(ReqWrite)),
        (1, Gen.OneOf(ErrorBit, (ulong)HmmPfnFlags.DmaMapped, ReqFault | ErrorBit | 0x1234UL)));

    private static readonly Gen<ulong> s_mask = Gen.Frequency<ulong>(
        (3, Gen.Const(0UL)),
        (2, Gen.Const(ReqFault | ReqWrite)),
        (1, Gen.OneOf(ReqFault, ReqWrite, ulong.MaxValue)));

    private static readonly Gen<ulong> s_input = Gen.Frequency<ulong>(
        (5, Gen.Const(0UL)),
        (2, Gen.Const(ReqFault)),
        (1, Gen.Const(ReqFault | ReqWrite)),
        (1, Gen.OneOf(ReqWrite, (ulong)HmmPfnFlags.DmaMapped, (ulong)(HmmPfnFlags.P2pDma | HmmPfnFlags.ReqFault), 0xDEAD_BEEFUL, ulong.MaxValue)));

    private static readonly Gen<Case> s_case = Gen.Select(Gen.Int[-2, 49], Gen.Int[1, 24], s_flags, s_mask, s_input.Array[52],
        Gen.Frequency<int>((8, Gen.Const(0)), (1, Gen.OneOf(1, 2))),
        (s, n, d, m, inputs, stale) => new Case(s, Math.Min(s + n, 50), d, m, inputs, stale));

    [Fact]
    public void RandomRangesAndFlagsFaultOrFailWithTheKernelsErrnoAndChangeNothingElse()
    {
        s_case.Sample(c =>
        {
            (AddressSpace mm, Cpu cpu) = NewWorld();
            try
            {
                Check(mm, cpu, c);
            }
            finally
            {
                cpu.Dispose();
                mm.Exit();
            }
        }, iter: FuzzSupport.Iter(400), threads: 1);
    }

    private static string Layout(AddressSpace mm) => string.Join("\n", mm.Maps().Select(m => $"{m.Start:x}-{m.End:x} {m.Perms} {m.Offset:x}"));

    private void Check(AddressSpace mm, Cpu cpu, Case c)
    {
        ulong start = Base + (ulong)(long)c.Start * P, end = Base + (ulong)(long)c.End * P;
        int n = c.End - c.Start;
        MmuIntervalNotifier notifier = MmuIntervalNotifier.Insert(mm, Base - 4 * P, 60 * P, new SeqOnly());
        ulong[] inputs = c.Inputs.Take(n).ToArray();
        var range = new HmmRange(notifier, start, end, (ulong[])inputs.Clone()) { DefaultFlags = (HmmPfnFlags)c.Default, PfnFlagsMask = (HmmPfnFlags)c.Mask };

        string mapsBefore = mm.MapsText(), layoutBefore = Layout(mm);
        long framesBefore = mm.Memory.UsedFrames;
        range.NotifierSeq = notifier.ReadBegin();
        if (c.Stale == 1)
        {
            range.NotifierSeq--;
        }
        else if (c.Stale == 2)
        {
            mm.Madvise(Base + 2 * P, P, Advice.DontNeed);   // an invalidation (CLEAR bracket) inside the notifier
            mapsBefore = mm.MapsText();
            framesBefore = mm.Memory.UsedFrames;
        }
        Errno got;
        mm.MmapLock.EnterRead();
        try
        {
            got = range.Fault();
        }
        finally
        {
            mm.MmapLock.ExitRead();
        }
        string mapsAfter = mm.MapsText();
        long framesAfter = mm.Memory.UsedFrames;

        // The model: requests per page, then the first failing hole or VMA in address order.
        ulong Req(int i) => ((inputs[i] & c.Mask) | c.Default) & (ReqFault | ReqWrite);
        Errno expected = Errno.Ok;
        if (c.Stale != 0)
        {
            expected = Errno.EBUSY;
        }
        else
        {
            for (int i = 0; i < n && expected == Errno.Ok;)
            {
                int page = c.Start + i;
                int j = i;
                while (j < n && SameSegment(page, c.Start + j))
                {
                    j++;
                }
                Kind k = KindOf(page);
                bool anyFault = false, anyWrite = false;
                for (int q = i; q < j; q++)
                {
                    anyFault |= (Req(q) & ReqFault) != 0;
                    anyWrite |= Req(q) == (ReqFault | ReqWrite);
                }
                expected = k switch
                {
                    Kind.Hole or Kind.Bad when anyFault => Errno.EFAULT,
                    Kind.ReadOnly when anyWrite => Errno.EPERM,
                    _ => Errno.Ok,
                };
                i = j;
            }
        }
        Assert.True(expected == got, $"{c}: expected {expected}, got {got}\n{Layout(mm)}");

        // What may change: only the residency of pages a successful or partial walk faulted.
        Assert.Equal(layoutBefore, Layout(mm));
        for (int i = 0; i < 8; i += 2)
        {
            ulong want = c.Stale == 2 && i == 2 ? 0 : 0xA5A5_0000UL + (ulong)i;
            Assert.Equal(want, cpu.Read<ulong>(Base + (ulong)i * P));
        }
        Assert.Equal(0x5A5AUL, cpu.Read<ulong>(Base + 28 * P));
        bool noFaultRequested = Enumerable.Range(0, n).All(i => (Req(i) & ReqFault) == 0);
        if (got == Errno.EBUSY || noFaultRequested)
        {
            Assert.True(mapsBefore == mapsAfter, $"{c}: {got} without a requested fault changed the maps:\nbefore:\n{mapsBefore}after:\n{mapsAfter}");
            Assert.Equal(framesBefore, framesAfter);
        }
        if (got == Errno.EBUSY)
        {
            Assert.Equal(inputs, range.HmmPfns);
        }
        if (got != Errno.Ok)
        {
            notifier.Remove();
            return;
        }

        // Success: every entry is what the CPU page table says, as requested.
        for (int i = 0; i < n; i++)
        {
            ulong a = start + (ulong)i * P;
            ulong e = range.HmmPfns[i];
            Assert.True((e & HmmPfn.Sticky) == (inputs[i] & HmmPfn.Sticky), $"{c}: page {c.Start + i} lost its sticky bits: 0x{e:x}");
            Kind k = KindOf(c.Start + i);
            if (k is Kind.Hole or Kind.Bad)
            {
                Assert.True((e & ~HmmPfn.Sticky) == ErrorBit, $"{c}: page {c.Start + i} ({k}) should be ERROR, is 0x{e:x}");
                continue;
            }
            ulong r = Req(i);
            bool valid = HmmPfn.Has(e, HmmPfnFlags.Valid);
            Assert.True((r & ReqFault) == 0 || valid, $"{c}: page {c.Start + i} was requested but is 0x{e:x}");
            Assert.True(r != (ReqFault | ReqWrite) || HmmPfn.Has(e, HmmPfnFlags.Write), $"{c}: page {c.Start + i} was requested writable but is 0x{e:x}");
            Assert.False(HmmPfn.Has(e, HmmPfnFlags.Error), $"{c}: page {c.Start + i} is readable but ERROR");
            if (valid)
            {
                Pte pte = mm.QueryPte(a, out int order);
                Assert.True(pte.IsPresent && order == 0 && pte.Pfn == HmmPfn.ToPfn(e), $"{c}: page {c.Start + i} reported PFN 0x{HmmPfn.ToPfn(e):x}, the CPU maps {pte}");
                Assert.Equal(pte.IsWritable, HmmPfn.Has(e, HmmPfnFlags.Write));
            }
            else
            {
                Assert.True((e & ~HmmPfn.Sticky) == 0, $"{c}: page {c.Start + i} is neither valid nor empty: 0x{e:x}");
            }
        }
        notifier.Remove();
    }

    /// <summary>True when two pages are in the same VMA or the same hole.</summary>
    private static bool SameSegment(int a, int b)
    {
        int Seg(int page)
        {
            for (int k = 0; k < s_layout.Length; k++)
            {
                if (page >= s_layout[k].Start && page < s_layout[k].End)
                {
                    return k;
                }
            }
            return -1 - (page < 0 ? 0 : page < 8 ? 0 : page < 16 ? 1 : page < 40 ? 2 : 3);
        }
        return Seg(a) == Seg(b);
    }

    [Fact]
    public void UnalignedReversedOrEmptyRangesAreRefusedAndLeaveTheRangeAsItWas()
    {
        Gen<ulong> addr = Gen.Frequency<ulong>(
            (5, Gen.Int[0, 40].Select(i => Base + (ulong)i * P)),
            (2, Gen.Select(Gen.Int[0, 40], Gen.Int[1, 4095], (i, u) => Base + (ulong)i * P + (ulong)u)),
            (1, Gen.OneOf(0UL, AddressSpace.TaskSize, AddressSpace.TaskSize - P, ulong.MaxValue & ~(P - 1), ulong.MaxValue)));
        (AddressSpace mm, Cpu cpu) = NewWorld();
        cpu.Dispose();
        MmuIntervalNotifier notifier = MmuIntervalNotifier.Insert(mm, 0, ulong.MaxValue & ~(P - 1), new SeqOnly());
        var range = new HmmRange(notifier, Base, Base + 4 * P);
        Gen.Select(addr, addr, Gen.Int[-1, 2]).Sample((s, e, sizeDelta) =>
        {
            bool aligned = s % P == 0 && e % P == 0 && e > s;
            bool good = aligned && (e - s) / P <= 1 << 20;
            if (aligned && !good && (e - s) / P <= int.MaxValue)
            {
                return;   // valid, but an entry array of GiBs: not a bad input worth allocating
            }
            ulong[]? pfns = good && sizeDelta != 0 ? new ulong[(int)((e - s) / P) + sizeDelta] : null;
            (ulong s0, ulong e0, ulong[] a0) = (range.Start, range.End, range.HmmPfns);
            bool threw = false;
            try
            {
                range.SetRange(s, e, pfns);
            }
            catch (ArgumentException)
            {
                threw = true;
            }
            bool wrongSize = pfns is not null && pfns.Length != (int)((e - s) / P);
            Assert.Equal(!good || wrongSize, threw);
            if (threw)
            {
                Assert.Equal((s0, e0), (range.Start, range.End));
                Assert.Same(a0, range.HmmPfns);
            }
            else
            {
                Assert.Equal(((e - s) / P), (ulong)range.HmmPfns.Length);
                range.DefaultFlags = HmmPfnFlags.None;
                range.PfnFlagsMask = HmmPfnFlags.None;
                string before = mm.MapsText();
                range.NotifierSeq = notifier.ReadBegin();
                mm.MmapLock.EnterRead();
                Errno r;
                try
                {
                    r = range.Fault();   // a pure snapshot never fails and never changes anything
                }
                finally
                {
                    mm.MmapLock.ExitRead();
                }
                Assert.Equal(Errno.Ok, r);
                Assert.Equal(before, mm.MapsText());
            }
        }, iter: FuzzSupport.Iter(400), threads: 1);
        notifier.Remove();
        mm.Exit();
    }
}
