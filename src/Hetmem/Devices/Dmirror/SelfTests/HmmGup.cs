using Hetmem.Mm;

namespace Hetmem.Devices.Dmirror.SelfTests;

/// <summary>
/// The equivalent of the kernel's gup_test module (mm/gup_test.c) for hmm_gup_test: one get_user_pages or
/// pin_user_pages call with write intent through <see cref="AddressSpace.GetUserPages"/>, then the pages are released
/// with <see cref="AddressSpace.UnpinUserPages"/> (put_page / unpin_user_pages).
/// </summary>
internal static class Gup
{
    public enum Kind
    {
        /// <summary>GUP_BASIC_TEST: get_user_pages.</summary>
        Basic,
        /// <summary>GUP_FAST_BENCHMARK: get_user_pages_fast.</summary>
        Fast,
        /// <summary>PIN_FAST_BENCHMARK: pin_user_pages_fast.</summary>
        PinFast,
        /// <summary>PIN_LONGTERM_BENCHMARK: pin_user_pages with FOLL_LONGTERM.</summary>
        PinLongTerm,
    }

    /// <summary>0 on success, else a positive errno (kernel test: gup_test_exec returns errno).</summary>
    public static int Exec(AddressSpace mm, ulong addr, Kind kind, int npages, bool longTerm, out string? error)
    {
        GupFlags flags = GupFlags.Write | kind switch
        {
            Kind.Basic => GupFlags.None,
            Kind.Fast => GupFlags.Fast,
            Kind.PinFast => GupFlags.Pin | GupFlags.Fast,
            _ => GupFlags.Pin | GupFlags.LongTerm,
        };
        if (longTerm)
        {
            flags |= GupFlags.LongTerm;
        }
        var pfns = new ulong[npages];
        Errno e = mm.GetUserPages(addr, npages, flags, pfns, out int done);
        if (e != Errno.Ok)
        {
            error = $"GetUserPages(0x{addr:x}, {npages}, {flags}) returned {e}";
            if (e == Errno.EBUSY && (flags & GupFlags.LongTerm) != 0 && AddressSpace.LongTermMigrator is null)
            {
                error += " (missing: no AddressSpace.LongTermMigrator is registered, so a long-term pin cannot migrate device-coherent pages to RAM; the HMM layer is to register migrate_device_coherent_folio)";
            }
            return (int)e;
        }
        mm.UnpinUserPages(pfns.AsSpan(0, done), makeDirty: false);
        if (done != npages)
        {
            error = $"GetUserPages(0x{addr:x}, {npages}, {flags}) referenced only {done} pages";
            return (int)Errno.EFAULT;
        }
        error = null;
        return 0;
    }
}
