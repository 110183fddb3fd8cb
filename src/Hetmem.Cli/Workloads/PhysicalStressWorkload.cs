using System.Globalization;
using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Cli.Workloads;

/// <summary>
/// Stress scenario <c>physical-alloc</c>: threads allocate random orders, stamp each block with an owner pattern,
/// verify it before freeing, and check that frame counts balance at the end. Seeded; reproduce with <c>--seed</c>.
/// </summary>
public sealed class PhysicalStressWorkload : IWorkload
{
    /// <inheritdoc/>
    public string Name => "physical-alloc";

    /// <inheritdoc/>
    public string Description => "Concurrent buddy allocation with ownership stamps and a final balance check.";

    /// <inheritdoc/>
    public WorkloadResult Run(WorkloadContext context)
    {
        var r = new WorkloadResult(Name);
        PhysicalMemory mem = context.Memory;
        context.Timeline?.AddGauge("ram", "resident pages", () => mem.UsedFrames);
        long before = mem.FreeFrames;
        long ops = 0;
        long corrupt = 0;
        string? firstError = null;
        var deadline = DateTime.UtcNow + context.Duration;
        var threads = new Thread[context.Threads];
        for (int t = 0; t < threads.Length; t++)
        {
            int id = t;
            threads[t] = new Thread(() =>
            {
                TraceLog.SetThreadTrack($"stress{id}");
                var rng = new Random(HashCode.Combine(context.Seed, id));
                var held = new List<(ulong Pfn, int Order, byte Stamp)>();
                long local = 0;
                try
                {
                    while (DateTime.UtcNow < deadline && !context.Cancellation.IsCancellationRequested)
                    {
                        for (int i = 0; i < 256; i++)
                        {
                            if (held.Count > 0 && (held.Count > 64 || rng.Next(2) == 0))
                            {
                                int k = rng.Next(held.Count);
                                (ulong p, int o, byte s) = held[k];
                                held[k] = held[^1];
                                held.RemoveAt(held.Count - 1);
                                Span<byte> bytes = mem.FrameSpan(p);
                                if (bytes[0] != s || bytes[Page.Size - 1] != s || (o > 0 && mem.FrameSpan(p + (1UL << o) - 1)[7] != s))
                                {
                                    Interlocked.Increment(ref corrupt);
                                }
                                Invariants.Check(mem.Frame(p).RefCount == 1, "a held block must have exactly one reference");
                                mem.Put(p);
                            }
                            else
                            {
                                int order = rng.Next(5) == 0 ? rng.Next(1, 5) : 0;
                                ulong p = mem.Allocate(order);
                                if (p == Page.NoPfn)
                                {
                                    continue;
                                }
                                byte s = (byte)rng.Next(1, 256);
                                mem.FrameSpan(p)[0] = s;
                                mem.FrameSpan(p)[Page.Size - 1] = s;
                                mem.FrameSpan(p + (1UL << order) - 1)[7] = s;
                                held.Add((p, order, s));
                            }
                            local++;
                        }
                    }
                }
                catch (Exception ex)
                {
                    Interlocked.CompareExchange(ref firstError, $"thread {id}: {ex.GetType().Name}: {ex.Message}", null);
                }
                finally
                {
                    foreach ((ulong p, _, _) in held)
                    {
                        mem.Put(p);
                    }
                    Interlocked.Add(ref ops, local);
                }
            })
            { Name = $"stress{id}", IsBackground = true };
            threads[t].Start();
        }
        foreach (Thread t in threads)
        {
            t.Join();
        }
        r.Counter("operations", ops);
        r.Counter("threads", threads.Length);
        r.Check("no thread failed", firstError is null, firstError);
        r.Check("no block lost its owner stamp while allocated", Interlocked.Read(ref corrupt) == 0, $"{corrupt} corrupted blocks");
        r.Check("frame counts balance after every thread freed its blocks", mem.FreeFrames == before,
            string.Create(CultureInfo.InvariantCulture, $"{mem.FreeFrames} free, expected {before}"));
        r.Check("operations ran", ops > 0, string.Create(CultureInfo.InvariantCulture, $"{ops} allocate/free operations"));
        return r;
    }
}
