using Hetmem.Mm;

namespace Hetmem.Devices.Dmirror.SelfTests;

/// <summary>
/// The equivalent of the kernel's gup_test module (mm/gup_test.c) for hmm_gup_test: one get_user_pages or
/// pin_user_pages call with write intent, then the pages are released.
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
        _ = mm;
        _ = addr;
        _ = kind;
        _ = npages;
        _ = longTerm;
        error = "GUP is missing: AddressSpace.GetUserPages / UnpinUserPages (apis.md (2), src/Hetmem/Mm/AddressSpace.Gup.cs, Mm team) do not exist yet";
        return (int)Errno.EOPNOTSUPP;
    }
}
