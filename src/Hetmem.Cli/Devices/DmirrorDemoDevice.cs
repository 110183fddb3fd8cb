using System.Globalization;
using Hetmem.Devices.Dmirror;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Cli.Devices;

/// <summary>
/// The kernel's test device (lib/test_hmm.c, <see cref="DmirrorDriver"/>) as a demo participant: one open file of node 0
/// mirrors the whole address space; the device reads and writes through its own page table with the
/// HMM_DMIRROR_READ / WRITE commands, whose user buffer is a small anonymous bounce mapping in the same address space
/// (as in hmm-tests.c), and HMM_DMIRROR_SNAPSHOT reports its view of the CPU page table.
/// </summary>
internal sealed class DmirrorDemoDevice : IDemoDevice
{
    private const int BouncePages = 256;
    private readonly DmirrorDriver _driver;
    private readonly DmirrorFile _file;
    private readonly AddressSpace _mm;
    private readonly ulong _bounce;
    private readonly Lock _lock = new();          // one command at a time through the bounce buffer
    private readonly ThreadLocal<Cpu> _cpus;      // one Cpu per calling thread, disposed with the device
    private readonly List<(ulong Start, ulong End, string Label)> _windows = [];
    private long _commands;                       // atomic
    private long _faults;                         // atomic: the Faults the device reported (fault passes)
    private long _pages;                          // atomic: pages copied by READ/WRITE
    private long _migrated;                       // atomic: pages migrated to device memory
    private bool _disposed;

