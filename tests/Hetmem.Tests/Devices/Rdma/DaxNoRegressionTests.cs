using Hetmem.Devices.Rdma;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;
using static Hetmem.Tests.Devices.Rdma.RdmaTestBed;

namespace Hetmem.Tests.Devices.Rdma;

/// <summary>
/// The reason the seed's DAX patch existed: RDMA on-demand paging worked on DAX files through get_user_pages, and
/// moving ODP onto HMM must not lose that. The same table of remote operations runs on every memory kind.
/// </summary>
public sealed class DaxNoRegressionTests : IDisposable
{
    private const AccessFlags Odp = AccessFlags.LOCAL_WRITE | AccessFlags.REMOTE_WRITE | AccessFlags.REMOTE_READ
        | AccessFlags.REMOTE_ATOMIC | AccessFlags.FLUSH_PERSISTENT | AccessFlags.FLUSH_GLOBAL | AccessFlags.ON_DEMAND;

    private readonly RdmaTestBed _bed = new();

    public void Dispose() => _bed.Dispose();

    public static TheoryData<MemoryKind> Kinds => [MemoryKind.Anonymous, MemoryKind.PageCache, MemoryKind.DaxPmd, MemoryKind.DaxPud, MemoryKind.Hugetlb];

    /// <summary>(name, offset, length): READ/WRITE windows crossing a 4 KiB and a 2 MiB boundary, and page-local ones.</summary>
    private static readonly (string Name, ulong Offset, int Length)[] s_windows =
    [
        ("crossing 4 KiB", Page.Size - 100, 300),
        ("crossing 2 MiB", Page.PmdSize - 3000, 6000),
        ("first bytes", 0, 64),
        ("last bytes", MappedMemory.Bytes - 64, 64),
    ];

    /// <summary>Atomic targets either side of the same boundaries.</summary>
    private static readonly ulong[] s_atomicOffsets = [Page.Size - 8, Page.Size, Page.PmdSize - 8, Page.PmdSize];

