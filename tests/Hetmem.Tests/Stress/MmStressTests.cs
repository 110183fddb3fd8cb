using System.Diagnostics;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Tests.Infrastructure;
using Xunit.Abstractions;
using static Hetmem.Tests.Infrastructure.MmTestBed;

namespace Hetmem.Tests.Stress;

/// <summary>
/// Seeded multi-threaded runs of the mm: CPU threads read and write through their software TLBs while other threads
/// change the address space under them. Each prints its seed; HETMEM_SEED reproduces a run. They assert that no write
/// is lost where the kernel guarantees it, that no CPU ever writes a freed frame (victims that reuse freed frames
/// check their contents and the frames' generations), and that frames, references and swap slots balance at the end.
/// </summary>
[Collection("stress")]
public class MmStressTests(ITestOutputHelper output)
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;
    private static readonly TimeSpan s_duration = TimeSpan.FromSeconds(2);

    /// <summary>Runs <paramref name="workers"/> until the deadline or the first failure, then rethrows it.</summary>
    private static void RunAll(params Action<Func<bool>>[] workers)
    {
        var sw = Stopwatch.StartNew();
        Exception? failure = null;
        bool Running() => sw.Elapsed < s_duration && Volatile.Read(ref failure) is null;
        var threads = workers.Select(w => new Thread(() =>
        {
            try
            {
                w(Running);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref failure, e, null);
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        if (failure is not null)
        {
            throw new InvalidOperationException($"a stress worker failed: {failure.Message}", failure);
        }
    }

    [Fact]
    public void WritersLoseNoWritesWhileAnotherThreadMprotectsForksAndPagesOut()
    {
        int seed = Seed.Get(output, nameof(WritersLoseNoWritesWhileAnotherThreadMprotectsForksAndPagesOut));
        bool wasEnabled = Invariants.Enabled;
        Invariants.Enabled = true;
        using var bed = new MmTestBed(swapSlots: 4096);
        AddressSpace mm = bed.NewSpace();
        const int writers = 3, pagesEach = 24;
        ulong region = mm.Mmap(0, writers * pagesEach * Kib4, Rw, Anon);
        long[] lastWritten = new long[writers * pagesEach];
        int forks = 0, protects = 0, pageouts = 0, accErrs = 0;

        Action<Func<bool>> Writer(int w) => running =>
        {
            var rng = new Random(seed + w);
            using var cpu = new Cpu(mm);
            long value = 0;
            while (running())
            {
                int page = w * pagesEach + rng.Next(pagesEach);
                ulong va = region + (ulong)page * Kib4 + (ulong)(page % 64) * 8;
                value++;
                try
                {
                    cpu.Write(va, value);
                }
                catch (SegmentationFault e) when (e.Code == SegvCode.AccErr)
                {
                    Interlocked.Increment(ref accErrs);   // the chaos thread made it read-only for a moment
                    continue;
                }
                lastWritten[page] = value;
                long back = cpu.Read<long>(va);
                Assert.True(back == value, $"page {page}: wrote {value}, read back {back} (a lost write)");
            }
        };

        void Chaos(Func<bool> running)
        {
            var rng = new Random(seed ^ 0x5EED);
            while (running())
            {
                int first = rng.Next(writers * pagesEach - 4);
                ulong a = region + (ulong)first * Kib4;
                switch (rng.Next(4))
                {
                    case 0:
                        mm.Mprotect(a, 4 * Kib4, Prot.Read);
                        Thread.Yield();
                        mm.Mprotect(a, 4 * Kib4, Rw);
                        protects++;
                        break;
                    case 1:
                        AddressSpace child = mm.Fork();
                        Thread.Yield();
                        child.Exit();
                        forks++;
                        break;
                    case 2:
                        mm.Madvise(a, 4 * Kib4, Advice.PageOut);
                        pageouts++;
                        break;
                    default:
                        mm.Madvise(a, 4 * Kib4, Advice.PopulateRead);
                        break;
                }
            }
        }

        RunAll([Writer(0), Writer(1), Writer(2), Chaos]);
        using (var cpu = new Cpu(mm))
        {
            for (int page = 0; page < writers * pagesEach; page++)
            {
                if (lastWritten[page] != 0)
                {
                    Assert.Equal(lastWritten[page], cpu.Read<long>(region + (ulong)page * Kib4 + (ulong)(page % 64) * 8));
                }
            }
        }
        output.WriteLine($"forks {forks}, mprotects {protects}, pageouts {pageouts}, ACCERRs seen {accErrs}");
        Assert.True(forks + protects + pageouts > 0);
        bed.CheckInvariants();
        Invariants.Enabled = wasEnabled;
    }

    [Fact]
    public void NoCpuWritesAFreedFrameWhileMappingsComeAndGo()
    {
        int seed = Seed.Get(output, nameof(NoCpuWritesAFreedFrameWhileMappingsComeAndGo));
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        const ulong Churn = 0x7000_0000_0000, ChurnPages = 16;
        const ulong VictimBase = 0x6000_0000_0000;
        mm.Mmap(Churn, ChurnPages * Kib4, Rw, Anon | MapFlags.Fixed);
        const long Poison = unchecked((long)0xDEAD_BEEF_DEAD_BEEF);
        int segvs = 0, remaps = 0, victimRounds = 0;

        Action<Func<bool>> Scribbler(int id) => running =>
        {
            var rng = new Random(seed + id);
            using var cpu = new Cpu(mm);
            while (running())
            {
                ulong va = Churn + (ulong)rng.Next((int)ChurnPages) * Kib4 + (ulong)rng.Next(512) * 8;
                try
                {
                    cpu.Write(va, Poison);
                }
                catch (SegmentationFault)
                {
                    Interlocked.Increment(ref segvs);
                }
            }
        };

        void Remapper(Func<bool> running)
        {
            var rng = new Random(seed ^ 77);
            while (running())
            {
                ulong a = Churn + (ulong)rng.Next((int)ChurnPages / 2) * Kib4;
                mm.Munmap(a, ChurnPages / 2 * Kib4);
                Thread.Yield();
                mm.Mmap(a, ChurnPages / 2 * Kib4, Rw, Anon | MapFlags.Fixed);
                if (rng.Next(3) == 0)
                {
                    mm.Madvise(Churn, ChurnPages * Kib4, Advice.DontNeed);
                }
                remaps++;
            }
        }

        // The victim keeps taking freed frames: any poison a stale TLB entry writes into them shows up here, and the
        // frames it owns must keep their generation (never freed under it).
        void Victim(Func<bool> running)
        {
            var rng = new Random(seed ^ 991);
            using var cpu = new Cpu(mm);
            while (running())
            {
                const ulong pages = 32;
                ulong v = mm.Mmap(VictimBase, pages * Kib4, Rw, Anon | MapFlags.Fixed);
                long tag = rng.NextInt64(1, long.MaxValue);
                var gens = new uint[pages];
                for (ulong i = 0; i < pages; i++)
                {
                    cpu.Fill(v + i * Kib4, Kib4, 0);
                    cpu.Write(v + i * Kib4, tag + (long)i);
                    gens[i] = bed.Memory.Frame(mm.QueryPte(v + i * Kib4, out _).Pfn).Generation;
                }
                Thread.Yield();
                for (ulong i = 0; i < pages; i++)
                {
                    Assert.Equal(tag + (long)i, cpu.Read<long>(v + i * Kib4));
                    for (ulong off = 8; off < Kib4; off += 8)
                    {
                        long x = cpu.Read<long>(v + i * Kib4 + off);
                        Assert.True(x == 0, $"victim page {i} holds 0x{x:x} at +0x{off:x}: a CPU wrote a frame after it was freed");
                    }
                    ulong pfn = mm.QueryPte(v + i * Kib4, out _).Pfn;
                    Assert.True(bed.Memory.Frame(pfn).Generation == gens[i], $"victim frame 0x{pfn:x} was freed and reused while mapped");
                }
                mm.Munmap(v, pages * Kib4);
                victimRounds++;
            }
        }

        RunAll([Scribbler(0), Scribbler(1), Remapper, Victim]);
        output.WriteLine($"remaps {remaps}, victim rounds {victimRounds}, SIGSEGVs {segvs}");
        Assert.True(remaps > 0 && victimRounds > 0);
        bed.CheckInvariants();
    }

    [Fact]
    public void ConcurrentAtomicsCountExactlyWhileTheParentForksAndTheChildWrites()
    {
        int seed = Seed.Get(output, nameof(ConcurrentAtomicsCountExactlyWhileTheParentForksAndTheChildWrites));
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.Mmap(0, 4 * Kib4, Rw, Anon);
        long[] adds = new long[3];
        int forks = 0;

        Action<Func<bool>> Adder(int id) => running =>
        {
            using var cpu = new Cpu(mm);
            var rng = new Random(seed + id);
            while (running())
            {
                cpu.Add(a + (ulong)rng.Next(4) * Kib4, 1L);
                adds[id]++;
            }
        };

        void Forker(Func<bool> running)
        {
            while (running())
            {
                AddressSpace child = mm.Fork();
                using (var cc = new Cpu(child))
                {
                    // The child's writes must never reach the parent's counters.
                    cc.Add(a, 1_000_000L);
                    cc.Add(a + Kib4, 1_000_000L);
                }
                child.Exit();
                forks++;
            }
        }

        RunAll([Adder(0), Adder(1), Adder(2), Forker]);
        using var cpu = new Cpu(mm);
        long total = 0;
        for (ulong p = 0; p < 4; p++)
        {
            total += cpu.Read<long>(a + p * Kib4);
        }
        output.WriteLine($"adds {adds.Sum()}, forks {forks}");
        Assert.Equal(adds.Sum(), total);
        Assert.True(forks > 0);
        bed.CheckInvariants();
    }

    [Fact]
    public void FaultsOnTheSameFreshPagesFromManyCpusInstallEachPageOnce()
    {
        int seed = Seed.Get(output, nameof(FaultsOnTheSameFreshPagesFromManyCpusInstallEachPageOnce));
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        var rng = new Random(seed);
        for (int round = 0; round < 40; round++)
        {
            const ulong pages = 64;
            ulong a = mm.Mmap(0, pages * Kib4, Rw, Anon);
            if (rng.Next(2) == 0)
            {
                mm.Madvise(a, pages * Kib4, Advice.HugePage);
            }
            long used = bed.Memory.UsedFrames;
            using var go = new Barrier(4);
            var ts = Enumerable.Range(0, 4).Select(id => new Thread(() =>
            {
                using var cpu = new Cpu(mm);
                go.SignalAndWait();
                for (ulong i = 0; i < pages; i++)
                {
                    ulong p = (i + (ulong)id * 7) % pages;
                    if (id % 2 == 0)
                    {
                        cpu.Add(a + p * Kib4 + 8, 1L);
                    }
                    else
                    {
                        cpu.Read<long>(a + p * Kib4);
                        cpu.Add(a + p * Kib4 + 8, 1L);
                    }
                }
            })).ToList();
            ts.ForEach(t => t.Start());
            ts.ForEach(t => t.Join());
            using (var cpu = new Cpu(mm))
            {
                for (ulong i = 0; i < pages; i++)
                {
                    Assert.Equal(4L, cpu.Read<long>(a + i * Kib4 + 8));
                }
            }
            Assert.True(bed.Memory.UsedFrames - used <= (long)pages + 512 + 8, "racing faults must not leak pages");
            bed.CheckInvariants();
            mm.Munmap(a, pages * Kib4);
        }
    }
}
