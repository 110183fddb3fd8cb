using System.Buffers.Binary;
using System.Net.Sockets;
using Hetmem.Physical;

namespace Hetmem.Devices.Rdma;

/// <summary>The requester and the receive loop (kernel: rxe_req.c building packets, rxe_comp.c completing them).</summary>
public sealed partial class QueuePair
{
    private readonly byte[] _rxHeader = new byte[RdmaWire.HeaderSize]; // receive thread only
    private byte[] _rxPayload = new byte[4096];                        // receive thread only
    private SqEntry? _rxScratch;                                        // receive thread only

    /// <summary>True for opcodes whose local data travels with the request.</summary>
    private static bool Gathers(WrOpcode op) => op is WrOpcode.RDMA_WRITE or WrOpcode.RDMA_WRITE_WITH_IMM or WrOpcode.SEND
        or WrOpcode.SEND_WITH_IMM or WrOpcode.ATOMIC_WRITE;

    /// <summary>
    /// Builds the request frame of <paramref name="wr"/> (whose PSN is <paramref name="psn"/>) into <paramref name="frame"/>,
    /// whose payload part already holds the gathered data, and checks the SGEs that will receive an answer. Caller holds
    /// <c>_sendLock</c>; nothing here calls into the mm.
    /// </summary>
    private WcStatus BuildRequestLocked(in SendWr wr, uint psn, uint total, Span<byte> frame, out int frameBytes)
    {
        frameBytes = RdmaWire.HeaderSize;
        var h = new WireHeader { Psn = psn, Va = wr.RemoteAddr, Rkey = wr.Rkey };
        switch (wr.Opcode)
        {
            case WrOpcode.RDMA_WRITE:
            case WrOpcode.RDMA_WRITE_WITH_IMM:
            case WrOpcode.SEND:
            case WrOpcode.SEND_WITH_IMM:
                h.Opcode = wr.Opcode switch
                {
                    WrOpcode.RDMA_WRITE => WireOpcode.RDMA_WRITE,
                    WrOpcode.RDMA_WRITE_WITH_IMM => WireOpcode.RDMA_WRITE_WITH_IMM,
                    WrOpcode.SEND => WireOpcode.SEND,
                    _ => WireOpcode.SEND_WITH_IMM,
                };
                h.Data2 = wr.ImmData;
                h.PayloadLength = total;
                frameBytes += (int)total;
                break;
            case WrOpcode.RDMA_READ:
                for (int i = 0; i < (wr.SgList?.Length ?? 0); i++)
                {
                    if (CheckLocal(wr.SgList![i], write: true, out _) != WcStatus.SUCCESS)
                    {
                        return WcStatus.LOC_PROT_ERR;
                    }
                }
                h.Opcode = WireOpcode.RDMA_READ_REQUEST;
                h.Length = total;
                break;
            case WrOpcode.ATOMIC_CMP_AND_SWP:
            case WrOpcode.ATOMIC_FETCH_AND_ADD:
                if (CheckLocal(wr.SgList![0], write: true, out _) != WcStatus.SUCCESS)
                {
                    return WcStatus.LOC_PROT_ERR;
                }
                h.Opcode = wr.Opcode == WrOpcode.ATOMIC_CMP_AND_SWP ? WireOpcode.COMPARE_SWAP : WireOpcode.FETCH_ADD;
                h.Data1 = wr.CompareAdd;
                h.Data2 = wr.Swap;
                break;
            case WrOpcode.ATOMIC_WRITE:
                h.Opcode = WireOpcode.ATOMIC_WRITE;
                h.Data1 = BinaryPrimitives.ReadUInt64LittleEndian(frame[RdmaWire.HeaderSize..]);
                break;
            default:
                h.Opcode = WireOpcode.FLUSH;
                h.Data1 = wr.FlushLength;
                h.Flags = (byte)((int)wr.FlushType | ((int)wr.FlushLevel << 4));
                break;
        }
        RdmaWire.WriteHeader(frame, h);
        return WcStatus.SUCCESS;
    }

    /// <summary>
    /// Copies the data of <paramref name="sges"/> into <paramref name="dst"/> (kernel: rxe copy_data from the WQE). Holds
    /// no QP lock: an ODP buffer faults here, through the mm.
    /// </summary>
    private WcStatus Gather(Sge[]? sges, Span<byte> dst, out Errno err)
    {
        err = Errno.Ok;
        int done = 0;
        for (int i = 0; i < (sges?.Length ?? 0); i++)
        {
            Sge sge = sges![i];
            WcStatus s = CheckLocal(sge, write: false, out MemoryRegion? mr);
            if (s != WcStatus.SUCCESS)
            {
                return s;
            }
            if (sge.Length == 0)
            {
                continue;
            }
            if (!mr!.TryAcquire())
            {
                return WcStatus.LOC_PROT_ERR;
            }
            try
            {
                if (mr.Read(sge.Addr, dst.Slice(done, (int)sge.Length), LocalFaultWaiter.Instance, out err) != MrStatus.Ok)
                {
                    return WcStatus.LOC_PROT_ERR;
                }
            }
            finally
            {
                mr.Release();
            }
            done += (int)sge.Length;
        }
        return WcStatus.SUCCESS;
    }

