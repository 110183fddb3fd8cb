using Hetmem.Mm;
using Hetmem.Storage;
using Hetmem.Tests.Infrastructure;

namespace Hetmem.Tests.HostParity;

/// <summary>One system call of a parity sequence, with addresses relative to the window base.</summary>
internal abstract record ParityOp
{
    public abstract string Describe();
}

internal sealed record MmapOp(long Off, long Length, int Prot, int Flags, int File = -1, long Offset = 0) : ParityOp
{
    public override string Describe() => $"mmap(W{Off:+0;-0}, 0x{Length:x}, prot {Prot}, flags 0x{Flags:x}, file {File}, off 0x{Offset:x})";
}

internal sealed record MunmapOp(long Off, long Length) : ParityOp
{
    public override string Describe() => $"munmap(W{Off:+0;-0}, 0x{Length:x})";
}

internal sealed record MprotectOp(long Off, long Length, int Prot) : ParityOp
{
    public override string Describe() => $"mprotect(W{Off:+0;-0}, 0x{Length:x}, {Prot})";
}

internal sealed record MremapOp(long Off, long OldLength, long NewLength, int Flags, long NewOff = 0) : ParityOp
{
    public override string Describe() => $"mremap(W{Off:+0;-0}, 0x{OldLength:x}, 0x{NewLength:x}, flags {Flags}, W{NewOff:+0;-0})";
}

internal sealed record MadviseOp(long Off, long Length, int Advice) : ParityOp
{
    public override string Describe() => $"madvise(W{Off:+0;-0}, 0x{Length:x}, {Advice})";
}

internal sealed record MsyncOp(long Off, long Length, int Flags) : ParityOp
{
    public override string Describe() => $"msync(W{Off:+0;-0}, 0x{Length:x}, {Flags})";
}

/// <summary>A write of one byte, done only where the mapping is private, anonymous and writable.</summary>
internal sealed record TouchOp(long Off) : ParityOp
{
    public override string Describe() => $"touch(W{Off:+0;-0})";
}

/// <summary>
/// The same address window in this process (host kernel) and in a Hetmem address space: [Base - Guard, Base + Size +
/// Guard) with PROT_NONE guard mappings on both sides, the window itself empty. It sits low in the address space
/// (0x2xxx_xxxx_xxxx), far below where the host kernel places anything it is not asked to, so holes in it stay ours.
/// Two files of <see cref="FilePages"/> pages exist on both sides: file 0 open read-write, file 1 read-only (same
/// inode).
/// </summary>
internal sealed unsafe class ParityWorld : IDisposable
{
    public const ulong Page = 4096;
    public const ulong Size = 64 * Page;
    public const ulong Guard = 16 * Page;
    public const ulong FilePages = 64;
    private const int ProtNone = 0, MapPrivate = 2, MapAnonymous = 0x20, MapFixed = 0x10, MapNoReserve = 0x4000, MapFixedNoReplace = 0x100000;

    private readonly MmTestBed _bed = new();
    private readonly ScratchDir _dir = new();
    private readonly int[] _hostFds = new int[2];
    private readonly FileHandle[] _files = new FileHandle[2];
    private readonly Cpu _cpu;
    private readonly List<(ulong Address, ulong Length)> _strays = [];

    public ParityWorld()
    {
        Mm = _bed.NewSpace();
        _cpu = _bed.Cpu(Mm);
        // Find a free low window on the host.
        ulong candidate = 0x2000_0000_0000UL + (ulong)Random.Shared.Next(0, 1 << 16) * 0x1_0000_0000UL / 16;
        candidate &= ~(2UL * 1024 * 1024 - 1);
        for (int attempt = 0; ; attempt++)
        {
            Errno e = HostKernel.Mmap(candidate - Guard, Size + 2 * Guard, ProtNone, MapPrivate | MapAnonymous | MapNoReserve | MapFixedNoReplace, -1, 0, out _);
            if (e == Errno.Ok)
            {
                break;
            }
            Assert.True(attempt < 64, $"no free host window near 0x{candidate:x}: {e}");
            candidate += 0x4000_0000;
        }
        Base = candidate;
        Assert.Equal(Errno.Ok, HostKernel.Munmap(Base, Size));
        Mm.Mmap(Base - Guard, Size + 2 * Guard, Hetmem.Mm.Prot.None, MapFlags.Private | MapFlags.Anonymous | MapFlags.NoReserve | MapFlags.Fixed);
        Mm.Munmap(Base, Size);

        string path = _dir.File("parity");
        _hostFds[0] = HostKernel.Open(path, HostKernel.OReadWrite | HostKernel.OCreate | HostKernel.OTruncate, 0x1A4);
        Assert.True(_hostFds[0] >= 0);
        Assert.Equal(0, HostKernel.Ftruncate(_hostFds[0], (long)(FilePages * Page)));
        _hostFds[1] = HostKernel.Open(path, HostKernel.OReadOnly, 0);
        _files[0] = _bed.PageCache.Create("parity");
        _files[0].Truncate(FilePages * Page);
        _files[1] = _bed.PageCache.Open("parity", FileAccess.Read);
    }

