using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Tests.Stress;

/// <summary>
/// Deterministic versions of the mremap situations the oracle stress had to model: a moved anonymous page keeps its
/// value through page-out, and a fixed move over several VMAs (Linux 6.17+) moves each piece and keeps the holes.
/// </summary>
public class OracleFindingsTests
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const MapFlags Anon = MapFlags.Private | MapFlags.Anonymous;

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public void AnAnonymousPageMovedByMremapKeepsItsValueThroughPageOut(bool touchFirst, bool reclaimSource)
    {
        using var memory = new PhysicalMemory(64UL << 20);
        using var swap = new SwapStore(256);
        var mm = new AddressSpace(memory, swap);
        try
        {
            const ulong a = 0x10_0000_0000, b = 0x10_0010_0000, len = 8 * 4096;
            mm.Mmap(a, len, Rw, Anon | MapFlags.Fixed);
            mm.Mmap(b, len, Rw, Anon | MapFlags.Fixed);
            using var cpu = new Cpu(mm);
            if (touchFirst)
            {
                cpu.Write(b + 4096, 7L);
            }
            Assert.Equal(touchFirst ? 7L : 0L, cpu.Read<long>(b + 4096));
            cpu.Write(a + 4096, 42L);
            if (reclaimSource)
            {
                mm.Madvise(a, len, Advice.PageOut);
            }
            mm.Mremap(a, len, len, MremapFlags.MayMove | MremapFlags.Fixed, b);
            Assert.Equal(42L, cpu.Read<long>(b + 4096));
            mm.Madvise(b, len, Advice.PageOut);
            Assert.Equal(42L, cpu.Read<long>(b + 4096));
        }
        finally
        {
            mm.Exit();
        }
    }
}

public class OracleMremapSplitTests
{
    /// <summary>Hetmem implements the 6.17 multi-VMA move; an older kernel's EFAULT is accepted too.</summary>
    [Fact]
    public void MremapOfARangeSpanningTwoVmasFailsOrMovesEveryPage()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        try
        {
            const ulong a = 0x10_0000_0000, b = 0x10_0010_0000, len = 8 * 4096;
            mm.Mmap(a, len, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
            mm.Mmap(b, len, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
            using var cpu = new Cpu(mm);
            for (ulong i = 0; i < 8; i++)
            {
                cpu.Write(a + i * 4096, (long)(100 + i));
            }
            mm.Mmap(a + 2 * 4096, 2 * 4096, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
            var maps = mm.MapsText();
            try
            {
                mm.Mremap(a, len, len, MremapFlags.MayMove | MremapFlags.Fixed, b);
            }
            catch (MmException ex) when (ex.Errno == Errno.EFAULT)
            {
                return;
            }
            long[] got = [.. Enumerable.Range(0, 8).Select(i => cpu.Read<long>(b + (ulong)i * 4096))];
            Assert.True(got.SequenceEqual(new long[] { 100, 101, 0, 0, 104, 105, 106, 107 }), maps + "\n" + mm.MapsText() + "\n" + string.Join(",", got));
        }
        finally
        {
            mm.Exit();
        }
    }
}
