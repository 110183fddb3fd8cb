using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;
using Xunit.Abstractions;
using static Hetmem.Tests.Hmm.Kit;

namespace Hetmem.Tests.Hmm;

/// <summary>
/// Real-thread races between CPU-side page-table changes (mprotect, munmap, madvise) and a device faulting through
/// <see cref="HmmMirrorHelper.FaultAndProgram"/>: invariant 8 of spec §7 (a device table is never programmed from a
/// result that overlapped an invalidation) and "no device use after invalidation". Seeds are printed; set HETMEM_SEED to
/// replay.
/// </summary>
public sealed class HmmRaceTests(ITestOutputHelper output)
{
    private const Prot Rw = Prot.Read | Prot.Write;
    private const ulong Pages = 64;
    private const ulong Base = 0x5000_0000_0000;

    /// <summary>
    /// A second notifier over the device's window, inserted after it, so its callback runs after the device's for every
    /// invalidation: at that point the device must no longer map anything in the invalidated range.
    /// </summary>
    private sealed class AfterDeviceCheck(TestMirrorDevice dev) : IMmuIntervalNotifierOps
    {
        public long Checks;

        public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
        {
            subscription.SetSeq(curSeq);
            Checks++;
            int left = dev.Mapped(range.Start, range.End);
            if (left != 0)
            {
                dev.Violation($"{left} device entries still mapped in [0x{range.Start:x}, 0x{range.End:x}) after the device's invalidate callback returned ({range.Event})");
            }
            return true;
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void MprotectAndMunmapRacingWithDeviceFaultsNeverLeaveTheDeviceWithAStaleOrFreedPage(bool thp)
    {
        int seed = Seed(output, nameof(MprotectAndMunmapRacingWithDeviceFaultsNeverLeaveTheDeviceWithAStaleOrFreedPage) + (thp ? "(thp)" : ""));
        using var bed = new HmmTestBed(swapSlots: 0);
        AddressSpace mm = bed.NewSpace();
        ulong len = thp ? 2 * Page.PmdSize : Pages * Page.Size;
        ulong a = mm.Mmap(Base, len, Rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
        if (thp)
        {
            mm.Madvise(a, len, Advice.HugePage);
        }
        var dev = bed.Own(new TestMirrorDevice(mm, a, a + len));
        var checker = new AfterDeviceCheck(dev);
        var checkSub = MmuIntervalNotifier.Insert(mm, a, len, checker);
        int stop = 0;
        long faults = 0, programmed = 0, deviceAccesses = 0, mutations = 0;
        Exception? failure = null;

        void Guard(Action body)
        {
            try
            {
                body();
            }
            catch (Exception e)
            {
                failure ??= e;
                Volatile.Write(ref stop, 1);
            }
        }

        Thread cpuSide = Start(() => Guard(() =>
        {
            var rng = new Random(seed);
            while (Volatile.Read(ref stop) == 0)
            {
                ulong pages = len >> Page.Shift;
                ulong first = (ulong)rng.Next((int)pages);
                ulong n = Math.Min((ulong)rng.Next(1, 17), pages - first);
                ulong s = a + (first << Page.Shift);
                ulong e = s + (n << Page.Shift);
                switch (rng.Next(3))
                {
                    case 0:
                        mm.Mprotect(s, e - s, Prot.Read);
                        int writable = dev.Mapped(s, e, writableOnly: true);
                        if (writable != 0)
                        {
                            dev.Violation($"{writable} writable device entries in [0x{s:x}, 0x{e:x}) after mprotect(PROT_READ) returned");
                        }
                        mm.Mprotect(s, e - s, Rw);
                        break;
                    case 1:
                        mm.Munmap(s, e - s);
                        int left = dev.Mapped(s, e);
                        if (left != 0)
                        {
                            dev.Violation($"{left} device entries in [0x{s:x}, 0x{e:x}) after munmap returned");
                        }
                        mm.Mmap(s, e - s, Rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
                        if (thp)
                        {
                            mm.Madvise(s, e - s, Advice.HugePage);
                        }
                        break;
                    default:
                        mm.Madvise(s, e - s, Advice.DontNeed);
                        break;
                }
                Interlocked.Increment(ref mutations);
            }
        }), "cpu-side");

        Thread deviceSide = Start(() => Guard(() =>
        {
            var rng = new Random(seed + 1);
            HmmRange range = dev.NewRange(a, a + len);
            while (Volatile.Read(ref stop) == 0)
            {
                ulong pages = len >> Page.Shift;
                ulong first = (ulong)rng.Next((int)pages);
                ulong n = Math.Min((ulong)rng.Next(1, 33), pages - first);
                range.SetRange(a + (first << Page.Shift), a + ((first + n) << Page.Shift), range.PageCount == (int)n ? range.HmmPfns : null);
                bool write = rng.Next(2) == 0;
                range.DefaultFlags = HmmPfnFlags.ReqFault | (write ? HmmPfnFlags.ReqWrite : 0);
                long before = dev.Programs;
                Errno r = HmmMirrorHelper.FaultAndProgram(dev, range);
                Interlocked.Increment(ref faults);
                if (r is not (Errno.Ok or Errno.EFAULT or Errno.EPERM or Errno.EBUSY))
                {
                    dev.Violation($"FaultAndProgram returned {r}");
                }
                if (dev.Programs != before)
                {
                    Interlocked.Increment(ref programmed);
                }
            }
        }), "device-fault");

        Thread deviceUse = Start(() => Guard(() =>
        {
            var rng = new Random(seed + 2);
            while (Volatile.Read(ref stop) == 0)
            {
                ulong va = a + ((ulong)rng.Next((int)(len >> Page.Shift)) << Page.Shift) + (ulong)rng.Next(Page.Size);
                if (rng.Next(2) == 0)
                {
                    dev.DeviceRead(va);
                }
                else
                {
                    dev.DeviceWrite(va, (byte)rng.Next(256));
                }
                Interlocked.Increment(ref deviceAccesses);
            }
        }), "device-use");

        Thread.Sleep(2000);
        Volatile.Write(ref stop, 1);
        Join(cpuSide);
        Join(deviceSide);
        Join(deviceUse);
        output.WriteLine($"mutations {mutations}, faults {faults}, programmed {programmed}, device accesses {deviceAccesses}, checks {checker.Checks}");
        Assert.Null(failure);
        Assert.True(dev.Violations == 0, $"seed {seed}: {dev.Violations} violations, first: {dev.FirstViolation}");
        Assert.True(mutations > 0 && programmed > 0 && checker.Checks > 0, $"seed {seed}: the race did not run (mutations {mutations}, programmed {programmed}, checks {checker.Checks})");
        Assert.Equal(0, mm.Notifiers.Warnings);
        Assert.Equal(0, mm.Notifiers.ActiveRanges);
        checkSub.Remove();
    }

    [Fact]
    public void ADeviceRacingWithForkAndCopyOnWriteOnlyEverMapsWhatTheCpuMapsWithAtMostItsPermission()
    {
        int seed = Seed(output, nameof(ADeviceRacingWithForkAndCopyOnWriteOnlyEverMapsWhatTheCpuMapsWithAtMostItsPermission));
        using var bed = new HmmTestBed();
        AddressSpace mm = bed.NewSpace();
        ulong len = 32 * Page.Size;
        ulong a = mm.Mmap(Base, len, Rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
        var dev = bed.Own(new TestMirrorDevice(mm, a, a + len));
        var checker = new AfterDeviceCheck(dev);
        var checkSub = MmuIntervalNotifier.Insert(mm, a, len, checker);
        int stop = 0;
        long forks = 0;
        Exception? failure = null;
        Thread forker = Start(() =>
        {
            try
            {
                while (Volatile.Read(ref stop) == 0)
                {
                    // Fork write-protects the parent (PROTECTION_PAGE); the device's next write fault breaks COW.
                    AddressSpace child = mm.Fork();
                    child.Exit();
                    Interlocked.Increment(ref forks);
                }
            }
            catch (Exception e)
            {
                failure = e;
            }
        }, "fork");
        var rng = new Random(seed);
        long deadline = Environment.TickCount64 + 1500;
        long ok = 0;
        while (Environment.TickCount64 < deadline && failure is null)
        {
            ulong first = (ulong)rng.Next(32);
            if (dev.Fault(a + (first << Page.Shift), a + ((first + 1) << Page.Shift), write: rng.Next(2) == 0) == Errno.Ok)
            {
                ok++;
            }
        }
        Volatile.Write(ref stop, 1);
        Join(forker);
        Assert.Null(failure);
        Assert.True(dev.Violations == 0, $"seed {seed}: {dev.FirstViolation}");
        Assert.True(forks > 0 && ok > 0 && checker.Checks > 0, $"seed {seed}: forks {forks}, faults {ok}, checks {checker.Checks}");
        checkSub.Remove();
    }
}
