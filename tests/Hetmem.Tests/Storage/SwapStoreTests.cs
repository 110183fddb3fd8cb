using System.Collections.Concurrent;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Tests.Storage;

public sealed class SwapStoreTests
{
    public static TheoryData<bool> Backings => new() { false, true };

    [Theory]
    [MemberData(nameof(Backings))]
    public void APageWrittenToASlotReadsBack(bool hostFile)
    {
        using var dir = new TempDir();
        using var swap = new SwapStore(8, hostFile ? dir.File("swapfile") : null);
        byte[] page = StorageTest.Pattern(Page.Size, 31);
        Assert.Equal(Errno.Ok, swap.Allocate(out uint slot));
        Assert.Equal(Errno.Ok, swap.Write(slot, page));
        var back = new byte[Page.Size];
        Assert.Equal(Errno.Ok, swap.Read(slot, back));
        Assert.Equal(page, back);
        Assert.Equal(1u, swap.UsedSlots);
        Assert.True(swap.Free(slot));
        Assert.Equal(0u, swap.UsedSlots);
        if (hostFile)
        {
            Assert.Equal(8L * Page.Size, new FileInfo(dir.File("swapfile")).Length);
        }
    }

    [Fact]
    public void ADuplicatedSlotLivesUntilItsLastFree()
    {
        using var swap = new SwapStore(4);
        swap.Allocate(out uint slot);
        Assert.Equal(Errno.Ok, swap.Duplicate(slot));
        Assert.Equal(Errno.Ok, swap.Duplicate(slot));
        Assert.Equal(3, swap.Count(slot));
        Assert.False(swap.Free(slot));
        Assert.False(swap.Free(slot));
        Assert.Equal(1u, swap.UsedSlots);
        Assert.True(swap.Free(slot));
        Assert.Equal(0, swap.Count(slot));
        Assert.Equal(0u, swap.UsedSlots);
    }

    [Fact]
    public void AFullStoreReturnsEnospc()
    {
        using var swap = new SwapStore(2);
        Assert.Equal(Errno.Ok, swap.Allocate(out uint a));
        Assert.Equal(Errno.Ok, swap.Allocate(out uint b));
        Assert.NotEqual(a, b);
        Assert.Equal(Errno.ENOSPC, swap.Allocate(out uint c));
        Assert.Equal(SwapStore.NoSlot, c);
        swap.Free(a);
        Assert.Equal(Errno.Ok, swap.Allocate(out uint d));
        Assert.Equal(a, d);
        swap.Free(b);
        swap.Free(d);
    }

    [Fact]
    public void BadSlotsAreRejected()
    {
        using var swap = new SwapStore(2);
        Assert.Equal(Errno.EINVAL, swap.Duplicate(2));
        Assert.Equal(Errno.ENOENT, swap.Duplicate(0));
        Assert.Equal(Errno.EINVAL, swap.Write(0, new byte[Page.Size]));
        Assert.Equal(Errno.EINVAL, swap.Read(5, new byte[Page.Size]));
        swap.Allocate(out uint s);
        Assert.Equal(Errno.EINVAL, swap.Write(s, new byte[10]));
        swap.Free(s);
        Assert.Throws<InvalidOperationException>(() => swap.Free(s));
        Assert.Throws<InvalidOperationException>(() => swap.Free(99));
        Assert.Throws<MmException>(() => new SwapStore(0));
    }

    [Fact]
    public void TheHotPathDoesNotAllocate()
    {
        using var swap = new SwapStore(4);
        byte[] page = new byte[Page.Size];
        swap.Allocate(out uint warm);
        swap.Write(warm, page);
        swap.Read(warm, page);
        swap.Free(warm);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++)
        {
            swap.Allocate(out uint s);
            swap.Duplicate(s);
            swap.Write(s, page);
            swap.Read(s, page);
            swap.Free(s);
            swap.Free(s);
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void ConcurrentAllocationsNeverShareASlot()
    {
        using var swap = new SwapStore(64);
        var owners = new ConcurrentDictionary<uint, int>();
        Parallel.For(0, 8, t =>
        {
            for (int i = 0; i < 2000; i++)
            {
                if (swap.Allocate(out uint s) != Errno.Ok)
                {
                    continue;
                }
                Assert.True(owners.TryAdd(s, t));
                Assert.True(owners.TryRemove(s, out _));
                Assert.True(swap.Free(s));
            }
        });
        Assert.Equal(0u, swap.UsedSlots);
    }
}
