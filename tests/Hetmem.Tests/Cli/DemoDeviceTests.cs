using Hetmem.Cli.Devices;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Cli;

/// <summary>The demo's devices: the mini mirror built on HmmMirrorHelper, and the dmirror adapter.</summary>
public sealed class DemoDeviceTests : IDisposable
{
    private const int Pages = 16;
    private readonly PhysicalMemory _memory = new(64UL << 20);
    private readonly long _usedAtStart;
    private readonly AddressSpace _mm;
    private readonly ulong _a;

    public DemoDeviceTests()
    {
        _usedAtStart = _memory.UsedFrames;
        _mm = new AddressSpace(_memory);
        _a = _mm.Mmap(0, Pages * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using var cpu = new Cpu(_mm);
        for (ulong p = 0; p < Pages; p++)
        {
            cpu.Write(_a + (p * Page.Size), (long)(p + 100));
        }
    }

    public void Dispose()
    {
        _mm.Exit();
        Assert.Equal(_usedAtStart, _memory.UsedFrames);
        _memory.Dispose();
    }

    [Fact]
    public void TheMiniMirrorMapsWhatTheCpuMapsAndReadsTheCpusData()
    {
        using var dev = new MiniMirror("t-mirror", _mm);
        dev.Attach(_a, Pages * Page.Size, "anon");
        Assert.Equal(Errno.Ok, dev.Fault(_a, _a + (Pages * Page.Size), write: false));
        Assert.Equal(Pages, dev.ValidPages());
        Assert.Equal(Pages, dev.WritablePages());   // the CPU entries are writable, so the snapshot is too
        Assert.Null(dev.CheckAgainstCpu(_a, _a + (Pages * Page.Size)));
        Assert.Equal(_mm.QueryPte(_a + Page.Size, out _).Pfn, HmmPfn.ToPfn(dev.EntryOf(_a + Page.Size)));
        Assert.Equal(Errno.Ok, dev.ReadInt64(_a + (3 * Page.Size), out long v));
        Assert.Equal(103, v);
        Assert.Equal(1, dev.DeviceFaults);
    }

    [Fact]
    public void MunmapAndMprotectTakeTheMiniMirrorsTranslationsAwayAndAreCountedByKind()
    {
        using var dev = new MiniMirror("t-mirror", _mm);
        dev.Attach(_a, Pages * Page.Size, "anon");
        Assert.Equal(Errno.Ok, dev.Fault(_a, _a + (Pages * Page.Size), write: true));
        _mm.Mprotect(_a, 4 * Page.Size, Prot.Read);
        Assert.Equal(1, dev.Invalidations(MmuNotifierEvent.ProtectionVma));
        Assert.Equal(0, dev.ValidPages(_a, _a + (4 * Page.Size)));
        Assert.Equal(Errno.EPERM, dev.WriteInt64(_a, 1));
        Assert.Equal(Errno.Ok, dev.ReadInt64(_a, out long v));
        Assert.Equal(100, v);
        Assert.Equal(0, dev.WritablePages(_a, _a + (4 * Page.Size)));
        _mm.Munmap(_a + (8 * Page.Size), 2 * Page.Size);
        Assert.Equal(1, dev.Invalidations(MmuNotifierEvent.Unmap));
        Assert.Equal(0, dev.ValidPages(_a + (8 * Page.Size), _a + (10 * Page.Size)));
        Assert.Equal(Errno.EFAULT, dev.ReadInt64(_a + (8 * Page.Size), out _));
        Assert.Null(dev.CheckAgainstCpu(_a, _a + (Pages * Page.Size)));
        Assert.True(dev.PagesInvalidated >= 6);
    }

    [Fact]
    public void TheMiniMirrorsDeviceWritesAreWhatTheCpuReads()
    {
        using var dev = new MiniMirror("t-mirror", _mm);
        dev.Attach(_a, Pages * Page.Size, "anon");
        Assert.Equal(Errno.Ok, dev.WriteInt64(_a + (5 * Page.Size) + 16, 0x5eed));
        using var cpu = new Cpu(_mm);
        Assert.Equal(0x5eed, cpu.Read<long>(_a + (5 * Page.Size) + 16));
        Assert.Equal(1, dev.DeviceWrites);
    }

    [Fact]
    public void TheDmirrorAdapterReadsWritesAndLosesItsTranslationsThroughTheKernelTestDevice()
    {
        using var dev = new DmirrorDemoDevice(_mm, "t-dmirror");
        IDemoDevice d = dev;
        d.Attach(_a, Pages * Page.Size, "anon");
        Span<long> words = stackalloc long[2];
        Assert.Equal(Errno.Ok, d.ReadWords(_a + (2 * Page.Size), [0, 8], words));
        Assert.Equal(102, words[0]);
        Assert.Equal(Errno.Ok, d.WriteInt64(_a + (2 * Page.Size) + 8, 77));
        using (var cpu = new Cpu(_mm))
        {
            Assert.Equal(77, cpu.Read<long>(_a + (2 * Page.Size) + 8));
            Assert.Equal(102, cpu.Read<long>(_a + (2 * Page.Size)));
        }
        Assert.True(d.ValidPages(_a, _a + (Pages * Page.Size)) >= 1);
        _mm.Munmap(_a, Pages * Page.Size);
        Assert.Equal(0, d.ValidPages(_a, _a + (Pages * Page.Size)));
        Assert.Equal(Errno.EFAULT, d.ReadInt64(_a, out _));
        Assert.Equal(-1, d.Invalidations(MmuNotifierEvent.Unmap));
    }

    [Theory]
    [InlineData("gpu")]
    [InlineData("rdma")]
    public void TheGpuAndRdmaAdaptersReadTheCpusDataAndLoseTheirTranslationsOnMunmap(string family)
    {
        using IDemoDevice d = family == "gpu" ? new GpuDemoDevice(_mm, "t-gpu0") : new RdmaDemoDevice(_mm, "t-rxe0");
        d.Attach(_a, Pages * Page.Size, "anon");
        Assert.Equal(Errno.Ok, d.Fault(_a, _a + (Pages * Page.Size), write: false));
        Assert.Equal(Pages, d.ValidPages(_a, _a + (Pages * Page.Size)));
        Span<long> words = stackalloc long[1];
        Assert.Equal(Errno.Ok, d.ReadWords(_a + (7 * Page.Size), [0], words));
        Assert.Equal(107, words[0]);
        Assert.Equal(Errno.Ok, d.WriteInt64(_a + (7 * Page.Size) + 64, 99));
        using (var cpu = new Cpu(_mm))
        {
            Assert.Equal(99, cpu.Read<long>(_a + (7 * Page.Size) + 64));
        }
        _mm.Mprotect(_a, Page.Size, Prot.Read);
        Assert.Equal(0, d.WritablePages(_a, _a + Page.Size));
        Assert.Equal(Errno.EPERM, d.WriteInt64(_a, 1));
        _mm.Munmap(_a + Page.Size, (Pages - 1) * Page.Size);
        Assert.Equal(0, d.ValidPages(_a + Page.Size, _a + (Pages * Page.Size)));
        Assert.Equal(Errno.EFAULT, d.ReadInt64(_a + (2 * Page.Size), out _));
    }
}
