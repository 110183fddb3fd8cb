using System.Diagnostics;
using System.Runtime.InteropServices;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Devices.Gpu.Workloads;

/// <summary>
/// gpu-bfs-dax: breadth-first search over a CSR graph stored in a DAX file, mapped shared (so the GPU maps the
/// persistent-memory pages in place, with 2 MiB entries), while a CPU thread rewrites part of the graph through the
/// same mapping: it reverses some adjacency lists, adds new edges in each vertex's spare slot, and remaps a 2 MiB
/// slice of the file (an UNMAP invalidation the GPU must refault through). The GPU computes distances by relaxation
/// (distances only decrease), repeating passes until nothing changes and at least one full pass started after the
/// rewrite finished; the result must equal a CPU BFS of the final file.
/// </summary>
public static class GpuBfsDax
{
    private const int Inf = int.MaxValue;

    /// <summary>Runs the workload with a DAX namespace file under <paramref name="daxDirectory"/> (a sparse host file).</summary>
    public static GpuWorkloadReport Run(PhysicalMemory memory, GpuWorkloadOptions o, string daxDirectory)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(daxDirectory);
        int v = o.Vertices;
        var rng = new Random(o.Seed);
        // CSR with one spare slot per vertex (initially a copy of an existing neighbour, so it adds nothing).
        long[] offsets = new long[v + 1];
        var adjacency = new List<int>(v * (o.AverageDegree + 1));
        for (int i = 0; i < v; i++)
        {
            offsets[i] = adjacency.Count;
            int deg = rng.Next(Math.Max(1, o.AverageDegree / 2), o.AverageDegree * 3 / 2 + 1);
            for (int k = 0; k < deg; k++)
            {
                adjacency.Add(rng.Next(v));
            }
            adjacency.Add(adjacency[(int)offsets[i]]);
        }
        offsets[v] = adjacency.Count;
        ulong offsetsBytes = (ulong)(v + 1) * 8;
        ulong adjStart = Page.AlignUp(offsetsBytes, Page.PmdSize);
        ulong fileBytes = Page.AlignUp(adjStart + (ulong)adjacency.Count * 4, Page.PmdSize);
        ulong nsBytes = Page.AlignUp(fileBytes + (16UL << 20), Page.PmdSize);
        long used = memory.UsedFrames;
        string dir = Path.Combine(daxDirectory, "gpu-bfs-dax-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        bool verified;
        string detail;
        double seconds;
        IReadOnlyList<KeyValuePair<string, long>> counters;
        bool balanced;
        try
        {
            var mm = new AddressSpace(memory);
            using (var ns = new DaxNamespace(memory, Path.Combine(dir, "pmem0"), nsBytes))
            using (var fs = DaxFileSystem.Format(ns))
            // The graph is never migrated (DAX is mapped in place), so "the working set" that VRAM is sized against
            // is the migratable state: distances and marks, 8 bytes per vertex.
            using (var gpu = new GpuDevice(memory, o.DeviceOptions(8UL * (ulong)v, "gpu-bfs-dax")))
            {
                using (FileHandle f = fs.Create("graph"))
                using (var cpu = new Cpu(mm))
                {
                    f.Truncate(fileBytes);
                    f.Write(0, MemoryMarshal.AsBytes(offsets.AsSpan()));
                    int[] adj = [.. adjacency];
                    for (int i = 0; i < adj.Length; i += 1 << 20)
                    {
                        int m = Math.Min(1 << 20, adj.Length - i);
                        f.Write(adjStart + (ulong)i * 4, MemoryMarshal.AsBytes(adj.AsSpan(i, m)));
                    }
                    ulong g = mm.Mmap(0x3000_0000_0000, fileBytes, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Fixed, f.Inode);
                    ulong offs = g, adjVa = g + adjStart;
                    // Distances and marks each start a 2 MiB block of their own, so they compete for VRAM chunks.
                    ulong state = Page.AlignUp((ulong)v * 4, Page.PmdSize);
                    ulong dist = mm.Mmap(0x3800_0000_0000, (ulong)v * 4, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
                    ulong marks = mm.Mmap(0x3800_0000_0000 + state, (ulong)v * 4, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
                    ulong changed = mm.Mmap(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
                    int[] inf = new int[v];
                    Array.Fill(inf, Inf);
                    inf[0] = 0;
                    cpu.Write(dist, MemoryMarshal.AsBytes(inf.AsSpan()));
                    cpu.Write(marks, 1); // pass 1 starts from the source
                    using GpuContext ctx = gpu.CreateContext(mm);

                    int rewriteSeed = rng.Next();
                    int rewriteDone = 0;
                    int passes = 0;
                    Exception? rewriteError = null;
                    var rewriter = new Thread(() =>
                    {
                        var spin = new SpinWait();
                        while (Volatile.Read(ref passes) < 2)
                        {
                            spin.SpinOnce(); // start once the GPU is into the graph, so its mappings exist
                        }
                        try
                        {
                            Rewrite(mm, f.Inode, g, adjStart, fileBytes, offsets, v, rewriteSeed);
                        }
                        catch (Exception e)
                        {
                            rewriteError = e;
                        }
                        Volatile.Write(ref rewriteDone, 1);
                    }) { Name = "bfs-rewriter" };
                    var sw = Stopwatch.StartNew();
                    rewriter.Start();
                    bool fullPassAfterRewrite = false;
                    for (int pass = 1; ; pass++)
                    {
                        Volatile.Write(ref passes, pass);
                        bool full = !fullPassAfterRewrite && Volatile.Read(ref rewriteDone) != 0;
                        cpu.Write(changed, 0L);
                        int p = pass;
                        ctx.Launch((v + 255) / 256, 256, t =>
                        {
                            long i = t.GlobalId;
                            if (i >= v)
                            {
                                return;
                            }
                            ulong mark = marks + (ulong)i * 4;
                            if (!full && t.Load<int>(mark) != p)
                            {
                                return;
                            }
                            int d = t.Load<int>(dist + (ulong)i * 4);
                            if (d == Inf)
                            {
                                return;
                            }
                            long e0 = t.Load<long>(offs + (ulong)i * 8), e1 = t.Load<long>(offs + (ulong)(i + 1) * 8);
                            for (long e = e0; e < e1; e++)
                            {
                                int u = t.Load<int>(adjVa + (ulong)e * 4);
                                ulong du = dist + (ulong)u * 4;
                                if (t.Load<int>(du) > d + 1 && t.AtomicMin(du, d + 1) > d + 1)
                                {
                                    t.Store(marks + (ulong)u * 4, p + 1);
                                    t.Store(changed, 1L);
                                }
                            }
                        });
                        fullPassAfterRewrite |= full;
                        if (cpu.Read<long>(changed) == 0 && fullPassAfterRewrite)
                        {
                            break;
                        }
                    }
                    seconds = sw.Elapsed.TotalSeconds;
                    rewriter.Join();
                    (verified, detail) = rewriteError is null
                        ? Verify(cpu, f, dist, adjStart, v)
                        : (false, $"the CPU rewriter failed: {rewriteError.Message}");
                    counters = gpu.Counters.Snapshot();
                    mm.Munmap(g, fileBytes);
                }
                mm.Exit();
                balanced = gpu.VramPagesInUse == 0;
            }
            balanced &= memory.UsedFrames == used;
        }
        finally
        {
            try
            {
                Directory.Delete(dir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
        return new GpuWorkloadReport("gpu-bfs-dax", verified, detail, seconds, counters, balanced);
    }

    /// <summary>The CPU side: reverses the adjacency lists of one vertex in eight, points its spare slot at a new random
    /// neighbour (an added edge), and remaps a 2 MiB slice of the graph in the middle of it.</summary>
    private static void Rewrite(AddressSpace mm, IMappable file, ulong g, ulong adjStart, ulong fileBytes, long[] offsets, int v, int seed)
    {
        var rng = new Random(seed);
        using var cpu = new Cpu(mm);
        ulong adj = g + adjStart;
        for (int i = 0; i < v; i += 8)
        {
            int x = i + rng.Next(Math.Min(8, v - i));
            long lo = offsets[x], hi = offsets[x + 1] - 2; // real edges [lo, hi], spare slot hi + 1
            for (long a = lo, b = hi; a < b; a++, b--)
            {
                int ea = cpu.Read<int>(adj + (ulong)a * 4), eb = cpu.Read<int>(adj + (ulong)b * 4);
                cpu.Write(adj + (ulong)a * 4, eb);
                cpu.Write(adj + (ulong)b * 4, ea);
            }
            cpu.Write(adj + (ulong)(hi + 1) * 4, rng.Next(v));
            if (i == v / 2 && fileBytes > adjStart + Page.PmdSize)
            {
                // Replace the mapping of one 2 MiB slice of adjacency (same file offset): the GPU's ranges there are
                // unmapped, garbage-collected and rebuilt on its next fault.
                ulong slice = Page.AlignDown(adj + (ulong)offsets[x] * 4, Page.PmdSize);
                if (slice >= adj && slice + Page.PmdSize <= g + fileBytes)
                {
                    mm.Mmap(slice, Page.PmdSize, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Fixed, file, slice - g);
                }
            }
        }
    }

    private static (bool, string) Verify(Cpu cpu, FileHandle f, ulong dist, ulong adjStart, int v)
    {
        long[] offsets = new long[v + 1];
        f.Read(0, MemoryMarshal.AsBytes(offsets.AsSpan()));
        int[] adj = new int[offsets[v]];
        for (int i = 0; i < adj.Length; i += 1 << 20)
        {
            int m = Math.Min(1 << 20, adj.Length - i);
            f.Read(adjStart + (ulong)i * 4, MemoryMarshal.AsBytes(adj.AsSpan(i, m)));
        }
        int[] reference = new int[v];
        Array.Fill(reference, Inf);
        reference[0] = 0;
        var queue = new Queue<int>();
        queue.Enqueue(0);
        while (queue.Count > 0)
        {
            int x = queue.Dequeue();
            for (long e = offsets[x]; e < offsets[x + 1]; e++)
            {
                int u = adj[e];
                if (reference[u] == Inf)
                {
                    reference[u] = reference[x] + 1;
                    queue.Enqueue(u);
                }
            }
        }
        int[] got = new int[v];
        cpu.Read(dist, MemoryMarshal.AsBytes(got.AsSpan()));
        int reached = 0;
        for (int i = 0; i < v; i++)
        {
            if (got[i] != reference[i])
            {
                return (false, $"vertex {i}: GPU distance {got[i]}, CPU BFS of the final graph {reference[i]}");
            }
            reached += reference[i] != Inf ? 1 : 0;
        }
        return (true, $"{v} distances ({reached} reachable, {adj.Length} edge slots) equal a CPU BFS of the final graph");
    }
}
