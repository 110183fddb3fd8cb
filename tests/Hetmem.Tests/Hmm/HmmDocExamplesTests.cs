using System.Text.RegularExpressions;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;

namespace Hetmem.Tests.Hmm;

/// <summary>The examples of docs/hmm.md, verbatim between the EXAMPLE markers, so they compile and pass.</summary>
public sealed class HmmDocExamplesTests
{
    // EXAMPLE: device
    /// <summary>A minimal mirror: one interval notifier, a device page table, zap under the update lock.</summary>
    private sealed class MiniDevice : IDeviceMirror, IMmuIntervalNotifierOps
    {
        public readonly ulong Start;
        public readonly ulong[] Spte;          // device PTEs, guarded by UpdateLock
        public readonly MmuIntervalNotifier Notifier;

        public MiniDevice(AddressSpace mm, ulong start, ulong pages)
        {
            Start = start;
            Spte = new ulong[pages];
            Notifier = MmuIntervalNotifier.Insert(mm, start, pages * Page.Size, this);
        }

        public Lock UpdateLock { get; } = new();

        // Called by HmmMirrorHelper.FaultAndProgram with UpdateLock held and the sequence checked.
        public Errno ProgramDevice(HmmRange range)
        {
            for (int i = 0; i < range.PageCount; i++)
            {
                ulong e = range.HmmPfns[i];
                Spte[((range.Start - Start) >> Page.Shift) + (ulong)i] = HmmPfn.Has(e, HmmPfnFlags.Valid) ? e : 0;
            }
            return Errno.Ok;
        }

        // The invalidate callback: set the sequence and zap, under the same lock, before returning.
        public bool Invalidate(MmuIntervalNotifier sub, in MmuNotifierRange range, long curSeq)
        {
            lock (UpdateLock)
            {
                sub.SetSeq(curSeq);
                ulong from = Math.Max(range.Start, Start);
                ulong to = Math.Min(range.End, Start + ((ulong)Spte.Length << Page.Shift));
                for (ulong a = from; a < to; a += Page.Size)
                {
                    Spte[(a - Start) >> Page.Shift] = 0;
                }
            }
            return true;
        }
    }
    // END EXAMPLE

    [Fact]
    public void ADeviceMirrorsARangeAndLosesItOnMunmap()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        // EXAMPLE: fault
        ulong va = mm.Mmap(0, 16 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        var dev = new MiniDevice(mm, va, 16);
        var range = new HmmRange(dev.Notifier, va, va + 16 * Page.Size)
        {
            DefaultFlags = HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite,   // fault everything in, writable
        };
        Errno r = HmmMirrorHelper.FaultAndProgram(dev, range);           // read_begin → fault → lock → read_retry → program
        Assert.Equal(Errno.Ok, r);
        Assert.All(dev.Spte, e => Assert.True(HmmPfn.Has(e, HmmPfnFlags.Write)));

        mm.Munmap(va, 4 * Page.Size);                                    // UNMAP: the callback zaps before the pages are freed
        Assert.All(dev.Spte[..4], e => Assert.Equal(0UL, e));
        // END EXAMPLE
        dev.Notifier.Remove();
        mm.Exit();
    }

    [Fact]
    public void ASnapshotReportsWhatIsMappedWithoutFaulting()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        ulong va = mm.Mmap(0, 4 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        var dev = new MiniDevice(mm, va, 4);
        using (var cpu = new Cpu(mm))
        {
            cpu.Write(va, 1L);
        }
        // EXAMPLE: snapshot
        var range = new HmmRange(dev.Notifier, va, va + 4 * Page.Size);   // DefaultFlags = 0, PfnFlagsMask = 0: snapshot
        Errno r;
        do
        {
            range.NotifierSeq = dev.Notifier.ReadBegin();
            using (mm.MmapLock.Read())
            {
                r = range.Fault();
            }
        }
        while (r == Errno.EBUSY);
        Assert.True(HmmPfn.Has(range.HmmPfns[0], HmmPfnFlags.Valid | HmmPfnFlags.Write));
        Assert.Equal(0, HmmPfn.MapOrder(range.HmmPfns[0]));
        Assert.Equal(0UL, range.HmmPfns[1]);                                // not populated: faultable later
        // END EXAMPLE
        dev.Notifier.Remove();
        mm.Exit();
    }

    // EXAMPLE: mirror51
    private sealed class OldDriver : HmmMirror
    {
        public readonly Lock UpdateLock = new();
        public readonly Dictionary<ulong, ulong> Spte = [];   // va → device entry, guarded by UpdateLock

        public override Errno SyncCpuDevicePagetables(HmmUpdate update)
        {
            lock (UpdateLock)
            {
                foreach (ulong va in Spte.Keys.Where(k => k >= update.Start && k < update.End).ToList())
                {
                    Spte.Remove(va);
                }
            }
            return Errno.Ok;
        }
    }
    // END EXAMPLE

