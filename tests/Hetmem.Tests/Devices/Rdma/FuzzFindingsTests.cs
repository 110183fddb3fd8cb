using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Rdma;

/// <summary>Regression tests for bugs the fuzzers found in the RDMA device.</summary>
public sealed class FuzzFindingsTests : IDisposable
{
    private const AccessFlags Rw = AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_WRITE;
    private readonly PhysicalMemory _memory = new(64UL << 20);
    private readonly AddressSpace _mm;
    private readonly RdmaDevice _dev = new("fuzz_rxe");
    private readonly ProtectionDomain _pd;

    public FuzzFindingsTests()
    {
        _mm = new AddressSpace(_memory);
        _pd = _dev.AllocPd(_mm);
    }

    public void Dispose()
    {
        _dev.Dispose();
        _mm.Exit();
    }

    [Fact]
    public void AHugePinnedRegistrationOverUnmappedMemoryFailsWithoutAllocatingForEveryPage()
    {
        ulong a = _mm.Mmap(0, 3 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        _mm.Munmap(a + 2 * Page.Size, Page.Size);   // a hole right after two mapped pages
        const ulong Length = 1UL << 36;              // 2^24 pages: a PFN array for all of them is 128 MiB

        long before = GC.GetAllocatedBytesForCurrentThread();
        MmException ex = Assert.Throws<MmException>(() => _pd.RegMr(a, Length, Rw));
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(Errno.EFAULT, ex.Errno);
        Assert.True(allocated < 16L << 20, $"reg_mr allocated {allocated} bytes before it failed at the third page");
        for (ulong p = 0; p < 2; p++)
        {
            ulong pfn = _mm.QueryPte(a + p * Page.Size, out _).Pfn;
            Assert.Equal(1, _memory.Frame(pfn).RefCount);   // faulted in by the attempt, no pin left behind
        }
        Assert.Equal(0, _pd.RegionCount);
    }

    [Fact]
    public void APinnedRegistrationLargerThanOneBatchPinsEveryPageInOrder()
    {
        const int Pages = 1500;   // three batches of 512, the last one short
        ulong a = _mm.Mmap(0, Pages * (ulong)Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        var mr = (PinnedMemoryRegion)_pd.RegMr(a + 100, Pages * (ulong)Page.Size - 200, Rw);

        Assert.Equal(Pages, mr.PinnedPages);
        foreach (ulong p in new ulong[] { 0, 511, 512, 1023, 1024, Pages - 1 })
        {
            ulong pfn = _mm.QueryPte(a + p * Page.Size, out _).Pfn;
            Assert.Equal(pfn, mr.PinnedPfn(a + p * Page.Size));
            Assert.True(_memory.Frame(pfn).RefCount > 1, $"page {p} is not pinned");
        }
        Assert.Equal(Page.NoPfn, mr.PinnedPfn(a + Pages * (ulong)Page.Size));
        mr.Deregister();
        Assert.Equal(1, _memory.Frame(_mm.QueryPte(a, out _).Pfn).RefCount);
    }
}
