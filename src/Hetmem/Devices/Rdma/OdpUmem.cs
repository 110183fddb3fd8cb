using System.Diagnostics;
using System.Runtime.CompilerServices;
using Hetmem.Diagnostics;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Rdma;

/// <summary>What a fault asks of the pages it demands.</summary>
internal enum OdpFaultKind
{
    /// <summary>No fault: pages present on the CPU become present to the NIC (kernel: a snapshot, HMM_PFN_REQ_FAULT clear).</summary>
    Snapshot,
    /// <summary>Fault the demanded pages in readable.</summary>
    Read,
    /// <summary>Fault the demanded pages in writable.</summary>
    Write,
}

/// <summary>Outcome of one attempt at an access under the region lock.</summary>
internal enum OdpAccess
{
    /// <summary>The access was performed.</summary>
    Done,
    /// <summary>A page lacks a (writable) translation; fault it and try again.</summary>
    Missing,
    /// <summary>The umem was destroyed (an empty implicit child); look it up again.</summary>
    Dead,
    /// <summary>Writing back a DAX block failed.</summary>
    IoError,
}

/// <summary>Atomic operations of the responder.</summary>
internal enum OdpAtomic
{
    CompareAndSwap,
    FetchAndAdd,
    Write,
}

/// <summary>Told when an invalidation left a umem without translations (mlx5: the implicit child became empty).</summary>
internal interface IOdpUmemOwner
{
    /// <summary>Called under the umem's lock from its invalidate callback: may only queue, never allocate or destroy.</summary>
    void OnEmpty(OdpUmem umem);
}

/// <summary>
/// The NIC side of one on-demand-paging span: a translation array with one HMM entry per 4 KiB page, the lock held
/// across every access, and an interval notifier that zaps translations (kernel: struct ib_umem_odp plus the rxe
/// data path in rxe_odp.c and the mlx5 invalidate callback).
/// </summary>
/// <remarks>
/// <para>Locking: <c>_lock</c> is the driver update lock of LockOrder.cs (kernel: umem_mutex). It protects
/// <c>_pfns</c>, <c>_gens</c>, <c>_valid</c> and <c>_dead</c>; it is taken by <see cref="Invalidate"/>, by
/// <see cref="HmmMirrorHelper.FaultAndProgram"/> around <see cref="ProgramDevice"/>, and across every copy, atomic and
/// flush, so an invalidation cannot return while an access is using a translation it zaps. It is never held while
/// calling into the mm, waiting for a fault, or doing socket I/O.</para>
/// <para>Faults are taken with the lock dropped through <see cref="HmmMirrorHelper.FaultAndProgram"/> in windows of
/// 2 MiB (aligned, clipped to the span): the demanded pages carry REQ_FAULT (and REQ_WRITE), the rest of the window is
/// only snapshotted, so pages already present on the CPU become usable for free. Each window's
/// <see cref="HmmRange"/> is rented from a three-slot cache (full, head and tail window sizes), so steady-state faults
/// allocate nothing.</para>
/// </remarks>
internal sealed unsafe class OdpUmem : IDeviceMirror, IMmuIntervalNotifierOps
{
    /// <summary>Pages of one fault window (2 MiB).</summary>
    internal const int WindowPages = 1 << Page.PmdOrder;
    internal const ulong WindowBytes = (ulong)WindowPages << Page.Shift;

    private const ulong EntryMask = HmmPfn.FlagsMask & ~((ulong)HmmPfnFlags.Error | HmmPfn.Sticky) | ~HmmPfn.FlagsMask;
    private const ulong ValidBit = (ulong)HmmPfnFlags.Valid;
    private const ulong WriteBit = (ulong)HmmPfnFlags.Write;

