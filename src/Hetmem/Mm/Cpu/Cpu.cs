using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Mm;

/// <summary>
/// A CPU running in one address space: loads, stores and atomics on virtual addresses through a software
/// TLB, with page faults handled by the address space (kernel: the MMU plus do_user_addr_fault). Use one
/// Cpu per thread.
/// </summary>
/// <remarks>
/// <para>The TLB is direct-mapped, 512 entries, tagged with the virtual page and the space's TLB generation.
/// A hit costs a generation read, a tag compare and the access itself; a miss walks the page tables
/// lock-free (tables are not freed while a Cpu may walk them) and falls back to the fault handler.</para>
/// <para>Locking: <c>_inAccess</c> is written only by the owning thread and read by shooters (see
/// <see cref="AddressSpace.FlushTlb"/>); the TLB array is private to the owning thread.</para>
/// </remarks>
public sealed unsafe class Cpu : IDisposable
{
    private const int TlbBits = 9;
    private const int TlbSize = 1 << TlbBits;

    [StructLayout(LayoutKind.Sequential)]
    private struct TlbEntry
    {
        public ulong Vpn;        // virtual page number + 1 (0 = empty)
        public long Gen;         // TLB generation at fill time
        public byte* Host;       // host address of the page
        public bool Writable;    // write permitted (PTE writable and dirty)
    }

    private readonly TlbEntry[] _tlb = new TlbEntry[TlbSize];   // owner thread only
    private int _inAccess;                                       // 1 while between the marker store and the end of an access
    private bool _disposed;

    /// <summary>Creates a Cpu attached to <paramref name="space"/>.</summary>
    public Cpu(AddressSpace space)
    {
        Space = space;
        space.AttachCpu(this);
    }

    /// <summary>The address space this Cpu runs in.</summary>
    public AddressSpace Space { get; }

    /// <summary>TLB misses taken by this Cpu.</summary>
    public long TlbMisses { get; private set; }

