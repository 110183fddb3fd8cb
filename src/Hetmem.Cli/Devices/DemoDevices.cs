using Hetmem.Mm;

namespace Hetmem.Cli.Devices;

/// <summary>
/// Every device Hetmem has, as demo participants: the scenario workloads ask this list for the devices that mirror
/// their address space. A device joins by adding a factory here (its adapter implements <see cref="IDemoDevice"/>).
/// </summary>
internal static class DemoDevices
{
    /// <summary>Factories in order: (family, create from the address space).</summary>
    public static IReadOnlyList<(string Family, Func<AddressSpace, IDemoDevice> Create)> Factories { get; } =
    [
        ("mirror", mm => new MiniMirror("mirror0", mm)),
        ("mirror", mm => new MiniMirror("mirror1", mm)),
        ("dmirror", mm => new DmirrorDemoDevice(mm)),
        ("gpu", mm => new GpuDemoDevice(mm)),
        ("rdma", mm => new RdmaDemoDevice(mm)),
    ];

    /// <summary>Creates every device over <paramref name="mm"/>; a device that cannot start is disposed with the others on failure.</summary>
    public static List<IDemoDevice> CreateAll(AddressSpace mm)
    {
        var list = new List<IDemoDevice>();
        try
        {
            foreach ((string _, Func<AddressSpace, IDemoDevice> create) in Factories)
            {
                list.Add(create(mm));
            }
            return list;
        }
        catch
        {
            foreach (IDemoDevice d in list)
            {
                d.Dispose();
            }
            throw;
        }
    }
}
