using System.Text.Json;
using Hetmem.Cli.Bench;
using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Cli.Selftests;

/// <summary>
/// Hetmem's own self-tests of the layers below the kernel suite (physical memory, DAX namespaces, diagnostics, the
/// host's madvise support), named <c>hetmem.*</c> so they are never mistaken for ported kernel cases.
/// </summary>
internal static class BuiltinSelftests
{
    public static void Register(SelftestRegistry r)
    {
        r.Add("hetmem.physical.frame_metadata_fits_32_bytes", () =>
            Selftest.Assert(PhysicalMemory.FrameMetadataBytes <= 32, $"{PhysicalMemory.FrameMetadataBytes} bytes a frame"));

        r.Add("hetmem.physical.bad_ram_size_is_einval", () =>
        {
            try
            {
                using var m = new PhysicalMemory(3UL << 20);
            }
            catch (MmException ex) when (ex.Errno == Errno.EINVAL)
            {
                return;
            }
            Selftest.Assert(false, "a 3 MiB arena was accepted");
        });

        r.Add("hetmem.physical.alloc_free_balances", ctx =>
        {
            PhysicalMemory mem = ctx.Memory;
            long before = mem.FreeFrames;
            var pfns = new List<ulong>();
            for (int i = 0; i < 512; i++)
            {
                ulong p = mem.Allocate(ctx.Random.Next(4));
                Selftest.Assert(p != Page.NoPfn, "allocation failed");
                pfns.Add(p);
            }
            foreach (ulong p in pfns)
            {
                Selftest.Assert(mem.Put(p), $"0x{p:x} was not freed by its last reference");
            }
            Selftest.Assert(mem.FreeFrames == before, $"{mem.FreeFrames} free, expected {before}");
        });

        r.Add("hetmem.physical.order9_is_naturally_aligned", ctx =>
        {
            PhysicalMemory mem = ctx.Memory;
            ulong p = mem.Allocate(PhysicalMemory.MaxOrder);
            Selftest.Assert(p != Page.NoPfn, "no 2 MiB block");
            Selftest.Assert(Page.IsAligned(p, 512), $"pfn 0x{p:x} is not 512-frame aligned");
            mem.Put(p);
        });

        r.Add("hetmem.physical.exhaustion_returns_nopfn", ctx =>
        {
            PhysicalMemory mem = ctx.Memory;
            var held = new List<ulong>();
            for (ulong p = mem.Allocate(PhysicalMemory.MaxOrder); p != Page.NoPfn; p = mem.Allocate(PhysicalMemory.MaxOrder))
            {
                held.Add(p);
            }
            for (ulong p = mem.Allocate(0); p != Page.NoPfn; p = mem.Allocate(0))
            {
                held.Add(p);
            }
            Selftest.Assert(mem.FreeFrames == 0, $"{mem.FreeFrames} frames left");
            held.ForEach(p => mem.Put(p));
            Selftest.Assert(mem.UsedFrames == 0, $"{mem.UsedFrames} frames still used");
        });

        r.Add("hetmem.physical.device_private_map_needs_owner_and_ops", ctx =>
        {
            try
            {
                unsafe
                {
                    ctx.Memory.RegisterDevicePageMap(MemoryType.DevicePrivate, 16, null, null, null);
                }
            }
            catch (MmException ex) when (ex.Errno == Errno.EINVAL)
            {
                return;
            }
            Selftest.Assert(false, "a device-private map without owner or ops was accepted");
        });

        r.Add("hetmem.dax.data_persists_across_reopen", ctx =>
        {
            string path = Path.Combine(ctx.DaxDirectory, "selftest.dax");
            File.Delete(path);
            var data = new byte[Page.Size];
            ctx.Random.NextBytes(data);
            using (var ns = new DaxNamespace(ctx.Memory, path, 2UL << 20))
            {
                data.CopyTo(ctx.Memory.FrameSpan(ns.FirstPfn + 3));
                ns.Flush(3, 1);
            }
            using (var ns = new DaxNamespace(ctx.Memory, path, 2UL << 20))
            {
                Selftest.Assert(ns.Block(3).SequenceEqual(data), "block 3 differs after reopening");
            }
            if (!ctx.KeepsDaxFiles)
            {
                File.Delete(path);
            }
        });

        r.Add("hetmem.diagnostics.trace_exports_perfetto_json", () =>
        {
            if (TraceLog.Enabled)
            {
                Selftest.Skip("the trace recorder is in use by --trace");
            }
            TraceLog.Start();
            try
            {
                TraceTrack dev = TraceLog.RegisterTrack("selftest-dev0", "devices");
                using (TraceLog.Span(TraceCategory.CpuFault, "selftest fault", TraceArg.Address(0x7000_0000)))
                {
                }
                using (TraceLog.Span(dev, TraceCategory.DeviceFault, "selftest device fault"))
                {
                }
                TraceLog.Counter("resident_pages", "ram", 42);
            }
            finally
            {
                TraceLog.Stop();
            }
            using var ms = new MemoryStream();
            int n = PerfettoExporter.Write(ms);
            TraceLog.Clear();
            using JsonDocument doc = JsonDocument.Parse(ms.ToArray());
            JsonElement events = doc.RootElement.GetProperty("traceEvents");
            Selftest.Assert(n == 3, $"{n} events exported, expected 3");
            Selftest.Assert(events.EnumerateArray().Any(e => e.GetProperty("ph").GetString() == "X"
                && e.GetProperty("name").GetString() == "selftest fault"), "the CPU fault span is missing");
            Selftest.Assert(events.EnumerateArray().Any(e => e.GetProperty("ph").GetString() == "M"
                && e.GetProperty("args").GetProperty("name").GetString() == "selftest-dev0"), "the device track has no thread_name");
        });

        r.Add("hetmem.diagnostics.lock_order_rejects_inversion", () =>
        {
            bool was = OrderedLock.ValidationEnabled;
            OrderedLock.ValidationEnabled = true;
            try
            {
                var pt = new OrderedLock(LockClass.PageTable);
                var mmap = new OrderedLock(LockClass.MmapLock);
                using (pt.EnterScope())
                {
                    try
                    {
                        mmap.Enter();
                        mmap.Exit();
                    }
                    catch (LockOrderViolationException)
                    {
                        return;
                    }
                }
                Selftest.Assert(false, "taking the mmap lock under a page-table lock was allowed");
            }
            finally
            {
                OrderedLock.ValidationEnabled = was;
            }
        });

        r.Add("hetmem.host.madvise_populate_is_supported", ctx =>
        {
            var o = new BenchOptions(ctx.Settings, quick: true);
            try
            {
                double ns = HostBenchmarks.PopulateReadNs(o);
                Selftest.Assert(ns > 0, "populate took no time");
            }
            catch (BenchUnavailableException ex)
            {
                Selftest.Skip(ex.Message);
            }
        });
    }
}
