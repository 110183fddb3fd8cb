namespace Hetmem.Tests.Diagnostics;

/// <summary>
/// Measures managed allocation of an action on the calling thread. A garbage collection started by another thread
/// can make <see cref="GC.GetAllocatedBytesForCurrentThread"/> report the unused rest of the thread's allocation
/// context (under 8 KiB) once, so the measurement is repeated and the least value is returned: code that really
/// allocates shows it on every attempt.
/// </summary>
internal static class AllocationMeter
{
    public static long LeastAllocated(Action action, int attempts = 5)
    {
        action(); // JIT and static constructors
        long least = long.MaxValue;
        for (int i = 0; i < attempts && least != 0; i++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            action();
            least = Math.Min(least, GC.GetAllocatedBytesForCurrentThread() - before);
        }
        return least;
    }
}
