using CsCheck;
using Hetmem.Devices.Gpu;

namespace Hetmem.Tests.Devices.Gpu;

public class ThrashingDetectorTests
{
    private static readonly ThrashingOptions s_o = ThrashingOptions.Default;
    private const long Us = 1000;

    [Fact]
    public void ThreeEventsEachWithinTheLapseMakeAPageThrashing()
    {
        PageThrashingState s = default;
        Assert.Equal(ThrashingEvent.None, ThrashingDetector.RecordEvent(ref s, 1_000 * Us, s_o));
        Assert.Equal(ThrashingEvent.None, ThrashingDetector.RecordEvent(ref s, 1_400 * Us, s_o));
        Assert.False(s.IsThrashing(s_o));
        Assert.Equal(ThrashingHint.None, ThrashingDetector.GetHint(ref s, 1_450 * Us, s_o));
        Assert.Equal(ThrashingEvent.Detected, ThrashingDetector.RecordEvent(ref s, 1_800 * Us, s_o));
        Assert.True(s.IsThrashing(s_o));
        Assert.Equal(ThrashingHint.Throttle, ThrashingDetector.GetHint(ref s, 1_850 * Us, s_o));
    }

    [Fact]
    public void EventsFartherApartThanTheLapseNeverThrottle()
    {
        Gen.Long[500 * Us + 1, 10_000 * Us].Array[1, 40].Sample(gaps =>
        {
            PageThrashingState s = default;
            long t = 1;
            foreach (long g in gaps)
            {
                t += g;
                ThrashingDetector.RecordEvent(ref s, t, s_o);
                Assert.Equal(ThrashingHint.None, ThrashingDetector.GetHint(ref s, t + 1, s_o));
            }
        }, iter: 500);
    }

    [Fact]
    public void TenThrottlesPinThePageFor150MsAndThenItIsForgotten()
    {
        PageThrashingState s = default;
        long t = 1_000_000;
        for (int i = 0; i < 3; i++, t += 100 * Us)
        {
            ThrashingDetector.RecordEvent(ref s, t, s_o);
        }
        int throttles = 0;
        ThrashingHint h;
        while (true)
        {
            h = ThrashingDetector.GetHint(ref s, t, s_o);
            if (h == ThrashingHint.Pin)
            {
                break;
            }
            Assert.Equal(ThrashingHint.Throttle, h);
            throttles++;
            Assert.Equal(ThrashingHint.Throttle, ThrashingDetector.GetHint(ref s, t + 100 * Us, s_o)); // still napping
            t += 501 * Us;
            Assert.Equal(ThrashingHint.None, ThrashingDetector.GetHint(ref s, t, s_o));        // first fault after the nap is serviced
            ThrashingDetector.RecordEvent(ref s, t + 10 * Us, s_o);                            // ...and migrates again
            t += 20 * Us;
        }
        Assert.Equal(10, throttles);
        Assert.True(s.Pinned);
        Assert.Equal(ThrashingHint.Pin, ThrashingDetector.GetHint(ref s, t + 149_999 * Us, s_o));
        Assert.Equal(ThrashingHint.None, ThrashingDetector.GetHint(ref s, t + 150_000 * Us, s_o));
        Assert.False(s.Pinned);
        Assert.False(s.IsThrashing(s_o));
    }

    [Fact]
    public void AQuietEpochCalmsAThrashingPage()
    {
        PageThrashingState s = default;
        for (long t = 1; t < 4; t++)
        {
            ThrashingDetector.RecordEvent(ref s, t * 100 * Us, s_o);
        }
        Assert.True(s.IsThrashing(s_o));
        Assert.Equal(ThrashingEvent.Calmed, ThrashingDetector.RecordEvent(ref s, 400 * Us + s_o.EpochNs + 1, s_o));
        Assert.False(s.IsThrashing(s_o));
        Assert.Equal(0, s.Throttles);
    }

    [Fact]
    public void DisabledDetectionNeverActs()
    {
        var off = s_o with { Enabled = false };
        PageThrashingState s = default;
        for (long t = 1; t < 50; t++)
        {
            Assert.Equal(ThrashingEvent.None, ThrashingDetector.RecordEvent(ref s, t, off));
            Assert.Equal(ThrashingHint.None, ThrashingDetector.GetHint(ref s, t, off));
        }
    }

    /// <summary>A random interleaving of events and faults at random times, checked against the stated rules.</summary>
    [Fact]
    public void RandomHistoriesOnlyPinAfterTenThrottlesAndOnlyThrottleThrashingPages()
    {
        Gen<(bool IsEvent, long Gap)> step = Gen.Select(Gen.Bool, Gen.Frequency((4, Gen.Long[1, 600 * Us]), (1, Gen.Long[1, 200_000 * Us])));
        step.Array[1, 200].Sample(steps =>
        {
            PageThrashingState s = default;
            long t = 1;
            int throttlesSinceReset = 0;
            long pinEnd = 0;
            foreach ((bool isEvent, long gap) in steps)
            {
                t += gap;
                if (isEvent)
                {
                    bool wasPinned = s.Pinned;
                    bool wasThrashing = s.IsThrashing(s_o);
                    ThrashingEvent e = ThrashingDetector.RecordEvent(ref s, t, s_o);
                    if (wasPinned)
                    {
                        Assert.Equal(ThrashingEvent.None, e);
                    }
                    if (e == ThrashingEvent.Calmed)
                    {
                        Assert.True(wasThrashing);
                        throttlesSinceReset = 0;
                    }
                    continue;
                }
                bool thrashing = s.IsThrashing(s_o);
                bool pinned = s.Pinned;
                bool napping = s.ThrottleEndNs != 0 && t < s.ThrottleEndNs;
                ThrashingHint h = ThrashingDetector.GetHint(ref s, t, s_o);
                if (pinned)
                {
                    Assert.Equal(t < pinEnd ? ThrashingHint.Pin : ThrashingHint.None, h);
                    if (h == ThrashingHint.None)
                    {
                        throttlesSinceReset = 0;
                    }
                    continue;
                }
                if (!thrashing)
                {
                    Assert.Equal(ThrashingHint.None, h);
                }
                if (h == ThrashingHint.Throttle && !napping)
                {
                    throttlesSinceReset++;
                    Assert.True(throttlesSinceReset <= s_o.PinThreshold);
                }
                if (h == ThrashingHint.Pin)
                {
                    Assert.Equal(s_o.PinThreshold, throttlesSinceReset);
                    Assert.Equal(t + s_o.PinNs, s.PinEndNs);
                    pinEnd = s.PinEndNs;
                    throttlesSinceReset = 0;
                }
            }
        }, iter: 2000);
    }
}
