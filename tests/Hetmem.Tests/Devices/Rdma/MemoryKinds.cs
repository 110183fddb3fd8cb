using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Tests.Devices.Rdma;

/// <summary>The memory kinds the DAX no-regression table runs against.</summary>
public enum MemoryKind
{
    Anonymous,
    PageCache,
    DaxPmd,
    DaxPud,
    Hugetlb,
}

/// <summary>A temporary host directory (under /dev/shm when it exists), deleted on dispose.</summary>
internal sealed class RdmaTempDir : IDisposable
{
    public RdmaTempDir()
    {
        string root = Directory.Exists("/dev/shm") ? "/dev/shm" : System.IO.Path.GetTempPath();
        Path = System.IO.Path.Combine(root, "hetmem-rdma-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }
}

/// <summary>
/// Maps <see cref="Bytes"/> of one memory kind into an address space (shared file mappings for the file kinds) and
/// tears everything down on dispose. DAX namespaces are sparse host files, so a 1 GiB PUD-mapped file costs only the
/// blocks touched.
/// </summary>
internal sealed class MappedMemory : IDisposable
{
    public const ulong Mib = 1UL << 20;
    public const ulong Bytes = 4 * Mib;

    private readonly RdmaTempDir _dir = new();
    private readonly List<IDisposable> _owned = [];

    public MappedMemory(AddressSpace mm, MemoryKind kind)
    {
        Kind = kind;
        switch (kind)
        {
            case MemoryKind.Anonymous:
                Address = mm.Mmap(0, Bytes, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
                break;
            case MemoryKind.PageCache:
            {
                var fs = Own(new PageCacheFileSystem(mm.Memory, _dir.Path));
                FileHandle f = Own(fs.Create("data"));
                f.Truncate(Bytes);
                Address = mm.Mmap(0, Bytes, Prot.Read | Prot.Write, MapFlags.Shared, f.Inode, 0, FileAccess.ReadWrite);
                break;
            }
            case MemoryKind.DaxPmd:
            case MemoryKind.DaxPud:
            {
                ulong fileBytes = kind == MemoryKind.DaxPud ? 1UL << 30 : Bytes;
                Namespace = Own(new DaxNamespace(mm.Memory, _dir.File("pmem0"), kind == MemoryKind.DaxPud ? 3UL << 30 : 64 * Mib));
                DaxFs = Own(DaxFileSystem.Format(Namespace));
                FileHandle f = Own(DaxFs.Create("data"));
                File = (DaxFile)f.Inode;
                f.Truncate(fileBytes);
                Address = mm.Mmap(AlignedHint(mm, fileBytes, kind == MemoryKind.DaxPud ? Page.PudSize : Page.PmdSize), fileBytes,
                    Prot.Read | Prot.Write, MapFlags.Shared, f.Inode, 0, FileAccess.ReadWrite);
                Handle = f;
                break;
            }
            case MemoryKind.Hugetlb:
            {
                var pool = Own(new HugetlbPool(mm.Memory, Page.PmdOrder, Bytes >> (Page.Shift + Page.PmdOrder)));
                var fs = Own(new HugetlbFs(pool));
                FileHandle f = Own(fs.Create("data"));
                f.Truncate(Bytes);
                Address = mm.Mmap(0, Bytes, Prot.Read | Prot.Write, MapFlags.Shared, f.Inode, 0, FileAccess.ReadWrite);
                break;
            }
        }
        Space = mm;
    }

    public MemoryKind Kind { get; }
    public AddressSpace Space { get; }
    public ulong Address { get; }
    public DaxNamespace? Namespace { get; }
    public DaxFileSystem? DaxFs { get; }
    public DaxFile? File { get; }
    public FileHandle? Handle { get; }

    /// <summary>The order the CPU maps this kind with once faulted (0 = 4 KiB, 9 = PMD, 18 = PUD).</summary>
    public int ExpectedOrder => Kind switch
    {
        MemoryKind.DaxPmd or MemoryKind.Hugetlb => Page.PmdOrder,
        MemoryKind.DaxPud => Page.PudOrder,
        _ => -1,
    };

    /// <summary>
    /// A free address aligned to <paramref name="align"/> for <paramref name="bytes"/> (what user space does by hand, and
    /// what the kernel's thp_get_unmapped_area does for DAX files): reserve a larger range, pick the aligned part, free it.
    /// </summary>
    public static ulong AlignedHint(AddressSpace mm, ulong bytes, ulong align)
    {
        ulong r = mm.Mmap(0, bytes + align, Prot.None, MapFlags.Private | MapFlags.Anonymous | MapFlags.NoReserve);
        mm.Munmap(r, bytes + align);
        return Page.AlignUp(r, align);
    }

    private T Own<T>(T d) where T : IDisposable
    {
        _owned.Add(d);
        return d;
    }

    public void Dispose()
    {
        if (Space.IsAlive)
        {
            Space.Munmap(Address, Kind == MemoryKind.DaxPud ? 1UL << 30 : Bytes);
        }
        for (int i = _owned.Count - 1; i >= 0; i--)
        {
            _owned[i].Dispose();
        }
        _dir.Dispose();
    }
}
