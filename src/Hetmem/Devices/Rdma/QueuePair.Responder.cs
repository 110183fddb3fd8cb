using System.Buffers;
using System.Net.Sockets;
using Hetmem.Physical;

namespace Hetmem.Devices.Rdma;

/// <summary>The responder (kernel: rxe_resp.c with the ODP data path of rxe_odp.c and mlx5's RDMA responder faults).</summary>
public sealed partial class QueuePair : IOdpFaultWaiter
{
    /// <summary>Fault rounds one access may take before the responder gives up (livelock guard under constant invalidation).</summary>
    private const int MaxFaultRounds = 64;
    /// <summary>Requests a peer may have queued at this responder (beyond: a protocol violation, the connection is closed).</summary>
    private const int MaxQueuedRequests = 4096;
    private const long MaxQueuedBytes = 256L << 20;
    /// <summary>The path MTU: a demand fault brings in the packet that missed (mlx5 faults the current packet).</summary>
    private const int PacketBytes = 4096;
    private static readonly TimeSpan s_maxRnrStep = TimeSpan.FromMilliseconds(64);

    private readonly object _respLock = new();
    private readonly Queue<Request> _requests = new();       // guarded by _respLock
    private readonly Stack<Request> _requestPool = new();    // guarded by _respLock
    private long _queuedBytes;                                // guarded by _respLock
    private bool _respStopping;                               // guarded by _respLock
    private readonly RqEntry _recvScratch;                    // responder thread only
    private readonly byte[] _ackBuf = new byte[RdmaWire.HeaderSize]; // responder thread only
    private byte[] _respBuf = new byte[RdmaWire.HeaderSize + 4096];  // responder thread only
    private uint _currentPsn;                                 // responder thread only

    private sealed class Request
    {
        public WireHeader Header;
        public byte[]? Payload;   // rented from ArrayPool<byte>.Shared
        public int Length;
        public bool Malformed;
    }

    // ---- queueing (receive thread) ------------------------------------------------------------------------------

    private bool EnqueueRequest(Socket s, in WireHeader h)
    {
        byte[]? payload = h.PayloadLength == 0 ? null : ArrayPool<byte>.Shared.Rent((int)h.PayloadLength);
        if (payload is not null && !ReadExactly(s, payload.AsSpan(0, (int)h.PayloadLength)))
        {
            ArrayPool<byte>.Shared.Return(payload);
            return false;
        }
        lock (_respLock)
        {
            if (_requests.Count >= MaxQueuedRequests || _queuedBytes + h.PayloadLength > MaxQueuedBytes)
            {
                if (payload is not null)
                {
                    ArrayPool<byte>.Shared.Return(payload);
                }
                return false; // the peer ignored its credit: close the connection
            }
            Request r = _requestPool.Count != 0 ? _requestPool.Pop() : new Request();
            r.Header = h;
            r.Payload = payload;
            r.Length = (int)h.PayloadLength;
            r.Malformed = false;
            _queuedBytes += h.PayloadLength;
            _requests.Enqueue(r);
            Monitor.PulseAll(_respLock);
        }
        return true;
    }

    private void EnqueueMalformed()
    {
        lock (_respLock)
        {
            Request r = _requestPool.Count != 0 ? _requestPool.Pop() : new Request();
            r.Header = default;
            r.Payload = null;
            r.Length = 0;
            r.Malformed = true;
            _requests.Enqueue(r);
            Monitor.PulseAll(_respLock);
        }
    }

    private void StopResponder()
    {
        lock (_respLock)
        {
            _respStopping = true;
            Monitor.PulseAll(_respLock);
        }
        lock (_rqLock)
        {
            Monitor.PulseAll(_rqLock);
        }
    }

    private void DrainRequests()
    {
        lock (_respLock)
        {
            while (_requests.Count != 0)
            {
                Request r = _requests.Dequeue();
                if (r.Payload is not null)
                {
                    ArrayPool<byte>.Shared.Return(r.Payload);
                    r.Payload = null;
                }
            }
            _queuedBytes = 0;
        }
    }

    // ---- execution (responder thread) ---------------------------------------------------------------------------

