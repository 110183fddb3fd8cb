using System.Diagnostics;
using Hetmem.Cli.Devices;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Cli.Workloads.Scenario;

/// <summary>
/// munmap, mmap, mprotect and MADV_DONTNEED on CPU threads racing device fault loops over the same anonymous range
/// (kernel: what hmm-tests' "anon_teardown"/"mixedmap" races and SVM drivers live with). Every page's first word
/// only ever holds a tag naming that page (or 0), so a device or CPU that read through a stale translation into a
/// recycled frame would see another page's tag; and the device page tables are compared with the CPU page tables
/// under the device lock (a valid device entry must map the CPU's current frame, a writable one only a writable
/// CPU entry).
/// </summary>
internal static class MirrorRace
{
    /// <summary>What a race run did and found.</summary>
    public sealed class Outcome
    {
        public long CpuWrites;
        public long CpuReads;
        public long CpuSignals;
        public long Mprotects;
        public long Remaps;
        public long DontNeeds;
        public long Forks;
        public long PageOuts;
        public long DeviceFaults;
        public long DeviceFaultErrors;
        public long DeviceReads;
        public long DeviceWrites;
        public long InvariantChecks;
        public string? Violation;
        public string? Error;
        public TimeSpan Elapsed;

        public long CpuOps => CpuWrites + CpuReads + Mprotects + Remaps + DontNeeds + Forks + PageOuts;

        public long DeviceOps => DeviceFaults + DeviceReads + DeviceWrites;
    }

    /// <summary>The tag page <paramref name="page"/>'s first word may hold.</summary>
    public static long Tag(ulong page, uint seq) => (long)((page << 32) | seq);

    private static bool TagOk(long v, ulong page) => v == 0 || (ulong)v >> 32 == page;

    /// <summary>
    /// Runs the race over [<paramref name="start"/>, +<paramref name="pages"/> pages) of <paramref name="mm"/>, which must be
    /// an anonymous read-write mapping mirrored by <paramref name="devices"/>, for <paramref name="duration"/>.
    /// </summary>
    /// <remarks>With <paramref name="extraOps"/> the CPU threads also fork (the child checks a page and exits) and, when the
    /// space has swap, MADV_PAGEOUT chunks.</remarks>
    public static Outcome Run(AddressSpace mm, ulong start, ulong pages, IReadOnlyList<MiniMirror> devices, int cpuThreads,
        TimeSpan duration, int seed, CancellationToken cancellation, Action<double>? progress = null, bool extraOps = false)
    {
        var o = new Outcome();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        var sw = Stopwatch.StartNew();
        var threads = new List<Thread>();
        void Fail(string what, bool violation)
        {
            if (violation)
            {
                Interlocked.CompareExchange(ref o.Violation, what, null);
            }
            else
            {
                Interlocked.CompareExchange(ref o.Error, what, null);
            }
            stop.Cancel();
        }

        for (int t = 0; t < cpuThreads; t++)
        {
            int id = t;
            threads.Add(new Thread(() => CpuLoop(mm, start, pages, id, seed, extraOps, o, stop.Token, Fail)) { IsBackground = true, Name = $"race-cpu{id}" });
        }
        for (int d = 0; d < devices.Count; d++)
        {
            MiniMirror dev = devices[d];
            int id = d;
            threads.Add(new Thread(() => DeviceLoop(dev, start, pages, seed * 31 + id, o, stop.Token, Fail)) { IsBackground = true, Name = $"race-{dev.Name}" });
        }
        foreach (Thread th in threads)
        {
            th.Start();
        }
        while (!stop.Token.WaitHandle.WaitOne(50))
        {
            progress?.Invoke(Math.Min(1, sw.Elapsed / duration));
            if (sw.Elapsed >= duration)
            {
                stop.Cancel();
            }
        }
        foreach (Thread th in threads)
        {
            th.Join();
        }
        o.Elapsed = sw.Elapsed;
        if (o.Violation is null && o.Error is null)
        {
            foreach (MiniMirror dev in devices)
            {
                string? v = dev.CheckAgainstCpu(start, start + (pages << Page.Shift));
                o.InvariantChecks++;
                if (v is not null)
                {
                    o.Violation = "after the race: " + v;
                    break;
                }
            }
        }
        cancellation.ThrowIfCancellationRequested();
        return o;
    }