    public AddressSpace Mm { get; }

    public ulong Base { get; }

    public List<string> HostLayout() => HostKernel.Layout(Base - Guard, Base + Size + Guard);

    public List<string> HetmemLayout() => HostKernel.Layout(Mm, Base - Guard, Base + Size + Guard);

    /// <summary>Runs <paramref name="op"/> on both sides and returns both outcomes (errno, returned address).</summary>
    public (Errno Host, ulong HostResult, Errno Hetmem, ulong HetmemResult) Run(ParityOp op)
    {
        ulong A(long off) => (ulong)((long)Base + off);
        Errno he = Errno.Ok, me = Errno.Ok;
        ulong hr = 0, mr = 0;
        try
        {
            switch (op)
            {
                case MmapOp m:
                    he = HostKernel.Mmap(A(m.Off), (ulong)m.Length, m.Prot, m.Flags, m.File < 0 ? -1 : _hostFds[m.File], (ulong)m.Offset, out hr);
                    me = Call(() => mr = m.File < 0
                        ? Mm.Mmap(A(m.Off), (ulong)m.Length, (Prot)m.Prot, (MapFlags)m.Flags, null, (ulong)m.Offset)
                        : Mm.MmapFile(A(m.Off), (ulong)m.Length, (Prot)m.Prot, (MapFlags)m.Flags, _files[m.File], (ulong)m.Offset));
                    break;
                case MunmapOp u:
                    he = HostKernel.Munmap(A(u.Off), (ulong)u.Length);
                    me = Call(() => Mm.Munmap(A(u.Off), (ulong)u.Length));
                    break;
                case MprotectOp p:
                    he = HostKernel.Mprotect(A(p.Off), (ulong)p.Length, p.Prot);
                    me = Call(() => Mm.Mprotect(A(p.Off), (ulong)p.Length, (Prot)p.Prot));
                    break;
                case MremapOp r:
                    he = HostKernel.Mremap(A(r.Off), (ulong)r.OldLength, (ulong)r.NewLength, r.Flags, A(r.NewOff), out hr);
                    me = Call(() => mr = Mm.Mremap(A(r.Off), (ulong)r.OldLength, (ulong)r.NewLength, (MremapFlags)r.Flags, A(r.NewOff)));
                    if (he == Errno.Ok && (hr < Base - Guard || hr >= Base + Size + Guard))
                    {
                        _strays.Add((hr, (ulong)r.NewLength));
                    }
                    break;
                case MadviseOp a:
                    he = HostKernel.Madvise(A(a.Off), (ulong)a.Length, a.Advice);
                    me = Call(() => Mm.Madvise(A(a.Off), (ulong)a.Length, (Advice)a.Advice));
                    break;
                case MsyncOp s:
                    he = HostKernel.Msync(A(s.Off), (ulong)s.Length, s.Flags);
                    me = Call(() => Mm.Msync(A(s.Off), (ulong)s.Length, (AddressSpace.MsyncFlags)s.Flags));
                    break;
                case TouchOp t:
                    MapsEntry? m2 = Mm.Maps().Cast<MapsEntry?>().FirstOrDefault(x => x!.Value.Start <= A(t.Off) && A(t.Off) < x.Value.End);
                    if (m2 is { Kind: VmaKind.Anonymous, Perms: ['r', 'w', _, 'p'] })
                    {
                        HostKernel.Touch(A(t.Off), 1);
                        _cpu.Write(A(t.Off), (byte)1);
                    }
                    break;
            }
        }
        catch (SegmentationFault)
        {
            me = Errno.EFAULT;
        }
        return (he, hr, me, mr);
    }

    private static Errno Call(Action a)
    {
        try
        {
            a();
            return Errno.Ok;
        }
        catch (MmException e)
        {
            return e.Errno;
        }
    }

    public void Dispose()
    {
        HostKernel.Munmap(Base - Guard, Size + 2 * Guard);
        foreach ((ulong a, ulong l) in _strays)
        {
            HostKernel.Munmap(a, l);
        }
        HostKernel.Close(_hostFds[0]);
        HostKernel.Close(_hostFds[1]);
        _files[1].Dispose();
        _files[0].Dispose();
        _bed.Dispose();
        _dir.Dispose();
    }
}
