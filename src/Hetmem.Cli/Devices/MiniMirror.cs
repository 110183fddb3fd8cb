using System.Runtime.CompilerServices;
using Hetmem.Diagnostics;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Cli.Devices;

/// <summary>
/// The smallest honest HMM mirror: a device page table (one <c>hmm_pfns</c> output entry per 4 KiB page) over a few
/// windows of one address space, each window watched by its own <see cref="MmuIntervalNotifier"/>, filled only through
/// <see cref="HmmMirrorHelper.FaultAndProgram"/> and torn down by the invalidate callback (kernel: the pattern of
/// Documentation/mm/hmm.rst that lib/test_hmm.c and every SVM driver follow).
/// </summary>
/// <remarks>
/// <para>The device reads and writes memory only through its own entries, under <see cref="UpdateLock"/>: an entry is
/// valid exactly while no invalidation of its page has run since it was programmed, so a frame the device touches
/// cannot have been freed or remapped by the CPU side.</para>
/// <para>Locking: <see cref="UpdateLock"/> protects every window's entries and the statistics written by the
/// callback; the callback takes it (after <c>OrderedLock.Enter(LockClass.DeviceUpdate)</c>) and only clears entries
/// and bumps counters there: no allocation, no call into the mm.</para>
/// </remarks>
internal sealed unsafe class MiniMirror : IDeviceMirror, IDemoDevice
{
    private const int EventKinds = (int)MmuNotifierEvent.Exclusive + 1;

    private readonly List<MirrorWindow> _windows = [];           // written before the device is used; read-only after
    private readonly long[] _invalidationsByEvent = new long[EventKinds]; // guarded by UpdateLock
    private long _pagesInvalidated;                               // guarded by UpdateLock
    private long _deviceFaults;                                   // atomic
    private long _faultAttempts;                                  // atomic
    private long _pagesFaulted;                                   // atomic
    private long _deviceReads;                                    // atomic
    private long _deviceWrites;                                   // atomic
    private bool _disposed;

    /// <summary>Creates a mirror device named <paramref name="name"/> (its trace track) over <paramref name="space"/>.</summary>
    public MiniMirror(string name, AddressSpace space)
    {
        Name = name;
        Space = space;
        Track = TraceLog.RegisterTrack(name, "devices");
    }

    /// <summary>The device name (<c>mirror0</c>).</summary>
    public string Name { get; }

    /// <inheritdoc/>
    public string Description => "mini mirror: MmuIntervalNotifier + HmmMirrorHelper.FaultAndProgram";

    /// <summary>The mirrored address space.</summary>
    public AddressSpace Space { get; }

    /// <summary>The device's trace track.</summary>
    public TraceTrack Track { get; }

    /// <summary>The driver's update lock.</summary>
    public Lock UpdateLock { get; } = new();

    /// <summary>The windows, in attach order.</summary>
    public IReadOnlyList<MirrorWindow> Windows => _windows;

    /// <summary>Device fault passes that succeeded (one <see cref="HmmMirrorHelper.FaultAndProgram"/> call each).</summary>
    public long DeviceFaults => Interlocked.Read(ref _deviceFaults);

    /// <summary>Attempts of the fault loop, including retries after a colliding invalidation.</summary>
    public long FaultAttempts => Interlocked.Read(ref _faultAttempts);

    /// <summary>Pages programmed by device faults.</summary>
    public long PagesFaulted => Interlocked.Read(ref _pagesFaulted);

    /// <summary>8-byte device reads served from the device page table.</summary>
    public long DeviceReads => Interlocked.Read(ref _deviceReads);

    /// <summary>8-byte device writes.</summary>
    public long DeviceWrites => Interlocked.Read(ref _deviceWrites);

    /// <summary>Valid device entries dropped by invalidations.</summary>
    public long PagesInvalidated
    {
        get
        {
            lock (UpdateLock)
            {
                return _pagesInvalidated;
            }
        }
    }

    /// <summary>Invalidate callbacks received for <paramref name="kind"/>.</summary>
    public long Invalidations(MmuNotifierEvent kind)
    {
        lock (UpdateLock)
        {
            return _invalidationsByEvent[(int)kind];
        }
    }

