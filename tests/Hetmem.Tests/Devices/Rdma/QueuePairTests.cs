using Hetmem.Devices.Rdma;
using Hetmem.Physical;
using static Hetmem.Tests.Devices.Rdma.RdmaTestBed;

namespace Hetmem.Tests.Devices.Rdma;

public sealed class QueuePairTests : IDisposable
{
    private const AccessFlags All = AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_ATOMIC | AccessFlags.ON_DEMAND;
    private readonly RdmaTestBed _bed = new(attr: new QpAttr { RnrRetry = 7 });

    public void Dispose() => _bed.Dispose();

    private (ulong Addr, MemoryRegion Mr) Region(ulong bytes, AccessFlags access = All)
    {
        ulong a = _bed.MapServer(bytes);
        return (a, _bed.ServerPd.RegMr(a, bytes, access));
    }

    private SendWr ReadWr(ulong remote, uint rkey, uint length) => new()
    {
        Opcode = WrOpcode.RDMA_READ,
        SgList = [new Sge(_bed.ClientBuf, length, _bed.ClientMr.Lkey)],
        RemoteAddr = remote,
        Rkey = rkey,
    };

    [Fact]
    public void AnUnknownRkeyCompletesWithRemoteAccessErrorAndTheConnectionKeepsWorking()
    {
        (ulong a, MemoryRegion mr) = Region(Page.Size);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(a, mr.Rkey ^ 0x5500, 8).Status);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Write(a, 0, [1, 2, 3]));
        Assert.Equal(QpState.RTS, _bed.ClientQp.State);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a, mr.Rkey, [1, 2, 3]));
        Assert.Equal(2, _bed.ServerQp.NaksSent);
    }

    [Fact]
    public void OutOfBoundsRequestsAreRefusedWithoutTouchingTheBytesAroundTheRegion()
    {
        ulong a = _bed.MapServer(3 * Page.Size);
        byte[] sentinel = Pattern(3 * Page.Size, 5);
        _bed.ServerCpu.Write(a, sentinel);
        MemoryRegion mr = _bed.ServerPd.RegMr(a + Page.Size, Page.Size, All);
        byte[] junk = Pattern(64, 6);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Write(a + Page.Size - 8, mr.Rkey, junk));
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Write(a + 2 * Page.Size - 32, mr.Rkey, junk));
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Write(ulong.MaxValue - 16, mr.Rkey, junk));
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(a + 2 * Page.Size, mr.Rkey, 1).Status);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.FetchAdd(a + 2 * Page.Size, mr.Rkey, 1).Status);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.CompareSwap(a + Page.Size - 8, mr.Rkey, 0, 1).Status);
        byte[] now = new byte[sentinel.Length];
        _bed.ServerCpu.Read(a, now);
        Assert.Equal(sentinel, now);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a + 2 * Page.Size - 64, mr.Rkey, junk));
    }

    [Fact]
    public void MissingRightsAreRemoteAccessErrorsPerOperation()
    {
        ulong a = _bed.MapServer(Page.Size);
        _bed.ServerCpu.Write(a, 42L);
        MemoryRegion readOnly = _bed.ServerPd.RegMr(a, Page.Size, AccessFlags.REMOTE_READ | AccessFlags.ON_DEMAND);
        MemoryRegion writeOnly = _bed.ServerPd.RegMr(a, Page.Size, AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.ON_DEMAND);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Write(a, readOnly.Rkey, [9]));
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.FetchAdd(a, readOnly.Rkey, 1).Status);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(a, writeOnly.Rkey, 8).Status);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.CompareSwap(a, writeOnly.Rkey, 42, 1).Status);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Flush(a, writeOnly.Rkey, 8));
        Assert.Equal(42L, _bed.ServerCpu.Read<long>(a));
        Assert.Equal(42L, Le64(_bed.Read(a, readOnly.Rkey, 8).Data));
    }

    [Fact]
    public void ARegionOfAnotherProtectionDomainIsNotReachable()
    {
        ulong a = _bed.MapServer(Page.Size);
        ProtectionDomain other = _bed.ServerDev.AllocPd(_bed.ServerMm);
        MemoryRegion foreign = other.RegMr(a, Page.Size, All);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(a, foreign.Rkey, 8).Status);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Write(a, foreign.Rkey, [1]));
    }

    [Fact]
    public void AMisalignedAtomicIsAnInvalidRequest()
    {
        (ulong a, MemoryRegion mr) = Region(Page.Size);
        Assert.Equal(WcStatus.REM_INV_REQ_ERR, _bed.FetchAdd(a + 4, mr.Rkey, 1).Status);
        Assert.Equal(WcStatus.REM_INV_REQ_ERR, _bed.CompareSwap(a + 1, mr.Rkey, 0, 1).Status);
        Assert.Equal(WcStatus.SUCCESS, _bed.FetchAdd(a + 8, mr.Rkey, 1).Status);
    }

    [Fact]
    public void SendLandsInThePostedReceiveWithItsImmediate()
    {
        ulong rbuf = _bed.MapServer(Page.Size);
        MemoryRegion rmr = _bed.ServerPd.RegMr(rbuf, Page.Size, AccessFlags.LOCAL_WRITE | AccessFlags.ON_DEMAND);
        _bed.ServerQp.PostRecv(new RecvWr { WrId = 77, SgList = [new Sge(rbuf + 100, 50, rmr.Lkey), new Sge(rbuf + 1000, 50, rmr.Lkey)] });
        byte[] msg = Pattern(80, 7);
        _bed.ClientCpu.Write(_bed.ClientBuf, msg);
        WorkCompletion wc = _bed.Post(new SendWr { Opcode = WrOpcode.SEND_WITH_IMM, ImmData = 0xABCD, SgList = [new Sge(_bed.ClientBuf, 80, _bed.ClientMr.Lkey)] });
        Assert.Equal(WcStatus.SUCCESS, wc.Status);
        Assert.Equal(WcOpcode.SEND, wc.Opcode);
        WorkCompletion rc = _bed.ServerCq.Wait(WaitTime);
        Assert.Equal((77UL, WcStatus.SUCCESS, WcOpcode.RECV, 80u, 0xABCDu, WcFlags.WITH_IMM), (rc.WrId, rc.Status, rc.Opcode, rc.ByteLen, rc.ImmData, rc.WcFlags));
        Assert.Equal(_bed.ClientQp.QpNum, rc.SrcQp);
        byte[] got = new byte[80];
        _bed.ServerCpu.Read(rbuf + 100, got.AsSpan(0, 50));
        _bed.ServerCpu.Read(rbuf + 1000, got.AsSpan(50, 30));
        Assert.Equal(msg, got);
    }

    [Fact]
    public void WriteWithImmediateConsumesAReceive()
    {
        (ulong a, MemoryRegion mr) = Region(Page.Size);
        _bed.ServerQp.PostRecv(new RecvWr { WrId = 5 });
        _bed.ClientCpu.Write(_bed.ClientBuf, 123L);
        WorkCompletion wc = _bed.Post(new SendWr
        {
            Opcode = WrOpcode.RDMA_WRITE_WITH_IMM,
            ImmData = 9,
            SgList = [new Sge(_bed.ClientBuf, 8, _bed.ClientMr.Lkey)],
            RemoteAddr = a,
            Rkey = mr.Rkey,
        });
        Assert.Equal(WcStatus.SUCCESS, wc.Status);
        WorkCompletion rc = _bed.ServerCq.Wait(WaitTime);
        Assert.Equal((5UL, WcOpcode.RECV_RDMA_WITH_IMM, 9u, 8u), (rc.WrId, rc.Opcode, rc.ImmData, rc.ByteLen));
        Assert.Equal(123L, _bed.ServerCpu.Read<long>(a));
    }

    [Fact]
    public void ASendLargerThanTheReceiveIsAnInvalidRequestAndALocalLengthError()
    {
        ulong rbuf = _bed.MapServer(Page.Size);
        MemoryRegion rmr = _bed.ServerPd.RegMr(rbuf, Page.Size, AccessFlags.LOCAL_WRITE | AccessFlags.ON_DEMAND);
        _bed.ServerQp.PostRecv(new RecvWr { WrId = 1, SgList = [new Sge(rbuf, 16, rmr.Lkey)] });
        WorkCompletion wc = _bed.Post(new SendWr { Opcode = WrOpcode.SEND, SgList = [new Sge(_bed.ClientBuf, 17, _bed.ClientMr.Lkey)] });
        Assert.Equal(WcStatus.REM_INV_REQ_ERR, wc.Status);
        Assert.Equal(WcStatus.LOC_LEN_ERR, _bed.ServerCq.Wait(WaitTime).Status);
    }

    [Fact]
    public void AReceiveWhoseBufferIsUnusableIsARemoteOperationalError()
    {
        _bed.ServerQp.PostRecv(new RecvWr { WrId = 3, SgList = [new Sge(0x1000, 64, 0xDEAD01)] });
        WorkCompletion wc = _bed.Post(new SendWr { Opcode = WrOpcode.SEND, SgList = [new Sge(_bed.ClientBuf, 16, _bed.ClientMr.Lkey)] });
        Assert.Equal(WcStatus.REM_OP_ERR, wc.Status);
        WorkCompletion rc = _bed.ServerCq.Wait(WaitTime);
        Assert.Equal((3UL, WcStatus.LOC_PROT_ERR), (rc.WrId, rc.Status));
        Assert.Equal(QpState.RTS, _bed.ClientQp.State);
    }

    [Fact]
    public void ASendWithNoReceivePostedRunsOutOfRnrRetries()
    {
        using var bed = new RdmaTestBed(attr: new QpAttr { RnrRetry = 2, MinRnrTimer = TimeSpan.FromMilliseconds(1) });
        WorkCompletion wc = bed.Post(new SendWr { Opcode = WrOpcode.SEND, SgList = [new Sge(bed.ClientBuf, 8, bed.ClientMr.Lkey)] });
        Assert.Equal(WcStatus.RNR_RETRY_EXC_ERR, wc.Status);
        Assert.True(bed.ServerQp.RnrWaitsSent >= 3);
        Assert.True(bed.ClientQp.RnrWaitsReceived >= 1);
        Assert.Equal(QpState.ERR, bed.ClientQp.State);
    }

    [Fact]
    public void AReceivePostedDuringTheRnrWaitIsUsed()
    {
        ulong rbuf = _bed.MapServer(Page.Size);
        MemoryRegion rmr = _bed.ServerPd.RegMr(rbuf, Page.Size, AccessFlags.LOCAL_WRITE | AccessFlags.ON_DEMAND);
        _bed.ClientCpu.Write(_bed.ClientBuf, 99L);
        _bed.ClientQp.PostSend(new SendWr { WrId = 1, Opcode = WrOpcode.SEND, SendFlags = SendFlags.SIGNALED, SgList = [new Sge(_bed.ClientBuf, 8, _bed.ClientMr.Lkey)] });
        SpinWait.SpinUntil(() => _bed.ServerQp.RnrWaitsSent >= 2, WaitTime);
        _bed.ServerQp.PostRecv(new RecvWr { WrId = 2, SgList = [new Sge(rbuf, 8, rmr.Lkey)] });
        Assert.Equal(WcStatus.SUCCESS, _bed.ClientCq.Wait(WaitTime).Status);
        Assert.Equal(WcStatus.SUCCESS, _bed.ServerCq.Wait(WaitTime).Status);
        Assert.Equal(99L, _bed.ServerCpu.Read<long>(rbuf));
    }

    [Fact]
    public void ABadLkeyIsALocalProtectionErrorThatMovesTheQpToErrorAndFlushesLaterWork()
    {
        (ulong a, MemoryRegion mr) = Region(Page.Size);
        _bed.ClientQp.PostRecv(new RecvWr { WrId = 40 });
        WorkCompletion wc = _bed.Post(new SendWr { Opcode = WrOpcode.RDMA_WRITE, SgList = [new Sge(_bed.ClientBuf, 8, _bed.ClientMr.Lkey + 0x100)], RemoteAddr = a, Rkey = mr.Rkey });
        Assert.Equal(WcStatus.LOC_PROT_ERR, wc.Status);
        Assert.Equal(QpState.ERR, _bed.ClientQp.State);
        WorkCompletion flushedRecv = _bed.ClientCq.Wait(WaitTime);
        Assert.Equal((40UL, WcStatus.WR_FLUSH_ERR), (flushedRecv.WrId, flushedRecv.Status));
        Assert.Equal(WcStatus.WR_FLUSH_ERR, _bed.Post(ReadWr(a, mr.Rkey, 8)).Status);
    }

    [Fact]
    public void ReadIntoALocalRegionWithoutLocalWriteIsALocalProtectionError()
    {
        (ulong a, MemoryRegion mr) = Region(Page.Size);
        MemoryRegion noWrite = _bed.ClientPd.RegMr(_bed.ClientBuf, Page.Size, AccessFlags.ON_DEMAND);
        WorkCompletion wc = _bed.Post(new SendWr { Opcode = WrOpcode.RDMA_READ, SgList = [new Sge(_bed.ClientBuf, 8, noWrite.Lkey)], RemoteAddr = a, Rkey = mr.Rkey });
        Assert.Equal(WcStatus.LOC_PROT_ERR, wc.Status);
    }

    [Fact]
    public void PostingRejectsBadWorkRequestsWithErrnosAndPostsNothing()
    {
        QueuePair fresh = _bed.ClientPd.CreateQp(new QpInitAttr(_bed.ClientCq, _bed.ClientCq, new QpCap(2, 2, 1, 1)));
        Assert.Equal(QpState.RESET, fresh.State);
        var wr = new SendWr { Opcode = WrOpcode.RDMA_READ, SgList = [new Sge(_bed.ClientBuf, 8, _bed.ClientMr.Lkey)] };
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => fresh.PostSend(wr)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => fresh.PostRecv(new RecvWr())).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => _bed.ClientQp.PostSend(new SendWr { Opcode = (WrOpcode)7 })).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => _bed.ClientQp.PostSend(new SendWr { Opcode = WrOpcode.ATOMIC_FETCH_AND_ADD, SgList = [new Sge(_bed.ClientBuf, 4, _bed.ClientMr.Lkey)] })).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => _bed.ClientQp.PostSend(new SendWr { Opcode = WrOpcode.SEND, SgList = new Sge[5] })).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => _bed.ClientQp.PostSend(new SendWr { Opcode = WrOpcode.FLUSH, FlushType = (FlushType)3 })).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => _bed.ClientQp.PostSend(new SendWr { Opcode = WrOpcode.SEND, SgList = [new Sge(_bed.ClientBuf, RdmaDevice.MaxMsgSize, _bed.ClientMr.Lkey), new Sge(_bed.ClientBuf, 1, _bed.ClientMr.Lkey)] })).Errno);
        Assert.Equal(0, _bed.ClientQp.OutstandingSends);
        fresh.Modify(QpState.INIT);
        Assert.Equal(QpState.INIT, fresh.State);
        fresh.PostRecv(new RecvWr { WrId = 1 });
        fresh.PostRecv(new RecvWr { WrId = 2 });
        Assert.Equal(Errno.ENOMEM, Assert.Throws<MmException>(() => fresh.PostRecv(new RecvWr { WrId = 3 })).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => fresh.Modify(QpState.RTS)).Errno);
        fresh.Modify(QpState.ERR);
        Assert.Equal(1UL, _bed.ClientCq.Wait(WaitTime).WrId);
        Assert.Equal(2UL, _bed.ClientCq.Wait(WaitTime).WrId);
        fresh.Dispose();
    }

    [Fact]
    public void AFullSendQueueRefusesWithEnomem()
    {
        QueuePair server = _bed.ServerPd.CreateQp(new QpInitAttr(_bed.ServerCq, _bed.ServerCq));
        QueuePair client = _bed.ClientPd.CreateQp(new QpInitAttr(_bed.ClientCq, _bed.ClientCq, new QpCap(2, 2, 1, 1)));
        QueuePair.ConnectPair(client, server);
        server.Modify(QpState.ERR); // never answers
        var wr = new SendWr { Opcode = WrOpcode.FLUSH, FlushType = FlushType.GLOBAL, FlushLevel = FlushLevel.RANGE };
        client.PostSend(wr);
        client.PostSend(wr);
        Assert.Equal(Errno.ENOMEM, Assert.Throws<MmException>(() => client.PostSend(wr)).Errno);
        Assert.Equal(2, client.OutstandingSends);
    }

    [Fact]
    public void APeerThatStopsAnsweringExhaustsTheTransportRetries()
    {
        QueuePair server = _bed.ServerPd.CreateQp(new QpInitAttr(_bed.ServerCq, _bed.ServerCq));
        QueuePair client = _bed.ClientPd.CreateQp(new QpInitAttr(_bed.ClientCq, _bed.ClientCq));
        QueuePair.ConnectPair(client, server, new QpAttr { Timeout = TimeSpan.FromMilliseconds(40), RetryCnt = 1 });
        server.Modify(QpState.ERR);
        (ulong a, MemoryRegion mr) = Region(Page.Size);
        client.PostSend(ReadWr(a, mr.Rkey, 8) with { WrId = 1, SendFlags = SendFlags.SIGNALED });
        client.PostSend(ReadWr(a, mr.Rkey, 8) with { WrId = 2 });
        WorkCompletion first = _bed.ClientCq.Wait(WaitTime);
        WorkCompletion second = _bed.ClientCq.Wait(WaitTime);
        Assert.Equal((1UL, WcStatus.RETRY_EXC_ERR), (first.WrId, first.Status));
        Assert.Equal((2UL, WcStatus.WR_FLUSH_ERR), (second.WrId, second.Status));
        Assert.Equal(QpState.ERR, client.State);
    }

    [Fact]
    public void ALostConnectionFailsOutstandingWork()
    {
        QueuePair server = _bed.ServerPd.CreateQp(new QpInitAttr(_bed.ServerCq, _bed.ServerCq));
        QueuePair client = _bed.ClientPd.CreateQp(new QpInitAttr(_bed.ClientCq, _bed.ClientCq));
        QueuePair.ConnectPair(client, server);
        server.Modify(QpState.ERR);
        (ulong a, MemoryRegion mr) = Region(Page.Size);
        client.PostSend(ReadWr(a, mr.Rkey, 8) with { WrId = 9 });
        server.Dispose();
        WorkCompletion wc = _bed.ClientCq.Wait(WaitTime);
        Assert.Equal((9UL, WcStatus.RETRY_EXC_ERR), (wc.WrId, wc.Status));
        SpinWait.SpinUntil(() => client.State == QpState.ERR, WaitTime);
        Assert.Equal(QpState.ERR, client.State);
    }

    [Fact]
    public void ConnectingToAMissingOrBusyQueuePairIsRefused()
    {
        QueuePair q = _bed.ClientPd.CreateQp(new QpInitAttr(_bed.ClientCq, _bed.ClientCq));
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => q.Connect(_bed.ServerDev.LocalEndPoint, 0xABCDE)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => q.Connect(_bed.ServerDev.LocalEndPoint, _bed.ServerQp.QpNum)).Errno);
        Assert.Equal(QpState.RESET, q.State);
        QueuePair s = _bed.ServerPd.CreateQp(new QpInitAttr(_bed.ServerCq, _bed.ServerCq));
        q.Connect(_bed.ServerDev.LocalEndPoint, s.QpNum);
        Assert.Equal(QpState.RTS, q.State);
        Assert.Equal(s.QpNum, q.DestQpNum);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => q.Connect(_bed.ServerDev.LocalEndPoint, s.QpNum)).Errno);
    }

    [Fact]
    public void UnsignaledSuccessesCompleteSilentlyButErrorsAlwaysReport()
    {
        (ulong a, MemoryRegion mr) = Region(Page.Size);
        _bed.ClientQp.PostSend(ReadWr(a, mr.Rkey, 8) with { WrId = 1 });
        _bed.ClientQp.PostSend(ReadWr(a, mr.Rkey ^ 0x1000, 8) with { WrId = 2 });
        _bed.ClientQp.PostSend(ReadWr(a, mr.Rkey, 8) with { WrId = 3, SendFlags = SendFlags.SIGNALED });
        WorkCompletion e = _bed.ClientCq.Wait(WaitTime);
        WorkCompletion ok = _bed.ClientCq.Wait(WaitTime);
        Assert.Equal((2UL, WcStatus.REM_ACCESS_ERR), (e.WrId, e.Status));
        Assert.Equal((3UL, WcStatus.SUCCESS), (ok.WrId, ok.Status));
        Assert.Equal(0, _bed.ClientCq.Count);
    }

    [Fact]
    public void ManyPipelinedRequestsCompleteInOrder()
    {
        (ulong a, MemoryRegion mr) = Region(64 * Page.Size);
        for (int i = 0; i < 100; i++)
        {
            _bed.ClientCpu.Write(_bed.ClientBuf + (ulong)i * 8, (long)i);
            _bed.ClientQp.PostSend(new SendWr
            {
                WrId = (ulong)i,
                Opcode = i % 2 == 0 ? WrOpcode.RDMA_WRITE : WrOpcode.ATOMIC_FETCH_AND_ADD,
                SendFlags = SendFlags.SIGNALED,
                SgList = [new Sge(_bed.ClientBuf + (ulong)i * 8, 8, _bed.ClientMr.Lkey)],
                RemoteAddr = a + (ulong)i * Page.Size / 2 & ~7UL,
                Rkey = mr.Rkey,
                CompareAdd = 1,
            });
        }
        for (int i = 0; i < 100; i++)
        {
            WorkCompletion wc = _bed.ClientCq.Wait(WaitTime);
            Assert.Equal(((ulong)i, WcStatus.SUCCESS), (wc.WrId, wc.Status));
        }
    }

    [Fact]
    public void AFlushNeedsTheFlushRightOfItsPlacementType()
    {
        ulong a = _bed.MapServer(Page.Size);
        MemoryRegion global = _bed.ServerPd.RegMr(a, Page.Size, AccessFlags.FLUSH_GLOBAL | AccessFlags.ON_DEMAND);
        MemoryRegion persistent = _bed.ServerPd.RegMr(a, Page.Size, AccessFlags.FLUSH_PERSISTENT | AccessFlags.ON_DEMAND);
        Assert.Equal(WcStatus.SUCCESS, _bed.Flush(a, global.Rkey, 100, FlushType.GLOBAL));
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Flush(a, global.Rkey, 100, FlushType.PERSISTENT));
        Assert.Equal(WcStatus.SUCCESS, _bed.Flush(a, persistent.Rkey, 100, FlushType.PERSISTENT));
        Assert.Equal(WcStatus.SUCCESS, _bed.Flush(0, persistent.Rkey, 0, FlushType.PERSISTENT, FlushLevel.MR));
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Flush(a + Page.Size - 10, persistent.Rkey, 100, FlushType.PERSISTENT));
    }

    [Fact]
    public void ZeroLengthReadsAndWritesSucceedWithoutTouchingMemory()
    {
        Assert.Equal(WcStatus.SUCCESS, _bed.Read(0x1234, 0, 0).Status);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(0x1234, 0, []));
    }
}

