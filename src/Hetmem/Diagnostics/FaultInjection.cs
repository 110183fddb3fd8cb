using System.Numerics;
using System.Runtime.CompilerServices;

namespace Hetmem.Diagnostics;

/// <summary>
/// The places where <see cref="FaultInjection"/> can make an operation fail (kernel: the fault-injection capabilities
/// failslab, fail_page_alloc, fail_make_request, fail_function). Flags, so one configuration can cover several sites.
/// </summary>
[Flags]
public enum FaultSites
{
    /// <summary>No site.</summary>
    None = 0,
    /// <summary>
    /// RAM frame allocation: <c>PhysicalMemory.Allocate</c> returns <c>Page.NoPfn</c>, the out-of-memory result
    /// (kernel: fail_page_alloc). Callers turn it into ENOMEM (system calls), <c>VM_FAULT_OOM</c> (CPU faults, which
    /// the CPU reports as ENOMEM) or EFAULT/ENOMEM from <c>HmmRange.Fault</c>.
    /// </summary>
    FrameAllocation = 1 << 0,
    /// <summary>
    /// Page-table page allocation: <c>AddressSpace.AllocTable</c> fails (kernel: __pte_alloc / __pmd_alloc returning
    /// -ENOMEM, whose page comes from fail_page_alloc). Surfaces as ENOMEM from the operation that needed the table.
    /// </summary>
    PageTableAllocation = 1 << 1,
    /// <summary>
    /// DAX namespace I/O: a block of a <c>DaxNamespace</c> reads as a media error (kernel: a badblocks hit in
    /// dax_direct_access, -EIO). File read/write returns EIO; a CPU fault on the block is <c>VM_FAULT_SIGBUS</c>
    /// (a <see cref="BusError"/>); <c>HmmRange.Fault</c> reports EFAULT.
    /// </summary>
    DaxIo = 1 << 2,
    /// <summary>
    /// Device memory allocation: the dmirror chunk allocator or GPU VRAM allocation finds no free device page
    /// (kernel: dmirror_devmem_alloc_page / the driver's VRAM allocator failing). The driver takes its ENOMEM or
    /// fall-back-to-system-memory path.
    /// </summary>
    DeviceMemoryAllocation = 1 << 3,
    /// <summary>
    /// Transport send: the RDMA transport drops a request as if the peer never acknowledged it after all retries
    /// (kernel/verbs: IBV_WC_RETRY_EXC_ERR). The work request completes with that status and the queue pair moves to
    /// the error state, flushing what was queued behind it.
    /// </summary>
    TransportSend = 1 << 4,
    /// <summary>
    /// Device callbacks throw an <see cref="InjectedFaultException"/>: <c>IDevicePageMapOps.MigrateToRam</c>,
    /// <c>IMmuIntervalNotifierOps</c> invalidate and <c>IDeviceMirror.ProgramDevice</c>. See
    /// <see cref="FaultInjection"/> for how each is contained.
    /// </summary>
    DeviceCallback = 1 << 5,
    /// <summary>Every site.</summary>
    All = FrameAllocation | PageTableAllocation | DaxIo | DeviceMemoryAllocation | TransportSend | DeviceCallback,
}

/// <summary>
/// One fault-injection configuration (kernel: the debugfs attributes of a fault_attr: probability, interval, times,
/// space, plus a task filter). Immutable once passed to <see cref="FaultInjection.Configure(FaultInjectionOptions)"/>.
/// </summary>
/// <remarks>
/// For each call at an enabled site the decision is, in order: the call is counted (per site); the first
/// <see cref="Skip"/> calls never fail; once <see cref="Times"/> failures were injected at that site no more are;
/// with <see cref="Interval"/> &gt; 1 only every Interval-th call is a candidate; a candidate fails with
/// <see cref="Probability"/> (drawn from a generator seeded with <see cref="Seed"/>; a probability of 1 draws nothing).
/// </remarks>
public sealed class FaultInjectionOptions
{
    /// <summary>Seed of the pseudo-random generator; the same seed and the same single-threaded call sequence fail the same calls.</summary>
    public int Seed { get; init; }

    /// <summary>Probability in [0, 1] that a candidate call fails (kernel: probability, in percent there). Default 1.</summary>
    public double Probability { get; init; } = 1.0;

