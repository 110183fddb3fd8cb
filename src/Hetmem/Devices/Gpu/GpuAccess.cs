namespace Hetmem.Devices.Gpu;

/// <summary>
/// Access type of a GPU memory access or fault, ordered by how demanding it is (kernel: NVIDIA UVM
/// <c>uvm_fault_access_type_t</c>, nouveau's <c>nouveau_svm_fault_priority</c>): prefetch &lt; read &lt; write &lt; atomic.
/// </summary>
public enum GpuAccess : byte
{
    /// <summary>A speculative (hardware prefetch) access: never needs the page, only a snapshot.</summary>
    Prefetch = 0,
    /// <summary>A load.</summary>
    Read = 1,
    /// <summary>A store.</summary>
    Write = 2,
    /// <summary>An atomic read-modify-write (needs write permission and atomic capability).</summary>
    Atomic = 3,
}

/// <summary>Bit masks of <see cref="GpuAccess"/> values (kernel: UVM's <c>access_type_mask</c> of a coalesced fault).</summary>
[Flags]
public enum GpuAccessMask : byte
{
    /// <summary>No access.</summary>
    None = 0,
    /// <summary>A prefetch fault was seen.</summary>
    Prefetch = 1 << GpuAccess.Prefetch,
    /// <summary>A read fault was seen.</summary>
    Read = 1 << GpuAccess.Read,
    /// <summary>A write fault was seen.</summary>
    Write = 1 << GpuAccess.Write,
    /// <summary>An atomic fault was seen.</summary>
    Atomic = 1 << GpuAccess.Atomic,
}

/// <summary>
/// One entry of the replayable fault buffer (kernel: UVM <c>uvm_fault_buffer_entry_t</c>, nouveau's 32-byte fault
/// entry): which GPU address space faulted, where, how, on which execution unit (uTLB), and when. After batch
/// preprocessing, <see cref="AccessMask"/> and <see cref="Duplicates"/> describe the entries merged into it.
/// </summary>
/// <param name="Space">GPU address-space (VM) id of the faulting context (kernel: the instance pointer's VA space).</param>
/// <param name="Address">Faulting virtual address, 4 KiB aligned.</param>
/// <param name="Access">Access type; after merging, the most demanding one seen.</param>
/// <param name="Unit">Execution unit (uTLB) that faulted.</param>
/// <param name="Timestamp">Stopwatch timestamp of the fault.</param>
/// <param name="AccessMask">All access types merged into this entry.</param>
/// <param name="Duplicates">How many other entries were merged into this one.</param>
public readonly record struct GpuFaultRecord(int Space, ulong Address, GpuAccess Access, int Unit, long Timestamp,
    GpuAccessMask AccessMask = GpuAccessMask.None, int Duplicates = 0);
