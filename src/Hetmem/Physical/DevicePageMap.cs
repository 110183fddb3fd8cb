namespace Hetmem.Physical;

/// <summary>Kind of a device page map (kernel: enum memory_type).</summary>
public enum MemoryType
{
    /// <summary>Reserved: an unset type is detectable.</summary>
    None = 0,
    /// <summary>Device memory the CPU cannot address; CPU page tables hold device-private entries.</summary>
    DevicePrivate = 1,
    /// <summary>Cache-coherent device memory the CPU maps with ordinary present entries.</summary>
    DeviceCoherent = 2,
    /// <summary>Persistent memory behind a DAX file system.</summary>
    FsDax = 3,
    /// <summary>Device-DAX memory.</summary>
    Generic = 4,
}

/// <summary>What the mm tells a device-private page map's owner when the CPU faults on one of its pages.</summary>
/// <param name="Space">The address space (a <c>Hetmem.Mm.AddressSpace</c>).</param>
/// <param name="Address">Faulting virtual address, page aligned.</param>
/// <param name="Pfn">The device-private PFN the CPU entry points at.</param>
/// <param name="Write">True for a write access.</param>
public readonly record struct DevicePageFault(object Space, ulong Address, ulong Pfn, bool Write);

/// <summary>Callbacks of a device page map (kernel: struct dev_pagemap_ops).</summary>
public interface IDevicePageMapOps
{
    /// <summary>The last reference of a device page was dropped; the driver takes it back (kernel: page_free).</summary>
    void PageFree(ulong pfn);

    /// <summary>
    /// The CPU faulted on a device-private entry (kernel: migrate_to_ram). Called with the mmap lock held for
    /// read. Must migrate at least the faulting page back to RAM and return <see cref="Errno.Ok"/>, or return
    /// an error (EFAULT = SIGBUS, ENOMEM = OOM).
    /// </summary>
    Errno MigrateToRam(in DevicePageFault fault);
}

/// <summary>
/// A range of device frames registered with the physical memory (kernel: struct dev_pagemap, memremap_pages).
/// Serves FS-DAX namespaces, device-private and device-coherent memory.
/// </summary>
/// <remarks>Locking: fields are immutable after registration except the live reference count (atomic).</remarks>
public sealed unsafe class DevicePageMap
{
    private long _refs = 1;          // atomic; 1 = the registration reference; -1 after Kill when drained
    private volatile bool _dying;    // set by Kill; paired with the check in TryGet

    internal DevicePageMap(PhysicalMemory memory, MemoryType type, ulong firstPfn, ulong pageCount, byte* baseAddress, object? owner, IDevicePageMapOps? ops)
    {
        Memory = memory;
        Type = type;
        FirstPfn = firstPfn;
        PageCount = pageCount;
        BaseAddress = baseAddress;
        Owner = owner;
        Ops = ops;
        Frames = new FrameInfo[pageCount];
        for (ulong i = 0; i < pageCount; i++)
        {
            Frames[i].Flags = (uint)FrameFlags.DevMap;
        }
    }

    /// <summary>The physical memory this map is registered with.</summary>
    public PhysicalMemory Memory { get; }
    /// <summary>Memory type.</summary>
    public MemoryType Type { get; }
    /// <summary>First PFN of the range (aligned to 1 GiB so huge mappings are possible).</summary>
    public ulong FirstPfn { get; }
    /// <summary>Number of 4 KiB frames.</summary>
    public ulong PageCount { get; }
    /// <summary>Host address of the first frame's bytes.</summary>
    public byte* BaseAddress { get; }
    /// <summary>Owner cookie compared by hmm_range_fault and migrate_vma (kernel: pgmap->owner).</summary>
    public object? Owner { get; }
    /// <summary>Driver callbacks.</summary>
    public IDevicePageMapOps? Ops { get; }
    internal FrameInfo[] Frames { get; }

    /// <summary>True when <paramref name="pfn"/> lies in this map.</summary>
    public bool Contains(ulong pfn) => pfn - FirstPfn < PageCount;

    /// <summary>Takes a live reference (kernel: get_dev_pagemap); false once the map is being removed.</summary>
    public bool TryGet()
    {
        if (_dying)
        {
            return false;
        }
        Interlocked.Increment(ref _refs);
        if (_dying)
        {
            Put();
            return false;
        }
        return true;
    }

    /// <summary>Drops a reference taken by <see cref="TryGet"/> (kernel: put_dev_pagemap).</summary>
    public void Put() => Interlocked.Decrement(ref _refs);

    /// <summary>Live references other than the registration's.</summary>
    public long LiveReferences => Interlocked.Read(ref _refs) - 1;

    /// <summary>Stops new references and waits until existing ones are dropped (kernel: memunmap_pages kill + wait).</summary>
    public void Kill()
    {
        _dying = true;
        var spin = new SpinWait();
        while (Interlocked.Read(ref _refs) > 1)
        {
            spin.SpinOnce();
        }
    }

    /// <summary>True after <see cref="Kill"/>.</summary>
    public bool IsDying => _dying;
}
