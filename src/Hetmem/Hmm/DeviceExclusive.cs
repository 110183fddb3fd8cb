using System.Diagnostics;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Hmm;

/// <summary>
/// Device-exclusive access for device atomics (kernel: make_device_exclusive in mm/rmap.c, 6.15+ semantics).
/// </summary>
/// <remarks>
/// <para>Overview: the CPU page-table entry of one anonymous page is replaced by a device-exclusive entry, so the
/// device may operate on the page atomically; any later CPU access (or fork, or a GUP) restores the ordinary mapping
/// after one CLEAR invalidation, which the device must honour by dropping its mapping.</para>
/// <para>Locking: the caller holds the mmap lock for read. The page is returned locked and referenced; exclusivity
/// is guaranteed until the caller unlocks it (<see cref="PhysicalMemory.UnlockFrame"/>) and drops the reference
/// (<see cref="PhysicalMemory.Put"/>), which it does after mapping the page in its own page table.</para>
/// </remarks>
public static unsafe class DeviceExclusive
{
    private const int MaxAttempts = 64;

    /// <summary>
    /// Makes the page at <paramref name="address"/> exclusive to the device identified by <paramref name="owner"/>
    /// (kernel: make_device_exclusive). Faults the page in writable first (a THP is remapped by PTEs; another
    /// device's exclusive entry is revoked by that fault), sends one MMU_NOTIFY_EXCLUSIVE invalidation with
    /// <paramref name="owner"/> over the page, and installs the device-exclusive entry.
    /// </summary>
    /// <param name="mm">The address space; its mmap lock is held for read by the caller.</param>
    /// <param name="address">Any address in the page.</param>
    /// <param name="owner">The device's owner cookie, carried by the EXCLUSIVE event (its own invalidate callback should ignore it).</param>
    /// <param name="pfn">On Ok, the page, locked and with one reference for the caller.</param>
    /// <returns>Ok; EFAULT when no VMA maps the address, the VMA is not writable, or the write fault fails;
    /// ENOMEM when memory ran out; EOPNOTSUPP for a page that is not an anonymous, non-hugetlb RAM page (file,
    /// shared, DAX, hugetlb, PFN maps, device memory); EBUSY when the entry kept changing under concurrent faults.</returns>
    public static Errno MakeDeviceExclusive(AddressSpace mm, ulong address, object owner, out ulong pfn)
    {
        ArgumentNullException.ThrowIfNull(mm);
        pfn = Page.NoPfn;
        Debug.Assert(mm.MmapLock.IsHeld, "make_device_exclusive needs the mmap lock");
        ulong addr = Page.AlignDown(address, Page.Size);
        Vma? vma = mm.Vmas.Find(addr);
        if (vma is null || (vma.Flags & VmFlags.Write) == 0 || vma.Kind is VmaKind.PfnMap)
        {
            return Errno.EFAULT;
        }
        if (vma.Kind is VmaKind.HugeTlb or VmaKind.Dax or VmaKind.MixedMap)
        {
            return Errno.EOPNOTSUPP;
        }
        PhysicalMemory mem = mm.Memory;
        for (int attempt = 0; attempt < MaxAttempts; attempt++)
        {
            VmFault r = mm.FaultUntilDoneLocked(vma, addr, FaultFlags.Write | FaultFlags.Remote);
            if (r != VmFault.Ok)
            {
                return r == VmFault.Oom ? Errno.ENOMEM : Errno.EFAULT;
            }
            Pte e = mm.Lookup(addr, out int order, out ulong* slot);
            if (order != 0)
            {
                if (order == Page.PmdOrder && e.IsHugeLeaf && !mem.IsRam(e.Pfn))
                {
                    return Errno.EOPNOTSUPP;
                }
                if (order == Page.PmdOrder && e.IsHugeLeaf)
                {
                    mm.TrySplitHugePmdForMigration(Page.AlignDown(addr, Page.PmdSize), slot);
                }
                continue;
            }
            if (!e.IsPresent || !e.IsWritable)
            {
                continue;
            }
            ulong p = e.Pfn;
            if (!mem.IsRam(p) || e.IsSpecial || p == mem.ZeroPfn)
            {
                return Errno.EOPNOTSUPP;
            }
            ref FrameInfo f = ref mem.Frame(p);
            ref FrameInfo head = ref mem.Frame(mem.Head(p));
            if (!head.Has(FrameFlags.Anon) || f.Has(FrameFlags.HugeTlb) || head.Has(FrameFlags.HugeTlb))
            {
                return Errno.EOPNOTSUPP;
            }
            if (!mem.TryGet(p))
            {
                continue;
            }
            mem.LockFrame(p);
            var range = new MmuNotifierRange(mm, addr, addr + Page.Size, MmuNotifierEvent.Exclusive, Owner: owner);
            mm.Notifiers.InvalidateRangeStart(range);
            bool done = false;
            lock (mm.PtlFor(slot))
            {
                var cur = new Pte(*slot);
                if (cur.IsPresent && cur.IsWritable && cur.Pfn == p)
                {
                    if (cur.IsDirty)
                    {
                        mem.SetFlags(p, FrameFlags.Dirty);
                    }
                    *slot = Pte.MakeSwap(SwapEntryType.DeviceExclusive, p, writable: true).Value;
                    done = true;
                }
            }
            if (done)
            {
                mm.FlushTlb();
            }
            mm.Notifiers.InvalidateRangeEnd(range);
            if (done)
            {
                Counters.Inc(Counter.DeviceExclusive);
                pfn = p;
                return Errno.Ok;
            }
            mem.UnlockFrame(p);
            mem.Put(p);
        }
        return Errno.EBUSY;
    }
}