    /// <summary>Sites that may fail. Default <see cref="FaultSites.All"/>.</summary>
    public FaultSites Sites { get; init; } = FaultSites.All;

    /// <summary>Only every Interval-th call at a site is a candidate (kernel: interval). 1 (the default) makes every call a candidate.</summary>
    public long Interval { get; init; } = 1;

    /// <summary>Maximum failures injected per site; negative means unlimited (kernel: times, -1 unlimited). Default -1.</summary>
    public long Times { get; init; } = -1;

    /// <summary>Number of calls at each site that pass before any may fail (kernel: space, counted in calls here). Default 0.</summary>
    public long Skip { get; init; }

    /// <summary>
    /// When not null, only hooks that pass this object as their domain can fail: the hooks pass the
    /// <c>PhysicalMemory</c> they work in, so a test that injects into its own machine never disturbs tests running
    /// in parallel on other machines (kernel: the task filter, /proc/pid/make-it-fail). Null makes every domain fail.
    /// </summary>
    public object? Domain { get; init; }
}

/// <summary>
/// Thrown by a device callback that fault injection made fail (<see cref="FaultSites.DeviceCallback"/>); models a
/// driver bug or a hardware error inside the callback.
/// </summary>
public sealed class InjectedFaultException : Exception
{
    /// <summary>Creates the exception for <paramref name="site"/>.</summary>
    public InjectedFaultException(FaultSites site)
        : base($"injected fault at {site}")
    {
        Site = site;
    }

    /// <summary>The site that failed.</summary>
    public FaultSites Site { get; }
}

/// <summary>
/// Process-wide switch that makes frame allocation, page-table allocation, DAX namespace I/O, device memory
/// allocation and transport sends fail at seeded points, and makes device callbacks throw (kernel: the
/// fault-injection framework, should_fail() behind failslab / fail_page_alloc / fail_make_request).
/// </summary>
/// <remarks>
/// <para><b>Cost.</b> Off by default. Every hook is one line,
/// <c>if (FaultInjection.Enabled &amp;&amp; FaultInjection.ShouldFail(site, domain)) { failure path }</c>: disabled it costs one
/// field read and allocates nothing. Enabled, <see cref="ShouldFail"/> takes a private leaf lock (nothing is taken
/// under it; it is outside the <see cref="LockClass"/> tree) and allocates nothing.</para>
/// <para><b>Scope.</b> The switch is global, but <see cref="FaultInjectionOptions.Domain"/> restricts failures to the
/// hooks of one <c>PhysicalMemory</c>. Tests should always set it and disable injection in <c>finally</c> (or use
/// <see cref="Scope(FaultInjectionOptions)"/>).</para>
/// <para><b>Reproducibility.</b> Calls are counted per site and candidates draw from one seeded generator, so a
/// single-threaded workload fails the same calls for the same options. Multi-threaded workloads are reproducible
/// only as far as their interleaving is.</para>
/// <para><b>Containment (what each failure becomes).</b></para>
/// <list type="bullet">
/// <item><see cref="FaultSites.FrameAllocation"/>: the existing out-of-memory path. System calls throw
/// <c>MmException(ENOMEM)</c> and change nothing; a CPU fault returns VM_FAULT_OOM and the CPU access throws
/// <c>MmException(ENOMEM)</c>; <c>HmmRange.Fault</c> returns ENOMEM or EFAULT; migration keeps the source page (the
/// page is "not migrated", as when the kernel's destination allocation fails).</item>
/// <item><see cref="FaultSites.PageTableAllocation"/>: ENOMEM from whatever needed the table; tables allocated
/// earlier in the same operation stay (the kernel also keeps empty page-table pages until unmap/exit frees
/// them), so nothing leaks and the address space stays consistent.</item>
/// <item><see cref="FaultSites.DaxIo"/>: file read/write of the block returns EIO; a CPU fault on it raises
/// <see cref="BusError"/> (VM_FAULT_SIGBUS); <c>HmmRange.Fault</c> returns EFAULT.</item>
/// <item><see cref="FaultSites.DeviceMemoryAllocation"/>: the driver's no-device-memory path (dmirror: ENOMEM from the
/// migrate ioctl for pages it could not place, as test_hmm does; GPU: the page stays in system memory).</item>
/// <item><see cref="FaultSites.TransportSend"/>: the work request completes with the retry-exceeded status and the
/// queue pair enters the error state (verbs semantics); later requests complete flushed.</item>
/// <item><see cref="FaultSites.DeviceCallback"/>: an <see cref="InjectedFaultException"/> is thrown where the mm calls
/// the device. <c>MigrateToRam</c>: VM_FAULT_SIGBUS, so the CPU access throws <see cref="BusError"/> and the
/// device-private entry and its data stay in device memory (a later access retries). <c>ProgramDevice</c>: the
/// <c>HmmMirrorHelper.FaultAndProgram</c> loop returns EFAULT with the device update lock released and nothing mapped.
/// Interval-notifier invalidate: the fault is injected after the callback did its work (a callback that throws
/// before zapping would leave stale device entries, which no containment can repair); any exception from an
/// invalidate callback is contained in the notifier walk like a refusal (kernel: WARN_ON for a blockable range and
/// the walk goes on, -EAGAIN for a non-blockable one): the remaining callbacks run, the range end and the sequence
/// completion happen, the mm operation completes, and the exception is kept in
/// <c>MmuNotifierSubscriptions.LastCallbackFault</c> (rethrowing it at the range end would skip the frees callers do
/// after the bracket). <c>PageFree</c> is not an injection point: the kernel's page_free returns nothing and its
/// callers free in batches, so a failure could only leak the device page.</item>
/// </list>
/// </remarks>
public static class FaultInjection
{
    private const int SiteCount = 6;

