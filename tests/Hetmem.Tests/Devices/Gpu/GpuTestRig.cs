using Hetmem.Devices.Gpu;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Gpu;

/// <summary>A physical memory, one address space and one GPU, checking at disposal that every frame came back.</summary>
internal sealed class GpuTestRig : IDisposable
{
    public const ulong Mib = 1UL << 20;

    private readonly long _usedAtStart;
    private bool _exited;

    public GpuTestRig(GpuDeviceOptions? options = null, ulong ramBytes = 128 * Mib)
    {
        Memory = new PhysicalMemory(ramBytes);
        _usedAtStart = Memory.UsedFrames;
        Space = new AddressSpace(Memory);
        Gpu = new GpuDevice(Memory, (options ?? new GpuDeviceOptions()) with { ExecutionUnits = options?.ExecutionUnits ?? 4 });
        Context = Gpu.CreateContext(Space);
        Cpu = new Cpu(Space);
    }

    public PhysicalMemory Memory { get; }
    public AddressSpace Space { get; }
    public GpuDevice Gpu { get; }
    public GpuContext Context { get; }
    public Cpu Cpu { get; }
    public GpuCounters Counters => Gpu.Counters;
    public long this[GpuCounter c] => Gpu.Counters[c];

    public ulong MapAnon(ulong bytes, Prot prot = Prot.Read | Prot.Write)
        => Space.Mmap(0, bytes, prot, MapFlags.Private | MapFlags.Anonymous);

    /// <summary>The level of the CPU page-table entry mapping <paramref name="va"/> (0, 9 or 18).</summary>
    public int CpuOrder(ulong va)
    {
        Space.QueryPte(va, out int order);
        return order;
    }

    public void FillLongs(ulong va, long count, Func<long, long> value)
    {
        for (long i = 0; i < count; i++)
        {
            Cpu.Write(va + (ulong)i * 8, value(i));
        }
    }

    public void ExitSpace()
    {
        if (!_exited)
        {
            _exited = true;
            Cpu.Dispose();
            Space.Exit();
        }
    }

    /// <summary>Disposes everything and asserts every RAM frame came back and no VRAM page leaked.</summary>
    public void Dispose()
    {
        Context.Dispose();
        Gpu.Dispose();
        ExitSpace();
        Assert.Equal(0L, Gpu.VramPagesInUse);
        Assert.Equal(_usedAtStart, Memory.UsedFrames);
        Assert.Equal(0L, Gpu.Counters[GpuCounter.StaleTranslations]);
        Memory.Dispose();
    }
}

/// <summary>A thread whose exception is rethrown by <see cref="Join"/> on the test thread instead of killing the test host.</summary>
internal sealed class BackgroundWork
{
    private readonly Thread _thread;
    private Exception? _error;

    public BackgroundWork(Action body)
    {
        _thread = new Thread(() =>
        {
            try
            {
                body();
            }
            catch (Exception e)
            {
                _error = e;
            }
        });
        _thread.Start();
    }

    public void Join()
    {
        _thread.Join();
        if (_error is not null)
        {
            throw new AggregateException("a background thread of the test failed", _error);
        }
    }
}