    private readonly Lock _lock = new();
    private readonly ulong[] _pfns;           // guarded by _lock: HMM entries (pfn | VALID | WRITE | order) or 0
    private readonly uint[] _gens;            // guarded by _lock: generation of each RAM frame when it was programmed (0 otherwise)
    private readonly PhysicalMemory _memory;  // immutable
    private readonly OdpStats _stats;         // immutable reference; counters are atomic
    private readonly bool _hugetlb;           // immutable: IB_ACCESS_HUGETLB (a smaller page is a fault error)
    private readonly IOdpUmemOwner? _owner;   // immutable
    private readonly FaultRange?[] _spares = new FaultRange?[3]; // Interlocked.Exchange slots (full, head, tail window)
    private readonly MmuIntervalNotifier _notifier; // immutable
    private int _valid;                       // guarded by _lock: non-zero entries of _pfns
    private bool _dead;                       // guarded by _lock
    internal OdpUmem? _nextEmpty;             // owner's lock-free empty list (written by the pusher before publishing)
    internal int _emptyQueued;                // Interlocked: 1 while on the owner's empty list

    /// <summary>Creates the umem over [start, end) of <paramref name="space"/> and inserts its interval notifier.</summary>
    /// <exception cref="MmException">EINVAL when the address space is dead.</exception>
    internal OdpUmem(AddressSpace space, ulong start, ulong end, OdpStats stats, bool hugetlb, IOdpUmemOwner? owner)
    {
        Debug.Assert(Page.IsAligned(start, Page.Size) && Page.IsAligned(end, Page.Size) && end > start);
        Start = start;
        End = end;
        _memory = space.Memory;
        _stats = stats;
        _hugetlb = hugetlb;
        _owner = owner;
        int pages = checked((int)((end - start) >> Page.Shift));
        _pfns = new ulong[pages];
        _gens = new uint[pages];
        _notifier = MmuIntervalNotifier.Insert(space, start, end - start, this);
    }

    /// <summary>First address (page aligned).</summary>
    internal ulong Start { get; }
    /// <summary>End address (exclusive, page aligned).</summary>
    internal ulong End { get; }
    /// <summary>The interval notifier.</summary>
    internal MmuIntervalNotifier Notifier => _notifier;

    /// <inheritdoc/>
    public Lock UpdateLock => _lock;

    /// <summary>Pages with a translation (test and diagnostics view).</summary>
    internal int ValidPages
    {
        get
        {
            lock (_lock)
            {
                return _valid;
            }
        }
    }

    /// <summary>True once destroyed.</summary>
    internal bool IsDead
    {
        get
        {
            lock (_lock)
            {
                return _dead;
            }
        }
    }

    /// <summary>Lock-free hint that the umem was destroyed (a stale true is impossible; a stale false is caught under the lock).</summary>
    internal bool IsDeadUnlocked => Volatile.Read(ref _dead);

