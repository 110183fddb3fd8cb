using System.Diagnostics;
using System.Runtime.InteropServices;
using Hetmem.Diagnostics;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Dmirror;

/// <summary>
/// An open file of a dmirror node: a mirror of one address space (kernel: struct dmirror, the file's private data in
/// lib/test_hmm.c). It owns a device page table, an interval notifier over the whole address space whose callback
/// erases mirror entries, and the flag word of <see cref="DmirrorCommand.Flags"/>.
/// </summary>
/// <remarks>
/// <para><b>Overview.</b> <see cref="Ioctl"/> runs the test driver's commands. READ and WRITE copy through the
/// mirror and fault it with <see cref="HmmMirrorHelper.FaultAndProgram"/> (windows of 32 pages, dev_private_owner =
/// the node) when an entry is missing; SNAPSHOT encodes <see cref="HmmRange.Fault"/> results without faulting;
/// MIGRATE_TO_DEV, MIGRATE_TO_SYS, EXCLUSIVE and CHECK_EXCLUSIVE use migrate_vma and device-exclusive entries;
/// RELEASE evicts the node's memory; FLAGS sets <see cref="Flags"/>. The user buffer <c>ptr</c> is an address in
/// the caller's address space, copied like copy_to_user / copy_from_user through a <see cref="Cpu"/>.</para>
/// <para><b>Locking.</b> <c>_mutex</c> (kernel: dmirror-&gt;mutex, the driver's update lock of the HMM
/// documentation, <see cref="LockClass.DeviceUpdate"/>) protects the page table; the invalidate callback takes it
/// (or try-takes it when it may not block), sets the notifier sequence and erases entries. It is never held while
/// calling into the mm. <c>_flags</c> is atomic.</para>
/// </remarks>
public sealed unsafe partial class DmirrorFile : IMmuIntervalNotifierOps, IDeviceMirror, IDisposable
{
    /// <summary>Pages per fault or snapshot window (kernel: the 32-entry pfns arrays of dmirror_fault / dmirror_snapshot).</summary>
    public const int WindowPages = 32;
    /// <summary>Top of the mirrored interval: the whole address space up to the last page (kernel: ULONG_MAX &amp; PAGE_MASK).</summary>
    public const ulong MirrorLength = ulong.MaxValue & ~Page.OffsetMask;

    private readonly Lock _mutex = new();                          // kernel dmirror->mutex; guards _pt
    private readonly DmirrorPageTable _pt = new();                 // guarded by _mutex
    private readonly MmuIntervalNotifier _notifier;                // immutable
    private readonly SnapshotInvalidator _snapshotOps;             // immutable
    private long _flags;                                           // atomic
    private int _closed;                                           // atomic
    private Cpu? _cpuCache;                                        // atomic exchange; a Cpu on Space for copies when no caller Cpu is given
    private string? _lastError;                                    // racy diagnostics only

    internal DmirrorFile(DmirrorDevice device, AddressSpace mm)
    {
        Device = device;
        Space = mm;
        _snapshotOps = new SnapshotInvalidator(this);
        _notifier = MmuIntervalNotifier.Insert(mm, 0, MirrorLength, this);
    }

    /// <summary>The node this file was opened on (kernel: dmirror-&gt;mdevice).</summary>
    public DmirrorDevice Device { get; }

    /// <summary>The mirrored address space (kernel: dmirror-&gt;notifier.mm).</summary>
    public AddressSpace Space { get; }

    /// <summary>The flag word set by <see cref="DmirrorCommand.Flags"/>.</summary>
    public DmirrorFlags Flags => (DmirrorFlags)(ulong)Interlocked.Read(ref _flags);

    /// <summary>True after <see cref="Close"/>.</summary>
    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    /// <summary>What the last failing command ran into (the driver's kernel-log line), or null.</summary>
    public string? LastError => Volatile.Read(ref _lastError);

    /// <summary>Number of entries in the mirror's page table.</summary>
    public long MirroredPages
    {
        get
        {
            lock (_mutex)
            {
                return _pt.Count;
            }
        }
    }

