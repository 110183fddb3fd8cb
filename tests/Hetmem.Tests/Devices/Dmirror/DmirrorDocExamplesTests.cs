using Hetmem.Devices.Dmirror;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Dmirror;

/// <summary>The examples of docs/dmirror.md, verbatim.</summary>
public sealed class DmirrorDocExamplesTests
{
    [Fact]
    public void TheOverviewExampleReadsMigratesAndFaultsBack()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        using var driver = new DmirrorDriver(memory);
        long used = memory.UsedFrames;
        var mm = new AddressSpace(memory);
        using (var cpu = new Cpu(mm))
        {
            ulong buf = mm.Mmap(0, 4 * 4096, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
            ulong mirror = mm.Mmap(0, 4 * 4096, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
            cpu.Write(buf + 4096, 42);

            DmirrorFile fd = driver.Open(0, mm);                     // open("/dev/hmm_dmirror0")
            var cmd = new DmirrorCmd { Addr = buf, Ptr = mirror, Npages = 4 };
            fd.Ioctl(DmirrorCommand.Read, ref cmd, cpu);             // the device reads: one fault pass
            Assert.Equal((4UL, 1UL), (cmd.Cpages, cmd.Faults));
            Assert.Equal(42, cpu.Read<int>(mirror + 4096));

            fd.Ioctl(DmirrorCommand.MigrateToDevice, ref cmd, cpu);  // now in device-private memory
            Assert.Equal(SwapEntryType.DevicePrivate, mm.QueryPte(buf, out _).SwapType);
            Assert.Equal(42, cpu.Read<int>(buf + 4096));             // the CPU fault migrates that page back

            fd.Close();                                              // evicts the rest of the node's memory
        }
        mm.Exit();
        Assert.Equal(used, memory.UsedFrames);
    }
}
