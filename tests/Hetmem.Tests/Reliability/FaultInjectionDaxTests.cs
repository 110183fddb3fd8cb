using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using Hetmem.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Hetmem.Tests.Reliability;

/// <summary>
/// DAX media errors (kernel: a badblocks hit in dax_direct_access): read and write return EIO (or a short count once
/// some bytes moved), a CPU fault is SIGBUS, and data written before is intact.
/// </summary>
[Collection(FaultInjectionCollection.Name)]
public sealed class FaultInjectionDaxTests(ITestOutputHelper output)
{
    private const ulong Mib = MmTestBed.Mib;
    private const ulong Pg = Page.Size;

    [Fact]
    public void AMediaErrorFailsReadAndWriteWithEioAndChangesNothing()
    {
        using var bed = new MmTestBed();
        DaxFileSystem fs = bed.Dax(8 * Mib);
        using FileHandle fh = fs.Create("media");
        byte[] before = Enumerable.Range(0, (int)(4 * Pg)).Select(i => (byte)(i * 7)).ToArray();
        Assert.Equal(before.Length, fh.Write(0, before));
        try
        {
            FaultInjection.FailNth(FaultSites.DaxIo, 1, bed.Memory);
            Assert.Equal(Errno.EIO, Assert.Throws<MmException>(() => fh.Read(0, new byte[64])).Errno);
            FaultInjection.FailNth(FaultSites.DaxIo, 1, bed.Memory);
            Assert.Equal(Errno.EIO, Assert.Throws<MmException>(() => fh.Write(0, new byte[64])).Errno);
            // A failure on the third block after two moved: a short count, as the kernel's dax_iomap_rw returns.
            FaultInjection.FailNth(FaultSites.DaxIo, 3, bed.Memory);
            Assert.Equal((int)(2 * Pg), fh.Read(0, new byte[4 * Pg]));
            FaultInjection.FailNth(FaultSites.DaxIo, 3, bed.Memory);
            Assert.Equal((int)(2 * Pg), fh.Write(4 * Pg, new byte[4 * Pg]));
            Assert.Equal(6 * Pg, fh.Inode.Size);
        }
        finally
        {
            FaultInjection.Disable();
        }
        byte[] after = new byte[before.Length];
        Assert.Equal(after.Length, fh.Read(0, after));
        Assert.Equal(before, after);
    }

    [Fact]
    public void AFaultOnABadBlockIsABusErrorAndTheFileDataIsIntact()
    {
        int seed = Seed.Get(output, nameof(AFaultOnABadBlockIsABusErrorAndTheFileDataIsIntact));
        using var bed = new MmTestBed();
        DaxFileSystem fs = bed.Dax(16 * Mib);
        using FileHandle fh = fs.Create("mapped");
        fh.Truncate(4 * Mib);
        AddressSpace mm = bed.NewSpace();
        ulong a = mm.MmapFile(0, 4 * Mib, Prot.Read | Prot.Write, MapFlags.Shared, fh);
        Cpu cpu = bed.Cpu(mm);
        var written = new Dictionary<ulong, long>();
        var rng = new Random(seed);
        int sigbus = 0;
        try
        {
            FaultInjection.Configure(new FaultInjectionOptions { Seed = seed, Probability = 0.3, Sites = FaultSites.DaxIo, Domain = bed.Memory });
            for (int i = 0; i < 200; i++)
            {
                ulong off = (ulong)rng.Next((int)(4 * Mib / 8)) * 8;
                if (i % 20 == 0)
                {
                    mm.Madvise(a, 4 * Mib, Advice.DontNeed); // drop the mappings so the next accesses fault again
                }
                try
                {
                    cpu.Write(a + off, (long)off + 1);
                    written[off] = (long)off + 1;
                }
                catch (BusError)
                {
                    sigbus++;
                }
            }
        }
        finally
        {
            FaultInjection.Disable();
        }
        output.WriteLine($"{sigbus} SIGBUS, {written.Count} values written");
        Assert.True(sigbus > 0, "no fault hit a bad block");
        mm.Madvise(a, 4 * Mib, Advice.DontNeed);
        byte[] b = new byte[8];
        foreach ((ulong off, long v) in written)
        {
            Assert.Equal(v, cpu.Read<long>(a + off));
            fh.Read(off, b);
            Assert.Equal(v, BitConverter.ToInt64(b));
        }
    }

    [Fact]
    public void ADeviceFaultOnABadDaxBlockFailsWithEfaultAndTheRetrySucceeds()
    {
        using var dir = new ScratchDir();
        using var fx = new Devices.Dmirror.DmirrorFixture();
        using (var ns = new DaxNamespace(fx.Memory, dir.File("pmem"), 8 * Mib))
        using (DaxFileSystem fs = DaxFileSystem.Format(ns))
        {
            using (FileHandle fh = fs.Create("mirrored"))
            {
                fh.Write(0, Enumerable.Range(0, (int)(2 * Pg)).Select(i => (byte)(i + 3)).ToArray());
                ulong a = fx.Mm.MmapFile(0, 2 * Pg, Prot.Read | Prot.Write, MapFlags.Shared, fh);
                ulong mirror = fx.MapAnon(2);
                fx.Fill(mirror, 2, _ => 0);
                Hetmem.Devices.Dmirror.DmirrorFile f = fx.Open(0);
                try
                {
                    FaultInjection.Configure(new FaultInjectionOptions { Sites = FaultSites.DaxIo, Domain = fx.Memory });
                    Assert.Equal(Errno.EFAULT, fx.Cmd(f, Hetmem.Devices.Dmirror.DmirrorCommand.Read, a, mirror, 2, out _));
                }
                finally
                {
                    FaultInjection.Disable();
                }
                Assert.Equal(Errno.Ok, fx.Cmd(f, Hetmem.Devices.Dmirror.DmirrorCommand.Read, a, mirror, 2, out _));
                byte[] got = new byte[2 * Pg];
                fx.Cpu.Read(mirror, got);
                Assert.All(Enumerable.Range(0, got.Length), i => Assert.Equal((byte)(i + 3), got[i]));
                f.Close();
                fx.Mm.Munmap(a, 2 * Pg);
            }
        }
    }
}
