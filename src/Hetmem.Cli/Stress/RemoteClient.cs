using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Cli.Stress;

/// <summary>
/// The stress run's remote RDMA client: a server <see cref="RdmaDevice"/> on the stress address space with one
/// on-demand-paging MR over the whole arena (remote read and write), and a client device on its own small address
/// space, connected by one RC queue pair over loopback. Workers read and write a page's first word with RDMA_READ /
/// RDMA_WRITE; posts are serialised (one WR in flight, so a completion always belongs to the caller).
/// </summary>
/// <remarks>
/// An RC QP moves to the error state on any failed WR (e.g. REM_ACCESS_ERR for an unmapped or read-only page); the
/// pair is then destroyed and a new one connected before the next post, as an application would.
/// </remarks>
internal sealed class RemoteClient : IDisposable
{
    private static readonly TimeSpan s_wait = TimeSpan.FromSeconds(30);

    private readonly Lock _lock = new();
    private readonly RdmaDevice _serverDev;
    private readonly RdmaDevice _clientDev;
    private readonly ProtectionDomain _serverPd;
    private readonly ProtectionDomain _clientPd;
    private readonly CompletionQueue _serverCq;
    private readonly CompletionQueue _clientCq;
    private readonly AddressSpace _clientMm;
    private readonly Cpu _clientCpu;
    private readonly ulong _clientBuf;
    private readonly MemoryRegion _clientMr;
    private readonly MemoryRegion _arenaMr;
    private QueuePair? _serverQp;          // guarded by _lock
    private QueuePair? _clientQp;          // guarded by _lock
    private ulong _wrId;                   // guarded by _lock

    /// <summary>Registers [<paramref name="arena"/>, +<paramref name="bytes"/>) of <paramref name="server"/> on demand and connects a client.</summary>
    public RemoteClient(PhysicalMemory memory, AddressSpace server, ulong arena, ulong bytes)
    {
        _serverDev = new RdmaDevice("stress_srv");
        _clientDev = new RdmaDevice("stress_cli");
        _serverPd = _serverDev.AllocPd(server);
        _clientMm = new AddressSpace(memory);
        _clientPd = _clientDev.AllocPd(_clientMm);
        _serverCq = _serverDev.CreateCq();
        _clientCq = _clientDev.CreateCq();
        _clientCpu = new Cpu(_clientMm);
        _clientBuf = _clientMm.Mmap(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        _clientMr = _clientPd.RegMr(_clientBuf, Page.Size, AccessFlags.LOCAL_WRITE | AccessFlags.ON_DEMAND);
        _arenaMr = _serverPd.RegMr(arena, bytes,
            AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_WRITE | AccessFlags.ON_DEMAND);
    }

    /// <summary>Times the queue pair was reconnected after a failed WR.</summary>
    public long Reconnects { get; private set; }

    /// <summary>RDMA_READ of the 8 bytes at <paramref name="va"/> of the arena.</summary>
    public WcStatus Read(ulong va, out ulong value)
    {
        lock (_lock)
        {
            WcStatus st = Post(WrOpcode.RDMA_READ, va);
            value = st == WcStatus.SUCCESS ? _clientCpu.Read<ulong>(_clientBuf) : 0;
            return st;
        }
    }

    /// <summary>RDMA_WRITE of <paramref name="value"/> to the 8 bytes at <paramref name="va"/> of the arena.</summary>
    public WcStatus Write(ulong va, ulong value)
    {
        lock (_lock)
        {
            _clientCpu.Write(_clientBuf, value);
            return Post(WrOpcode.RDMA_WRITE, va);
        }
    }

    private WcStatus Post(WrOpcode opcode, ulong va)
    {
        if (_clientQp is null)
        {
            Connect();
        }
        while (_clientCq.TryPoll(out _))
        {
            // stale flush completions of a destroyed pair
        }
        var wr = new SendWr
        {
            WrId = ++_wrId,
            Opcode = opcode,
            SendFlags = SendFlags.SIGNALED,
            SgList = [new Sge(_clientBuf, sizeof(ulong), _clientMr.Lkey)],
            RemoteAddr = va,
            Rkey = _arenaMr.Rkey,
        };
        _clientQp!.PostSend(wr);
        WorkCompletion wc;
        do
        {
            wc = _clientCq.Wait(s_wait);
        }
        while (wc.WrId != wr.WrId);
        if (wc.Status != WcStatus.SUCCESS)
        {
            Disconnect();
            Reconnects++;
        }
        return wc.Status;
    }

    private void Connect()
    {
        _serverQp = _serverPd.CreateQp(new QpInitAttr(_serverCq, _serverCq));
        _clientQp = _clientPd.CreateQp(new QpInitAttr(_clientCq, _clientCq));
        QueuePair.ConnectPair(_clientQp, _serverQp);
    }

    private void Disconnect()
    {
        _clientQp?.Dispose();
        _serverQp?.Dispose();
        _clientQp = null;
        _serverQp = null;
        while (_serverCq.TryPoll(out _))
        {
        }
    }

    /// <summary>Device threads that failed (must be 0).</summary>
    public long InternalErrors => _serverDev.InternalErrors + _clientDev.InternalErrors;

    /// <summary>The first device-thread failure, if any.</summary>
    public Exception? LastInternalError => _serverDev.LastInternalError ?? _clientDev.LastInternalError;

    /// <summary>Destroys the pair, the MRs and both devices, and exits the client's address space.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            Disconnect();
        }
        _arenaMr.Dispose();
        _clientMr.Dispose();
        _clientCpu.Dispose();
        _clientDev.Dispose();
        _serverDev.Dispose();
        _clientMm.Exit();
    }
}
