using Hetmem.Physical;
using Hetmem.Storage;
using static Hetmem.Tests.Storage.StorageTest;

namespace Hetmem.Tests.Storage;

public sealed class ShmemFileTests : IDisposable
{
    private readonly PhysicalMemory _memory = new(RamBytes);
    private readonly long _usedAtStart;
    private readonly SwapStore _swap = new(64);

    public ShmemFileTests() => _usedAtStart = _memory.UsedFrames;

    public void Dispose()
    {
        Assert.Equal(_usedAtStart, _memory.UsedFrames);
        Assert.Equal(0u, _swap.UsedSlots);
        _swap.Dispose();
        _memory.Dispose();
    }

    [Fact]
    public void PagesAreZeroFilledOnDemandAndReadingAHoleAllocatesNothing()
    {
        var shm = new ShmemFile(_memory, 4 * (ulong)Page.Size, _swap);
        Assert.Equal(MappableKind.Shmem, shm.Kind);
        var buf = new byte[4 * Page.Size];
        buf.AsSpan().Fill(0xFF);
        Assert.Equal(buf.Length, shm.Read(0, buf));
        Assert.All(buf, b => Assert.Equal(0, b));
        Assert.Equal(0, shm.CachedPages);
        Assert.Equal(Errno.Ok, shm.GetPage(2, true, 0, out ulong pfn, out _));
        Assert.All(_memory.FrameSpan(pfn).ToArray(), b => Assert.Equal(0, b));
        Assert.True(_memory.Frame(pfn).Has(FrameFlags.SwapBacked));
        _memory.Put(pfn);
        shm.Release();
        Assert.True(shm.IsEvicted);
    }

    [Fact]
    public void ReclaimSwapsAPageOutAndTheNextFaultSwapsItBackIn()
    {
        var shm = new ShmemFile(_memory, 2 * (ulong)Page.Size, _swap);
        byte[] data = Pattern(Page.Size, 21);
        shm.Write(Page.Size, data);
        Assert.True(shm.TryFindPage(1, out ulong pfn));
        long used = _memory.UsedFrames;
        Assert.Equal(Errno.Ok, shm.TryReclaimPage(pfn));
        Assert.Equal(used - 1, _memory.UsedFrames);
        Assert.Equal(1, shm.SwappedPages);
        Assert.Equal(1u, _swap.UsedSlots);
        Assert.Equal(Errno.Ok, shm.GetPage(1, false, 0, out ulong back, out _));
        Assert.Equal(data, _memory.FrameSpan(back).ToArray());
        Assert.Equal(0, shm.SwappedPages);
        Assert.Equal(0u, _swap.UsedSlots);
        _memory.Put(back);
        shm.Release();
    }

    [Fact]
    public void TruncateAndEvictionFreeSwapSlots()
    {
        var shm = new ShmemFile(_memory, 4 * (ulong)Page.Size, _swap);
        for (int i = 0; i < 4; i++)
        {
            shm.Write((ulong)i * Page.Size, Pattern(16, i));
            Assert.True(shm.TryFindPage((ulong)i, out ulong pfn));
            Assert.Equal(Errno.Ok, shm.TryReclaimPage(pfn));
        }
        Assert.Equal(4u, _swap.UsedSlots);
        shm.Truncate(2 * (ulong)Page.Size);
        Assert.Equal(2u, _swap.UsedSlots);
        var b = new byte[16];
        shm.Read(Page.Size, b);
        Assert.Equal(Pattern(16, 1), b);
        shm.Release();
        Assert.Equal(0u, _swap.UsedSlots);
    }

    [Fact]
    public void WithoutSwapPagesAreNotReclaimable()
    {
        var shm = new ShmemFile(_memory, Page.Size);
        shm.Write(0, [1]);
        Assert.True(shm.TryFindPage(0, out ulong pfn));
        Assert.Equal(Errno.EOPNOTSUPP, shm.TryReclaimPage(pfn));
        shm.Release();
    }

    [Fact]
    public void AFullSwapStoreKeepsThePage()
    {
        using var tiny = new SwapStore(1);
        var shm = new ShmemFile(_memory, 2 * (ulong)Page.Size, tiny);
        shm.Write(0, new byte[2 * Page.Size]);
        shm.TryFindPage(0, out ulong p0);
        shm.TryFindPage(1, out ulong p1);
        Assert.Equal(Errno.Ok, shm.TryReclaimPage(p0));
        Assert.Equal(Errno.ENOSPC, shm.TryReclaimPage(p1));
        Assert.Equal(1, shm.CachedPages);
        shm.Release();
        Assert.Equal(0u, tiny.UsedSlots);
    }

    [Fact]
    public void MappingsHoldTheObjectAliveAfterTheCreatorReleasesIt()
    {
        var shm = new ShmemFile(_memory, Page.Size, _swap);
        shm.Hold();              // a VMA's reference
        shm.Release();           // the creator's
        Assert.False(shm.IsEvicted);
        shm.Write(0, [7]);
        shm.Release();           // the VMA goes away
        Assert.True(shm.IsEvicted);
        Throws(Errno.EIO, () => shm.Hold());
        Assert.Throws<InvalidOperationException>(shm.Release);
    }

    [Fact]
    public void SizeBeyondTheMaximumIsEinval() => Throws(Errno.EINVAL, () => _ = new ShmemFile(_memory, ulong.MaxValue));
}
