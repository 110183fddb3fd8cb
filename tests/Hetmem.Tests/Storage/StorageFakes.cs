using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Tests.Storage;

/// <summary>A temporary host directory, deleted with everything in it on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir(string? under = null)
    {
        Path = System.IO.Path.Combine(under ?? System.IO.Path.GetTempPath(), "hetmem-storage-" + Guid.NewGuid().ToString("N"));
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

/// <summary>One VMA of a <see cref="FakeAddressSpace"/> as a file's reverse map sees it.</summary>
internal sealed record FakeMapping(IMappingSpace Space, ulong Start, ulong End, ulong Pgoff) : IFileMapping;

/// <summary>
/// A minimal, real stand-in for the mm: it maps file pages by holding the reference <see cref="IMappable.GetPage"/>
/// returned plus a map count, records every <see cref="UnmapMappingRange"/> call, and drops the references of the
/// entries it zaps, like zap_pte_range does. Leaks show up as unbalanced frame counts.
/// </summary>
internal sealed class FakeAddressSpace : IMappingSpace
{
    private readonly object _lock = new();
    private readonly Dictionary<ulong, (ulong Pfn, int Order, FakeMapping Mapping)> _entries = []; // VA → entry

    public FakeAddressSpace(PhysicalMemory memory) => Memory = memory;

    public PhysicalMemory Memory { get; }

    public List<(ulong Start, ulong End, bool EvenCows)> Unmaps { get; } = [];

    public int MappedEntries
    {
        get
        {
            lock (_lock)
            {
                return _entries.Count;
            }
        }
    }

    /// <summary>Maps <paramref name="file"/> pages [pgoff, pgoff + pages) at <paramref name="start"/> (mmap): registers the VMA.</summary>
    public FakeMapping Map(IMappable file, ulong start, ulong pgoff, ulong pages)
    {
        var m = new FakeMapping(this, start, start + (pages << Page.Shift), pgoff);
        file.Mappings.Add(m);
        return m;
    }

    /// <summary>A fault at <paramref name="va"/>: GetPage under the invalidate lock, then "install" it.</summary>
    public Errno Fault(IMappable file, FakeMapping m, ulong va, bool write, int maxOrder, out ulong pfn, out int order)
    {
        ulong pgoff = m.Pgoff + ((va - m.Start) >> Page.Shift);
        file.InvalidateLock.EnterReadLock();
        try
        {
            Errno e = file.GetPage(pgoff, write, maxOrder, out pfn, out order);
            if (e != Errno.Ok)
            {
                return e;
            }
            ulong key = Page.AlignDown(va, (ulong)Page.Size << order);
            lock (_lock)
            {
                if (_entries.ContainsKey(key))
                {
                    Memory.Put(pfn);
                    return Errno.Ok;
                }
                Memory.AddMap(pfn);
                _entries[key] = (pfn, order, m);
            }
            return Errno.Ok;
        }
        finally
        {
            file.InvalidateLock.ExitReadLock();
        }
    }

    /// <summary>munmap of the whole VMA: zaps its entries and removes it from the file's reverse map.</summary>
    public void Unmap(IMappable file, FakeMapping m)
    {
        ZapLocked(m, m.Start, m.End);
        file.Mappings.Remove(m);
    }

    public void UnmapMappingRange(IFileMapping mapping, ulong start, ulong end, bool evenCows)
    {
        lock (_lock)
        {
            Unmaps.Add((start, end, evenCows));
        }
        ZapLocked((FakeMapping)mapping, start, end);
    }

    private void ZapLocked(FakeMapping m, ulong start, ulong end)
    {
        var dropped = new List<ulong>();
        lock (_lock)
        {
            foreach (KeyValuePair<ulong, (ulong Pfn, int Order, FakeMapping Mapping)> kv in _entries.ToList())
            {
                ulong size = (ulong)Page.Size << kv.Value.Order;
                if (kv.Value.Mapping == m && kv.Key < end && kv.Key + size > start)
                {
                    _entries.Remove(kv.Key);
                    dropped.Add(kv.Value.Pfn);
                }
            }
        }
        foreach (ulong pfn in dropped)
        {
            Memory.RemoveMap(pfn);
            Memory.Put(pfn);
        }
    }
}

/// <summary>Helpers shared by the storage tests.</summary>
internal static class StorageTest
{
    /// <summary>RAM of every test machine: small on purpose.</summary>
    public const ulong RamBytes = 64UL << 20;

    public static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    public static MmException Throws(Errno errno, Action action)
    {
        MmException ex = Assert.Throws<MmException>(action);
        Assert.Equal(errno, ex.Errno);
        return ex;
    }

    public static byte[] ReadAll(Inode file)
    {
        var b = new byte[file.Size];
        int n = file.Read(0, b);
        Assert.Equal(b.Length, n);
        return b;
    }

    /// <summary>Allocates every free frame (so the next allocation fails) and returns them for <see cref="FreeAll"/>.</summary>
    public static List<ulong> Exhaust(PhysicalMemory memory)
    {
        var taken = new List<ulong>();
        for (int order = PhysicalMemory.MaxOrder; order >= 0; order--)
        {
            while (true)
            {
                ulong pfn = memory.Allocate(order);
                if (pfn == Page.NoPfn)
                {
                    break;
                }
                taken.Add(pfn);
            }
        }
        Assert.Equal(0, memory.FreeFrames);
        return taken;
    }

    public static void FreeAll(PhysicalMemory memory, List<ulong> pfns)
    {
        foreach (ulong pfn in pfns)
        {
            memory.Put(pfn);
        }
    }
}
