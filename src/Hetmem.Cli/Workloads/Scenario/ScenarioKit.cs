using System.Globalization;
using Hetmem.Cli.Devices;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Diagnostics;

namespace Hetmem.Cli.Workloads.Scenario;

/// <summary>Helpers the scenario workloads share: device faults and data checks over regions, expected signals, tables.</summary>
internal static class ScenarioKit
{
    /// <summary>Device faults cover 1 MiB at a time.</summary>
    public const int FaultChunkPages = 256;

    public static void FaultAll(IDemoDevice dev, DemoRegion reg, bool write)
    {
        for (ulong p = 0; p < reg.Pages; p += FaultChunkPages)
        {
            ulong end = Math.Min(reg.Pages, p + FaultChunkPages);
            Require(dev.Fault(reg.PageAddress(p), reg.PageAddress(end), write), $"{dev.Name} {(write ? "write" : "read")} fault of {reg.Name} pages {p}..{end}");
        }
    }

    /// <summary>The device reads every checked word of pages [first, end) of <paramref name="reg"/>; returns the number of words.</summary>
    public static long VerifyDevice(IDemoDevice dev, DemoRegion reg, ulong first, ulong end)
    {
        long n = 0;
        Span<long> values = stackalloc long[DemoRegion.WordOffsets.Length];
        for (ulong p = first; p < end; p++)
        {
            Errno e = dev.ReadWords(reg.PageAddress(p), DemoRegion.WordOffsets, values);
            Require(e, $"{dev.Name} read of {reg.Name} page {p}");
            for (int w = 0; w < values.Length; w++)
            {
                WorkloadResult.Require(values[w] == reg.Expected(p, w), $"{dev.Name}: {reg.Name} page {p} word {w} = 0x{values[w]:x}, expected 0x{reg.Expected(p, w):x}");
                n++;
            }
        }
        return n;
    }

    /// <summary>
    /// Invalidations of <paramref name="kind"/> the device received since it reported <paramref name="before"/>; null when
    /// the device does not count them by kind (then only its translations are checked).
    /// </summary>
    public static long? Since(IDemoDevice dev, MmuNotifierEvent kind, long before)
    {
        long now = dev.Invalidations(kind);
        return now < 0 || before < 0 ? null : now - before;
    }

    /// <summary>Fails the running check unless the device saw at least one <paramref name="kind"/> invalidation (or does not count them).</summary>
    public static string RequireInvalidated(IDemoDevice dev, MmuNotifierEvent kind, long before)
    {
        long? n = Since(dev, kind, before);
        WorkloadResult.Require(n is null || n > 0, $"no {MiniMirror.EventName(kind).ToUpperInvariant()} invalidation reached {dev.Name}");
        return n is null ? "translations checked" : $"{n} {MiniMirror.EventName(kind).ToUpperInvariant()} invalidations";
    }

    public static void Require(Errno e, string what) => WorkloadResult.Require(e == Errno.Ok, $"{what}: {e}");

    public static SegmentationFault ExpectSegv(Action a)
    {
        try
        {
            a();
        }
        catch (SegmentationFault f)
        {
            return f;
        }
        throw new CheckFailedException("the access did not raise SIGSEGV");
    }

    public static BusError ExpectBus(Action a)
    {
        try
        {
            a();
        }
        catch (BusError b)
        {
            return b;
        }
        throw new CheckFailedException("the access did not raise SIGBUS");
    }

    /// <summary>
    /// Adds the maps table (kernel: /proc/pid/smaps, condensed): range, perms, kind, size, resident pages, huge entries,
    /// swap and device entries, and what the mapping is for, from <paramref name="label"/> (a region name) when given.
    /// </summary>
    public static void MapsTable(WorkloadResult r, IReadOnlyList<MapsEntry> maps, Func<MapsEntry, string?>? label = null)
    {
        ResultTable t = r.Table("maps (before exit)", "range", "perms", "kind", "size", "resident pages", "huge entries (PMD/PUD)", "swap", "device", "mapping")
            .AlignRight(3, 4, 5, 6, 7);
        foreach (MapsEntry m in maps)
        {
            t.AddRow($"{m.Start:x12}-{m.End:x12}", m.Perms, m.Kind.ToString(), SizeParser.Format(m.End - m.Start),
                m.ResidentPages.ToString("#,0", CultureInfo.InvariantCulture), $"{m.PmdEntries}/{m.PudEntries}",
                m.SwapPages.ToString(CultureInfo.InvariantCulture), m.DevicePages.ToString(CultureInfo.InvariantCulture),
                label?.Invoke(m) ?? "");
        }
    }

    /// <summary>A maps labeller naming the region each mapping lies in, and anything else as a device's buffer.</summary>
    public static Func<MapsEntry, string?> RegionLabels(IEnumerable<DemoRegion> regions)
    {
        DemoRegion[] all = [.. regions];
        return m => all.FirstOrDefault(x => m.Start >= x.Start && m.End <= x.End)?.Name ?? "a device's bounce buffer";
    }

    /// <summary>Adds the vmstat counters table: the process totals and what this run added.</summary>
    public static void CountersTable(WorkloadResult r, IReadOnlyDictionary<string, long> atStart)
    {
        ResultTable t = r.Table("counters (Hetmem.Diagnostics.Counters)", "counter", "this run", "process total").AlignRight(1, 2);
        foreach ((string k, long v) in Counters.Snapshot())
        {
            long d = v - atStart.GetValueOrDefault(k);
            t.AddRow(k, d.ToString("#,0", CultureInfo.InvariantCulture), v.ToString("#,0", CultureInfo.InvariantCulture));
        }
    }

    /// <summary>Adds one table per device with its statistics.</summary>
    public static void DeviceTables(WorkloadResult r, IEnumerable<IDemoDevice> devices)
    {
        foreach (IDemoDevice dev in devices)
        {
            ResultTable t = r.Table($"device {dev.Name}", "metric", "value").AlignRight(1);
            t.AddRow("device", dev.Description);
            foreach ((string metric, string value) in dev.Stats())
            {
                t.AddRow(metric, value);
            }
        }
    }

    /// <summary>
    /// Adds the <c>ram</c> gauge of the "resident pages" plot panel for <c>--plot</c> (frames in use; an atomic read), unless
    /// an earlier section of the same run added it already.
    /// </summary>
    public static void RamGauge(WorkloadContext context)
    {
        PhysicalMemory mem = context.Memory;
        if (context.Timeline is { } tl && !tl.Series.Any(x => x.Name == "ram" && x.Group == "resident pages"))
        {
            tl.AddGauge("ram", "resident pages", () => mem.UsedFrames);
        }
    }

    /// <summary>Formats a count with thousands separators.</summary>
    public static string N(long v) => v.ToString("#,0", CultureInfo.InvariantCulture);
}
