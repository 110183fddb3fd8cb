using Hetmem.Physical;

namespace Hetmem.Mm;

/// <summary>Process exit (kernel: exit_mmap).</summary>
public sealed unsafe partial class AddressSpace
{
    /// <summary>
    /// Tears the address space down (kernel: exit_mmap): RELEASE to interval notifiers and release to classic
    /// notifiers, then every VMA is unmapped (UNMAP brackets), then all page tables are freed. Waits for live
    /// references taken with <see cref="TryGetLiveReference"/> to drain first. Idempotent.
    /// </summary>
    public void Exit()
    {
        if (Interlocked.Exchange(ref _alive, 0) == 0)
        {
            return;
        }
        Interlocked.Decrement(ref _users);
        var spin = new SpinWait();
        while (Volatile.Read(ref _users) > 0)
        {
            spin.SpinOnce();
        }
        Notifiers.Release();
        using (MmapLock.Write())
        {
            if (Vmas.Count > 0)
            {
                UnmapLocked(Vmas.All[0].Start, Vmas.All[^1].End);
            }
            FreeAllTables(_pgd, 3);
            lock (_orphanLock)
            {
                foreach (ulong t in _orphanTables)
                {
                    FreeTable(t);
                }
                _orphanTables.Clear();
            }
            if (Interlocked.Exchange(ref _hugeZeroPfn, Page.NoPfn) != Page.NoPfn)
            {
                Memory.PutHugeZeroPage();
            }
        }
    }

    private void FreeAllTables(ulong table, int level)
    {
        ulong* t = TablePtr(table);
        if (level > 0)
        {
            for (int i = 0; i < 512; i++)
            {
                var e = new Pte(t[i]);
                if (e.IsPresent && !e.IsHugeLeaf)
                {
                    FreeAllTables(e.Pfn, level - 1);
                }
                else if (!e.IsNone)
                {
                    throw new InvalidOperationException($"exit: entry {e} left at level {level} after unmapping every VMA");
                }
            }
        }
        else
        {
            for (int i = 0; i < 512; i++)
            {
                if (t[i] != 0)
                {
                    throw new InvalidOperationException($"exit: PTE {new Pte(t[i])} left after unmapping every VMA");
                }
            }
        }
        FreeTable(table);
    }
}
