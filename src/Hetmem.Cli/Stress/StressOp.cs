using System.Globalization;

namespace Hetmem.Cli.Stress;

/// <summary>What a stress operation does.</summary>
internal enum StressOpKind : byte
{
    /// <summary>A CPU store of a fresh value to a page's first word.</summary>
    CpuWrite,
    /// <summary>A CPU load of a page's first word, checked by the oracle.</summary>
    CpuRead,
    /// <summary>mprotect of a range to read-only (Arg 0) or read-write (Arg 1).</summary>
    Mprotect,
    /// <summary>munmap of a range of an anonymous slot.</summary>
    Munmap,
    /// <summary>mmap MAP_FIXED of fresh anonymous memory over a range of an anonymous slot.</summary>
    Mmap,
    /// <summary>MADV_DONTNEED over a range (anonymous: reads zero after; shared file: values kept).</summary>
    DontNeed,
    /// <summary>MADV_PAGEOUT over a range (values kept; anonymous pages go to swap).</summary>
    PageOut,
    /// <summary>mremap MAYMOVE|FIXED of a whole anonymous slot onto another anonymous slot (Arg).</summary>
    Mremap,
    /// <summary>fork: the child checks its copy of a range, writes it, exits; the parent must not see the child's values.</summary>
    Fork,
    /// <summary>Punch a hole in a shared (page-cache or DAX) file slot's file (reads zero after).</summary>
    PunchHole,
    /// <summary>Truncate a shared (page-cache or DAX) file slot's file to the range start, then back to full size (reads zero after; beyond EOF in between).</summary>
    Truncate,
    /// <summary>Direct reclaim of a few pages of the whole address space (memory pressure).</summary>
    Reclaim,
    /// <summary>dmirror READ of a range (device node Arg), checked by the oracle.</summary>
    DevRead,
    /// <summary>dmirror WRITE of fresh values to a range (device node Arg).</summary>
    DevWrite,
    /// <summary>dmirror MIGRATE_TO_DEV of a range to node Arg (0: private, 2: coherent), its read-back checked.</summary>
    DevMigrate,
    /// <summary>dmirror MIGRATE_TO_SYS of a range (node Arg).</summary>
    DevMigrateBack,
    /// <summary>dmirror EXCLUSIVE of a range (node Arg), its read-back checked.</summary>
    DevExclusive,
    /// <summary>A load through the probe device's own page table (a device TLB), checked by the oracle.</summary>
    ProbeRead,
    /// <summary>A store of a fresh value through the probe device's page table.</summary>
    ProbeWrite,
    /// <summary>A GPU kernel (one thread) loads a page's first word through the GPU MMU, checked by the oracle.</summary>
    GpuLoad,
    /// <summary>A GPU kernel stores a fresh value (the page may migrate to VRAM on first touch).</summary>
    GpuStore,
    /// <summary>A remote client's RDMA_READ of a page's first word through the ODP MR over the arena, checked by the oracle.</summary>
    RemoteRead,
    /// <summary>A remote client's RDMA_WRITE of a fresh value to a page's first word through the ODP MR.</summary>
    RemoteWrite,
}

/// <summary>
/// One generated operation: what, where (slot, first page in the slot, page count) and a kind-specific argument.
/// Generated from the worker's seeded random source only, never from outcomes, so a seed fixes each worker's sequence.
/// </summary>
internal readonly record struct StressOp(StressOpKind Kind, int Slot, int Page, int Pages, int Arg)
{
    /// <summary>Human-readable, e.g. <c>DevRead slot 3 pages [4, +2) arg 0</c>.</summary>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"{Kind} slot {Slot} pages [{Page}, +{Pages}) arg {Arg}");
}

/// <summary>The shape of the arena every worker's generator agrees on.</summary>
/// <param name="Slots">Number of slots.</param>
/// <param name="SlotPages">Pages a slot.</param>
/// <param name="FileSlotEvery">Every n-th slot (n-1, 2n-1, …) is a shared page-cache file mapping; 0 for none.</param>
/// <param name="DaxSlotEvery">Slots 2, n+2, 2n+2, … (n ≥ 3) that are not page-cache slots are MAP_SHARED mappings of
/// a file on a DAX file system; 0 for none.</param>
internal readonly record struct StressLayout(int Slots, int SlotPages, int FileSlotEvery, int DaxSlotEvery = 0)
{
    /// <summary>True when slot <paramref name="slot"/> is a shared page-cache file mapping.</summary>
    public bool IsFileSlot(int slot) => FileSlotEvery > 0 && slot % FileSlotEvery == FileSlotEvery - 1;

    /// <summary>True when slot <paramref name="slot"/> is a shared mapping of a DAX file.</summary>
    public bool IsDaxSlot(int slot) => DaxSlotEvery >= 3 && slot % DaxSlotEvery == 2 && !IsFileSlot(slot);

    /// <summary>True when slot <paramref name="slot"/> maps a file MAP_SHARED (page cache or DAX): truncate and punch
    /// hole apply, munmap/mmap/mremap/fork do not.</summary>
    public bool IsSharedSlot(int slot) => IsFileSlot(slot) || IsDaxSlot(slot);

    /// <summary>True when any slot maps a file.</summary>
    public bool HasFileSlots => FileSlotEvery > 0 || DaxSlotEvery >= 3;

    /// <summary>Pages in the arena.</summary>
    public int Pages => Slots * SlotPages;
}

