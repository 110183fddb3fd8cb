using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>
/// Batch preprocessing of replayable faults as a pure function (kernel: NVIDIA UVM <c>fetch_fault_buffer_entries</c>
/// coalescing + <c>preprocess_fault_batch</c> sorting; nouveau's sort in <c>nouveau_svm_fault</c>): entries for the
/// same (space, 4 KiB page) are merged into one representative that keeps the most demanding access type, the mask of
/// all access types seen and the number of merged duplicates; the result is sorted by (space, address, access).
/// </summary>
/// <remarks>In place and allocation-free.</remarks>
public static class FaultBatch
{
    private struct MergeOrder : IComparer<GpuFaultRecord>
    {
        public readonly int Compare(GpuFaultRecord x, GpuFaultRecord y)
        {
            int c = x.Space.CompareTo(y.Space);
            if (c != 0)
            {
                return c;
            }
            c = (x.Address >> Page.Shift).CompareTo(y.Address >> Page.Shift);
            if (c != 0)
            {
                return c;
            }
            c = y.Access.CompareTo(x.Access); // most demanding first: it becomes the representative
            return c != 0 ? c : x.Timestamp.CompareTo(y.Timestamp);
        }
    }

    /// <summary>
    /// Merges duplicates and sorts <paramref name="batch"/> in place; returns the number of distinct entries, which
    /// occupy the front of the span in (space, address, access) order. Each representative's address is page aligned,
    /// its <see cref="GpuFaultRecord.AccessMask"/> holds every access type merged into it and
    /// <see cref="GpuFaultRecord.Duplicates"/> how many entries were merged (added to any earlier count).
    /// </summary>
    /// <param name="batch">Fetched fault entries.</param>
    /// <param name="duplicates">Entries removed as duplicates (kernel: UVM fault_stats <c>num_duplicate_faults</c>).</param>
    public static int Preprocess(Span<GpuFaultRecord> batch, out int duplicates)
    {
        duplicates = 0;
        if (batch.Length == 0)
        {
            return 0;
        }
        batch.Sort(new MergeOrder());
        int w = 0;
        GpuFaultRecord rep = Normalise(batch[0]);
        for (int r = 1; r < batch.Length; r++)
        {
            GpuFaultRecord e = batch[r];
            if (e.Space == rep.Space && (e.Address >> Page.Shift) == (rep.Address >> Page.Shift))
            {
                rep = rep with
                {
                    AccessMask = rep.AccessMask | Mask(e),
                    Duplicates = rep.Duplicates + 1 + e.Duplicates,
                };
                duplicates++;
                continue;
            }
            batch[w++] = rep;
            rep = Normalise(e);
        }
        batch[w++] = rep;
        return w;
    }

    private static GpuAccessMask Mask(in GpuFaultRecord e) => e.AccessMask | (GpuAccessMask)(1 << (int)e.Access);

    private static GpuFaultRecord Normalise(in GpuFaultRecord e)
        => e with { Address = Page.AlignDown(e.Address, Page.Size), AccessMask = Mask(e) };
}
