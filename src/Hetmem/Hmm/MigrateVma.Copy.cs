using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Hetmem.Physical;

namespace Hetmem.Hmm;

/// <summary>
/// The data mover of a migration: copies or zeroes whole 4 KiB frames between RAM and device memory the way a copy
/// engine (or the kernel's copy_highpage / clear_highpage in a driver's alloc-and-copy step) does, with streaming
/// stores that do not pull the destination into the cache.
/// </summary>
/// <remarks>
/// <para>Why streaming stores: a migration writes every destination byte once and does not read it back soon; an
/// ordinary store first reads the destination line (read-for-ownership), so a page copy moves 12 KiB across the memory
/// bus for 4 KiB of data, a streaming store 8 KiB. On AVX2 hardware the frames are copied 128 bytes per step with
/// aligned loads and non-temporal stores, and one store fence ends each call so the data is globally visible before
/// the caller publishes the destination (page-table entry, device mapping). Elsewhere, or for frames that are not
/// 32-byte aligned, the copy falls back to <c>Buffer.MemoryCopy</c>.</para>
/// <para>No allocation, no lock; the caller owns both sides (destination locked, source locked or behind a migration
/// entry).</para>
/// </remarks>
public static unsafe class MigrateCopy
{
    /// <summary>
    /// Copies <paramref name="count"/> frames from <paramref name="srcPfn"/> to <paramref name="dstPfn"/> (kernel:
    /// copy_highpage per page, or a driver's DMA copy). Both runs must be contiguous in their arenas (a compound page,
    /// or consecutive frames of one map).
    /// </summary>
    /// <exception cref="ArgumentException">A frame without CPU-addressable memory (device-private without a host arena).</exception>
    public static void CopyPages(PhysicalMemory memory, ulong dstPfn, ulong srcPfn, ulong count = 1)
    {
        ArgumentNullException.ThrowIfNull(memory);
        byte* s = memory.Address(srcPfn);
        byte* d = memory.Address(dstPfn);
        if (s == null || d == null)
        {
            throw new ArgumentException($"frame 0x{(s == null ? srcPfn : dstPfn):x} has no CPU-addressable memory");
        }
        Copy(d, s, count << Page.Shift);
    }

    /// <summary>Zeroes <paramref name="count"/> frames from <paramref name="pfn"/> (kernel: clear_highpage) with streaming stores.</summary>
    /// <exception cref="ArgumentException">A frame without CPU-addressable memory.</exception>
    public static void ZeroPages(PhysicalMemory memory, ulong pfn, ulong count = 1)
    {
        ArgumentNullException.ThrowIfNull(memory);
        byte* d = memory.Address(pfn);
        if (d == null)
        {
            throw new ArgumentException($"frame 0x{pfn:x} has no CPU-addressable memory");
        }
        Zero(d, count << Page.Shift);
    }

    /// <summary>Copies <paramref name="bytes"/> (a multiple of 128) from <paramref name="s"/> to <paramref name="d"/>, streaming when both are 32-byte aligned.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Copy(byte* d, byte* s, ulong bytes)
    {
        if (!Avx.IsSupported || (((nuint)s | (nuint)d) & 31) != 0 || (bytes & 127) != 0)
        {
            Buffer.MemoryCopy(s, d, (long)bytes, (long)bytes);
            return;
        }
        byte* end = s + bytes;
        for (; s < end; s += 128, d += 128)
        {
            Vector256<byte> a0 = Avx.LoadAlignedVector256(s);
            Vector256<byte> a1 = Avx.LoadAlignedVector256(s + 32);
            Vector256<byte> a2 = Avx.LoadAlignedVector256(s + 64);
            Vector256<byte> a3 = Avx.LoadAlignedVector256(s + 96);
            Avx.StoreAlignedNonTemporal(d, a0);
            Avx.StoreAlignedNonTemporal(d + 32, a1);
            Avx.StoreAlignedNonTemporal(d + 64, a2);
            Avx.StoreAlignedNonTemporal(d + 96, a3);
        }
        Sse.StoreFence();
    }

    /// <summary>Zeroes <paramref name="bytes"/> (a multiple of 128) at <paramref name="d"/>, streaming when 32-byte aligned.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Zero(byte* d, ulong bytes)
    {
        if (!Avx.IsSupported || ((nuint)d & 31) != 0 || (bytes & 127) != 0)
        {
            System.Runtime.InteropServices.NativeMemory.Clear(d, (nuint)bytes);
            return;
        }
        byte* end = d + bytes;
        Vector256<byte> z = Vector256<byte>.Zero;
        for (; d < end; d += 128)
        {
            Avx.StoreAlignedNonTemporal(d, z);
            Avx.StoreAlignedNonTemporal(d + 32, z);
            Avx.StoreAlignedNonTemporal(d + 64, z);
            Avx.StoreAlignedNonTemporal(d + 96, z);
        }
        Sse.StoreFence();
    }
}
