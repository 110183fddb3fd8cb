using System.Buffers;
using System.Net;
using System.Net.Sockets;

namespace Hetmem.Devices.Rdma;

/// <summary>
/// A reliable-connected queue pair (rdma-core: struct ibv_qp of type IBV_QPT_RC; kernel: rxe_qp with its requester,
/// completer and responder). One TCP connection on the loopback interface carries its frames; a receive thread
/// reads them (answers complete the send queue, requests go to the responder), and a responder thread executes
/// requests in order against registered memory.
/// </summary>
/// <remarks>
/// <para>States: RESET (created) → <see cref="Connect"/> or an accepted connection → RTS; <see cref="Modify"/> to ERR,
/// a lost connection, transport timeout, RNR exhaustion or a local error → ERR, where every outstanding and later WR
/// completes with WR_FLUSH_ERR. A NAK for a remote access or invalid-request error completes that one WR with the
/// error and leaves the QP in RTS (the connection and every other region keep working; real IB hardware would move
/// both QPs to ERR).</para>
/// <para>Locking: <c>_sendLock</c> serialises frame writes and the PSN order of requests; <c>_sqLock</c> (inside it)
/// guards the send queue and the state; <c>_rqLock</c> the receive queue; <c>_respLock</c> the responder's request
/// queue. Completion-queue locks are leaves under all of them. Local data is gathered before <c>_sendLock</c> is taken,
/// so no QP lock is held while an ODP buffer faults (a call into the mm); a READ response or atomic result is scattered
/// by the receive thread holding none.</para>
/// </remarks>
public sealed partial class QueuePair : IDisposable
{
    private const int Infinite = 7;

    private readonly object _sendLock = new();
    private readonly object _sqLock = new();
    private readonly object _rqLock = new();
    private readonly SqEntry[] _sq;           // guarded by _sqLock: ring
    private int _sqHead;                      // guarded by _sqLock
    private int _sqCount;                     // guarded by _sqLock
    private uint _nextPsn;                    // guarded by _sendLock
    private long _lastProgress;               // guarded by _sqLock: TickCount64 of the last answer or RNR wait
    private readonly RqEntry[] _rq;           // guarded by _rqLock: ring
    private int _rqHead;                      // guarded by _rqLock
    private int _rqCount;                     // guarded by _rqLock
    private volatile QpState _state;          // written under _sqLock, read lock-free
    private Socket? _socket;                  // set once under _sqLock
    private Thread? _rxThread;
    private Thread? _respThread;
    private int _peerRnrRetry = Infinite;     // written before the threads start
    private bool _connecting;                 // guarded by _sqLock
    private int _disposed;                    // Interlocked
    private long _rnrWaitsSent;               // Interlocked
    private long _rnrWaitsReceived;           // Interlocked
    private long _naksSent;                   // Interlocked
    private long _malformedFrames;            // Interlocked
    private long _requestsServed;             // Interlocked

    internal QueuePair(ProtectionDomain pd, QpInitAttr attr)
    {
        Pd = pd;
        InitAttr = attr;
        _sq = new SqEntry[attr.Cap.MaxSendWr];
        for (int i = 0; i < _sq.Length; i++)
        {
            _sq[i] = new SqEntry(attr.Cap.MaxSendSge);
        }
        _rq = new RqEntry[attr.Cap.MaxRecvWr];
        for (int i = 0; i < _rq.Length; i++)
        {
            _rq[i] = new RqEntry(attr.Cap.MaxRecvSge);
        }
        _recvScratch = new RqEntry(attr.Cap.MaxRecvSge);
        _nextPsn = (uint)Random.Shared.Next(0, 1 << 24);
    }

    /// <summary>The protection domain.</summary>
    public ProtectionDomain Pd { get; }
    /// <summary>The device.</summary>
    public RdmaDevice Device => Pd.Device;
    /// <summary>The queue-pair number (qp_num).</summary>
    public uint QpNum { get; internal set; }
    /// <summary>The connected peer's QP number (dest_qp_num), 0 before connecting.</summary>
    public uint DestQpNum { get; private set; }
    /// <summary>Creation attributes.</summary>
    public QpInitAttr InitAttr { get; }
    /// <summary>Connection attributes (set by <see cref="Connect"/> or <see cref="SetAttr"/> before a peer connects).</summary>
    public QpAttr Attr { get; private set; } = new();
    /// <summary>The current state (ibv_query_qp qp_state).</summary>
    public QpState State => _state;
    /// <summary>The remote end of the connection, or null.</summary>
    public EndPoint? RemoteEndPoint => _socket?.RemoteEndPoint;