    private void ResponderLoop()
    {
        while (true)
        {
            Request r;
            lock (_respLock)
            {
                while (_requests.Count == 0 && !_respStopping)
                {
                    Monitor.Wait(_respLock);
                }
                if (_respStopping)
                {
                    return;
                }
                r = _requests.Dequeue();
                _queuedBytes -= r.Length;
            }
            try
            {
                if (State == QpState.RTS)
                {
                    Execute(r);
                    Interlocked.Increment(ref _requestsServed);
                }
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                // A bug (an invariant violation included): count it and answer, so the requester is not left waiting.
                Device.ReportInternalError(ex);
                if (!r.Malformed)
                {
                    Nak(r.Header.Psn, WireSyndrome.NAK_REMOTE_OPERATIONAL, Errno.EIO);
                }
            }
            finally
            {
                if (r.Payload is not null)
                {
                    ArrayPool<byte>.Shared.Return(r.Payload);
                    r.Payload = null;
                }
                lock (_respLock)
                {
                    _requestPool.Push(r);
                }
            }
        }
    }

    private void Execute(Request r)
    {
        if (r.Malformed)
        {
            Answer(WireOpcode.ACKNOWLEDGE, RdmaWire.UnknownPsn, WireSyndrome.NAK_INVALID_REQUEST, 0, 0);
            return;
        }
        WireHeader h = r.Header;
        _currentPsn = h.Psn;
        ReadOnlySpan<byte> payload = r.Payload is null ? default : r.Payload.AsSpan(0, r.Length);
        switch (h.Opcode)
        {
            case WireOpcode.RDMA_WRITE:
            case WireOpcode.RDMA_WRITE_WITH_IMM:
                ServeWrite(h, payload);
                break;
            case WireOpcode.SEND:
            case WireOpcode.SEND_WITH_IMM:
                ServeSend(h, payload);
                break;
            case WireOpcode.RDMA_READ_REQUEST:
                ServeRead(h, payload.Length);
                break;
            case WireOpcode.COMPARE_SWAP:
            case WireOpcode.FETCH_ADD:
            case WireOpcode.ATOMIC_WRITE:
                ServeAtomic(h, payload.Length);
                break;
            case WireOpcode.FLUSH:
                ServeFlush(h, payload.Length);
                break;
            default:
                Nak(h.Psn, WireSyndrome.NAK_INVALID_REQUEST, Errno.EINVAL);
                break;
        }
    }

    /// <summary>Finds the target region and checks domain, rights and bounds (kernel: rxe check_rkey). Holds a use on success.</summary>
    private MemoryRegion? Resolve(uint rkey, ulong va, ulong length, AccessFlags required)
    {
        MemoryRegion? mr = Device.LookupKey(rkey);
        if (mr is null || !mr.TryAcquire())
        {
            return null;
        }
        if (mr.Pd != Pd || (mr.Access & required) != required || !mr.Contains(va, length))
        {
            mr.Release();
            return null;
        }
        return mr;
    }

    private static WireSyndrome SyndromeOf(MrStatus s) => s switch
    {
        MrStatus.Ok => WireSyndrome.ACK,
        MrStatus.AccessError => WireSyndrome.NAK_REMOTE_ACCESS,
        MrStatus.RnrExceeded => WireSyndrome.NAK_RNR_RETRY_EXCEEDED,
        _ => WireSyndrome.NAK_REMOTE_OPERATIONAL,
    };

    private void ServeWrite(in WireHeader h, ReadOnlySpan<byte> payload)
    {
        if (payload.Length != 0)
        {
            MemoryRegion? mr = Resolve(h.Rkey, h.Va, (ulong)payload.Length, AccessFlags.REMOTE_WRITE);
            if (mr is null)
            {
                Nak(h.Psn, WireSyndrome.NAK_REMOTE_ACCESS, Errno.EACCES);
                return;
            }
            MrStatus s;
            Errno err;
            try
            {
                s = mr.Write(h.Va, payload, this, out err);
            }
            finally
            {
                mr.Release();
            }
            if (s != MrStatus.Ok)
            {
                Nak(h.Psn, SyndromeOf(s), err);
                return;
            }
        }
        if (h.Opcode == WireOpcode.RDMA_WRITE_WITH_IMM)
        {
            if (!TakeRecv())
            {
                Nak(h.Psn, WireSyndrome.NAK_RNR_RETRY_EXCEEDED, Errno.EAGAIN);
                return;
            }
            RecvCompletion(WcStatus.SUCCESS, WcOpcode.RECV_RDMA_WITH_IMM, (uint)payload.Length, (uint)h.Data2, true, 0);
        }
        Answer(WireOpcode.ACKNOWLEDGE, h.Psn, WireSyndrome.ACK, 0, 0);
    }

