using System.Runtime.CompilerServices;
using Hetmem.Diagnostics;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Cli.Stress;

/// <summary>
/// The stress run's fine-grained device: a device TLB of single-page translations over the arena, filled only by
/// <see cref="HmmMirrorHelper.FaultAndProgram"/> and emptied by its interval notifier's invalidate callback, through
/// which it loads and stores 8-byte words (kernel: what an SVM driver's GPU page table does between faults).
/// </summary>
/// <remarks>
/// <para>Every entry remembers the frame's generation when it was programmed; an access whose frame generation
/// changed means the frame was freed while the device still mapped it, which the oracle reports as a violation.</para>
/// <para><see cref="PlantStaleBug"/> turns the device into a broken driver for the oracle's own test: the callback
/// then bumps the sequence but keeps the entries (a classic "forgot to zap" bug) and the generation check is off for
/// loads, so only the value oracle can notice the device reading a page after its invalidation returned. Stores keep
/// the check even then: a store into a freed frame could land in a page-table page and corrupt the simulator itself.</para>
/// <para>Locking: <see cref="UpdateLock"/> (<see cref="LockClass.DeviceUpdate"/>) guards the entries and is held
/// across each access, so an access and an invalidation of the same page never overlap.</para>
/// </remarks>
internal sealed unsafe class ProbeDevice : IDeviceMirror, IMmuIntervalNotifierOps, IDisposable
{
    private readonly ulong[] _entries;        // guarded by UpdateLock: HMM pfn entries, one a page
    private readonly uint[] _generations;     // guarded by UpdateLock: frame generation when programmed
    private long _invalidations;              // guarded by UpdateLock
    private bool _removed;

    /// <summary>Mirrors [<paramref name="start"/>, +<paramref name="pages"/> pages) of <paramref name="space"/>.</summary>
    public ProbeDevice(AddressSpace space, ulong start, int pages, bool plantStaleBug)
    {
        Space = space;
        Start = start;
        _entries = new ulong[pages];
        _generations = new uint[pages];
        PlantStaleBug = plantStaleBug;
        Notifier = MmuIntervalNotifier.Insert(space, start, (ulong)pages << Page.Shift, this);
    }

    /// <summary>The mirrored address space.</summary>
    public AddressSpace Space { get; }

    /// <summary>First mirrored address.</summary>
    public ulong Start { get; }

    /// <summary>The interval notifier.</summary>
    public MmuIntervalNotifier Notifier { get; }

    /// <summary>True when the device keeps translations past invalidation (a planted bug for the oracle's test).</summary>
    public bool PlantStaleBug { get; }

    /// <inheritdoc/>
    public Lock UpdateLock { get; } = new();

    /// <summary>Invalidate callbacks received.</summary>
    public long Invalidations
    {
        get
        {
            lock (UpdateLock)
            {
                return _invalidations;
            }
        }
    }

    /// <summary>
    /// Faults the page of <paramref name="address"/> into the device TLB (for write when <paramref name="write"/>).
    /// </summary>
    private Errno Fault(ulong address, bool write)
    {
        ulong page = Page.AlignDown(address, Page.Size);
        var range = new HmmRange(Notifier, page, page + Page.Size, new ulong[1])
        {
            DefaultFlags = HmmPfnFlags.ReqFault | (write ? HmmPfnFlags.ReqWrite : HmmPfnFlags.None),
            DevPrivateOwner = this,
        };
        return HmmMirrorHelper.FaultAndProgram(this, range);
    }

    /// <inheritdoc/>
    public Errno ProgramDevice(HmmRange range)
    {
        ulong e = range.HmmPfns[0];
        int i = (int)((range.Start - Start) >> Page.Shift);
        if (!HmmPfn.Has(e, HmmPfnFlags.Valid) || HmmPfn.Has(e, HmmPfnFlags.Error))
        {
            _entries[i] = 0;
            return Errno.Ok;
        }
        ulong pfn = HmmPfn.ToPfn(e);
        _entries[i] = e;
        _generations[i] = Space.Memory.Frame(pfn).Generation;
        return Errno.Ok;
    }

    /// <summary>
    /// The device loads the first word of the page at <paramref name="address"/>, faulting on a TLB miss.
    /// <paramref name="freedFrame"/> is set when the entry's frame was freed under it (a use-after-free).
    /// </summary>
    /// <returns>Ok, or the fault's error (EFAULT for a hole, EBUSY on timeout).</returns>
    public Errno Read(ulong address, out ulong value, out bool freedFrame) => Access(address, false, 0, out value, out freedFrame);

    /// <summary>The device stores <paramref name="value"/> to the first word of the page at <paramref name="address"/>.</summary>
    /// <returns>Ok, or the fault's error (EPERM for a read-only VMA).</returns>
    public Errno Write(ulong address, ulong value, out bool freedFrame) => Access(address, true, value, out _, out freedFrame);

    private Errno Access(ulong address, bool write, ulong store, out ulong value, out bool freedFrame)
    {
        value = 0;
        freedFrame = false;
        int i = (int)((address - Start) >> Page.Shift);
        for (int tries = 0; ; tries++)
        {
            lock (UpdateLock)
            {
                ulong e = _entries[i];
                if (HmmPfn.Has(e, HmmPfnFlags.Valid) && (!write || HmmPfn.Has(e, HmmPfnFlags.Write)))
                {
                    ulong pfn = HmmPfn.ToPfn(e);
                    byte* p = Space.Memory.Address(pfn);
                    if (p != null)
                    {
                        if ((write || !PlantStaleBug) && Space.Memory.Frame(pfn).Generation != _generations[i])
                        {
                            freedFrame = true;
                            _entries[i] = 0;
                            return Errno.EFAULT;
                        }
                        if (write)
                        {
                            Volatile.Write(ref Unsafe.AsRef<ulong>(p), store);
                        }
                        else
                        {
                            value = Volatile.Read(ref Unsafe.AsRef<ulong>(p));
                        }
                        return Errno.Ok;
                    }
                }
            }
            Errno r = Fault(address, write);
            if (r != Errno.Ok)
            {
                return r;
            }
            if (tries > 100)
            {
                return Errno.EBUSY;
            }
        }
    }

    /// <inheritdoc/>
    public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
    {
        if (range.Blockable)
        {
            OrderedLock.Enter(LockClass.DeviceUpdate);
            UpdateLock.Enter();
        }
        else
        {
            OrderedLock.Enter(LockClass.DeviceUpdate, tryLock: true);
            if (!UpdateLock.TryEnter())
            {
                OrderedLock.Exit(LockClass.DeviceUpdate);
                return false;
            }
        }
        try
        {
            subscription.SetSeq(curSeq);
            _invalidations++;
            if (PlantStaleBug)
            {
                return true;
            }
            ulong end = Start + ((ulong)_entries.Length << Page.Shift);
            ulong s = Math.Max(range.Start, Start), e = Math.Min(range.End, end);
            if (e > s)
            {
                int first = (int)((s - Start) >> Page.Shift);
                int last = (int)((e - Start + Page.Size - 1) >> Page.Shift);
                Array.Clear(_entries, first, last - first);
            }
            return true;
        }
        finally
        {
            UpdateLock.Exit();
            OrderedLock.Exit(LockClass.DeviceUpdate);
        }
    }

    /// <summary>Removes the notifier and drops every entry.</summary>
    public void Dispose()
    {
        if (_removed)
        {
            return;
        }
        _removed = true;
        Notifier.Remove();
        lock (UpdateLock)
        {
            Array.Clear(_entries);
        }
    }
}
