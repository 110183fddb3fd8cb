using System.Runtime.CompilerServices;

namespace Hetmem.Devices.Gpu;

/// <summary>A GPU kernel: called once per thread of the grid (CUDA: a <c>__global__</c> function).</summary>
/// <param name="thread">The thread's indices and its memory interface.</param>
public delegate void GpuKernel(GpuThread thread);

/// <summary>
/// One GPU thread of a launch: its indices, and loads, stores and atomics on the process's own virtual addresses,
/// every one translated by the device MMU (TLB, then page table, then a replayable fault that stalls the warp).
/// </summary>
/// <remarks>
/// Accesses must not cross a 4 KiB page and atomics must be naturally aligned; otherwise the launch fails with
/// EINVAL (CUDA: misaligned address). An access the fault servicer cannot satisfy fails the launch with EFAULT or
/// EPERM. Valid only inside the kernel call it was passed to.
/// </remarks>
public readonly unsafe struct GpuThread
{
    private readonly ExecutionUnit _unit;

    internal GpuThread(ExecutionUnit unit, int blockIdx, int threadIdx, int blockDim, int gridDim)
    {
        _unit = unit;
        BlockIdx = blockIdx;
        ThreadIdx = threadIdx;
        BlockDim = blockDim;
        GridDim = gridDim;
    }

    /// <summary>Index of the thread's block in the grid (CUDA: blockIdx.x).</summary>
    public int BlockIdx { get; }
    /// <summary>Index of the thread in its block (CUDA: threadIdx.x).</summary>
    public int ThreadIdx { get; }
    /// <summary>Threads per block (CUDA: blockDim.x).</summary>
    public int BlockDim { get; }
    /// <summary>Blocks in the grid (CUDA: gridDim.x).</summary>
    public int GridDim { get; }
    /// <summary>blockIdx * blockDim + threadIdx.</summary>
    public long GlobalId => (long)BlockIdx * BlockDim + ThreadIdx;
    /// <summary>Total threads of the launch.</summary>
    public long GridThreads => (long)GridDim * BlockDim;
    /// <summary>The execution unit running this thread's warp.</summary>
    public int Unit => _unit.Id;

    /// <summary>Loads a value (a global-memory load).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public T Load<T>(ulong va) where T : unmanaged
    {
        byte* p = _unit.Translate(va, GpuAccess.Read, sizeof(T));
        T v = Unsafe.ReadUnaligned<T>(p);
        _unit.EndAccess();
        return v;
    }

    /// <summary>Stores a value (a global-memory store).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store<T>(ulong va, T value) where T : unmanaged
    {
        byte* p = _unit.Translate(va, GpuAccess.Write, sizeof(T));
        Unsafe.WriteUnaligned(p, value);
        _unit.EndAccess();
    }

    /// <summary>Atomically adds to a 64-bit value and returns the old value (CUDA: atomicAdd).</summary>
    public long AtomicAdd(ulong va, long delta)
    {
        long* p = (long*)_unit.TranslateAtomic(va, sizeof(long));
        long old = Interlocked.Add(ref *p, delta) - delta;
        _unit.EndAccess();
        return old;
    }

    /// <summary>Atomically adds to a 32-bit value and returns the old value (CUDA: atomicAdd).</summary>
    public int AtomicAdd(ulong va, int delta)
    {
        int* p = (int*)_unit.TranslateAtomic(va, sizeof(int));
        int old = Interlocked.Add(ref *p, delta) - delta;
        _unit.EndAccess();
        return old;
    }

    /// <summary>Atomic compare-and-swap of a 64-bit value; returns the old value (CUDA: atomicCAS).</summary>
    public long AtomicCas(ulong va, long compare, long value)
    {
        long* p = (long*)_unit.TranslateAtomic(va, sizeof(long));
        long old = Interlocked.CompareExchange(ref *p, value, compare);
        _unit.EndAccess();
        return old;
    }

    /// <summary>Atomic compare-and-swap of a 32-bit value; returns the old value (CUDA: atomicCAS).</summary>
    public int AtomicCas(ulong va, int compare, int value)
    {
        int* p = (int*)_unit.TranslateAtomic(va, sizeof(int));
        int old = Interlocked.CompareExchange(ref *p, value, compare);
        _unit.EndAccess();
        return old;
    }

    /// <summary>Atomic exchange of a 64-bit value; returns the old value (CUDA: atomicExch).</summary>
    public long AtomicExchange(ulong va, long value)
    {
        long* p = (long*)_unit.TranslateAtomic(va, sizeof(long));
        long old = Interlocked.Exchange(ref *p, value);
        _unit.EndAccess();
        return old;
    }

    /// <summary>Atomically lowers a 32-bit value to <paramref name="value"/> if smaller; returns the old value (CUDA: atomicMin).</summary>
    public int AtomicMin(ulong va, int value)
    {
        int* p = (int*)_unit.TranslateAtomic(va, sizeof(int));
        int old = Volatile.Read(ref *p);
        while (value < old)
        {
            int seen = Interlocked.CompareExchange(ref *p, value, old);
            if (seen == old)
            {
                break;
            }
            old = seen;
        }
        _unit.EndAccess();
        return old;
    }

    /// <summary>
    /// A software prefetch hint: when the page is not mapped, records a prefetch-type fault without stalling (the
    /// servicer maps what is already valid and migrates nothing for it).
    /// </summary>
    public void Prefetch(ulong va) => _unit.PrefetchHint(va);
}