    /// <summary>Invalidate callbacks received, all kinds.</summary>
    public long TotalInvalidations
    {
        get
        {
            lock (UpdateLock)
            {
                return _invalidationsByEvent.Sum();
            }
        }
    }

    /// <inheritdoc/>
    void IDemoDevice.Attach(ulong start, ulong length, string label) => Attach(start, length, label);

    /// <inheritdoc/>
    long IDemoDevice.ValidPages(ulong start, ulong end) => ValidPages(start, end);

    /// <inheritdoc/>
    long IDemoDevice.WritablePages(ulong start, ulong end) => WritablePages(start, end);

    /// <inheritdoc/>
    public IReadOnlyList<(string Metric, string Value)> Stats()
    {
        var rows = new List<(string, string)>
        {
            ("windows mirrored", string.Join(", ", _windows.Select(w => w.Label))),
            ("device faults (FaultAndProgram passes)", Num(DeviceFaults)),
            ("fault attempts incl. retries", Num(FaultAttempts)),
            ("pages programmed", Num(PagesFaulted)),
            ("device 8-byte reads / writes", Num(DeviceReads) + " / " + Num(DeviceWrites)),
            ("valid entries now (huge: 2 MiB units)", Num(ValidPages()) + " (" + Num(HugeEntries()) + ")"),
            ("entries dropped by invalidations", Num(PagesInvalidated)),
        };
        for (int k = 0; k < EventKinds; k++)
        {
            long n = Invalidations((MmuNotifierEvent)k);
            if (n > 0)
            {
                rows.Add(("invalidations: " + EventName((MmuNotifierEvent)k), Num(n)));
            }
        }
        return rows;
    }

    /// <summary>The kernel's name of an event kind, without the MMU_NOTIFY_ prefix, in lower case (<c>protection_vma</c>).</summary>
    public static string EventName(MmuNotifierEvent kind) => kind switch
    {
        MmuNotifierEvent.Unmap => "unmap",
        MmuNotifierEvent.Clear => "clear",
        MmuNotifierEvent.ProtectionVma => "protection_vma",
        MmuNotifierEvent.ProtectionPage => "protection_page",
        MmuNotifierEvent.SoftDirty => "soft_dirty",
        MmuNotifierEvent.Release => "release",
        MmuNotifierEvent.Migrate => "migrate",
        MmuNotifierEvent.Exclusive => "exclusive",
        _ => kind.ToString(),
    };

