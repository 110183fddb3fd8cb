using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>
/// One execution unit (an SM with its uTLB): a worker thread that runs the warps of a launch one at a time and
/// translates every access through its own TLB and the context's GPU page table. A miss writes a replayable fault
/// record and stalls the warp until the servicer replays.
/// </summary>
/// <remarks>
/// <para>TLB invalidation (kernel: a GPU TLB invalidate issued by the driver's invalidate callback) pairs with
/// <c>_inAccess</c> exactly like the CPU's software TLB: the unit stores its in-access marker, then reads the
/// context's TLB generation; the invalidator bumps the generation, runs a process-wide barrier and waits until
/// every unit's marker is clear. Either the unit's marker is visible (the invalidator waits for the access to finish)
/// or the unit reads the new generation (its older entries miss and it walks the already-zapped page table). So no
/// access uses a translation after the invalidation that removed it returned.</para>
/// <para>Locking: the TLB is private to the unit's thread; <c>_inAccess</c> is written by it and read by
/// invalidators; <c>_launch</c> is handed over under <c>_gate</c>.</para>
/// </remarks>
internal sealed unsafe class ExecutionUnit
{
    [StructLayout(LayoutKind.Sequential)]
    private struct TlbEntry
    {
        public ulong Tag;        // virtual page number + 1 (0 = empty)
        public long Gen;         // context TLB generation at fill time
        public byte* Host;       // host address of the 4 KiB page
        public ulong Pfn;        // the frame (stale-translation check)
        public uint FrameGen;    // the frame's generation at fill time (stale-translation check)
        public int Remote;       // system-memory translation: remote accesses are counted (access counters)
        public int Accesses;     // remote accesses since the last notification
        public byte Perm;        // 1 = read, 2 = write, 4 = atomic
    }

    private readonly GpuDevice _device;
    private readonly TlbEntry[] _tlb;              // owner thread only
    private readonly int _tlbMask;
    private readonly Thread _thread;
    private readonly object _gate = new();
    private GpuLaunch? _launch;                   // guarded by _gate while handed over; then read by the owner thread
    private GpuContext? _context;                 // owner thread: the running launch's context
    private int _inAccess;                        // see remarks
    private bool _stop;                           // guarded by _gate

    public ExecutionUnit(GpuDevice device, int id)
    {
        _device = device;
        Id = id;
        _tlb = new TlbEntry[device.Options.TlbEntries];
        _tlbMask = device.Options.TlbEntries - 1;
        _thread = new Thread(Run) { IsBackground = true, Name = $"{device.Options.Name}-eu{id}" };
        _thread.Start();
    }

    public int Id { get; }

    /// <summary>TLB misses (page-table walks) taken by this unit.</summary>
    public long TlbMisses;

    public void Start(GpuLaunch launch)
    {
        lock (_gate)
        {
            _launch = launch;
            Monitor.Pulse(_gate);
        }
    }

    public void Stop()
    {
        lock (_gate)
        {
            _stop = true;
            Monitor.Pulse(_gate);
        }
        _thread.Join();
    }

