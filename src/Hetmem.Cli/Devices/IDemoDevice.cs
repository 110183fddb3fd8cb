using Hetmem.Mm;

namespace Hetmem.Cli.Devices;

/// <summary>
/// A device taking part in the demo scenario: it mirrors windows of the address space, reads and writes through its
/// own translations, and reports how many translations it holds, so the scenario can check that it saw the CPU's
/// data and lost its translations whenever the CPU side changed. Each Hetmem device (the mini mirror, dmirror, the
/// GPU, the RDMA NIC) plugs in with an adapter.
/// </summary>
internal interface IDemoDevice : IDisposable
{
    /// <summary>Device name, also its trace track (<c>mirror0</c>, <c>dmirror0</c>, <c>gpu0</c>).</summary>
    string Name { get; }

    /// <summary>What it is, for the device table.</summary>
    string Description { get; }

    /// <summary>Mirrors [<paramref name="start"/>, +<paramref name="length"/>) of the scenario's address space.</summary>
    void Attach(ulong start, ulong length, string label);

    /// <summary>Brings [<paramref name="start"/>, <paramref name="end"/>) into the device's translations (device fault).</summary>
    Errno Fault(ulong start, ulong end, bool write);

    /// <summary>The device loads 8 bytes through its translations, faulting when needed.</summary>
    Errno ReadInt64(ulong address, out long value);

    /// <summary>The device stores 8 bytes through its translations, faulting for write when needed.</summary>
    Errno WriteInt64(ulong address, long value);

    /// <summary>Pages in [<paramref name="start"/>, <paramref name="end"/>) the device can currently access.</summary>
    long ValidPages(ulong start, ulong end);

    /// <summary>Pages in [<paramref name="start"/>, <paramref name="end"/>) the device can currently write.</summary>
    long WritablePages(ulong start, ulong end);

    /// <summary>Invalidations of <paramref name="kind"/> the device received so far.</summary>
    long Invalidations(MmuNotifierEvent kind);

    /// <summary>
    /// The device reads the 8-byte words at <paramref name="offsets"/> of the page at <paramref name="page"/> (one device
    /// access a page where the device can do better than a word at a time).
    /// </summary>
    Errno ReadWords(ulong page, ReadOnlySpan<ulong> offsets, Span<long> values)
    {
        for (int i = 0; i < offsets.Length; i++)
        {
            Errno e = ReadInt64(page + offsets[i], out long v);
            if (e != Errno.Ok)
            {
                return e;
            }
            values[i] = v;
        }
        return Errno.Ok;
    }

    /// <summary>How many of the device's translations in [start, end) come from 2 MiB CPU entries, in 2 MiB units; -1 when the device cannot tell.</summary>
    long HugeEntries(ulong start, ulong end) => -1;

    /// <summary>True when the device has its own memory and can migrate pages into it (<see cref="MigrateToDevice"/>).</summary>
    bool CanMigrate => false;

    /// <summary>
    /// Migrates [<paramref name="start"/>, <paramref name="end"/>) into the device's private memory (kernel: a driver calling
    /// migrate_vma_setup/pages/finalize); the CPU entries become device-private entries.
    /// </summary>
    /// <returns>Ok, an errno, or EOPNOTSUPP for a device without memory of its own.</returns>
    Errno MigrateToDevice(ulong start, ulong end) => Errno.EOPNOTSUPP;

    /// <summary>Rows for the device's table: (metric, value).</summary>
    IReadOnlyList<(string Metric, string Value)> Stats();
}
