using Hetmem.Cli.Stress;
using Hetmem.Devices.Dmirror;
using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using Hetmem.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Hetmem.Tests.Stress;

/// <summary>
/// The rules the stress oracle assumes for its remote RDMA client and its DAX slots hold on Hetmem itself: RDMA_READ
/// and RDMA_WRITE through the ODP MR over the arena see and make CPU-visible values, an unmapped page is
/// REM_ACCESS_ERR (after which the client reconnects), a DAX page keeps its value through MADV_DONTNEED, reads 0
/// after punch hole and truncate, and beyond EOF is SIGBUS for the CPU, EFAULT for dmirror and REM_ACCESS_ERR for
/// RDMA; and a short run with DAX slots and the remote client is clean.
/// </summary>
public class OracleRemoteAndDaxTests(ITestOutputHelper output)
{
    private const ulong Arena = OracleStress.ArenaBase;
    private const ulong SlotBytes = 32 * 4096;
    private const Prot Rw = Prot.Read | Prot.Write;

    [Fact]
    public void TheRemoteClientReadsAndWritesTheArenaAndAnUnmappedPageIsARemoteAccessError()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        try
        {
            mm.Mmap(Arena, SlotBytes, Rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
            using var cpu = new Cpu(mm);
            using var remote = new RemoteClient(memory, mm, Arena, 4 * SlotBytes);
            cpu.Write(Arena + 4096, 0x1234UL);

            Assert.Equal(WcStatus.SUCCESS, remote.Read(Arena + 4096, out ulong v));
            Assert.Equal(0x1234UL, v);
            Assert.Equal(WcStatus.SUCCESS, remote.Write(Arena + 2 * 4096, 0x5678UL));
            Assert.Equal(0x5678UL, cpu.Read<ulong>(Arena + 2 * 4096));

            Assert.Equal(WcStatus.REM_ACCESS_ERR, remote.Read(Arena + SlotBytes, out _));      // never mapped
            mm.Munmap(Arena, 4096);
            Assert.Equal(WcStatus.REM_ACCESS_ERR, remote.Write(Arena, 1));                       // unmapped now
            mm.Mprotect(Arena + 4096, 4096, Prot.Read);
            Assert.Equal(WcStatus.REM_ACCESS_ERR, remote.Write(Arena + 4096, 2));                // read-only
            Assert.Equal(WcStatus.SUCCESS, remote.Read(Arena + 4096, out v));                     // reconnected
            Assert.Equal(0x1234UL, v);
            Assert.Equal(3, remote.Reconnects);
            Assert.Equal(0, remote.InternalErrors);
        }
        finally
        {
            mm.Exit();
        }
    }

    [Fact]
    public void ADaxSlotKeepsValuesThroughDontNeedReadsZeroAfterPunchAndTruncateAndFaultsBeyondEof()
    {
        string dir = Directory.CreateTempSubdirectory("hetmem-oracle-dax-").FullName;
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        var driver = new DmirrorDriver(memory);
        try
        {
            using var ns = new DaxNamespace(memory, Path.Combine(dir, "pmem0"), 4UL << 21);
            using var fs = DaxFileSystem.Format(ns);
            using FileHandle h = fs.Create("slot");
            h.Truncate(SlotBytes);
            mm.MmapFile(Arena, SlotBytes, Rw, MapFlags.Shared | MapFlags.Fixed, h);
            const ulong buf = OracleStress.BufferBase;
            mm.Mmap(buf, 4096, Rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
            DmirrorFile mirror = driver.Open(0, mm);
            using var cpu = new Cpu(mm);
            using var remote = new RemoteClient(memory, mm, Arena, SlotBytes);
            try
            {
                cpu.Write(Arena, 7UL);
                cpu.Write(Arena + 4096, 9UL);
                Assert.Equal(MappableKind.Dax, Assert.Single(mm.Vmas.Intersecting(Arena, Arena + SlotBytes)).File!.Kind);

                mm.Madvise(Arena, SlotBytes, Advice.DontNeed);
                Assert.Equal(7UL, cpu.Read<ulong>(Arena));                                          // shared: kept
                Assert.Equal(WcStatus.SUCCESS, remote.Read(Arena + 4096, out ulong v));
                Assert.Equal(9UL, v);

                h.PunchHole(0, 4096);
                Assert.Equal(0UL, cpu.Read<ulong>(Arena));                                          // hole: zero

                h.Truncate(4096);
                Assert.Throws<BusError>(() => cpu.Read<ulong>(Arena + 4096));                        // beyond EOF
                var cmd = new DmirrorCmd { Addr = Arena + 4096, Ptr = buf, Npages = 1 };
                Assert.Equal(Errno.EFAULT, mirror.TryIoctl(DmirrorCommand.Read, ref cmd, cpu));
                Assert.Equal(WcStatus.REM_ACCESS_ERR, remote.Write(Arena + 4096, 3));

                h.Truncate(SlotBytes);
                Assert.Equal(0UL, cpu.Read<ulong>(Arena + 4096));                                   // re-extended: zero
                Assert.Equal(WcStatus.SUCCESS, remote.Read(Arena + 4096, out v));
                Assert.Equal(0UL, v);
            }
            finally
            {
                mirror.Close();
            }
        }
        finally
        {
            mm.Exit();
            driver.Dispose();
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void AShortRunWithOnlyDaxFileSlotsAndTheRemoteClientFindsNoViolationAndLeaksNothing()
    {
        int seed = Seed.Get(output, nameof(AShortRunWithOnlyDaxFileSlotsAndTheRemoteClientFindsNoViolationAndLeaksNothing));
        using var memory = new PhysicalMemory(64UL << 20);
        OracleStressResult r = OracleStress.Run(memory, new OracleStressOptions
        {
            Seed = seed, Threads = 2, Duration = TimeSpan.FromSeconds(2), Gpu = false,
            Layout = new StressLayout(12, 32, 0, 3), ReplayCommand = $"HETMEM_SEED={seed}",
        });
        output.WriteLine($"{r.Operations} operations, {r.DeviceOperations} device, {r.Checks} checks, {r.RdmaReconnects} RDMA reconnects");
        Assert.True(r.Violations == 0, r.Report);
        Assert.True(r.Errors.Count == 0, string.Join("\n", r.Errors));
        Assert.Equal(0, r.LeakedFrames);
        Assert.Equal(0, r.NotifiersLeft);
        Assert.True(r.ByKind[(int)StressOpKind.Truncate] > 0 && r.ByKind[(int)StressOpKind.PunchHole] > 0, "no truncate or punch hole of a DAX slot ran");
        Assert.True(r.ByKind[(int)StressOpKind.RemoteRead] > 0 && r.ByKind[(int)StressOpKind.RemoteWrite] > 0, "the remote client did nothing");
    }
}
