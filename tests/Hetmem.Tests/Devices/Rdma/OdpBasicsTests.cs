using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;
using static Hetmem.Tests.Devices.Rdma.RdmaTestBed;

namespace Hetmem.Tests.Devices.Rdma;

public sealed class OdpBasicsTests : IDisposable
{
    private const AccessFlags Rw = AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ | AccessFlags.REMOTE_ATOMIC | AccessFlags.ON_DEMAND;
    private readonly RdmaTestBed _bed = new();

    public void Dispose() => _bed.Dispose();

    private (ulong Addr, OdpMemoryRegion Mr) Region(ulong bytes, AccessFlags access = Rw)
    {
        ulong a = _bed.MapServer(bytes);
        return (a, (OdpMemoryRegion)_bed.ServerPd.RegMr(a, bytes, access));
    }

    [Fact]
    public void RemoteWriteThenReadRoundTripsThroughAnOdpRegionOnAnotherDevice()
    {
        (ulong a, OdpMemoryRegion mr) = Region(4 * Mib);
        byte[] data = Pattern(10000, 1);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a + 4000, mr.Rkey, data));
        byte[] cpu = new byte[data.Length];
        _bed.ServerCpu.Read(a + 4000, cpu);
        Assert.Equal(data, cpu);
        (WcStatus s, byte[] back) = _bed.Read(a + 4000, mr.Rkey, data.Length, localOffset: 100);
        Assert.Equal(WcStatus.SUCCESS, s);
        Assert.Equal(data, back);
        Assert.True(mr.Stats.PageFaults >= 3, mr.Stats.ToString());
        Assert.Equal(MrKind.Odp, mr.Kind);
        Assert.Equal(mr.Lkey, mr.Rkey);
    }

    [Fact]
    public void PagesPresentAtRegistrationAreSnapshottedAndNeedNoFault()
    {
        ulong a = _bed.MapServer(64 * Page.Size);
        for (ulong i = 0; i < 16; i++)
        {
            _bed.ServerCpu.Write(a + i * Page.Size, (long)i + 1);
        }
        var mr = (OdpMemoryRegion)_bed.ServerPd.RegMr(a, 64 * Page.Size, Rw);
        Assert.Equal(16, mr.PresentPages);
        Assert.True(mr.IsPresent(a, write: true));
        Assert.False(mr.IsPresent(a + 16 * Page.Size));
        (WcStatus s, byte[] data) = _bed.Read(a, mr.Rkey, 16 * Page.Size);
        Assert.Equal(WcStatus.SUCCESS, s);
        Assert.Equal(16L, Le64(data.AsSpan(15 * Page.Size)));
        Assert.Equal(0, mr.Stats.PageFaults);
        Assert.Equal(0, mr.Stats.PageFaultsHandled);
    }

    [Fact]
    public void ARemoteFaultBringsInThePacketResumesAndPrefetchesTheRestOfTheMessage()
    {
        (ulong a, OdpMemoryRegion mr) = Region(4 * Mib);
        long demandBefore = _bed.ServerDev.ResponderFaults;
        long prefetchesBefore = _bed.ServerDev.ResponderPrefetches;
        (WcStatus s, byte[] data) = _bed.Read(a, mr.Rkey, (int)Mib);
        Assert.Equal(WcStatus.SUCCESS, s);
        Assert.All(data, b => Assert.Equal(0, b));
        Assert.Equal(256, mr.PresentPages);

        // The prefetch runs after the requester was resumed; count only once the worker has gone idle.
        Assert.True(_bed.ServerDev.FaultQueue.WaitIdle(TimeSpan.FromSeconds(30)), "the ODP fault worker did not go idle");
        long demand = _bed.ServerDev.ResponderFaults - demandBefore;
        long prefetches = _bed.ServerDev.ResponderPrefetches - prefetchesBefore;
        Assert.True(prefetches >= 1, $"no prefetch ran after the remote fault ({mr.Stats})");
        Assert.True(demand >= 1, $"no demand fault was serviced ({mr.Stats})");
        // Without the prefetch every one of the 256 packets would have faulted on its own.
        Assert.True(demand < 256, $"{demand} demand faults: the prefetch saved none");
        Assert.Equal(demand + prefetches, mr.Stats.PageFaultsHandled);
        Assert.True(mr.Stats.PageFaults >= 256, mr.Stats.ToString());
        Assert.False(mr.IsPresent(a + Mib));

        // Once the message is resident, reading it again needs no fault at all.
        long faultsBefore = mr.Stats.PageFaults;
        long handledBefore = mr.Stats.PageFaultsHandled;
        Assert.Equal(WcStatus.SUCCESS, _bed.Read(a, mr.Rkey, (int)Mib).Status);
        Assert.True(_bed.ServerDev.FaultQueue.WaitIdle(TimeSpan.FromSeconds(30)), "the ODP fault worker did not go idle");
        Assert.Equal(faultsBefore, mr.Stats.PageFaults);
        Assert.Equal(handledBefore, mr.Stats.PageFaultsHandled);
    }

    [Fact]
    public void ARemoteWriteToAZeroPageMappingBreaksItAndTheCpuSeesTheData()
    {
        (ulong a, OdpMemoryRegion mr) = Region(8 * Page.Size);
        Assert.Equal(0L, _bed.ServerCpu.Read<long>(a));
        Assert.Equal(WcStatus.SUCCESS, _bed.Read(a, mr.Rkey, 8).Status);
        Assert.True(mr.IsPresent(a));
        Assert.False(mr.IsPresent(a, write: true));
        Assert.Equal(_bed.Memory.ZeroPfn, mr.TranslatedPfn(a));
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a + 8, mr.Rkey, BitConverter.GetBytes(77L)));
        Assert.True(mr.IsPresent(a, write: true));
        Assert.NotEqual(_bed.Memory.ZeroPfn, mr.TranslatedPfn(a));
        Assert.Equal(77L, _bed.ServerCpu.Read<long>(a + 8));
    }

    [Fact]
    public void MunmapZapsTheTranslationsAndTheRemoteGetsAccessErrorsWhileTheRestKeepsWorking()
    {
        (ulong a, OdpMemoryRegion mr) = Region(16 * Page.Size);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a, mr.Rkey, Pattern(16 * Page.Size, 2)));
        Assert.Equal(16, mr.PresentPages);
        long inv = mr.Stats.PageInvalidations;
        _bed.ServerMm.Munmap(a + 4 * Page.Size, 4 * Page.Size);
        Assert.Equal(12, mr.PresentPages);
        Assert.Equal(inv + 4, mr.Stats.PageInvalidations);
        Assert.True(mr.Stats.PageInvalidationsHandled >= 1);
        Assert.False(mr.IsPresent(a + 5 * Page.Size));
        WorkCompletion wc = _bed.Post(new SendWr
        {
            Opcode = WrOpcode.RDMA_READ,
            SgList = [new Sge(_bed.ClientBuf, 100, _bed.ClientMr.Lkey)],
            RemoteAddr = a + 5 * Page.Size,
            Rkey = mr.Rkey,
        });
        Assert.Equal(WcStatus.REM_ACCESS_ERR, wc.Status);
        Assert.Equal((uint)Errno.EFAULT, wc.VendorErr);
        Assert.Equal(QpState.RTS, _bed.ClientQp.State);
        Assert.Equal(WcStatus.SUCCESS, _bed.Read(a + 8 * Page.Size, mr.Rkey, 100).Status);
    }

    [Fact]
    public void MprotectReadOnlyRefusesRemoteWritesButNotReadsUntilWriteIsRestored()
    {
        (ulong a, OdpMemoryRegion mr) = Region(4 * Page.Size);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a, mr.Rkey, BitConverter.GetBytes(1L)));
        _bed.ServerMm.Mprotect(a, 4 * Page.Size, Prot.Read);
        Assert.False(mr.IsPresent(a, write: true));
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Write(a, mr.Rkey, BitConverter.GetBytes(2L)));
        Assert.Equal(1L, _bed.ServerCpu.Read<long>(a));
        Assert.Equal(1L, Le64(_bed.Read(a, mr.Rkey, 8).Data));
        _bed.ServerMm.Mprotect(a, 4 * Page.Size, Prot.Read | Prot.Write);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a, mr.Rkey, BitConverter.GetBytes(3L)));
        Assert.Equal(3L, _bed.ServerCpu.Read<long>(a));
    }

    [Fact]
    public void CompareAndSwapAndFetchAndAddReturnTheOriginalValueAndUpdateMemory()
    {
        (ulong a, OdpMemoryRegion mr) = Region(2 * Page.Size);
        _bed.ServerCpu.Write(a + 64, 10L);
        Assert.Equal((WcStatus.SUCCESS, 10UL), _bed.CompareSwap(a + 64, mr.Rkey, 10, 20));
        Assert.Equal((WcStatus.SUCCESS, 20UL), _bed.CompareSwap(a + 64, mr.Rkey, 10, 30));
        Assert.Equal(20L, _bed.ServerCpu.Read<long>(a + 64));
        Assert.Equal((WcStatus.SUCCESS, 20UL), _bed.FetchAdd(a + 64, mr.Rkey, 5));
        Assert.Equal(25L, _bed.ServerCpu.Read<long>(a + 64));
        WorkCompletion wc = _bed.Post(new SendWr
        {
            Opcode = WrOpcode.ATOMIC_WRITE,
            SgList = [new Sge(_bed.ClientBuf, 8, _bed.ClientMr.Lkey)],
            RemoteAddr = a + 128,
            Rkey = mr.Rkey,
        });
        Assert.Equal(WcStatus.SUCCESS, wc.Status);
        Assert.Equal(WcOpcode.ATOMIC_WRITE, wc.Opcode);
    }

    [Fact]
    public void RemoteFetchAndAddIsAtomicWithCpuAtomicsOnTheSameWord()
    {
        (ulong a, OdpMemoryRegion mr) = Region(Page.Size);
        const int n = 300;
        var cpu = new Thread(() =>
        {
            using var c = new Cpu(_bed.ServerMm);
            for (int i = 0; i < n; i++)
            {
                c.Add(a, 1000L);
            }
        });
        cpu.Start();
        for (int i = 0; i < n; i++)
        {
            Assert.Equal(WcStatus.SUCCESS, _bed.FetchAdd(a, mr.Rkey, 1).Status);
        }
        cpu.Join();
        Assert.Equal(n * 1000L + n, _bed.ServerCpu.Read<long>(a));
    }

    [Fact]
    public void AReadOnlyRemoteAccessAfterForkDoesNotBreakCopyOnWriteButAWriteDoes()
    {
        (ulong a, OdpMemoryRegion mr) = Region(2 * Page.Size);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a, mr.Rkey, BitConverter.GetBytes(5L)));
        AddressSpace child = _bed.ServerMm.Fork();
        try
        {
            Assert.False(mr.IsPresent(a, write: true));
            Assert.Equal(5L, Le64(_bed.Read(a, mr.Rkey, 8).Data));
            ulong parentPfn = _bed.ServerMm.QueryPte(a, out _).Pfn;
            Assert.Equal(parentPfn, child.QueryPte(a, out _).Pfn);
            Assert.Equal(parentPfn, mr.TranslatedPfn(a));
            Assert.Equal(WcStatus.SUCCESS, _bed.Write(a, mr.Rkey, BitConverter.GetBytes(6L)));
            Assert.NotEqual(parentPfn, _bed.ServerMm.QueryPte(a, out _).Pfn);
            Assert.Equal(6L, _bed.ServerCpu.Read<long>(a));
            using var cc = new Cpu(child);
            Assert.Equal(5L, cc.Read<long>(a));
        }
        finally
        {
            child.Exit();
        }
    }

    [Fact]
    public void AdviseMrPrefetchMakesPagesPresentReadableAndPrefetchWriteMakesThemWritable()
    {
        (ulong a, OdpMemoryRegion mr) = Region(64 * Page.Size);
        _bed.ServerPd.AdviseMr(AdviseMrAdvice.PREFETCH, AdviseMrFlags.FLUSH, [new Sge(a, 8 * Page.Size, mr.Lkey)]);
        Assert.Equal(8, mr.PresentPages);
        Assert.True(mr.IsPresent(a));
        Assert.False(mr.IsPresent(a, write: true));
        Assert.Equal(8, mr.Stats.PagePrefetch);
        _bed.ServerPd.AdviseMr(AdviseMrAdvice.PREFETCH_WRITE, AdviseMrFlags.FLUSH, [new Sge(a + 16 * Page.Size, 8 * Page.Size, mr.Lkey)]);
        Assert.True(mr.IsPresent(a + 16 * Page.Size, write: true));
        Assert.Equal(16, mr.PresentPages);
        Assert.Equal(0, mr.Stats.PageFaults);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a + 16 * Page.Size, mr.Rkey, Pattern(8 * Page.Size, 3)));
        Assert.Equal(0, mr.Stats.PageFaults);
    }

    [Fact]
    public void AdviseMrPrefetchNoFaultOnlyMirrorsWhatTheCpuAlreadyMapped()
    {
        (ulong a, OdpMemoryRegion mr) = Region(16 * Page.Size);
        _bed.ServerPd.AdviseMr(AdviseMrAdvice.PREFETCH_NO_FAULT, AdviseMrFlags.FLUSH, [new Sge(a, 16 * Page.Size, mr.Lkey)]);
        Assert.Equal(0, mr.PresentPages);
        _bed.ServerCpu.Write(a + 3 * Page.Size, 9L);
        Assert.Equal(0, mr.PresentPages);
        _bed.ServerPd.AdviseMr(AdviseMrAdvice.PREFETCH_NO_FAULT, AdviseMrFlags.FLUSH, [new Sge(a, 16 * Page.Size, mr.Lkey)]);
        Assert.Equal(1, mr.PresentPages);
        Assert.True(mr.IsPresent(a + 3 * Page.Size, write: true));
        Assert.Equal(0, _bed.ServerMm.Memory.UsedFrames - _bed.ServerMm.Memory.UsedFrames);
    }

    [Fact]
    public void AsynchronousAdviseIsDoneByThePageFaultWorker()
    {
        (ulong a, OdpMemoryRegion mr) = Region(32 * Page.Size);
        _bed.ServerPd.AdviseMr(AdviseMrAdvice.PREFETCH_WRITE, AdviseMrFlags.None, [new Sge(a, 32 * Page.Size, mr.Lkey)]);
        SpinWait.SpinUntil(() => mr.PresentPages == 32, TimeSpan.FromSeconds(10));
        Assert.Equal(32, mr.PresentPages);
        Assert.Equal(32, mr.Stats.PagePrefetch);
    }

    [Fact]
    public void AdviseMrRejectsBadArgumentsWithTheKernelErrnos()
    {
        (ulong a, OdpMemoryRegion mr) = Region(4 * Page.Size);
        var ro = (OdpMemoryRegion)_bed.ServerPd.RegMr(a, 4 * Page.Size, AccessFlags.REMOTE_READ | AccessFlags.ON_DEMAND);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => _bed.ServerPd.AdviseMr((AdviseMrAdvice)7, AdviseMrFlags.FLUSH, [new Sge(a, 8, mr.Lkey)])).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => _bed.ServerPd.AdviseMr(AdviseMrAdvice.PREFETCH, (AdviseMrFlags)2, [new Sge(a, 8, mr.Lkey)])).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => _bed.ServerPd.AdviseMr(AdviseMrAdvice.PREFETCH, AdviseMrFlags.FLUSH, [])).Errno);
        Assert.Equal(Errno.EFAULT, Assert.Throws<MmException>(() => _bed.ServerPd.AdviseMr(AdviseMrAdvice.PREFETCH, AdviseMrFlags.FLUSH, [new Sge(a, 8, mr.Lkey + 1)])).Errno);
        Assert.Equal(Errno.EFAULT, Assert.Throws<MmException>(() => _bed.ServerPd.AdviseMr(AdviseMrAdvice.PREFETCH, AdviseMrFlags.FLUSH, [new Sge(a, 5 * Page.Size, mr.Lkey)])).Errno);
        Assert.Equal(Errno.EFAULT, Assert.Throws<MmException>(() => _bed.ServerPd.AdviseMr(AdviseMrAdvice.PREFETCH_WRITE, AdviseMrFlags.FLUSH, [new Sge(a, 8, ro.Lkey)])).Errno);
        ProtectionDomain otherPd = _bed.ServerDev.AllocPd(_bed.ServerMm);
        Assert.Equal(Errno.EFAULT, Assert.Throws<MmException>(() => otherPd.AdviseMr(AdviseMrAdvice.PREFETCH, AdviseMrFlags.FLUSH, [new Sge(a, 8, mr.Lkey)])).Errno);
        Assert.Equal(0, mr.PresentPages);
        _bed.ServerMm.Munmap(a, 4 * Page.Size);
        Assert.Equal(Errno.EFAULT, Assert.Throws<MmException>(() => _bed.ServerPd.AdviseMr(AdviseMrAdvice.PREFETCH, AdviseMrFlags.FLUSH, [new Sge(a, 8, mr.Lkey)])).Errno);
    }

    [Fact]
    public void RegMrRejectsBadArgumentsWithTheKernelErrnos()
    {
        ulong a = _bed.MapServer(Page.Size);
        ProtectionDomain pd = _bed.ServerPd;
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => pd.RegMr(a, 0, AccessFlags.ON_DEMAND)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => pd.RegMr(a, Page.Size, AccessFlags.REMOTE_WRITE | AccessFlags.ON_DEMAND)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => pd.RegMr(a, Page.Size, AccessFlags.REMOTE_ATOMIC | AccessFlags.ON_DEMAND)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => pd.RegMr(a, Page.Size, (AccessFlags)0x10000 | AccessFlags.ON_DEMAND)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => pd.RegMr(0, ulong.MaxValue, AccessFlags.LOCAL_WRITE)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => pd.RegMr(0, ulong.MaxValue, AccessFlags.ON_DEMAND | AccessFlags.HUGETLB)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<MmException>(() => pd.RegMr(ulong.MaxValue - 10, 100, AccessFlags.ON_DEMAND)).Errno);
        Assert.Equal(Errno.EFAULT, Assert.Throws<MmException>(() => pd.RegMr(AddressSpace.TaskSize - Page.Size, 2 * Page.Size, AccessFlags.ON_DEMAND)).Errno);
        Assert.Equal(0, pd.RegionCount);
    }

    [Fact]
    public void DeregisteringARegionRetiresItsKeyAndRemovesItsNotifier()
    {
        (ulong a, OdpMemoryRegion mr) = Region(4 * Page.Size);
        int notifiers = _bed.ServerMm.Notifiers.IntervalCount;
        uint rkey = mr.Rkey;
        Assert.Same(mr, _bed.ServerDev.LookupKey(rkey));
        mr.Deregister();
        Assert.False(mr.IsRegistered);
        Assert.Null(_bed.ServerDev.LookupKey(rkey));
        Assert.Equal(notifiers - 1, _bed.ServerMm.Notifiers.IntervalCount);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(a, rkey, 8).Status);
        MemoryRegion again = _bed.ServerPd.RegMr(a, 4 * Page.Size, Rw);
        Assert.NotEqual(rkey, again.Rkey);
        Assert.Equal(rkey >> 8, again.Rkey >> 8);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(a, rkey, 8).Status);
        Assert.Equal(WcStatus.SUCCESS, _bed.Read(a, again.Rkey, 8).Status);
    }

    [Fact]
    public void AHugetlbRegionRefusesToMapSmallPages()
    {
        (ulong a, OdpMemoryRegion mr) = Region(4 * Page.Size, Rw | AccessFlags.HUGETLB);
        WorkCompletion wc = _bed.Post(new SendWr
        {
            Opcode = WrOpcode.RDMA_READ,
            SgList = [new Sge(_bed.ClientBuf, 8, _bed.ClientMr.Lkey)],
            RemoteAddr = a,
            Rkey = mr.Rkey,
        });
        Assert.Equal(WcStatus.REM_ACCESS_ERR, wc.Status);
        Assert.Equal((uint)Errno.EFAULT, wc.VendorErr);
        Assert.Equal(0, mr.PresentPages);
    }

    [Fact]
    public void TheCountersCarryTheMlx5Names()
    {
        (ulong a, OdpMemoryRegion mr) = Region(4 * Page.Size);
        Assert.Equal(WcStatus.SUCCESS, _bed.Write(a, mr.Rkey, Pattern(100, 4)));
        _bed.ServerMm.Munmap(a, Page.Size);
        IReadOnlyList<KeyValuePair<string, long>> named = mr.Stats.ToNamedList();
        Assert.Equal(["page_faults", "page_faults_handled", "page_invalidations", "page_invalidations_handled", "page_prefetch"], named.Select(kv => kv.Key));
        Assert.Equal(1, named[2].Value);
        Assert.Equal(1, named[3].Value);
        Assert.Contains("page_invalidations 1", mr.Stats.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void ExitOfTheRegisteringProcessZapsEveryTranslationAndLaterAccessesFail()
    {
        var owner = new AddressSpace(_bed.Memory);
        ProtectionDomain pd = _bed.ServerDev.AllocPd(owner);
        ulong a = owner.Mmap(0, 8 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(owner))
        {
            cpu.Fill(a, 8 * Page.Size, 0x5A);
        }
        var mr = (OdpMemoryRegion)pd.RegMr(a, 8 * Page.Size, Rw);
        _bed.UseServerPd(pd);
        Assert.Equal(0x5A5A5A5A5A5A5A5AL, Le64(_bed.Read(a, mr.Rkey, 8).Data));
        Assert.Equal(8, mr.PresentPages);
        long used = _bed.Memory.UsedFrames;
        owner.Exit();
        Assert.Equal(0, mr.PresentPages);
        Assert.True(_bed.Memory.UsedFrames < used);
        WorkCompletion wc = _bed.Post(new SendWr { Opcode = WrOpcode.RDMA_READ, SgList = [new Sge(_bed.ClientBuf, 8, _bed.ClientMr.Lkey)], RemoteAddr = a, Rkey = mr.Rkey });
        Assert.Equal((WcStatus.REM_ACCESS_ERR, (uint)Errno.EFAULT), (wc.Status, wc.VendorErr));
        mr.Deregister();
        pd.Dispose();
    }

    [Fact]
    public void DeregisteringWhileRemoteReadsRunLetsTheReadsFinishAndRefusesTheRest()
    {
        (ulong a, OdpMemoryRegion mr) = Region(4 * Mib);
        int posted = 0;
        for (; posted < 32; posted++)
        {
            _bed.ClientQp.PostSend(new SendWr { WrId = (ulong)posted, Opcode = WrOpcode.RDMA_READ, SendFlags = SendFlags.SIGNALED, SgList = [new Sge(_bed.ClientBuf, (uint)Mib, _bed.ClientMr.Lkey)], RemoteAddr = a + (ulong)(posted % 4) * Mib, Rkey = mr.Rkey });
        }
        mr.Deregister();
        int ok = 0;
        int refused = 0;
        for (int i = 0; i < posted; i++)
        {
            WorkCompletion wc = _bed.ClientCq.Wait(WaitTime);
            Assert.Equal((ulong)i, wc.WrId);
            if (wc.Status == WcStatus.SUCCESS)
            {
                Assert.Equal(0, refused); // once the key is gone it stays gone
                ok++;
            }
            else
            {
                Assert.Equal(WcStatus.REM_ACCESS_ERR, wc.Status);
                refused++;
            }
        }
        Assert.Equal(posted, ok + refused);
        Assert.True(refused > 0);
        Assert.Equal(QpState.RTS, _bed.ClientQp.State);
    }
}
