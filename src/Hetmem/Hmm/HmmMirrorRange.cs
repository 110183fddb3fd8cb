using System.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Hmm;

/// <summary>
/// A range registered with the 5.1-era API (kernel 5.1: struct hmm_range with hmm_range_register,
/// hmm_range_wait_until_valid, hmm_range_snapshot, hmm_range_fault(range, block), hmm_range_valid,
/// hmm_range_dma_map/unmap). Entries use the driver's <see cref="HmmPfnEncoding"/>; one entry covers
/// <c>1 &lt;&lt; PageShift</c> bytes (4 KiB, or a hugetlbfs page). A thin facade: the walk is <see cref="HmmRange.Fault"/>,
/// and validity comes from the address space's <see cref="HmmState"/>.
/// </summary>
/// <remarks>
/// <para>Usage (kernel 5.1 pattern): <see cref="Register"/>; <see cref="WaitUntilValid"/>; take the mmap read lock;
/// <see cref="Snapshot"/> or <see cref="Fault"/>; on EAGAIN/EBUSY wait and retry (after <see cref="Fault"/>'s EAGAIN the
/// lock is already released); take the driver's update lock; if <see cref="Valid"/> is still true program the device;
/// drop the locks; <see cref="Unregister"/>.</para>
/// <para>Differences from the source version, chosen for determinism: the zero page is reported as a valid read-only
/// page (the later kernel behaviour; 5.1 reported it as SPECIAL); a snapshot that stops in a VMA at an ERROR entry
/// writes NONE into that VMA's remaining entries instead of leaving stale values; device-private pages are never
/// DMA-mapped.</para>
/// <para>Locking: <c>_hitEpoch</c> is written by invalidations (see <see cref="HmmState"/>) with volatile writes;
/// everything else belongs to the one thread using the range (with the mmap read lock for walks).</para>
/// </remarks>
public sealed partial class HmmMirrorRange
{
    internal long _hitEpoch = long.MaxValue; // see remarks: the HmmState epoch of the last overlapping invalidation
    private HmmState? _hmm;
    private ulong[] _scratch = [];   // one modern entry per 4 KiB page of the range
    private HmmRange? _walker;

    /// <summary>Creates an unregistered range using <paramref name="encoding"/>.</summary>
    /// <param name="encoding">The driver's entry encoding.</param>
    public HmmMirrorRange(HmmPfnEncoding encoding)
    {
        ArgumentNullException.ThrowIfNull(encoding);
        Encoding = encoding;
        Pfns = [];
    }

    /// <summary>The driver's encoding (kernel: flags, values, pfn_shift).</summary>
    public HmmPfnEncoding Encoding { get; }
    /// <summary>The per-address-space state while registered (kernel: range->hmm).</summary>
    public HmmState? Hmm => _hmm;
    /// <summary>First address.</summary>
    public ulong Start { get; private set; }
    /// <summary>End address (exclusive).</summary>
    public ulong End { get; private set; }
    /// <summary>log2 of the bytes one entry covers: 12, or the hugetlbfs page shift (kernel: page_shift).</summary>
    public int PageShift { get; private set; } = Page.Shift;
    /// <summary>One entry per <c>1 &lt;&lt; PageShift</c> bytes: request bits on input, results on output (kernel: pfns). Not erased by invalidations.</summary>
    public ulong[] Pfns { get; private set; }
    /// <summary>Request bits (driver encoding) applied to every entry (kernel: default_flags).</summary>
    public ulong DefaultFlags { get; set; }
    /// <summary>Which input bits of each entry are honoured (kernel: pfn_flags_mask).</summary>
    public ulong PfnFlagsMask { get; set; }
    /// <summary>The VMA walked last by <see cref="Snapshot"/> or <see cref="Fault"/> (kernel: range->vma).</summary>
    public Vma? Vma { get; private set; }
    /// <summary>Number of entries.</summary>
    public int Count => Pfns.Length;

