using Hetmem.Devices.Dmirror;
using Hetmem.Diagnostics.Scheduling;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using Hetmem.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Hetmem.Tests.Races;

/// <summary>
/// A device (dmirror) reads a page of a MAP_SHARED page-cache file mapping while the file is truncated below it.
/// Property (kernel: truncate unmaps through the invalidation before it frees the page, and a fault beyond EOF is
/// SIGBUS, which hmm_range_fault reports as -EFAULT): the read returns the old data or fails with EFAULT — never the
/// bytes of a freed frame, which the truncating thread recycles with a poison pattern right after truncate returns —
/// and after truncate returned the device holds no translation of the page.
/// </summary>
[Collection("Races")]
public sealed class TruncateVersusRemoteReadRaceTests : IDisposable
{
    private const byte FileByte = 0xA5;
    private const byte BufferByte = 0x11;
    private const byte Poison = 0xDE;
    private readonly ITestOutputHelper _output;
    private readonly ScratchDir _dir = new();
    private readonly PhysicalMemory _memory = new(64UL << 20);   // shared by the dmirror executions: a driver is costly to create
    private readonly PageCacheFileSystem _fs;
    private readonly DmirrorDriver _driver;
    private readonly long _usedAtStart;
    private int _files;

    public TruncateVersusRemoteReadRaceTests(ITestOutputHelper output)
    {
        _output = output;
        _fs = new PageCacheFileSystem(_memory, _dir.Path);
        _driver = new DmirrorDriver(_memory);
        _usedAtStart = _memory.UsedFrames;
    }