    /// <summary>Copies <paramref name="src"/> into the SGEs of <paramref name="sges"/> (READ responses, atomic results, RECV).</summary>
    private WcStatus Scatter(Sge[] sges, int count, ReadOnlySpan<byte> src, IOdpFaultWaiter waiter, out Errno err)
    {
        err = Errno.Ok;
        int done = 0;
        for (int i = 0; i < count && done < src.Length; i++)
        {
            Sge sge = sges[i];
            WcStatus s = CheckLocal(sge, write: true, out MemoryRegion? mr);
            if (s != WcStatus.SUCCESS)
            {
                return s;
            }
            int n = Math.Min((int)sge.Length, src.Length - done);
            if (n == 0)
            {
                continue;
            }
            if (!mr!.TryAcquire())
            {
                return WcStatus.LOC_PROT_ERR;
            }
            try
            {
                MrStatus r = mr.Write(sge.Addr, src.Slice(done, n), waiter, out err);
                if (r == MrStatus.RnrExceeded)
                {
                    return WcStatus.RNR_RETRY_EXC_ERR;
                }
                if (r != MrStatus.Ok)
                {
                    return WcStatus.LOC_PROT_ERR;
                }
            }
            finally
            {
                mr.Release();
            }
            done += n;
        }
        return done == src.Length ? WcStatus.SUCCESS : WcStatus.LOC_LEN_ERR;
    }

    /// <summary>Checks a local SGE: known lkey of this domain, inside its region, LOCAL_WRITE when written (kernel: lookup_mr + mr_check_range).</summary>
    private WcStatus CheckLocal(in Sge sge, bool write, out MemoryRegion? mr)
    {
        mr = Device.LookupKey(sge.Lkey);
        if (mr is null || mr.Pd != Pd || !mr.Contains(sge.Addr, sge.Length) || write && (mr.Access & AccessFlags.LOCAL_WRITE) == 0)
        {
            return WcStatus.LOC_PROT_ERR;
        }
        return WcStatus.SUCCESS;
    }

    // ---- receive loop -------------------------------------------------------------------------------------------