    /// <summary>
    /// False from the start of any overlapping invalidation until every in-flight invalidation of the address space
    /// ended, and once the address space is dead or the range unregistered (kernel: hmm_range_valid / range->valid).
    /// </summary>
    public bool Valid => _hmm is HmmState h && h.IsValid(this);

    /// <summary>
    /// Registers the range (kernel 5.1: hmm_range_register): it starts tracking invalidations, valid only if none is in
    /// flight. Allocates <see cref="Pfns"/> (or uses <paramref name="pfns"/>) with one entry per <c>1 &lt;&lt; pageShift</c> bytes.
    /// </summary>
    /// <param name="space">The address space.</param>
    /// <param name="start">First address, aligned to <c>1 &lt;&lt; pageShift</c>.</param>
    /// <param name="end">End address, aligned likewise, above <paramref name="start"/>.</param>
    /// <param name="pageShift">12, or the huge page shift of the hugetlbfs VMA the range lies in (21, 30).</param>
    /// <param name="pfns">The entry array to use, or null to allocate one.</param>
    /// <returns>Ok; EINVAL for an unaligned or empty range, a page shift outside 12..30, an entry array of the wrong
    /// size, or a range that is already registered; EFAULT when the address space is dead.</returns>
    public Errno Register(AddressSpace space, ulong start, ulong end, int pageShift = Page.Shift, ulong[]? pfns = null)
    {
        if (space is null || _hmm is not null || pageShift is < Page.Shift or > Page.Shift + Page.PudOrder)
        {
            return Errno.EINVAL;
        }
        ulong mask = (1UL << pageShift) - 1;
        if ((start & mask) != 0 || (end & mask) != 0 || start >= end || end > AddressSpace.TaskSize + Page.Size)
        {
            return Errno.EINVAL;
        }
        ulong n = (end - start) >> pageShift;
        if (n > int.MaxValue || pfns is not null && (ulong)pfns.Length != n || (end - start) >> Page.Shift > int.MaxValue)
        {
            return Errno.EINVAL;
        }
        HmmState? hmm = HmmState.GetOrCreate(space);
        if (hmm is null)
        {
            return Errno.EFAULT;
        }
        Start = start;
        End = end;
        PageShift = pageShift;
        Pfns = pfns ?? (Pfns.Length == (int)n ? Pfns : new ulong[n]);
        int pages = (int)((end - start) >> Page.Shift);
        if (_scratch.Length != pages)
        {
            _scratch = new ulong[pages];
        }
        _walker = new HmmRange(space, this, start, end, _scratch);
        _hmm = hmm;
        if (!hmm.AddRange(this))
        {
            _hmm = null;
            hmm.Put();
            return Errno.EFAULT;
        }
        return Errno.Ok;
    }

    /// <summary>Stops tracking (kernel 5.1: hmm_range_unregister): <see cref="Valid"/> becomes false and waiters wake. No-op when not registered.</summary>
    public void Unregister()
    {
        HmmState? hmm = _hmm;
        if (hmm is null)
        {
            return;
        }
        _hmm = null;
        hmm.RemoveRange(this);
        hmm.Put();
    }

    /// <summary>
    /// Waits until the range is valid (kernel 5.1: hmm_range_wait_until_valid): false at once when the address space is
    /// dead or the range unregistered, true at once when valid, otherwise sleeps until valid, dead or
    /// <paramref name="timeoutMs"/> elapsed and returns <see cref="Valid"/>. Must not be called with the mmap lock held
    /// by a thread that an invalidation in flight waits for.
    /// </summary>
    /// <param name="timeoutMs">Longest wait in milliseconds (kernel: HMM_RANGE_DEFAULT_TIMEOUT = 1000).</param>
    /// <returns>The validity when the wait ended.</returns>
    public bool WaitUntilValid(int timeoutMs = HmmMirrorHelper.DefaultTimeoutMs)
    {
        HmmState? hmm = _hmm;
        return hmm is not null && hmm.WaitUntilValid(this, timeoutMs);
    }