    private void ServeSend(in WireHeader h, ReadOnlySpan<byte> payload)
    {
        if (!TakeRecv())
        {
            Nak(h.Psn, WireSyndrome.NAK_RNR_RETRY_EXCEEDED, Errno.EAGAIN);
            return;
        }
        bool imm = h.Opcode == WireOpcode.SEND_WITH_IMM;
        ulong capacity = 0;
        for (int i = 0; i < _recvScratch.SgeCount; i++)
        {
            capacity += _recvScratch.Sges[i].Length;
        }
        if ((ulong)payload.Length > capacity)
        {
            RecvCompletion(WcStatus.LOC_LEN_ERR, WcOpcode.RECV, (uint)payload.Length, 0, false, 0);
            Nak(h.Psn, WireSyndrome.NAK_INVALID_REQUEST, Errno.EINVAL);
            return;
        }
        WcStatus s = Scatter(_recvScratch.Sges, _recvScratch.SgeCount, payload, this, out Errno err);
        if (s != WcStatus.SUCCESS)
        {
            RecvCompletion(s == WcStatus.RNR_RETRY_EXC_ERR ? WcStatus.LOC_PROT_ERR : s, WcOpcode.RECV, (uint)payload.Length, 0, false, (uint)err);
            Nak(h.Psn, s == WcStatus.RNR_RETRY_EXC_ERR ? WireSyndrome.NAK_RNR_RETRY_EXCEEDED : WireSyndrome.NAK_REMOTE_OPERATIONAL, err);
            return;
        }
        RecvCompletion(WcStatus.SUCCESS, WcOpcode.RECV, (uint)payload.Length, (uint)h.Data2, imm, 0);
        Answer(WireOpcode.ACKNOWLEDGE, h.Psn, WireSyndrome.ACK, 0, 0);
    }

    private void ServeRead(in WireHeader h, int payloadLength)
    {
        if (payloadLength != 0 || h.Length > Device.Attr.MaxMsgSize)
        {
            Nak(h.Psn, WireSyndrome.NAK_INVALID_REQUEST, Errno.EINVAL);
            return;
        }
        int len = (int)h.Length;
        if (_respBuf.Length < RdmaWire.HeaderSize + len)
        {
            _respBuf = new byte[RdmaWire.HeaderSize + Math.Max(len, Math.Min(2 * (_respBuf.Length - RdmaWire.HeaderSize), (int)RdmaWire.MaxPayload))];
        }
        if (len != 0)
        {
            MemoryRegion? mr = Resolve(h.Rkey, h.Va, (ulong)len, AccessFlags.REMOTE_READ);
            if (mr is null)
            {
                Nak(h.Psn, WireSyndrome.NAK_REMOTE_ACCESS, Errno.EACCES);
                return;
            }
            MrStatus s;
            Errno err;
            try
            {
                s = mr.Read(h.Va, _respBuf.AsSpan(RdmaWire.HeaderSize, len), this, out err);
            }
            finally
            {
                mr.Release();
            }
            if (s != MrStatus.Ok)
            {
                Nak(h.Psn, SyndromeOf(s), err);
                return;
            }
        }
        RdmaWire.WriteHeader(_respBuf, new WireHeader { Opcode = WireOpcode.RDMA_READ_RESPONSE, Psn = h.Psn, PayloadLength = (uint)len });
        lock (_sendLock)
        {
            SendLocked(_respBuf.AsSpan(0, RdmaWire.HeaderSize + len));
        }
    }

