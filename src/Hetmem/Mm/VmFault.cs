namespace Hetmem.Mm;

/// <summary>Outcome of the fault handler (kernel: vm_fault_t).</summary>
public enum VmFault
{
    /// <summary>The entry now permits the access (or another thread already fixed it); retry the access.</summary>
    Ok,
    /// <summary>Something changed under the handler (a migration, a racing fault); walk again.</summary>
    Retry,
    /// <summary>No valid mapping or no permission (SIGSEGV).</summary>
    SigSegv,
    /// <summary>Beyond end of file, truncated DAX, poison, hugetlb pool exhausted (SIGBUS).</summary>
    SigBus,
    /// <summary>Out of memory.</summary>
    Oom,
    /// <summary>Internal: a huge mapping could not be installed; use the next smaller size.</summary>
    Fallback,
}

/// <summary>Fault request flags (kernel: FAULT_FLAG_*).</summary>
[Flags]
public enum FaultFlags
{
    /// <summary>Read access.</summary>
    None = 0,
    /// <summary>Write access (FAULT_FLAG_WRITE).</summary>
    Write = 1,
    /// <summary>Fault on behalf of another context: GUP, a device (FAULT_FLAG_REMOTE).</summary>
    Remote = 2,
}
