using System.Buffers.Binary;
using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Rdma;

/// <summary>
/// Two "hosts" in one process: a server address space whose memory is registered, and a client address space with a
/// local ODP buffer, each with its own <see cref="RdmaDevice"/>, connected by an RC queue pair over loopback TCP.
/// Disposing checks that no device thread failed.
/// </summary>
internal sealed class RdmaTestBed : IDisposable
{
    public const ulong Mib = 1UL << 20;
    public const int ClientBufBytes = 8 << 20;
    public static readonly TimeSpan WaitTime = TimeSpan.FromSeconds(20);

    private readonly bool _ownsMemory;

    public RdmaTestBed(PhysicalMemory? memory = null, QpAttr? attr = null)
    {
        _ownsMemory = memory is null;
        Memory = memory ?? new PhysicalMemory(64UL << 20);
        ServerMm = new AddressSpace(Memory);
        ClientMm = new AddressSpace(Memory);
        ServerDev = new RdmaDevice("srv_rxe");
        ClientDev = new RdmaDevice("cli_rxe");
        ServerPd = ServerDev.AllocPd(ServerMm);
        ClientPd = ClientDev.AllocPd(ClientMm);
        ServerCq = ServerDev.CreateCq();
        ClientCq = ClientDev.CreateCq();
        ServerQp = ServerPd.CreateQp(new QpInitAttr(ServerCq, ServerCq));
        ClientQp = ClientPd.CreateQp(new QpInitAttr(ClientCq, ClientCq));
        QueuePair.ConnectPair(ClientQp, ServerQp, attr);
        ServerCpu = new Cpu(ServerMm);
        ClientCpu = new Cpu(ClientMm);
        ClientBuf = ClientMm.Mmap(0, ClientBufBytes, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        ClientMr = ClientPd.RegMr(ClientBuf, ClientBufBytes, AccessFlags.LOCAL_WRITE | AccessFlags.ON_DEMAND);
    }

    public PhysicalMemory Memory { get; }
    public AddressSpace ServerMm { get; }
    public AddressSpace ClientMm { get; }
    public RdmaDevice ServerDev { get; }
    public RdmaDevice ClientDev { get; }
    public ProtectionDomain ServerPd { get; }
    public ProtectionDomain ClientPd { get; }
    public CompletionQueue ServerCq { get; }
    public CompletionQueue ClientCq { get; }
    public QueuePair ServerQp { get; }
    public QueuePair ClientQp { get; }
    public Cpu ServerCpu { get; }
    public Cpu ClientCpu { get; }
    public ulong ClientBuf { get; }
    public MemoryRegion ClientMr { get; }

    private ulong _wrId;

    public ulong MapServer(ulong bytes, Prot prot = Prot.Read | Prot.Write) =>
        ServerMm.Mmap(0, bytes, prot, MapFlags.Private | MapFlags.Anonymous);

    /// <summary>Points the client at a new server QP of <paramref name="serverPd"/> (regions of another domain are unreachable through the first one).</summary>
    public void UseServerPd(ProtectionDomain serverPd)
    {
        QueuePair s = serverPd.CreateQp(new QpInitAttr(ServerCq, ServerCq));
        QueuePair c = ClientPd.CreateQp(new QpInitAttr(ClientCq, ClientCq));
        QueuePair.ConnectPair(c, s);
        _qp = c;
    }

    private QueuePair? _qp;

    public WorkCompletion Post(SendWr wr)
    {
        wr.WrId = ++_wrId;
        wr.SendFlags |= SendFlags.SIGNALED;
        (_qp ?? ClientQp).PostSend(wr);
        WorkCompletion wc = ClientCq.Wait(WaitTime);
        Assert.Equal(wr.WrId, wc.WrId);
        return wc;
    }

    public (WcStatus Status, byte[] Data) Read(ulong remote, uint rkey, int length, ulong localOffset = 0)
    {
        WorkCompletion wc = Post(new SendWr
        {
            Opcode = WrOpcode.RDMA_READ,
            SgList = [new Sge(ClientBuf + localOffset, (uint)length, ClientMr.Lkey)],
            RemoteAddr = remote,
            Rkey = rkey,
        });
        byte[] data = new byte[length];
        if (wc.Status == WcStatus.SUCCESS)
        {
            ClientCpu.Read(ClientBuf + localOffset, data);
        }
        return (wc.Status, data);
    }

    public WcStatus Write(ulong remote, uint rkey, ReadOnlySpan<byte> data, ulong localOffset = 0)
    {
        ClientCpu.Write(ClientBuf + localOffset, data);
        return Post(new SendWr
        {
            Opcode = WrOpcode.RDMA_WRITE,
            SgList = [new Sge(ClientBuf + localOffset, (uint)data.Length, ClientMr.Lkey)],
            RemoteAddr = remote,
            Rkey = rkey,
        }).Status;
    }

    public (WcStatus Status, ulong Original) CompareSwap(ulong remote, uint rkey, ulong compare, ulong swap) => Atomic(WrOpcode.ATOMIC_CMP_AND_SWP, remote, rkey, compare, swap);

    public (WcStatus Status, ulong Original) FetchAdd(ulong remote, uint rkey, ulong add) => Atomic(WrOpcode.ATOMIC_FETCH_AND_ADD, remote, rkey, add, 0);

    private (WcStatus, ulong) Atomic(WrOpcode op, ulong remote, uint rkey, ulong a, ulong b)
    {
        const ulong resultOffset = ClientBufBytes - 8;
        ClientCpu.Write(ClientBuf + resultOffset, 0xDEAD_BEEFUL);
        WorkCompletion wc = Post(new SendWr
        {
            Opcode = op,
            SgList = [new Sge(ClientBuf + resultOffset, 8, ClientMr.Lkey)],
            RemoteAddr = remote,
            Rkey = rkey,
            CompareAdd = a,
            Swap = b,
        });
        return (wc.Status, wc.Status == WcStatus.SUCCESS ? ClientCpu.Read<ulong>(ClientBuf + resultOffset) : 0);
    }

    public WcStatus Flush(ulong remote, uint rkey, ulong length, FlushType type = FlushType.PERSISTENT, FlushLevel level = FlushLevel.RANGE) =>
        Post(new SendWr { Opcode = WrOpcode.FLUSH, RemoteAddr = remote, Rkey = rkey, FlushLength = length, FlushType = type, FlushLevel = level }).Status;

    public static byte[] Pattern(int length, int seed)
    {
        byte[] b = new byte[length];
        var r = new Random(seed);
        r.NextBytes(b);
        return b;
    }

    public static long Le64(ReadOnlySpan<byte> b) => BinaryPrimitives.ReadInt64LittleEndian(b);

    public void AssertHealthy()
    {
        Assert.True(ServerDev.InternalErrors == 0, $"server device thread failed: {ServerDev.LastInternalError}");
        Assert.True(ClientDev.InternalErrors == 0, $"client device thread failed: {ClientDev.LastInternalError}");
    }

    public void Dispose()
    {
        try
        {
            AssertHealthy();
        }
        finally
        {
            ServerCpu.Dispose();
            ClientCpu.Dispose();
            ClientDev.Dispose();
            ServerDev.Dispose();
            ServerMm.Exit();
            ClientMm.Exit();
            if (_ownsMemory)
            {
                Memory.Dispose();
            }
        }
    }
}