    internal void WaitForQuiescence()
    {
        var spin = new SpinWait();
        while (Volatile.Read(ref _inAccess) != 0)
        {
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private byte* Translate(ulong va, bool write)
    {
        ulong vpn = (va >> Page.Shift) + 1;
        ref TlbEntry e = ref _tlb[(int)(vpn & (TlbSize - 1))];
        if (e.Vpn == vpn && e.Gen == Space.TlbGeneration && (e.Writable || !write))
        {
            return e.Host + (va & Page.OffsetMask);
        }
        return null;
    }

    /// <summary>Reads a value (kernel: a user load). Accesses crossing a page boundary are split.</summary>
    /// <exception cref="SegmentationFault">Unmapped address or no read permission.</exception>
    /// <exception cref="BusError">Beyond end of file or truncated DAX.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public T Read<T>(ulong va) where T : unmanaged
    {
        Volatile.Write(ref _inAccess, 1);
        if ((va & Page.OffsetMask) <= (ulong)(Page.Size - sizeof(T)))
        {
            byte* p = Translate(va, false);
            if (p != null)
            {
                T v = Unsafe.ReadUnaligned<T>(p);
                Volatile.Write(ref _inAccess, 0);
                return v;
            }
        }
        Volatile.Write(ref _inAccess, 0);
        return ReadSlow<T>(va);
    }

    /// <summary>Writes a value (kernel: a user store).</summary>
    /// <exception cref="SegmentationFault">Unmapped address or no write permission.</exception>
    /// <exception cref="BusError">Beyond end of file or truncated DAX.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Write<T>(ulong va, T value) where T : unmanaged
    {
        Volatile.Write(ref _inAccess, 1);
        if ((va & Page.OffsetMask) <= (ulong)(Page.Size - sizeof(T)))
        {
            byte* p = Translate(va, true);
            if (p != null)
            {
                Unsafe.WriteUnaligned(p, value);
                Volatile.Write(ref _inAccess, 0);
                return;
            }
        }
        Volatile.Write(ref _inAccess, 0);
        WriteSlow(va, value);
    }

    private T ReadSlow<T>(ulong va) where T : unmanaged
    {
        T v = default;
        Read(va, new Span<byte>(&v, sizeof(T)));
        return v;
    }

    private void WriteSlow<T>(ulong va, T value) where T : unmanaged => Write(va, new ReadOnlySpan<byte>(&value, sizeof(T)));

    /// <summary>Copies <paramref name="destination"/>.Length bytes from virtual memory (kernel: copy_from_user).</summary>
    /// <exception cref="SegmentationFault">Unmapped address or no read permission.</exception>
    /// <exception cref="BusError">Beyond end of file or truncated DAX.</exception>
    public void Read(ulong va, Span<byte> destination) => Copy(va, destination, default, write: false);

    /// <summary>Copies <paramref name="source"/> into virtual memory (kernel: copy_to_user).</summary>
    /// <exception cref="SegmentationFault">Unmapped address or no write permission.</exception>
    /// <exception cref="BusError">Beyond end of file or truncated DAX.</exception>
    public void Write(ulong va, ReadOnlySpan<byte> source) => Copy(va, default, source, write: true);

    /// <summary>Fills <paramref name="length"/> bytes with <paramref name="value"/> (memset).</summary>
    public void Fill(ulong va, ulong length, byte value)
    {
        while (length > 0)
        {
            int chunk = (int)Math.Min(length, (ulong)Page.Size - (va & Page.OffsetMask));
            Volatile.Write(ref _inAccess, 1);
            byte* p = TranslateOrFill(va, true);
            if (p == null)
            {
                continue;
            }
            new Span<byte>(p, chunk).Fill(value);
            Volatile.Write(ref _inAccess, 0);
            va += (ulong)chunk;
            length -= (ulong)chunk;
        }
    }

    private void Copy(ulong va, Span<byte> dst, ReadOnlySpan<byte> src, bool write)
    {
        int total = write ? src.Length : dst.Length;
        int done = 0;
        while (done < total)
        {
            ulong a = va + (ulong)done;
            int chunk = Math.Min(total - done, Page.Size - (int)(a & Page.OffsetMask));
            Volatile.Write(ref _inAccess, 1);
            byte* p = TranslateOrFill(a, write);
            if (p == null)
            {
                continue; // faulted (marker already cleared); retry this page
            }
            if (write)
            {
                src.Slice(done, chunk).CopyTo(new Span<byte>(p, chunk));
            }
            else
            {
                new ReadOnlySpan<byte>(p, chunk).CopyTo(dst.Slice(done, chunk));
            }
            Volatile.Write(ref _inAccess, 0);
            done += chunk;
        }
    }

    /// <summary>
    /// With the access marker set: returns the host address, filling the TLB from the page tables when needed.
    /// Returns null after clearing the marker and resolving a fault; the caller retries.
    /// </summary>
    private byte* TranslateOrFill(ulong va, bool write)
    {
        byte* p = Translate(va, write);
        if (p != null)
        {
            return p;
        }
        if (Fill(va, write))
        {
            return Translate(va, write);
        }
        Volatile.Write(ref _inAccess, 0);
        Space.HandleCpuFault(va, write);
        return null;
    }

    /// <summary>Walks the page tables (marker set) and fills the TLB entry; false when a fault is needed.</summary>
    private bool Fill(ulong va, bool write)
    {
        TlbMisses++;
        Counters.Inc(Counter.TlbMiss);
        long gen = Space.TlbGeneration;
        Pte e = Space.Lookup(va, out int order, out ulong* slot);
        if (!e.IsPresent || e.IsSpecial && Space.Memory.Address(e.Pfn) == null)
        {
            return false;
        }
        bool writable = e.IsWritable;
        if (write)
        {
            if (!writable)
            {
                return false;
            }
            if (!e.IsDirty && Interlocked.CompareExchange(ref *slot, e.Value | Pte.Dirty | Pte.Accessed, e.Value) != e.Value)
            {
                return false;
            }
        }
        ulong sub = order == 0 ? 0 : (va >> Page.Shift) & ((1UL << order) - 1);
        byte* host = Space.Memory.Address(e.Pfn + sub);
        if (host == null)
        {
            return false;
        }
        ulong vpn = (va >> Page.Shift) + 1;
        ref TlbEntry t = ref _tlb[(int)(vpn & (TlbSize - 1))];
        t.Vpn = vpn;
        t.Gen = gen;
        t.Host = host;
        t.Writable = writable && (e.IsDirty || write);
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private byte* AtomicAddress(ulong va, int size)
    {
        if ((va & (ulong)(size - 1)) != 0)
        {
            ThrowMisaligned(va, size);
        }
        while (true)
        {
            Volatile.Write(ref _inAccess, 1);
            byte* p = TranslateOrFill(va, true);
            if (p != null)
            {
                return p;
            }
        }
    }

    [DoesNotReturn]
    private static void ThrowMisaligned(ulong va, int size) => throw new ArgumentException($"atomic access of {size} bytes at 0x{va:x} is not naturally aligned");

    /// <summary>Atomic compare-and-swap of a 64-bit value (kernel: a locked cmpxchg on user memory). Returns the old value.</summary>
    /// <exception cref="SegmentationFault">Unmapped address or no write permission.</exception>
    public long CompareExchange(ulong va, long value, long comparand)
    {
        byte* p = AtomicAddress(va, 8);
        long old = Interlocked.CompareExchange(ref *(long*)p, value, comparand);
        Volatile.Write(ref _inAccess, 0);
        return old;
    }

    /// <summary>Atomic add of a 64-bit value; returns the new value.</summary>
    /// <exception cref="SegmentationFault">Unmapped address or no write permission.</exception>
    public long Add(ulong va, long delta)
    {
        byte* p = AtomicAddress(va, 8);
        long r = Interlocked.Add(ref *(long*)p, delta);
        Volatile.Write(ref _inAccess, 0);
        return r;
    }

    /// <summary>Atomic compare-and-swap of a 32-bit value. Returns the old value.</summary>
    /// <exception cref="SegmentationFault">Unmapped address or no write permission.</exception>
    public int CompareExchange(ulong va, int value, int comparand)
    {
        byte* p = AtomicAddress(va, 4);
        int old = Interlocked.CompareExchange(ref *(int*)p, value, comparand);
        Volatile.Write(ref _inAccess, 0);
        return old;
    }

    /// <summary>Atomic add of a 32-bit value; returns the new value.</summary>
    /// <exception cref="SegmentationFault">Unmapped address or no write permission.</exception>
    public int Add(ulong va, int delta)
    {
        byte* p = AtomicAddress(va, 4);
        int r = Interlocked.Add(ref *(int*)p, delta);
        Volatile.Write(ref _inAccess, 0);
        return r;
    }

    /// <summary>Drops every TLB entry of this Cpu (kernel: a local full flush).</summary>
    public void FlushLocal() => Array.Clear(_tlb);

    /// <summary>Detaches the Cpu from its address space.</summary>
    public void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            Space.DetachCpu(this);
        }
    }
}
