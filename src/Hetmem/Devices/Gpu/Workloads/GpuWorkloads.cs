using System.Diagnostics;
using System.Runtime.InteropServices;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Devices.Gpu.Workloads;

/// <summary>
/// The GPU workloads of issue 6, each checked against a CPU reference: <c>gpu-stream</c> (c = a + s·b over anonymous
/// memory larger than VRAM), <c>gpu-gups</c> (random read-modify-write over a hugetlbfs table) and <c>gpu-bfs-dax</c>
/// (breadth-first search over a CSR graph stored in a DAX file while a CPU thread rewrites part of it).
/// </summary>
/// <remarks>Each call builds its own address space and GPU on <c>memory</c>, tears them down, and reports whether every
/// frame came back.</remarks>
public static class GpuWorkloads
{
    private const int Chunk = 1 << 16;

    /// <summary>Runs gpu-stream: c[i] = a[i] + 3·b[i] for doubles, the three arrays filling the working set.</summary>
    public static GpuWorkloadReport Stream(PhysicalMemory memory, GpuWorkloadOptions o)
    {
        ArgumentNullException.ThrowIfNull(memory);
        long n = (long)(o.WorkingSetBytes / 24);
        ulong bytes = (ulong)n * 8;
        long used = memory.UsedFrames;
        bool verified;
        string detail;
        double seconds;
        IReadOnlyList<KeyValuePair<string, long>> counters;
        bool balanced;
        var mm = new AddressSpace(memory);
        using (var gpu = new GpuDevice(memory, o.DeviceOptions(3 * bytes, "gpu-stream")))
        {
            using (var cpu = new Cpu(mm))
            {
                ulong a = mm.Mmap(0, bytes, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
                ulong b = mm.Mmap(0, bytes, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
                ulong c = mm.Mmap(0, bytes, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
                Fill(cpu, a, n, i => i * 0.5);
                Fill(cpu, b, n, i => (i % 1000) - 250.0);
                using GpuContext ctx = gpu.CreateContext(mm);
                var sw = Stopwatch.StartNew();
                ctx.Launch((int)((n + 255) / 256), 256, t =>
                {
                    long i = t.GlobalId;
                    if (i < n)
                    {
                        ulong off = (ulong)i * 8;
                        t.Store(c + off, t.Load<double>(a + off) + 3.0 * t.Load<double>(b + off));
                    }
                });
                seconds = sw.Elapsed.TotalSeconds;
                (verified, detail) = Check(cpu, c, n, i => i * 0.5 + 3.0 * ((i % 1000) - 250.0));
                counters = gpu.Counters.Snapshot();
            }
            mm.Exit();
            balanced = gpu.VramPagesInUse == 0;
        }
        balanced &= memory.UsedFrames == used;
        return new GpuWorkloadReport("gpu-stream", verified, detail, seconds, counters, balanced);
    }

    /// <summary>
    /// Runs gpu-gups: a table of 64-bit words in hugetlbfs memory (2 MiB pages, always mapped in place) updated by
    /// atomic XORs at random indices read from an update stream in anonymous memory (migrated, and evicted when VRAM
    /// is small). XOR is order-independent, so the result is exact.
    /// </summary>
    public static GpuWorkloadReport Gups(PhysicalMemory memory, GpuWorkloadOptions o)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ulong tableBytes = Math.Max(Page.PmdSize, 1UL << System.Numerics.BitOperations.Log2(Math.Max(1, o.WorkingSetBytes / 2)));
        long entries = (long)(tableBytes / 8);
        long updates = o.Updates ?? entries;
        ulong streamBytes = Page.AlignUp((ulong)updates * 8, Page.Size);
        long used = memory.UsedFrames;
        bool verified;
        string detail;
        double seconds;
        IReadOnlyList<KeyValuePair<string, long>> counters;
        bool balanced;
        var rng = new Random(o.Seed);
        long[] stream = new long[updates];
        for (long i = 0; i < updates; i++)
        {
            stream[i] = rng.NextInt64();
        }
        long[] reference = new long[entries];
        for (long i = 0; i < entries; i++)
        {
            reference[i] = i;
        }
        foreach (long v in stream)
        {
            reference[v & (entries - 1)] ^= v;
        }
        var mm = new AddressSpace(memory);
        using (var pool = new HugetlbPool(memory, Page.PmdOrder, tableBytes / Page.PmdSize))
        using (var hfs = new HugetlbFs(pool))
        using (var gpu = new GpuDevice(memory, o.DeviceOptions(tableBytes + streamBytes, "gpu-gups")))
        {
            using (FileHandle h = hfs.Create("table"))
            using (var cpu = new Cpu(mm))
            {
                h.Truncate(tableBytes);
                ulong table = mm.Mmap(0, tableBytes, Prot.Read | Prot.Write, MapFlags.Shared, h.Inode);
                ulong ups = mm.Mmap(0, streamBytes, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
                Fill(cpu, table, entries, i => i);
                FillLongs(cpu, ups, stream);
                using GpuContext ctx = gpu.CreateContext(mm);
                const int PerThread = 64;
                long threads = (updates + PerThread - 1) / PerThread;
                long mask = entries - 1;
                var sw = Stopwatch.StartNew();
                ctx.Launch((int)((threads + 127) / 128), 128, t =>
                {
                    long first = t.GlobalId * PerThread;
                    long last = Math.Min(first + PerThread, updates);
                    for (long u = first; u < last; u++)
                    {
                        long v = t.Load<long>(ups + (ulong)u * 8);
                        ulong slot = table + (ulong)(v & mask) * 8;
                        long old = t.Load<long>(slot);
                        while (true)
                        {
                            long seen = t.AtomicCas(slot, old, old ^ v);
                            if (seen == old)
                            {
                                break;
                            }
                            old = seen;
                        }
                    }
                });
                seconds = sw.Elapsed.TotalSeconds;
                (verified, detail) = Check(cpu, table, entries, i => reference[i]);
                counters = gpu.Counters.Snapshot();
                mm.Munmap(table, tableBytes);
            }
            mm.Exit();
            balanced = gpu.VramPagesInUse == 0;
        }
        balanced &= memory.UsedFrames == used;
        return new GpuWorkloadReport("gpu-gups", verified, detail, seconds, counters, balanced);
    }

    private static void Fill(Cpu cpu, ulong va, long n, Func<long, double> f)
    {
        var buf = new double[Chunk];
        for (long i = 0; i < n; i += Chunk)
        {
            int m = (int)Math.Min(Chunk, n - i);
            for (int k = 0; k < m; k++)
            {
                buf[k] = f(i + k);
            }
            cpu.Write(va + (ulong)i * 8, MemoryMarshal.AsBytes(buf.AsSpan(0, m)));
        }
    }

    private static void Fill(Cpu cpu, ulong va, long n, Func<long, long> f)
    {
        var buf = new long[Chunk];
        for (long i = 0; i < n; i += Chunk)
        {
            int m = (int)Math.Min(Chunk, n - i);
            for (int k = 0; k < m; k++)
            {
                buf[k] = f(i + k);
            }
            cpu.Write(va + (ulong)i * 8, MemoryMarshal.AsBytes(buf.AsSpan(0, m)));
        }
    }

    private static void FillLongs(Cpu cpu, ulong va, long[] values)
    {
        for (long i = 0; i < values.Length; i += Chunk)
        {
            int m = (int)Math.Min(Chunk, values.Length - i);
            cpu.Write(va + (ulong)i * 8, MemoryMarshal.AsBytes(values.AsSpan((int)i, m)));
        }
    }

    private static (bool, string) Check(Cpu cpu, ulong va, long n, Func<long, double> expected) => Check(cpu, va, n, expected, "element", "elements");

    private static (bool, string) Check(Cpu cpu, ulong va, long n, Func<long, long> expected) => Check(cpu, va, n, expected, "entry", "entries");

    // Reads n 8-byte values back through the CPU, a chunk at a time, and compares each with the CPU reference.
    private static (bool, string) Check<T>(Cpu cpu, ulong va, long n, Func<long, T> expected, string what, string whatPlural)
        where T : unmanaged, IEquatable<T>
    {
        var buf = new T[Chunk];
        for (long i = 0; i < n; i += Chunk)
        {
            int m = (int)Math.Min(Chunk, n - i);
            cpu.Read(va + (ulong)i * 8, MemoryMarshal.AsBytes(buf.AsSpan(0, m)));
            for (int k = 0; k < m; k++)
            {
                T e = expected(i + k);
                if (!buf[k].Equals(e))
                {
                    return (false, $"{what} {i + k}: GPU {buf[k]}, CPU reference {e}");
                }
            }
        }
        return (true, $"{n} {whatPlural} equal the CPU reference");
    }
}
