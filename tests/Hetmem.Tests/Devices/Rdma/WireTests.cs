using System.Net.Sockets;
using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;
using static Hetmem.Tests.Devices.Rdma.RdmaTestBed;

namespace Hetmem.Tests.Devices.Rdma;

/// <summary>A peer that speaks the wire protocol by hand (as a program in another process would) against a real device.</summary>
public sealed class WireTests : IDisposable
{
    private const AccessFlags All = AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_ATOMIC | AccessFlags.ON_DEMAND;
    private readonly PhysicalMemory _memory = new(64UL << 20);
    private readonly AddressSpace _mm;
    private readonly RdmaDevice _dev = new("wire_rxe");
    private readonly QueuePair _qp;
    private readonly Socket _peer;
    private readonly ulong _a;
    private readonly ulong _b;
    private readonly MemoryRegion _mrA;
    private readonly MemoryRegion _mrB;
    private readonly Cpu _cpu;

    public WireTests()
    {
        _mm = new AddressSpace(_memory);
        ProtectionDomain pd = _dev.AllocPd(_mm);
        CompletionQueue cq = _dev.CreateCq();
        _qp = pd.CreateQp(new QpInitAttr(cq, cq));
        _a = _mm.Mmap(0, 4 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        _b = _mm.Mmap(0, 4 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        _cpu = new Cpu(_mm);
        _cpu.Write(_a, Pattern(4 * Page.Size, 1));
        _cpu.Write(_b, Pattern(4 * Page.Size, 2));
        _mrA = pd.RegMr(_a + Page.Size, 2 * Page.Size, All);
        _mrB = pd.RegMr(_b, 4 * Page.Size, All);
        _peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, ReceiveTimeout = 20000 };
        _peer.Connect(_dev.LocalEndPoint);
        Send(new WireHeader { Opcode = WireOpcode.CONNECT_REQUEST, Data1 = 0x77 | ((ulong)_qp.QpNum << 32), Data2 = 7 });
        WireHeader reply = Receive(out _);
        Assert.Equal((WireOpcode.CONNECT_REPLY, WireSyndrome.ACK, (ulong)_qp.QpNum), (reply.Opcode, reply.Syndrome, reply.Data1));
        Assert.Equal(QpState.RTS, _qp.State);
        Assert.Equal(0x77u, _qp.DestQpNum);
    }

    public void Dispose()
    {
        Assert.True(_dev.InternalErrors == 0, $"device thread failed: {_dev.LastInternalError}");
        _peer.Dispose();
        _cpu.Dispose();
        _dev.Dispose();
        _mm.Exit();
        _memory.Dispose();
    }

    private void Send(WireHeader h, ReadOnlySpan<byte> payload = default)
    {
        h.PayloadLength = (uint)payload.Length;
        byte[] frame = new byte[RdmaWire.HeaderSize + payload.Length];
        RdmaWire.WriteHeader(frame, h);
        payload.CopyTo(frame.AsSpan(RdmaWire.HeaderSize));
        _peer.Send(frame);
    }

    private WireHeader Receive(out byte[] payload)
    {
        byte[] hdr = ReceiveExactly(RdmaWire.HeaderSize);
        Assert.True(RdmaWire.TryReadHeader(hdr, out WireHeader h), "the device sent a malformed header");
        payload = ReceiveExactly((int)h.PayloadLength);
        return h;
    }

    private byte[] ReceiveExactly(int n)
    {
        byte[] b = new byte[n];
        int got = 0;
        while (got < n)
        {
            int r = _peer.Receive(b, got, n - got, SocketFlags.None);
            Assert.True(r > 0, "connection closed");
            got += r;
        }
        return b;
    }

    private byte[] ReadRemote(ulong va, uint rkey, uint length, uint psn)
    {
        Send(new WireHeader { Opcode = WireOpcode.RDMA_READ_REQUEST, Psn = psn, Va = va, Rkey = rkey, Length = length });
        WireHeader h = Receive(out byte[] data);
        Assert.Equal((WireOpcode.RDMA_READ_RESPONSE, psn), (h.Opcode, h.Psn));
        return data;
    }

    private void AssertNak(uint psn, WireSyndrome syndrome)
    {
        WireHeader h = Receive(out _);
        Assert.Equal((WireOpcode.ACKNOWLEDGE, psn, syndrome), (h.Opcode, h.Psn, h.Syndrome));
    }

    private void AssertMemoryUntouched()
    {
        byte[] a = new byte[4 * Page.Size];
        byte[] b = new byte[4 * Page.Size];
        _cpu.Read(_a, a);
        _cpu.Read(_b, b);
        Assert.Equal(Pattern(4 * Page.Size, 1), a);
        Assert.Equal(Pattern(4 * Page.Size, 2), b);
    }

    [Fact]
    public void HeadersRoundTripAndAFlippedBitIsRejected()
    {
        var h = new WireHeader { Opcode = WireOpcode.COMPARE_SWAP, Syndrome = WireSyndrome.NAK_REMOTE_ACCESS, Flags = 0x21, Psn = 0xFFFFFE, PayloadLength = 8, Va = 0x7F00_1234_5678, Rkey = 0x1203, Length = 4096, Data1 = ulong.MaxValue, Data2 = 42 };
        byte[] buf = new byte[RdmaWire.HeaderSize];
        RdmaWire.WriteHeader(buf, h);
        Assert.True(RdmaWire.TryReadHeader(buf, out WireHeader back));
        Assert.Equal(h, back);
        for (int bit = 0; bit < 8 * 52; bit += 13)
        {
            byte[] bad = (byte[])buf.Clone();
            bad[bit / 8] ^= (byte)(1 << (bit % 8));
            Assert.False(RdmaWire.TryReadHeader(bad, out _), $"bit {bit} flipped went unnoticed");
        }
        RdmaWire.WriteHeader(buf, h with { PayloadLength = RdmaWire.MaxPayload + 1 });
        Assert.False(RdmaWire.TryReadHeader(buf, out _));
        Assert.Equal(WcStatus.REM_ACCESS_ERR, RdmaWire.StatusOf(WireSyndrome.NAK_REMOTE_ACCESS));
        Assert.Equal(WcStatus.REM_INV_REQ_ERR, RdmaWire.StatusOf(WireSyndrome.NAK_INVALID_REQUEST));
        Assert.Equal(WcStatus.REM_OP_ERR, RdmaWire.StatusOf(WireSyndrome.NAK_REMOTE_OPERATIONAL));
        Assert.Equal(WcStatus.RNR_RETRY_EXC_ERR, RdmaWire.StatusOf(WireSyndrome.NAK_RNR_RETRY_EXCEEDED));
    }

    [Fact]
    public void AHandWrittenPeerReadsWritesAndAtomicallyUpdatesRegisteredMemory()
    {
        Assert.Equal(Pattern(4 * Page.Size, 1).AsSpan(Page.Size, 100).ToArray(), ReadRemote(_a + Page.Size, _mrA.Rkey, 100, 1));
        Send(new WireHeader { Opcode = WireOpcode.RDMA_WRITE, Psn = 2, Va = _b + 10, Rkey = _mrB.Rkey }, [1, 2, 3]);
        AssertNak(2, WireSyndrome.ACK);
        Assert.Equal(new byte[] { 1, 2, 3 }, ReadRemote(_b + 10, _mrB.Rkey, 3, 3));
        _cpu.Write(_b + 64, 5L);
        Send(new WireHeader { Opcode = WireOpcode.FETCH_ADD, Psn = 4, Va = _b + 64, Rkey = _mrB.Rkey, Data1 = 3 });
        WireHeader ack = Receive(out _);
        Assert.Equal((WireOpcode.ATOMIC_ACKNOWLEDGE, 4u, 5UL), (ack.Opcode, ack.Psn, ack.Data1));
        Assert.Equal(8L, _cpu.Read<long>(_b + 64));
    }

    [Fact]
    public void GarbageBytesAreNakedAsInvalidAndTheConnectionResynchronises()
    {
        byte[] corrupt = new byte[RdmaWire.HeaderSize];
        RdmaWire.WriteHeader(corrupt, new WireHeader { Opcode = WireOpcode.RDMA_WRITE, Psn = 5, Va = _b, Rkey = _mrB.Rkey, PayloadLength = 16 });
        corrupt[20] ^= 0xFF; // checksum mismatch
        _peer.Send([.. Pattern(1000, 99), .. corrupt]);
        AssertNak(RdmaWire.UnknownPsn, WireSyndrome.NAK_INVALID_REQUEST); // one NAK per run of garbage
        Assert.Equal(Pattern(4 * Page.Size, 2).AsSpan(0, 64).ToArray(), ReadRemote(_b, _mrB.Rkey, 64, 6));
        Assert.Equal(1, _qp.MalformedFrames);
        _peer.Send(corrupt);
        AssertNak(RdmaWire.UnknownPsn, WireSyndrome.NAK_INVALID_REQUEST);
        Assert.Equal(Pattern(4 * Page.Size, 2).AsSpan(64, 64).ToArray(), ReadRemote(_b + 64, _mrB.Rkey, 64, 7));
        Assert.Equal(2, _qp.MalformedFrames);
        AssertMemoryUntouched();
    }

    [Fact]
    public void WellFramedButInvalidRequestsAreNakedWithTheirPsnAndTouchNothing()
    {
        Send(new WireHeader { Opcode = (WireOpcode)0x7E, Psn = 10, Va = _b, Rkey = _mrB.Rkey }, [1, 2]);
        AssertNak(10, WireSyndrome.NAK_INVALID_REQUEST);
        Send(new WireHeader { Opcode = WireOpcode.RDMA_READ_REQUEST, Psn = 11, Va = _b, Rkey = _mrB.Rkey, Length = 8 }, [1]);
        AssertNak(11, WireSyndrome.NAK_INVALID_REQUEST);
        Send(new WireHeader { Opcode = WireOpcode.RDMA_READ_REQUEST, Psn = 12, Va = _b, Rkey = _mrB.Rkey, Length = RdmaWire.MaxPayload + 1 });
        AssertNak(12, WireSyndrome.NAK_INVALID_REQUEST);
        Send(new WireHeader { Opcode = WireOpcode.COMPARE_SWAP, Psn = 13, Va = _b + 3, Rkey = _mrB.Rkey, Data1 = 0, Data2 = 1 });
        AssertNak(13, WireSyndrome.NAK_INVALID_REQUEST);
        Send(new WireHeader { Opcode = WireOpcode.FLUSH, Psn = 14, Va = _b, Rkey = _mrB.Rkey, Data1 = 8, Flags = 0x7 });
        AssertNak(14, WireSyndrome.NAK_INVALID_REQUEST);
        Send(new WireHeader { Opcode = WireOpcode.CONNECT_REQUEST, Psn = 15 });
        AssertNak(15, WireSyndrome.NAK_INVALID_REQUEST);
        AssertMemoryUntouched();
        Assert.Equal(QpState.RTS, _qp.State);
    }

    [Fact]
    public void RequestsOutsideTheirRegionAreAccessErrorsAndOtherRegionsKeepWorking()
    {
        // _mrA covers only the middle two pages of _a: its neighbours must never be touched.
        Send(new WireHeader { Opcode = WireOpcode.RDMA_WRITE, Psn = 20, Va = _a, Rkey = _mrA.Rkey }, new byte[16]);
        AssertNak(20, WireSyndrome.NAK_REMOTE_ACCESS);
        Send(new WireHeader { Opcode = WireOpcode.RDMA_WRITE, Psn = 21, Va = _a + 3 * Page.Size - 8, Rkey = _mrA.Rkey }, new byte[16]);
        AssertNak(21, WireSyndrome.NAK_REMOTE_ACCESS);
        Send(new WireHeader { Opcode = WireOpcode.RDMA_WRITE, Psn = 22, Va = ulong.MaxValue - 7, Rkey = _mrA.Rkey }, new byte[16]);
        AssertNak(22, WireSyndrome.NAK_REMOTE_ACCESS);
        Send(new WireHeader { Opcode = WireOpcode.RDMA_READ_REQUEST, Psn = 23, Va = _a + Page.Size, Rkey = _mrA.Rkey, Length = uint.MaxValue });
        AssertNak(23, WireSyndrome.NAK_INVALID_REQUEST);
        Send(new WireHeader { Opcode = WireOpcode.FETCH_ADD, Psn = 24, Va = _a + 3 * Page.Size, Rkey = _mrA.Rkey, Data1 = 1 });
        AssertNak(24, WireSyndrome.NAK_REMOTE_ACCESS);
        Send(new WireHeader { Opcode = WireOpcode.RDMA_WRITE, Psn = 25, Va = _a + Page.Size, Rkey = 0xFFFF_FF01 }, new byte[16]);
        AssertNak(25, WireSyndrome.NAK_REMOTE_ACCESS);
        AssertMemoryUntouched();
        Assert.Equal(Pattern(4 * Page.Size, 2).AsSpan(100, 10).ToArray(), ReadRemote(_b + 100, _mrB.Rkey, 10, 26));
        Assert.Equal(Pattern(4 * Page.Size, 1).AsSpan(2 * Page.Size, 10).ToArray(), ReadRemote(_a + 2 * Page.Size, _mrA.Rkey, 10, 27));
    }
}
/// <summary>A hand-written responder that answers a real requester wrongly.</summary>
public sealed class FakeResponderTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void AnAnswerOfTheWrongKindOrLengthIsABadResponseAndEndsTheQp(bool wrongKind)
    {
        using var memory = new PhysicalMemory(16UL << 20);
        var mm = new AddressSpace(memory);
        using var dev = new RdmaDevice("req_rxe");
        ProtectionDomain pd = dev.AllocPd(mm);
        CompletionQueue cq = dev.CreateCq();
        QueuePair qp = pd.CreateQp(new QpInitAttr(cq, cq));
        ulong buf = mm.Mmap(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        MemoryRegion local = pd.RegMr(buf, Page.Size, AccessFlags.LOCAL_WRITE | AccessFlags.ON_DEMAND);
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        listener.Listen(1);
        Exception? fakeFailed = null;
        var fake = new Thread(() =>
        {
            try
            {
                Serve();
            }
            catch (Exception ex) when (ex is SocketException or Xunit.Sdk.XunitException)
            {
                fakeFailed = ex;
            }
        });

        void Serve()
        {
            using Socket s = listener.Accept();
            byte[] hdr = new byte[RdmaWire.HeaderSize];
            Receive(s, hdr);
            Assert.True(RdmaWire.TryReadHeader(hdr, out WireHeader req) && req.Opcode == WireOpcode.CONNECT_REQUEST);
            RdmaWire.WriteHeader(hdr, new WireHeader { Opcode = WireOpcode.CONNECT_REPLY, Data1 = 0x99, Data2 = 7 });
            s.Send(hdr);
            Receive(s, hdr);
            Assert.True(RdmaWire.TryReadHeader(hdr, out WireHeader read) && read.Opcode == WireOpcode.RDMA_READ_REQUEST);
            byte[] answer = new byte[RdmaWire.HeaderSize + 4];
            RdmaWire.WriteHeader(answer, wrongKind
                ? new WireHeader { Opcode = WireOpcode.ATOMIC_ACKNOWLEDGE, Psn = read.Psn, Data1 = 1 }
                : new WireHeader { Opcode = WireOpcode.RDMA_READ_RESPONSE, Psn = read.Psn, PayloadLength = 4 });
            s.Send(wrongKind ? answer.AsSpan(0, RdmaWire.HeaderSize) : answer);
            s.Receive(new byte[1]); // until the requester goes away
        }

        fake.Start();
        qp.Connect((System.Net.IPEndPoint)listener.LocalEndPoint!, 0x99);
        qp.PostSend(new SendWr { WrId = 7, Opcode = WrOpcode.RDMA_READ, SendFlags = SendFlags.SIGNALED, SgList = [new Sge(buf, 8, local.Lkey)], RemoteAddr = 0x1000, Rkey = 5 });
        WorkCompletion wc = cq.Wait(TimeSpan.FromSeconds(20));
        Assert.Equal((7UL, WcStatus.BAD_RESP_ERR), (wc.WrId, wc.Status));
        Assert.Equal(QpState.ERR, qp.State);
        qp.Dispose();
        fake.Join();
        mm.Exit();
        Assert.Null(fakeFailed);
        Assert.Equal(0, dev.InternalErrors);
    }

    private static void Receive(Socket s, byte[] b)
    {
        int got = 0;
        while (got < b.Length)
        {
            int n = s.Receive(b, got, b.Length - got, SocketFlags.None);
            Assert.True(n > 0);
            got += n;
        }
    }
}