public sealed class LoopbackTests
{
    [Fact]
    public void TwoDevicesInOneProcessReadEachOthersMemoryInBothDirectionsAtOnce()
    {
        using var bed = new RdmaTestBed();
        const int bytes = 4 << 20;
        const AccessFlags access = AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_WRITE | AccessFlags.ON_DEMAND;
        ulong srv = bed.MapServer(2 * (ulong)bytes);
        MemoryRegion srvMr = bed.ServerPd.RegMr(srv, 2 * (ulong)bytes, access);
        byte[] srvData = Pattern(bytes, 11);
        byte[] cliData = Pattern(bytes, 12);
        bed.ServerCpu.Write(srv, srvData);
        bed.ClientCpu.Write(bed.ClientBuf + (ulong)bytes, cliData);
        var cliMr = bed.ClientPd.RegMr(bed.ClientBuf, RdmaTestBed.ClientBufBytes, access);
        for (int round = 0; round < 3; round++)
        {
            // Both responders stream 4 MiB READ responses while both requesters wait: neither side may block the other.
            bed.ClientQp.PostSend(new SendWr { WrId = 1, Opcode = WrOpcode.RDMA_READ, SendFlags = SendFlags.SIGNALED, SgList = [new Sge(bed.ClientBuf, bytes, bed.ClientMr.Lkey)], RemoteAddr = srv, Rkey = srvMr.Rkey });
            bed.ServerQp.PostSend(new SendWr { WrId = 2, Opcode = WrOpcode.RDMA_READ, SendFlags = SendFlags.SIGNALED, SgList = [new Sge(srv + (ulong)bytes, bytes, srvMr.Lkey)], RemoteAddr = bed.ClientBuf + (ulong)bytes, Rkey = cliMr.Rkey });
            WorkCompletion a = bed.ClientCq.Wait(WaitTime);
            WorkCompletion b = bed.ServerCq.Wait(WaitTime);
            Assert.Equal((1UL, WcStatus.SUCCESS, (uint)bytes), (a.WrId, a.Status, a.ByteLen));
            Assert.Equal((2UL, WcStatus.SUCCESS, (uint)bytes), (b.WrId, b.Status, b.ByteLen));
        }
        byte[] got = new byte[bytes];
        bed.ClientCpu.Read(bed.ClientBuf, got);
        Assert.Equal(srvData, got);
        bed.ServerCpu.Read(srv + (ulong)bytes, got);
        Assert.Equal(cliData, got);
        Assert.NotEqual(bed.ServerDev.LocalEndPoint.Port, bed.ClientDev.LocalEndPoint.Port);
    }
}
