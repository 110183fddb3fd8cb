namespace Hetmem.Devices.Gpu;

/// <summary>
/// Tunables of thrashing detection, with UVM's defaults (kernel: NVIDIA UVM <c>uvm_perf_thrashing_enable</c>,
/// <c>_threshold</c>, <c>_lapse_usec</c>, <c>_nap</c>, <c>_pin_threshold</c>, <c>_pin</c>). Times are in nanoseconds.
/// </summary>
/// <param name="Enabled">Detect thrashing at all (default on).</param>
/// <param name="Threshold">Consecutive events, each within <paramref name="LapseNs"/> of the previous one, that make a page thrashing (default 3).</param>
/// <param name="LapseNs">Two events closer than this are consecutive (default 500 µs).</param>
/// <param name="NapNs">How long a throttled page's faults are ignored (default one lapse).</param>
/// <param name="PinThreshold">Throttles after which the page is pinned instead (default 10).</param>
/// <param name="PinNs">How long a pin lasts (default 300 lapses = 150 ms).</param>
/// <param name="EpochNs">Quiet time after which a thrashing page is considered calm again (default 2000 lapses = 1 s).</param>
public readonly record struct ThrashingOptions(bool Enabled = true, int Threshold = 3, long LapseNs = 500_000, long NapNs = 500_000,
    int PinThreshold = 10, long PinNs = 150_000_000, long EpochNs = 1_000_000_000)
{
    /// <summary>UVM's defaults.</summary>
    public static ThrashingOptions Default => new(true, 3, 500_000, 500_000, 10, 150_000_000, 1_000_000_000);

    /// <summary>Throws when a tunable is out of range.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A tunable is out of range.</exception>
    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(Threshold, 1, nameof(Threshold));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(Threshold, 7, nameof(Threshold)); // UVM keeps 3 bits
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(LapseNs, nameof(LapseNs));
        ArgumentOutOfRangeException.ThrowIfNegative(NapNs, nameof(NapNs));
        ArgumentOutOfRangeException.ThrowIfLessThan(PinThreshold, 1, nameof(PinThreshold));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(PinThreshold, 255, nameof(PinThreshold)); // UVM keeps 8 bits
        ArgumentOutOfRangeException.ThrowIfNegative(PinNs, nameof(PinNs));
        ArgumentOutOfRangeException.ThrowIfLessThan(EpochNs, LapseNs, nameof(EpochNs));
    }
}

/// <summary>What to do with a fault on a page (kernel: UVM <c>uvm_perf_thrashing_hint_type_t</c>).</summary>
public enum ThrashingHint : byte
{
    /// <summary>Service the fault normally.</summary>
    None = 0,
    /// <summary>Ignore the fault for now (the replay re-raises it after the nap).</summary>
    Throttle = 1,
    /// <summary>Keep the page where it is (system memory) and map it remotely.</summary>
    Pin = 2,
}

/// <summary>
/// Per-page thrashing state (kernel: UVM <c>page_thrashing_info_t</c>): a few bytes per page, mutated only by
/// <see cref="ThrashingDetector"/>. A default value is a page that never thrashed.
/// </summary>
public struct PageThrashingState
{
    /// <summary>Time of the last migration/revocation event (ns; 0 = none yet).</summary>
    public long LastEventNs;
    /// <summary>End of the current throttling nap (ns).</summary>
    public long ThrottleEndNs;
    /// <summary>End of the current pin (ns), meaningful while <see cref="Pinned"/>.</summary>
    public long PinEndNs;
    /// <summary>Consecutive events within the lapse, the last one included (saturates at 7).</summary>
    public byte Events;
    /// <summary>Throttles since the page became thrashing (reset when it is pinned or calms down).</summary>
    public byte Throttles;
    /// <summary>True while the page is pinned to system memory.</summary>
    public bool Pinned;

    /// <summary>True when the last <c>Threshold</c> events were each within the lapse of the previous one.</summary>
    public readonly bool IsThrashing(in ThrashingOptions options) => Events >= options.Threshold;
}

