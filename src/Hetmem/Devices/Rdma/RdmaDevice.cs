using System.Net;
using System.Net.Sockets;
using Hetmem.Mm;

namespace Hetmem.Devices.Rdma;

/// <summary>
/// A software RDMA NIC with on-demand paging (rdma-core: struct ibv_context of an opened device; kernel: the rxe
/// driver's ib_device with mlx5's ODP behaviour). It listens on a TCP port of the loopback interface: queue pairs of
/// other devices, in this process or another, connect to it and drive one-sided READ, WRITE, atomics and FLUSH
/// against its registered memory.
/// </summary>
/// <remarks>
/// <para>Object model: <see cref="AllocPd"/> → <see cref="ProtectionDomain"/> → <see cref="MemoryRegion"/>s
/// (<see cref="MrKind.Pinned"/>, <see cref="MrKind.Odp"/>, <see cref="MrKind.ImplicitOdp"/>) and
/// <see cref="QueuePair"/>s; <see cref="CreateCq"/> → <see cref="CompletionQueue"/>.</para>
/// <para>Keys: an lkey/rkey is index &lt;&lt; 8 | an 8-bit variant that changes each time the index is reused, as mlx5
/// builds mkeys, so a stale key of a deregistered region never resolves to its successor.</para>
/// <para>Locking: <c>_lock</c> is a leaf guarding the key table (published copy-on-write, read lock-free), the QP
/// table, the implicit-region list and the domain set.</para>
/// </remarks>
public sealed class RdmaDevice : IDisposable
{
    /// <summary>The transport's largest message (port attribute max_msg_sz).</summary>
    public const uint MaxMsgSize = RdmaWire.MaxPayload;

    private readonly object _lock = new();
    private MemoryRegion?[] _keys = new MemoryRegion?[256];      // slots written under _lock, array read lock-free
    private byte[] _variants = new byte[256];                     // guarded by _lock
    private readonly Stack<int> _freeKeyIndexes = new();         // guarded by _lock
    private int _nextKeyIndex = 1;                                // guarded by _lock
    private readonly Dictionary<uint, QueuePair> _qps = [];      // guarded by _lock
    private readonly HashSet<ProtectionDomain> _pds = [];        // guarded by _lock
    private ImplicitOdpMemoryRegion[] _implicit = [];             // copy-on-write under _lock
    private uint _nextQpn = 0x11;                                 // guarded by _lock
    private readonly Socket _listener;
    private readonly Thread _acceptThread;
    private long _internalErrors;                                 // Interlocked
    private Exception? _lastInternalError;                        // written with Volatile
    private int _disposed;                                        // Interlocked

