using Hetmem.Diagnostics.Scheduling;
using Hetmem.Mm;
using Hetmem.Physical;
using Xunit.Abstractions;

namespace Hetmem.Tests.Races;

/// <summary>
/// A device running the canonical HmmMirrorHelper.FaultAndProgram loop races with munmap / mprotect of the page it
/// faults. Property (Documentation/mm/hmm.rst): once the CPU-side call returned, the device holds no translation to
/// the old page (munmap) and no write permission (mprotect read-only), and it never uses one.
/// </summary>
[Collection("Races")]
public sealed class InvalidateVersusFaultRaceTests
{
    internal const int PreemptionBound = 3;
    private readonly ITestOutputHelper _output;

    public InvalidateVersusFaultRaceTests(ITestOutputHelper output) => _output = output;

    public enum CpuSide
    {
        Munmap,
        MprotectReadOnly,
    }

    /// <summary>One execution: fresh address space, one populated page, a mirror; device faults + uses, CPU changes it.</summary>
    internal static Func<RaceScenario> Scenario(CpuSide side, bool buggyDevice)
        => () =>
        {
            var world = new RaceWorld();
            var mm = new AddressSpace(world.Memory);
            ulong va = mm.Mmap(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
            using (var cpu = new Cpu(mm))
            {
                cpu.Write(va, 0x1234L);
            }
            ulong oldPfn = mm.QueryPte(va, out _).Pfn;
            var mirror = new RaceMirror(mm, va, Page.Size, skipReadRetry: buggyDevice);
            bool returned = false;   // the CPU-side call returned (only one logical thread runs at a time)
            bool write = side == CpuSide.MprotectReadOnly;
            mirror.OnDeviceUse = (addr, pfn, w) => RaceKit.Require(!returned || (side == CpuSide.Munmap ? pfn != oldPfn : !w),
                $"device {(w ? "wrote" : "read")} PFN 0x{pfn:x} of 0x{addr:x} after {side} returned");
            void CheckDevice(string when)
            {
                if (mirror.TryGet(va, out ulong pfn, out bool writable))
                {
                    RaceKit.Require(side != CpuSide.Munmap, $"{when}: the device still maps 0x{va:x} → PFN 0x{pfn:x} (old PFN 0x{oldPfn:x}) after munmap returned");
                    RaceKit.Require(!writable, $"{when}: the device maps 0x{va:x} writable (PFN 0x{pfn:x}) after mprotect(PROT_READ) returned");
                }
            }
            return new RaceScenario
            {
                Check = () => CheckDevice("at the end"),
                Cleanup = () =>
                {
                    mirror.Notifier.Remove();
                    mm.Exit();
                    world.Close();
                },
            }
            .Thread("device", () =>
            {
                Errno r = mirror.Fault(va, write);
                RaceKit.Require(r is Errno.Ok or Errno.EFAULT or Errno.EPERM, $"device fault returned {r}");
                mirror.Use(va, write);
            })
            .Thread("cpu", () =>
            {
                if (side == CpuSide.Munmap)
                {
                    mm.Munmap(va, Page.Size);
                }
                else
                {
                    mm.Mprotect(va, Page.Size, Prot.Read);
                }
                returned = true;
                CheckDevice($"right after {side}");
            });
        };

    [Theory]
    [InlineData(CpuSide.Munmap)]
    [InlineData(CpuSide.MprotectReadOnly)]
    public void EveryInterleavingWithinThePreemptionBoundKeepsTheDeviceOffTheInvalidatedPage(CpuSide side)
    {
        ExplorationReport report = RaceKit.Explore(_output, $"invalidate({side}) vs fault",
            Scenario(side, buggyDevice: false), new BoundedDfsStrategy(PreemptionBound, maxExecutions: 5000));
        Assert.True(report.Exhausted, "the bounded space should be explored completely");
        Assert.True(report.DistinctSchedules > 200, $"only {report.DistinctSchedules} schedules explored");
        Assert.Equal(0, report.ViolationCount);
    }

    [Theory]
    [InlineData(CpuSide.Munmap)]
    [InlineData(CpuSide.MprotectReadOnly)]
    public void SeededPctSchedulesWithDeeperPreemptionsFindNoViolationEither(CpuSide side)
    {
        int seed = RaceKit.Seed(_output, $"invalidate({side}) vs fault pct", 20261125);
        ExplorationReport report = RaceKit.Explore(_output, $"invalidate({side}) vs fault",
            Scenario(side, buggyDevice: false), new PctStrategy(seed, executions: 300, depth: 4));
        Assert.Equal(300, report.Executions);
        Assert.Equal(0, report.ViolationCount);
    }
}
