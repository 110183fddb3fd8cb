using System.Globalization;
using Hetmem.Cli.Devices;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Cli.Workloads.Scenario;

/// <summary>
/// <c>hetmem run mirror-race</c> and the stress scenario of the same name: CPU threads munmap, re-mmap, mprotect,
/// MADV_DONTNEED and write an anonymous range while two mirror devices run fault loops over it (see
/// <see cref="MirrorRace"/>). Runs for <c>--duration</c> under <c>stress</c>, 3 s under <c>run</c> and 2 s in the demo.
/// </summary>
internal sealed class MirrorRaceWorkload(TimeSpan? fixedDuration = null, string name = "mirror-race", bool extraOps = false) : IWorkload
{
    /// <inheritdoc/>
    public string Name => name;

    /// <inheritdoc/>
    public string Description => extraOps
        ? "mirror-race plus fork/exit and MADV_PAGEOUT to swap on the CPU threads; checks no device or child sees a stale translation."
        : "munmap/mmap/mprotect/DONTNEED on CPU threads racing two devices' fault loops; checks no device keeps a stale translation.";

    /// <inheritdoc/>
    public WorkloadResult Run(WorkloadContext context)
    {
        var r = new WorkloadResult(Name);
        ScenarioKit.RamGauge(context);
        TimeSpan duration = fixedDuration ?? context.Duration;
        int cpuThreads = fixedDuration is null ? Math.Max(2, context.Threads - 2) : 2;
        ulong pages = Math.Clamp(context.Memory.RamFrames / 16, 64, 2048);
        using var rig = new MemoryRig(context, new RigOptions { SwapSlots = extraOps ? (uint)pages * 2 : 0 });
        AddressSpace mm = rig.Mm;
        ulong start = mm.Mmap(0, pages << Page.Shift, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        var devices = new List<MiniMirror> { new("race-mirror0", mm), new("race-mirror1", mm) };
        long busyBefore = Counters.Read(Counter.HmmRangeFaultBusy);
        MirrorRace.Outcome o;
        try
        {
            foreach (MiniMirror d in devices)
            {
                d.Attach(start, pages << Page.Shift, "race");
            }
            context.Report(Name, $"{cpuThreads} CPU threads vs {devices.Count} devices", 0);
            o = MirrorRace.Run(mm, start, pages, devices, cpuThreads, duration, context.Seed, context.Cancellation,
                f => context.Report(Name, $"{cpuThreads} CPU threads vs {devices.Count} devices", f * 0.95), extraOps);
            string secs = o.Elapsed.TotalSeconds.ToString("F1", CultureInfo.InvariantCulture);
            r.Check($"{cpuThreads} CPU threads and {devices.Count} devices raced over {pages} pages without a stale device translation", o.Violation is null,
                o.Violation ?? $"{ScenarioKit.N(o.InvariantChecks)} device-vs-CPU page-table comparisons in {secs} s");
            r.Check("no thread hit an unexpected error", o.Error is null, o.Error);
            r.Check("both sides made progress: CPU remaps, mprotects and writes, device faults and reads",
                o.Remaps > 0 && o.Mprotects > 0 && o.CpuWrites > 0 && o.DeviceFaults > 0 && o.DeviceReads > 0,
                $"CPU: {ScenarioKit.N(o.CpuOps)} ops ({ScenarioKit.N(o.Remaps)} remaps, {ScenarioKit.N(o.Mprotects)} mprotects); devices: {ScenarioKit.N(o.DeviceFaults)} faults, {ScenarioKit.N(o.DeviceReads)} reads");
            r.Check("every device saw UNMAP, CLEAR and PROTECTION_VMA invalidations", () =>
            {
                foreach (MiniMirror d in devices)
                {
                    WorkloadResult.Require(d.Invalidations(MmuNotifierEvent.Unmap) > 0 && d.Invalidations(MmuNotifierEvent.ProtectionVma) > 0,
                        $"{d.Name}: unmap {d.Invalidations(MmuNotifierEvent.Unmap)}, protection_vma {d.Invalidations(MmuNotifierEvent.ProtectionVma)}");
                }
                return string.Join("; ", devices.Select(d => $"{d.Name}: {ScenarioKit.N(d.TotalInvalidations)}"));
            });
            r.Counter("cpu_ops", o.CpuOps);
            r.Counter("cpu_signals", o.CpuSignals);
            r.Counter("remaps", o.Remaps);
            r.Counter("mprotects", o.Mprotects);
            r.Counter("dontneeds", o.DontNeeds);
            if (extraOps)
            {
                r.Counter("forks", o.Forks);
                r.Counter("pageouts", o.PageOuts);
                r.Check("forks and page-outs ran", o.Forks > 0 && o.PageOuts > 0, $"{o.Forks} forks, {o.PageOuts} page-outs");
            }
            r.Counter("device_faults", o.DeviceFaults);
            r.Counter("device_fault_errors", o.DeviceFaultErrors);
            r.Counter("device_reads", o.DeviceReads);
            r.Counter("device_writes", o.DeviceWrites);
            r.Counter("invariant_checks", o.InvariantChecks);
            r.Counter("hmm_range_fault_busy", Counters.Read(Counter.HmmRangeFaultBusy) - busyBefore);
            mm.Exit();
            r.Check("after exit the devices hold no translation", devices.All(d => d.ValidPages() == 0),
                string.Join(", ", devices.Select(d => $"{d.Name}: {d.ValidPages()}")));
            ScenarioKit.DeviceTables(r, devices);
        }
        finally
        {
            foreach (MiniMirror d in devices)
            {
                d.Dispose();
            }
        }
        rig.Dispose();
        long leaked = rig.Memory.UsedFrames - rig.UsedFramesAtStart;
        r.Check("every frame is free again after exit", leaked == 0, $"{leaked} frames leaked");
        context.Report(Name, "done", 1);
        return r;
    }
}