    /// <summary>RNR waits this QP's responder sent while a fault or a RECV was pending (rxe: send_rnr_nak).</summary>
    public long RnrWaitsSent => Interlocked.Read(ref _rnrWaitsSent);
    /// <summary>RNR waits this QP's requester received (rxe: rcvd_rnr_err).</summary>
    public long RnrWaitsReceived => Interlocked.Read(ref _rnrWaitsReceived);
    /// <summary>NAKs this QP's responder sent (access, invalid-request, operational, RNR-exceeded).</summary>
    public long NaksSent => Interlocked.Read(ref _naksSent);
    /// <summary>Frames whose header could not be parsed (answered with NAK_INVALID_REQUEST, then resynchronised).</summary>
    public long MalformedFrames => Interlocked.Read(ref _malformedFrames);
    /// <summary>Requests this QP's responder executed (successfully or not).</summary>
    public long RequestsServed => Interlocked.Read(ref _requestsServed);

    /// <summary>Sends WRs posted but not completed yet.</summary>
    public int OutstandingSends
    {
        get
        {
            lock (_sqLock)
            {
                return _sqCount;
            }
        }
    }

    /// <summary>Sets the connection attributes used when a peer connects to this QP (the RTR/RTS part of ibv_modify_qp).</summary>
    /// <exception cref="MmException">EINVAL after the QP is connected, or a value out of range.</exception>
    public void SetAttr(QpAttr attr)
    {
        ArgumentNullException.ThrowIfNull(attr);
        ValidateAttr(attr);
        lock (_sqLock)
        {
            if (_state is not (QpState.RESET or QpState.INIT) || _connecting)
            {
                MmException.Throw(Errno.EINVAL, $"qp 0x{QpNum:x}: attributes change only before connecting");
            }
            Attr = attr;
        }
    }

    /// <summary>
    /// Moves the QP (ibv_modify_qp qp_state): RESET → INIT, or any state → ERR (flushing every outstanding send and
    /// posted receive with WR_FLUSH_ERR). RTR/RTS are reached by <see cref="Connect"/>.
    /// </summary>
    /// <exception cref="MmException">EINVAL for any other transition.</exception>
    public void Modify(QpState state)
    {
        lock (_sqLock)
        {
            if (state == QpState.INIT && _state is QpState.RESET or QpState.INIT)
            {
                _state = QpState.INIT;
                return;
            }
            if (state != QpState.ERR)
            {
                MmException.Throw(Errno.EINVAL, $"qp 0x{QpNum:x}: {_state} → {state} is not a supported transition (connect to reach RTS)");
            }
            MoveToErrorLocked(-1, WcStatus.WR_FLUSH_ERR, 0);
        }
        FlushRecvQueue();
    }

