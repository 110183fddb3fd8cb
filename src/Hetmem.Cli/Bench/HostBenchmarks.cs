using System.Diagnostics;
using System.Runtime.InteropServices;
using Hetmem.Physical;

namespace Hetmem.Cli.Bench;

/// <summary>
/// The host-kernel half of <c>hetmem bench</c>: the same operations on real host mappings through libc, so Hetmem's
/// numbers are read side by side with the kernel's on the same machine in the same run. Anonymous mappings are
/// marked <c>MADV_NOHUGEPAGE</c> so every figure is per 4 KiB page.
/// </summary>
public static unsafe class HostBenchmarks
{
    /// <summary>Registers the six host measurements.</summary>
    public static void Register(BenchRegistry r)
    {
        ArgumentNullException.ThrowIfNull(r);
        r.Add(BenchKeys.HostPopulateRead, PopulateReadNs, "host madvise(MADV_POPULATE_READ), ns/page");
        r.Add(BenchKeys.HostPopulateWrite, PopulateWriteNs, "host madvise(MADV_POPULATE_WRITE), ns/page");
        r.Add(BenchKeys.HostMunmap, MunmapNs, "host munmap of populated memory, ns/page");
        r.Add(BenchKeys.HostMprotect, MprotectNs, "host mprotect(PROT_READ) of populated memory, ns/page");
        r.Add(BenchKeys.NativeRead, NativeReadNs, "native dependent 8-byte load (cache hit), ns");
        r.Add(NativeReadBest, NativeReadBestNs, "the native_read_ns chain, best of 100 (300) runs of 2^18 loads, ns");
        r.Add(BenchKeys.MemcpyGbps, MemcpyGbps, "libc memcpy bandwidth, GB/s");
    }

    /// <summary><c>madvise(MADV_POPULATE_READ)</c> over fresh anonymous memory (maps the zero page), ns a page.</summary>
    /// <exception cref="BenchUnavailableException">When the kernel lacks MADV_POPULATE_READ (before 5.14).</exception>
    public static double PopulateReadNs(BenchOptions o) => o.Median(() =>
    {
        using var m = new HostMapping(o.Pages);
        return BenchOptions.NsPer(o.Pages, () => m.Populate(HostLibc.MadvPopulateRead));
    });

    /// <summary><c>madvise(MADV_POPULATE_WRITE)</c> over fresh anonymous memory (allocate and zero), ns a page.</summary>
    /// <exception cref="BenchUnavailableException">When the kernel lacks MADV_POPULATE_WRITE (before 5.14).</exception>
    public static double PopulateWriteNs(BenchOptions o) => o.Median(() =>
    {
        using var m = new HostMapping(o.Pages);
        return BenchOptions.NsPer(o.Pages, () => m.Populate(HostLibc.MadvPopulateWrite));
    });

    /// <summary><c>munmap</c> of populated anonymous memory, ns a page.</summary>
    public static double MunmapNs(BenchOptions o) => o.Median(() =>
    {
        var m = new HostMapping(o.Pages);
        m.Touch();
        return BenchOptions.NsPer(o.Pages, m.Dispose);
    });

    /// <summary><c>mprotect(PROT_READ)</c> of populated anonymous memory, ns a page.</summary>
    public static double MprotectNs(BenchOptions o) => o.Median(() =>
    {
        using var m = new HostMapping(o.Pages);
        m.Touch();
        return BenchOptions.NsPer(o.Pages, () => m.Protect(HostLibc.ProtRead));
    });

    /// <summary>A chain of dependent 8-byte loads through a 16 KiB buffer (cache and TLB hits), ns a load.</summary>
    public static double NativeReadNs(BenchOptions o)
    {
        const int Slots = 16 * 1024 / sizeof(ulong);
        ulong* buf = (ulong*)NativeMemory.AlignedAlloc(Slots * sizeof(ulong), 64);
        try
        {
            // One random cycle through every slot, so the loads depend on each other and prefetching cannot help.
            int[] order = Enumerable.Range(0, Slots).ToArray();
            new Random(o.Seed).Shuffle(order.AsSpan(1));
            for (int i = 0; i < Slots; i++)
            {
                buf[order[i]] = (ulong)order[(i + 1) % Slots];
            }
            int loads = o.Quick ? 1 << 22 : 1 << 24;
            ulong sink = 0;
            double ns = o.Median(() => BenchOptions.NsPer(loads, () =>
            {
                ulong idx = 0;
                for (int i = 0; i < loads; i++)
                {
                    idx = buf[idx];
                }
                sink += idx;
            }));
            GC.KeepAlive(sink);
            return ns;
        }
        finally
        {
            NativeMemory.AlignedFree(buf);
        }
    }

