using System.Globalization;
using Hetmem.Devices.Gpu;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Cli.Devices;

/// <summary>
/// The GPU (<see cref="GpuDevice"/>, shared virtual memory over HMM) as a demo participant: one context on the demo's
/// address space; the device reads and writes by launching small kernels whose loads and stores go through the GPU
/// MMU, so every access that misses raises a replayable fault serviced with <c>hmm_range_fault</c>. The device runs
/// with <see cref="PlacementPolicy.RemoteMap"/>: it maps system memory (anonymous, page cache, DAX, hugetlbfs) remotely
/// instead of migrating it to VRAM, so the demo's CPU-side checks see the pages where the CPU left them.
/// </summary>
internal sealed class GpuDemoDevice : IDemoDevice
{
    private readonly GpuDevice _gpu;
    private readonly GpuContext _ctx;
    private readonly List<(ulong Start, ulong End, string Label)> _windows = [];
    private readonly Lock _launchLock = new();   // launches carry their result out through fields below
    private long _launches;                       // atomic
    private bool _disposed;

    public GpuDemoDevice(AddressSpace mm, string name = "gpu0")
    {
        Name = name;
        _gpu = new GpuDevice(mm.Memory, new GpuDeviceOptions
        {
            Name = name,
            ExecutionUnits = 2,
            VramBytes = 16UL << 20,
            Placement = PlacementPolicy.RemoteMap,
        });
        try
        {
            _ctx = _gpu.CreateContext(mm);
        }
        catch
        {
            _gpu.Dispose();
            throw;
        }
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public string Description => "GPU with SVM (replayable faults, hmm_range_fault, remote-mapped system memory)";

    /// <inheritdoc/>
    public void Attach(ulong start, ulong length, string label) => _windows.Add((start, start + length, label)); // SVM covers the whole space

    /// <inheritdoc/>
    public Errno Fault(ulong start, ulong end, bool write)
    {
        ulong pages = (end - start) >> Page.Shift;
        return Launch((int)((pages + 63) / 64), 64, t =>
        {
            ulong i = (ulong)t.GlobalId;
            if (i < pages)
            {
                ulong va = start + (i << Page.Shift);
                long v = t.Load<long>(va);
                if (write)
                {
                    t.Store(va, v); // same value: only the translation changes (used while the CPU side is quiet)
                }
            }
        });
    }

    /// <inheritdoc/>
    public Errno ReadInt64(ulong address, out long value)
    {
        long v = 0;
        Errno e = Launch(1, 1, t => v = t.Load<long>(address));
        value = v;
        return e;
    }

    /// <summary>One launch with a thread per word.</summary>
    public Errno ReadWords(ulong page, ReadOnlySpan<ulong> offsets, Span<long> values)
    {
        ulong[] offs = offsets.ToArray();
        var result = new long[offs.Length];
        Errno e = Launch(1, offs.Length, t => result[t.ThreadIdx] = t.Load<long>(page + offs[t.ThreadIdx]));
        result.CopyTo(values);
        return e;
    }

    /// <inheritdoc/>
    public Errno WriteInt64(ulong address, long value) => Launch(1, 1, t => t.Store(address, value));

    /// <inheritdoc/>
    public long ValidPages(ulong start, ulong end) => Count(start, end, GpuPte.Valid);

    /// <inheritdoc/>
    public long WritablePages(ulong start, ulong end) => Count(start, end, GpuPte.Valid | GpuPte.Write);

    /// <inheritdoc/>
    public long HugeEntries(ulong start, ulong end)
    {
        long huge = 0;
        foreach ((ulong ws, ulong we, string _) in _windows)
        {
            for (ulong a = Math.Max(start, ws); a < Math.Min(end, we); a += Page.Size)
            {
                ulong pte = _ctx.PageTable.Lookup(a);
                huge += (pte & GpuPte.Valid) != 0 && GpuPte.Size(pte) == GpuPageSize.Size2M ? 1 : 0;
            }
        }
        return huge >> Page.PmdOrder;
    }

    /// <inheritdoc/>
    public long Invalidations(MmuNotifierEvent kind) => _gpu.Counters[kind switch
    {
        MmuNotifierEvent.Unmap => GpuCounter.InvalidationsUnmap,
        MmuNotifierEvent.Clear => GpuCounter.InvalidationsClear,
        MmuNotifierEvent.ProtectionVma => GpuCounter.InvalidationsProtectionVma,
        MmuNotifierEvent.ProtectionPage => GpuCounter.InvalidationsProtectionPage,
        MmuNotifierEvent.SoftDirty => GpuCounter.InvalidationsSoftDirty,
        MmuNotifierEvent.Release => GpuCounter.InvalidationsRelease,
        MmuNotifierEvent.Migrate => GpuCounter.InvalidationsMigrate,
        _ => GpuCounter.InvalidationsExclusive,
    }];

    /// <inheritdoc/>
    public IReadOnlyList<(string Metric, string Value)> Stats()
    {
        var rows = new List<(string, string)>
        {
            ("windows checked", string.Join(", ", _windows.Select(w => w.Label)) + " (SVM covers the whole address space)"),
            ("kernel launches", N(Interlocked.Read(ref _launches))),
        };
        foreach (GpuCounter c in new[]
        {
            GpuCounter.Faults, GpuCounter.Duplicates, GpuCounter.Batches, GpuCounter.Replays, GpuCounter.GetPages,
            GpuCounter.RemoteMappedPages, GpuCounter.Map4K, GpuCounter.Map64K, GpuCounter.Map2M, GpuCounter.Invalidations,
            GpuCounter.InvalidationsUnmap, GpuCounter.InvalidationsClear, GpuCounter.InvalidationsProtectionVma,
            GpuCounter.InvalidationsProtectionPage, GpuCounter.InvalidationsMigrate, GpuCounter.InvalidationsRelease,
            GpuCounter.TlbInvalidations, GpuCounter.FatalFaults,
        })
        {
            rows.Add((GpuCounters.Name(c), N(_gpu.Counters[c])));
        }
        return rows;
    }

    private static string N(long v) => v.ToString("#,0", CultureInfo.InvariantCulture);

    private long Count(ulong start, ulong end, ulong mask)
    {
        long n = 0;
        foreach ((ulong ws, ulong we, string _) in _windows)
        {
            for (ulong a = Math.Max(start, ws); a < Math.Min(end, we); a += Page.Size)
            {
                n += (_ctx.PageTable.Lookup(a) & mask) == mask ? 1 : 0;
            }
        }
        return n;
    }

    private Errno Launch(int grid, int block, GpuKernel kernel)
    {
        lock (_launchLock)
        {
            Interlocked.Increment(ref _launches);
            try
            {
                _ctx.Launch(grid, block, kernel);
                return Errno.Ok;
            }
            catch (GpuLaunchException ex)
            {
                return ex.Errno;
            }
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _ctx.Dispose();
        _gpu.Dispose();
    }
}
