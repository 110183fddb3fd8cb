using Hetmem.Diagnostics;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Tests.Hmm;

namespace Hetmem.Tests.Diagnostics;

/// <summary>
/// The spans the library itself records while tracing is on: CPU faults, invalidation brackets (with the event kind),
/// hmm_range_fault, migrate_vma's three steps and reclaim.
/// </summary>
[Collection(GlobalDiagnosticsCollection.Name)]
public sealed class LibrarySpanTests : IDisposable
{
    public LibrarySpanTests()
    {
        TraceLog.Stop();
        TraceLog.Clear();
    }

    public void Dispose()
    {
        TraceLog.Stop();
        TraceLog.Clear();
    }

    /// <summary>The complete spans recorded on the calling thread's track.</summary>
    private static List<TraceEvent> MySpans()
    {
        int me = TraceLog.ThreadTrack.Id;
        return [.. TraceLog.Snapshot().Events.Where(e => e.Kind == TraceEventKind.Complete && e.Track == me)];
    }

    private static TraceEvent Single(List<TraceEvent> spans, string name, TraceCategory category)
    {
        List<TraceEvent> named = [.. spans.Where(e => e.Name == name)];
        Assert.True(named.Count > 0, $"no span named '{name}' among: {string.Join(", ", spans.Select(e => e.Name).Distinct())}");
        Assert.All(named, e => Assert.Equal(category, e.Category));
        return named[0];
    }

    private sealed class NullOps : IMmuIntervalNotifierOps
    {
        public bool Invalidate(MmuIntervalNotifier sub, in MmuNotifierRange range, long curSeq)
        {
            sub.SetSeq(curSeq);
            return true;
        }
    }

    [Fact]
    public void ATracedCpuWriteFaultRecordsACpuFaultSpanAroundHandleMmFaultWithTheAddress()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        ulong va = mm.Mmap(0, 4 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        TraceLog.Start();
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(va + Page.Size + 8, 42L);
        }
        TraceLog.Stop();
        List<TraceEvent> spans = MySpans();
        TraceEvent fault = Single(spans, "cpu_fault", TraceCategory.CpuFault);
        Assert.Equal("address", fault.Arg0.Name);
        Assert.Equal((long)(va + Page.Size + 8), fault.Arg0.Value);
        Assert.Equal(1, fault.Arg1.Value);   // write
        TraceEvent inner = Single(spans, "handle_mm_fault", TraceCategory.CpuFault);
        Assert.True(inner.Timestamp >= fault.Timestamp && inner.Timestamp + inner.Duration <= fault.Timestamp + fault.Duration,
            "handle_mm_fault nests inside cpu_fault");
        mm.Exit();
    }

    [Fact]
    public void ATracedMunmapRecordsAnUnmapInvalidationSpanWithTheEventKindAndItsEnd()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        ulong va = mm.Mmap(0, 8 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(mm))
        {
            cpu.Fill(va, 8 * Page.Size, 1);
        }
        TraceLog.Start();
        mm.Munmap(va, 8 * Page.Size);
        TraceLog.Stop();
        List<TraceEvent> spans = MySpans();
        TraceEvent start = Single(spans, TraceNames.Of(MmuNotifierEvent.Unmap), TraceCategory.Invalidate);
        Assert.Equal((long)va, start.Arg0.Value);
        Assert.Equal("event", start.Arg1.Name);
        Assert.Equal((long)MmuNotifierEvent.Unmap, start.Arg1.Value);
        TraceEvent end = Single(spans, "invalidate_range_end", TraceCategory.Invalidate);
        Assert.Equal((long)MmuNotifierEvent.Unmap, end.Arg0.Value);
        Assert.Equal(8L * Page.Size, end.Arg1.Value);
        Assert.True(end.Timestamp >= start.Timestamp, "the end bracket follows the start bracket");
        mm.Exit();
    }

    [Fact]
    public void ATracedHmmRangeFaultRecordsItsSpanWithThePageCountAndTheCpuFaultsItCaused()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        ulong va = mm.Mmap(0, 16 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        var notifier = MmuIntervalNotifier.Insert(mm, va, 16 * Page.Size, new NullOps());
        var range = new HmmRange(notifier, va, va + 16 * Page.Size) { DefaultFlags = HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite };
        TraceLog.Start();
        Errno r;
        using (mm.MmapLock.Read())
        {
            range.NotifierSeq = notifier.ReadBegin();
            r = range.Fault();
        }
        TraceLog.Stop();
        Assert.Equal(Errno.Ok, r);
        List<TraceEvent> spans = MySpans();
        TraceEvent hmm = Single(spans, "hmm_range_fault", TraceCategory.Hmm);
        Assert.Equal((long)va, hmm.Arg0.Value);
        Assert.Equal(16, hmm.Arg1.Value);
        Assert.True(spans.Count(e => e.Name == "handle_mm_fault") >= 16, "one handle_mm_fault pass (at least) per page it faulted in");
        notifier.Remove();
        mm.Exit();
    }

    [Fact]
    public void ATracedMigrationRecordsSetupPagesAndFinalizeInOrderAndAMigrateInvalidation()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        using var dev = new MigrateTestDevice(memory, 64);
        var mm = new AddressSpace(memory);
        ulong va = mm.Mmap(0, 8 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(mm))
        {
            cpu.Fill(va, 8 * Page.Size, 7);
        }
        TraceLog.Start();
        int moved = dev.MigrateToDevice(mm, va, va + 8 * Page.Size);
        TraceLog.Stop();
        Assert.Equal(8, moved);
        List<TraceEvent> spans = MySpans();
        TraceEvent setup = Single(spans, "migrate_vma_setup", TraceCategory.Migrate);
        TraceEvent pages = Single(spans, "migrate_vma_pages", TraceCategory.Migrate);
        TraceEvent finalize = Single(spans, "migrate_vma_finalize", TraceCategory.Migrate);
        Assert.Equal(8, setup.Arg1.Value);
        Assert.True(setup.Timestamp <= pages.Timestamp && pages.Timestamp <= finalize.Timestamp, "setup, pages, finalize in order");
        Single(spans, TraceNames.Of(MmuNotifierEvent.Migrate), TraceCategory.Invalidate);
        dev.EvictAll();
        mm.Exit();
    }

    [Fact]
    public void ATracedPageOutRecordsAReclaimSpan()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        ulong va = mm.Mmap(0, 4 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        TraceLog.Start();
        mm.Madvise(va, 4 * Page.Size, Advice.PageOut);
        TraceLog.Stop();
        TraceEvent span = Single(MySpans(), "reclaim_pageout", TraceCategory.Memory);
        Assert.Equal(4, span.Arg1.Value);
        mm.Exit();
    }

    [Fact]
    public void WithTracingOffTheSameOperationsRecordNothing()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        ulong va = mm.Mmap(0, 4 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(va, 1L);
        }
        mm.Munmap(va, 4 * Page.Size);
        Assert.Empty(MySpans());
        mm.Exit();
    }
}
