namespace Hetmem.Devices.Gpu;

/// <summary>
/// A kernel launch failed (CUDA: cudaErrorIllegalAddress and friends; kernel: a cancelled replayable fault that kills
/// the channel). <see cref="Errno"/> says why: EFAULT for an address no VMA maps (or that cannot be made valid),
/// EPERM for a write to read-only memory, EINVAL for a misaligned or page-crossing access, EIO when a kernel
/// thread threw (see <see cref="Exception.InnerException"/>), ENODEV when the device was shut down.
/// </summary>
public sealed class GpuLaunchException : Exception
{
    /// <summary>Creates the exception.</summary>
    public GpuLaunchException(Errno errno, ulong address, GpuAccess access, int unit, string message, Exception? inner = null)
        : base(message, inner)
    {
        Errno = errno;
        Address = address;
        Access = access;
        Unit = unit;
    }

    /// <summary>Why the launch failed.</summary>
    public Errno Errno { get; }
    /// <summary>The faulting address (0 when not an access error).</summary>
    public ulong Address { get; }
    /// <summary>The access type that failed.</summary>
    public GpuAccess Access { get; }
    /// <summary>The execution unit that reported the error (-1 when the servicer did).</summary>
    public int Unit { get; }
}

/// <summary>Thrown inside an execution unit to unwind a warp of an aborted launch; never escapes the device.</summary>
internal sealed class GpuWarpAbort : Exception
{
    public static readonly GpuWarpAbort Instance = new();
}

/// <summary>The state of one kernel launch, shared by the execution units that run it.</summary>
internal sealed class GpuLaunch
{
    private GpuLaunchException? _error;   // first error wins (Interlocked)
    private volatile bool _aborted;       // set with the error; read by units after a replay and between warps

    public GpuLaunch(GpuContext context, int gridDim, int blockDim, GpuKernel kernel, int warpSize, int units)
    {
        Context = context;
        GridDim = gridDim;
        BlockDim = blockDim;
        Kernel = kernel;
        WarpsPerBlock = (blockDim + warpSize - 1) / warpSize;
        TotalWarps = (long)WarpsPerBlock * gridDim;
        Done = new CountdownEvent(units);
        StartTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
    }

    public GpuContext Context { get; }
    public int GridDim { get; }
    public int BlockDim { get; }
    public GpuKernel Kernel { get; }
    public int WarpsPerBlock { get; }
    public long TotalWarps { get; }
    public long NextWarp;                 // Interlocked: next warp to hand out
    public CountdownEvent Done { get; }
    public long StartTimestamp { get; }
    public bool Aborted => _aborted;
    public GpuLaunchException? Error => Volatile.Read(ref _error);

    public void Fail(GpuLaunchException e)
    {
        if (Interlocked.CompareExchange(ref _error, e, null) == null)
        {
            _aborted = true;
        }
    }
}
