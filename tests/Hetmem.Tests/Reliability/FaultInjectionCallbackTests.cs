using Hetmem.Devices.Dmirror;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Tests.Devices.Dmirror;
using Hetmem.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Hetmem.Tests.Reliability;

/// <summary>Device callbacks that throw: each is contained where the kernel would see an error code, and nothing leaks.</summary>
[Collection(FaultInjectionCollection.Name)]
public sealed class FaultInjectionCallbackTests(ITestOutputHelper output)
{
    [Fact]
    public void AThrowingMigrateToRamIsABusErrorAndTheDataStaysInDeviceMemory()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(4);
        ulong mirror = fx.MapAnon(4);
        fx.Fill(buf, 4, i => i + 100);
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.MigrateToDevice, buf, mirror, 4, out _));
        Assert.Equal(SwapEntryType.DevicePrivate, fx.Mm.QueryPte(buf, out _).SwapType);
        try
        {
            FaultInjection.FailNth(FaultSites.DeviceCallback, 1, fx.Memory);
            Assert.Throws<BusError>(() => fx.Cpu.Read<int>(buf));
            Assert.Equal(1, FaultInjection.Injected(FaultSites.DeviceCallback));
        }
        finally
        {
            FaultInjection.Disable();
        }
        Assert.Equal(SwapEntryType.DevicePrivate, fx.Mm.QueryPte(buf, out _).SwapType);
        int[] seen = fx.ReadInts(buf, 4);
        Assert.All(Enumerable.Range(0, seen.Length), i => Assert.Equal(i + 100, seen[i]));
    }

    [Fact]
    public void AThrowingProgramDeviceFailsTheDeviceFaultWithEfaultAndTheRetryWorks()
    {
        using var fx = new DmirrorFixture();
        DmirrorFile f = fx.Open(0);
        ulong buf = fx.MapAnon(8);
        ulong mirror = fx.MapAnon(8);
        fx.Fill(buf, 8, i => i ^ 0x5a5a);
        try
        {
            FaultInjection.FailNth(FaultSites.DeviceCallback, 1, fx.Memory);
            Errno r = fx.Cmd(f, DmirrorCommand.Read, buf, mirror, 8, out _);
            Assert.Equal(Errno.EFAULT, r);
        }
        finally
        {
            FaultInjection.Disable();
        }
        Assert.Equal(Errno.Ok, fx.Cmd(f, DmirrorCommand.Read, buf, mirror, 8, out _));
        int[] seen = fx.ReadInts(mirror, 8);
        Assert.All(Enumerable.Range(0, seen.Length), i => Assert.Equal(i ^ 0x5a5a, seen[i]));
        // The device update lock is free again.
        Lock update = ((Hetmem.Hmm.IDeviceMirror)f).UpdateLock;
        Assert.True(update.TryEnter());
        update.Exit();
    }

    private sealed class ThrowingOps : IMmuIntervalNotifierOps
    {
        public int Calls;
        public bool Throw = true;

        public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
        {
            Calls++;
            subscription.SetSeq(curSeq);
            if (Throw)
            {
                Throw = false;
                throw new InjectedFaultException(FaultSites.DeviceCallback);
            }
            return true;
        }
    }

    [Fact]
    public void AThrowingInvalidateCallbackIsContainedTheBracketClosesAndTheMunmapCompletes()
    {
        using var bed = new MmTestBed();
        AddressSpace mm = bed.NewSpace();
        Cpu cpu = bed.Cpu(mm);
        ulong a = mm.Mmap(0, 16 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        for (ulong i = 0; i < 16; i++)
        {
            cpu.Write(a + i * Page.Size, (long)i + 1);
        }
        var ops = new ThrowingOps();
        MmuIntervalNotifier sub = MmuIntervalNotifier.Insert(mm, a, 16 * Page.Size, ops);
        // The munmap completes: the throwing callback counts as a refused blockable invalidation (a warning).
        mm.Munmap(a + 4 * Page.Size, 4 * Page.Size);
        output.WriteLine($"after munmap with a throwing callback:\n{mm.MapsText()}");
        Assert.IsType<InjectedFaultException>(mm.Notifiers.LastCallbackFault);
        Assert.Equal(1, mm.Notifiers.Warnings);
        Assert.Null(mm.Vmas.Find(a + 4 * Page.Size));
        Assert.True(mm.QueryPte(a + 4 * Page.Size, out _).IsNone, "the unmapped pages are gone from the page table");
        // The bracket is closed: a read-begin does not wait, and a second invalidation runs normally.
        long seq = sub.ReadBegin();
        Assert.False(sub.ReadRetry(seq));
        mm.Munmap(a + 8 * Page.Size, 4 * Page.Size);
        Assert.Equal(2, ops.Calls);
        for (ulong i = 0; i < 4; i++)
        {
            Assert.Equal((long)i + 1, cpu.Read<long>(a + i * Page.Size));
        }
        sub.Remove();
    } // the bed asserts that every frame came back, including those of the munmap that threw

    [Fact]
    public void InjectedCallbackFailuresDuringDmirrorTrafficAreContainedAndLeakNothing()
    {
        int seed = Seed.Get(output, nameof(InjectedCallbackFailuresDuringDmirrorTrafficAreContainedAndLeakNothing));
        var rng = new Random(seed);
        var seen = new Dictionary<string, int>();
        using (var fx = new DmirrorFixture())
        {
            DmirrorFile f = fx.Open(0);
            ulong buf = fx.MapAnon(16);
            ulong mirror = fx.MapAnon(16);
            fx.Fill(buf, 16, i => i * 3 + 2);
            try
            {
                FaultInjection.Configure(new FaultInjectionOptions { Seed = seed, Probability = 0.2, Sites = FaultSites.DeviceCallback, Domain = fx.Memory });
                for (int step = 0; step < 150; step++)
                {
                    ulong page = (ulong)rng.Next(16);
                    ulong addr = buf + page * Page.Size;
                    string outcome;
                    try
                    {
                        switch (rng.Next(4))
                        {
                            case 0:
                                outcome = $"migrate:{fx.Cmd(f, DmirrorCommand.MigrateToDevice, addr, mirror, 1, out _)}";
                                break;
                            case 1:
                                outcome = $"read:{fx.Cmd(f, DmirrorCommand.Read, addr, mirror, 1, out _)}";
                                break;
                            case 2:
                                fx.Mm.Madvise(addr, Page.Size, Advice.WillNeed);
                                outcome = "cpu:" + (fx.Cpu.Read<int>(addr) == (int)(page * 1024) * 3 + 2 ? "ok" : "WRONG");
                                break;
                            default:
                                outcome = $"tosys:{fx.Cmd(f, DmirrorCommand.MigrateToSystem, addr, mirror, 1, out _)}";
                                break;
                        }
                    }
                    catch (BusError)
                    {
                        outcome = "cpu:SIGBUS";
                    }
                    catch (MmException e)
                    {
                        outcome = $"mm:{e.Errno}";
                    }
                    Assert.NotEqual("cpu:WRONG", outcome);
                    seen[outcome] = seen.GetValueOrDefault(outcome) + 1;
                }
            }
            finally
            {
                FaultInjection.Disable();
            }
            output.WriteLine(string.Join(", ", seen.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}={kv.Value}")));
            Assert.All(seen.Keys, k => Assert.Matches("^(migrate:(Ok|ENOENT|EFAULT)|read:(Ok|EFAULT)|cpu:(ok|SIGBUS)|tosys:(Ok|EFAULT)|mm:EFAULT)$", k));
            int[] data = fx.ReadInts(buf, 16);
            Assert.All(Enumerable.Range(0, data.Length), i => Assert.Equal(i * 3 + 2, data[i]));
        }
    }
}