    /// <summary>The mirror entry of the page at <paramref name="address"/>: the PFN holding its data and its tag.</summary>
    /// <returns>False when the device has no translation for the page.</returns>
    public bool TryGetMirrorEntry(ulong address, out ulong pfn, out bool writable, out bool atomic)
    {
        lock (_mutex)
        {
            bool found = _pt.TryGet(address >> Page.Shift, out pfn, out DmirrorTag tag);
            writable = found && tag == DmirrorTag.Write;
            atomic = found && tag == DmirrorTag.Atomic;
            return found;
        }
    }

    Lock IDeviceMirror.UpdateLock => _mutex;

    /// <summary>
    /// Runs a device command (kernel: dmirror_fops_unlocked_ioctl). Validation first: <c>Addr</c> must be page
    /// aligned and <c>Addr + (Npages &lt;&lt; 12)</c> must be strictly above <c>Addr</c> (so zero pages and wrap-around
    /// are rejected); then <c>Cpages</c> and <c>Faults</c> are reset and the command runs. On success
    /// <paramref name="cmd"/> receives the results; on failure it is left unchanged. <paramref name="caller"/> is the
    /// calling thread's CPU, through which <c>Ptr</c> is copied (default: a CPU on <see cref="Space"/>).
    /// </summary>
    /// <exception cref="MmException">
    /// EINVAL (unaligned address, empty or wrapping range, unknown command, migration over a range without a readable
    /// VMA), EFAULT (the range cannot be mirrored: no VMA or no read permission; <c>Ptr</c> not accessible), EPERM
    /// (write to a read-only VMA; CHECK_EXCLUSIVE found an exclusive page), ENOENT (pages not readable through the
    /// mirror after a migration), EBUSY (invalidations kept colliding for 1 s), ENOMEM (no memory for the bounce
    /// buffer or a migration), EBADF (the file is closed).
    /// </exception>
    public void Ioctl(DmirrorCommand command, ref DmirrorCmd cmd, Cpu? caller = null)
    {
        Errno e = TryIoctl(command, ref cmd, caller);
        if (e != Errno.Ok)
        {
            MmException.Throw(e, $"hmm_dmirror{Device.Id} {command} [0x{cmd.Addr:x}, +{cmd.Npages} pages): {LastError}");
        }
    }

    /// <summary>
    /// <see cref="Ioctl"/> returning the errno instead of throwing (the value a user sees as <c>-errno</c>).
    /// </summary>
    /// <returns>Ok, or the errno listed for <see cref="Ioctl"/>.</returns>
    public Errno TryIoctl(DmirrorCommand command, ref DmirrorCmd cmd, Cpu? caller = null)
    {
        if (IsClosed)
        {
            return Fail(Errno.EBADF, "the file is closed");
        }
        DmirrorCmd c = cmd;
        if ((c.Addr & Page.OffsetMask) != 0)
        {
            return Fail(Errno.EINVAL, $"address 0x{c.Addr:x} is not page aligned");
        }
        if (c.Addr >= unchecked(c.Addr + (c.Npages << Page.Shift)))
        {
            return Fail(Errno.EINVAL, $"[0x{c.Addr:x}, +{c.Npages} pages) is empty or wraps");
        }
        c.Cpages = 0;
        c.Faults = 0;
        Errno r;
        switch (command)
        {
            case DmirrorCommand.Read:
                r = Read(ref c, caller);
                break;
            case DmirrorCommand.Write:
                r = Write(ref c, caller);
                break;
            case DmirrorCommand.MigrateToDevice:
                r = MigrateToDevice(ref c, caller);
                break;
            case DmirrorCommand.MigrateToSystem:
                r = MigrateToSystem(ref c);
                break;
            case DmirrorCommand.Exclusive:
                r = Exclusive(ref c, caller);
                break;
            case DmirrorCommand.CheckExclusive:
                r = CheckExclusive(c.Addr, c.Addr + (c.Npages << Page.Shift));
                break;
            case DmirrorCommand.Snapshot:
                r = Snapshot(ref c, caller);
                break;
            case DmirrorCommand.Release:
                Device.RemoveChunks();
                r = Errno.Ok;
                break;
            case DmirrorCommand.Flags:
                Interlocked.Exchange(ref _flags, (long)c.Npages);
                r = Errno.Ok;
                break;
            default:
                return Fail(Errno.EINVAL, $"unknown command {command}");
        }
        if (r != Errno.Ok)
        {
            return r;
        }
        cmd = c;
        return Errno.Ok;
    }

