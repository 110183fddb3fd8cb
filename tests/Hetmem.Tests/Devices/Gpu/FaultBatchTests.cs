using CsCheck;
using Hetmem.Devices.Gpu;

namespace Hetmem.Tests.Devices.Gpu;

public class FaultBatchTests
{
    private static readonly Gen<GpuFaultRecord> s_record = Gen.Select(Gen.Int[0, 2], Gen.ULong[0, 40], Gen.Int[0, 3], Gen.Int[0, 7], Gen.Long[0, 1000], Gen.Int[0, 4095])
        .Select((space, page, access, unit, ts, offset) => new GpuFaultRecord(space, 0x10000000UL + (page << 12) + (ulong)offset, (GpuAccess)access, unit, ts));

    [Fact]
    public void DuplicatesMergeIntoTheMostDemandingAccessAndTheResultIsSorted()
    {
        GpuFaultRecord[] batch =
        [
            new(1, 0x5000, GpuAccess.Read, 0, 1),
            new(0, 0x9123, GpuAccess.Read, 1, 2),
            new(1, 0x5ff8, GpuAccess.Atomic, 2, 3),
            new(0, 0x9000, GpuAccess.Write, 3, 4),
            new(0, 0x1000, GpuAccess.Prefetch, 4, 5),
            new(1, 0x5000, GpuAccess.Read, 5, 6),
        ];
        int n = FaultBatch.Preprocess(batch, out int dups);
        Assert.Equal(3, n);
        Assert.Equal(3, dups);
        Assert.Equal((0, 0x1000UL, GpuAccess.Prefetch, 0), (batch[0].Space, batch[0].Address, batch[0].Access, batch[0].Duplicates));
        Assert.Equal((0, 0x9000UL, GpuAccess.Write, GpuAccessMask.Read | GpuAccessMask.Write, 1),
            (batch[1].Space, batch[1].Address, batch[1].Access, batch[1].AccessMask, batch[1].Duplicates));
        Assert.Equal((1, 0x5000UL, GpuAccess.Atomic, GpuAccessMask.Read | GpuAccessMask.Atomic, 2),
            (batch[2].Space, batch[2].Address, batch[2].Access, batch[2].AccessMask, batch[2].Duplicates));
    }

    [Fact]
    public void PreprocessingKeepsOneEntryPerPageWithTheMaximumAccessAndAccountsForEveryInput()
    {
        s_record.Array[0, 200].Sample(input =>
        {
            GpuFaultRecord[] batch = (GpuFaultRecord[])input.Clone();
            int n = FaultBatch.Preprocess(batch, out int dups);
            var expected = input.GroupBy(r => (r.Space, r.Address >> 12))
                .ToDictionary(g => g.Key, g => (Max: g.Max(r => r.Access), Count: g.Count(),
                    Mask: g.Aggregate(GpuAccessMask.None, (m, r) => m | (GpuAccessMask)(1 << (int)r.Access))));
            Assert.Equal(expected.Count, n);
            Assert.Equal(input.Length - n, dups);
            for (int i = 0; i < n; i++)
            {
                GpuFaultRecord r = batch[i];
                Assert.Equal(0UL, r.Address & 0xFFF);
                var e = expected[(r.Space, r.Address >> 12)];
                Assert.Equal(e.Max, r.Access);
                Assert.Equal(e.Count - 1, r.Duplicates);
                Assert.Equal(e.Mask, r.AccessMask);
                if (i > 0)
                {
                    GpuFaultRecord p = batch[i - 1];
                    Assert.True((p.Space, p.Address, (int)p.Access).CompareTo((r.Space, r.Address, (int)r.Access)) < 0, $"entry {i} is out of order");
                }
            }
        }, iter: 500);
    }

    [Fact]
    public void PreprocessingTwiceChangesNothingAndKeepsTheDuplicateCounts()
    {
        s_record.Array[0, 100].Sample(input =>
        {
            GpuFaultRecord[] batch = (GpuFaultRecord[])input.Clone();
            int n = FaultBatch.Preprocess(batch, out _);
            GpuFaultRecord[] once = batch[..n];
            GpuFaultRecord[] again = (GpuFaultRecord[])once.Clone();
            int m = FaultBatch.Preprocess(again, out int dups);
            Assert.Equal(n, m);
            Assert.Equal(0, dups);
            Assert.Equal(once, again);
        }, iter: 1000);
    }
}
