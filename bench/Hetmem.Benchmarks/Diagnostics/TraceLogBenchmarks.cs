using BenchmarkDotNet.Attributes;
using Hetmem.Diagnostics;

namespace Hetmem.Benchmarks.Diagnostics;

/// <summary>
/// The cost of instrumentation on hot paths. Budget: with recording off, a span, an instant and a counter sample
/// allocate 0 B and cost about one volatile read; a counter bump is one interlocked add.
/// </summary>
[MemoryDiagnoser]
public class TraceLogBenchmarks
{
    private const int Batch = 100;
    private int _batches;

    [GlobalSetup(Targets = [nameof(SpanEnabled)])]
    public void StartRecording() => TraceLog.Start(capacity: 1 << 20);

    [GlobalCleanup(Targets = [nameof(SpanEnabled)])]
    public void StopRecording()
    {
        TraceLog.Stop();
        TraceLog.Clear();
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Batch)]
    public void SpanDisabled()
    {
        for (int i = 0; i < Batch; i++)
        {
            using TraceSpan span = TraceLog.Span(TraceCategory.CpuFault, "anon", TraceArg.Address((ulong)i << 12));
        }
    }

    [Benchmark(OperationsPerInvoke = Batch)]
    public void InstantAndCounterDisabled()
    {
        for (int i = 0; i < Batch; i++)
        {
            TraceLog.Instant(TraceCategory.Invalidate, "unmap");
            TraceLog.Counter("resident_pages", "ram", i);
        }
    }

    [Benchmark(OperationsPerInvoke = Batch)]
    public void CounterInc()
    {
        for (int i = 0; i < Batch; i++)
        {
            Counters.Inc(Counter.PgFault);
        }
    }

    /// <summary>Recording on: a struct store per span plus, amortised, one 4096-event chunk (the allocation shown).</summary>
    [Benchmark(OperationsPerInvoke = Batch)]
    public void SpanEnabled()
    {
        for (int i = 0; i < Batch; i++)
        {
            using TraceSpan span = TraceLog.Span(TraceCategory.CpuFault, "anon", TraceArg.Address((ulong)i << 12));
        }
        if (++_batches == 8192)
        {
            TraceLog.Clear(); // stay below the capacity so the recording path, not the drop path, is measured
            _batches = 0;
        }
    }
}
