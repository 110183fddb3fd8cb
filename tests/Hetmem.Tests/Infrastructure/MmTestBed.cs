using System.Diagnostics;
using System.Text;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Tests.Infrastructure;

/// <summary>
/// A leak-checking frame tracker: records the live RAM blocks (and, with HETMEM_LEAK_STACKS=1, the stack that
/// allocated each), so a failed balance check can say which frames leaked and where they came from.
/// </summary>
internal sealed class LeakCheckingFrameTracker : IFrameTracker
{
    private readonly object _lock = new();
    private readonly Dictionary<ulong, (int Order, string? Site)> _live = [];
    private readonly bool _stacks = Environment.GetEnvironmentVariable("HETMEM_LEAK_STACKS") is "1" or "true";

    public void Allocated(ulong pfn, int order)
    {
        string? site = _stacks ? new StackTrace(2, false).ToString() : null;
        lock (_lock)
        {
            _live[pfn] = (order, site);
        }
    }

    public void Freed(ulong pfn, int order)
    {
        lock (_lock)
        {
            _live.Remove(pfn);
        }
    }

    /// <summary>Blocks allocated while the tracker was attached and not freed since.</summary>
    public List<(ulong Pfn, int Order, string? Site)> Live()
    {
        lock (_lock)
        {
            return [.. _live.Select(kv => (kv.Key, kv.Value.Order, kv.Value.Site))];
        }
    }
}

/// <summary>
/// Everything an mm test needs, with leak checking built in: a <see cref="PhysicalMemory"/> (64 MiB by default), an
/// optional swap store, address spaces, CPUs, files and file systems. <see cref="Dispose"/> checks the frame map
/// counts across the live spaces, exits them, disposes what the test registered (in reverse order), and then asserts
/// that the frame allocator is back where it started and every swap slot is free, listing leaked frames if not.
/// </summary>
internal sealed class MmTestBed : IDisposable
{
    public const ulong Mib = 1UL << 20;
    public const ulong Kib4 = 4096;

    private readonly List<AddressSpace> _spaces = [];
    private readonly List<Cpu> _cpus = [];
    private readonly List<IDisposable> _owned = [];
    private readonly LeakCheckingFrameTracker _tracker = new();
    private ScratchDir? _dir;
    private PageCacheFileSystem? _pageCache;
    private bool _disposed;

    public MmTestBed(ulong ramBytes = 64 * Mib, uint swapSlots = 0)
    {
        Memory = new PhysicalMemory(ramBytes);
        Memory.Tracker = _tracker;
        UsedAtStart = Memory.UsedFrames;
        Swap = swapSlots == 0 ? null : new SwapStore(swapSlots);
    }

    public PhysicalMemory Memory { get; }

    public SwapStore? Swap { get; }

    public long UsedAtStart { get; }

    /// <summary>The hugetlbfs new spaces use for MAP_HUGETLB (set by <see cref="Hugetlb"/>).</summary>
    public HugetlbFs? DefaultHugetlb { get; set; }

    public ScratchDir Dir => _dir ??= Own(new ScratchDir());

    /// <summary>A page-cache file system under the scratch directory (created on first use).</summary>
    public PageCacheFileSystem PageCache => _pageCache ??= Own(new PageCacheFileSystem(Memory, Directory.CreateDirectory(Dir.File("pagecache")).FullName));

    /// <summary>A new address space, exited at dispose.</summary>
    public AddressSpace NewSpace()
    {
        var mm = new AddressSpace(Memory, Swap) { DefaultHugetlb = DefaultHugetlb };
        _spaces.Add(mm);
        return mm;
    }

    /// <summary>Tracks a space created elsewhere (a fork child).</summary>
    public AddressSpace Track(AddressSpace mm)
    {
        _spaces.Add(mm);
        return mm;
    }

    /// <summary>Forks <paramref name="parent"/> and tracks the child.</summary>
    public AddressSpace Fork(AddressSpace parent) => Track(parent.Fork());

    /// <summary>A CPU on <paramref name="mm"/> for the calling thread, disposed first at dispose.</summary>
    public Cpu Cpu(AddressSpace mm)
    {
        var c = new Cpu(mm);
        lock (_cpus)
        {
            _cpus.Add(c);
        }
        return c;
    }

    /// <summary>Registers something to dispose (in reverse order of registration) before the leak check.</summary>
    public T Own<T>(T disposable) where T : IDisposable
    {
        _owned.Add(disposable);
        return disposable;
    }

    /// <summary>A sparse DAX namespace file of <paramref name="bytes"/> formatted with the DAX file system.</summary>
    public DaxFileSystem Dax(ulong bytes)
    {
        var ns = Own(new DaxNamespace(Memory, Dir.File($"pmem{_owned.Count}"), bytes));
        return Own(DaxFileSystem.Format(ns));
    }

    /// <summary>A hugetlbfs over a pool of <paramref name="pages"/> huge pages, also the default for MAP_HUGETLB of new spaces.</summary>
    public HugetlbFs Hugetlb(ulong pages, int order = Page.PmdOrder)
    {
        var pool = Own(new HugetlbPool(Memory, order, pages));
        HugetlbFs fs = Own(new HugetlbFs(pool));
        DefaultHugetlb ??= fs;
        foreach (AddressSpace mm in _spaces)
        {
            mm.DefaultHugetlb ??= fs;
        }
        return fs;
    }

    /// <summary>Runs the debug invariant checker on every live space and checks frame map counts across them.</summary>
    public void CheckInvariants() => AddressSpace.CheckMapCounts([.. _spaces.Where(s => s.IsAlive)]);

    /// <summary>Exits a space now (its frames must come back at dispose anyway).</summary>
    public void Exit(AddressSpace mm) => mm.Exit();

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        Exception? first = null;
        void Try(Action a)
        {
            try
            {
                a();
            }
            catch (Exception e)
            {
                first ??= e;
            }
        }
        lock (_cpus)
        {
            foreach (Cpu c in _cpus)
            {
                Try(c.Dispose);
            }
        }
        Try(CheckInvariants);
        foreach (AddressSpace mm in _spaces)
        {
            Try(mm.Exit);
        }
        for (int i = _owned.Count - 1; i >= 0; i--)
        {
            Try(_owned[i].Dispose);
        }
        if (first is null)
        {
            Try(() => Assert.True(Swap is null || Swap.UsedSlots == 0, $"{Swap?.UsedSlots} swap slots leaked"));
            Try(AssertBalanced);
        }
        Memory.Tracker = null;
        Swap?.Dispose();
        Memory.Dispose();
        if (first is not null)
        {
            throw new InvalidOperationException($"test bed teardown failed: {first.Message}", first);
        }
    }

    /// <summary>Asserts that the allocator has as many frames in use as at the start, listing the leaked ones.</summary>
    public void AssertBalanced()
    {
        long used = Memory.UsedFrames;
        if (used == UsedAtStart)
        {
            return;
        }
        var sb = new StringBuilder();
        sb.AppendLine($"frames leaked: {used - UsedAtStart} ({used} in use, {UsedAtStart} at start)");
        foreach ((ulong pfn, int order, string? site) in _tracker.Live().OrderBy(l => l.Pfn).Take(16))
        {
            ref FrameInfo f = ref Memory.Frame(pfn);
            sb.AppendLine($"  pfn 0x{pfn:x} order {order} refs {f.RefCount} maps {f.MapCount} flags 0x{f.Flags:x} owner {f.Mapping?.GetType().Name ?? "-"}");
            if (site is not null)
            {
                sb.AppendLine(site);
            }
        }
        Assert.Fail(sb.ToString());
    }
}
