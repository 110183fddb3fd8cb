using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Cli.Workloads;

/// <summary>
/// Demo section <c>dax</c>: a persistent-memory namespace backed by a real host file (kernel: a pmem namespace in
/// fsdax mode). Writes a seeded pattern through the namespace's frames, closes it, reopens the file and reads the
/// pattern back, then reads the host file directly.
/// </summary>
public sealed class DaxNamespaceSection : IWorkload
{
    private const ulong NamespaceBytes = 2UL << 20;
    private const int BlocksWritten = 16;

    /// <inheritdoc/>
    public string Name => "dax";

    /// <inheritdoc/>
    public string Description => "DAX namespace over a host file: write through devmap frames, close, reopen, read back.";

    /// <inheritdoc/>
    public WorkloadResult Run(WorkloadContext context)
    {
        var r = new WorkloadResult(Name);
        PhysicalMemory mem = context.Memory;
        string path = Path.Combine(context.DaxDirectory, "demo.dax");
        if (!context.KeepsDaxFiles && File.Exists(path))
        {
            File.Delete(path);
        }
        long written = 0;
        context.Timeline?.AddGauge("dax", "resident pages", () => Interlocked.Read(ref written));
        byte[][] pattern = MakePattern(context.Seed);
        ulong firstPfn = 0;

        r.Check("a 2 MiB namespace maps its host file as FS-DAX devmap frames above RAM", () =>
        {
            using var ns = new DaxNamespace(mem, path, NamespaceBytes);
            firstPfn = ns.FirstPfn;
            WorkloadResult.Require(ns.PageMap.Type == MemoryType.FsDax, $"page map type {ns.PageMap.Type}");
            WorkloadResult.Require(!mem.IsRam(ns.FirstPfn) && mem.FindMap(ns.FirstPfn) == ns.PageMap, "namespace PFNs are not its own");
            WorkloadResult.Require(Page.IsAligned(ns.FirstPfn, 1UL << Page.PudOrder), "first PFN is not 1 GiB aligned");
            WorkloadResult.Require(new FileInfo(path).Length >= (long)NamespaceBytes, "host file is smaller than the namespace");
            return $"{ns.Blocks} blocks at pfn 0x{ns.FirstPfn:x}";
        });

        r.Check($"{BlocksWritten} blocks written through the namespace's frames and flushed", () =>
        {
            using var ns = new DaxNamespace(mem, path, NamespaceBytes);
            for (int b = 0; b < BlocksWritten; b++)
            {
                using (TraceLog.Span(TraceCategory.Memory, "dax write", TraceArg.Pfn(ns.FirstPfn + (ulong)b)))
                {
                    pattern[b].CopyTo(mem.FrameSpan(ns.FirstPfn + (ulong)b));
                }
                Interlocked.Increment(ref written);
                TraceLog.Counter("resident_pages", "dax", Interlocked.Read(ref written));
            }
            ns.Flush(0, BlocksWritten);
            context.Timeline?.Sample();
            return $"{BlocksWritten * Page.Size / 1024} KiB";
        });

        r.Check("the data survives closing and reopening the namespace", () =>
        {
            using var ns = new DaxNamespace(mem, path, NamespaceBytes);
            for (int b = 0; b < BlocksWritten; b++)
            {
                WorkloadResult.Require(ns.Block((ulong)b).SequenceEqual(pattern[b]), $"block {b} differs after reopening");
            }
            return ns.FirstPfn == firstPfn ? "same PFNs" : "new PFN range, same bytes";
        });

        r.Check("the data is in the host file itself", () =>
        {
            using FileStream fs = File.OpenRead(path);
            var buf = new byte[Page.Size];
            for (int b = 0; b < BlocksWritten; b++)
            {
                fs.ReadExactly(buf);
                WorkloadResult.Require(buf.AsSpan().SequenceEqual(pattern[b]), $"host file block {b} differs");
            }
            return context.KeepsDaxFiles ? path : "temporary file";
        });

        r.Counter("blocks_written", BlocksWritten);
        return r;
    }

    private static byte[][] MakePattern(int seed)
    {
        var rng = new Random(unchecked(seed * 31 + 7));
        var p = new byte[BlocksWritten][];
        for (int i = 0; i < p.Length; i++)
        {
            p[i] = new byte[Page.Size];
            rng.NextBytes(p[i]);
        }
        return p;
    }
}