/// <summary>
/// The seeded generator of one worker's operations. Worker <c>t</c> of seed <c>s</c> always yields the same sequence
/// (<see cref="Random"/> with an explicit seed is deterministic across runs and processes).
/// </summary>
internal sealed class StressOpGenerator
{
    // Relative weights, indexed by StressOpKind.
    private static readonly int[] s_weights =
    [
        22, // CpuWrite
        16, // CpuRead
        4,  // Mprotect
        2,  // Munmap
        3,  // Mmap
        3,  // DontNeed
        2,  // PageOut
        1,  // Mremap
        1,  // Fork
        2,  // PunchHole
        1,  // Truncate
        1,  // Reclaim
        8,  // DevRead
        6,  // DevWrite
        3,  // DevMigrate
        2,  // DevMigrateBack
        2,  // DevExclusive
        9,  // ProbeRead
        4,  // ProbeWrite
        3,  // GpuLoad
        2,  // GpuStore
        4,  // RemoteRead
        3,  // RemoteWrite
    ];

    private static readonly int s_total = s_weights.Sum();

    private readonly Random _random;
    private readonly StressLayout _layout;
    private readonly bool _devices;

    /// <summary>Creates the generator of worker <paramref name="worker"/> for run seed <paramref name="seed"/>.</summary>
    public StressOpGenerator(int seed, int worker, StressLayout layout, bool devices = true)
    {
        _random = new Random(WorkerSeed(seed, worker));
        _layout = layout;
        _devices = devices;
    }

    /// <summary>The seed of worker <paramref name="worker"/>'s random source.</summary>
    public static int WorkerSeed(int seed, int worker) => unchecked((int)((uint)seed * 2654435761u ^ (uint)(worker + 1) * 40503u));

    /// <summary>The next operation.</summary>
    public StressOp Next()
    {
        while (true)
        {
            StressOpKind kind = Pick();
            int slot = _random.Next(_layout.Slots);
            int pages = _random.Next(8) == 0 ? _random.Next(1, _layout.SlotPages + 1) : _random.Next(1, 9);
            int page = _random.Next(_layout.SlotPages - pages + 1);
            int arg = _random.Next(4);
            bool file = _layout.IsSharedSlot(slot);
            switch (kind)
            {
                case StressOpKind.CpuWrite or StressOpKind.CpuRead or StressOpKind.ProbeRead or StressOpKind.ProbeWrite
                    or StressOpKind.GpuLoad or StressOpKind.GpuStore or StressOpKind.RemoteRead or StressOpKind.RemoteWrite:
                    return new StressOp(kind, slot, page, 1, arg);
                case StressOpKind.Munmap or StressOpKind.Mmap or StressOpKind.Mremap or StressOpKind.Fork when file:
                case StressOpKind.PunchHole or StressOpKind.Truncate when !file:
                    continue;
                case StressOpKind.Mremap:
                    int target = _random.Next(_layout.Slots);
                    if (target == slot || _layout.IsSharedSlot(target))
                    {
                        continue;
                    }
                    return new StressOp(kind, slot, 0, _layout.SlotPages, target);
                case StressOpKind.DevMigrate or StressOpKind.DevMigrateBack or StressOpKind.DevExclusive or StressOpKind.DevRead or StressOpKind.DevWrite:
                    // Node 0 (device-private) or node 2 (device-coherent).
                    return new StressOp(kind, slot, page, Math.Min(pages, 8), (arg & 1) * 2);
                default:
                    return new StressOp(kind, slot, page, pages, arg);
            }
        }
    }

    private StressOpKind Pick()
    {
        while (true)
        {
            int r = _random.Next(s_total);
            int k = 0;
            while (r >= s_weights[k])
            {
                r -= s_weights[k];
                k++;
            }
            var kind = (StressOpKind)k;
            if (_devices || kind < StressOpKind.DevRead)
            {
                return kind;
            }
        }
    }
}
