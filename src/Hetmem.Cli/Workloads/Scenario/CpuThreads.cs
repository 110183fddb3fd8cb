using System.Runtime.ExceptionServices;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Cli.Workloads.Scenario;

/// <summary>
/// Runs work on real threads, each with its own <see cref="Cpu"/> and trace track (<c>cpu0</c>, <c>cpu1</c>, …), and
/// traces the CPU accesses that fault.
/// </summary>
internal static class CpuThreads
{
    /// <summary>
    /// Runs <paramref name="body"/> on <paramref name="threads"/> threads at once, each with a fresh <see cref="Cpu"/> of
    /// <paramref name="space"/> and the thread index, and waits for all. The first exception is rethrown.
    /// </summary>
    public static void Run(AddressSpace space, int threads, Action<Cpu, int> body, string trackPrefix = "cpu")
    {
        var errors = new Exception?[threads];
        var ts = new Thread[threads];
        for (int i = 0; i < threads; i++)
        {
            int id = i;
            ts[i] = new Thread(() =>
            {
                TraceLog.SetThreadTrack(trackPrefix + id.ToString(System.Globalization.CultureInfo.InvariantCulture));
                try
                {
                    using var cpu = new Cpu(space);
                    body(cpu, id);
                }
                catch (Exception ex)
                {
                    errors[id] = ex;
                }
            })
            { IsBackground = true, Name = trackPrefix + id.ToString(System.Globalization.CultureInfo.InvariantCulture) };
            ts[i].Start();
        }
        foreach (Thread t in ts)
        {
            t.Join();
        }
        foreach (Exception? e in errors)
        {
            if (e is not null)
            {
                ExceptionDispatchInfo.Capture(e).Throw();
            }
        }
    }

    /// <summary>
    /// A CPU store that records a <see cref="TraceCategory.CpuFault"/> span when the access faults (no present entry, or
    /// a read-only one), named after what backs the page (<paramref name="kind"/>) and the entry that resolved it.
    /// </summary>
    public static void Write(Cpu cpu, ulong va, long value, VmaKind kind)
    {
        Pte before = cpu.Space.QueryPte(va, out _);
        bool faults = !before.IsPresent || !before.IsWritable;
        if (!faults || !TraceLog.Enabled)
        {
            cpu.Write(va, value);
            return;
        }
        long t0 = TraceLog.Timestamp();
        cpu.Write(va, value);
        long t1 = TraceLog.Timestamp();
        TraceLog.Complete(TraceTrack.CurrentThread, TraceCategory.CpuFault, FaultName(cpu.Space, va, kind, write: true, before.IsPresent), t0, t1,
            TraceArg.Address(va), TraceArg.Of("write", 1));
    }

    /// <summary>A CPU load that records a <see cref="TraceCategory.CpuFault"/> span when the access faults.</summary>
    public static long Read(Cpu cpu, ulong va, VmaKind kind)
    {
        Pte before = cpu.Space.QueryPte(va, out _);
        if (before.IsPresent || !TraceLog.Enabled)
        {
            return cpu.Read<long>(va);
        }
        long t0 = TraceLog.Timestamp();
        long v = cpu.Read<long>(va);
        long t1 = TraceLog.Timestamp();
        TraceLog.Complete(TraceTrack.CurrentThread, TraceCategory.CpuFault, FaultName(cpu.Space, va, kind, write: false, false), t0, t1,
            TraceArg.Address(va), TraceArg.Of("write", 0));
        return v;
    }

    /// <summary>
    /// The span name of a fault: <c>anon</c>, <c>anon_thp</c>, <c>anon_zero</c> (read of untouched memory),
    /// <c>anon_cow</c>, <c>file</c>, <c>file_cow</c> (private), <c>file_mkwrite</c> (first write to a shared page mapped
    /// read-only), <c>dax_pte</c>/<c>dax_pmd</c>/<c>dax_pud</c>, <c>dax_mkwrite</c>, <c>hugetlb</c>, <c>hugetlb_cow</c>.
    /// </summary>
    public static string FaultName(AddressSpace space, ulong va, VmaKind kind, bool write, bool wasPresent)
    {
        space.QueryPte(va, out int order);
        bool shared = false;
        using (space.MmapLock.Read())
        {
            shared = space.Vmas.Find(va)?.IsShared ?? false;
        }
        return kind switch
        {
            VmaKind.Anonymous => wasPresent ? "anon_cow" : write ? (order == Page.PmdOrder ? "anon_thp" : "anon") : "anon_zero",
            VmaKind.File => wasPresent ? (shared ? "file_mkwrite" : "file_cow") : "file",
            VmaKind.Dax => wasPresent ? (shared ? "dax_mkwrite" : "dax_cow") : order == Page.PudOrder ? "dax_pud" : order == Page.PmdOrder ? "dax_pmd" : "dax_pte",
            VmaKind.HugeTlb => wasPresent && !shared ? "hugetlb_cow" : "hugetlb",
            _ => "other",
        };
    }
}