    private static string Num(long v) => v.ToString("#,0", System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>Mirrors [<paramref name="start"/>, +<paramref name="length"/>): registers an interval notifier over it.</summary>
    /// <exception cref="MmException">EINVAL when the address space has exited.</exception>
    public MirrorWindow Attach(ulong start, ulong length, string label)
    {
        var w = new MirrorWindow(this, start, start + length, label);
        w.Notifier = MmuIntervalNotifier.Insert(Space, start, length, w);
        _windows.Add(w);
        return w;
    }

    /// <summary>The window holding <paramref name="address"/>, or null.</summary>
    public MirrorWindow? WindowOf(ulong address)
    {
        foreach (MirrorWindow w in _windows)
        {
            if (address >= w.Start && address < w.End)
            {
                return w;
            }
        }
        return null;
    }

    /// <summary>
    /// A device fault over [<paramref name="start"/>, <paramref name="end"/>): faults the CPU page tables as needed and
    /// programs the device entries (kernel: a driver's fault handler calling hmm_range_fault).
    /// </summary>
    /// <returns>Ok; EFAULT (no VMA, SIGBUS-type page, dead space); EPERM (write to a read-only VMA); EBUSY (timeout).</returns>
    public Errno Fault(ulong start, ulong end, bool write)
    {
        MirrorWindow w = WindowOf(start) ?? throw new ArgumentOutOfRangeException(nameof(start), $"0x{start:x} is not mirrored by {Name}");
        if (end > w.End)
        {
            throw new ArgumentOutOfRangeException(nameof(end), $"[0x{start:x}, 0x{end:x}) leaves {Name}'s window {w.Label}");
        }
        var range = new HmmRange(w.Notifier, start, end)
        {
            DefaultFlags = HmmPfnFlags.ReqFault | (write ? HmmPfnFlags.ReqWrite : HmmPfnFlags.None),
            DevPrivateOwner = this,
        };
        using (TraceLog.Span(Track, TraceCategory.DeviceFault, write ? "write_fault" : "read_fault", TraceArg.Address(start), TraceArg.Pages(range.PageCount)))
        {
            Errno r = HmmMirrorHelper.FaultAndProgram(this, range, HmmMirrorHelper.DefaultTimeoutMs, _ => Interlocked.Increment(ref _faultAttempts));
            if (r == Errno.Ok)
            {
                Counters.Inc(Counter.DeviceFault);
                Interlocked.Increment(ref _deviceFaults);
                Interlocked.Add(ref _pagesFaulted, range.PageCount);
            }
            return r;
        }
    }

    /// <summary>
    /// Snapshots [<paramref name="start"/>, <paramref name="end"/>) without faulting (kernel: HMM_DMIRROR_SNAPSHOT):
    /// programs whatever is present; absent pages stay unmapped.
    /// </summary>
    /// <returns>Ok, or the helper's error.</returns>
    public Errno Snapshot(ulong start, ulong end)
    {
        MirrorWindow w = WindowOf(start) ?? throw new ArgumentOutOfRangeException(nameof(start), $"0x{start:x} is not mirrored by {Name}");
        var range = new HmmRange(w.Notifier, start, end) { DevPrivateOwner = this };
        using (TraceLog.Span(Track, TraceCategory.Hmm, "snapshot", TraceArg.Address(start), TraceArg.Pages(range.PageCount)))
        {
            return HmmMirrorHelper.FaultAndProgram(this, range);
        }
    }

    /// <inheritdoc/>
    public Errno ProgramDevice(HmmRange range)
    {
        foreach (MirrorWindow w in _windows)
        {
            if (ReferenceEquals(w.Notifier, range.Notifier))
            {
                w.ProgramLocked(range);
                return Errno.Ok;
            }
        }
        return Errno.EINVAL;
    }

    /// <summary>
    /// The device reads the 8 bytes at <paramref name="address"/> (8-byte aligned) through its own page table, faulting
    /// on a missing translation (kernel: a device load that misses its TLB).
    /// </summary>
    /// <returns>Ok, or the fault's error.</returns>
    public Errno ReadInt64(ulong address, out long value)
    {
        for (int tries = 0; ; tries++)
        {
            lock (UpdateLock)
            {
                if (TryTranslateLocked(address, write: false, out byte* p))
                {
                    value = Unsafe.ReadUnaligned<long>(p);
                    Interlocked.Increment(ref _deviceReads);
                    return Errno.Ok;
                }
            }
            ulong page = Page.AlignDown(address, Page.Size);
            Errno r = Fault(page, page + Page.Size, write: false);
            if (r != Errno.Ok || tries > 1000)
            {
                value = 0;
                return r != Errno.Ok ? r : Errno.EBUSY;
            }
        }
    }

    /// <summary>The device writes 8 bytes at <paramref name="address"/> through a writable device entry.</summary>
    /// <returns>Ok, or the fault's error (EPERM for a read-only VMA).</returns>
    public Errno WriteInt64(ulong address, long value)
    {
        for (int tries = 0; ; tries++)
        {
            lock (UpdateLock)
            {
                if (TryTranslateLocked(address, write: true, out byte* p))
                {
                    Unsafe.WriteUnaligned(p, value);
                    Interlocked.Increment(ref _deviceWrites);
                    return Errno.Ok;
                }
            }
            ulong page = Page.AlignDown(address, Page.Size);
            Errno r = Fault(page, page + Page.Size, write: true);
            if (r != Errno.Ok || tries > 1000)
            {
                return r != Errno.Ok ? r : Errno.EBUSY;
            }
        }
    }

    /// <summary>The device entry of the page at <paramref name="address"/> (0 when unmapped or not mirrored).</summary>
    public ulong EntryOf(ulong address)
    {
        lock (UpdateLock)
        {
            MirrorWindow? w = WindowOf(address);
            return w is null ? 0 : w.EntryLocked(address);
        }
    }

    /// <summary>Valid device entries in [<paramref name="start"/>, <paramref name="end"/>) (all windows).</summary>
    public long ValidPages(ulong start = 0, ulong end = ulong.MaxValue)
    {
        lock (UpdateLock)
        {
            long n = 0;
            foreach (MirrorWindow w in _windows)
            {
                n += w.CountLocked(start, end, (ulong)HmmPfnFlags.Valid);
            }
            return n;
        }
    }

    /// <summary>Writable device entries in [<paramref name="start"/>, <paramref name="end"/>).</summary>
    public long WritablePages(ulong start = 0, ulong end = ulong.MaxValue)
    {
        lock (UpdateLock)
        {
            long n = 0;
            foreach (MirrorWindow w in _windows)
            {
                n += w.CountLocked(start, end, (ulong)(HmmPfnFlags.Valid | HmmPfnFlags.Write));
            }
            return n;
        }
    }

    /// <summary>Device entries in [<paramref name="start"/>, <paramref name="end"/>) mapped as part of a huge (order ≥ 9) CPU entry, in huge units.</summary>
    public long HugeEntries(ulong start = 0, ulong end = ulong.MaxValue)
    {
        lock (UpdateLock)
        {
            long pages = 0;
            foreach (MirrorWindow w in _windows)
            {
                pages += w.CountHugeLocked(start, end);
            }
            return pages / (1L << Page.PmdOrder);
        }
    }

    /// <summary>
    /// Checks the mirror invariant of DESIGN.md over [<paramref name="start"/>, <paramref name="end"/>): every valid device
    /// entry maps the frame the CPU page table maps now, and a writable device entry only a writable CPU entry. Takes
    /// the mmap read lock (so page tables cannot be freed while walked), then <see cref="UpdateLock"/> (so no
    /// invalidation can run between reading the two sides).
    /// </summary>
    /// <returns>Null when it holds, else a description of the first violation.</returns>
    public string? CheckAgainstCpu(ulong start, ulong end)
    {
        Space.MmapLock.EnterRead();
        try
        {
            lock (UpdateLock)
            {
                foreach (MirrorWindow w in _windows)
                {
                    ulong s = Math.Max(start, w.Start), e = Math.Min(end, w.End);
                    for (ulong a = s; a < e; a += Page.Size)
                    {
                        ulong d = w.EntryLocked(a);
                        if (!HmmPfn.Has(d, HmmPfnFlags.Valid))
                        {
                            continue;
                        }
                        Pte cpu = Space.QueryPte(a, out int order);
                        ulong cpuPfn = cpu.Pfn + (order == 0 ? 0 : (a >> Page.Shift) & ((1UL << order) - 1));
                        if (!cpu.IsPresent || cpuPfn != HmmPfn.ToPfn(d))
                        {
                            return $"{Name}: device maps 0x{a:x} to pfn 0x{HmmPfn.ToPfn(d):x} but the CPU entry is {cpu}";
                        }
                        if (HmmPfn.Has(d, HmmPfnFlags.Write) && !cpu.IsWritable)
                        {
                            return $"{Name}: device may write 0x{a:x} but the CPU entry {cpu} is read-only";
                        }
                    }
                }
                return null;
            }
        }
        finally
        {
            Space.MmapLock.ExitRead();
        }
    }

    private bool TryTranslateLocked(ulong address, bool write, out byte* p)
    {
        p = null;
        MirrorWindow? w = WindowOf(address);
        if (w is null)
        {
            return false;
        }
        ulong e = w.EntryLocked(address);
        if (!HmmPfn.Has(e, HmmPfnFlags.Valid) || (write && !HmmPfn.Has(e, HmmPfnFlags.Write)))
        {
            return false;
        }
        byte* frame = Space.Memory.Address(HmmPfn.ToPfn(e));
        if (frame == null)
        {
            return false;
        }
        p = frame + (address & Page.OffsetMask);
        return true;
    }

    /// <summary>Called by a window's invalidate callback with <see cref="UpdateLock"/> held.</summary>
    internal void CountInvalidationLocked(MmuNotifierEvent kind, long cleared)
    {
        _invalidationsByEvent[(int)kind]++;
        _pagesInvalidated += cleared;
    }

    /// <summary>Removes the notifiers (after this no callback runs) and drops every entry.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        foreach (MirrorWindow w in _windows)
        {
            w.Notifier.Remove();
            lock (UpdateLock)
            {
                w.ClearLocked();
            }
        }
    }
}

