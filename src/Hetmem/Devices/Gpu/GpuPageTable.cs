using System.Diagnostics;
using System.Runtime.CompilerServices;
using Hetmem.Physical;

namespace Hetmem.Devices.Gpu;

/// <summary>Size of a GPU page-table entry (kernel: UVM's 4K / big 64K / 2M GPU page sizes; Xe's 4K/64K/2M PTEs).</summary>
public enum GpuPageSize : byte
{
    /// <summary>A 4 KiB entry.</summary>
    Size4K = 0,
    /// <summary>A 64 KiB "big page" entry.</summary>
    Size64K = 1,
    /// <summary>A 2 MiB entry (one page-directory entry).</summary>
    Size2M = 2,
}

/// <summary>
/// Encoding of a GPU page-table entry (kernel: a GMMU PTE): valid, writable, atomic-capable, aperture (VRAM or
/// system memory), entry size and the PFN of the entry's first 4 KiB page.
/// </summary>
public static class GpuPte
{
    /// <summary>The entry translates.</summary>
    public const ulong Valid = 1UL << 0;
    /// <summary>Stores are permitted.</summary>
    public const ulong Write = 1UL << 1;
    /// <summary>Atomics are permitted.</summary>
    public const ulong Atomic = 1UL << 2;
    /// <summary>The PFN is in the device's VRAM (aperture VID); otherwise system memory (aperture SYS, a remote mapping).</summary>
    public const ulong Vram = 1UL << 3;
    private const int SizeShift = 4;
    private const int PfnShift = 12;

    /// <summary>Builds an entry.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Make(ulong pfn, GpuPageSize size, bool write, bool atomic, bool vram)
        => (pfn << PfnShift) | Valid | (write ? Write : 0) | (atomic ? Atomic : 0) | (vram ? Vram : 0) | ((ulong)size << SizeShift);

    /// <summary>PFN of the entry's first page.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Pfn(ulong pte) => pte >> PfnShift;

    /// <summary>Entry size.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static GpuPageSize Size(ulong pte) => (GpuPageSize)((pte >> SizeShift) & 3);

    /// <summary>Bytes covered by an entry of <paramref name="size"/>.</summary>
    public static ulong Bytes(GpuPageSize size) => size switch
    {
        GpuPageSize.Size2M => Page.PmdSize,
        GpuPageSize.Size64K => 64 * 1024,
        _ => Page.Size,
    };

    /// <summary>True when the entry permits <paramref name="access"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool Permits(ulong pte, GpuAccess access) => access switch
    {
        GpuAccess.Write => (pte & (Valid | Write)) == (Valid | Write),
        GpuAccess.Atomic => (pte & (Valid | Write | Atomic)) == (Valid | Write | Atomic),
        _ => (pte & Valid) != 0,
    };

    /// <summary>The PFN of the 4 KiB page containing <paramref name="va"/> under entry <paramref name="pte"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong PfnAt(ulong pte, ulong va) => Size(pte) switch
    {
        GpuPageSize.Size2M => Pfn(pte) + ((va >> Page.Shift) & 511),
        GpuPageSize.Size64K => Pfn(pte) + ((va >> Page.Shift) & 15),
        _ => Pfn(pte),
    };
}

/// <summary>
/// The page table of one GPU virtual address space (kernel: the GMMU page tables a UVM/nouveau/Xe driver writes):
/// a lazily allocated 1 GiB directory level, 512 page-directory entries per directory that either hold a 2 MiB
/// entry or point to a table of 512 4 KiB slots; a 64 KiB entry occupies 16 aligned slots with the same encoding.
/// </summary>
/// <remarks>
/// Locking: entries are written only under the owning context's update lock (<c>GpuSvm.NotifierLock</c>) and read
/// lock-free by execution units with <see cref="Volatile"/> reads (paired with the volatile writes here). Tables
/// are never freed while the context lives, so a lock-free walker never reads freed memory. Mapping may allocate
/// tables; zapping never allocates (it runs in invalidate callbacks).
/// </remarks>
public sealed class GpuPageTable
{
    private const int DirShift = 30;                 // one directory per 1 GiB
    private const int DirCount = 1 << (47 - DirShift);

    private sealed class Directory
    {
        public readonly ulong[] Pde = new ulong[512];          // 2 MiB entries (Valid) or 0
        public readonly ulong[]?[] Tables = new ulong[]?[512]; // 4 KiB slots, allocated on first small mapping
    }

    private readonly Directory?[] _dirs = new Directory?[DirCount]; // written under the update lock, read with Volatile

    /// <summary>Entries present now, by size (under the update lock; read racily for statistics).</summary>
    public long Entries4K { get; private set; }
    /// <summary>64 KiB entries present now.</summary>
    public long Entries64K { get; private set; }
    /// <summary>2 MiB entries present now.</summary>
    public long Entries2M { get; private set; }

    /// <summary>The entry translating <paramref name="va"/>, or 0 (lock-free; a GMMU walk).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Lookup(ulong va)
    {
        ulong di = va >> DirShift;
        if (di >= DirCount)
        {
            return 0;
        }
        Directory? d = Volatile.Read(ref _dirs[di]);
        if (d is null)
        {
            return 0;
        }
        int pi = (int)((va >> Page.PmdShift) & 511);
        ulong pde = Volatile.Read(ref d.Pde[pi]);
        if (pde != 0)
        {
            return pde;
        }
        ulong[]? t = Volatile.Read(ref d.Tables[pi]);
        return t is null ? 0 : Volatile.Read(ref t[(int)((va >> Page.Shift) & 511)]);
    }

