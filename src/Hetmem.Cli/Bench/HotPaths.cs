using Hetmem.Cli.Devices;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Cli.Bench;

/// <summary>
/// The hot paths Hetmem is measured on, as ready-made fixtures shared by <c>hetmem bench</c>, the BenchmarkDotNet
/// project (bench/Hetmem.Benchmarks) and the allocation-budget test: each fixture builds its machine once, and its
/// operation methods are the code being timed (and checked to allocate nothing).
/// </summary>
/// <remarks>Fixtures are not thread-safe: use one per thread. Anonymous ranges are <c>MADV_NOHUGEPAGE</c>, so every
/// figure is per 4 KiB page, like the host side of <c>hetmem bench</c>.</remarks>
public static class HotPaths
{
    /// <summary>RAM for a fixture touching <paramref name="pages"/> pages (twice that plus 32 MiB, at least 64 MiB, 2 MiB multiple).</summary>
    public static ulong RamFor(int pages) => Page.AlignUp(Math.Max(64UL << 20, ((ulong)pages << Page.Shift) * 2 + (32UL << 20)), Page.PmdSize);

    /// <summary>Maps <paramref name="pages"/> anonymous read-write pages, 4 KiB only (MADV_NOHUGEPAGE).</summary>
    internal static ulong MapAnon(AddressSpace mm, int pages, ulong address = 0)
    {
        ulong len = (ulong)pages << Page.Shift;
        ulong a = mm.Mmap(address, len, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | (address != 0 ? MapFlags.Fixed : MapFlags.None));
        mm.Madvise(a, len, Advice.NoHugePage);
        return a;
    }
}

/// <summary>An interval notifier callback that only bumps the sequence (the cheapest possible mirror).</summary>
internal sealed class SequenceOnlyOps : IMmuIntervalNotifierOps
{
    public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
    {
        subscription.SetSeq(curSeq);
        return true;
    }
}

/// <summary>
/// A populated anonymous range with an interval notifier and a reusable <see cref="HmmRange"/> over it: page walks
/// (kernel: a hardware walk / follow_page) and <c>hmm_range_fault</c> snapshots of resident memory.
/// </summary>
public sealed class ResidentRangeFixture : IDisposable
{
    private readonly MmuIntervalNotifier _notifier;

    /// <summary>Builds a machine with <paramref name="pages"/> resident anonymous pages.</summary>
    /// <exception cref="MmException">ENOMEM when <paramref name="ramBytes"/> is too small.</exception>
    public ResidentRangeFixture(int pages, ulong ramBytes = 0)
    {
        Pages = pages;
        Memory = new PhysicalMemory(ramBytes != 0 ? ramBytes : HotPaths.RamFor(pages));
        Space = new AddressSpace(Memory);
        Start = HotPaths.MapAnon(Space, pages);
        Space.Madvise(Start, (ulong)pages << Page.Shift, Advice.PopulateWrite);
        _notifier = MmuIntervalNotifier.Insert(Space, Start, (ulong)pages << Page.Shift, new SequenceOnlyOps());
        Range = new HmmRange(_notifier, Start, Start + ((ulong)pages << Page.Shift)) { DefaultFlags = HmmPfnFlags.ReqFault };
    }

    /// <summary>Pages in the range.</summary>
    public int Pages { get; }

    /// <summary>The machine's memory.</summary>
    public PhysicalMemory Memory { get; }

    /// <summary>The address space.</summary>
    public AddressSpace Space { get; }

    /// <summary>First address of the range.</summary>
    public ulong Start { get; }

    /// <summary>The reusable range (one entry a page).</summary>
    public HmmRange Range { get; }

    /// <summary>Walks the page tables for every page (lock-free, like a hardware walker); returns a checksum of the entries.</summary>
    public ulong PageWalk()
    {
        ulong acc = 0;
        ulong a = Start;
        for (int i = 0; i < Pages; i++, a += Page.Size)
        {
            acc ^= Space.QueryPte(a, out _).Value;
        }
        return acc;
    }