    /// <summary>Table-only: the <c>native_read_ns</c> chain, best of many short runs (pairs with <c>tlb_hit_best_ns</c>).</summary>
    public const string NativeReadBest = "native_read_best_ns";

    /// <summary>The dependent-load chain of <see cref="NativeReadNs"/>, best of many short runs, ns a load.</summary>
    public static double NativeReadBestNs(BenchOptions o)
    {
        ArgumentNullException.ThrowIfNull(o);
        const int Slots = 16 * 1024 / sizeof(ulong);
        const int Loads = 1 << 18;
        ulong* buf = (ulong*)NativeMemory.AlignedAlloc(Slots * sizeof(ulong), 64);
        try
        {
            int[] order = Enumerable.Range(0, Slots).ToArray();
            new Random(o.Seed).Shuffle(order.AsSpan(1));
            for (int i = 0; i < Slots; i++)
            {
                buf[order[i]] = (ulong)order[(i + 1) % Slots];
            }
            ulong sink = 0;
            double ns = o.Best(() => BenchOptions.NsPer(Loads, () =>
            {
                ulong idx = 0;
                for (int i = 0; i < Loads; i++)
                {
                    idx = buf[idx];
                }
                sink += idx;
            }), o.Quick ? 100 : 300);
            GC.KeepAlive(sink);
            return ns;
        }
        finally
        {
            NativeMemory.AlignedFree(buf);
        }
    }

    /// <summary>libc <c>memcpy</c> between two warm native buffers (32 MiB quick, 128 MiB full), GB/s.</summary>
    public static double MemcpyGbps(BenchOptions o)
    {
        nuint bytes = (nuint)(o.Quick ? 32 << 20 : 128 << 20);
        byte* src = (byte*)NativeMemory.AlignedAlloc(bytes, (nuint)Page.Size);
        byte* dst = (byte*)NativeMemory.AlignedAlloc(bytes, (nuint)Page.Size);
        try
        {
            new Random(o.Seed).NextBytes(new Span<byte>(src, (int)Math.Min(bytes, int.MaxValue)));
            NativeMemory.Clear(dst, bytes);
            return o.Median(() =>
            {
                long t0 = Stopwatch.GetTimestamp();
                HostLibc.Memcpy(dst, src, bytes);
                double s = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                return bytes / s / 1e9;
            });
        }
        finally
        {
            NativeMemory.AlignedFree(src);
            NativeMemory.AlignedFree(dst);
        }
    }

    /// <summary>An anonymous private host mapping of whole 4 KiB pages, unmapped on dispose.</summary>
    private sealed class HostMapping : IDisposable
    {
        private readonly nuint _length;
        private nint _addr;

        public HostMapping(int pages)
        {
            _length = (nuint)pages * Page.Size;
            _addr = HostLibc.Mmap(0, _length, HostLibc.ProtRead | HostLibc.ProtWrite, HostLibc.MapPrivate | HostLibc.MapAnonymous, -1, 0);
            if (_addr == HostLibc.MapFailed)
            {
                throw new MmException((Errno)HostLibc.LastError(), $"host mmap of {_length} bytes failed");
            }
            HostLibc.Madvise(_addr, _length, HostLibc.MadvNoHugePage); // best effort: 4 KiB pages only
        }

        public void Populate(int advice)
        {
            if (HostLibc.Madvise(_addr, _length, advice) != 0)
            {
                int err = HostLibc.LastError();
                if (err == HostLibc.EInval)
                {
                    throw new BenchUnavailableException($"the host kernel lacks madvise advice {advice} (needs Linux 5.14)");
                }
                throw new MmException((Errno)err, $"host madvise({advice}) failed");
            }
        }

        public void Touch()
        {
            byte* p = (byte*)_addr;
            for (nuint off = 0; off < _length; off += Page.Size)
            {
                p[off] = 1;
            }
        }

        public void Protect(int prot)
        {
            if (HostLibc.Mprotect(_addr, _length, prot) != 0)
            {
                throw new MmException((Errno)HostLibc.LastError(), "host mprotect failed");
            }
        }

        public void Dispose()
        {
            if (_addr != 0)
            {
                HostLibc.Munmap(_addr, _length);
                _addr = 0;
            }
        }
    }
}