    /// <summary>
    /// Reads the CPU page tables into <see cref="Pfns"/> without faulting (kernel 5.1: hmm_range_snapshot). The caller
    /// holds the mmap lock for read. Entries without a valid CPU mapping become <c>None</c>; a VMA's walk stops at an
    /// ERROR entry (bad entry) and its remaining entries become <c>None</c>; device-private pages of any owner are
    /// reported with the <c>DevicePrivate</c> flag.
    /// </summary>
    /// <param name="valid">Entries from <see cref="Start"/> that the walk reached (the kernel's positive return value).</param>
    /// <returns>Ok; EFAULT when the address space is dead, the range is not registered, or an address has no VMA or lies in a
    /// VM_IO/VM_PFNMAP/VM_MIXEDMAP VMA; EINVAL when <see cref="PageShift"/> does not fit a VMA; EPERM for an unreadable VMA
    /// (every entry then is <c>None</c>); EAGAIN when the range is not valid (wait and retry); EBUSY when a DAX page map is
    /// going away.</returns>
    public Errno Snapshot(out long valid) => Walk(fault: false, block: true, out valid);

    /// <summary>
    /// Faults the range according to the requests (kernel 5.1: hmm_range_fault(range, block)); per entry the request is
    /// <c>(Pfns[i] &amp; PfnFlagsMask) | DefaultFlags</c> in the driver's bits (<c>Valid</c> = fault, <c>Write</c> = for
    /// write, <c>DevicePrivate</c> = also migrate device-private pages back). The caller holds the mmap lock for read.
    /// With <paramref name="block"/> false, a fault that would wait for I/O (swap-in) is completed but the call then
    /// releases the mmap lock and returns EAGAIN, as the kernel's retryable fault does.
    /// </summary>
    /// <param name="block">False to allow the mmap lock to be dropped (kernel: FAULT_FLAG_ALLOW_RETRY).</param>
    /// <param name="valid">Entries from <see cref="Start"/> that the walk reached.</param>
    /// <returns>Ok; EAGAIN — and only then — with the mmap lock released (range not valid, or a retryable fault); EBUSY when
    /// the range was invalidated during the walk (wait and retry); EFAULT (dead, no VMA, special VMA or entry, fault failed);
    /// EPERM (write to a read-only VMA, or an unreadable VMA); EINVAL (page shift). On errors other than EAGAIN the
    /// entries from the failure point on are <c>None</c>.</returns>
    public Errno Fault(bool block, out long valid)
    {
        Errno r = Walk(fault: true, block, out valid);
        if (r == Errno.EAGAIN)
        {
            AddressSpace mm = _hmm?.Space ?? _walker!.Space;
            if (mm.MmapLock.IsWriteHeld)
            {
                mm.MmapLock.ExitWrite();
            }
            else
            {
                mm.MmapLock.ExitRead();
            }
        }
        return r;
    }

    private Errno Walk(bool fault, bool block, out long valid)
    {
        valid = 0;
        HmmState? hmm = _hmm;
        HmmRange? walker = _walker;
        if (hmm is null || walker is null || hmm.IsDead || !hmm.Space.IsAlive)
        {
            return Errno.EFAULT;
        }
        AddressSpace mm = hmm.Space;
        Debug.Assert(mm.MmapLock.IsHeld, "hmm_range_snapshot/hmm_range_fault need the mmap lock");
        ulong addr = Start;
        ulong reached = Start;
        walker._legacyNonBlocking = fault && !block;
        while (addr < End)
        {
            if (!Valid)
            {
                return Errno.EAGAIN;
            }
            Vma? vma = mm.Vmas.FindFirstEndingAbove(addr);
            if (vma is null || vma.Start > addr || (vma.Flags & (VmFlags.Io | VmFlags.PfnMap | VmFlags.MixedMap)) != 0)
            {
                SetNone(addr, End);
                return Errno.EFAULT;
            }
            int vmaShift = vma.Kind == VmaKind.HugeTlb ? Page.Shift + vma.HugeOrder : Page.Shift;
            if (PageShift != Page.Shift && PageShift != vmaShift)
            {
                return Errno.EINVAL;
            }
            Vma = vma;
            if ((vma.Flags & VmFlags.Read) == 0)
            {
                SetNone(Start, End);
                return Errno.EPERM;
            }
            ulong vend = Math.Min(vma.End, End);
            PrepareRequests(addr, vend, fault);
            Errno r = walker.FaultWindow(addr, vend);
            ulong last = walker.Last;
            ulong stop = Translate(addr, last, out bool hitError);
            if (r != Errno.Ok)
            {
                SetNone(stop, End);
                valid = (long)((stop - Start) >> PageShift);
                return r;
            }
            if (hitError)
            {
                // A bad entry ends this VMA's walk (kernel: the walker's error stops walk_page_range for the VMA).
                SetNone(stop, vend);
                if (fault)
                {
                    SetNone(vend, End);
                    valid = (long)((stop - Start) >> PageShift);
                    return Errno.EFAULT;
                }
                reached = stop;
            }
            else
            {
                reached = vend;
            }
            addr = vend;
        }
        valid = (long)((reached - Start) >> PageShift);
        return Errno.Ok;
    }

