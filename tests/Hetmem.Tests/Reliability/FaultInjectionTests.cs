using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Tests.Reliability;

/// <summary>The fault-injection switch itself: decisions, counters, scoping and reproducibility.</summary>
[Collection(FaultInjectionCollection.Name)]
public sealed class FaultInjectionTests
{
    private readonly object _domain = new();

    [Fact]
    public void DisabledInjectionNeverFailsAndCountsNothing()
    {
        FaultInjection.Disable();
        Assert.False(FaultInjection.Enabled);
        for (int i = 0; i < 100; i++)
        {
            Assert.False(FaultInjection.ShouldFail(FaultSites.FrameAllocation, _domain));
        }
    }

    [Fact]
    public void FailNthFailsExactlyThatCallOnce()
    {
        try
        {
            FaultInjection.FailNth(FaultSites.DaxIo, 3, _domain);
            bool[] got = [.. Enumerable.Range(0, 8).Select(_ => FaultInjection.ShouldFail(FaultSites.DaxIo, _domain))];
            Assert.Equal([false, false, true, false, false, false, false, false], got);
            Assert.Equal(1, FaultInjection.Injected(FaultSites.DaxIo));
            Assert.Equal(8, FaultInjection.Calls(FaultSites.DaxIo));
            Assert.False(FaultInjection.ShouldFail(FaultSites.FrameAllocation, _domain), "another site is not configured");
        }
        finally
        {
            FaultInjection.Disable();
        }
    }

    [Fact]
    public void FailEveryNthFailsEveryNthCallPerSite()
    {
        try
        {
            FaultInjection.FailEveryNth(FaultSites.FrameAllocation | FaultSites.TransportSend, 4, _domain);
            int frames = Enumerable.Range(0, 20).Count(_ => FaultInjection.ShouldFail(FaultSites.FrameAllocation, _domain));
            int sends = Enumerable.Range(0, 8).Count(_ => FaultInjection.ShouldFail(FaultSites.TransportSend, _domain));
            Assert.Equal(5, frames);
            Assert.Equal(2, sends);
            Assert.Equal(7, FaultInjection.Injected(FaultSites.FrameAllocation | FaultSites.TransportSend));
        }
        finally
        {
            FaultInjection.Disable();
        }
    }

    [Fact]
    public void TimesBoundsTheFailuresAndSkipDelaysThem()
    {
        using (FaultInjection.Scope(new FaultInjectionOptions { Sites = FaultSites.DeviceCallback, Skip = 2, Times = 3, Domain = _domain }))
        {
            bool[] got = [.. Enumerable.Range(0, 7).Select(_ => FaultInjection.ShouldFail(FaultSites.DeviceCallback, _domain))];
            Assert.Equal([false, false, true, true, true, false, false], got);
        }
        Assert.False(FaultInjection.Enabled, "disposing the scope disables injection");
    }

    [Fact]
    public void ADomainRestrictsFailuresToItsOwnHooks()
    {
        var other = new object();
        using (FaultInjection.Scope(new FaultInjectionOptions { Sites = FaultSites.All, Domain = _domain }))
        {
            Assert.False(FaultInjection.ShouldFail(FaultSites.FrameAllocation, other));
            Assert.False(FaultInjection.ShouldFail(FaultSites.FrameAllocation, null));
            Assert.True(FaultInjection.ShouldFail(FaultSites.FrameAllocation, _domain));
        }
    }

    [Fact]
    public void TheSameSeedFailsTheSameCalls()
    {
        int seed = Infrastructure.Seed.Get(null, nameof(TheSameSeedFailsTheSameCalls));
        bool[] Run()
        {
            using (FaultInjection.Scope(new FaultInjectionOptions { Seed = seed, Probability = 0.3, Sites = FaultSites.All, Domain = _domain }))
            {
                return [.. Enumerable.Range(0, 200).Select(i => FaultInjection.ShouldFail((FaultSites)(1 << (i % 6)), _domain))];
            }
        }
        bool[] a = Run();
        bool[] b = Run();
        Assert.Equal(a, b);
        Assert.InRange(a.Count(x => x), 20, 120);
    }

    [Fact]
    public void MaybeThrowInCallbackThrowsTheInjectedFault()
    {
        using (FaultInjection.Scope(new FaultInjectionOptions { Sites = FaultSites.DeviceCallback, Times = 1, Domain = _domain }))
        {
            InjectedFaultException e = Assert.Throws<InjectedFaultException>(() => FaultInjection.MaybeThrowInCallback(_domain));
            Assert.Equal(FaultSites.DeviceCallback, e.Site);
            FaultInjection.MaybeThrowInCallback(_domain); // the one failure is spent
        }
    }

    [Fact]
    public void FrameAllocationFailsOnlyInTheInjectedMemory()
    {
        using var mine = new PhysicalMemory(16UL << 20);
        using var other = new PhysicalMemory(16UL << 20);
        using (FaultInjection.Scope(new FaultInjectionOptions { Sites = FaultSites.FrameAllocation, Domain = mine }))
        {
            Assert.Equal(Page.NoPfn, mine.Allocate(0));
            ulong pfn = other.Allocate(0);
            Assert.NotEqual(Page.NoPfn, pfn);
            other.Put(pfn);
        }
        ulong after = mine.Allocate(0);
        Assert.NotEqual(Page.NoPfn, after);
        mine.Put(after);
    }

    [Fact]
    public void InvalidOptionsAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => FaultInjection.Configure(new FaultInjectionOptions { Probability = 1.5 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => FaultInjection.Configure(new FaultInjectionOptions { Interval = 0 }));
        Assert.False(FaultInjection.Enabled);
    }
}