/// <summary>One mirrored window of a <see cref="MiniMirror"/>: its notifier and its slice of the device page table.</summary>
internal sealed class MirrorWindow : IMmuIntervalNotifierOps
{
    private readonly ulong[] _entries;   // guarded by Device.UpdateLock

    internal MirrorWindow(MiniMirror device, ulong start, ulong end, string label)
    {
        Device = device;
        Start = start;
        End = end;
        Label = label;
        _entries = new ulong[(end - start) >> Page.Shift];
    }

    /// <summary>The device.</summary>
    public MiniMirror Device { get; }

    /// <summary>First mirrored address.</summary>
    public ulong Start { get; }

    /// <summary>End of the window (exclusive).</summary>
    public ulong End { get; }

    /// <summary>What the window mirrors (<c>anon</c>, <c>dax</c>, …).</summary>
    public string Label { get; }

    /// <summary>The interval notifier watching the window.</summary>
    public MmuIntervalNotifier Notifier { get; internal set; } = null!;

    /// <inheritdoc/>
    public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
    {
        if (range.Blockable)
        {
            OrderedLock.Enter(LockClass.DeviceUpdate);
            Device.UpdateLock.Enter();
        }
        else
        {
            OrderedLock.Enter(LockClass.DeviceUpdate, tryLock: true);
            if (!Device.UpdateLock.TryEnter())
            {
                OrderedLock.Exit(LockClass.DeviceUpdate);
                return false;
            }
        }
        try
        {
            ulong s = Math.Max(range.Start, Start);
            ulong e = Math.Min(range.End, End);
            using (TraceLog.Span(Device.Track, TraceCategory.Invalidate, TraceNames.Of(range.Event), TraceArg.Address(s),
                TraceArg.Pages(e > s ? (long)((e - s) >> Page.Shift) : 0)))
            {
                subscription.SetSeq(curSeq);
                long cleared = 0;
                if (e > s)
                {
                    int first = (int)((s - Start) >> Page.Shift);
                    int last = (int)((e - Start + Page.Size - 1) >> Page.Shift);
                    for (int i = first; i < last; i++)
                    {
                        if (_entries[i] != 0)
                        {
                            _entries[i] = 0;
                            cleared++;
                        }
                    }
                }
                Device.CountInvalidationLocked(range.Event, cleared);
            }
        }
        finally
        {
            Device.UpdateLock.Exit();
            OrderedLock.Exit(LockClass.DeviceUpdate);
        }
        return true;
    }

