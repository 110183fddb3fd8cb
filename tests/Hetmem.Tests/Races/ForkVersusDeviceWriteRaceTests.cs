using System.Runtime.InteropServices;
using Hetmem.Devices.Dmirror;
using Hetmem.Diagnostics.Scheduling;
using Hetmem.Mm;
using Hetmem.Physical;
using Xunit.Abstractions;

namespace Hetmem.Tests.Races;

/// <summary>
/// A dmirror device write (hmm fault for write + a copy through the device mapping) races with fork, which
/// write-protects the parent's private page inside a PROTECTION_PAGE invalidation and shares it with the child.
/// Property (what the kernel guarantees through that invalidation): the device's value lands in the parent's page
/// only, and the child keeps exactly the value the page had when fork's invalidation reached the page; the device
/// never ends up mapping the child's (shared) frame.
/// </summary>
[Collection("Races")]
public sealed unsafe class ForkVersusDeviceWriteRaceTests : IDisposable
{
    private const long ForkTimeValue = 0x1111_1111_1111_1111;
    private const long DeviceValue = 0x2222_2222_2222_2222;
    private readonly ITestOutputHelper _output;
    private readonly PhysicalMemory _memory = new(64UL << 20);   // shared by the executions: a driver is costly to create
    private readonly DmirrorDriver _driver;
    private readonly long _usedAtStart;

    public ForkVersusDeviceWriteRaceTests(ITestOutputHelper output)
    {
        _output = output;
        _driver = new DmirrorDriver(_memory);
        _usedAtStart = _memory.UsedFrames;
    }

    /// <summary>Snapshots the parent's page when fork's invalidation reaches it (after dmirror's callback, which
    /// sorts first in the interval tree, has torn down the device entry under the device mutex).</summary>
    private sealed class ForkProbe(PhysicalMemory memory, ulong pfn) : IMmuIntervalNotifierOps
    {
        public long? ValueAtForkInvalidation { get; private set; }

        public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
        {
            if (range.Event == MmuNotifierEvent.ProtectionPage && ValueAtForkInvalidation is null)
            {
                ValueAtForkInvalidation = *(long*)memory.Address(pfn);
            }
            return true;
        }
    }

    private Func<RaceScenario> Scenario()
        => () =>
        {
            var mm = new AddressSpace(_memory);
            DmirrorFile file = _driver.Open(0, mm);
            ulong a = mm.Mmap(0, 2 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
            ulong buffer = a + Page.Size;   // the user buffer the device copies from, in the same VMA
            long[] pattern = new long[Page.Size / sizeof(long)];
            Array.Fill(pattern, DeviceValue);
            var deviceCpu = new Cpu(mm);
            deviceCpu.Write(a, ForkTimeValue);
            deviceCpu.Write(buffer, MemoryMarshal.AsBytes(pattern.AsSpan()));
            ulong parentPfn = mm.QueryPte(a, out _).Pfn;
            var probe = new ForkProbe(_memory, parentPfn);
            MmuIntervalNotifier probeNotifier = MmuIntervalNotifier.Insert(mm, a, Page.Size, probe);
            AddressSpace? child = null;
            Errno written = Errno.EINVAL;
            return new RaceScenario
            {
                Check = () =>
                {
                    RaceKit.Require(written == Errno.Ok, $"device write returned {written}");
                    RaceKit.Require(child is not null && probe.ValueAtForkInvalidation is not null, "fork did not invalidate the private page");
                    long parentValue;
                    using (var pc = new Cpu(mm))
                    {
                        parentValue = pc.Read<long>(a);
                    }
                    long childValue;
                    using (var cc = new Cpu(child!))
                    {
                        childValue = cc.Read<long>(a);
                    }
                    RaceKit.Require(parentValue == DeviceValue, $"parent reads 0x{parentValue:x}, not the device's value");
                    RaceKit.Require(childValue == probe.ValueAtForkInvalidation,
                        $"child reads 0x{childValue:x} but the page held 0x{probe.ValueAtForkInvalidation:x} when fork invalidated it");
                    ulong childPfn = child!.QueryPte(a, out _).Pfn;
                    ulong nowParentPfn = mm.QueryPte(a, out _).Pfn;
                    if (file.TryGetMirrorEntry(a, out ulong devPfn, out bool writable, out _))
                    {
                        RaceKit.Require(devPfn == nowParentPfn, $"device maps PFN 0x{devPfn:x}, parent maps 0x{nowParentPfn:x}");
                        RaceKit.Require(!writable || devPfn != childPfn, $"device maps the child's frame 0x{childPfn:x} writable");
                    }
                },
                Cleanup = () =>
                {
                    child?.Exit();
                    deviceCpu.Dispose();
                    probeNotifier.Remove();
                    file.Close();
                    mm.Exit();
                },
            }
            .Thread("device", () =>
            {
                var cmd = new DmirrorCmd { Addr = a, Ptr = buffer, Npages = 1 };
                written = file.TryIoctl(DmirrorCommand.Write, ref cmd, deviceCpu);
            })
            .Thread("fork", () => child = mm.Fork());
        };

    [Fact]
    public void EveryInterleavingWithinThePreemptionBoundLandsTheDeviceWriteInTheParentOnly()
    {
        ExplorationReport report = RaceKit.Explore(_output, "fork vs device write", Scenario(),
            new BoundedDfsStrategy(InvalidateVersusFaultRaceTests.PreemptionBound, maxExecutions: 5000));
        Assert.True(report.Exhausted, "the bounded space should be explored completely");
        Assert.True(report.DistinctSchedules > 200, $"only {report.DistinctSchedules} schedules explored");
        Assert.Equal(0, report.ViolationCount);
    }

    [Fact]
    public void SeededPctSchedulesLandTheDeviceWriteInTheParentOnly()
    {
        int seed = RaceKit.Seed(_output, "fork vs device write pct", 424242);
        ExplorationReport report = RaceKit.Explore(_output, "fork vs device write", Scenario(), new PctStrategy(seed, executions: 200, depth: 4));
        Assert.Equal(200, report.Executions);
        Assert.Equal(0, report.ViolationCount);
    }

    public void Dispose()
    {
        _driver.Dispose();
        long used = _memory.UsedFrames;
        _memory.Dispose();
        Assert.Equal(_usedAtStart, used);
    }
}
