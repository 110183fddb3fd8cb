using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Tests.Reliability;

namespace Hetmem.Tests.Stress;

/// <summary>What <c>hetmem stress --fail-rate</c> ran into: error paths that must change nothing.</summary>
[Collection(FaultInjectionCollection.Name)]
public class OracleFaultInjectionFindingsTests
{
    /// <summary>
    /// A fixed mremap whose target needs a new page table that cannot be allocated must fail with ENOMEM and leave
    /// the source mapped with its values, the target unmapped and no notifier bracket open (kernel: move_vma moves
    /// the entries back when move_page_tables comes up short).
    /// </summary>
    [Fact]
    public void AnMremapThatRunsOutOfPageTablesHalfWayChangesNothing()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        try
        {
            const ulong a = 0x10_0000_0000, len = 8 * 4096;
            const ulong pmd = 2UL << 20;
            const ulong b = 0x20_0000_0000 + pmd - 4 * 4096;   // pages 0-3 in one PTE table, 4-7 in the next
            mm.Mmap(a, len, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
            mm.Mmap(b - 4096, 4096, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
            using var cpu = new Cpu(mm);
            cpu.Write(b - 4096, 1L);                              // the first PTE table of the target exists
            for (ulong i = 0; i < 8; i++)
            {
                cpu.Write(a + i * 4096, (long)(100 + i));
            }
            MmException? error;
            FaultInjection.Configure(new FaultInjectionOptions { Sites = FaultSites.PageTableAllocation, Times = 1, Domain = memory });
            try
            {
                error = Record.Exception(() => mm.Mremap(a, len, len, MremapFlags.MayMove | MremapFlags.Fixed, b)) as MmException;
            }
            finally
            {
                FaultInjection.Disable();
            }
            Assert.NotNull(error);
            Assert.Equal(Errno.ENOMEM, error.Errno);
            Assert.Equal(0, mm.Notifiers.ActiveRanges);
            long[] values = [.. Enumerable.Range(0, 8).Select(i => cpu.Read<long>(a + (ulong)i * 4096))];
            Assert.Equal([100L, 101, 102, 103, 104, 105, 106, 107], values);
            Assert.Throws<SegmentationFault>(() => cpu.Read<long>(b));
        }
        finally
        {
            mm.Exit();
        }
    }
}