    private static void CpuLoop(AddressSpace mm, ulong start, ulong pages, int id, int seed, bool extraOps, Outcome o, CancellationToken stop,
        Action<string, bool> fail)
    {
        TraceLog.SetThreadTrack($"cpu{id}");
        var rng = new Random(seed * 7919 + id);
        uint seq = 0;
        try
        {
            using var cpu = new Cpu(mm);
            while (!stop.IsCancellationRequested)
            {
                int op = rng.Next(extraOps ? 104 : 100);
                ulong p = (ulong)rng.NextInt64((long)pages);
                ulong va = start + (p << Page.Shift);
                ulong chunk = (ulong)rng.Next(1, 33);
                ulong c0 = Math.Min(p, pages - chunk);
                ulong cva = start + (c0 << Page.Shift), clen = chunk << Page.Shift;
                try
                {
                    if (op < 55)
                    {
                        CpuThreads.Write(cpu, va, Tag(p, ++seq), VmaKind.Anonymous);
                        Interlocked.Increment(ref o.CpuWrites);
                    }
                    else if (op < 75)
                    {
                        long v = CpuThreads.Read(cpu, va, VmaKind.Anonymous);
                        Interlocked.Increment(ref o.CpuReads);
                        if (!TagOk(v, p))
                        {
                            fail($"cpu{id} read 0x{v:x} at page {p}: another page's data", true);
                        }
                    }
                    else if (op < 88)
                    {
                        mm.Mprotect(cva, clen, rng.Next(2) == 0 ? Prot.Read : Prot.Read | Prot.Write);
                        Interlocked.Increment(ref o.Mprotects);
                    }
                    else if (op < 95)
                    {
                        mm.Munmap(cva, clen);
                        mm.Mmap(cva, clen, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
                        Interlocked.Increment(ref o.Remaps);
                    }
                    else if (op < 100)
                    {
                        mm.Madvise(cva, clen, Advice.DontNeed);
                        Interlocked.Increment(ref o.DontNeeds);
                    }
                    else if (op < 102 && mm.Swap is not null)
                    {
                        mm.Madvise(cva, clen, Advice.PageOut);
                        Interlocked.Increment(ref o.PageOuts);
                    }
                    else
                    {
                        AddressSpace child = mm.Fork();
                        try
                        {
                            using var cc = new Cpu(child);
                            long v = cc.Read<long>(va);
                            if (!TagOk(v, p))
                            {
                                fail($"a child forked by cpu{id} read 0x{v:x} at page {p}: another page's data", true);
                            }
                            cc.Write(va, Tag(p, ++seq));
                        }
                        catch (SegmentationFault)
                        {
                            Interlocked.Increment(ref o.CpuSignals);
                        }
                        finally
                        {
                            child.Exit();
                        }
                        Interlocked.Increment(ref o.Forks);
                    }
                }
                catch (SegmentationFault)
                {
                    Interlocked.Increment(ref o.CpuSignals); // read-only or momentarily unmapped: expected in a race
                }
                catch (MmException ex) when (ex.Errno == Errno.ENOMEM)
                {
                    // mprotect/madvise over a hole another thread just punched: the kernel's answer too
                }
            }
        }
        catch (Exception ex)
        {
            fail($"cpu{id}: {ex.GetType().Name}: {ex.Message}", false);
        }
    }

    private static void DeviceLoop(MiniMirror dev, ulong start, ulong pages, int seed, Outcome o, CancellationToken stop, Action<string, bool> fail)
    {
        TraceLog.SetThreadTrack(dev.Name + "-fault-worker", "devices");
        var rng = new Random(seed);
        uint seq = 1u << 31;
        try
        {
            for (long i = 0; !stop.IsCancellationRequested; i++)
            {
                ulong chunk = (ulong)rng.Next(1, 65);
                ulong p0 = (ulong)rng.NextInt64((long)(pages - chunk + 1));
                ulong a = start + (p0 << Page.Shift), e = a + (chunk << Page.Shift);
                bool write = rng.Next(3) == 0;
                Errno r = dev.Fault(a, e, write);
                if (r == Errno.Ok)
                {
                    Interlocked.Increment(ref o.DeviceFaults);
                }
                else if (r is Errno.EFAULT or Errno.EPERM or Errno.EBUSY)
                {
                    Interlocked.Increment(ref o.DeviceFaultErrors); // a hole or a read-only chunk: the kernel's answers
                }
                else
                {
                    fail($"{dev.Name} fault of [0x{a:x}, 0x{e:x}) returned {r}", false);
                    return;
                }
                for (int k = 0; k < 4; k++)
                {
                    ulong p = p0 + (ulong)rng.NextInt64((long)chunk);
                    ulong va = start + (p << Page.Shift);
                    if (rng.Next(4) == 0)
                    {
                        if (dev.WriteInt64(va, Tag(p, ++seq)) == Errno.Ok)
                        {
                            Interlocked.Increment(ref o.DeviceWrites);
                        }
                    }
                    else if (dev.ReadInt64(va, out long v) == Errno.Ok)
                    {
                        Interlocked.Increment(ref o.DeviceReads);
                        if (!TagOk(v, p))
                        {
                            fail($"{dev.Name} read 0x{v:x} at page {p}: another page's data (stale translation)", true);
                            return;
                        }
                    }
                }
                if (i % 16 == 0)
                {
                    string? v = dev.CheckAgainstCpu(a, e);
                    Interlocked.Increment(ref o.InvariantChecks);
                    if (v is not null)
                    {
                        fail(v, true);
                        return;
                    }
                }
            }
        }
        catch (Exception ex)
        {
            fail($"{dev.Name}: {ex.GetType().Name}: {ex.Message}", false);
        }
    }
}
