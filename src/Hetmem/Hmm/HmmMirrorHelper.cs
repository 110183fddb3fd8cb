using Hetmem.Diagnostics.Scheduling;
using Hetmem.Mm;

namespace Hetmem.Hmm;

/// <summary>A device that mirrors an address space through <see cref="HmmMirrorHelper.FaultAndProgram"/>.</summary>
public interface IDeviceMirror
{
    /// <summary>The driver's update lock: taken by its invalidate callback and around programming device entries.</summary>
    Lock UpdateLock { get; }

    /// <summary>
    /// Programs device page-table entries from <paramref name="range"/>'s output (VALID → map, WRITE → writable,
    /// order → a large device entry is allowed). Called with <see cref="UpdateLock"/> held after the sequence check
    /// succeeded. Must not call into the mm.
    /// </summary>
    Errno ProgramDevice(HmmRange range);
}

/// <summary>
/// The canonical driver loop of Documentation/mm/hmm.rst, written once: read-begin → fault under the mmap read
/// lock → take the device lock → read-retry → program device entries (kernel: the pattern every HMM driver
/// open-codes; drm_gpusvm_get_pages).
/// </summary>
public static class HmmMirrorHelper
{
    /// <summary>How long a driver retries before giving up with EBUSY (kernel: HMM_RANGE_DEFAULT_TIMEOUT).</summary>
    public const int DefaultTimeoutMs = 1000;

    /// <summary>
    /// Faults or snapshots <paramref name="range"/> and programs <paramref name="device"/> from a result no
    /// invalidation overlapped. Takes the mmap read lock itself; the caller must not hold it or the device lock.
    /// </summary>
    /// <returns>Ok; EFAULT when the address space is gone or a page cannot be made valid; EPERM for a write to a
    /// read-only VMA; EBUSY after <paramref name="timeoutMs"/> of colliding invalidations; or the device's error.</returns>
    public static Errno FaultAndProgram<TDevice>(TDevice device, HmmRange range, int timeoutMs = DefaultTimeoutMs, Action<int>? onAttempt = null)
        where TDevice : IDeviceMirror
    {
        AddressSpace mm = range.Notifier.Space;
        if (!mm.TryGetLiveReference())
        {
            return Errno.EFAULT;
        }
        try
        {
            long deadline = Environment.TickCount64 + timeoutMs;
            for (int attempt = 0; ; attempt++)
            {
                if (Environment.TickCount64 > deadline)
                {
                    return Errno.EBUSY;
                }
                onAttempt?.Invoke(attempt);
                range.NotifierSeq = range.Notifier.ReadBegin();
                Errno r;
                mm.MmapLock.EnterRead();
                try
                {
                    r = range.Fault();
                }
                finally
                {
                    mm.MmapLock.ExitRead();
                }
                if (r == Errno.EBUSY)
                {
                    continue;
                }
                if (r != Errno.Ok)
                {
                    return r;
                }
                SchedulePoint.BeforeAcquire(device.UpdateLock, "device_update_lock");
                lock (device.UpdateLock)
                {
                    if (range.Notifier.ReadRetry(range.NotifierSeq))
                    {
                        continue;
                    }
                    try
                    {
                        Hetmem.Diagnostics.FaultInjection.MaybeThrowInCallback(mm.Memory);
                        return device.ProgramDevice(range);
                    }
                    catch (Hetmem.Diagnostics.InjectedFaultException)
                    {
                        return Errno.EFAULT; // the device could not be programmed: the fault fails, nothing is mapped
                    }
                }
            }
        }
        finally
        {
            mm.PutLiveReference();
        }
    }
}