    /// <summary>
    /// One <c>hmm_range_fault</c> pass over the whole resident range, the way a driver calls it: read the notifier
    /// sequence, take the mmap lock for read, fault. Returns its errno (Ok: every entry valid).
    /// </summary>
    public Errno Snapshot()
    {
        Range.NotifierSeq = _notifier.ReadBegin();
        Space.MmapLock.EnterRead();
        try
        {
            return Range.Fault();
        }
        finally
        {
            Space.MmapLock.ExitRead();
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        _notifier.Remove();
        Space.Exit();
        Memory.Dispose();
    }
}

/// <summary>
/// A chain of dependent 8-byte loads through 16 KiB (4 pages) of simulated memory, read with <see cref="Cpu.Read{T}"/>:
/// every access hits the software TLB (compare the host's native dependent load).
/// </summary>
public sealed class TlbHitFixture : IDisposable
{
    private const int Slots = 16 * 1024 / sizeof(long);
    private readonly Cpu _cpu;
    private readonly ulong _base;

    /// <summary>Builds the chain, a random cycle through every slot (seeded).</summary>
    public TlbHitFixture(int seed = 1)
    {
        Memory = new PhysicalMemory(64UL << 20);
        Space = new AddressSpace(Memory);
        _base = HotPaths.MapAnon(Space, Slots * sizeof(long) / Page.Size);
        _cpu = new Cpu(Space);
        int[] order = Enumerable.Range(0, Slots).ToArray();
        new Random(seed).Shuffle(order.AsSpan(1));
        for (int i = 0; i < Slots; i++)
        {
            _cpu.Write(_base + ((ulong)order[i] * sizeof(long)), (long)order[(i + 1) % Slots]);
        }
    }

    /// <summary>The machine's memory.</summary>
    public PhysicalMemory Memory { get; }

    /// <summary>The address space.</summary>
    public AddressSpace Space { get; }

    /// <summary>Follows the chain for <paramref name="reads"/> loads; returns where it ended (so the loads are not dead code).</summary>
    public long Chase(int reads)
    {
        long idx = 0;
        for (int i = 0; i < reads; i++)
        {
            idx = _cpu.Read<long>(_base + ((ulong)idx * sizeof(long)));
        }
        return idx;
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        _cpu.Dispose();
        Space.Exit();
        Memory.Dispose();
    }
}

/// <summary>
/// Fresh anonymous memory faulted in by its first write (allocation and zeroing included), either with
/// MADV_POPULATE_WRITE or with one <see cref="Cpu"/> store a page; <see cref="Drop"/> (MADV_DONTNEED) makes it fresh again.
/// </summary>
public sealed class AnonFaultFixture : IDisposable
{
    private readonly Cpu _cpu;

    /// <summary>Maps <paramref name="pages"/> pages, not yet faulted.</summary>
    public AnonFaultFixture(int pages, ulong ramBytes = 0)
    {
        Pages = pages;
        Memory = new PhysicalMemory(ramBytes != 0 ? ramBytes : HotPaths.RamFor(pages));
        Space = new AddressSpace(Memory);
        Start = HotPaths.MapAnon(Space, pages);
        _cpu = new Cpu(Space);
    }

    /// <summary>Pages in the range.</summary>
    public int Pages { get; }

    /// <summary>The machine's memory.</summary>
    public PhysicalMemory Memory { get; }

    /// <summary>The address space.</summary>
    public AddressSpace Space { get; }

    /// <summary>First address.</summary>
    public ulong Start { get; }

    /// <summary>madvise(MADV_POPULATE_WRITE) over the range (kernel: one write fault a page through GUP).</summary>
    public void Populate() => Space.Madvise(Start, (ulong)Pages << Page.Shift, Advice.PopulateWrite);

    /// <summary>One 8-byte CPU store a page: each takes a TLB miss and a write fault that allocates and zeroes a frame.</summary>
    public void CpuWrites()
    {
        ulong a = Start;
        for (int i = 0; i < Pages; i++, a += Page.Size)
        {
            _cpu.Write(a, (long)i);
        }
    }

    /// <summary>madvise(MADV_DONTNEED): frees the pages so the next pass faults fresh memory again.</summary>
    public void Drop() => Space.Madvise(Start, (ulong)Pages << Page.Shift, Advice.DontNeed);

    /// <inheritdoc/>
    public void Dispose()
    {
        _cpu.Dispose();
        Space.Exit();
        Memory.Dispose();
    }
}

/// <summary>
/// A populated anonymous range mirrored by two devices (two <see cref="MiniMirror"/>s, each with its own interval
/// notifier and device page table, every page programmed): what munmap and mprotect cost when devices mirror memory.
/// <see cref="Map"/> re-creates the range at the same address and lets both devices fault it in again.
/// </summary>
public sealed class MirroredRangeFixture : IDisposable
{
    private const ulong Address = 0x6000_0000_0000;
    private readonly MiniMirror[] _devices;

