using System.Runtime.InteropServices;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Hmm;

/// <summary>
/// A small device for migration tests: a device-private (or device-coherent) page map over a host arena, a free
/// list, <c>MigrateToRam</c> written with <see cref="MigrateVma"/>, and helpers that migrate ranges both ways and
/// evict everything. Counts PageFree calls and detects device-page leaks.
/// </summary>
internal sealed unsafe class MigrateTestDevice : IDevicePageMapOps, IDisposable
{
    private readonly Stack<ulong> _free = new();   // guarded by itself
    private readonly Dictionary<ulong, int> _orders = new(); // guarded by _free; compound heads handed out
    private readonly byte* _arena;
    private int _pageFrees;
    private int _migrateToRamCalls;

    public MigrateTestDevice(PhysicalMemory memory, ulong pages = 1024, MemoryType type = MemoryType.DevicePrivate, object? owner = null)
    {
        Memory = memory;
        Owner = owner ?? this;
        _arena = (byte*)NativeMemory.AlignedAlloc((nuint)(pages << Page.Shift), (nuint)Page.PmdSize);
        NativeMemory.Clear(_arena, (nuint)(pages << Page.Shift));
        Map = memory.RegisterDevicePageMap(type, pages, _arena, Owner, this);
        for (ulong i = pages; i > 0; i--)
        {
            _free.Push(Map.FirstPfn + i - 1);
        }
    }

    public PhysicalMemory Memory { get; }
    public DevicePageMap Map { get; }
    public object Owner { get; }
    public int PageFrees => Volatile.Read(ref _pageFrees);
    public int MigrateToRamCalls => Volatile.Read(ref _migrateToRamCalls);
    public int FreePages
    {
        get
        {
            lock (_free)
            {
                return _free.Count;
            }
        }
    }

    /// <summary>When set, MigrateToRam leaves the destination empty (a broken driver).</summary>
    public bool FailMigrateToRam { get; set; }

    /// <summary>Reads the bytes of a device page directly (what the device sees).</summary>
    public Span<byte> DeviceBytes(ulong pfn) => Memory.FrameSpan(pfn);

    public ulong AllocPage(int order = 0)
    {
        lock (_free)
        {
            if (order == 0)
            {
                if (_free.Count == 0)
                {
                    return Page.NoPfn;
                }
                ulong p = _free.Pop();
                Memory.InitDevicePage(p);
                Memory.LockFrame(p);
                return p;
            }
            return AllocRunLocked(order);
        }
    }

    /// <summary>An aligned run of 2^order free pages (kept apart so the base-page path allocates nothing).</summary>
    private ulong AllocRunLocked(int order)
    {
        ulong n = 1UL << order;
        var set = new HashSet<ulong>(_free);
        for (ulong first = Map.FirstPfn; first + n <= Map.FirstPfn + Map.PageCount; first += n)
        {
            bool all = true;
            for (ulong k = 0; k < n && all; k++)
            {
                all = set.Contains(first + k);
            }
            if (all)
            {
                ulong lo = first;
                var rest = _free.Where(p => p < lo || p >= lo + n).Reverse().ToArray();
                _free.Clear();
                foreach (ulong p in rest)
                {
                    _free.Push(p);
                }
                Memory.InitDevicePage(first, order);
                _orders[first] = order;
                Memory.LockFrame(first);
                return first;
            }
        }
        return Page.NoPfn;
    }

    public void PageFree(ulong pfn)
    {
        ulong n = 1;
        lock (_free)
        {
            if (_orders.Remove(pfn, out int order) && Memory.Frame(pfn + 1).Has(FrameFlags.Tail))
            {
                n = 1UL << order;
            }
            for (ulong k = n; k > 0; k--)
            {
                _free.Push(pfn + k - 1);
            }
        }
        Interlocked.Add(ref _pageFrees, (int)n);
    }

    public Errno MigrateToRam(in DevicePageFault fault)
    {
        Interlocked.Increment(ref _migrateToRamCalls);
        var mm = (AddressSpace)fault.Space;
        ulong pfn = fault.Pfn;
        if (!Memory.TryGet(pfn))
        {
            return Errno.Ok; // already gone; the fault retries
        }
        Memory.LockFrame(pfn);
        try
        {
            Vma vma = mm.Vmas.Find(fault.Address)!;
            var m = new MigrateVma
            {
                Vma = vma,
                Start = fault.Address,
                End = fault.Address + Page.Size,
                Src = new ulong[1],
                Dst = new ulong[1],
                PgmapOwner = Owner,
                Flags = MigrateVmaSelect.DevicePrivate,
                FaultPage = pfn,
            };
            Errno err = m.Setup();
            if (err != Errno.Ok)
            {
                return err;
            }
            if (!FailMigrateToRam)
            {
                CopyToRam(m.Src, m.Dst, 1);
            }
            m.Pages();
            bool moved = (m.Src[0] & MigratePfn.Migrate) != 0 || m.Cpages == 0;
            m.Finalize();
            return moved ? Errno.Ok : Errno.EFAULT;
        }
        finally
        {
            Memory.UnlockFrame(pfn);
            Memory.Put(pfn);
        }
    }

