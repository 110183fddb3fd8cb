using System.Diagnostics;
using System.Runtime.CompilerServices;
using Hetmem.Diagnostics.Scheduling;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Mm;

/// <summary>
/// A simulated process address space (kernel: struct mm_struct): a VMA tree, x86-64 4-level page tables in
/// frames of the <see cref="PhysicalMemory"/>, an mmap lock, split page-table locks, MMU notifiers and the
/// software TLBs of the <see cref="Cpu"/>s attached to it.
/// </summary>
/// <remarks>
/// <para>Locking (see LockOrder.cs): the VMA tree is protected by <see cref="MmapLock"/>; page-table entries
/// change under the split page-table lock of the table holding them (<see cref="PtlFor"/>); upper-level
/// tables are populated lock-free with compare-and-swap. Page-table pages are freed only by munmap/mremap
/// (<c>FreePgTables</c>, under the mmap write lock, after a TLB shootdown) and at <see cref="Exit"/>; tables a huge
/// leaf replaced wait for exit. So walkers under the mmap lock (faults, HmmRange.Fault, GUP) and lock-free Cpu TLB
/// fills (which a shootdown waits for) never read a freed table.</para>
/// <para>Every change of a present entry happens between <c>InvalidateRangeStart</c> and
/// <c>InvalidateRangeEnd</c> (a debug check, <c>AssertInBracket</c>, enforces it where entries are cleared or
/// downgraded), and every frame unmapped by it is released only after a TLB shootdown.</para>
/// <para>Debugging: <see cref="CheckInvariants"/> walks the tables and checks reference and map counts;
/// <see cref="Maps"/> and <see cref="QueryPte"/> show the layout and entries.</para>
/// </remarks>
public sealed unsafe partial class AddressSpace : IMappingSpace, IDisposable
{
    /// <summary>Top of user space (kernel: TASK_SIZE on x86-64 with 4-level tables).</summary>
    public const ulong TaskSize = 0x7FFF_FFFF_F000;
    /// <summary>Lowest mappable address (kernel: mmap_min_addr default).</summary>
    public const ulong MmapMinAddr = 0x10000;
    /// <summary>Where top-down searches start (kernel: mmap_base below the stack gap).</summary>
    public const ulong MmapBase = 0x7F00_0000_0000;
    private const int PtlStripes = 64;

    private readonly Lock[] _ptl = new Lock[PtlStripes];            // immutable array of split page-table locks
    private readonly ulong _pgd;                                    // immutable; PFN of the top-level table
    private readonly List<ulong> _orphanTables = [];                // guarded by _orphanLock; tables replaced by huge leaves
    private readonly Lock _orphanLock = new();
    private int _users = 1;                                         // atomic (kernel: mm_users)
    private int _alive = 1;                                         // atomic 1 until Exit begins
    private long _tableFrames;                                      // atomic; page-table frames in use

    /// <summary>Creates an empty address space over <paramref name="memory"/>.</summary>
    /// <param name="memory">Physical memory for pages and page tables.</param>
    /// <param name="swap">Swap store for anonymous pages (reclaim), or null for none.</param>
    /// <exception cref="MmException">ENOMEM when no frame is left for the top-level table.</exception>
    public AddressSpace(PhysicalMemory memory, SwapStore? swap = null)
    {
        Memory = memory;
        Swap = swap;
        for (int i = 0; i < PtlStripes; i++)
        {
            _ptl[i] = new Lock();
        }
        _pgd = AllocTable();
        if (_pgd == Page.NoPfn)
        {
            MmException.Throw(Errno.ENOMEM, "no frame for the page-global directory");
        }
        Notifiers = new MmuNotifierSubscriptions(this);
        Id = Interlocked.Increment(ref s_nextId);
    }

    private static int s_nextId;