    /// <summary>Builds the machine and the two devices; call <see cref="Map"/> before each measured operation.</summary>
    public MirroredRangeFixture(int pages, int devices = 2, ulong ramBytes = 0)
    {
        Pages = pages;
        Memory = new PhysicalMemory(ramBytes != 0 ? ramBytes : HotPaths.RamFor(pages));
        Space = new AddressSpace(Memory);
        _devices = new MiniMirror[devices];
        for (int i = 0; i < devices; i++)
        {
            _devices[i] = new MiniMirror($"bench-mirror{i}", Space);
            _devices[i].Attach(Address, Length, "bench");
        }
    }

    /// <summary>Pages in the range.</summary>
    public int Pages { get; }

    /// <summary>Bytes in the range.</summary>
    public ulong Length => (ulong)Pages << Page.Shift;

    /// <summary>The machine's memory.</summary>
    public PhysicalMemory Memory { get; }

    /// <summary>The address space.</summary>
    public AddressSpace Space { get; }

    /// <summary>First address of the range.</summary>
    public ulong Start => Address;

    /// <summary>Pages the devices hold translations for.</summary>
    public long MirroredPages => _devices.Sum(d => d.ValidPages());

    /// <summary>Maps and populates the range and has every device fault all of it in (writable).</summary>
    /// <exception cref="InvalidOperationException">When a device fault fails.</exception>
    public void Map()
    {
        HotPaths.MapAnon(Space, Pages, Address);
        Space.Madvise(Address, Length, Advice.PopulateWrite);
        MirrorAll();
    }

    /// <summary>Has every device fault the whole range in (after <see cref="Map"/> or <see cref="Unprotect"/>).</summary>
    /// <exception cref="InvalidOperationException">When a device fault fails.</exception>
    public void MirrorAll()
    {
        foreach (MiniMirror d in _devices)
        {
            Errno e = d.Fault(Address, Address + Length, write: true);
            if (e != Errno.Ok)
            {
                throw new InvalidOperationException($"{d.Name} could not fault the range in: {e}");
            }
        }
    }

    /// <summary>munmap of the whole mirrored range (two invalidate callbacks, page freeing, TLB shootdown).</summary>
    public void Unmap() => Space.Munmap(Address, Length);

    /// <summary>mprotect(PROT_READ) of the whole mirrored range.</summary>
    public void Protect() => Space.Mprotect(Address, Length, Prot.Read);

    /// <summary>mprotect(PROT_READ | PROT_WRITE) back.</summary>
    public void Unprotect() => Space.Mprotect(Address, Length, Prot.Read | Prot.Write);

    /// <inheritdoc/>
    public void Dispose()
    {
        foreach (MiniMirror d in _devices)
        {
            d.Dispose();
        }
        Space.Exit();
        Memory.Dispose();
    }
}

/// <summary>
/// A file on a DAX file system (namespace in a temporary host file) mapped shared at a 2 MiB-aligned address and
/// populated, so it is mapped by PMD entries; <see cref="Snapshot"/> is <c>hmm_range_fault</c> over it, which reports
/// order-9 entries.
/// </summary>
public sealed class DaxPmdFixture : IDisposable
{
    private const ulong Address = 0x6100_0000_0000;
    private readonly string _dir;
    private readonly DaxNamespace _ns;
    private readonly DaxFileSystem _fs;
    private readonly FileHandle _file;
    private readonly MmuIntervalNotifier _notifier;

    /// <summary>Builds a <paramref name="bytes"/>-byte DAX file (a multiple of 2 MiB) and maps it.</summary>
    public DaxPmdFixture(ulong bytes)
    {
        Bytes = bytes;
        _dir = Directory.CreateTempSubdirectory("hetmem-bench-dax-").FullName;
        Memory = new PhysicalMemory(64UL << 20);
        _ns = new DaxNamespace(Memory, Path.Combine(_dir, "bench.dax"), bytes + (32UL << 20));
        _fs = DaxFileSystem.Format(_ns);
        _file = _fs.Create("bench");
        _file.Truncate(bytes);
        Space = new AddressSpace(Memory);
        Space.MmapFile(Address, bytes, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Fixed, _file);
        Space.Madvise(Address, bytes, Advice.PopulateWrite);
        _notifier = MmuIntervalNotifier.Insert(Space, Address, bytes, new SequenceOnlyOps());
        Range = new HmmRange(_notifier, Address, Address + bytes) { DefaultFlags = HmmPfnFlags.ReqFault };
    }

