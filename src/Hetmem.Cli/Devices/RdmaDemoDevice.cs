using System.Globalization;
using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Cli.Devices;

/// <summary>
/// The RDMA NIC (<see cref="RdmaDevice"/>, on-demand paging over HMM) as a demo participant: the NIC registers an ODP
/// memory region over each demo region of the address space, and a peer NIC in a second address space (connected
/// through a queue pair over loopback TCP) reads and writes them with one-sided RDMA READ and WRITE, so every
/// access is served through the NIC's own translations, faulted in with <c>hmm_range_fault</c>; device faults without
/// data movement are <c>ibv_advise_mr</c> prefetches.
/// </summary>
internal sealed class RdmaDemoDevice : IDemoDevice
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);
    private readonly RdmaDevice _nic;
    private readonly RdmaDevice _peer;
    private readonly AddressSpace _peerSpace;
    private readonly ProtectionDomain _pd;
    private readonly ProtectionDomain _peerPd;
    private readonly ulong _buf;
    private readonly MemoryRegion _local;
    private readonly CompletionQueue _cq;
    private readonly CompletionQueue _peerCq;
    private readonly QueuePair _qp;
    private readonly QueuePair _peerQp;
    private readonly List<(ulong Start, ulong End, string Label, OdpMemoryRegion Mr)> _regions = [];
    private readonly Lock _lock = new();          // one work request at a time through the peer's buffer
    private readonly ThreadLocal<Cpu> _peerCpus;  // the peer's CPUs, one per calling thread
    private ulong _wrId;                          // guarded by _lock
    private long _reads;                          // atomic
    private long _writes;                         // atomic
    private long _remoteErrors;                   // atomic
    private bool _disposed;

    public RdmaDemoDevice(AddressSpace mm, string name = "rxe0")
    {
        Name = name;
        _peerSpace = new AddressSpace(mm.Memory);
        _peerCpus = new ThreadLocal<Cpu>(() => new Cpu(_peerSpace), trackAllValues: true);
        _nic = new RdmaDevice(name);
        _peer = new RdmaDevice(name + "-peer");
        try
        {
            _pd = _nic.AllocPd(mm);
            _peerPd = _peer.AllocPd(_peerSpace);
            _buf = _peerSpace.Mmap(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Populate);
            _local = _peerPd.RegMr(_buf, Page.Size, AccessFlags.LOCAL_WRITE | AccessFlags.ON_DEMAND);
            _cq = _nic.CreateCq();
            _peerCq = _peer.CreateCq();
            _qp = _pd.CreateQp(new QpInitAttr(_cq, _cq));
            _peerQp = _peerPd.CreateQp(new QpInitAttr(_peerCq, _peerCq));
            QueuePair.ConnectPair(_peerQp, _qp);
        }
        catch
        {
            _peer.Dispose();
            _nic.Dispose();
            _peerSpace.Exit();
            throw;
        }
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public string Description => "RDMA NIC with ODP memory regions; a peer NIC issues RDMA READ/WRITE over loopback";

    /// <inheritdoc/>
    public void Attach(ulong start, ulong length, string label)
    {
        var mr = (OdpMemoryRegion)_pd.RegMr(start, length,
            AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_WRITE | AccessFlags.ON_DEMAND);
        _regions.Add((start, start + length, label, mr));
    }

    /// <inheritdoc/>
    public Errno Fault(ulong start, ulong end, bool write)
    {
        OdpMemoryRegion? mr = RegionOf(start);
        if (mr is null)
        {
            return Errno.EFAULT;
        }
        try
        {
            _pd.AdviseMr(write ? AdviseMrAdvice.PREFETCH_WRITE : AdviseMrAdvice.PREFETCH, AdviseMrFlags.FLUSH,
                [new Sge(start, (uint)(end - start), mr.Lkey)]);
            return Errno.Ok;
        }
        catch (MmException ex)
        {
            return ex.Errno;
        }
    }

    /// <inheritdoc/>
    public Errno ReadInt64(ulong address, out long value)
    {
        lock (_lock)
        {
            Errno e = Transfer(WrOpcode.RDMA_READ, address, sizeof(long));
            value = e == Errno.Ok ? _peerCpus.Value!.Read<long>(_buf) : 0;
            return e;
        }
    }

    /// <summary>One RDMA READ of the whole page into the peer's buffer, then the words from there.</summary>
    public Errno ReadWords(ulong page, ReadOnlySpan<ulong> offsets, Span<long> values)
    {
        lock (_lock)
        {
            Errno e = Transfer(WrOpcode.RDMA_READ, page, Page.Size);
            if (e != Errno.Ok)
            {
                return e;
            }
            Cpu cpu = _peerCpus.Value!;
            for (int i = 0; i < offsets.Length; i++)
            {
                values[i] = cpu.Read<long>(_buf + offsets[i]);
            }
            return Errno.Ok;
        }
    }

    /// <inheritdoc/>
    public Errno WriteInt64(ulong address, long value)
    {
        lock (_lock)
        {
            _peerCpus.Value!.Write(_buf, value);
            return Transfer(WrOpcode.RDMA_WRITE, address, sizeof(long));
        }
    }

    /// <inheritdoc/>
    public long ValidPages(ulong start, ulong end) => Count(start, end, write: false);

    /// <inheritdoc/>
    public long WritablePages(ulong start, ulong end) => Count(start, end, write: true);

    /// <inheritdoc/>
    public long HugeEntries(ulong start, ulong end)
    {
        long huge = 0;
        foreach ((ulong s, ulong e, string _, OdpMemoryRegion mr) in _regions)
        {
            for (ulong a = Math.Max(start, s); a < Math.Min(end, e); a += Page.Size)
            {
                huge += mr.IsRegistered && mr.TranslationOrder(a) >= Page.PmdOrder ? 1 : 0;
            }
        }
        return huge >> Page.PmdOrder;
    }

    /// <inheritdoc/>
    public long Invalidations(MmuNotifierEvent kind) => -1; // ODP counts invalidations, not their kinds; translations are checked instead

    /// <inheritdoc/>
    public IReadOnlyList<(string Metric, string Value)> Stats()
    {
        long S(Func<OdpStats, long> f) => _regions.Sum(r => f(r.Mr.Stats));
        return
        [
            ("ODP regions", string.Join(", ", _regions.Select(r => r.Label))),
            ("RDMA READ / WRITE by the peer", N(Interlocked.Read(ref _reads)) + " / " + N(Interlocked.Read(ref _writes))),
            ("remote access errors (EFAULT/EPERM completions)", N(Interlocked.Read(ref _remoteErrors))),
            ("page_faults / handled", N(S(s => s.PageFaults)) + " / " + N(S(s => s.PageFaultsHandled))),
            ("page_invalidations / handled", N(S(s => s.PageInvalidations)) + " / " + N(S(s => s.PageInvalidationsHandled))),
            ("page_prefetch", N(S(s => s.PagePrefetch))),
            ("pages present to the NIC now", N(_regions.Sum(r => r.Mr.IsRegistered ? r.Mr.PresentPages : 0))),
        ];
    }

    private static string N(long v) => v.ToString("#,0", CultureInfo.InvariantCulture);

    private OdpMemoryRegion? RegionOf(ulong address)
    {
        foreach ((ulong s, ulong e, string _, OdpMemoryRegion mr) in _regions)
        {
            if (address >= s && address < e)
            {
                return mr;
            }
        }
        return null;
    }

    private long Count(ulong start, ulong end, bool write)
    {
        long n = 0;
        foreach ((ulong s, ulong e, string _, OdpMemoryRegion mr) in _regions)
        {
            for (ulong a = Math.Max(start, s); a < Math.Min(end, e); a += Page.Size)
            {
                n += mr.IsRegistered && mr.IsPresent(a, write) ? 1 : 0;
            }
        }
        return n;
    }

    /// <summary>One signalled work request of the peer against the NIC's region; its completion's errno.</summary>
    private Errno Transfer(WrOpcode op, ulong remote, int bytes)
    {
        OdpMemoryRegion? mr = RegionOf(remote);
        if (mr is null)
        {
            return Errno.EFAULT;
        }
        _peerQp.PostSend(new SendWr
        {
            WrId = ++_wrId,
            Opcode = op,
            SendFlags = SendFlags.SIGNALED,
            SgList = [new Sge(_buf, (uint)bytes, _local.Lkey)],
            RemoteAddr = remote,
            Rkey = mr.Rkey,
        });
        WorkCompletion wc = _peerCq.Wait(s_timeout);
        Interlocked.Increment(ref op == WrOpcode.RDMA_READ ? ref _reads : ref _writes);
        if (wc.Status == WcStatus.SUCCESS)
        {
            return Errno.Ok;
        }
        Interlocked.Increment(ref _remoteErrors);
        return wc.Status == WcStatus.REM_ACCESS_ERR && wc.VendorErr != 0 ? (Errno)wc.VendorErr : Errno.EIO;
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _peerQp.Dispose();
        _qp.Dispose();
        foreach ((ulong _, ulong _, string _, OdpMemoryRegion mr) in _regions)
        {
            mr.Deregister();
        }
        _local.Deregister();
        _peer.Dispose();
        _nic.Dispose();
        foreach (Cpu c in _peerCpus.Values)
        {
            c.Dispose();
        }
        _peerCpus.Dispose();
        _peerSpace.Exit();
    }
}