    /// <summary>The translation of <paramref name="va"/> (0 when none): pfn | VALID | WRITE | order, as <see cref="HmmPfn"/> reads it.</summary>
    internal ulong Translation(ulong va)
    {
        lock (_lock)
        {
            return _pfns[Index(va)];
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int Index(ulong va) => (int)((va - Start) >> Page.Shift);

    // ---- faults ------------------------------------------------------------------------------------------------

    /// <summary>
    /// Makes [<paramref name="start"/>, <paramref name="end"/>) present to the NIC (kernel: ib_umem_odp_map_dma_and_lock +
    /// the driver's page-table update, without returning locked). The range is clipped to the umem. The caller holds
    /// no lock.
    /// </summary>
    /// <param name="start">First byte.</param>
    /// <param name="end">End (exclusive).</param>
    /// <param name="kind">Snapshot, read or write fault.</param>
    /// <param name="raced">Set when an invalidation collided with the fault (the helper had to retry).</param>
    /// <returns>Ok; EFAULT (no VMA, unreadable, SIGBUS-class fault, or a smaller page in a HUGETLB region); EPERM (write
    /// to a read-only VMA); EBUSY (collisions until the timeout); EAGAIN when the umem died meanwhile.</returns>
    internal Errno Fault(ulong start, ulong end, OdpFaultKind kind, out bool raced)
    {
        raced = false;
        start = Math.Max(Page.AlignDown(start, Page.Size), Start);
        end = Math.Min(Page.AlignUp(end, Page.Size), End);
        for (ulong w = Page.AlignDown(start, WindowBytes); w < end; w += WindowBytes)
        {
            ulong ws = Math.Max(w, Start);
            ulong we = Math.Min(w + WindowBytes, End);
            Errno e = FaultWindow(ws, we, Math.Max(start, ws), Math.Min(end, we), kind, out bool r);
            raced |= r;
            if (e != Errno.Ok)
            {
                return e;
            }
        }
        return Errno.Ok;
    }

    private Errno FaultWindow(ulong ws, ulong we, ulong ds, ulong de, OdpFaultKind kind, out bool raced)
    {
        int slot = we - ws == WindowBytes ? 0 : ws == Start ? 1 : 2;
        FaultRange fr = Interlocked.Exchange(ref _spares[slot], null) ?? new FaultRange(_notifier, ws, we);
        fr.Range.SetRange(ws, we);
        fr.DemandFirst = (int)((ds - ws) >> Page.Shift);
        fr.DemandEnd = (int)((de - ws) >> Page.Shift);
        fr.Kind = kind;
        fr.Attempts = 0;
        Errno e = HmmMirrorHelper.FaultAndProgram(this, fr.Range, HmmMirrorHelper.DefaultTimeoutMs, fr.OnAttempt);
        raced = fr.Attempts > 1;
        Volatile.Write(ref _spares[slot], fr);
        return e;
    }

    /// <inheritdoc/>
    /// <remarks>Caller: <see cref="HmmMirrorHelper.FaultAndProgram"/> with <see cref="UpdateLock"/> held and the sequence checked.</remarks>
    public Errno ProgramDevice(HmmRange range)
    {
        Debug.Assert(_lock.IsHeldByCurrentThread, "ProgramDevice needs the umem lock");
        if (_dead)
        {
            return Errno.EAGAIN;
        }
        ulong[] src = range.HmmPfns;
        if (_hugetlb)
        {
            foreach (ulong e in src)
            {
                if ((e & ValidBit) != 0 && HmmPfn.MapOrder(e) < Page.PmdOrder)
                {
                    return Errno.EFAULT;
                }
            }
        }
        int first = Index(range.Start);
        for (int i = 0; i < src.Length; i++)
        {
            ulong e = src[i];
            ulong v = (e & ValidBit) != 0 && (e & (ulong)HmmPfnFlags.Error) == 0 ? e & EntryMask : 0;
            ref ulong slot = ref _pfns[first + i];
            if (slot == 0 && v != 0)
            {
                _valid++;
            }
            else if (slot != 0 && v == 0)
            {
                _valid--;
            }
            slot = v;
            if (v != 0)
            {
                // Recorded always, so the check in AddressLocked is sound whenever the switch is turned on.
                ulong pfn = HmmPfn.ToPfn(v);
                _gens[first + i] = _memory.IsRam(pfn) ? _memory.Frame(pfn).Generation : 0;
            }
        }
        return Errno.Ok;
    }

    // ---- invalidation ------------------------------------------------------------------------------------------

    /// <inheritdoc/>
    /// <remarks>
    /// Kernel: rxe_ib_invalidate_range / mlx5_ib_invalidate_range. Takes the umem lock (waiting for an access in
    /// progress to finish), sets the sequence, clears the clipped translations and counts them. Allocation-free; an
    /// implicit child left empty is only queued to its owner.
    /// </remarks>
    public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
    {
        if (range.Blockable)
        {
            _lock.Enter();
        }
        else if (!_lock.TryEnter())
        {
            return false;
        }
        try
        {
            subscription.SetSeq(curSeq);
            if (_valid == 0)
            {
                return true;
            }
            ulong s = Math.Max(Page.AlignDown(range.Start, Page.Size), Start);
            ulong e = range.End >= End ? End : Math.Max(Page.AlignUp(range.End, Page.Size), s);
            if (s >= e)
            {
                return true;
            }
            int zapped = 0;
            Span<ulong> pfns = _pfns.AsSpan(Index(s), Index(e - 1) - Index(s) + 1);
            for (int i = 0; i < pfns.Length; i++)
            {
                if (pfns[i] != 0)
                {
                    pfns[i] = 0;
                    zapped++;
                }
            }
            _valid -= zapped;
            _stats.AddInvalidation(zapped);
            if (_valid == 0 && zapped != 0 && _owner is not null)
            {
                _owner.OnEmpty(this);
            }
            return true;
        }
        finally
        {
            _lock.Exit();
        }
    }

    /// <summary>Removes the notifier and drops every translation (kernel: ib_umem_odp_release). Not from a callback.</summary>
    internal void Destroy()
    {
        lock (_lock)
        {
            _dead = true;
        }
        _notifier.Remove();
        lock (_lock)
        {
            Array.Clear(_pfns);
            _valid = 0;
        }
    }

    /// <summary>Marks the umem dead when it has no translation (an empty implicit child); the caller then removes it.</summary>
    internal bool TryKillIfEmpty()
    {
        lock (_lock)
        {
            if (_valid != 0 || _dead)
            {
                return false;
            }
            _dead = true;
        }
        _notifier.Remove();
        return true;
    }

    // ---- data path (kernel: rxe_odp_map_range_and_lock + __rxe_odp_mr_copy / rxe_odp_do_atomic_op) ---------------

    /// <summary>True when every page of [first, last] has a translation, writable when <paramref name="write"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool PresentLocked(int first, int last, bool write, out ulong missing)
    {
        ulong need = ValidBit | (write ? WriteBit : 0);
        for (int i = first; i <= last; i++)
        {
            if ((_pfns[i] & need) != need)
            {
                missing = Start + ((ulong)i << Page.Shift);
                return false;
            }
        }
        missing = 0;
        return true;
    }

    /// <summary>Host address of byte <paramref name="va"/> through its translation; checks the frame was not freed since.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private byte* AddressLocked(ulong va)
    {
        int i = Index(va);
        ulong pfn = HmmPfn.ToPfn(_pfns[i]);
        if (Invariants.Enabled)
        {
            CheckGeneration(i, pfn);
        }
        return _memory.Address(pfn) + (va & Page.OffsetMask);
    }

    private void CheckGeneration(int i, ulong pfn)
    {
        if (_memory.IsRam(pfn))
        {
            uint now = _memory.Frame(pfn).Generation;
            Invariants.Check(now == _gens[i], $"ODP translation of 0x{Start + ((ulong)i << Page.Shift):x} uses frame 0x{pfn:x} freed since it was programmed (generation {_gens[i]} → {now}): an invalidation was missed");
        }
    }

    /// <summary>Copies from the NIC's view of [va, +dst.Length) into <paramref name="dst"/> under the lock.</summary>
    internal OdpAccess TryRead(ulong va, Span<byte> dst, out ulong missing)
    {
        if (dst.Length == 0)
        {
            missing = 0;
            return OdpAccess.Done;
        }
        lock (_lock)
        {
            if (_dead)
            {
                missing = va;
                return OdpAccess.Dead;
            }
            if (!PresentLocked(Index(va), Index(va + (ulong)dst.Length - 1), false, out missing))
            {
                return OdpAccess.Missing;
            }
            int done = 0;
            while (done < dst.Length)
            {
                ulong a = va + (ulong)done;
                int n = Math.Min(Page.Size - (int)(a & Page.OffsetMask), dst.Length - done);
                new ReadOnlySpan<byte>(AddressLocked(a), n).CopyTo(dst.Slice(done, n));
                done += n;
            }
            return OdpAccess.Done;
        }
    }

    /// <summary>Copies <paramref name="src"/> into the NIC's view of [va, +src.Length) under the lock.</summary>
    internal OdpAccess TryWrite(ulong va, ReadOnlySpan<byte> src, out ulong missing)
    {
        if (src.Length == 0)
        {
            missing = 0;
            return OdpAccess.Done;
        }
        lock (_lock)
        {
            if (_dead)
            {
                missing = va;
                return OdpAccess.Dead;
            }
            if (!PresentLocked(Index(va), Index(va + (ulong)src.Length - 1), true, out missing))
            {
                return OdpAccess.Missing;
            }
            int done = 0;
            while (done < src.Length)
            {
                ulong a = va + (ulong)done;
                int n = Math.Min(Page.Size - (int)(a & Page.OffsetMask), src.Length - done);
                src.Slice(done, n).CopyTo(new Span<byte>(AddressLocked(a), n));
                done += n;
            }
            return OdpAccess.Done;
        }
    }

    /// <summary>A 64-bit atomic at 8-byte-aligned <paramref name="va"/> under the lock (kernel: rxe_odp_do_atomic_op / atomic write).</summary>
    internal OdpAccess TryAtomic(ulong va, OdpAtomic op, ulong a, ulong b, out ulong original, out ulong missing)
    {
        Debug.Assert((va & 7) == 0);
        original = 0;
        lock (_lock)
        {
            if (_dead)
            {
                missing = va;
                return OdpAccess.Dead;
            }
            int i = Index(va);
            if (!PresentLocked(i, i, true, out missing))
            {
                return OdpAccess.Missing;
            }
            long* p = (long*)AddressLocked(va);
            switch (op)
            {
                case OdpAtomic.CompareAndSwap:
                    original = (ulong)Interlocked.CompareExchange(ref *p, (long)b, (long)a);
                    break;
                case OdpAtomic.FetchAndAdd:
                    original = (ulong)(Interlocked.Add(ref *p, (long)a) - (long)a);
                    break;
                default:
                    original = (ulong)Interlocked.Exchange(ref *p, (long)a);
                    break;
            }
            return OdpAccess.Done;
        }
    }

    /// <summary>
    /// Writes back the DAX blocks behind [va, +length) to their namespace (kernel: rxe_odp_flush_pmem_iova →
    /// arch_wb_cache_pmem; here DaxNamespace.Flush = msync of those blocks). RAM pages need nothing.
    /// </summary>
    internal OdpAccess TryFlush(ulong va, ulong length, out ulong missing)
    {
        if (length == 0)
        {
            missing = 0;
            return OdpAccess.Done;
        }
        lock (_lock)
        {
            if (_dead)
            {
                missing = va;
                return OdpAccess.Dead;
            }
            int first = Index(va);
            int last = Index(va + length - 1);
            if (!PresentLocked(first, last, false, out missing))
            {
                return OdpAccess.Missing;
            }
            DaxNamespace? runNs = null;
            ulong runBlock = 0;
            ulong runCount = 0;
            try
            {
                for (int i = first; i <= last; i++)
                {
                    ulong pfn = HmmPfn.ToPfn(_pfns[i]);
                    if (_memory.IsRam(pfn) || _memory.FindMap(pfn)?.Owner is not DaxNamespace ns)
                    {
                        continue;
                    }
                    ulong block = pfn - ns.FirstPfn;
                    if (ReferenceEquals(ns, runNs) && block == runBlock + runCount)
                    {
                        runCount++;
                        continue;
                    }
                    runNs?.Flush(runBlock, runCount);
                    (runNs, runBlock, runCount) = (ns, block, 1);
                }
                runNs?.Flush(runBlock, runCount);
            }
            catch (MmException)
            {
                return OdpAccess.IoError;
            }
            return OdpAccess.Done;
        }
    }

    /// <summary>A rented <see cref="HmmRange"/> for one window with its per-attempt input reset.</summary>
    private sealed class FaultRange
    {
        public readonly HmmRange Range;
        public readonly Action<int> OnAttempt;
        public int DemandFirst;     // first demanded page index within the window
        public int DemandEnd;       // end of the demanded pages (exclusive)
        public OdpFaultKind Kind;
        public int Attempts;

        public FaultRange(MmuIntervalNotifier notifier, ulong start, ulong end)
        {
            Range = new HmmRange(notifier, start, end);
            OnAttempt = Reset;
        }

        // Every attempt starts from the request again: outputs of a failed attempt must not become inputs (a snapshot
        // neighbour reported writable would otherwise turn into a write fault).
        private void Reset(int attempt)
        {
            Attempts = attempt + 1;
            Span<ulong> pfns = Range.HmmPfns;
            pfns.Clear();
            Range.DefaultFlags = HmmPfnFlags.None;
            if (Kind == OdpFaultKind.Snapshot)
            {
                Range.PfnFlagsMask = HmmPfnFlags.None;
                return;
            }
            Range.PfnFlagsMask = HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite;
            ulong req = (ulong)HmmPfnFlags.ReqFault | (Kind == OdpFaultKind.Write ? (ulong)HmmPfnFlags.ReqWrite : 0);
            pfns[DemandFirst..DemandEnd].Fill(req);
        }
    }
}