    private void ServeAtomic(in WireHeader h, int payloadLength)
    {
        if (payloadLength != 0 || (h.Va & 7) != 0)
        {
            Nak(h.Psn, WireSyndrome.NAK_INVALID_REQUEST, Errno.EINVAL); // misaligned atomic: rxe RESPST_ERR_MISALIGNED_ATOMIC
            return;
        }
        bool write = h.Opcode == WireOpcode.ATOMIC_WRITE;
        MemoryRegion? mr = Resolve(h.Rkey, h.Va, 8, write ? AccessFlags.REMOTE_WRITE : AccessFlags.REMOTE_ATOMIC);
        if (mr is null)
        {
            Nak(h.Psn, WireSyndrome.NAK_REMOTE_ACCESS, Errno.EACCES);
            return;
        }
        MrStatus s;
        Errno err;
        ulong original;
        try
        {
            OdpAtomic op = h.Opcode switch
            {
                WireOpcode.COMPARE_SWAP => OdpAtomic.CompareAndSwap,
                WireOpcode.FETCH_ADD => OdpAtomic.FetchAndAdd,
                _ => OdpAtomic.Write,
            };
            s = mr.Atomic(h.Va, op, h.Data1, h.Data2, out original, this, out err);
        }
        finally
        {
            mr.Release();
        }
        if (s != MrStatus.Ok)
        {
            Nak(h.Psn, SyndromeOf(s), err);
            return;
        }
        Answer(write ? WireOpcode.ACKNOWLEDGE : WireOpcode.ATOMIC_ACKNOWLEDGE, h.Psn, WireSyndrome.ACK, write ? 0 : original, 0);
    }

    private void ServeFlush(in WireHeader h, int payloadLength)
    {
        var type = (FlushType)(h.Flags & 0xF);
        var level = (FlushLevel)(h.Flags >> 4);
        if (payloadLength != 0 || type is not (FlushType.GLOBAL or FlushType.PERSISTENT) || level is not (FlushLevel.RANGE or FlushLevel.MR))
        {
            Nak(h.Psn, WireSyndrome.NAK_INVALID_REQUEST, Errno.EINVAL);
            return;
        }
        AccessFlags required = type == FlushType.PERSISTENT ? AccessFlags.FLUSH_PERSISTENT : AccessFlags.FLUSH_GLOBAL;
        MemoryRegion? mr = Device.LookupKey(h.Rkey);
        if (level == FlushLevel.MR && mr is ImplicitOdpMemoryRegion)
        {
            Nak(h.Psn, WireSyndrome.NAK_INVALID_REQUEST, Errno.EINVAL); // a whole-address-space flush is not a thing
            return;
        }
        ulong va = level == FlushLevel.MR && mr is not null ? mr.Addr : h.Va;
        ulong length = level == FlushLevel.MR && mr is not null ? mr.Length : h.Data1;
        mr = Resolve(h.Rkey, va, length, required);
        if (mr is null)
        {
            Nak(h.Psn, WireSyndrome.NAK_REMOTE_ACCESS, Errno.EACCES);
            return;
        }
        MrStatus s = MrStatus.Ok;
        Errno err = Errno.Ok;
        try
        {
            if (type == FlushType.PERSISTENT)
            {
                s = mr.Flush(va, length, this, out err);
            }
            else
            {
                Interlocked.MemoryBarrier(); // global visibility: every earlier write is already in memory
            }
        }
        finally
        {
            mr.Release();
        }
        if (s != MrStatus.Ok)
        {
            Nak(h.Psn, SyndromeOf(s), err);
            return;
        }
        Answer(WireOpcode.ACKNOWLEDGE, h.Psn, WireSyndrome.ACK, 0, 0);
    }

    /// <summary>Takes the oldest posted RECV into <c>_recvScratch</c>, backing off like RNR while none is posted.</summary>
    private bool TakeRecv()
    {
        TimeSpan step = Attr.MinRnrTimer;
        int steps = 0;
        while (true)
        {
            lock (_rqLock)
            {
                if (_rqCount != 0)
                {
                    _recvScratch.CopyFrom(_rq[_rqHead]);
                    _rqHead = (_rqHead + 1) % _rq.Length;
                    _rqCount--;
                    return true;
                }
                if (_respStopping || State != QpState.RTS)
                {
                    return false;
                }
                if (Monitor.Wait(_rqLock, step))
                {
                    continue;
                }
            }
            steps++;
            SendRnrWait();
            if (_peerRnrRetry != Infinite && steps > _peerRnrRetry)
            {
                return false;
            }
            step = step * 2 > s_maxRnrStep ? s_maxRnrStep : step * 2;
        }
    }

