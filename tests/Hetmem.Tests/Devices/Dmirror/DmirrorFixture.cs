using Hetmem.Devices.Dmirror;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Devices.Dmirror;

/// <summary>A small machine with the dmirror driver and one process; checks on dispose that every RAM frame came back.</summary>
internal sealed class DmirrorFixture : IDisposable
{
    private readonly long _usedAtStart;
    private readonly List<DmirrorFile> _files = [];
    private bool _exited;

    public DmirrorFixture(ulong ramBytes = 64UL << 20)
    {
        Memory = new PhysicalMemory(ramBytes);
        Driver = new DmirrorDriver(Memory);
        _usedAtStart = Memory.UsedFrames;
        Mm = new AddressSpace(Memory);
        Cpu = new Cpu(Mm);
    }

    public PhysicalMemory Memory { get; }
    public DmirrorDriver Driver { get; }
    public AddressSpace Mm { get; }
    public Cpu Cpu { get; }

    public DmirrorFile Open(int node)
    {
        DmirrorFile f = Driver.Open(node, Mm);
        _files.Add(f);
        return f;
    }

    public ulong MapAnon(ulong pages, Prot prot = Prot.Read | Prot.Write)
        => Mm.Mmap(0, pages << Page.Shift, prot, MapFlags.Private | MapFlags.Anonymous);

    public void Fill(ulong addr, ulong pages, Func<int, int> f)
    {
        int[] v = new int[pages * Page.Size / 4];
        for (int i = 0; i < v.Length; i++)
        {
            v[i] = f(i);
        }
        Cpu.Write(addr, System.Runtime.InteropServices.MemoryMarshal.AsBytes(v.AsSpan()));
    }

    public int[] ReadInts(ulong addr, ulong pages)
    {
        int[] v = new int[pages * Page.Size / 4];
        Cpu.Read(addr, System.Runtime.InteropServices.MemoryMarshal.AsBytes(v.AsSpan()));
        return v;
    }

    public Errno Cmd(DmirrorFile f, DmirrorCommand c, ulong addr, ulong ptr, ulong npages, out DmirrorCmd cmd)
    {
        cmd = new DmirrorCmd { Addr = addr, Ptr = ptr, Npages = npages };
        return f.TryIoctl(c, ref cmd, Cpu);
    }

    /// <summary>Closes the files and exits the process; the frame balance is then checked by <see cref="Dispose"/>.</summary>
    public void Exit()
    {
        if (_exited)
        {
            return;
        }
        _exited = true;
        foreach (DmirrorFile f in _files)
        {
            f.Close();
        }
        Cpu.Dispose();
        Mm.Exit();
    }

    public void Dispose()
    {
        Exit();
        long used = Memory.UsedFrames;
        Driver.Dispose();
        Memory.Dispose();
        Assert.Equal(_usedAtStart, used);
    }
}
