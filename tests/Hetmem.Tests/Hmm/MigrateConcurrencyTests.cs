using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;
using Xunit.Abstractions;

namespace Hetmem.Tests.Hmm;

/// <summary>Seeded races between CPU threads and migrations (invariant 24: no half-migrated page is ever visible).</summary>
public unsafe class MigrateConcurrencyTests(ITestOutputHelper output)
{
    private const ulong Mib = 1UL << 20;
    private const int Pages = 32;

    private static int Seed(ITestOutputHelper output)
    {
        string? env = Environment.GetEnvironmentVariable("HETMEM_SEED");
        int seed = env is not null ? int.Parse(env, System.Globalization.CultureInfo.InvariantCulture) : Environment.TickCount;
        output.WriteLine($"seed {seed} (set HETMEM_SEED to reproduce)");
        return seed;
    }

    private static void FillUniform(PhysicalMemory mem, ulong pfn, long value)
    {
        var span = new Span<long>(mem.Address(pfn), Page.Size / 8);
        span.Fill(value);
    }

    /// <summary>One migration of the whole range where the "device" turns every page's value v into v + 1 instead of copying.</summary>
    private static int MigrateAndBump(MigrateTestDevice dev, AddressSpace mm, ulong a, bool toDevice, Random rng)
    {
        using (mm.MmapLock.Read())
        {
            var m = new MigrateVma
            {
                Vma = mm.Vmas.Find(a)!,
                Start = a,
                End = a + Pages * Page.Size,
                Src = new ulong[Pages],
                Dst = new ulong[Pages],
                PgmapOwner = dev.Owner,
                Flags = toDevice ? MigrateVmaSelect.System : MigrateVmaSelect.DevicePrivate,
            };
            Assert.Equal(Errno.Ok, m.Setup());
            for (int i = 0; i < Pages; i++)
            {
                ulong s = m.Src[i];
                if ((s & MigratePfn.Migrate) == 0 || rng.Next(8) == 0)
                {
                    continue; // sometimes the driver skips a page
                }
                ulong d = toDevice ? dev.AllocPage() : dev.Memory.Allocate(0);
                if (d == Page.NoPfn)
                {
                    continue;
                }
                if (!toDevice)
                {
                    dev.Memory.LockFrame(d);
                }
                long v = MigratePfn.ToPfn(s) == Page.NoPfn ? 0 : *(long*)dev.Memory.Address(MigratePfn.ToPfn(s));
                FillUniform(dev.Memory, d, v + 1);
                m.Dst[i] = MigratePfn.Make(d);
            }
            if (rng.Next(2) == 0)
            {
                Thread.Sleep(rng.Next(2)); // let CPU threads pile up on the migration entries
            }
            m.Pages();
            int moved = m.Src.Count(x => (x & MigratePfn.Migrate) != 0);
            m.Finalize();
            return moved;
        }
    }

    [Fact]
    public void CpuReadersOnlyEverSeeWholePagesAndNeverGoBackToAnOlderCopy()
    {
        int seed = Seed(output);
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 256);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, Pages * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(mm))
        {
            var page = new long[Page.Size / 8];
            for (int i = 0; i < Pages; i++)
            {
                Array.Fill(page, 1000L * i);
                cpu.Write(a + (ulong)i * Page.Size, System.Runtime.InteropServices.MemoryMarshal.AsBytes(page.AsSpan()));
            }
        }
        using var stop = new CancellationTokenSource();
        Exception? failure = null;
        long reads = 0;
        var readers = new Thread[2];
        for (int r = 0; r < readers.Length; r++)
        {
            int rs = seed + r + 1;
            readers[r] = new Thread(() =>
            {
                var rng = new Random(rs);
                var last = new long[Pages];
                var buf = new byte[Page.Size];
                try
                {
                    using var cpu = new Cpu(mm);
                    while (!stop.IsCancellationRequested)
                    {
                        int i = rng.Next(Pages);
                        cpu.Read(a + (ulong)i * Page.Size, buf);
                        var words = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(buf);
                        long v = words[0];
                        for (int w = 1; w < words.Length; w++)
                        {
                            if (words[w] != v)
                            {
                                throw new InvalidOperationException($"page {i} is torn: word 0 = {v}, word {w} = {words[w]}");
                            }
                        }
                        if (v < last[i])
                        {
                            throw new InvalidOperationException($"page {i} went back from {last[i]} to {v}");
                        }
                        last[i] = v;
                        Interlocked.Increment(ref reads);
                    }
                }
                catch (Exception ex)
                {
                    failure ??= ex;
                    stop.Cancel();
                }
            });
            readers[r].Start();
        }
        var mrng = new Random(seed);
        int rounds = 0;
        for (; rounds < 60 && !stop.IsCancellationRequested; rounds++)
        {
            MigrateAndBump(dev, mm, a, toDevice: rounds % 2 == 0, mrng);
        }
        stop.Cancel();
        foreach (Thread t in readers)
        {
            t.Join();
        }
        Assert.Null(failure);
        Assert.True(Interlocked.Read(ref reads) > 0);
        output.WriteLine($"{rounds} migrations, {reads} page reads, {dev.MigrateToRamCalls} CPU faults on device pages");
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(256, dev.FreePages);
    }

    [Fact]
    public void CpuWritesDuringMigrationAreNeverLost()
    {
        int seed = Seed(output);
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 256);
        var mm = new AddressSpace(mem);
        ulong a = mm.Mmap(0, Pages * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using var stop = new CancellationTokenSource();
        Exception? failure = null;
        var writer = new Thread(() =>
        {
            try
            {
                using var cpu = new Cpu(mm);
                // Each page holds a counter the writer alone increments; the migrator copies faithfully.
                for (long n = 1; !stop.IsCancellationRequested; n++)
                {
                    for (int i = 0; i < Pages; i++)
                    {
                        ulong va = a + (ulong)i * Page.Size + 64;
                        long cur = cpu.Read<long>(va);
                        if (cur != n - 1)
                        {
                            throw new InvalidOperationException($"page {i}: expected {n - 1}, read {cur}");
                        }
                        cpu.Write(va, n);
                    }
                }
            }
            catch (Exception ex)
            {
                failure = ex;
                stop.Cancel();
            }
        });
        writer.Start();
        var rng = new Random(seed);
        for (int round = 0; round < 40 && !stop.IsCancellationRequested; round++)
        {
            if (round % 2 == 0)
            {
                dev.MigrateToDevice(mm, a, a + Pages * Page.Size);
            }
            else
            {
                dev.MigrateToSystem(mm, a, a + Pages * Page.Size);
            }
            if (rng.Next(3) == 0)
            {
                Thread.Yield();
            }
        }
        stop.Cancel();
        writer.Join();
        Assert.Null(failure);
        mm.Exit();
        Assert.Equal(before, mem.UsedFrames);
        Assert.Equal(256, dev.FreePages);
    }
}
