using System.Runtime.CompilerServices;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Hmm;

/// <summary>
/// Moves a device-coherent page to RAM before a long-term pin (kernel: migrate_device_coherent_folio, called from
/// check_and_migrate_movable_pages). The mm cannot reference this layer, so it calls through
/// <see cref="AddressSpace.LongTermMigrator"/>, which this class fills when the assembly loads.
/// </summary>
internal static class LongTermPinMigration
{
#pragma warning disable CA2255 // The mm's hook must be set before any GUP runs; the library itself is the only registrant.
    [ModuleInitializer]
    internal static void Register() => AddressSpace.LongTermMigrator ??= MigrateCoherentPage;
#pragma warning restore CA2255

    /// <summary>Migrates the coherent page at <paramref name="address"/> to a fresh RAM page. Mmap read lock held.</summary>
    internal static Errno MigrateCoherentPage(AddressSpace space, ulong address, ulong pfn)
    {
        ulong start = Page.AlignDown(address, Page.Size);
        Vma? vma = space.Vmas.Find(start);
        DevicePageMap? map = space.Memory.FindMap(pfn);
        if (vma is null || map is not { Type: MemoryType.DeviceCoherent })
        {
            return Errno.EFAULT;
        }
        var m = new MigrateVma
        {
            Vma = vma,
            Start = start,
            End = start + Page.Size,
            Src = new ulong[1],
            Dst = new ulong[1],
            PgmapOwner = map.Owner,
            Flags = MigrateVmaSelect.DeviceCoherent,
        };
        Errno e = m.Setup();
        if (e != Errno.Ok)
        {
            return e;
        }
        Errno result = Errno.Ok;
        if ((m.Src[0] & MigratePfn.Migrate) != 0)
        {
            ulong src = MigratePfn.ToPfn(m.Src[0]);
            ulong dst = space.Memory.Allocate(0);
            if (dst == Page.NoPfn)
            {
                result = Errno.ENOMEM;
            }
            else
            {
                space.Memory.LockFrame(dst);
                if (src != Page.NoPfn)
                {
                    space.Memory.CopyFrame(dst, src);
                }
                else
                {
                    space.Memory.ZeroFrames(dst, 1);
                }
                m.Dst[0] = MigratePfn.Make(dst) | (m.Src[0] & MigratePfn.Write);
            }
        }
        m.Pages();
        m.Finalize();
        return result;
    }
}