    /// <summary>Opens a device listening on 127.0.0.1:<paramref name="port"/> (0 = any free port).</summary>
    /// <exception cref="MmException">EINVAL when the listening socket cannot be bound (port in use).</exception>
    public RdmaDevice(string name = "hetmem_rxe0", int port = 0)
    {
        Name = name;
        Attr = new DeviceAttr(
            MaxMrSize: 1UL << 46,
            MaxQpWr: 4096,
            MaxSge: 16,
            MaxCqe: 1 << 20,
            MaxMsgSize: MaxMsgSize,
            OdpCaps: new OdpCaps(GeneralCaps: 1 | 2, RcOdpCaps: 1 | 2 | 4 | 8 | 16 | 64 | 128));
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            _listener.Bind(new IPEndPoint(IPAddress.Loopback, port));
            _listener.Listen(64);
        }
        catch (SocketException ex)
        {
            _listener.Dispose();
            MmException.Throw(Errno.EINVAL, $"device {name}: cannot listen on 127.0.0.1:{port}: {ex.Message}");
        }
        LocalEndPoint = (IPEndPoint)_listener.LocalEndPoint!;
        FaultQueue = new OdpFaultQueue(this);
        _acceptThread = new Thread(AcceptLoop) { IsBackground = true, Name = $"{name} accept" };
        _acceptThread.Start();
    }

    /// <summary>The device name (ibv_get_device_name).</summary>
    public string Name { get; }

    /// <summary>Where remote queue pairs connect.</summary>
    public IPEndPoint LocalEndPoint { get; }

    /// <summary>The device's capabilities (ibv_query_device_ex).</summary>
    public DeviceAttr Attr { get; }

    /// <summary>
    /// Exceptions caught on the device's own threads (responders, receive loops, the page-fault worker), including
    /// invariant violations. A correct run has none.
    /// </summary>
    public long InternalErrors => Interlocked.Read(ref _internalErrors);

    /// <summary>The last exception counted in <see cref="InternalErrors"/>.</summary>
    public Exception? LastInternalError => Volatile.Read(ref _lastInternalError);

    /// <summary>Demand faults the page-fault worker serviced for remote requests.</summary>
    public long ResponderFaults => FaultQueue.Faults;

    /// <summary>Prefetches the worker ran after a remote fault (mlx5: the post-resume prefetch).</summary>
    public long ResponderPrefetches => FaultQueue.Prefetches;

    internal OdpFaultQueue FaultQueue { get; }

    /// <summary>Allocates a protection domain over <paramref name="space"/> (ibv_alloc_pd in the context of that process).</summary>
    /// <exception cref="MmException">EINVAL when the address space is dead; ENODEV after <see cref="Dispose"/>.</exception>
    public ProtectionDomain AllocPd(AddressSpace space)
    {
        ArgumentNullException.ThrowIfNull(space);
        if (!space.IsAlive)
        {
            MmException.Throw(Errno.EINVAL, "alloc_pd over a dead address space");
        }
        var pd = new ProtectionDomain(this, space);
        lock (_lock)
        {
            ThrowIfDisposed();
            _pds.Add(pd);
        }
        return pd;
    }

    /// <summary>Creates a completion queue of <paramref name="cqe"/> entries (ibv_create_cq).</summary>
    /// <exception cref="MmException">EINVAL when <paramref name="cqe"/> is not 1..max_cqe; ENODEV after <see cref="Dispose"/>.</exception>
    public CompletionQueue CreateCq(int cqe = 4096)
    {
        if (cqe < 1 || cqe > Attr.MaxCqe)
        {
            MmException.Throw(Errno.EINVAL, $"create_cq: {cqe} entries is not 1..{Attr.MaxCqe}");
        }
        lock (_lock)
        {
            ThrowIfDisposed();
        }
        return new CompletionQueue(this, cqe);
    }

    /// <summary>The region with key <paramref name="key"/>, or null (kernel: the mkey xarray lookup).</summary>
    public MemoryRegion? LookupKey(uint key)
    {
        MemoryRegion?[] keys = Volatile.Read(ref _keys);
        uint index = key >> 8;
        if (index >= (uint)keys.Length)
        {
            return null;
        }
        MemoryRegion? mr = Volatile.Read(ref keys[index]);
        return mr is not null && mr.Lkey == key ? mr : null;
    }

    /// <summary>Closes the device: stops listening, destroys every queue pair, deregisters every region, stops the worker.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _listener.Dispose();
        _acceptThread.Join();
        ProtectionDomain[] pds;
        lock (_lock)
        {
            pds = [.. _pds];
        }
        foreach (ProtectionDomain pd in pds)
        {
            pd.Dispose();
        }
        FaultQueue.Dispose();
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Name} ({LocalEndPoint})";

    private void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _disposed) != 0)
        {
            MmException.Throw(Errno.ENODEV, $"device {Name} is closed");
        }
    }

    internal void ReportInternalError(Exception ex)
    {
        Interlocked.Increment(ref _internalErrors);
        Volatile.Write(ref _lastInternalError, ex);
    }

    internal void AllocKey(MemoryRegion mr)
    {
        lock (_lock)
        {
            int index;
            if (_freeKeyIndexes.Count != 0)
            {
                index = _freeKeyIndexes.Pop();
            }
            else
            {
                index = _nextKeyIndex++;
                if (index >= _keys.Length)
                {
                    MemoryRegion?[] keys = new MemoryRegion?[_keys.Length * 2];
                    Array.Copy(_keys, keys, _keys.Length);
                    Array.Resize(ref _variants, keys.Length);
                    Volatile.Write(ref _keys, keys);
                }
            }
            byte variant = ++_variants[index];
            mr.Lkey = ((uint)index << 8) | variant;
            Volatile.Write(ref _keys[index], mr);
        }
    }

    internal void FreeKey(MemoryRegion mr)
    {
        lock (_lock)
        {
            int index = (int)(mr.Lkey >> 8);
            if (index > 0 && index < _keys.Length && ReferenceEquals(_keys[index], mr))
            {
                Volatile.Write(ref _keys[index], null);
                _freeKeyIndexes.Push(index);
            }
        }
    }

    internal void AllocQpn(QueuePair qp)
    {
        lock (_lock)
        {
            while (_qps.ContainsKey(_nextQpn) || _nextQpn < 2)
            {
                _nextQpn = (_nextQpn + 1) & 0xFF_FFFF;
            }
            qp.QpNum = _nextQpn;
            _qps.Add(_nextQpn, qp);
            _nextQpn = (_nextQpn + 1) & 0xFF_FFFF;
        }
    }

    internal void FreeQpn(QueuePair qp)
    {
        lock (_lock)
        {
            if (_qps.TryGetValue(qp.QpNum, out QueuePair? q) && q == qp)
            {
                _qps.Remove(qp.QpNum);
            }
        }
    }

    internal void ForgetPd(ProtectionDomain pd)
    {
        lock (_lock)
        {
            _pds.Remove(pd);
        }
    }

    internal void RememberImplicit(ImplicitOdpMemoryRegion mr)
    {
        lock (_lock)
        {
            _implicit = [.. _implicit, mr];
        }
    }

    internal void ForgetImplicit(ImplicitOdpMemoryRegion mr)
    {
        lock (_lock)
        {
            _implicit = [.. _implicit.Where(x => x != mr)];
        }
    }

    /// <summary>Runs on the page-fault worker when an invalidation emptied an implicit child.</summary>
    internal void CollectEmptyChildren()
    {
        foreach (ImplicitOdpMemoryRegion mr in Volatile.Read(ref _implicit))
        {
            mr.CollectEmptyChildren();
        }
    }

    private void AcceptLoop()
    {
        while (true)
        {
            Socket s;
            try
            {
                s = _listener.Accept();
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                return;
            }
            // A thread of its own: the thread pool may be starved by blocked callers, and a handshake must not wait for it.
            new Thread(() => Handshake(s)) { IsBackground = true, Name = $"{Name} handshake" }.Start();
        }
    }

    // The passive side of connection setup (the role of the CM's REQ/REP exchange).
    private void Handshake(Socket s)
    {
        try
        {
            s.NoDelay = true;
            s.ReceiveTimeout = 5000;
            byte[] buf = new byte[RdmaWire.HeaderSize];
            int got = 0;
            while (got < buf.Length)
            {
                int n = s.Receive(buf, got, buf.Length - got, SocketFlags.None);
                if (n == 0)
                {
                    s.Dispose();
                    return;
                }
                got += n;
            }
            if (!RdmaWire.TryReadHeader(buf, out WireHeader h) || h.Opcode != WireOpcode.CONNECT_REQUEST)
            {
                Refuse(s, buf);
                return;
            }
            uint src = (uint)h.Data1;
            uint dst = (uint)(h.Data1 >> 32);
            QueuePair? qp;
            lock (_lock)
            {
                _qps.TryGetValue(dst, out qp);
            }
            if (qp is null || !qp.TryAcceptPassive(s, src, (int)h.Data2))
            {
                Refuse(s, buf);
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            s.Dispose();
        }
    }

    private static void Refuse(Socket s, byte[] buf)
    {
        var reply = new WireHeader { Opcode = WireOpcode.CONNECT_REPLY, Syndrome = WireSyndrome.NAK_INVALID_REQUEST };
        RdmaWire.WriteHeader(buf, reply);
        try
        {
            s.Send(buf);
            s.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }
        s.Dispose();
    }
}