    /// <inheritdoc/>
    /// <remarks>
    /// The responder's side of an ODP fault (kernel: the RDMA responder page fault of mlx5): queue the fault for the
    /// page-fault worker — the packet that missed, then a prefetch of the rest of the message up to 4 MiB — and back
    /// off like an RNR NAK cycle (min_rnr_timer, doubling up to 64 ms), telling the requester at each step so its
    /// transport timer restarts. The requester's rnr_retry bounds the steps (7 = no bound).
    /// </remarks>
    MrStatus IOdpFaultWaiter.WaitForFault(OdpRegionBase mr, OdpUmem umem, ulong missing, ulong accessEnd, OdpFaultKind kind, int round, out Errno err)
    {
        err = Errno.Ok;
        if (round >= MaxFaultRounds)
        {
            err = Errno.EBUSY;
            return MrStatus.RnrExceeded;
        }
        ulong start = Page.AlignDown(missing, Page.Size);
        ulong end = Math.Min(Math.Min(start + PacketBytes, Page.AlignUp(accessEnd, Page.Size)), umem.End);
        ulong prefetchEnd = Math.Min(Math.Min(start + OdpFaultQueue.MaxPrefetch, Page.AlignUp(accessEnd, Page.Size)), umem.End);
        OdpFaultWork? w = Device.FaultQueue.Submit(mr, umem, start, end, prefetchEnd, kind, advice: false, waiter: true);
        if (w is null)
        {
            err = Errno.EFAULT;
            return MrStatus.AccessError;
        }
        TimeSpan step = Attr.MinRnrTimer;
        int steps = 0;
        while (!w.Done.Wait(step))
        {
            steps++;
            SendRnrWait();
            if (_peerRnrRetry != Infinite && steps > _peerRnrRetry)
            {
                Device.FaultQueue.Complete(w);
                err = Errno.EAGAIN;
                return MrStatus.RnrExceeded;
            }
            step = step * 2 > s_maxRnrStep ? s_maxRnrStep : step * 2;
        }
        Errno e = w.Result;
        Device.FaultQueue.Complete(w);
        if (e is Errno.Ok or Errno.EAGAIN or Errno.EBUSY)
        {
            return MrStatus.Ok;
        }
        err = e;
        return MrStatus.AccessError;
    }

    private void SendRnrWait()
    {
        Interlocked.Increment(ref _rnrWaitsSent);
        Answer(WireOpcode.ACKNOWLEDGE, _currentPsn, WireSyndrome.RNR_WAIT, 0, 0);
    }

    private void Nak(uint psn, WireSyndrome syndrome, Errno err)
    {
        Interlocked.Increment(ref _naksSent);
        Answer(WireOpcode.ACKNOWLEDGE, psn, syndrome, 0, (ulong)err);
    }

    private void Answer(WireOpcode op, uint psn, WireSyndrome syndrome, ulong data1, ulong data2)
    {
        RdmaWire.WriteHeader(_ackBuf, new WireHeader { Opcode = op, Psn = psn, Syndrome = syndrome, Data1 = data1, Data2 = data2 });
        lock (_sendLock)
        {
            SendLocked(_ackBuf);
        }
    }

    private void RecvCompletion(WcStatus status, WcOpcode opcode, uint byteLen, uint imm, bool withImm, uint vendorErr)
    {
        InitAttr.RecvCq.Add(new WorkCompletion
        {
            WrId = _recvScratch.WrId,
            Status = status,
            Opcode = opcode,
            ByteLen = byteLen,
            ImmData = imm,
            WcFlags = withImm ? WcFlags.WITH_IMM : WcFlags.None,
            VendorErr = vendorErr,
            QpNum = QpNum,
            SrcQp = DestQpNum,
        });
    }
}