    /// <summary>A small id for traces and maps dumps.</summary>
    public int Id { get; }
    /// <summary>Physical memory backing this space.</summary>
    public PhysicalMemory Memory { get; }
    /// <summary>Swap store, or null.</summary>
    public SwapStore? Swap { get; }
    /// <summary>The mmap lock.</summary>
    public MmapLock MmapLock { get; } = new();
    /// <summary>The VMAs (read under <see cref="MmapLock"/>).</summary>
    public VmaTree Vmas { get; } = new();
    /// <summary>The MMU notifier subscriptions.</summary>
    public MmuNotifierSubscriptions Notifiers { get; }
    /// <summary>True until <see cref="Exit"/> starts.</summary>
    public bool IsAlive => Volatile.Read(ref _alive) != 0;
    /// <summary>Frames used by page tables.</summary>
    public long PageTableFrames => Interlocked.Read(ref _tableFrames);

    /// <summary>
    /// Takes a reference that keeps the address space from being torn down (kernel: mmget_not_zero).
    /// False once <see cref="Exit"/> has started. Pair with <see cref="PutLiveReference"/>.
    /// </summary>
    public bool TryGetLiveReference()
    {
        int u = Volatile.Read(ref _users);
        while (u > 0)
        {
            int seen = Interlocked.CompareExchange(ref _users, u + 1, u);
            if (seen == u)
            {
                if (!IsAlive)
                {
                    PutLiveReference();
                    return false;
                }
                return true;
            }
            u = seen;
        }
        return false;
    }

    /// <summary>Drops a reference taken by <see cref="TryGetLiveReference"/> (kernel: mmput).</summary>
    public void PutLiveReference() => Interlocked.Decrement(ref _users);

    /// <summary>Registers a classic notifier (kernel: mmu_notifier_register; takes the mmap write lock).</summary>
    /// <exception cref="MmException">EINVAL when the space is dead or the notifier is already registered.</exception>
    public void RegisterNotifier(MmuNotifier notifier)
    {
        ArgumentNullException.ThrowIfNull(notifier);
        using (MmapLock.Write())
        {
            if (!IsAlive)
            {
                MmException.Throw(Errno.EINVAL, "cannot register a notifier on a dead address space");
            }
            Notifiers.Register(notifier);
        }
    }

    /// <summary>
    /// Unregisters a classic notifier (kernel: mmu_notifier_unregister): calls its <c>Release</c> if it did not
    /// get one yet, and waits until none of its callbacks runs.
    /// </summary>
    public void UnregisterNotifier(MmuNotifier notifier) => Notifiers.Unregister(notifier);

    // ---- page tables ----------------------------------------------------------------------------------

    internal static int PgdIndex(ulong va) => (int)((va >> 39) & 511);
    internal static int PudIndex(ulong va) => (int)((va >> 30) & 511);
    internal static int PmdIndex(ulong va) => (int)((va >> 21) & 511);
    internal static int PteIndex(ulong va) => (int)((va >> 12) & 511);