    private void ReceiveLoop()
    {
        Socket s = _socket!;
        try
        {
            while (Volatile.Read(ref _disposed) == 0)
            {
                if (!s.Poll(20_000, SelectMode.SelectRead))
                {
                    CheckTimeout();
                    continue;
                }
                if (!ReadHeader(s, out WireHeader h))
                {
                    break;
                }
                switch (h.Opcode)
                {
                    case WireOpcode.RDMA_READ_RESPONSE:
                    case WireOpcode.ACKNOWLEDGE:
                    case WireOpcode.ATOMIC_ACKNOWLEDGE:
                        if (!ReadPayload(s, h.PayloadLength))
                        {
                            return;
                        }
                        OnResponse(h, _rxPayload.AsSpan(0, (int)h.PayloadLength));
                        break;
                    default:
                        if (!EnqueueRequest(s, h))
                        {
                            return;
                        }
                        break;
                }
                CheckTimeout();
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            Device.ReportInternalError(ex);
        }
        finally
        {
            if (Volatile.Read(ref _disposed) == 0)
            {
                ConnectionLost();
            }
            StopResponder();
        }
    }

    /// <summary>Reads one valid header; on garbage answers NAK_INVALID_REQUEST once and slides byte by byte to the next valid header.</summary>
    private bool ReadHeader(Socket s, out WireHeader h)
    {
        byte[] buf = _rxHeader;
        if (!ReadExactly(s, buf))
        {
            h = default;
            return false;
        }
        bool reported = false;
        while (!RdmaWire.TryReadHeader(buf, out h))
        {
            if (!reported)
            {
                reported = true;
                Interlocked.Increment(ref _malformedFrames);
                EnqueueMalformed();
            }
            Buffer.BlockCopy(buf, 1, buf, 0, buf.Length - 1);
            if (!ReadExactly(s, buf.AsSpan(buf.Length - 1)))
            {
                return false;
            }
        }
        return true;
    }

    private static bool ReadExactly(Socket s, Span<byte> dst)
    {
        while (!dst.IsEmpty)
        {
            int n = s.Receive(dst, SocketFlags.None);
            if (n == 0)
            {
                return false;
            }
            dst = dst[n..];
        }
        return true;
    }

    private bool ReadPayload(Socket s, uint length)
    {
        if (_rxPayload.Length < length)
        {
            _rxPayload = new byte[Math.Max(length, Math.Min(2u * (uint)_rxPayload.Length, RdmaWire.MaxPayload))];
        }
        return ReadExactly(s, _rxPayload.AsSpan(0, (int)length));
    }

    private void CheckTimeout()
    {
        bool failed = false;
        lock (_sqLock)
        {
            if (_sqCount != 0 && _state == QpState.RTS
                && Environment.TickCount64 - _lastProgress > (long)(Attr.Timeout.TotalMilliseconds * (Attr.RetryCnt + 1)))
            {
                MoveToErrorLocked(0, WcStatus.RETRY_EXC_ERR, 0);
                failed = true;
            }
        }
        if (failed)
        {
            FlushRecvQueue();
        }
    }

    /// <summary>Completes the oldest outstanding WR from an answer (kernel: rxe_completer).</summary>
    private void OnResponse(in WireHeader h, ReadOnlySpan<byte> payload)
    {
        SqEntry e = _rxScratch ??= new SqEntry(InitAttr.Cap.MaxSendSge);
        lock (_sqLock)
        {
            if (_state != QpState.RTS || _sqCount == 0 || _sq[_sqHead].Psn != h.Psn)
            {
                return; // a NAK for an unparsable frame, or an answer after the WR was flushed
            }
            _lastProgress = Environment.TickCount64;
            if (h.Opcode == WireOpcode.ACKNOWLEDGE && h.Syndrome == WireSyndrome.RNR_WAIT)
            {
                Interlocked.Increment(ref _rnrWaitsReceived);
                return;
            }
            SqEntry head = _sq[_sqHead];
            e.WrId = head.WrId;
            e.Opcode = head.Opcode;
            e.Signaled = head.Signaled;
            e.Psn = head.Psn;
            e.TotalLength = head.TotalLength;
            e.SgeCount = head.SgeCount;
            Array.Copy(head.Sges, e.Sges, head.SgeCount);
        }
        WcStatus status;
        Errno err = Errno.Ok;
        bool fatal = false;
        switch (h.Opcode)
        {
            case WireOpcode.RDMA_READ_RESPONSE when e.Opcode == WrOpcode.RDMA_READ:
                status = payload.Length != e.TotalLength ? WcStatus.BAD_RESP_ERR : Scatter(e.Sges, e.SgeCount, payload, LocalFaultWaiter.Instance, out err);
                fatal = status != WcStatus.SUCCESS;
                break;
            case WireOpcode.ATOMIC_ACKNOWLEDGE when e.Opcode is WrOpcode.ATOMIC_CMP_AND_SWP or WrOpcode.ATOMIC_FETCH_AND_ADD:
            {
                Span<byte> original = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(original, h.Data1);
                status = Scatter(e.Sges, e.SgeCount, original, LocalFaultWaiter.Instance, out err);
                fatal = status != WcStatus.SUCCESS;
                break;
            }
            case WireOpcode.ACKNOWLEDGE when e.Opcode is not (WrOpcode.RDMA_READ or WrOpcode.ATOMIC_CMP_AND_SWP or WrOpcode.ATOMIC_FETCH_AND_ADD)
                || h.Syndrome != WireSyndrome.ACK:
                status = RdmaWire.StatusOf(h.Syndrome);
                err = (Errno)h.Data2;
                fatal = status is WcStatus.RNR_RETRY_EXC_ERR or WcStatus.BAD_RESP_ERR;
                break;
            default:
                status = WcStatus.BAD_RESP_ERR;
                fatal = true;
                break;
        }
        bool flushRecv = false;
        lock (_sqLock)
        {
            if (_state != QpState.RTS || _sqCount == 0 || _sq[_sqHead].Psn != e.Psn)
            {
                return;
            }
            if (fatal)
            {
                MoveToErrorLocked(0, status, (uint)err);
                flushRecv = true;
            }
            else
            {
                CompleteSend(_sq[_sqHead], status, (uint)err, force: status != WcStatus.SUCCESS);
                _sqHead = (_sqHead + 1) % _sq.Length;
                _sqCount--;
            }
        }
        if (flushRecv)
        {
            FlushRecvQueue();
        }
    }

    /// <summary>How a local buffer waits for its ODP fault: taken synchronously (kernel: mlx5 WQE faults, rxe local copies).</summary>
    private sealed class LocalFaultWaiter : IOdpFaultWaiter
    {
        public static readonly LocalFaultWaiter Instance = new();

        public MrStatus WaitForFault(OdpRegionBase mr, OdpUmem umem, ulong missing, ulong accessEnd, OdpFaultKind kind, int round, out Errno err)
        {
            err = Errno.Ok;
            if (round >= MaxFaultRounds)
            {
                err = Errno.EBUSY;
                return MrStatus.AccessError;
            }
            ulong start = Page.AlignDown(missing, Page.Size);
            ulong end = Math.Min(Page.AlignUp(accessEnd, Page.Size), umem.End);
            Errno e = umem.Fault(start, end, kind, out _);
            if (e == Errno.Ok)
            {
                mr.Stats.AddFault((long)((end - start) >> Page.Shift));
                return MrStatus.Ok;
            }
            if (e is Errno.EAGAIN or Errno.EBUSY)
            {
                return MrStatus.Ok;
            }
            err = e;
            return MrStatus.AccessError;
        }
    }
}
