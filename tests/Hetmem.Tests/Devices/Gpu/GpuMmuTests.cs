using Hetmem.Devices.Gpu;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Gpu;

public class GpuMmuTests
{
    private const ulong Base = 0x1234_4000_0000;

    [Fact]
    public void EntriesOfEachSizeTranslateEveryPageTheyCover()
    {
        var pt = new GpuPageTable();
        pt.MapLocked(Base, GpuPte.Make(0x40000, GpuPageSize.Size2M, write: true, atomic: true, vram: true));
        pt.MapLocked(Base + Page.PmdSize + 0x10000, GpuPte.Make(0x50010, GpuPageSize.Size64K, write: false, atomic: false, vram: false));
        pt.MapLocked(Base + Page.PmdSize + 0x3000, GpuPte.Make(0x60000, GpuPageSize.Size4K, write: true, atomic: false, vram: false));
        Assert.Equal((0L, 1L, 1L), (pt.Entries4K - 1, pt.Entries64K, pt.Entries2M));
        for (ulong p = 0; p < 512; p += 37)
        {
            ulong pte = pt.Lookup(Base + p * Page.Size + 5);
            Assert.Equal(0x40000 + p, GpuPte.PfnAt(pte, Base + p * Page.Size));
            Assert.True(GpuPte.Permits(pte, GpuAccess.Atomic));
        }
        for (ulong p = 0; p < 16; p++)
        {
            ulong va = Base + Page.PmdSize + 0x10000 + p * Page.Size;
            ulong pte = pt.Lookup(va);
            Assert.Equal(0x50010 + p, GpuPte.PfnAt(pte, va));
            Assert.True(GpuPte.Permits(pte, GpuAccess.Read));
            Assert.False(GpuPte.Permits(pte, GpuAccess.Write));
        }
        Assert.Equal(0x60000UL, GpuPte.Pfn(pt.Lookup(Base + Page.PmdSize + 0x3000)));
        Assert.Equal(0UL, pt.Lookup(Base + Page.PmdSize + 0x4000));
        Assert.Equal(0UL, pt.Lookup(0x7000_0000_0000));
    }

    [Fact]
    public void ZappingPartOfALargeEntryClearsTheWholeEntry()
    {
        var pt = new GpuPageTable();
        pt.MapLocked(Base, GpuPte.Make(0x40000, GpuPageSize.Size2M, true, true, true));
        pt.MapLocked(Base + Page.PmdSize, GpuPte.Make(0x50000, GpuPageSize.Size64K, true, true, true));
        pt.MapLocked(Base + Page.PmdSize + 0x10000, GpuPte.Make(0x60000, GpuPageSize.Size4K, true, true, true));
        Assert.True(pt.ZapLocked(Base + 0x5000, Base + 0x6000));
        Assert.Equal(0UL, pt.Lookup(Base));
        Assert.Equal(0L, pt.Entries2M);
        Assert.True(pt.ZapLocked(Base + Page.PmdSize + 0x8000, Base + Page.PmdSize + 0x9000));
        Assert.Equal(0UL, pt.Lookup(Base + Page.PmdSize));
        Assert.NotEqual(0UL, pt.Lookup(Base + Page.PmdSize + 0x10000));
        Assert.False(pt.ZapLocked(Base + 0x100000, Base + 0x101000));
        Assert.True(pt.ZapLocked(0, ulong.MaxValue >> 17));
        Assert.Equal((0L, 0L, 0L), (pt.Entries4K, pt.Entries64K, pt.Entries2M));
    }

    [Fact]
    public void MisalignedLargeEntriesAreRejected()
    {
        var pt = new GpuPageTable();
        Assert.Throws<ArgumentException>(() => pt.MapLocked(Base + Page.Size, GpuPte.Make(0x40000, GpuPageSize.Size64K, true, true, true)));
        Assert.Throws<ArgumentException>(() => pt.MapLocked(Base, GpuPte.Make(0x40001, GpuPageSize.Size2M, true, true, true)));
    }

    [Fact]
    public void TheFaultBufferIsARingThatFlushesAndMakesAFullWriterWait()
    {
        var fb = new FaultBuffer(4);
        Span<GpuFaultRecord> got = stackalloc GpuFaultRecord[8];
        for (int round = 0; round < 3; round++)
        {
            for (int i = 0; i < 3; i++)
            {
                Assert.True(fb.Write(new GpuFaultRecord(0, (ulong)(round * 10 + i) << 12, GpuAccess.Read, i, i)));
            }
            Assert.Equal(2, fb.Fetch(got[..2]));
            Assert.Equal((ulong)(round * 10) << 12, got[0].Address);
            Assert.Equal(1, fb.Flush());
            Assert.Equal(0, fb.Pending);
        }
        for (int i = 0; i < 4; i++)
        {
            fb.Write(new GpuFaultRecord(0, (ulong)i << 12, GpuAccess.Write, 0, 0));
        }
        var writer = new Thread(() => fb.Write(new GpuFaultRecord(1, 0x99000, GpuAccess.Atomic, 3, 9)));
        writer.Start();
        while (fb.Overflows == 0)
        {
            Thread.Yield();
        }
        Assert.Equal(4, fb.Pending);
        Assert.Equal(4, fb.Fetch(got));
        writer.Join();
        Assert.Equal(1, fb.Fetch(got));
        Assert.Equal((1, 0x99000UL, GpuAccess.Atomic), (got[0].Space, got[0].Address, got[0].Access));
        fb.Close();
        Assert.False(fb.Write(default));
        Assert.False(fb.WaitForEntries(1));
    }

    [Fact]
    public void TheCopyEngineMergesContiguousRunsAndZeroFillsHoles()
    {
        using var mem = new PhysicalMemory(8UL << 20);
        ulong src = mem.Allocate(2), dst = mem.Allocate(2), solo = mem.Allocate(0);
        for (ulong k = 0; k < 4; k++)
        {
            mem.FrameSpan(src + k).Fill((byte)(k + 1));
            mem.FrameSpan(dst + k).Fill(0xEE);
        }
        var ce = new CopyEngine(8);
        ce.Add(src, dst);
        ce.Add(src + 1, dst + 1);
        ce.Add(Page.NoPfn, dst + 2);
        ce.Add(src + 3, solo);
        Assert.Equal(3L * Page.Size, ce.Submit(mem));
        Assert.Equal(0, ce.Count);
        Assert.Equal(1, mem.FrameSpan(dst)[4095]);
        Assert.Equal(2, mem.FrameSpan(dst + 1)[0]);
        Assert.Equal(0, mem.FrameSpan(dst + 2)[100]);
        Assert.Equal(0xEE, mem.FrameSpan(dst + 3)[0]);
        Assert.Equal(4, mem.FrameSpan(solo)[7]);
        mem.Put(src);
        mem.Put(dst);
        mem.Put(solo);
    }

    [Fact]
    public void OptionsOutOfRangeAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new GpuDeviceOptions { VramBytes = 3 << 20 }.Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => new GpuDeviceOptions { TlbEntries = 100 }.Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => new GpuDeviceOptions { Prefetch = PrefetchOptions.Default with { ThresholdPercent = 0 } }.Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => new GpuDeviceOptions { Thrashing = ThrashingOptions.Default with { Threshold = 9 } }.Validate());
        new GpuDeviceOptions().Validate();
    }
}