    /// <summary>
    /// Maps the device file (kernel: dmirror_fops_mmap): every page of the new VM_MIXEDMAP mapping is a fresh zeroed
    /// page inserted with vm_insert_page. A private mapping's pages are read-only until written (COW).
    /// </summary>
    /// <exception cref="MmException">EINVAL for a zero length, ENOMEM when memory or room runs out, EBADF when closed.</exception>
    public ulong Mmap(ulong address, ulong length, Prot prot, MapFlags flags)
    {
        if (IsClosed)
        {
            MmException.Throw(Errno.EBADF, "mmap of a closed hmm_dmirror file");
        }
        return Space.MapMixedPages(address, length, prot, flags);
    }

    /// <summary>
    /// Closes the file (kernel: dmirror_fops_release): removes the notifier, then evicts every memory chunk of the
    /// node back to system memory (pages migrated through other files of the node included), then frees the page
    /// table. Idempotent.
    /// </summary>
    public void Close()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0)
        {
            return;
        }
        _notifier.Remove();
        Device.EvictAllChunks();
        lock (_mutex)
        {
            _pt.Clear();
        }
        Interlocked.Exchange(ref _cpuCache, null)?.Dispose();
        FreeBounceCache();
    }

    /// <summary>Same as <see cref="Close"/>.</summary>
    public void Dispose() => Close();

    // ---- errors -------------------------------------------------------------------------------------------------

    private Errno Fail(Errno e, string message)
    {
        Volatile.Write(ref _lastError, $"{e}: {message}");
        return e;
    }

    // ---- the invalidate callback --------------------------------------------------------------------------------

    /// <summary>
    /// kernel: dmirror_interval_invalidate. Ignores MIGRATE events this node caused (the migration updates the mirror
    /// itself); otherwise sets the sequence and erases the mirror entries of the range under the mutex, try-locking
    /// when the caller cannot block. Allocates nothing.
    /// </summary>
    bool IMmuIntervalNotifierOps.Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
    {
        if (range.Event == MmuNotifierEvent.Migrate && ReferenceEquals(range.Owner, Device))
        {
            return true;
        }
        if (range.Blockable)
        {
            _mutex.Enter();
        }
        else if (!_mutex.TryEnter())
        {
            return false;
        }
        try
        {
            subscription.SetSeq(curSeq);
            ulong endVpn = (range.End >> Page.Shift) + ((range.End & Page.OffsetMask) != 0 ? 1UL : 0UL);
            _pt.EraseRange(range.Start >> Page.Shift, endVpn);
        }
        finally
        {
            _mutex.Exit();
        }
        return true;
    }

    /// <summary>The temporary notifier of a snapshot window: any invalidation only moves its sequence (kernel: dmirror_snapshot_invalidate).</summary>
    private sealed class SnapshotInvalidator(DmirrorFile file) : IMmuIntervalNotifierOps
    {
        public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
        {
            if (range.Blockable)
            {
                file._mutex.Enter();
            }
            else if (!file._mutex.TryEnter())
            {
                return false;
            }
            subscription.SetSeq(curSeq);
            file._mutex.Exit();
            return true;
        }
    }

    // ---- user copies --------------------------------------------------------------------------------------------

    private Cpu RentCpu(Cpu? caller) => caller ?? Interlocked.Exchange(ref _cpuCache, null) ?? new Cpu(Space);

    private void ReturnCpu(Cpu cpu, Cpu? caller)
    {
        if (cpu != caller && Interlocked.CompareExchange(ref _cpuCache, cpu, null) != null)
        {
            cpu.Dispose();
        }
    }

    /// <summary>kernel: copy_to_user. EFAULT when any byte of the destination is not writable.</summary>
    private Errno CopyToUser(Cpu? caller, ulong ptr, byte* src, ulong length)
    {
        Cpu cpu = RentCpu(caller);
        try
        {
            for (ulong off = 0; off < length;)
            {
                int n = (int)Math.Min(length - off, 1UL << 30);
                cpu.Write(ptr + off, new ReadOnlySpan<byte>(src + off, n));
                off += (ulong)n;
            }
            return Errno.Ok;
        }
        catch (Exception ex) when (ex is SegmentationFault or BusError or MmException)
        {
            return Fail(Errno.EFAULT, $"copy to user buffer 0x{ptr:x}: {ex.Message}");
        }
        finally
        {
            ReturnCpu(cpu, caller);
        }
    }

    /// <summary>kernel: copy_from_user. EFAULT when any byte of the source is not readable.</summary>
    private Errno CopyFromUser(Cpu? caller, byte* dst, ulong ptr, ulong length)
    {
        Cpu cpu = RentCpu(caller);
        try
        {
            for (ulong off = 0; off < length;)
            {
                int n = (int)Math.Min(length - off, 1UL << 30);
                cpu.Read(ptr + off, new Span<byte>(dst + off, n));
                off += (ulong)n;
            }
            return Errno.Ok;
        }
        catch (Exception ex) when (ex is SegmentationFault or BusError or MmException)
        {
            return Fail(Errno.EFAULT, $"copy from user buffer 0x{ptr:x}: {ex.Message}");
        }
        finally
        {
            ReturnCpu(cpu, caller);
        }
    }

    /// <summary>A bounce buffer of <paramref name="size"/> bytes (kernel: dmirror_bounce_init's vmalloc); null when it cannot be had.</summary>
    private static byte* AllocBounce(ulong size)
    {
        try
        {
            return (byte*)NativeMemory.Alloc((nuint)size);
        }
        catch (OutOfMemoryException)
        {
            return null;
        }
    }

    // ---- READ / WRITE -------------------------------------------------------------------------------------------

    /// <summary>kernel: dmirror_read.</summary>
    private Errno Read(ref DmirrorCmd cmd, Cpu? caller)
    {
        ulong size = cmd.Npages << Page.Shift;
        ulong start = cmd.Addr;
        ulong end = start + size;
        byte* bounce = RentBounce(size, out ulong bounceCapacity);
        if (bounce == null)
        {
            return Fail(Errno.ENOMEM, $"no memory for a {size}-byte bounce buffer");
        }
        try
        {
            ulong cpages = 0;
            Errno ret;
            while (true)
            {
                lock (_mutex)
                {
                    ret = DoReadLocked(start, end, bounce, cmd.Addr, ref cpages);
                }
                if (ret != Errno.ENOENT)
                {
                    break;
                }
                start = cmd.Addr + (cpages << Page.Shift);
                ret = FaultRange(start, end, write: false);
                if (ret != Errno.Ok)
                {
                    break;
                }
                cmd.Faults++;
            }
            if (ret == Errno.Ok)
            {
                ret = CopyToUser(caller, cmd.Ptr, bounce, size);
            }
            cmd.Cpages = cpages;
            return ret;
        }
        finally
        {
            ReturnBounce(bounce, bounceCapacity);
        }
    }

    /// <summary>kernel: dmirror_do_read. Copies mirrored pages into the bounce buffer until one is missing (ENOENT).</summary>
    private Errno DoReadLocked(ulong start, ulong end, byte* bounce, ulong bounceAddr, ref ulong cpages)
    {
        Debug.Assert(_mutex.IsHeldByCurrentThread);
        byte* dst = bounce + ((start - bounceAddr) & ~Page.OffsetMask);
        PhysicalMemory mem = Device.Memory;
        for (ulong vpn = start >> Page.Shift; vpn < end >> Page.Shift; vpn++)
        {
            if (!_pt.TryGet(vpn, out ulong pfn, out _))
            {
                return Errno.ENOENT;
            }
            byte* src = mem.Address(pfn);
            if (src == null)
            {
                return Fail(Errno.EFAULT, $"mirror entry of 0x{vpn << Page.Shift:x} points at PFN 0x{pfn:x} without memory");
            }
            Buffer.MemoryCopy(src, dst, Page.Size, Page.Size);
            dst += Page.Size;
            cpages++;
        }
        return Errno.Ok;
    }

    /// <summary>kernel: dmirror_write.</summary>
    private Errno Write(ref DmirrorCmd cmd, Cpu? caller)
    {
        ulong size = cmd.Npages << Page.Shift;
        ulong start = cmd.Addr;
        ulong end = start + size;
        byte* bounce = RentBounce(size, out ulong bounceCapacity);
        if (bounce == null)
        {
            return Fail(Errno.ENOMEM, $"no memory for a {size}-byte bounce buffer");
        }
        try
        {
            ulong cpages = 0;
            Errno ret = CopyFromUser(caller, bounce, cmd.Ptr, size);
            while (ret == Errno.Ok)
            {
                lock (_mutex)
                {
                    ret = DoWriteLocked(start, end, bounce, cmd.Addr, ref cpages);
                }
                if (ret != Errno.ENOENT)
                {
                    break;
                }
                start = cmd.Addr + (cpages << Page.Shift);
                ret = FaultRange(start, end, write: true);
                if (ret != Errno.Ok)
                {
                    break;
                }
                cmd.Faults++;
            }
            cmd.Cpages = cpages;
            return ret;
        }
        finally
        {
            ReturnBounce(bounce, bounceCapacity);
        }
    }

    /// <summary>kernel: dmirror_do_write. Copies the bounce buffer into pages mirrored writable until one is not (ENOENT).</summary>
    private Errno DoWriteLocked(ulong start, ulong end, byte* bounce, ulong bounceAddr, ref ulong cpages)
    {
        Debug.Assert(_mutex.IsHeldByCurrentThread);
        byte* src = bounce + ((start - bounceAddr) & ~Page.OffsetMask);
        PhysicalMemory mem = Device.Memory;
        for (ulong vpn = start >> Page.Shift; vpn < end >> Page.Shift; vpn++)
        {
            if (!_pt.TryGet(vpn, out ulong pfn, out DmirrorTag tag) || tag != DmirrorTag.Write)
            {
                return Errno.ENOENT;
            }
            byte* dst = mem.Address(pfn);
            if (dst == null)
            {
                return Fail(Errno.EFAULT, $"mirror entry of 0x{vpn << Page.Shift:x} points at PFN 0x{pfn:x} without memory");
            }
            Buffer.MemoryCopy(src, dst, Page.Size, Page.Size);
            src += Page.Size;
            cpages++;
        }
        return Errno.Ok;
    }

    // ---- the fault pass -----------------------------------------------------------------------------------------

    /// <summary>
    /// kernel: dmirror_fault. Faults [start, end) into the mirror in windows of <see cref="WindowPages"/> pages through
    /// <see cref="HmmMirrorHelper.FaultAndProgram"/> with default flags REQ_FAULT (| REQ_WRITE) and
    /// dev_private_owner = the node.
    /// </summary>
    /// <returns>Ok; EFAULT (no VMA, unreadable VMA, special mapping, fault error, or the address space exited — the
    /// kernel returns 0 there and would retry forever); EPERM (write to a read-only VMA); EBUSY (1 s of collisions).</returns>
    private Errno FaultRange(ulong start, ulong end, bool write)
    {
        if (!Space.TryGetLiveReference())
        {
            return Fail(Errno.EFAULT, "the mirrored address space has exited");
        }
        try
        {
            var range = new HmmRange(_notifier, start, Math.Min(start + ((ulong)WindowPages << Page.Shift), end))
            {
                DefaultFlags = HmmPfnFlags.ReqFault | (write ? HmmPfnFlags.ReqWrite : HmmPfnFlags.None),
                PfnFlagsMask = HmmPfnFlags.None,
                DevPrivateOwner = Device,
            };
            for (ulong addr = start; addr < end; addr = range.End)
            {
                range.SetRange(addr, Math.Min(addr + ((ulong)WindowPages << Page.Shift), end));
                Counters.Inc(Counter.DeviceFault);
                Errno r = HmmMirrorHelper.FaultAndProgram(this, range);
                if (r != Errno.Ok)
                {
                    return Fail(r, $"{(write ? "write" : "read")} fault of [0x{range.Start:x}, 0x{range.End:x}) failed");
                }
            }
            return Errno.Ok;
        }
        finally
        {
            Space.PutLiveReference();
        }
    }

    /// <summary>
    /// kernel: dmirror_do_fault. Stores every page of the window in the mirror, tagged WRITE when the CPU entry is
    /// writable. A page of this node's private memory is stored as its backing page (the page that holds the data).
    /// Called by <see cref="HmmMirrorHelper.FaultAndProgram"/> with the mutex held after the sequence check.
    /// </summary>
    Errno IDeviceMirror.ProgramDevice(HmmRange range)
    {
        Debug.Assert(_mutex.IsHeldByCurrentThread);
        bool wantWrite = (range.DefaultFlags & HmmPfnFlags.ReqWrite) != 0;
        ulong vpn = range.Start >> Page.Shift;
        ulong[] pfns = range.HmmPfns;
        PhysicalMemory mem = Device.Memory;
        for (int i = 0; i < pfns.Length; i++)
        {
            ulong e = pfns[i];
            Debug.Assert(HmmPfn.Has(e, HmmPfnFlags.Valid) && !HmmPfn.Has(e, HmmPfnFlags.Error), $"fault pass returned entry 0x{e:x}");
            ulong pfn = HmmPfn.ToPfn(e);
            if (!mem.IsRam(pfn) && Device.IsPrivate && Device.Owns(pfn))
            {
                pfn = Device.BackingPage(pfn);
                if (pfn == Page.NoPfn)
                {
                    return Fail(Errno.EFAULT, $"device page for 0x{(vpn + (ulong)i) << Page.Shift:x} has no backing page");
                }
            }
            DmirrorTag tag = DmirrorTag.Read;
            if (HmmPfn.Has(e, HmmPfnFlags.Write))
            {
                tag = DmirrorTag.Write;
            }
            else if (wantWrite)
            {
                return Fail(Errno.EFAULT, $"a write fault returned a read-only entry for 0x{(vpn + (ulong)i) << Page.Shift:x}");
            }
            _pt.Store(vpn + (ulong)i, pfn, tag);
        }
        return Errno.Ok;
    }

    // ---- SNAPSHOT -----------------------------------------------------------------------------------------------

    /// <summary>kernel: dmirror_snapshot. One byte per page, windows of <see cref="WindowPages"/>, nothing faulted.</summary>
    private Errno Snapshot(ref DmirrorCmd cmd, Cpu? caller)
    {
        ulong start = cmd.Addr;
        ulong end = start + (cmd.Npages << Page.Shift);
        if (!Space.TryGetLiveReference())
        {
            return Fail(Errno.EINVAL, "the mirrored address space has exited");
        }
        byte* perm = stackalloc byte[WindowPages];
        try
        {
            HmmRange? range = null;
            ulong uptr = cmd.Ptr;
            for (ulong addr = start; addr < end;)
            {
                ulong next = Math.Min(addr + ((ulong)WindowPages << Page.Shift), end);
                MmuIntervalNotifier notifier;
                try
                {
                    notifier = MmuIntervalNotifier.Insert(Space, addr, next - addr, _snapshotOps);
                }
                catch (MmException ex)
                {
                    return Fail(ex.Errno, ex.Message);
                }
                Errno r;
                try
                {
                    if (range is null)
                    {
                        range = new HmmRange(notifier, addr, next) { DevPrivateOwner = Device };
                    }
                    else
                    {
                        range.Notifier = notifier;
                        range.SetRange(addr, next);
                    }
                    r = HmmMirrorHelper.FaultAndProgram(new SnapshotSink(this, perm), range);
                }
                finally
                {
                    notifier.Remove();
                }
                if (r != Errno.Ok)
                {
                    return Fail(r, $"snapshot of [0x{addr:x}, 0x{next:x}) failed");
                }
                ulong n = (next - addr) >> Page.Shift;
                Errno c = CopyToUser(caller, uptr, perm, n);
                if (c != Errno.Ok)
                {
                    return c;
                }
                cmd.Cpages += n;
                uptr += n;
                addr = next;
            }
            return Errno.Ok;
        }
        finally
        {
            Space.PutLiveReference();
        }
    }

    /// <summary>Encodes one snapshot window under the mutex (kernel: the dmirror_mkentry loop of dmirror_range_snapshot).</summary>
    private readonly struct SnapshotSink(DmirrorFile file, byte* perm) : IDeviceMirror
    {
        public Lock UpdateLock => file._mutex;

        public Errno ProgramDevice(HmmRange range)
        {
            ulong[] pfns = range.HmmPfns;
            for (int i = 0; i < pfns.Length; i++)
            {
                perm[i] = file.MakeEntry(pfns[i]);
            }
            return Errno.Ok;
        }
    }

    /// <summary>kernel: dmirror_mkentry — the HMM_DMIRROR_PROT_* byte of one hmm_pfns entry.</summary>
    internal byte MakeEntry(ulong entry)
    {
        if (HmmPfn.Has(entry, HmmPfnFlags.Error))
        {
            return DmirrorProt.Error;
        }
        if (!HmmPfn.Has(entry, HmmPfnFlags.Valid))
        {
            return DmirrorProt.None;
        }
        ulong pfn = HmmPfn.ToPfn(entry);
        PhysicalMemory mem = Device.Memory;
        byte perm = DmirrorProt.None;
        if (mem.IsRam(pfn))
        {
            if (pfn == mem.ZeroPfn)
            {
                perm = DmirrorProt.Zero;
            }
        }
        else if (mem.FindMap(pfn) is { } map)
        {
            bool local = ReferenceEquals(map.Owner, Device);
            perm = map.Type switch
            {
                MemoryType.DevicePrivate => local ? DmirrorProt.DevPrivateLocal : DmirrorProt.DevPrivateRemote,
                MemoryType.DeviceCoherent => local ? DmirrorProt.DevCoherentLocal : DmirrorProt.DevCoherentRemote,
                _ => DmirrorProt.None,
            };
        }
        perm |= HmmPfn.Has(entry, HmmPfnFlags.Write) ? DmirrorProt.Write : DmirrorProt.Read;
        int order = HmmPfn.MapOrder(entry);
        if (order == Page.PmdOrder)
        {
            perm |= DmirrorProt.Pmd;
        }
        else if (order == Page.PudOrder)
        {
            perm |= DmirrorProt.Pud;
        }
        return perm;
    }

    // ---- CHECK_EXCLUSIVE ----------------------------------------------------------------------------------------

    /// <summary>kernel: dmirror_check_atomic. EPERM when any page of the range is still mirrored with the ATOMIC tag.</summary>
    private Errno CheckExclusive(ulong start, ulong end)
    {
        lock (_mutex)
        {
            if (_pt.AnyWithTag(start >> Page.Shift, end >> Page.Shift, DmirrorTag.Atomic))
            {
                return Fail(Errno.EPERM, $"a page of [0x{start:x}, 0x{end:x}) is still held exclusively by the device");
            }
        }
        return Errno.Ok;
    }
}