    private Directory DirFor(ulong va)
    {
        ulong di = va >> DirShift;
        if (di >= DirCount)
        {
            throw new ArgumentOutOfRangeException(nameof(va), $"GPU VA 0x{va:x} is beyond the 47-bit address space");
        }
        Directory? d = _dirs[di];
        if (d is null)
        {
            d = new Directory();
            Volatile.Write(ref _dirs[di], d);
        }
        return d;
    }

    /// <summary>
    /// Installs entry <paramref name="pte"/> at <paramref name="va"/> (aligned to the entry size), replacing whatever
    /// overlapped it. The caller holds the update lock and invalidates TLBs if it downgraded or replaced a valid entry.
    /// </summary>
    /// <exception cref="ArgumentException">When <paramref name="va"/> or the PFN is not aligned to the entry size.</exception>
    public void MapLocked(ulong va, ulong pte)
    {
        GpuPageSize size = GpuPte.Size(pte);
        ulong bytes = GpuPte.Bytes(size);
        ulong pages = bytes >> Page.Shift;
        if (!Page.IsAligned(va, bytes) || (GpuPte.Pfn(pte) & (pages - 1)) != 0)
        {
            throw new ArgumentException($"GPU {size} entry at 0x{va:x} for PFN 0x{GpuPte.Pfn(pte):x} is not aligned");
        }
        Directory d = DirFor(va);
        int pi = (int)((va >> Page.PmdShift) & 511);
        if (size == GpuPageSize.Size2M)
        {
            ClearTableLocked(d, pi, 0, 512);
            if (d.Pde[pi] == 0)
            {
                Entries2M++;
            }
            Volatile.Write(ref d.Pde[pi], pte);
            return;
        }
        if (d.Pde[pi] != 0)
        {
            // A smaller entry inside a 2 MiB one: the caller remaps the rest of the block.
            Volatile.Write(ref d.Pde[pi], 0);
            Entries2M--;
        }
        ulong[] t = d.Tables[pi] ?? (d.Tables[pi] = new ulong[512]);
        int si = (int)((va >> Page.Shift) & 511);
        int n = (int)pages;
        ClearTableLocked(d, pi, si, si + n);
        for (int k = 0; k < n; k++)
        {
            Volatile.Write(ref t[si + k], pte);
        }
        if (size == GpuPageSize.Size64K)
        {
            Entries64K++;
        }
        else
        {
            Entries4K++;
        }
    }

    /// <summary>Clears every entry overlapping [<paramref name="start"/>, <paramref name="end"/>); a 2 MiB or 64 KiB
    /// entry that only partly overlaps is cleared whole. Never allocates. The caller holds the update lock and
    /// invalidates TLBs afterwards.</summary>
    /// <returns>True when a valid entry was cleared.</returns>
    public bool ZapLocked(ulong start, ulong end)
    {
        bool any = false;
        for (ulong a = Page.AlignDown(start, Page.PmdSize); a < end; a += Page.PmdSize)
        {
            ulong di = a >> DirShift;
            if (di >= DirCount)
            {
                break;
            }
            Directory? d = _dirs[di];
            if (d is null)
            {
                a = Page.AlignDown(a, 1UL << DirShift) + (1UL << DirShift) - Page.PmdSize;
                continue;
            }
            int pi = (int)((a >> Page.PmdShift) & 511);
            if (d.Pde[pi] != 0)
            {
                Volatile.Write(ref d.Pde[pi], 0);
                Entries2M--;
                any = true;
            }
            if (d.Tables[pi] is not null)
            {
                ulong lo = Math.Max(start, a), hi = Math.Min(end, a + Page.PmdSize);
                int s = (int)((lo - a) >> Page.Shift);
                int e = (int)((hi - a + Page.OffsetMask) >> Page.Shift);
                any |= ClearTableLocked(d, pi, s, e);
            }
        }
        return any;
    }

    /// <summary>Clears slots [s, e) of a table, widening to whole 64 KiB entries it cuts.</summary>
    private bool ClearTableLocked(Directory d, int pi, int s, int e)
    {
        ulong[]? t = d.Tables[pi];
        if (t is null)
        {
            return false;
        }
        if (s > 0 && GpuPte.Size(t[s]) == GpuPageSize.Size64K && t[s] != 0)
        {
            s &= ~15;
        }
        if (e < 512 && e > 0 && t[e - 1] != 0 && GpuPte.Size(t[e - 1]) == GpuPageSize.Size64K)
        {
            e = (e + 15) & ~15;
        }
        bool any = false;
        for (int i = s; i < e; i++)
        {
            ulong v = t[i];
            if (v == 0)
            {
                continue;
            }
            any = true;
            if (GpuPte.Size(v) == GpuPageSize.Size64K)
            {
                Debug.Assert((i & 15) == 0, "a 64 KiB entry starts on a 16-slot boundary");
                for (int k = 0; k < 16; k++)
                {
                    Volatile.Write(ref t[i + k], 0);
                }
                Entries64K--;
                i += 15;
            }
            else
            {
                Volatile.Write(ref t[i], 0);
                Entries4K--;
            }
        }
        return any;
    }
}