    private static bool s_enabled;                          // Volatile; written under s_lock, read lock-free on hot paths
    private static readonly object s_lock = new();          // leaf lock: guards everything below
    private static FaultInjectionOptions? s_options;        // guarded by s_lock; also published with Volatile for the domain filter
    private static Random? s_random;                        // guarded by s_lock
    private static readonly long[] s_calls = new long[SiteCount];    // guarded by s_lock
    private static readonly long[] s_injected = new long[SiteCount]; // guarded by s_lock

    /// <summary>True while injection is configured. One field read; hooks test it before calling <see cref="ShouldFail"/>.</summary>
    public static bool Enabled
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Volatile.Read(ref s_enabled);
    }

    /// <summary>The active options, or null when disabled.</summary>
    public static FaultInjectionOptions? Options => Volatile.Read(ref s_options);

    /// <summary>
    /// Turns injection on with <paramref name="options"/> and resets the per-site call and injection counters
    /// (kernel: writing the fault_attr debugfs files).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Probability outside [0, 1] or Interval &lt; 1.</exception>
    public static void Configure(FaultInjectionOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!(options.Probability >= 0 && options.Probability <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(options), $"probability {options.Probability} is not in [0, 1]");
        }
        if (options.Interval < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(options), $"interval {options.Interval} is below 1");
        }
        lock (s_lock)
        {
            Array.Clear(s_calls);
            Array.Clear(s_injected);
            s_random = new Random(options.Seed);
            Volatile.Write(ref s_options, options);
            Volatile.Write(ref s_enabled, options.Sites != FaultSites.None);
        }
    }

    /// <summary>
    /// Turns injection on: each call at one of <paramref name="sites"/> in <paramref name="domain"/> fails with
    /// <paramref name="probability"/>, drawn from a generator seeded with <paramref name="seed"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Probability outside [0, 1].</exception>
    public static void Configure(int seed, double probability, FaultSites sites, object? domain = null)
        => Configure(new FaultInjectionOptions { Seed = seed, Probability = probability, Sites = sites, Domain = domain });

    /// <summary>Makes exactly the <paramref name="n"/>-th call (1-based) at <paramref name="site"/> fail, once.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="n"/> &lt; 1.</exception>
    public static void FailNth(FaultSites site, long n, object? domain = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(n, 1);
        Configure(new FaultInjectionOptions { Sites = site, Skip = n - 1, Times = 1, Domain = domain });
    }

    /// <summary>Makes every <paramref name="n"/>-th call at <paramref name="sites"/> fail (kernel: interval with probability 100).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="n"/> &lt; 1.</exception>
    public static void FailEveryNth(FaultSites sites, long n, object? domain = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(n, 1);
        Configure(new FaultInjectionOptions { Sites = sites, Interval = n, Domain = domain });
    }

    /// <summary>Turns injection off. The counters keep their values until the next <see cref="Configure(FaultInjectionOptions)"/>.</summary>
    public static void Disable()
    {
        lock (s_lock)
        {
            Volatile.Write(ref s_enabled, false);
            Volatile.Write(ref s_options, null);
        }
    }

    /// <summary>
    /// Configures injection and returns a token whose <c>Dispose</c> disables it again (if no other configuration
    /// replaced it meanwhile). Use with <c>using</c> in tests.
    /// </summary>
    public static FaultInjectionScope Scope(FaultInjectionOptions options)
    {
        Configure(options);
        return new FaultInjectionScope(options);
    }

    /// <summary>
    /// Decides whether this call at <paramref name="site"/> fails (kernel: should_fail). Thread-safe; allocation-free.
    /// Call only after <see cref="Enabled"/> returned true.
    /// </summary>
    /// <param name="site">Exactly one site.</param>
    /// <param name="domain">The hook's domain (its <c>PhysicalMemory</c>), or null when the hook has none: such a hook
    /// fails only under a configuration without a domain.</param>
    /// <returns>True when the caller must take its failure path.</returns>
    public static bool ShouldFail(FaultSites site, object? domain = null)
    {
        FaultInjectionOptions? o = Volatile.Read(ref s_options);
        if (o is null || (o.Sites & site) == 0 || (o.Domain is not null && !ReferenceEquals(o.Domain, domain)))
        {
            return false;
        }
        int i = Index(site);
        lock (s_lock)
        {
            if (!ReferenceEquals(o, s_options))
            {
                return false; // reconfigured or disabled meanwhile
            }
            long n = ++s_calls[i];
            if (n <= o.Skip || (o.Times >= 0 && s_injected[i] >= o.Times))
            {
                return false;
            }
            if (o.Interval > 1 && (n - o.Skip) % o.Interval != 0)
            {
                return false;
            }
            if (o.Probability < 1 && s_random!.NextDouble() >= o.Probability)
            {
                return false;
            }
            s_injected[i]++;
            return true;
        }
    }

    /// <summary>
    /// Throws <see cref="InjectedFaultException"/> when a <see cref="FaultSites.DeviceCallback"/> fault is due: the
    /// one-line hook at the top of a device callback.
    /// </summary>
    /// <exception cref="InjectedFaultException">The callback was chosen to fail.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void MaybeThrowInCallback(object? domain)
    {
        if (Enabled && ShouldFail(FaultSites.DeviceCallback, domain))
        {
            ThrowInjected();
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowInjected() => throw new InjectedFaultException(FaultSites.DeviceCallback);

    /// <summary>Failures injected at <paramref name="site"/> (one site, or several summed) since the last configuration.</summary>
    public static long Injected(FaultSites site) => Sum(s_injected, site);

    /// <summary>Calls counted at <paramref name="site"/> (one site, or several summed) since the last configuration.</summary>
    public static long Calls(FaultSites site) => Sum(s_calls, site);

    private static long Sum(long[] cells, FaultSites sites)
    {
        long total = 0;
        lock (s_lock)
        {
            for (int i = 0; i < SiteCount; i++)
            {
                if (((int)sites & (1 << i)) != 0)
                {
                    total += cells[i];
                }
            }
        }
        return total;
    }

    private static int Index(FaultSites site)
    {
        uint v = (uint)site;
        if (v == 0 || (v & (v - 1)) != 0 || v >= 1u << SiteCount)
        {
            throw new ArgumentOutOfRangeException(nameof(site), $"{site} is not exactly one fault site");
        }
        return BitOperations.TrailingZeroCount(v);
    }
}

/// <summary>Disables fault injection when disposed (see <see cref="FaultInjection.Scope(FaultInjectionOptions)"/>).</summary>
public sealed class FaultInjectionScope : IDisposable
{
    private readonly FaultInjectionOptions _options; // immutable

    internal FaultInjectionScope(FaultInjectionOptions options) => _options = options;

    /// <summary>Disables injection if this scope's configuration is still the active one.</summary>
    public void Dispose()
    {
        if (ReferenceEquals(FaultInjection.Options, _options))
        {
            FaultInjection.Disable();
        }
    }
}
