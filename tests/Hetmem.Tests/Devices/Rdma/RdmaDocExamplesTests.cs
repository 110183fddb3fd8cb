using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Rdma;

/// <summary>The examples of docs/rdma.md, kept compiling and passing.</summary>
public sealed class RdmaDocExamplesTests
{
    [Fact]
    public void TheOverviewExampleReadsAnOdpRegionOfAnotherDeviceAndFollowsTheCpu()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var server = new AddressSpace(memory);
        var client = new AddressSpace(memory);
        using var nicA = new RdmaDevice("rxe_a");
        using var nicB = new RdmaDevice("rxe_b");
        ProtectionDomain spd = nicA.AllocPd(server);
        ProtectionDomain cpd = nicB.AllocPd(client);
        ulong data = server.Mmap(0, 1 << 20, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        MemoryRegion mr = spd.RegMr(data, 1 << 20, AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_WRITE | AccessFlags.ON_DEMAND);
        ulong buf = client.Mmap(0, 4096, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        MemoryRegion local = cpd.RegMr(buf, 4096, AccessFlags.LOCAL_WRITE | AccessFlags.ON_DEMAND);
        CompletionQueue scq = nicA.CreateCq(), ccq = nicB.CreateCq();
        QueuePair sqp = spd.CreateQp(new QpInitAttr(scq, scq));
        QueuePair cqp = cpd.CreateQp(new QpInitAttr(ccq, ccq));
        QueuePair.ConnectPair(cqp, sqp);

        cqp.PostSend(new SendWr { WrId = 1, Opcode = WrOpcode.RDMA_READ, SendFlags = SendFlags.SIGNALED,
            SgList = [new Sge(buf, 64, local.Lkey)], RemoteAddr = data + 4000, Rkey = mr.Rkey });
        WorkCompletion wc = ccq.Wait(TimeSpan.FromSeconds(10));
        Assert.Equal(WcStatus.SUCCESS, wc.Status);
        Assert.True(mr.Stats.PageFaultsHandled >= 1);

        server.Munmap(data, 4096);
        Assert.True(mr.Stats.PageInvalidations >= 1);
        cqp.PostSend(new SendWr { WrId = 2, Opcode = WrOpcode.RDMA_READ, SgList = [new Sge(buf, 8, local.Lkey)], RemoteAddr = data, Rkey = mr.Rkey });
        wc = ccq.Wait(TimeSpan.FromSeconds(10));
        Assert.Equal((WcStatus.REM_ACCESS_ERR, (uint)Errno.EFAULT, QpState.RTS), (wc.Status, wc.VendorErr, cqp.State));

        server.Mprotect(data + 4096, 4096, Prot.Read);
        cqp.PostSend(new SendWr { WrId = 3, Opcode = WrOpcode.RDMA_WRITE, SgList = [new Sge(buf, 8, local.Lkey)], RemoteAddr = data + 4096, Rkey = mr.Rkey });
        wc = ccq.Wait(TimeSpan.FromSeconds(10));
        Assert.Equal((WcStatus.REM_ACCESS_ERR, (uint)Errno.EPERM), (wc.Status, wc.VendorErr));
        cqp.PostSend(new SendWr { WrId = 4, Opcode = WrOpcode.RDMA_READ, SendFlags = SendFlags.SIGNALED, SgList = [new Sge(buf, 8, local.Lkey)], RemoteAddr = data + 4096, Rkey = mr.Rkey });
        Assert.Equal(WcStatus.SUCCESS, ccq.Wait(TimeSpan.FromSeconds(10)).Status);

        var imr = (ImplicitOdpMemoryRegion)spd.RegMr(0, ulong.MaxValue, AccessFlags.REMOTE_READ | AccessFlags.ON_DEMAND);
        Assert.Equal(0, imr.ChildCount);
        cqp.PostSend(new SendWr { WrId = 5, Opcode = WrOpcode.RDMA_READ, SendFlags = SendFlags.SIGNALED, SgList = [new Sge(buf, 8, local.Lkey)], RemoteAddr = data + 8192, Rkey = imr.Rkey });
        Assert.Equal(WcStatus.SUCCESS, ccq.Wait(TimeSpan.FromSeconds(10)).Status);
        Assert.Equal(1, imr.ChildCount);

        spd.AdviseMr(AdviseMrAdvice.PREFETCH_WRITE, AdviseMrFlags.FLUSH, [new Sge(data + 8192, 64 * 4096, mr.Lkey)]);
        Assert.Equal(64, mr.Stats.PagePrefetch);
        Assert.True(((OdpMemoryRegion)mr).IsPresent(data + 8192 + 63 * 4096, write: true));

        nicB.Dispose();
        nicA.Dispose();
        server.Exit();
        client.Exit();
    }
}
