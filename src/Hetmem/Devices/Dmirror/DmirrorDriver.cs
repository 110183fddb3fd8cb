using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Devices.Dmirror;

/// <summary>
/// The HMM test driver (kernel: lib/test_hmm.c, module hmm_dmirror): four device nodes over one
/// <see cref="PhysicalMemory"/>, nodes 0 and 1 device-private, nodes 2 and 3 device-coherent (the kernel offers the
/// coherent pair only when loaded with special-purpose memory addresses; Hetmem always simulates it).
/// </summary>
/// <remarks>
/// <para>Overview: <see cref="Open"/> a node for an address space to get a <see cref="DmirrorFile"/>, a mirror of that
/// address space with its own device page table, then drive it with <see cref="DmirrorFile.Ioctl"/>. Each node has its
/// own device memory (see <see cref="DmirrorDevice"/>).</para>
/// <para>Locking: the node table is immutable; each node and file documents its own locks.</para>
/// </remarks>
public sealed class DmirrorDriver : IDisposable
{
    /// <summary>Number of device nodes (kernel: DMIRROR_NDEVICES).</summary>
    public const int DeviceCount = 4;

    private readonly DmirrorDevice[] _devices;   // immutable
    private int _disposed;                       // atomic

    /// <summary>Loads the driver: creates the four nodes, each with one chunk of free device memory (kernel: hmm_dmirror_init).</summary>
    /// <exception cref="MmException">ENOMEM when device memory cannot be registered.</exception>
    public DmirrorDriver(PhysicalMemory memory)
    {
        ArgumentNullException.ThrowIfNull(memory);
        Memory = memory;
        var devices = new List<DmirrorDevice>(DeviceCount);
        try
        {
            for (int id = 0; id < DeviceCount; id++)
            {
                devices.Add(new DmirrorDevice(this, id, id < 2 ? DmirrorMemoryType.DevicePrivate : DmirrorMemoryType.DeviceCoherent));
            }
        }
        catch
        {
            foreach (DmirrorDevice d in devices)
            {
                d.Dispose();
            }
            throw;
        }
        _devices = [.. devices];
    }

    /// <summary>The physical memory the device memory is registered with.</summary>
    public PhysicalMemory Memory { get; }

    /// <summary>The nodes, indexed by node number.</summary>
    public IReadOnlyList<DmirrorDevice> Devices => _devices;

    /// <summary>Node <paramref name="node"/>.</summary>
    /// <exception cref="MmException">ENODEV for a node that does not exist.</exception>
    public DmirrorDevice Device(int node)
    {
        if ((uint)node >= DeviceCount)
        {
            MmException.Throw(Errno.ENODEV, $"/dev/hmm_dmirror{node} does not exist (nodes 0..{DeviceCount - 1})");
        }
        return _devices[node];
    }

    /// <summary>
    /// Opens <c>/dev/hmm_dmirror&lt;node&gt;</c> from a process whose address space is <paramref name="mm"/> (kernel:
    /// dmirror_fops_open): the new file mirrors <paramref name="mm"/> for life through an interval notifier over the
    /// whole address space.
    /// </summary>
    /// <exception cref="MmException">ENODEV for a node that does not exist or a driver that was disposed; EINVAL when
    /// <paramref name="mm"/> has exited.</exception>
    public DmirrorFile Open(int node, AddressSpace mm)
    {
        ArgumentNullException.ThrowIfNull(mm);
        if (Volatile.Read(ref _disposed) != 0)
        {
            MmException.Throw(Errno.ENODEV, "the hmm_dmirror driver was unloaded");
        }
        return new DmirrorFile(Device(node), mm);
    }

    /// <summary>Unloads the driver (kernel: hmm_dmirror_exit): removes every node's chunks. Close the files first.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        foreach (DmirrorDevice d in _devices)
        {
            d.Dispose();
        }
    }
}