    private ulong AllocTable()
    {
        if (Hetmem.Diagnostics.FaultInjection.Enabled && Hetmem.Diagnostics.FaultInjection.ShouldFail(Hetmem.Diagnostics.FaultSites.PageTableAllocation, Memory)) { return Page.NoPfn; }
        ulong pfn = Memory.Allocate(0, zero: true);
        if (pfn != Page.NoPfn)
        {
            Memory.SetFlags(pfn, FrameFlags.PageTable);
            Interlocked.Increment(ref _tableFrames);
        }
        return pfn;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong* TablePtr(ulong pfn) => (ulong*)Memory.Address(pfn);

    /// <summary>
    /// The stripe of the page-table lock protecting <paramref name="entry"/>. Code that holds two page-table locks at
    /// once takes them in increasing stripe order (the locks are striped, so ordering by table address is not enough).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int PtlStripe(ulong* entry) => (int)(((nuint)entry >> 12) % PtlStripes);

    /// <summary>The split page-table lock protecting the entry at <paramref name="entry"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal Lock PtlFor(ulong* entry)
    {
        Lock l = _ptl[PtlStripe(entry)];
        SchedulePoint.BeforeAcquire(l, "ptl");
        return l;
    }

    /// <summary>
    /// Returns the next-level table under <paramref name="entry"/>, allocating it when empty and
    /// <paramref name="alloc"/> is set. Null when the entry is empty (no alloc), a huge leaf, non-present, or memory ran out.
    /// </summary>
    private ulong* NextTable(ulong* entry, bool alloc)
    {
        ulong e = Volatile.Read(ref *entry);
        if (e == 0)
        {
            if (!alloc)
            {
                return null;
            }
            ulong t = AllocTable();
            if (t == Page.NoPfn)
            {
                return null;
            }
            ulong ne = Pte.Make(t, true).Value;
            ulong seen = Interlocked.CompareExchange(ref *entry, ne, 0);
            if (seen != 0)
            {
                FreeTable(t);
                e = seen;
            }
            else
            {
                e = ne;
            }
        }
        var p = new Pte(e);
        if (!p.IsPresent || p.IsHugeLeaf)
        {
            return null;
        }
        return TablePtr(p.Pfn);
    }

    private void FreeTable(ulong pfn)
    {
        Memory.ClearFlags(pfn, FrameFlags.PageTable);
        Memory.Put(pfn);
        Interlocked.Decrement(ref _tableFrames);
    }

    /// <summary>Pointer to the PUD entry for <paramref name="va"/>, or null when the PGD entry is empty and not allocated.</summary>
    internal ulong* PudEntry(ulong va, bool alloc)
    {
        ulong* pud = NextTable(TablePtr(_pgd) + PgdIndex(va), alloc);
        return pud == null ? null : pud + PudIndex(va);
    }

    /// <summary>Pointer to the PMD entry for <paramref name="va"/>, or null (no table, or the PUD is a huge leaf).</summary>
    internal ulong* PmdEntry(ulong va, bool alloc)
    {
        ulong* pud = PudEntry(va, alloc);
        if (pud == null)
        {
            return null;
        }
        ulong* pmd = NextTable(pud, alloc);
        return pmd == null ? null : pmd + PmdIndex(va);
    }

    /// <summary>Pointer to the PTE for <paramref name="va"/>, or null (no table, or a huge leaf above).</summary>
    internal ulong* PteEntry(ulong va, bool alloc)
    {
        ulong* pmd = PmdEntry(va, alloc);
        if (pmd == null)
        {
            return null;
        }
        ulong* pte = NextTable(pmd, alloc);
        return pte == null ? null : pte + PteIndex(va);
    }

    /// <summary>
    /// Walks to the leaf mapping <paramref name="va"/> without allocating (kernel: follow_page / a hardware walk).
    /// Returns the entry and its level (0 = PTE, 9 = PMD, 18 = PUD); an empty result has level of the first
    /// missing table.
    /// </summary>
    internal Pte Lookup(ulong va, out int order, out ulong* slot)
    {
        ulong* pgdE = TablePtr(_pgd) + PgdIndex(va);
        ulong e = Volatile.Read(ref *pgdE);
        order = Page.PudOrder;
        slot = null;
        if (e == 0)
        {
            return default;
        }
        ulong* pudE = TablePtr(new Pte(e).Pfn) + PudIndex(va);
        e = Volatile.Read(ref *pudE);
        slot = pudE;
        if (e == 0 || new Pte(e).IsHugeLeaf || !new Pte(e).IsPresent)
        {
            return new Pte(e);
        }
        ulong* pmdE = TablePtr(new Pte(e).Pfn) + PmdIndex(va);
        e = Volatile.Read(ref *pmdE);
        order = Page.PmdOrder;
        slot = pmdE;
        if (e == 0 || new Pte(e).IsHugeLeaf || !new Pte(e).IsPresent)
        {
            return new Pte(e);
        }
        ulong* pteE = TablePtr(new Pte(e).Pfn) + PteIndex(va);
        order = 0;
        slot = pteE;
        return new Pte(Volatile.Read(ref *pteE));
    }

    /// <summary>Keeps a table that a huge leaf replaced until <see cref="Exit"/> (lock-free walkers may still read it).</summary>
    private void OrphanTable(ulong pfn)
    {
        lock (_orphanLock)
        {
            _orphanTables.Add(pfn);
        }
    }

    /// <summary>Disposes the address space: <see cref="Exit"/> if not done yet.</summary>
    public void Dispose() => Exit();

    [Conditional("DEBUG")]
    internal void AssertMmapLocked() => Debug.Assert(MmapLock.IsHeld, "mmap lock must be held");
}