    /// <summary>Writes the modern requests for [start, end) into the scratch entries.</summary>
    private void PrepareRequests(ulong start, ulong end, bool fault)
    {
        HmmPfnEncoding enc = Encoding;
        int first = (int)((start - Start) >> Page.Shift);
        int n = (int)((end - start) >> Page.Shift);
        if (!fault)
        {
            Array.Clear(_scratch, first, n);
            return;
        }
        int perEntry = 1 << (PageShift - Page.Shift);
        for (int k = 0; k < n; k++)
        {
            int idx = first + k;
            ulong req = (Pfns[idx / perEntry] & PfnFlagsMask) | DefaultFlags;
            ulong m = 0;
            if ((req & enc.Valid) != 0)
            {
                m |= (ulong)HmmPfnFlags.ReqFault;
                if ((req & enc.Write) != 0)
                {
                    m |= (ulong)HmmPfnFlags.ReqWrite;
                }
                if ((req & enc.DevicePrivate) != 0)
                {
                    m |= HmmRange.LegacyDevicePrivate;
                }
            }
            _scratch[idx] = m;
        }
    }

    /// <summary>
    /// Translates the modern output of [start, last) into driver entries; returns where translation stopped (the first
    /// ERROR entry, or the last complete entry before <paramref name="last"/>).
    /// </summary>
    private ulong Translate(ulong start, ulong last, out bool hitError)
    {
        hitError = false;
        HmmPfnEncoding enc = Encoding;
        ulong entrySize = 1UL << PageShift;
        ulong a = start;
        for (; a + entrySize <= last; a += entrySize)
        {
            ulong e = _scratch[(int)((a - Start) >> Page.Shift)];
            int j = (int)((a - Start) >> PageShift);
            if ((e & (ulong)HmmPfnFlags.Error) != 0)
            {
                Pfns[j] = enc.Error;
                hitError = true;
                return a + entrySize;
            }
            if ((e & (ulong)HmmPfnFlags.Valid) == 0)
            {
                Pfns[j] = enc.None;
                continue;
            }
            ulong v = enc.FromPfn(HmmPfn.ToPfn(e) & ~HmmRange.LegacyDevicePrivate);
            if ((e & (ulong)HmmPfnFlags.Write) != 0)
            {
                v |= enc.Write;
            }
            if ((e & HmmRange.LegacyDevicePrivate) != 0)
            {
                v |= enc.DevicePrivate;
            }
            Pfns[j] = v;
        }
        return a;
    }

    private void SetNone(ulong from, ulong to)
    {
        if (to <= from)
        {
            return;
        }
        int a = (int)((from - Start) >> PageShift);
        int b = (int)((Page.AlignUp(to - Start, 1UL << PageShift)) >> PageShift);
        Array.Fill(Pfns, Encoding.None, a, Math.Min(b, Pfns.Length) - a);
    }
}