    internal void ProgramLocked(HmmRange range)
    {
        int first = (int)((range.Start - Start) >> Page.Shift);
        ulong[] pfns = range.HmmPfns;
        for (int i = 0; i < pfns.Length; i++)
        {
            ulong e = pfns[i];
            _entries[first + i] = HmmPfn.Has(e, HmmPfnFlags.Valid) && !HmmPfn.Has(e, HmmPfnFlags.Error) ? e : 0;
        }
    }

    internal ulong EntryLocked(ulong address) => _entries[(address - Start) >> Page.Shift];

    internal long CountLocked(ulong start, ulong end, ulong mask)
    {
        (int first, int last) = Clip(start, end);
        long n = 0;
        for (int i = first; i < last; i++)
        {
            n += (_entries[i] & mask) == mask ? 1 : 0;
        }
        return n;
    }

    internal long CountHugeLocked(ulong start, ulong end)
    {
        (int first, int last) = Clip(start, end);
        long n = 0;
        for (int i = first; i < last; i++)
        {
            n += HmmPfn.Has(_entries[i], HmmPfnFlags.Valid) && HmmPfn.MapOrder(_entries[i]) >= Page.PmdOrder ? 1 : 0;
        }
        return n;
    }

    internal void ClearLocked() => Array.Clear(_entries);

    private (int First, int Last) Clip(ulong start, ulong end)
    {
        ulong s = Math.Max(start, Start);
        ulong e = Math.Min(end, End);
        return e <= s ? (0, 0) : ((int)((s - Start) >> Page.Shift), (int)((e - Start + Page.Size - 1) >> Page.Shift));
    }
}
