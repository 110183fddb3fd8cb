using System.Text.RegularExpressions;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Tests.Docs;

/// <summary>
/// The examples of docs/physical.md, docs/storage.md and docs/mm.md, verbatim between the EXAMPLE markers, so they
/// compile and pass; plus the shape every layer page must have and the lock-order page matching LockOrder.cs.
/// </summary>
public sealed class LayerDocExamplesTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("hetmem-docs-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void RamFramesAreRealMemoryWithReferenceCounts()
    {
        // EXAMPLE: physical-ram
        using var memory = new PhysicalMemory(64UL << 20);          // the RAM arena: 4 KiB frames from PFN 0x40000
        long used = memory.UsedFrames;
        ulong pfn = memory.Allocate(order: 0, zero: true);           // buddy allocator; reference count 1
        memory.FrameSpan(pfn)[0] = 0x5a;                             // a frame's bytes are host memory
        Assert.Equal(1, memory.Frame(pfn).RefCount);
        memory.Get(pfn);                                             // a second reference
        Assert.False(memory.Put(pfn));                               // still referenced
        Assert.True(memory.Put(pfn));                                // last reference: back to the buddy allocator
        Assert.Equal(used, memory.UsedFrames);
        // END EXAMPLE
    }

    [Fact]
    public void ADaxNamespaceIsAHostFileWhoseBlocksAreDeviceFrames()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        string path = Path.Combine(_dir, "pmem0");
        // EXAMPLE: physical-dax
        using (var ns = new DaxNamespace(memory, path, 4UL << 20))  // a host file mapped MAP_SHARED (size: 2 MiB multiple)
        {
            Assert.False(memory.IsRam(ns.FirstPfn));                 // devmap frames with their own DevicePageMap
            ns.Block(3)[0] = 42;                                     // block 3 is byte 3 * 4096 of the file
            ns.Flush(3, 1);                                          // msync of that block
        }
        Assert.Equal(42, File.ReadAllBytes(path)[3 * 4096]);         // the data is in the host file
        // END EXAMPLE
    }

    [Fact]
    public void ASharedFileMappingWritesReachTheHostFileOnFsync()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        string dir = _dir;
        // EXAMPLE: storage-pagecache
        using var fs = new PageCacheFileSystem(memory, dir);         // files are host files under dir
        using FileHandle fh = fs.Create("greeting");
        fh.Write(0, "hello"u8);                                      // into the page cache
        var mm = new AddressSpace(memory);
        ulong va = mm.MmapFile(0, Page.Size, Prot.Read | Prot.Write, MapFlags.Shared, fh);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(va, (byte)'j');                                // write fault: page_mkwrite marks the page dirty
        }
        fh.Fsync();                                                  // writeback to the host file
        Assert.Equal("jello", File.ReadAllText(Path.Combine(dir, "greeting")));
        mm.Exit();
        // END EXAMPLE
    }

    [Fact]
    public void AnAlignedDaxMappingUsesPmdEntriesAndNoRam()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        string path = Path.Combine(_dir, "pmem1");
        // EXAMPLE: storage-dax
        using var ns = new DaxNamespace(memory, path, 16UL << 20);
        using var fs = DaxFileSystem.Format(ns);                     // extents are 2 MiB aligned where possible
        using FileHandle fh = fs.Create("table");
        fh.Truncate(4UL << 20);
        var mm = new AddressSpace(memory);
        ulong va = mm.MmapFile(0, 4UL << 20, Prot.Read | Prot.Write, MapFlags.Shared, fh);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(va + Page.PmdSize + 8, 7L);                    // one fault maps 2 MiB of the namespace
        }
        Pte e = mm.QueryPte(va + Page.PmdSize, out int order);
        Assert.Equal(Page.PmdOrder, order);
        Assert.False(memory.IsRam(e.Pfn));                           // the file's blocks themselves, no page cache
        mm.Exit();
        // END EXAMPLE
    }

    [Fact]
    public void ForkSharesPagesCopyOnWriteAndExitGivesEveryFrameBack()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        long before = memory.UsedFrames;
        // EXAMPLE: mm-fork
        var parent = new AddressSpace(memory);
        ulong va = parent.Mmap(0, 16 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(parent))
        {
            cpu.Write(va, 1L);                                       // anonymous write fault: a zeroed page
        }
        AddressSpace child = parent.Fork();                          // both now map the page read-only
        using (var cpu = new Cpu(child))
        {
            cpu.Write(va, 2L);                                       // copy-on-write: the child gets its own copy
        }
        using (var cpu = new Cpu(parent))
        {
            Assert.Equal(1L, cpu.Read<long>(va));
        }
        parent.Munmap(va, 16 * Page.Size);                           // UNMAP bracket, zap, TLB shootdown, free
        child.Exit();
        parent.Exit();
        // END EXAMPLE
        Assert.Equal(before, memory.UsedFrames);
    }

    [Fact]
    public void AnAccessOutsideAnyVmaIsASegmentationFault()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        // EXAMPLE: mm-segv
        var mm = new AddressSpace(memory);
        ulong va = mm.Mmap(0, Page.Size, Prot.Read, MapFlags.Private | MapFlags.Anonymous);
        using (var cpu = new Cpu(mm))
        {
            Assert.Equal(0L, cpu.Read<long>(va));                    // read fault: the shared zero page
            SegmentationFault w = Assert.Throws<SegmentationFault>(() => cpu.Write(va, 1L));
            Assert.Equal(SegvCode.AccErr, w.Code);                   // no write permission
            mm.Munmap(va, Page.Size);
            SegmentationFault r = Assert.Throws<SegmentationFault>(() => cpu.Read<long>(va));
            Assert.Equal(SegvCode.MapErr, r.Code);                   // no VMA any more
        }
        mm.Exit();
        // END EXAMPLE
    }

    private static string Root()
    {
        string? root = AppContext.BaseDirectory;
        while (root is not null && !File.Exists(Path.Combine(root, "docs", "mm.md")))
        {
            root = Path.GetDirectoryName(root);
        }
        Assert.True(root is not null, "docs/mm.md not found above the test binaries");
        return root!;
    }

    [Theory]
    [InlineData("physical.md")]
    [InlineData("storage.md")]
    [InlineData("mm.md")]
    public void EveryCodeBlockOfTheLayerPageIsInThisFileVerbatim(string page)
    {
        string root = Root();
        string source = Directory.EnumerateFiles(Path.Combine(root, "tests"), nameof(LayerDocExamplesTests) + ".cs", SearchOption.AllDirectories).First();
        string[] code = [.. File.ReadAllLines(source).Select(l => l.Trim()).Where(l => l.Length > 0)];
        string doc = File.ReadAllText(Path.Combine(root, "docs", page));
        MatchCollection blocks = Regex.Matches(doc, "```csharp\\n(.*?)```", RegexOptions.Singleline);
        Assert.True(blocks.Count >= 2, $"only {blocks.Count} C# blocks in docs/{page}");
        foreach (Match m in blocks)
        {
            string[] lines = [.. m.Groups[1].Value.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0)];
            bool found = Enumerable.Range(0, code.Length - lines.Length + 1).Any(i => lines.SequenceEqual(code.Skip(i).Take(lines.Length)));
            Assert.True(found, $"docs/{page} block starting \"{lines[0]}\" is not in {source}");
        }
    }

    [Theory]
    [InlineData("diagnostics.md")]
    [InlineData("physical.md")]
    [InlineData("storage.md")]
    [InlineData("mm.md")]
    [InlineData("hmm.md")]
    [InlineData("migration.md")]
    [InlineData("dmirror.md")]
    [InlineData("gpu.md")]
    [InlineData("rdma.md")]
    [InlineData("cli.md")]
    [InlineData("races.md")]
    [InlineData("stress.md")]
    public void EveryLayerPageHasOverviewLockingAndExamplesInThatOrder(string page)
    {
        string[] headings = [.. File.ReadAllLines(Path.Combine(Root(), "docs", page)).Where(l => l.StartsWith("## ", StringComparison.Ordinal))];
        int Index(string name) => Array.FindIndex(headings, h => h.StartsWith("## " + name, StringComparison.Ordinal));
        int o = Index("Overview"), l = Index("Locking"), e = Index("Examples");
        Assert.True(o >= 0 && l > o && e > l, $"docs/{page} headings are: {string.Join(" | ", headings)}");
    }

    [Fact]
    public void TheLockingPageShowsTheTreeOfLockOrderCsVerbatim()
    {
        string root = Root();
        string src = File.ReadAllText(Path.Combine(root, "src", "Hetmem", "LockOrder.cs"));
        Match code = Regex.Match(src, "/// <code>\\n(.*?)/// </code>", RegexOptions.Singleline);
        Assert.True(code.Success, "LockOrder.cs has no <code> tree");
        string[] tree = [.. code.Groups[1].Value.Split('\n').Select(l => l.StartsWith("/// ", StringComparison.Ordinal) ? l[4..] : l.TrimStart('/')).Where(l => l.Length > 0)];
        string doc = File.ReadAllText(Path.Combine(root, "docs", "locking.md"));
        Match block = Regex.Match(doc, "```text\\n(.*?)```", RegexOptions.Singleline);
        Assert.True(block.Success, "docs/locking.md has no ```text block");
        string[] docTree = [.. block.Groups[1].Value.Split('\n').Where(l => l.Length > 0)];
        Assert.Equal(tree, docTree);
        foreach (LockClass c in Enum.GetValues<LockClass>())
        {
            Assert.Contains($"`{c}`", doc, StringComparison.Ordinal);
        }
    }
}