/// <summary>What <see cref="ThrashingDetector.RecordEvent"/> observed.</summary>
public enum ThrashingEvent : byte
{
    /// <summary>Nothing notable.</summary>
    None = 0,
    /// <summary>This event made the page thrashing (kernel: <c>thrashing_detected</c>, counter <c>num_thrashing</c>).</summary>
    Detected = 1,
    /// <summary>The page was thrashing but this event came after a quiet epoch: its state was reset.</summary>
    Calmed = 2,
}

/// <summary>
/// UVM's thrashing detection and mitigation as pure functions over <see cref="PageThrashingState"/> (kernel:
/// <c>uvm_perf_thrashing.c</c>: <c>thrashing_event_cb</c> records migrations/revocations, <c>uvm_perf_thrashing_get_hint</c>
/// decides on a fault). Three events on a page, each within 500 µs of the previous one, make it thrashing. Faults on a
/// thrashing page then alternate: one starts a throttle (the fault is ignored for a 500 µs nap, faults during the nap
/// are ignored too), the first fault after the nap is serviced normally (the page may move again), the next one
/// throttles again. The 11th throttle becomes a pin: the page stays in system memory and is mapped remotely for
/// 150 ms; when the pin expires the page's history is forgotten. A thrashing page calms down (history reset) only after
/// a quiet epoch (1 s) without events, since every nap already separates its events by more than a lapse.
/// </summary>
/// <remarks>Allocation-free; the caller serialises access to one page's state (the GPU's servicing thread).</remarks>
public static class ThrashingDetector
{
    private const byte MaxEvents = 7;

    /// <summary>
    /// Records a migration or revocation of the page at time <paramref name="nowNs"/> (kernel: <c>thrashing_event_cb</c>).
    /// Events on a pinned page are ignored (it does not move while pinned).
    /// </summary>
    public static ThrashingEvent RecordEvent(ref PageThrashingState state, long nowNs, in ThrashingOptions options)
    {
        if (!options.Enabled || state.Pinned)
        {
            return ThrashingEvent.None;
        }
        bool thrashing = state.Events >= options.Threshold;
        long window = thrashing ? options.EpochNs : options.LapseNs;
        bool consecutive = state.LastEventNs != 0 && nowNs - state.LastEventNs <= window;
        state.LastEventNs = nowNs == 0 ? 1 : nowNs;
        if (consecutive)
        {
            if (state.Events < MaxEvents)
            {
                state.Events++;
            }
            return !thrashing && state.Events >= options.Threshold ? ThrashingEvent.Detected : ThrashingEvent.None;
        }
        state.Events = 1;
        if (thrashing)
        {
            state.Throttles = 0;
            state.ThrottleEndNs = 0;
            return ThrashingEvent.Calmed;
        }
        return ThrashingEvent.None;
    }

    /// <summary>
    /// Decides what to do with a device fault on the page at time <paramref name="nowNs"/> (kernel:
    /// <c>uvm_perf_thrashing_get_hint</c>): keep pinning until the pin expires (then forget the page); keep throttling
    /// until the nap ends; let the first fault after a nap through; otherwise start a new throttle while fewer than
    /// <c>PinThreshold</c> throttles happened, else pin.
    /// </summary>
    public static ThrashingHint GetHint(ref PageThrashingState state, long nowNs, in ThrashingOptions options)
    {
        if (!options.Enabled)
        {
            return ThrashingHint.None;
        }
        if (state.Pinned)
        {
            if (nowNs < state.PinEndNs)
            {
                return ThrashingHint.Pin;
            }
            state = default; // unpin: the next access faults and may migrate again
            return ThrashingHint.None;
        }
        if (state.Events < options.Threshold)
        {
            return ThrashingHint.None;
        }
        if (state.ThrottleEndNs != 0)
        {
            if (nowNs < state.ThrottleEndNs)
            {
                return ThrashingHint.Throttle;
            }
            state.ThrottleEndNs = 0; // the nap is over: this fault is serviced
            return ThrashingHint.None;
        }
        if (state.Throttles >= options.PinThreshold)
        {
            state.Pinned = true;
            state.PinEndNs = nowNs + options.PinNs;
            state.Throttles = 0;
            state.ThrottleEndNs = 0;
            return ThrashingHint.Pin;
        }
        state.Throttles++;
        state.ThrottleEndNs = nowNs + Math.Max(1, options.NapNs);
        return ThrashingHint.Throttle;
    }
}
