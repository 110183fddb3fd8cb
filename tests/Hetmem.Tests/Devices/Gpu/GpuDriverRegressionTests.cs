using Hetmem.Devices.Gpu;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Gpu;

/// <summary>Regression tests from real driver bugs (spec devices.md §3.2 and §5.5).</summary>
public class GpuDriverRegressionTests
{
    private const ulong Mib = GpuTestRig.Mib;

    /// <summary>
    /// ROCm/legacy-rocm-build#5952/#6523: a half-backported fix sampled the notifier sequence once, outside the retry
    /// loop. After one invalidation every hmm_range_fault is EBUSY: such a caller must end in EBUSY at its timeout
    /// (not hang), while the SVM helper, which re-reads the sequence on every attempt, succeeds.
    /// </summary>
    [Fact]
    public void ACallerSamplingTheSequenceOnceOutsideItsLoopEndsInEbusyAtTheTimeoutWhileTheHelperSucceeds()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.RemoteMap });
        ulong a = rig.MapAnon(2 * Mib);
        rig.Context.Launch(1, 1, t => t.Store(a, 1L)); // creates the notifier window and a range
        GpuSvmNotifier window = rig.Context.Svm.FindRange(a)!.Notifier;
        var hmm = new HmmRange(window.Interval, a + Mib, a + Mib + Page.Size) { DefaultFlags = HmmPfnFlags.ReqFault };

        long seq = window.Interval.ReadBegin();                      // the bug: sampled once...
        rig.Space.Mprotect(a, Page.Size, Prot.Read);                 // ...then an invalidation in the window moves it
        long deadline = Environment.TickCount64 + 200;
        Errno e;
        int attempts = 0;
        while (true)
        {
            attempts++;
            hmm.NotifierSeq = seq;                                   // ...and reused on every attempt
            using (rig.Space.MmapLock.Read())
            {
                e = hmm.Fault();
            }
            if (e != Errno.EBUSY || Environment.TickCount64 > deadline)
            {
                break;
            }
        }
        Assert.Equal(Errno.EBUSY, e);
        Assert.True(attempts > 1);

        // The canonical loop re-reads the sequence and succeeds at once.
        var programmed = new Programmed(rig.Context.Svm.NotifierLock);
        Assert.Equal(Errno.Ok, HmmMirrorHelper.FaultAndProgram(programmed, hmm, timeoutMs: 200));
        Assert.True(programmed.Calls == 1 && HmmPfn.Has(hmm.HmmPfns[0], HmmPfnFlags.Valid));
    }

    private sealed class Programmed(Lock l) : IDeviceMirror
    {
        public int Calls;
        public Lock UpdateLock => l;

        public Errno ProgramDevice(HmmRange range)
        {
            Calls++;
            return Errno.Ok;
        }
    }

    /// <summary>
    /// ROCm/legacy-rocm-build#6523: KFD asked hmm_range_fault for write access from the VMA's flags, so a read-only copy
    /// out of a writable private mapping broke copy-on-write on every page. A GPU read must ask for read only: the
    /// pages stay shared with the fork child, and the counter of write requests stays at zero.
    /// </summary>
    [Fact]
    public void AReadOnlyGpuAccessToAWritablePrivateMappingDoesNotBreakCopyOnWrite()
    {
        using var rig = new GpuTestRig(new GpuDeviceOptions { Placement = PlacementPolicy.RemoteMap });
        const int pages = 32;
        ulong a = rig.MapAnon(pages * Page.Size);
        for (int p = 0; p < pages; p++)
        {
            rig.Cpu.Write(a + (ulong)p * Page.Size, 100L + p);
        }
        AddressSpace child = rig.Space.Fork();
        try
        {
            ulong Pfn(AddressSpace mm, int p) => mm.QueryPte(a + (ulong)p * Page.Size, out _).Pfn;
            long sum = 0;
            rig.Context.Launch(1, pages, t => Interlocked.Add(ref sum, t.Load<long>(a + (ulong)t.ThreadIdx * Page.Size)));
            Assert.Equal(Enumerable.Range(0, pages).Sum(p => 100L + p), sum);
            Assert.Equal(0L, rig[GpuCounter.WriteRequestedPages]);
            for (int p = 0; p < pages; p++)
            {
                Pte e = rig.Space.QueryPte(a + (ulong)p * Page.Size, out _);
                Assert.False(e.IsWritable, $"page {p} became writable in the parent");
                Assert.Equal(Pfn(child, p), e.Pfn);
            }

            // A GPU write is allowed to break it, and only then.
            rig.Context.Launch(1, 1, t => t.Store(a + 3 * Page.Size, -1L));
            Assert.True(rig[GpuCounter.WriteRequestedPages] > 0);
            Assert.NotEqual(Pfn(child, 3), Pfn(rig.Space, 3));
            using var cc = new Cpu(child);
            Assert.Equal(103L, cc.Read<long>(a + 3 * Page.Size));
            Assert.Equal(-1L, rig.Cpu.Read<long>(a + 3 * Page.Size));
        }
        finally
        {
            child.Exit();
        }
    }
}
