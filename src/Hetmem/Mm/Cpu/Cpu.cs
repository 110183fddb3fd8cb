using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using Hetmem.Diagnostics;
using Hetmem.Physical;

namespace Hetmem.Mm;

/// <summary>
/// A CPU running in one address space: loads, stores and atomics on virtual addresses through a software
/// TLB, with page faults handled by the address space (kernel: the MMU plus do_user_addr_fault). Use one
/// Cpu per thread.
/// </summary>
/// <remarks>
/// <para>The TLB is direct-mapped, 512 entries, tagged with the virtual page and the space's TLB generation. A hit
/// costs a generation read, a tag compare and the access itself; a miss walks the page tables lock-free (tables are
/// not freed while a Cpu may walk them) and falls back to the fault handler. The hit path is laid out for latency
/// (a dependent chain of loads pays every cycle between the address and the data): the translation of entry i is
/// <c>_delta[i]</c> = host address minus virtual address of the page, in a pinned array read with a scaled index and
/// no bounds check, so address → index (one <c>bextr</c>; shift and mask without BMI1) → delta load → data load at
/// [delta + va]; the tags (<c>_tags</c>: page, generation, writable) are compared by predicted branches off that
/// path. The shootdown protocol is unchanged: the marker store, then the generation read, then the access.</para>
/// <para>Locking: <c>_inAccess</c> is written only by the owning thread and read by shooters (see
/// <see cref="AddressSpace.FlushTlb"/>); the TLB arrays are private to the owning thread.</para>
/// </remarks>
public sealed unsafe class Cpu : IDisposable
{
    private const int TlbBits = 9;
    private const int TlbSize = 1 << TlbBits;

    [StructLayout(LayoutKind.Sequential)]
    private struct TlbTag
    {
        public ulong Vpn;        // virtual page number
        public long Gen;         // TLB generation at fill time; 0 = empty (generations start at 1)
        public bool Writable;    // write permitted (PTE writable and dirty)
    }

    private readonly TlbTag[] _tags = new TlbTag[TlbSize];      // owner thread only
    private readonly nuint[] _deltas = GC.AllocateArray<nuint>(TlbSize, pinned: true); // owner thread only; see _delta
    private readonly nuint* _delta;                             // _deltas' first element (pinned): host - va of entry i's page, wrapping
    private int _inAccess;                                       // 1 while between the marker store and the end of an access
    private bool _disposed;

    /// <summary>Creates a Cpu attached to <paramref name="space"/>.</summary>
    public Cpu(AddressSpace space)
    {
        Space = space;
        _delta = (nuint*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_deltas));
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

    /// <summary>The entry index of <paramref name="va"/>: (va / page) mod 512.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static nint Index(ulong va) => Bmi1.X64.IsSupported
        ? (nint)Bmi1.X64.BitFieldExtract(va, Page.Shift, TlbBits)      // one bextr instead of shift + mask
        : (nint)((va >> Page.Shift) & (TlbSize - 1));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref TlbTag Tag(nint i) => ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(_tags), i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private byte* Translate(ulong va, bool write)
    {
        nint i = Index(va);
        ref TlbTag t = ref Tag(i);
        if (t.Vpn == va >> Page.Shift && t.Gen == Space.TlbGeneration && (t.Writable || !write))
        {
            return (byte*)(_delta[i] + (nuint)va);
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
        // The hit test is written out here (not through Translate) so the data load addresses [delta + va] directly:
        // the load-to-load path is bextr, delta load, data load.
        nint i = Index(va);
        ref TlbTag t = ref Tag(i);
        if ((va & Page.OffsetMask) <= (ulong)(Page.Size - sizeof(T)) && t.Vpn == va >> Page.Shift && t.Gen == Space.TlbGeneration)
        {
            T v = Unsafe.ReadUnaligned<T>((void*)(_delta[i] + (nuint)va));
            Volatile.Write(ref _inAccess, 0);
            return v;
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
        nint i = Index(va);
        ref TlbTag t = ref Tag(i);
        if ((va & Page.OffsetMask) <= (ulong)(Page.Size - sizeof(T)) && t.Vpn == va >> Page.Shift && t.Gen == Space.TlbGeneration && t.Writable)
        {
            Unsafe.WriteUnaligned((void*)(_delta[i] + (nuint)va), value);
            Volatile.Write(ref _inAccess, 0);
            return;
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
        nint i = Index(va);
        ref TlbTag t = ref Tag(i);
        t.Vpn = va >> Page.Shift;
        t.Gen = gen;
        t.Writable = writable && (e.IsDirty || write);
        _delta[i] = (nuint)host - (nuint)(va & ~Page.OffsetMask);
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
    public void FlushLocal() => Array.Clear(_tags);   // generation 0 never matches; stale deltas are unreachable

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
