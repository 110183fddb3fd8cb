using Hetmem.Devices.Dmirror;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Hmm;

/// <summary>
/// Eviction reaches every mapping of a device-private page, including the copies fork made (kernel:
/// migrate_device_range → try_to_migrate through the reverse map, then remove_migration_ptes over every hit).
/// </summary>
public unsafe class MigrateDeviceRmapTests
{
    private const ulong Mib = 1UL << 20;
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    private static Pte EntryAt(AddressSpace mm, ulong va) => mm.Lookup(va, out _, out _);

    private static void Fill(Cpu cpu, ulong a, ulong pages, long seed)
    {
        for (ulong i = 0; i < pages; i++)
        {
            cpu.Write(a + i * Page.Size + 8 * (i % 64), seed + (long)i);
        }
    }

    private static void Check(Cpu cpu, ulong a, ulong pages, long seed)
    {
        for (ulong i = 0; i < pages; i++)
        {
            Assert.Equal(seed + (long)i, cpu.Read<long>(a + i * Page.Size + 8 * (i % 64)));
        }
    }

    [Fact]
    public void EvictionMigratesTheForkedChildsSharedDevicePagesBackToOneSharedRamPage()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 64);
        var parent = new AddressSpace(mem);
        ulong a = parent.Mmap(0, 8 * Page.Size, Rw, Anon);
        using (var pc = new Cpu(parent))
        {
            Fill(pc, a, 8, 40);
        }
        Assert.Equal(8, dev.MigrateToDevice(parent, a, a + 8 * Page.Size));
        AddressSpace child = parent.Fork();
        Assert.Equal(SwapEntryType.DevicePrivate, EntryAt(child, a + 3 * Page.Size).SwapType);

        Assert.Equal(8, dev.EvictAll());

        Assert.Equal(64, dev.FreePages);
        for (ulong i = 0; i < 8; i++)
        {
            Pte pe = EntryAt(parent, a + i * Page.Size);
            Pte ce = EntryAt(child, a + i * Page.Size);
            Assert.True(pe.IsPresent && ce.IsPresent, $"page {i}: parent {pe}, child {ce}");
            Assert.True(mem.IsRam(pe.Pfn));
            Assert.Equal(pe.Pfn, ce.Pfn);                       // one RAM copy, shared copy-on-write
            Assert.False(pe.IsWritable || ce.IsWritable);
            Assert.Equal(2, mem.Frame(pe.Pfn).MapCount);
            Assert.Equal(2, mem.Frame(pe.Pfn).RefCount);
        }
        using (var cc = new Cpu(child))
        using (var pc = new Cpu(parent))
        {
            Check(cc, a, 8, 40);
            cc.Write(a, -5L);                                   // COW: the parent keeps its data
            Check(pc, a, 8, 40);
            Assert.Equal(-5L, cc.Read<long>(a));
        }
        child.Exit();
        parent.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void WhenTheParentAlreadyFaultedItsCopyBackEvictionStillReachesTheChild()
    {
        using var mem = new PhysicalMemory(64 * Mib);
        long before = mem.UsedFrames;
        using var dev = new MigrateTestDevice(mem, 64);
        var parent = new AddressSpace(mem);
        ulong a = parent.Mmap(0, 4 * Page.Size, Rw, Anon);
        using (var pc = new Cpu(parent))
        {
            Fill(pc, a, 4, 70);
        }
        Assert.Equal(4, dev.MigrateToDevice(parent, a, a + 4 * Page.Size));
        AddressSpace child = parent.Fork();
        using (var pc = new Cpu(parent))
        {
            pc.Write(a + Page.Size + 8, 123L);                  // the parent's page 1 leaves device memory
            Check(pc, a, 1, 70);
        }
        Assert.True(mem.IsRam(EntryAt(parent, a + Page.Size).Pfn));
        Assert.Equal(SwapEntryType.DevicePrivate, EntryAt(child, a + Page.Size).SwapType);

        Assert.Equal(4, dev.EvictAll());

        Assert.Equal(64, dev.FreePages);
        using (var cc = new Cpu(child))
        {
            Check(cc, a, 4, 70);
            Assert.True(EntryAt(child, a + Page.Size).IsPresent);
        }
        using (var pc = new Cpu(parent))
        {
            Assert.Equal(123L, pc.Read<long>(a + Page.Size + 8));
        }
        child.Exit();
        parent.Exit();
        Assert.Equal(before, mem.UsedFrames);
    }

    [Fact]
    public void ClosingTheDmirrorFileEvictsTheDevicePagesOfAForkedChildToo()
    {
        using var mem = new PhysicalMemory(128 * Mib);
        long before = mem.UsedFrames;
        AddressSpace? child = null;
        var parent = new AddressSpace(mem);
        using (var driver = new DmirrorDriver(mem))
        {
            DmirrorDevice node = driver.Device(0);
            using (var pc = new Cpu(parent))
            {
                ulong buf = parent.Mmap(0, 16 * Page.Size, Rw, Anon);
                ulong mirror = parent.Mmap(0, 16 * Page.Size, Rw, Anon);
                Fill(pc, buf, 16, 900);
                DmirrorFile fd = driver.Open(0, parent);
                var cmd = new DmirrorCmd { Addr = buf, Ptr = mirror, Npages = 16 };
                fd.Ioctl(DmirrorCommand.MigrateToDevice, ref cmd, pc);
                Assert.Equal(16UL, cmd.Cpages);
                child = parent.Fork();
                Assert.Equal(SwapEntryType.DevicePrivate, EntryAt(child, buf).SwapType);
                Assert.Equal(16UL, node.PagesInUse);

                fd.Close();                                      // evicts the node's memory, the child's mappings included

                Assert.Equal(0UL, node.PagesInUse);
                Assert.Equal(0, node.StrandedChunkCount);
                using (var cc = new Cpu(child))
                {
                    Assert.True(EntryAt(child, buf + 5 * Page.Size).IsPresent);
                    Check(cc, buf, 16, 900);
                }
                Check(pc, buf, 16, 900);
            }
            child.Exit();
            parent.Exit();
        }
        Assert.Equal(before, mem.UsedFrames);
    }
}
