using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Gpu;

/// <summary>
/// Regression test for a bug found while building the GPU (owned by the Migration team, src/Hetmem/Hmm/MigrateVma.cs):
/// MigrateVma caches the last device page map it looked up (<c>_map</c>, used by <c>MapOf</c>/<c>SelectsDevice</c>) and
/// keeps it across <c>Setup</c> calls. A request object reused with another PhysicalMemory whose device map got the same
/// PFNs then compares against the stale map's owner and collects nothing.
/// </summary>
public class MigrateVmaReuseTests
{
    private sealed class Ops : IDevicePageMapOps
    {
        public void PageFree(ulong pfn)
        {
        }

        public Errno MigrateToRam(in DevicePageFault fault) => Errno.EFAULT;
    }

    /// <summary>Moves one anonymous page to device-private memory, then asks to collect it back with the same request object.</summary>
    private static unsafe ulong CollectBackCount(MigrateVma m)
    {
        using var mem = new PhysicalMemory(64UL << 20);
        byte* arena = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(2 << 20, 4096);
        try
        {
            var owner = new object();
            DevicePageMap map = mem.RegisterDevicePageMap(MemoryType.DevicePrivate, 512, arena, owner, new Ops());
            var mm = new AddressSpace(mem);
            ulong a = mm.Mmap(0, 4096, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
            using (var cpu = new Cpu(mm))
            {
                cpu.Write(a, 42L);
            }
            ulong cpages;
            using (mm.MmapLock.Read())
            {
                m.Vma = mm.Vmas.Find(a)!;
                m.Start = a;
                m.End = a + 4096;
                m.PgmapOwner = owner;
                m.FaultPage = Page.NoPfn;
                m.Flags = MigrateVmaSelect.System;
                Assert.Equal(Errno.Ok, m.Setup());
                ulong dst = map.FirstPfn;
                mem.InitDevicePage(dst);
                mem.LockFrame(dst);
                mem.CopyFrame(dst, MigratePfn.ToPfn(m.Src[0]));
                m.Dst[0] = MigratePfn.Make(dst);
                m.Pages();
                m.Finalize();
                Assert.Equal(SwapEntryType.DevicePrivate, mm.QueryPte(a, out _).SwapType);

                m.Flags = MigrateVmaSelect.DevicePrivate;
                Assert.Equal(Errno.Ok, m.Setup());
                cpages = m.Cpages;
                m.Finalize();
            }
            mm.Exit();
            mem.UnregisterDevicePageMap(map);
            return cpages;
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree(arena);
        }
    }

    [Fact]
    public void AMigrateVmaReusedWithAnotherPhysicalMemoryStillCollectsItsDevicePrivatePages()
    {
        var m = new MigrateVma { Src = new ulong[1], Dst = new ulong[1] };
        Assert.Equal(1UL, CollectBackCount(m));
        Assert.True(CollectBackCount(m) == 1,
            "MigrateVma kept the device page map of the first PhysicalMemory in its one-entry cache (MigrateVma.MapOf) " +
            "and compared the second map's pages against the first map's owner: nothing was collected");
    }
}
