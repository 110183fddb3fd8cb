using Hetmem.Diagnostics;

namespace Hetmem.Mm;

/// <summary>Software-TLB shootdown (kernel: flush_tlb_mm_range with IPIs; here an epoch wait).</summary>
public sealed partial class AddressSpace
{
    private long _tlbGen = 1;            // atomic; bumped by every shootdown; TLB entries tagged with an older value are stale
    private Cpu[] _cpus = [];            // copy-on-write under _cpusLock; read lock-free by FlushTlb
    private readonly Lock _cpusLock = new();

    /// <summary>The current TLB generation (read by <see cref="Cpu"/> after it publishes that it is accessing memory).</summary>
    internal long TlbGeneration => Volatile.Read(ref _tlbGen);

    /// <summary>Cpus attached to this space.</summary>
    public int AttachedCpus => Volatile.Read(ref _cpus).Length;

    internal void AttachCpu(Cpu cpu)
    {
        lock (_cpusLock)
        {
            _cpus = [.. _cpus, cpu];
        }
    }

    internal void DetachCpu(Cpu cpu)
    {
        lock (_cpusLock)
        {
            _cpus = _cpus.Where(c => c != cpu).ToArray();
        }
    }

    /// <summary>
    /// Makes every software-TLB entry of this space stale and waits until no Cpu can still be using a
    /// translation read before the call (kernel: flush_tlb_range + the IPI wait). Call after changing or
    /// clearing present entries and before freeing or reusing the frames they mapped. Never call with a
    /// page-table lock held (a Cpu in its slow path may be waiting for it).
    /// </summary>
    /// <remarks>
    /// Pairs with <see cref="Cpu"/>: a Cpu stores its "in access" marker, then reads the generation; the
    /// shooter bumps the generation, runs a process-wide memory barrier, then waits for markers to clear.
    /// Either the Cpu's marker is visible to the shooter (which waits), or the Cpu reads the new generation
    /// (and its tagged entries miss).
    /// </remarks>
    public void FlushTlb()
    {
        Interlocked.Increment(ref _tlbGen);
        Cpu[] cpus = Volatile.Read(ref _cpus);
        if (cpus.Length == 0)
        {
            return;
        }
        Counters.Inc(Counter.TlbShootdown);
        Interlocked.MemoryBarrierProcessWide();
        foreach (Cpu c in cpus)
        {
            c.WaitForQuiescence();
        }
    }
}
