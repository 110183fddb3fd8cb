using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Cli.Workloads.Scenario;

/// <summary>What a <see cref="MemoryRig"/> sets up besides the address space.</summary>
internal sealed record RigOptions
{
    /// <summary>Bytes of the DAX namespace file (0 for none); formatted with a <see cref="DaxFileSystem"/>.</summary>
    public ulong DaxBytes { get; init; }

    /// <summary>2 MiB pages in the hugetlbfs pool (0 for none).</summary>
    public ulong HugePages { get; init; }

    /// <summary>Swap slots (0 for no swap).</summary>
    public uint SwapSlots { get; init; }

    /// <summary>Mount a page-cache file system in a temporary host directory.</summary>
    public bool PageCache { get; init; }

    /// <summary>File name of the DAX namespace inside the context's DAX directory.</summary>
    public string DaxFileName { get; init; } = "hetmem-fs.dax";
}

/// <summary>
/// One simulated machine for a workload: the context's <see cref="PhysicalMemory"/>, optionally a page-cache file
/// system in a temporary host directory, a DAX namespace file (in <c>--dax-dir</c> or a temporary directory) with a
/// DAX file system, a hugetlbfs pool, a swap store, and one <see cref="AddressSpace"/> using them. Disposing tears it
/// down in the kernel's order (exit the address spaces, unmount, release the pools) so frame counts can be compared
/// with <see cref="UsedFramesAtStart"/>.
/// </summary>
internal sealed class MemoryRig : IDisposable
{
    private readonly List<AddressSpace> _spaces = [];
    private readonly string? _pageCacheDir;
    private bool _disposed;

    public MemoryRig(WorkloadContext context, RigOptions options)
    {
        Context = context;
        Memory = context.Memory;
        UsedFramesAtStart = Memory.UsedFrames;
        try
        {
            if (options.PageCache)
            {
                _pageCacheDir = Directory.CreateTempSubdirectory("hetmem-pagecache-").FullName;
                PageCache = new PageCacheFileSystem(Memory, _pageCacheDir);
            }
            if (options.DaxBytes > 0)
            {
                string path = Path.Combine(context.DaxDirectory, options.DaxFileName);
                if (File.Exists(path))
                {
                    File.Delete(path);
                }
                Namespace = new DaxNamespace(Memory, path, options.DaxBytes);
                Dax = DaxFileSystem.Format(Namespace);
            }
            if (options.HugePages > 0)
            {
                Pool = new HugetlbPool(Memory, Page.PmdOrder, options.HugePages);
                Hugetlb = new HugetlbFs(Pool);
            }
            if (options.SwapSlots > 0)
            {
                Swap = new SwapStore(options.SwapSlots);
            }
            Mm = NewSpace();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public WorkloadContext Context { get; }

    public PhysicalMemory Memory { get; }

    /// <summary>RAM frames in use when the rig was created (before its pools and caches).</summary>
    public long UsedFramesAtStart { get; }

    public PageCacheFileSystem? PageCache { get; }

    public DaxNamespace? Namespace { get; }

    public DaxFileSystem? Dax { get; }

    public HugetlbPool? Pool { get; }

    public HugetlbFs? Hugetlb { get; }

    public SwapStore? Swap { get; }

    /// <summary>The main address space.</summary>
    public AddressSpace Mm { get; } = null!;

    /// <summary>A further address space on the same machine (exited with the rig).</summary>
    public AddressSpace NewSpace()
    {
        var mm = new AddressSpace(Memory, Swap) { DefaultHugetlb = Hugetlb };
        _spaces.Add(mm);
        return mm;
    }

    /// <summary>Tracks a space created elsewhere (a fork child) so the rig exits it.</summary>
    public AddressSpace Track(AddressSpace mm)
    {
        _spaces.Add(mm);
        return mm;
    }

    /// <summary>Exits every address space, unmounts the file systems and frees the pools and the swap store.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        foreach (AddressSpace mm in _spaces)
        {
            mm.Exit();
        }
        Dax?.Dispose();
        Namespace?.Dispose();
        Hugetlb?.Dispose();
        Pool?.Dispose();
        PageCache?.Dispose();
        Swap?.Dispose();
        if (_pageCacheDir is not null)
        {
            try
            {
                Directory.Delete(_pageCacheDir, recursive: true);
            }
            catch (IOException)
            {
                // best effort: a leftover temporary directory is harmless
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
        if (Namespace is not null && !Context.KeepsDaxFiles)
        {
            try
            {
                File.Delete(Namespace.Path);
            }
            catch (IOException)
            {
            }
        }
    }
}