    private void CopyToRam(ulong[] src, ulong[] dst, int n)
    {
        for (int i = 0; i < n; i++)
        {
            if ((src[i] & MigratePfn.Migrate) == 0)
            {
                continue;
            }
            ulong ram = Memory.Allocate(0);
            Assert.NotEqual(Page.NoPfn, ram);
            Memory.LockFrame(ram);
            ulong s = MigratePfn.ToPfn(src[i]);
            if (s == Page.NoPfn)
            {
                Memory.ZeroFrames(ram, 1);
            }
            else
            {
                Memory.CopyFrame(ram, s);
            }
            dst[i] = MigratePfn.Make(ram);
        }
    }

    /// <summary>Migrates [start, end) of <paramref name="mm"/> to device memory; returns the number of pages moved.</summary>
    public int MigrateToDevice(AddressSpace mm, ulong start, ulong end, MigrateVmaSelect flags = MigrateVmaSelect.System, Action<MigrateVma>? betweenSetupAndPages = null)
    {
        using (mm.MmapLock.Read())
        {
            return MigrateToDeviceLocked(mm, start, end, flags, betweenSetupAndPages);
        }
    }

    public int MigrateToDeviceLocked(AddressSpace mm, ulong start, ulong end, MigrateVmaSelect flags = MigrateVmaSelect.System, Action<MigrateVma>? betweenSetupAndPages = null)
    {
        int n = (int)((end - start) >> Page.Shift);
        var m = new MigrateVma
        {
            Vma = mm.Vmas.Find(start)!,
            Start = start,
            End = end,
            Src = new ulong[n],
            Dst = new ulong[n],
            PgmapOwner = Owner,
            Flags = flags,
        };
        Assert.Equal(Errno.Ok, m.Setup());
        for (int i = 0; i < n; i++)
        {
            ulong s = m.Src[i];
            if ((s & MigratePfn.Migrate) == 0)
            {
                continue;
            }
            bool compound = (s & MigratePfn.Compound) != 0;
            ulong d = AllocPage(compound ? Page.PmdOrder : 0);
            if (d == Page.NoPfn)
            {
                continue;
            }
            ulong sp = MigratePfn.ToPfn(s);
            ulong count = compound ? 512UL : 1UL;
            if (sp == Page.NoPfn)
            {
                Memory.ZeroFrames(d, count);
            }
            else
            {
                Memory.CopyFrame(d, sp, count);
            }
            m.Dst[i] = MigratePfn.Make(d) | (compound ? MigratePfn.Compound : 0);
        }
        betweenSetupAndPages?.Invoke(m);
        m.Pages();
        int moved = 0;
        for (int i = 0; i < n; i++)
        {
            if ((m.Src[i] & MigratePfn.Migrate) != 0)
            {
                moved += (m.Src[i] & MigratePfn.Compound) != 0 ? 512 : 1;
            }
        }
        m.Finalize();
        return moved;
    }

    /// <summary>Migrates this device's pages of [start, end) back to RAM; returns the number of pages moved.</summary>
    public int MigrateToSystem(AddressSpace mm, ulong start, ulong end)
    {
        using (mm.MmapLock.Read())
        {
            int n = (int)((end - start) >> Page.Shift);
            var m = new MigrateVma
            {
                Vma = mm.Vmas.Find(start)!,
                Start = start,
                End = end,
                Src = new ulong[n],
                Dst = new ulong[n],
                PgmapOwner = Owner,
                Flags = Map.Type == MemoryType.DevicePrivate ? MigrateVmaSelect.DevicePrivate : MigrateVmaSelect.DeviceCoherent,
            };
            Assert.Equal(Errno.Ok, m.Setup());
            CopyToRam(m.Src, m.Dst, n);
            m.Pages();
            int moved = m.Src.Count(s => (s & MigratePfn.Migrate) != 0);
            m.Finalize();
            return moved;
        }
    }

    /// <summary>Evicts every in-use page of the device to RAM (driver unload); returns the number of pages moved.</summary>
    public int EvictAll()
    {
        int n = (int)Map.PageCount;
        var src = new ulong[n];
        var dst = new ulong[n];
        Assert.Equal(Errno.Ok, MigrateDevice.MigrateDeviceRange(Memory, src, Map.FirstPfn, (ulong)n));
        CopyToRam(src, dst, n);
        MigrateDevice.Pages(Memory, src, dst);
        int moved = src.Count(s => (s & MigratePfn.Migrate) != 0);
        MigrateDevice.Finalize(Memory, src, dst);
        return moved;
    }

    public void Dispose()
    {
        Memory.UnregisterDevicePageMap(Map);
        NativeMemory.AlignedFree(_arena);
    }
}