    [Theory]
    [MemberData(nameof(Kinds))]
    public void TheRemoteOperationTablePassesOnAnOdpRegion(MemoryKind kind)
    {
        using var mem = new MappedMemory(_bed.ServerMm, kind);
        var mr = (OdpRegionBase)_bed.ServerPd.RegMr(mem.Address, MappedMemory.Bytes, Odp | (kind == MemoryKind.Hugetlb ? AccessFlags.HUGETLB : 0));
        RunTable(mem, mr);
        if (mem.ExpectedOrder >= 0)
        {
            Assert.Equal(mem.ExpectedOrder, mr.TranslationOrder(mem.Address + Page.PmdSize));
        }
        ulong probe = mem.Address + Page.PmdSize + 3 * Page.Size;
        ulong leafPfn = _bed.ServerMm.QueryPte(probe, out int cpuOrder).Pfn;
        Assert.Equal(leafPfn + ((probe & (Page.Bytes(cpuOrder) - 1)) >> Page.Shift), mr.TranslatedPfn(probe));
        Assert.Equal(cpuOrder, mr.TranslationOrder(probe));
        mr.Deregister();
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void TheRemoteOperationTablePassesOnAPinnedRegionWhereTheKernelAllowsIt(MemoryKind kind)
    {
        using var mem = new MappedMemory(_bed.ServerMm, kind);
        AccessFlags pinned = Odp & ~AccessFlags.ON_DEMAND;
        if (kind is MemoryKind.DaxPmd or MemoryKind.DaxPud)
        {
            var ex = Assert.Throws<MmException>(() => _bed.ServerPd.RegMr(mem.Address, MappedMemory.Bytes, pinned));
            Assert.Equal(Errno.EOPNOTSUPP, ex.Errno);
            Assert.Equal(0, _bed.ServerPd.RegionCount);
            return;
        }
        var mr = (PinnedMemoryRegion)_bed.ServerPd.RegMr(mem.Address, MappedMemory.Bytes, pinned);
        ulong probe = mem.Address + Page.PmdSize + 3 * Page.Size;
        ulong leafPfn = _bed.ServerMm.QueryPte(probe, out int order).Pfn;
        Assert.Equal(leafPfn + ((probe & (Page.Bytes(order) - 1)) >> Page.Shift), mr.PinnedPfn(probe));
        RunTable(mem, mr);
        mr.Deregister();
    }

    private void RunTable(MappedMemory mem, MemoryRegion mr)
    {
        ulong a = mem.Address;
        int seed = 100;
        foreach ((string name, ulong offset, int length) in s_windows)
        {
            byte[] data = Pattern(length, seed++);
            Assert.True(WcStatus.SUCCESS == _bed.Write(a + offset, mr.Rkey, data), $"{mem.Kind}: WRITE {name}");
            byte[] cpu = new byte[length];
            _bed.ServerCpu.Read(a + offset, cpu);
            Assert.True(data.AsSpan().SequenceEqual(cpu), $"{mem.Kind}: the CPU does not see the WRITE {name}");
            byte[] fromCpu = Pattern(length, seed++);
            _bed.ServerCpu.Write(a + offset, fromCpu);
            (WcStatus s, byte[] back) = _bed.Read(a + offset, mr.Rkey, length);
            Assert.True(s == WcStatus.SUCCESS && fromCpu.AsSpan().SequenceEqual(back), $"{mem.Kind}: READ {name} returned {s} or stale bytes");
        }
        foreach (ulong offset in s_atomicOffsets)
        {
            _bed.ServerCpu.Write(a + offset, 1000L + (long)offset);
            Assert.Equal((WcStatus.SUCCESS, 1000UL + offset), _bed.CompareSwap(a + offset, mr.Rkey, 1000UL + offset, 7));
            Assert.Equal((WcStatus.SUCCESS, 7UL), _bed.FetchAdd(a + offset, mr.Rkey, 5));
            Assert.True(_bed.ServerCpu.Read<long>(a + offset) == 12, $"{mem.Kind}: atomics at 0x{offset:x}");
        }
        Assert.Equal(WcStatus.SUCCESS, _bed.Flush(a, mr.Rkey, MappedMemory.Bytes));
    }

    [Fact]
    public void DaxTranslationsArePmdAndPudSized()
    {
        using var pmd = new MappedMemory(_bed.ServerMm, MemoryKind.DaxPmd);
        using var pud = new MappedMemory(_bed.ServerMm, MemoryKind.DaxPud);
        var mrPmd = (OdpRegionBase)_bed.ServerPd.RegMr(pmd.Address, MappedMemory.Bytes, Odp);
        var mrPud = (OdpRegionBase)_bed.ServerPd.RegMr(pud.Address, 1UL << 30, Odp);
        Assert.Equal(WcStatus.SUCCESS, _bed.Read(pmd.Address + 5000, mrPmd.Rkey, 8).Status);
        Assert.Equal(WcStatus.SUCCESS, _bed.Read(pud.Address + (700UL << 20), mrPud.Rkey, 8).Status);
        Assert.Equal(Page.PmdOrder, mrPmd.TranslationOrder(pmd.Address + 5000));
        Assert.Equal(Page.PudOrder, mrPud.TranslationOrder(pud.Address + (700UL << 20)));
        // One fault window of the huge leaf is mirrored, all translating into the namespace's frames.
        ulong pfn = mrPmd.TranslatedPfn(pmd.Address);
        Assert.True(pmd.Namespace!.PageMap.Contains(pfn));
        Assert.Equal(pfn + 1, mrPmd.TranslatedPfn(pmd.Address + Page.Size));
        Assert.Equal(Page.PmdOrder, mrPmd.TranslationOrder(pmd.Address + Page.PmdSize - 1));
    }

    [Fact]
    public void FlushWritesDaxDataBackSoItSurvivesReopeningTheNamespace()
    {
        using var dir = new RdmaTempDir();
        string path = dir.File("pmem-flush");
        byte[] data = Pattern(3 * Page.Size + 17, 55);
        ulong addr;
        using (var ns = new DaxNamespace(_bed.Memory, path, 16 * MappedMemory.Mib))
        using (DaxFileSystem fs = DaxFileSystem.Format(ns))
        {
            FileHandle f = fs.Create("log");
            f.Truncate(4 * MappedMemory.Mib);
            addr = _bed.ServerMm.Mmap(MappedMemory.AlignedHint(_bed.ServerMm, 4 * MappedMemory.Mib, Page.PmdSize), 4 * MappedMemory.Mib, Prot.Read | Prot.Write, MapFlags.Shared, f.Inode, 0, FileAccess.ReadWrite);
            MemoryRegion mr = _bed.ServerPd.RegMr(addr, 4 * MappedMemory.Mib, Odp);
            Assert.Equal(WcStatus.SUCCESS, _bed.Write(addr + Page.PmdSize - 5000, mr.Rkey, data));
            Assert.Equal(WcStatus.SUCCESS, _bed.Flush(addr + Page.PmdSize - 5000, mr.Rkey, (ulong)data.Length));
            Assert.Equal(WcStatus.SUCCESS, _bed.Flush(0, mr.Rkey, 0, FlushType.PERSISTENT, FlushLevel.MR));
            mr.Deregister();
            _bed.ServerMm.Munmap(addr, 4 * MappedMemory.Mib);
            fs.Sync();
            f.Dispose();
        }
        using var other = new PhysicalMemory(16UL << 20);
        using var ns2 = new DaxNamespace(other, path, 16 * MappedMemory.Mib);
        using DaxFileSystem fs2 = DaxFileSystem.Mount(ns2);
        using FileHandle f2 = fs2.Open("log", FileAccess.Read);
        byte[] back = new byte[data.Length];
        f2.Read(Page.PmdSize - 5000, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public void PunchHoleAndTruncateUnderRemoteReadsNeverExposeFreedOrReusedBlocks()
    {
        const ulong tagA = 0xA11CEUL << 40;
        const ulong tagB = 0xB0B00UL << 40;
        const ulong fileBytes = 8 * MappedMemory.Mib;
        using var dir = new RdmaTempDir();
        using var ns = new DaxNamespace(_bed.Memory, dir.File("pmem-trunc"), 32 * MappedMemory.Mib);
        using DaxFileSystem fs = DaxFileSystem.Format(ns);
        using FileHandle a = fs.Create("a");
        WriteTagged(a, 0, fileBytes, tagA);
        ulong va = _bed.ServerMm.Mmap(MappedMemory.AlignedHint(_bed.ServerMm, fileBytes, Page.PmdSize), fileBytes, Prot.Read | Prot.Write, MapFlags.Shared, a.Inode, 0, FileAccess.ReadWrite);
        var mr = (OdpRegionBase)_bed.ServerPd.RegMr(va, fileBytes, Odp);
        Assert.Equal(WcStatus.SUCCESS, _bed.Read(va, mr.Rkey, 8).Status);
        Assert.Equal(Page.PmdOrder, mr.TranslationOrder(va));

        ulong newSize = 5 * MappedMemory.Mib;
        ulong holeStart = 2 * MappedMemory.Mib;
        ulong holeEnd = 4 * MappedMemory.Mib;
        int truncated = 0;   // 0 before truncate started, 1 after it returned
        long stale = 0;
        long errors = 0;
        long reads = 0;
        string? firstStale = null;
        var rng = new Random(7);
        using var stop = new CancellationTokenSource();
        var reader = new Thread(() =>
        {
            // Remote reads of random windows; every word must be tag A at its own offset, zero (a refaulted hole),
            // or the read fails — never tag B (a block handed to the other file) or a word from the wrong offset.
            while (!stop.IsCancellationRequested)
            {
                ulong off = (ulong)rng.NextInt64(0, (long)(fileBytes / 8) - 64) * 8;
                bool afterTruncate = Volatile.Read(ref truncated) == 1;
                (WcStatus s, byte[] data) = _bed.Read(va + off, mr.Rkey, 512);
                Interlocked.Increment(ref reads);
                if (s != WcStatus.SUCCESS)
                {
                    Interlocked.Increment(ref errors);
                    if (s != WcStatus.REM_ACCESS_ERR || off + 512 <= newSize && afterTruncate)
                    {
                        firstStale ??= $"unexpected {s} at 0x{off:x}";
                        Interlocked.Increment(ref stale);
                    }
                    continue;
                }
                for (int i = 0; i < 512; i += 8)
                {
                    ulong w = (ulong)Le64(data.AsSpan(i));
                    ulong at = off + (ulong)i;
                    bool ok = w == (tagA | at) || w == 0 && (at >= holeStart && at < holeEnd || at >= newSize);
                    if (!ok)
                    {
                        firstStale ??= $"word 0x{w:x} at 0x{at:x}";
                        Interlocked.Increment(ref stale);
                    }
                }
            }
        });
        reader.Start();
        SpinWait.SpinUntil(() => Interlocked.Read(ref reads) > 20, WaitTime);
        a.PunchHole(holeStart, holeEnd - holeStart);
        using FileHandle b = fs.Create("b");
        WriteTagged(b, 0, 4 * MappedMemory.Mib, tagB);          // reuses the punched blocks
        SpinWait.SpinUntil(() => Interlocked.Read(ref reads) > 60, WaitTime);
        var truncate = new Thread(() => a.Truncate(newSize));
        truncate.Start();
        Assert.True(truncate.Join(WaitTime), "truncate did not complete while remote reads ran");
        Volatile.Write(ref truncated, 1);
        WriteTagged(b, 4 * MappedMemory.Mib, 4 * MappedMemory.Mib, tagB); // reuses the truncated blocks
        SpinWait.SpinUntil(() => Interlocked.Read(ref reads) > 120, WaitTime);
        stop.Cancel();
        reader.Join();

        Assert.True(stale == 0, $"{stale} stale words or unexpected errors, first: {firstStale}");
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(va + newSize + Page.Size, mr.Rkey, 8).Status);
        Assert.Equal(WcStatus.REM_ACCESS_ERR, _bed.Read(va + fileBytes - 8, mr.Rkey, 8).Status);
        Assert.Equal((long)(tagA | 8), Le64(_bed.Read(va + 8, mr.Rkey, 8).Data));
        Assert.Equal(0L, Le64(_bed.Read(va + holeStart + 64, mr.Rkey, 8).Data));
        Assert.Equal((long)(tagA | (newSize - 8)), Le64(_bed.Read(va + newSize - 8, mr.Rkey, 8).Data));
        Assert.True(mr.Stats.PageInvalidations > 0);
        mr.Deregister();
        _bed.ServerMm.Munmap(va, fileBytes);
    }

    private static void WriteTagged(FileHandle f, ulong offset, ulong bytes, ulong tag)
    {
        byte[] chunk = new byte[MappedMemory.Mib];
        for (ulong at = offset; at < offset + bytes; at += (ulong)chunk.Length)
        {
            for (int i = 0; i < chunk.Length; i += 8)
            {
                BitConverter.TryWriteBytes(chunk.AsSpan(i), tag | (at + (ulong)i));
            }
            f.Write(at, chunk);
        }
    }
}