    /// <summary>
    /// Connects to queue pair <paramref name="remoteQpn"/> of the device listening at <paramref name="remote"/> and moves
    /// both to RTS (the INIT → RTR → RTS sequence of ibv_modify_qp with dest_qp_num, done over a TCP handshake).
    /// </summary>
    /// <exception cref="MmException">EINVAL when this QP is not in RESET/INIT or already connecting, an attribute is out of
    /// range, or the remote QP does not exist or is not connectable; ECONNRESET when the remote device cannot be reached;
    /// ETIMEDOUT when it does not answer within 5 s.</exception>
    public void Connect(IPEndPoint remote, uint remoteQpn, QpAttr? attr = null)
    {
        ArgumentNullException.ThrowIfNull(remote);
        if (attr is not null)
        {
            ValidateAttr(attr);
        }
        lock (_sqLock)
        {
            if (_state is not (QpState.RESET or QpState.INIT) || _connecting)
            {
                MmException.Throw(Errno.EINVAL, $"qp 0x{QpNum:x} in {_state} cannot connect");
            }
            _connecting = true;
            Attr = attr ?? Attr;
        }
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            try
            {
                s.Connect(remote);
            }
            catch (SocketException ex)
            {
                MmException.Throw(Errno.ECONNRESET, $"qp 0x{QpNum:x}: cannot reach {remote}: {ex.Message}");
            }
            byte[] buf = new byte[RdmaWire.HeaderSize];
            RdmaWire.WriteHeader(buf, new WireHeader
            {
                Opcode = WireOpcode.CONNECT_REQUEST,
                Psn = _nextPsn,
                Data1 = QpNum | ((ulong)remoteQpn << 32),
                Data2 = (ulong)Attr.RnrRetry,
            });
            s.Send(buf);
            s.ReceiveTimeout = 5000;
            int got = 0;
            try
            {
                while (got < buf.Length)
                {
                    int n = s.Receive(buf, got, buf.Length - got, SocketFlags.None);
                    if (n == 0)
                    {
                        break;
                    }
                    got += n;
                }
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.TimedOut)
            {
                MmException.Throw(Errno.ETIMEDOUT, $"qp 0x{QpNum:x}: {remote} did not answer the connection request");
            }
            WireHeader reply = default;
            if (got < buf.Length || !RdmaWire.TryReadHeader(buf, out reply) || reply.Opcode != WireOpcode.CONNECT_REPLY
                || reply.Syndrome != WireSyndrome.ACK)
            {
                MmException.Throw(Errno.EINVAL, $"qp 0x{QpNum:x}: {remote} refused the connection to qp 0x{remoteQpn:x}");
            }
            s.ReceiveTimeout = 0;
            _peerRnrRetry = (int)reply.Data2;
            Start(s, remoteQpn);
        }
        catch
        {
            s.Dispose();
            lock (_sqLock)
            {
                _connecting = false;
            }
            throw;
        }
    }

    /// <summary>Connects <paramref name="a"/> to <paramref name="b"/> (both end in RTS), e.g. two devices of one process.</summary>
    /// <exception cref="MmException">As <see cref="Connect"/>.</exception>
    public static void ConnectPair(QueuePair a, QueuePair b, QpAttr? attr = null)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (attr is not null)
        {
            b.SetAttr(attr);
        }
        a.Connect(b.Device.LocalEndPoint, b.QpNum, attr);
    }

    /// <summary>
    /// Posts a send-queue work request (ibv_post_send). Local SGEs are checked and SEND / WRITE / ATOMIC_WRITE data is
    /// gathered now (an ODP local buffer faults here); a local failure completes the WR with LOC_PROT_ERR and moves the
    /// QP to ERR. Completion is reported on the send CQ when the WR is signaled or fails.
    /// </summary>
    /// <exception cref="MmException">EINVAL: the QP is not connected (RESET, INIT, RTR), an unknown opcode, more SGEs than
    /// max_send_sge, a message longer than max_msg_sz, or an atomic without exactly one 8-byte SGE. ENOMEM: the send
    /// queue is full. Nothing is posted when it throws.</exception>
    public void PostSend(in SendWr wr)
    {
        ValidateSend(wr, out uint total);
        QpState early = State;
        if (early is QpState.RESET or QpState.INIT or QpState.RTR)
        {
            MmException.Throw(Errno.EINVAL, $"post_send on qp 0x{QpNum:x} in {early}");
        }
        // Local data is gathered before any QP lock is taken: an ODP buffer may fault, and a fault calls into the mm.
        bool gathers = Gathers(wr.Opcode);
        int frameCap = RdmaWire.HeaderSize + (gathers ? (int)total : 0);
        byte[] frame = ArrayPool<byte>.Shared.Rent(frameCap);
        try
        {
            WcStatus local = WcStatus.SUCCESS;
            Errno err = Errno.Ok;
            if (gathers && early == QpState.RTS)
            {
                local = Gather(wr.SgList, frame.AsSpan(RdmaWire.HeaderSize, (int)total), out err);
            }
            bool flushRecv = false;
            lock (_sendLock)
            {
                SqEntry e;
                lock (_sqLock)
                {
                    if (_state is QpState.RESET or QpState.INIT or QpState.RTR)
                    {
                        MmException.Throw(Errno.EINVAL, $"post_send on qp 0x{QpNum:x} in {_state}");
                    }
                    if (_sqCount == _sq.Length)
                    {
                        MmException.Throw(Errno.ENOMEM, $"post_send: send queue of qp 0x{QpNum:x} is full ({_sq.Length})");
                    }
                    e = _sq[(_sqHead + _sqCount) % _sq.Length];
                    e.Set(wr, _nextPsn++, total, InitAttr.SqSigAll);
                    if (_sqCount == 0)
                    {
                        _lastProgress = Environment.TickCount64;
                    }
                    _sqCount++;
                    if (_state == QpState.ERR)
                    {
                        MoveToErrorLocked(-1, WcStatus.WR_FLUSH_ERR, 0);
                        return;
                    }
                    if (local == WcStatus.SUCCESS)
                    {
                        local = BuildRequestLocked(wr, e.Psn, total, frame, out frameCap);
                    }
                    if (local == WcStatus.SUCCESS && Hetmem.Diagnostics.FaultInjection.Enabled && Hetmem.Diagnostics.FaultInjection.ShouldFail(Hetmem.Diagnostics.FaultSites.TransportSend, Pd.Space.Memory)) { MoveToErrorLocked(0, WcStatus.RETRY_EXC_ERR, 0); flushRecv = true; } // the link is dead: the oldest WR exhausts its retries (IBV_WC_RETRY_EXC_ERR), the rest flush
                    if (local != WcStatus.SUCCESS)
                    {
                        MoveToErrorLocked(_sqCount - 1, local, (uint)err);
                        flushRecv = true;
                    }
                }
                if (!flushRecv)
                {
                    SendLocked(frame.AsSpan(0, frameCap));
                }
            }
            if (flushRecv)
            {
                FlushRecvQueue();
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(frame);
        }
    }

    /// <summary>Posts a receive work request (ibv_post_recv); an incoming SEND or WRITE_WITH_IMM consumes it.</summary>
    /// <exception cref="MmException">EINVAL in RESET or with more SGEs than max_recv_sge; ENOMEM when the receive queue is full.</exception>
    public void PostRecv(in RecvWr wr)
    {
        int n = wr.SgList?.Length ?? 0;
        if (n > InitAttr.Cap.MaxRecvSge)
        {
            MmException.Throw(Errno.EINVAL, $"post_recv: {n} SGEs exceed max_recv_sge {InitAttr.Cap.MaxRecvSge}");
        }
        QpState st = State;
        if (st == QpState.RESET)
        {
            MmException.Throw(Errno.EINVAL, $"post_recv on qp 0x{QpNum:x} in RESET");
        }
        if (st == QpState.ERR)
        {
            InitAttr.RecvCq.Add(new WorkCompletion { WrId = wr.WrId, Status = WcStatus.WR_FLUSH_ERR, Opcode = WcOpcode.RECV, QpNum = QpNum });
            return;
        }
        lock (_rqLock)
        {
            if (_rqCount == _rq.Length)
            {
                MmException.Throw(Errno.ENOMEM, $"post_recv: receive queue of qp 0x{QpNum:x} is full ({_rq.Length})");
            }
            _rq[(_rqHead + _rqCount) % _rq.Length].Set(wr);
            _rqCount++;
            Monitor.PulseAll(_rqLock);
        }
    }

    /// <summary>Destroys the QP (ibv_destroy_qp): closes the connection and stops its threads; no further completions.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        Thread? rx;
        Thread? resp;
        Socket? socket;
        lock (_sqLock)
        {
            _state = QpState.ERR;
            _sqCount = 0;
            rx = _rxThread;
            resp = _respThread;
            socket = _socket;
        }
        try
        {
            socket?.Shutdown(SocketShutdown.Both);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
        }
        socket?.Dispose();
        StopResponder();
        lock (_rqLock)
        {
            Monitor.PulseAll(_rqLock);
        }
        if (rx is not null && rx != Thread.CurrentThread)
        {
            rx.Join();
        }
        if (resp is not null && resp != Thread.CurrentThread)
        {
            resp.Join();
        }
        DrainRequests();
        Device.FreeQpn(this);
        Pd.Forget(this);
    }

    /// <inheritdoc/>
    public override string ToString() => $"qp 0x{QpNum:x} ({State}) → 0x{DestQpNum:x}";

    private static void ValidateAttr(QpAttr attr)
    {
        if (attr.RetryCnt is < 0 or > 7 || attr.RnrRetry is < 0 or > 7 || attr.Timeout <= TimeSpan.Zero || attr.MinRnrTimer <= TimeSpan.Zero)
        {
            MmException.Throw(Errno.EINVAL, $"qp attributes out of range: {attr}");
        }
    }

    private void ValidateSend(in SendWr wr, out uint total)
    {
        int n = wr.SgList?.Length ?? 0;
        if (n > InitAttr.Cap.MaxSendSge)
        {
            MmException.Throw(Errno.EINVAL, $"post_send: {n} SGEs exceed max_send_sge {InitAttr.Cap.MaxSendSge}");
        }
        ulong sum = 0;
        for (int i = 0; i < n; i++)
        {
            sum += wr.SgList![i].Length;
        }
        if (sum > Device.Attr.MaxMsgSize)
        {
            MmException.Throw(Errno.EINVAL, $"post_send: message of {sum} bytes exceeds max_msg_sz {Device.Attr.MaxMsgSize}");
        }
        total = (uint)sum;
        switch (wr.Opcode)
        {
            case WrOpcode.RDMA_WRITE or WrOpcode.RDMA_WRITE_WITH_IMM or WrOpcode.SEND or WrOpcode.SEND_WITH_IMM or WrOpcode.RDMA_READ:
                break;
            case WrOpcode.ATOMIC_CMP_AND_SWP or WrOpcode.ATOMIC_FETCH_AND_ADD or WrOpcode.ATOMIC_WRITE:
                if (n != 1 || wr.SgList![0].Length != 8)
                {
                    MmException.Throw(Errno.EINVAL, $"post_send: {wr.Opcode} needs exactly one 8-byte SGE");
                }
                break;
            case WrOpcode.FLUSH:
                if (n != 0 || wr.FlushType is not (FlushType.GLOBAL or FlushType.PERSISTENT) || wr.FlushLevel is not (FlushLevel.RANGE or FlushLevel.MR))
                {
                    MmException.Throw(Errno.EINVAL, $"post_send: FLUSH takes no SGE and a valid type and level ({wr.FlushType}, {wr.FlushLevel})");
                }
                break;
            default:
                MmException.Throw(Errno.EINVAL, $"post_send: opcode {wr.Opcode} is not supported on RC");
                break;
        }
    }

    private void Start(Socket s, uint remoteQpn)
    {
        lock (_sqLock)
        {
            if (Volatile.Read(ref _disposed) != 0)
            {
                s.Dispose();
                return;
            }
            _socket = s;
            DestQpNum = remoteQpn;
            _state = QpState.RTS;
            _lastProgress = Environment.TickCount64;
            _respThread = new Thread(ResponderLoop) { IsBackground = true, Name = $"{Device.Name} qp{QpNum:x} resp" };
            _rxThread = new Thread(ReceiveLoop) { IsBackground = true, Name = $"{Device.Name} qp{QpNum:x} rx" };
            _respThread.Start();
            _rxThread.Start();
        }
    }

    /// <summary>The passive side of <see cref="Connect"/>, on a device handshake thread.</summary>
    internal bool TryAcceptPassive(Socket s, uint srcQpn, int peerRnrRetry)
    {
        lock (_sqLock)
        {
            if (_state is not (QpState.RESET or QpState.INIT) || _connecting || Volatile.Read(ref _disposed) != 0)
            {
                return false;
            }
            _connecting = true;
        }
        _peerRnrRetry = Math.Clamp(peerRnrRetry, 0, Infinite);
        byte[] buf = new byte[RdmaWire.HeaderSize];
        RdmaWire.WriteHeader(buf, new WireHeader
        {
            Opcode = WireOpcode.CONNECT_REPLY,
            Syndrome = WireSyndrome.ACK,
            Data1 = QpNum,
            Data2 = (ulong)Attr.RnrRetry,
        });
        s.ReceiveTimeout = 0;
        Start(s, srcQpn);
        lock (_sendLock)
        {
            SendLocked(buf);
        }
        return true;
    }

    /// <summary>Writes one frame (caller holds <c>_sendLock</c>); a broken connection moves the QP to ERR.</summary>
    private void SendLocked(ReadOnlySpan<byte> frame)
    {
        try
        {
            Socket s = _socket!;
            while (!frame.IsEmpty)
            {
                int n = s.Send(frame, SocketFlags.None);
                frame = frame[n..];
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            ConnectionLost();
        }
    }

    /// <summary>
    /// Completes outstanding sends and enters ERR (caller holds <c>_sqLock</c>): the entry at <paramref name="failed"/>
    /// (0 = oldest; −1 = none) gets <paramref name="status"/>, every other one WR_FLUSH_ERR, in posting order.
    /// </summary>
    private void MoveToErrorLocked(int failed, WcStatus status, uint vendorErr)
    {
        _state = QpState.ERR;
        for (int i = 0; i < _sqCount; i++)
        {
            SqEntry e = _sq[(_sqHead + i) % _sq.Length];
            CompleteSend(e, i == failed ? status : WcStatus.WR_FLUSH_ERR, i == failed ? vendorErr : 0, force: true);
        }
        _sqHead = (_sqHead + _sqCount) % _sq.Length;
        _sqCount = 0;
    }

    private void FlushRecvQueue()
    {
        lock (_rqLock)
        {
            for (int i = 0; i < _rqCount; i++)
            {
                RqEntry r = _rq[(_rqHead + i) % _rq.Length];
                InitAttr.RecvCq.Add(new WorkCompletion { WrId = r.WrId, Status = WcStatus.WR_FLUSH_ERR, Opcode = WcOpcode.RECV, QpNum = QpNum });
            }
            _rqHead = (_rqHead + _rqCount) % _rq.Length;
            _rqCount = 0;
            Monitor.PulseAll(_rqLock);
        }
    }

    private void CompleteSend(SqEntry e, WcStatus status, uint vendorErr, bool force)
    {
        if (status == WcStatus.SUCCESS && !e.Signaled && !force)
        {
            return;
        }
        InitAttr.SendCq.Add(new WorkCompletion
        {
            WrId = e.WrId,
            Status = status,
            Opcode = e.Opcode switch
            {
                WrOpcode.RDMA_WRITE or WrOpcode.RDMA_WRITE_WITH_IMM => WcOpcode.RDMA_WRITE,
                WrOpcode.SEND or WrOpcode.SEND_WITH_IMM => WcOpcode.SEND,
                WrOpcode.RDMA_READ => WcOpcode.RDMA_READ,
                WrOpcode.ATOMIC_CMP_AND_SWP => WcOpcode.COMP_SWAP,
                WrOpcode.ATOMIC_FETCH_AND_ADD => WcOpcode.FETCH_ADD,
                WrOpcode.FLUSH => WcOpcode.FLUSH,
                _ => WcOpcode.ATOMIC_WRITE,
            },
            VendorErr = vendorErr,
            ByteLen = e.TotalLength,
            QpNum = QpNum,
            SrcQp = DestQpNum,
        });
    }

    private void ConnectionLost()
    {
        lock (_sqLock)
        {
            if (_state == QpState.ERR)
            {
                return;
            }
            MoveToErrorLocked(0, WcStatus.RETRY_EXC_ERR, 0);
        }
        FlushRecvQueue();
    }

    /// <summary>A send-queue slot: a copy of the posted WR.</summary>
    private sealed class SqEntry(int maxSge)
    {
        public readonly Sge[] Sges = new Sge[maxSge];
        public ulong WrId;
        public WrOpcode Opcode;
        public bool Signaled;
        public uint Psn;
        public int SgeCount;
        public uint TotalLength;

        public void Set(in SendWr wr, uint psn, uint total, bool sigAll)
        {
            WrId = wr.WrId;
            Opcode = wr.Opcode;
            Signaled = sigAll || (wr.SendFlags & SendFlags.SIGNALED) != 0;
            Psn = psn;
            TotalLength = total;
            SgeCount = wr.SgList?.Length ?? 0;
            for (int i = 0; i < SgeCount; i++)
            {
                Sges[i] = wr.SgList![i];
            }
        }
    }

    /// <summary>A receive-queue slot: a copy of the posted WR.</summary>
    private sealed class RqEntry(int maxSge)
    {
        public readonly Sge[] Sges = new Sge[maxSge];
        public ulong WrId;
        public int SgeCount;

        public void Set(in RecvWr wr)
        {
            WrId = wr.WrId;
            SgeCount = wr.SgList?.Length ?? 0;
            for (int i = 0; i < SgeCount; i++)
            {
                Sges[i] = wr.SgList![i];
            }
        }

        public void CopyFrom(RqEntry other)
        {
            WrId = other.WrId;
            SgeCount = other.SgeCount;
            Array.Copy(other.Sges, Sges, SgeCount);
        }
    }
}