    /// <summary>Waits until this unit is not in the middle of an access (TLB shootdown side).</summary>
    public void WaitForQuiescence()
    {
        var spin = new SpinWait();
        while (Volatile.Read(ref _inAccess) != 0)
        {
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    private void Run()
    {
        while (true)
        {
            GpuLaunch? launch;
            lock (_gate)
            {
                while (_launch is null && !_stop)
                {
                    Monitor.Wait(_gate);
                }
                if (_stop)
                {
                    return;
                }
                launch = _launch;
                _launch = null;
            }
            RunLaunch(launch!);
        }
    }

    private void RunLaunch(GpuLaunch launch)
    {
        _context = launch.Context;
        Array.Clear(_tlb); // new launch: entries of another context must not hit
        try
        {
            int warp = _device.Options.WarpSize;
            while (!launch.Aborted)
            {
                long w = Interlocked.Increment(ref launch.NextWarp) - 1;
                if (w >= launch.TotalWarps)
                {
                    break;
                }
                int block = (int)(w / launch.WarpsPerBlock);
                int first = (int)(w % launch.WarpsPerBlock) * warp;
                int last = Math.Min(first + warp, launch.BlockDim);
                for (int t = first; t < last; t++)
                {
                    launch.Kernel(new GpuThread(this, block, t, launch.BlockDim, launch.GridDim));
                }
            }
        }
        catch (GpuWarpAbort)
        {
            // the launch already carries its error
        }
        catch (GpuLaunchException e)
        {
            launch.Fail(e);
        }
        catch (Exception e)
        {
            launch.Fail(new GpuLaunchException(Errno.EIO, 0, GpuAccess.Read, Id, $"a kernel thread on unit {Id} threw: {e.Message}", e));
        }
        finally
        {
            Volatile.Write(ref _inAccess, 0);
            _context = null;
            launch.Done.Signal();
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void EndAccess() => Volatile.Write(ref _inAccess, 0);

    /// <summary>Translates a load or store of <paramref name="size"/> bytes; returns with the in-access marker set.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public byte* Translate(ulong va, GpuAccess access, int size)
    {
        if ((va & Page.OffsetMask) + (ulong)size > Page.Size)
        {
            ThrowMisaligned(va, access, size);
        }
        Volatile.Write(ref _inAccess, 1);
        long gen = _context!.TlbGeneration;
        ulong tag = (va >> Page.Shift) + 1;
        ref TlbEntry e = ref _tlb[(int)(tag & (ulong)_tlbMask)];
        byte need = access == GpuAccess.Write ? (byte)2 : (byte)1;
        if (e.Tag == tag && e.Gen == gen && (e.Perm & need) != 0 && e.Remote == 0 && !_device.CheckingStale)
        {
            return e.Host + (va & Page.OffsetMask);
        }
        return TranslateSlow(va, access, gen, ref e);
    }

    /// <summary>Translates an atomic of <paramref name="size"/> bytes (must be naturally aligned).</summary>
    public byte* TranslateAtomic(ulong va, int size)
    {
        if ((va & (ulong)(size - 1)) != 0)
        {
            ThrowMisaligned(va, GpuAccess.Atomic, size);
        }
        Volatile.Write(ref _inAccess, 1);
        long gen = _context!.TlbGeneration;
        ulong tag = (va >> Page.Shift) + 1;
        ref TlbEntry e = ref _tlb[(int)(tag & (ulong)_tlbMask)];
        if (e.Tag == tag && e.Gen == gen && (e.Perm & 4) != 0 && e.Remote == 0 && !_device.CheckingStale)
        {
            return e.Host + (va & Page.OffsetMask);
        }
        return TranslateSlow(va, GpuAccess.Atomic, gen, ref e);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ThrowMisaligned(ulong va, GpuAccess access, int size)
        => throw new GpuLaunchException(Errno.EINVAL, va, access, Id, $"misaligned {size}-byte {access} at 0x{va:x} on unit {Id}");

    private byte* TranslateSlow(ulong va, GpuAccess access, long gen, ref TlbEntry e)
    {
        GpuContext ctx = _context!;
        ulong tag = (va >> Page.Shift) + 1;
        byte need = access switch { GpuAccess.Write => 2, GpuAccess.Atomic => 4, _ => 1 };
        if (e.Tag == tag && e.Gen == gen && (e.Perm & need) != 0)
        {
            // A hit that needs bookkeeping: access counting on a remote page, or the stale-translation check.
            if (_device.CheckingStale && _device.Memory.Frame(e.Pfn).Generation != e.FrameGen)
            {
                _device.Counters.Inc(GpuCounter.StaleTranslations);
            }
            if (e.Remote != 0 && ++e.Accesses >= _device.Options.AccessCounterThreshold)
            {
                e.Accesses = 0;
                _device.NotifyAccessCounter(ctx, va);
            }
            return e.Host + (va & Page.OffsetMask);
        }
        while (true)
        {
            TlbMisses++;
            ulong pte = ctx.PageTable.Lookup(va);
            if (GpuPte.Permits(pte, access))
            {
                ulong pfn = GpuPte.PfnAt(pte, va);
                byte* host = _device.Memory.Address(pfn);
                Debug.Assert(host != null, "GPU entries point at memory with host backing");
                e.Tag = tag;
                e.Gen = gen;
                e.Host = host;
                e.Pfn = pfn;
                e.FrameGen = _device.CheckingStale ? _device.Memory.Frame(pfn).Generation : 0;
                e.Remote = (pte & GpuPte.Vram) == 0 && _device.Options.Placement == PlacementPolicy.AccessCounters ? 1 : 0;
                e.Accesses = 0;
                e.Perm = (byte)(1 | ((pte & GpuPte.Write) != 0 ? 2 : 0) | ((pte & GpuPte.Atomic) != 0 ? 4 : 0));
                return host + (va & Page.OffsetMask);
            }
            Volatile.Write(ref _inAccess, 0);
            _device.RaiseFaultAndWait(this, ctx, va, access);
            Volatile.Write(ref _inAccess, 1);
            gen = ctx.TlbGeneration;
        }
    }

    /// <summary>A prefetch hint: records a prefetch fault for an unmapped page without stalling.</summary>
    public void PrefetchHint(ulong va)
    {
        GpuContext ctx = _context!;
        if (ctx.PageTable.Lookup(va) == 0)
        {
            _device.RaisePrefetchFault(this, ctx, va);
        }
    }
}