    /// <summary>Bytes mapped.</summary>
    public ulong Bytes { get; }

    /// <summary>4 KiB pages mapped.</summary>
    public int Pages => (int)(Bytes >> Page.Shift);

    /// <summary>The machine's memory (the DAX frames are not RAM).</summary>
    public PhysicalMemory Memory { get; }

    /// <summary>The address space.</summary>
    public AddressSpace Space { get; }

    /// <summary>The reusable range.</summary>
    public HmmRange Range { get; }

    /// <summary>PMD entries of the mapping (for checks).</summary>
    public ulong PmdEntries => Space.Maps().Single().PmdEntries;

    /// <summary>One <c>hmm_range_fault</c> pass over the mapping.</summary>
    public Errno Snapshot()
    {
        Range.NotifierSeq = _notifier.ReadBegin();
        Space.MmapLock.EnterRead();
        try
        {
            return Range.Fault();
        }
        finally
        {
            Space.MmapLock.ExitRead();
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        _notifier.Remove();
        Space.Exit();
        _file.Dispose();
        _fs.Dispose();
        _ns.Dispose();
        Memory.Dispose();
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>
/// Migration of an anonymous range to device-private memory and back (kernel: migrate_vma_setup / pages / finalize,
/// as a GPU driver calls them): a device page map over a native arena with a free list, the range migrated in 2 MiB
/// chunks with the data moved by a vectorised copy (runs of contiguous source and destination frames are copied at
/// once, as a copy engine would).
/// </summary>
public sealed unsafe class MigrateFixture : IDevicePageMapOps, IDisposable
{
    private const int ChunkPages = 512;
    private readonly byte* _arena;
    private readonly ulong[] _free;                // guarded by _freeLock: a stack of free device PFNs
    private readonly object _freeLock = new();
    private int _freeCount;                        // guarded by _freeLock
    private readonly ulong[] _src = new ulong[ChunkPages];
    private readonly ulong[] _dst = new ulong[ChunkPages];
    private readonly Vma _vma;
    private readonly MigrateVma _migrate = new();

    /// <summary>Maps and fills <paramref name="bytes"/> (a multiple of 2 MiB) of anonymous memory and registers as much device memory.</summary>
    public MigrateFixture(ulong bytes)
    {
        Bytes = bytes;
        ulong pages = bytes >> Page.Shift;
        Memory = new PhysicalMemory(Page.AlignUp(bytes + (64UL << 20), Page.PmdSize));
        _arena = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)bytes, (nuint)Page.PmdSize);
        Map = Memory.RegisterDevicePageMap(MemoryType.DevicePrivate, pages, _arena, this, this);
        _free = new ulong[pages];
        for (ulong i = 0; i < pages; i++)
        {
            _free[i] = Map.FirstPfn + pages - 1 - i;
        }
        _freeCount = (int)pages;
        Space = new AddressSpace(Memory);
        Start = HotPaths.MapAnon(Space, (int)pages);
        Space.Madvise(Start, bytes, Advice.PopulateWrite);
        using (var cpu = new Cpu(Space))
        {
            for (ulong a = Start; a < Start + bytes; a += Page.Size)
            {
                cpu.Write(a, (long)a);
            }
        }
        using (Space.MmapLock.Read())
        {
            _vma = Space.Vmas.Find(Start)!;
        }
    }

    /// <summary>Bytes migrated each way.</summary>
    public ulong Bytes { get; }

    /// <summary>The machine's memory.</summary>
    public PhysicalMemory Memory { get; }

    /// <summary>The device-private page map.</summary>
    public DevicePageMap Map { get; }

    /// <summary>The address space.</summary>
    public AddressSpace Space { get; }

    /// <summary>First address of the range.</summary>
    public ulong Start { get; }

    /// <summary>Migrates the whole range to device memory; returns the pages moved.</summary>
    public long ToDevice() => MigrateAll(toDevice: true);

    /// <summary>Migrates the whole range back to RAM; returns the pages moved.</summary>
    public long ToRam() => MigrateAll(toDevice: false);

    /// <summary>True when the first word of every page still holds its address (no data lost in the round trip).</summary>
    public bool DataIntact()
    {
        using var cpu = new Cpu(Space);
        for (ulong a = Start; a < Start + Bytes; a += Page.Size)
        {
            if (cpu.Read<long>(a) != (long)a)
            {
                return false;
            }
        }
        return true;
    }

    private long MigrateAll(bool toDevice)
    {
        long moved = 0;
        Space.MmapLock.EnterRead();
        try
        {
            for (ulong a = Start; a < Start + Bytes; a += ChunkPages * (ulong)Page.Size)
            {
                moved += MigrateChunkLocked(a, toDevice, Page.NoPfn);
            }
        }
        finally
        {
            Space.MmapLock.ExitRead();
        }
        return moved;
    }

    private long MigrateChunkLocked(ulong start, bool toDevice, ulong faultPage)
    {
        bool fault = faultPage != Page.NoPfn;
        int n = fault ? 1 : ChunkPages;
        ulong[] src = fault ? new ulong[1] : _src, dst = fault ? new ulong[1] : _dst;
        Array.Clear(src, 0, n);
        Array.Clear(dst, 0, n);
        // One MigrateVma reused for every chunk (Finalize leaves it ready for the next Setup): no allocation per chunk.
        MigrateVma m = fault ? new MigrateVma() : _migrate;
        m.Vma = _vma;
        m.Start = start;
        m.End = start + ((ulong)n << Page.Shift);
        m.Src = src;
        m.Dst = dst;
        m.PgmapOwner = this;
        m.Flags = toDevice ? MigrateVmaSelect.System : MigrateVmaSelect.DevicePrivate;
        m.FaultPage = faultPage;
        if (m.Setup() != Errno.Ok)
        {
            return 0;
        }
        for (int i = 0; i < n; i++)
        {
            if ((src[i] & MigratePfn.Migrate) == 0)
            {
                continue;
            }
            ulong d = toDevice ? AllocDevicePage() : Memory.Allocate(0);
            if (d == Page.NoPfn)
            {
                continue;
            }
            if (!toDevice)
            {
                Memory.LockFrame(d);
            }
            dst[i] = MigratePfn.Make(d);
        }
        CopyRuns(src, dst, n);
        m.Pages();
        long moved = 0;
        for (int i = 0; i < n; i++)
        {
            moved += (long)(src[i] & MigratePfn.Migrate) >> 1;
        }
        m.Finalize();
        return moved;
    }

    /// <summary>Copies every source page to its destination, one streaming copy (MigrateCopy) per run of contiguous frames on both sides.</summary>
    private void CopyRuns(ulong[] src, ulong[] dst, int n)
    {
        int i = 0;
        while (i < n)
        {
            ulong s = MigratePfn.ToPfn(src[i]), d = MigratePfn.ToPfn(dst[i]);
            if ((src[i] & MigratePfn.Migrate) == 0 || dst[i] == 0)
            {
                i++;
                continue;
            }
            if (s == Page.NoPfn)
            {
                MigrateCopy.ZeroPages(Memory, d);
                i++;
                continue;
            }
            int run = 1;
            while (i + run < n && (src[i + run] & MigratePfn.Migrate) != 0 && dst[i + run] != 0
                && MigratePfn.ToPfn(src[i + run]) == s + (ulong)run && MigratePfn.ToPfn(dst[i + run]) == d + (ulong)run
                && Memory.Address(s + (ulong)run) == Memory.Address(s) + ((long)run << Page.Shift)
                && Memory.Address(d + (ulong)run) == Memory.Address(d) + ((long)run << Page.Shift))
            {
                run++;
            }
            MigrateCopy.CopyPages(Memory, d, s, (ulong)run);
            i += run;
        }
    }

    private ulong AllocDevicePage()
    {
        ulong p;
        lock (_freeLock)
        {
            if (_freeCount == 0)
            {
                return Page.NoPfn;
            }
            p = _free[--_freeCount];
        }
        Memory.InitDevicePage(p);
        Memory.LockFrame(p);
        return p;
    }

    /// <inheritdoc/>
    public void PageFree(ulong pfn)
    {
        lock (_freeLock)
        {
            _free[_freeCount++] = pfn;
        }
    }

    /// <inheritdoc/>
    public Errno MigrateToRam(in DevicePageFault fault)
    {
        ulong pfn = fault.Pfn;
        if (!Memory.TryGet(pfn))
        {
            return Errno.Ok;
        }
        Memory.LockFrame(pfn);
        try
        {
            return MigrateChunkLocked(Page.AlignDown(fault.Address, Page.Size), toDevice: false, pfn) > 0 ? Errno.Ok : Errno.EFAULT;
        }
        finally
        {
            Memory.UnlockFrame(pfn);
            Memory.Put(pfn);
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        Space.Exit();
        Memory.UnregisterDevicePageMap(Map);
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_arena);
        Memory.Dispose();
    }
}