    private unsafe Func<RaceScenario> Scenario(bool prefaulted)
        => () =>
        {
            FileHandle fh = _fs.Create($"f{_files++}");
            byte[] content = new byte[2 * Page.Size];
            Array.Fill(content, FileByte);
            fh.Write(0, content);
            var mm = new AddressSpace(_memory);
            DmirrorFile file = _driver.Open(0, mm);
            ulong map = mm.Mmap(0, 2 * Page.Size, Prot.Read, MapFlags.Shared, fh.Inode);
            ulong target = map + Page.Size;                       // the page truncate removes
            ulong buffer = mm.Mmap(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
            var deviceCpu = new Cpu(mm);
            deviceCpu.Fill(buffer, Page.Size, BufferByte);
            if (prefaulted)
            {
                _ = deviceCpu.Read<byte>(target);
            }
            var recycled = new List<ulong>();
            bool truncated = false;
            var reads = new List<(Errno Result, byte[] Seen)>();
            void RequireNoTranslation(string when)
                => RaceKit.Require(!file.TryGetMirrorEntry(target, out ulong pfn, out _, out _),
                    $"{when}: the device still translates 0x{target:x} → PFN 0x{pfn:x} after truncate returned");
            return new RaceScenario
            {
                Check = () =>
                {
                    RequireNoTranslation("at the end");
                    RaceKit.Require(reads.Count == 2, "the device did not finish its reads");
                    foreach ((Errno read, byte[] seen) in reads)
                    {
                        RaceKit.Require(read is Errno.Ok or Errno.EFAULT, $"device read returned {read}");
                        byte expected = read == Errno.Ok ? FileByte : BufferByte;
                        int bad = Array.FindIndex(seen, b => b != expected);
                        RaceKit.Require(bad < 0, $"device read {read} left byte {bad} = 0x{(bad < 0 ? 0 : seen[bad]):x2} in the buffer, expected 0x{expected:x2}" +
                            (bad >= 0 && seen[bad] == Poison ? " (the poison of a recycled frame: use after free)" : ""));
                    }
                },
                Cleanup = () =>
                {
                    foreach (ulong pfn in recycled)
                    {
                        _memory.Put(pfn);
                    }
                    deviceCpu.Dispose();
                    file.Close();
                    mm.Exit();
                    fh.Dispose();
                },
            }
            .Thread("device", () =>
            {
                for (int i = 0; i < 2; i++)   // a second read starts with the mirror entry of the first, if any
                {
                    var cmd = new DmirrorCmd { Addr = target, Ptr = buffer, Npages = 1 };
                    Errno read = file.TryIoctl(DmirrorCommand.Read, ref cmd, deviceCpu);
                    byte[] seen = new byte[Page.Size];
                    deviceCpu.Read(buffer, seen);
                    deviceCpu.Fill(buffer, Page.Size, BufferByte);
                    reads.Add((read, seen));
                }
            })
            .Thread("truncate", () =>
            {
                fh.Truncate(Page.Size);
                truncated = true;
                RequireNoTranslation("right after truncate");
                Recycle(_memory, recycled);
                RaceKit.Require(truncated, "unreachable");
            });
        };

    /// <summary>Reuses freed frames at once and fills them with <see cref="Poison"/>, so a stale device translation reads it.</summary>
    private static unsafe void Recycle(PhysicalMemory memory, List<ulong> into)
    {
        for (int i = 0; i < 8; i++)
        {
            ulong pfn = memory.Allocate(0);
            if (pfn != Page.NoPfn)
            {
                new Span<byte>(memory.Address(pfn), Page.Size).Fill(Poison);
                into.Add(pfn);
            }
        }
    }

    /// <summary>The same race with <see cref="RaceMirror"/> as the remote reader (optionally with the planted bug):
    /// the device faults the page, then reads its frame through its own page table.</summary>
    private unsafe Func<RaceScenario> MirrorScenario(bool buggyDevice)
        => () =>
        {
            var world = new RaceWorld();
            var fs = new PageCacheFileSystem(world.Memory, _dir.Path);
            FileHandle fh = fs.Create($"m{_files++}");
            byte[] content = new byte[2 * Page.Size];
            Array.Fill(content, FileByte);
            fh.Write(0, content);
            var mm = new AddressSpace(world.Memory);
            ulong map = mm.Mmap(0, 2 * Page.Size, Prot.Read, MapFlags.Shared, fh.Inode);
            ulong target = map + Page.Size;
            using (var cpu = new Cpu(mm))
            {
                _ = cpu.Read<byte>(target);
            }
            var mirror = new RaceMirror(mm, map, 2 * Page.Size, buggyDevice);
            var recycled = new List<ulong>();
            mirror.OnDeviceUse = (va, pfn, _) =>
            {
                byte b = *world.Memory.Address(pfn);
                ref FrameInfo frame = ref world.Memory.Frame(pfn);
                bool cached = frame.RefCount > 0 && ReferenceEquals(frame.Mapping, fh.Inode);
                RaceKit.Require(b == FileByte && cached, $"remote read of 0x{va:x} through PFN 0x{pfn:x} returned 0x{b:x2}" +
                    (b == Poison ? " (a freed, recycled frame)" : cached ? "" : " (a frame no longer in the page cache: use after free)"));
            };
            return new RaceScenario
            {
                Check = () => RaceKit.Require(!mirror.TryGet(target, out ulong pfn, out _), $"the device still translates 0x{target:x} → PFN 0x{pfn:x} after truncate"),
                Cleanup = () =>
                {
                    foreach (ulong pfn in recycled)
                    {
                        world.Memory.Put(pfn);
                    }
                    mirror.Notifier.Remove();
                    mm.Exit();
                    fh.Dispose();
                    fs.Dispose();
                    world.Close();
                },
            }
            .Thread("device", () =>
            {
                Errno r = mirror.Fault(target, write: false);
                RaceKit.Require(r is Errno.Ok or Errno.EFAULT, $"device fault returned {r}");
                mirror.Use(target, write: false);
            })
            .Thread("truncate", () =>
            {
                fh.Truncate(Page.Size);
                Recycle(world.Memory, recycled);
            });
        };

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void EveryInterleavingWithinThePreemptionBoundReadsOldDataOrFailsButNeverAFreedPage(bool prefaulted)
    {
        ExplorationReport report = RaceKit.Explore(_output, $"truncate vs remote read (prefaulted={prefaulted})", Scenario(prefaulted),
            new BoundedDfsStrategy(preemptionBound: 3, maxExecutions: 5000));
        Assert.True(report.Exhausted, "the bounded space should be explored completely");
        // The inode's invalidate lock has schedule points (truncate's write side, the fault's read side), so the
        // device's fault interleaves inside truncate's unmap-and-free section too (6 schedules before it had them).
        Assert.True(report.DistinctSchedules >= 100, $"only {report.DistinctSchedules} schedules explored");
        Assert.Equal(0, report.ViolationCount);
    }

    [Fact]
    public void ACorrectMirrorNeverReadsATruncatedPageButOneWithoutReadRetryReadsTheRecycledFrame()
    {
        ExplorationReport good = RaceKit.Explore(_output, "truncate vs mirror read", MirrorScenario(buggyDevice: false),
            new BoundedDfsStrategy(preemptionBound: 3, maxExecutions: 5000));
        Assert.True(good.Exhausted);
        Assert.True(good.DistinctSchedules >= 100, $"only {good.DistinctSchedules} schedules explored");
        Assert.Equal(0, good.ViolationCount);
        ExplorationReport bad = RaceKit.Explore(_output, "truncate vs planted-bug mirror read", MirrorScenario(buggyDevice: true),
            new BoundedDfsStrategy(preemptionBound: 3, maxExecutions: 5000), new ExplorationOptions { KeepViolations = int.MaxValue });
        Assert.True(bad.Exhausted);
        Assert.True(bad.ViolationCount > 0, "the exploration missed the planted bug");
        Assert.All(bad.Violations, v => Assert.False(v.Aborted || v.Abandoned, v.Failure));
        RaceKit.Log(_output, $"planted bug vs truncate: {bad.ViolationCount} of {bad.Executions} schedules violate");
        ExecutionResult found = bad.Violations[0];
        Assert.Contains("remote read", found.Failure);
        ExecutionResult again = RaceExplorer.Replay(MirrorScenario(buggyDevice: true), found.Schedule);
        Assert.Equal(found.Failure, again.Failure);
        Assert.Equal(found.Trace, again.Trace);
    }

    public void Dispose()
    {
        _driver.Dispose();
        _fs.Dispose();
        long used = _memory.UsedFrames;
        _memory.Dispose();
        _dir.Dispose();
        Assert.Equal(_usedAtStart, used);
    }
}