    public DmirrorDemoDevice(AddressSpace mm, string name = "dmirror0")
    {
        Name = name;
        _mm = mm;
        Track = TraceLog.RegisterTrack(name, "devices");
        _cpus = new ThreadLocal<Cpu>(() => new Cpu(mm), trackAllValues: true);
        _driver = new DmirrorDriver(mm.Memory);
        try
        {
            _file = _driver.Open(0, mm);
            _bounce = mm.Mmap(0, BouncePages << Page.Shift, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Populate);
        }
        catch
        {
            _driver.Dispose();
            throw;
        }
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public string Description => "dmirror (lib/test_hmm.c): HMM_DMIRROR_READ/WRITE/SNAPSHOT/MIGRATE_TO_DEV through a bounce buffer";

    private TraceTrack Track { get; }

    /// <inheritdoc/>
    public void Attach(ulong start, ulong length, string label) => _windows.Add((start, start + length, label)); // the file mirrors everything

    /// <inheritdoc/>
    public Errno Fault(ulong start, ulong end, bool write)
    {
        lock (_lock)
        {
            for (ulong a = start; a < end; a += BouncePages << Page.Shift)
            {
                ulong n = Math.Min(BouncePages, (end - a) >> Page.Shift);
                Errno e = Command(DmirrorCommand.Read, a, n);
                if (e == Errno.Ok && write)
                {
                    e = Command(DmirrorCommand.Write, a, n); // writes back what it read: only the translation changes
                }
                if (e != Errno.Ok)
                {
                    return e;
                }
            }
            return Errno.Ok;
        }
    }

    /// <inheritdoc/>
    public Errno ReadInt64(ulong address, out long value)
    {
        lock (_lock)
        {
            ulong page = Page.AlignDown(address, Page.Size);
            Errno e = Command(DmirrorCommand.Read, page, 1);
            value = e == Errno.Ok ? BounceCpu().Read<long>(_bounce + (address - page)) : 0;
            return e;
        }
    }

    /// <summary>One HMM_DMIRROR_READ of the page, then the words from the bounce buffer.</summary>
    public Errno ReadWords(ulong page, ReadOnlySpan<ulong> offsets, Span<long> values)
    {
        lock (_lock)
        {
            Errno e = Command(DmirrorCommand.Read, page, 1);
            if (e != Errno.Ok)
            {
                return e;
            }
            Cpu cpu = BounceCpu();
            for (int i = 0; i < offsets.Length; i++)
            {
                values[i] = cpu.Read<long>(_bounce + offsets[i]);
            }
            return Errno.Ok;
        }
    }

    /// <inheritdoc/>
    public Errno WriteInt64(ulong address, long value)
    {
        lock (_lock)
        {
            ulong page = Page.AlignDown(address, Page.Size);
            Errno e = Command(DmirrorCommand.Read, page, 1);
            if (e != Errno.Ok)
            {
                return e;
            }
            BounceCpu().Write(_bounce + (address - page), value);
            return Command(DmirrorCommand.Write, page, 1);
        }
    }

    /// <inheritdoc/>
    public bool CanMigrate => true;

    /// <summary>HMM_DMIRROR_MIGRATE_TO_DEV in bounce-sized pieces (each migrates, then reads the pages back through the mirror).</summary>
    public Errno MigrateToDevice(ulong start, ulong end)
    {
        lock (_lock)
        {
            for (ulong a = start, n; a < end; a += n << Page.Shift)
            {
                n = Math.Min(BouncePages, (end - a) >> Page.Shift);
                var cmd = new DmirrorCmd { Addr = a, Ptr = _bounce, Npages = n };
                using (TraceLog.Span(Track, TraceCategory.Migrate, "to_device", TraceArg.Address(a), TraceArg.Pages((long)n)))
                {
                    Errno e = _file.TryIoctl(DmirrorCommand.MigrateToDevice, ref cmd, BounceCpu());
                    Interlocked.Increment(ref _commands);
                    if (e != Errno.Ok)
                    {
                        return e;
                    }
                    Interlocked.Add(ref _migrated, (long)cmd.Cpages);
                }
            }
            return Errno.Ok;
        }
    }

    /// <inheritdoc/>
    public long ValidPages(ulong start, ulong end) => Count(start, end, writableOnly: false);

    /// <inheritdoc/>
    public long WritablePages(ulong start, ulong end) => Count(start, end, writableOnly: true);

    /// <inheritdoc/>
    public long Invalidations(MmuNotifierEvent kind) => -1; // dmirror keeps no per-kind count; its entries are checked instead

    /// <summary>Huge (2 MiB) CPU entries behind the device's view of [start, end), from HMM_DMIRROR_SNAPSHOT's PMD bit; -1 on error.</summary>
    public long HugeEntries(ulong start, ulong end)
    {
        lock (_lock)
        {
            long huge = 0;
            for (ulong a = start, n; a < end; a += n << Page.Shift)
            {
                n = Math.Min(BouncePages * (ulong)Page.Size, (end - a) >> Page.Shift); // one byte a page
                var cmd = new DmirrorCmd { Addr = a, Ptr = _bounce, Npages = n };
                if (_file.TryIoctl(DmirrorCommand.Snapshot, ref cmd, BounceCpu()) != Errno.Ok)
                {
                    return -1;
                }
                Cpu cpu = BounceCpu();
                for (ulong i = 0; i < n; i++)
                {
                    huge += (cpu.Read<byte>(_bounce + i) & DmirrorProt.Pmd) != 0 ? 1 : 0;
                }
            }
            return huge >> Page.PmdOrder;
        }
    }

    /// <inheritdoc/>
    public IReadOnlyList<(string Metric, string Value)> Stats() =>
    [
        ("windows checked", string.Join(", ", _windows.Select(w => w.Label)) + " (the file mirrors the whole address space)"),
        ("device commands (READ/WRITE/SNAPSHOT)", N(Interlocked.Read(ref _commands))),
        ("device fault passes reported (cmd.faults)", N(Interlocked.Read(ref _faults))),
        ("pages copied by the device", N(Interlocked.Read(ref _pages))),
        ("pages migrated to device-private memory", N(Interlocked.Read(ref _migrated))),
        ("mirror entries now", N(_file.IsClosed ? 0 : _file.MirroredPages)),
        ("device pages in use / allocated", $"{_file.Device.PagesInUse} / {_file.Device.AllocatedPages}"),
    ];

    private static string N(long v) => v.ToString("#,0", CultureInfo.InvariantCulture);

    private long Count(ulong start, ulong end, bool writableOnly)
    {
        long n = 0;
        foreach ((ulong ws, ulong we, string _) in _windows)
        {
            for (ulong a = Math.Max(start, ws); a < Math.Min(end, we); a += Page.Size)
            {
                if (_file.TryGetMirrorEntry(a, out _, out bool writable, out _) && (!writableOnly || writable))
                {
                    n++;
                }
            }
        }
        return n;
    }

    /// <summary>The calling thread's CPU on the mirrored space (commands copy the user buffer through it).</summary>
    private Cpu BounceCpu() => _cpus.Value!;

    private Errno Command(DmirrorCommand command, ulong address, ulong pages)
    {
        var cmd = new DmirrorCmd { Addr = address, Ptr = _bounce, Npages = pages };
        using (TraceLog.Span(Track, TraceCategory.DeviceFault, command == DmirrorCommand.Write ? "dmirror_write" : "dmirror_read",
            TraceArg.Address(address), TraceArg.Pages((long)pages)))
        {
            Errno e = _file.TryIoctl(command, ref cmd, BounceCpu());
            Interlocked.Increment(ref _commands);
            if (e == Errno.Ok)
            {
                Interlocked.Add(ref _faults, (long)cmd.Faults);
                Interlocked.Add(ref _pages, (long)cmd.Cpages);
                if (cmd.Faults > 0)
                {
                    Counters.Add(Counter.DeviceFault, (long)cmd.Faults);
                }
            }
            return e;
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
        _file.Close();
        _driver.Dispose();
        foreach (Cpu c in _cpus.Values)
        {
            c.Dispose();
        }
        _cpus.Dispose();
    }
}