    [Fact]
    public void AFiveOneEraDriverRunsItsFaultLoopOnTheFacade()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        ulong va = mm.Mmap(0, 8 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        // EXAMPLE: fault51
        var driver = new OldDriver();
        Assert.Equal(Errno.Ok, driver.Register(mm));                       // hmm_mirror_register
        var range = new HmmMirrorRange(HmmPfnEncoding.NouveauStyle);      // flags/values/pfn_shift of the driver
        Assert.Equal(Errno.Ok, range.Register(mm, va, va + 8 * Page.Size)); // hmm_range_register, page_shift 12
        range.DefaultFlags = range.Encoding.Valid | range.Encoding.Write;
        while (true)
        {
            range.WaitUntilValid(HmmMirrorHelper.DefaultTimeoutMs);
            mm.MmapLock.EnterRead();
            Errno r = range.Fault(block: true, out long valid);
            if (r == Errno.EAGAIN)
            {
                continue;                                                  // mmap lock already released
            }
            if (r == Errno.EBUSY)
            {
                mm.MmapLock.ExitRead();
                continue;
            }
            Assert.Equal(Errno.Ok, r);
            lock (driver.UpdateLock)
            {
                if (!range.Valid)
                {
                    mm.MmapLock.ExitRead();
                    continue;                                              // invalidated since the walk: retry
                }
                for (int i = 0; i < valid; i++)
                {
                    driver.Spte[va + ((ulong)i << Page.Shift)] = range.Pfns[i];
                }
            }
            mm.MmapLock.ExitRead();
            break;
        }
        range.Unregister();
        // END EXAMPLE
        Assert.Equal(8, driver.Spte.Count);
        mm.Munmap(va, Page.Size);
        Assert.Equal(7, driver.Spte.Count);
        driver.Unregister();
        mm.Exit();
    }

    [Fact]
    public void ANicDmaMapsAFaultedRangeAndUnmapsItOnInvalidation()
    {
        using var memory = new PhysicalMemory(64UL << 20);
        var mm = new AddressSpace(memory);
        ulong va = mm.Mmap(0, 4 * Page.Size, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        var dev = new MiniDevice(mm, va, 4);
        // EXAMPLE: dma
        var nic = new DmaDevice(memory, "nic0");                          // device behind an IOMMU with its IOVA allocator
        var map = new HmmDmaMap(nic, 4);                                  // hmm_dma_map_alloc: pfn list + DMA addresses
        var range = new HmmRange(dev.Notifier, va, va + 4 * Page.Size, map.Pfns) { DefaultFlags = HmmPfnFlags.ReqFault | HmmPfnFlags.ReqWrite };
        Assert.Equal(Errno.Ok, HmmMirrorHelper.FaultAndProgram(dev, range));
        ulong dma = map.MapPfn(2);                                        // hmm_dma_map_pfn: sets the sticky DMA_MAPPED bit
        Assert.Equal(Errno.Ok, nic.DmaWrite(dma + 8, BitConverter.GetBytes(42L)));
        using (var cpu = new Cpu(mm))
        {
            Assert.Equal(42L, cpu.Read<long>(va + 2 * Page.Size + 8));
        }
        Assert.True(map.UnmapPfn(2));                                     // from the invalidate callback, under the update lock
        Assert.Equal(Errno.EFAULT, nic.DmaRead(dma, new byte[8]));       // the IOMMU no longer translates it
        // END EXAMPLE
        dev.Notifier.Remove();
        mm.Exit();
    }

    [Fact]
    public void EveryCodeBlockOfTheHmmDocIsInThisFileVerbatim()
    {
        string? root = AppContext.BaseDirectory;
        while (root is not null && !File.Exists(Path.Combine(root, "docs", "hmm.md")))
        {
            root = Path.GetDirectoryName(root);
        }
        Assert.True(root is not null, "docs/hmm.md not found above the test binaries");
        string source = Directory.EnumerateFiles(Path.Combine(root, "tests"), nameof(HmmDocExamplesTests) + ".cs", SearchOption.AllDirectories).First();
        string[] code = File.ReadAllLines(source).Select(l => l.Trim()).ToArray();
        string doc = File.ReadAllText(Path.Combine(root, "docs", "hmm.md"));
        MatchCollection blocks = Regex.Matches(doc, "```csharp\\n(.*?)```", RegexOptions.Singleline);
        Assert.True(blocks.Count >= 5, $"only {blocks.Count} C# blocks in docs/hmm.md");
        foreach (Match m in blocks)
        {
            string[] lines = m.Groups[1].Value.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0).ToArray();
            string[] nonEmpty = code.Where(l => l.Length > 0).ToArray();
            bool found = Enumerable.Range(0, nonEmpty.Length - lines.Length + 1).Any(i => lines.SequenceEqual(nonEmpty.Skip(i).Take(lines.Length)));
            Assert.True(found, $"docs/hmm.md block starting \"{lines[0]}\" is not in {source}");
        }
    }
}
