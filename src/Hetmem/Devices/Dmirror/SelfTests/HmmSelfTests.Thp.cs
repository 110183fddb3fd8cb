using System.Diagnostics;
using System.Globalization;
using Hetmem.Mm;

namespace Hetmem.Devices.Dmirror.SelfTests;

/// <summary>GUP, device-private THP migration and the benchmark (hmm-tests.c: hmm_gup_test, migrate_anon_huge_* … benchmark_thp_migration).</summary>
internal static partial class HmmSelfTests
{
    /// <summary>A buffer of 2 × PMD size whose PMD-aligned half is advised <paramref name="advice"/>; mirror = <paramref name="mirrorSize"/> bytes of 0xFF.</summary>
    private static HmmBuffer HugeBuffer(HmmSelf self, Prot prot, Advice? advice, ulong mirrorSize, out ulong size, out ulong npages, out ulong oldPtr)
    {
        HmmProcess p = self.P;
        size = self.PmdSize;
        HmmBuffer buffer = self.NewBuffer(2 * size, mirrorSize);
        p.Memset(buffer.Mirror, 0xFF, mirrorSize);

        buffer.Ptr = p.Mmap(0, 2 * size, prot, PrivAnon);
        self.AssertNe(buffer.Ptr, MapFailed);

        npages = size >> self.PageShift;
        ulong map = HmmSelf.Align(buffer.Ptr, size);
        if (advice is { } a)
        {
            int ret = p.Madvise(map, size, a);
            self.AssertEq(ret, 0);
        }
        oldPtr = buffer.Ptr;
        buffer.Ptr = map;
        return buffer;
    }

    /// <summary>GUP of device pages: plain and fast GUP fault private pages back (coherent stay); long-term pins migrate everything out.</summary>
    private static void HmmGupTest(HmmSelf self)
    {
        HmmProcess p = self.P;
        ulong npages = 4;
        ulong size = npages << self.PageShift;
        HmmBuffer buffer = self.NewBuffer(size, size);
        buffer.Ptr = p.Mmap(0, size, Rw, PrivAnon);
        self.AssertNe(buffer.Ptr, MapFailed);
        p.FillInts(buffer.Ptr, 0, size / 4, i => (int)i);

        int ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

        GupTestExec(self, buffer.Ptr, GupTestCommand.GupBasic, 1, longTerm: false);
        GupTestExec(self, buffer.Ptr + 1 * self.PageSize, GupTestCommand.GupFastBenchmark, 1, longTerm: false);
        GupTestExec(self, buffer.Ptr + 2 * self.PageSize, GupTestCommand.PinFastBenchmark, 1, longTerm: true);
        GupTestExec(self, buffer.Ptr + 3 * self.PageSize, GupTestCommand.PinLongtermBenchmark, 1, longTerm: false);

        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Snapshot, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        byte[] m = p.ReadBytes(buffer.Mirror, (int)npages);
        if (self.Coherent)
        {
            self.AssertEq(m[0], (byte)(DmirrorProt.DevCoherentLocal | DmirrorProt.Write));
            self.AssertEq(m[1], (byte)(DmirrorProt.DevCoherentLocal | DmirrorProt.Write));
        }
        else
        {
            self.AssertEq(m[0], DmirrorProt.Write);
            self.AssertEq(m[1], DmirrorProt.Write);
        }
        self.AssertEq(m[2], DmirrorProt.Write);
        self.AssertEq(m[3], DmirrorProt.Write);

        // Check again the content of the pages: no corrupted data.
        self.AssertInts(buffer.Ptr, 0, size / 4, i => (int)i, "ptr");
        self.BufferFree(buffer);
    }

    /// <summary>The commands of the kernel's gup_test module used by hmm_gup_test.</summary>
    private enum GupTestCommand
    {
        GupBasic,
        GupFastBenchmark,
        PinFastBenchmark,
        PinLongtermBenchmark,
    }

    /// <summary>
    /// kernel test: gup_test_exec — one GUP call of <paramref name="npages"/> pages with write intent, then release
    /// (gup_test: get/pin the pages, then put/unpin them). ASSERT_EQ(…, 0) on its result.
    /// </summary>
    private static void GupTestExec(HmmSelf self, ulong addr, GupTestCommand cmd, int npages, bool longTerm)
    {
        int ret = Gup.Exec(self.P.Mm, addr, cmd switch
        {
            GupTestCommand.GupBasic => Gup.Kind.Basic,
            GupTestCommand.GupFastBenchmark => Gup.Kind.Fast,
            GupTestCommand.PinFastBenchmark => Gup.Kind.PinFast,
            _ => Gup.Kind.PinLongTerm,
        }, npages, longTerm, out string? error);
        self.AssertTrue(ret == 0, $"gup_test_exec({cmd}) == 0, got {ret}: {error}");
    }

    /// <summary>Migrate a never-touched, read-only THP-advised range: holes become zeroed device memory.</summary>
    private static void MigrateAnonHugeEmpty(HmmSelf self)
    {
        HmmBuffer buffer = HugeBuffer(self, Prot.Read, Advice.HugePage, self.PmdSize, out ulong size, out ulong npages, out ulong oldPtr);
        int ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, _ => 0, "mirror");
        buffer.Ptr = oldPtr;
        self.BufferFree(buffer);
    }

    /// <summary>Migrate the huge zero page, then fault it back by reading every element.</summary>
    private static void MigrateAnonHugeZero(HmmSelf self)
    {
        HmmProcess p = self.P;
        HmmBuffer buffer = HugeBuffer(self, Prot.Read, Advice.HugePage, self.PmdSize, out ulong size, out ulong npages, out ulong oldPtr);

        // Initialize a read-only zero huge page.
        int val = p.ReadInt(buffer.Ptr);
        self.AssertEq(val, 0);

        int ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, _ => 0, "mirror");

        // Fault pages back to system memory and check them (stops at the first mismatch).
        self.AssertInts(buffer.Ptr, 0, size / 4, _ => 0, "ptr");
        buffer.Ptr = oldPtr;
        self.BufferFree(buffer);
    }

    /// <summary>Migrate a THP to the device, then MADV_FREE it.</summary>
    private static void MigrateAnonHugeFree(HmmSelf self)
    {
        HmmProcess p = self.P;
        HmmBuffer buffer = HugeBuffer(self, Rw, Advice.HugePage, self.PmdSize, out ulong size, out ulong npages, out ulong oldPtr);
        p.FillInts(buffer.Ptr, 0, size / 4, i => (int)i);

        int ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

        ret = p.Madvise(buffer.Ptr, size, Advice.Free);
        self.AssertEq(ret, 0);
        buffer.Ptr = oldPtr;
        self.BufferFree(buffer);
    }

    /// <summary>
    /// Collapse a range into a THP, migrate it whole (private: one device THP, PMD-mapped device-private entries that
    /// pagemap shows as swapped), then fault it back.
    /// </summary>
    private static void MigrateAnonHugeFault(HmmSelf self)
    {
        HmmProcess p = self.P;
        HmmBuffer buffer = HugeBuffer(self, Rw, null, self.PmdSize, out ulong size, out ulong npages, out ulong oldPtr);
        p.FillInts(buffer.Ptr, 0, size / 4, i => (int)i);

        int ret = p.Madvise(buffer.Ptr, size, Advice.Collapse);
        self.AssertEq(ret, 0);

        ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

        if (!self.Coherent)
        {
            ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Snapshot, buffer, npages);
            self.AssertEq(ret, 0);
            self.AssertEq(buffer.Cpages, npages);
            byte[] m = p.ReadBytes(buffer.Mirror, (int)npages);
            for (ulong i = 0; i < npages; i++)
            {
                self.AssertEq(m[i], (byte)(DmirrorProt.DevPrivateLocal | DmirrorProt.Write | DmirrorProt.Pmd));
            }
            for (ulong i = 0; i < npages; i++)
            {
                ulong entry = p.Mm.PagemapEntry(buffer.Ptr + (i << self.PageShift));
                self.AssertTrue((entry & (1UL << 62)) != 0, $"pagemap entry {i} (0x{entry:x}) has the swap bit");
                self.AssertTrue((entry & (1UL << 63)) == 0, $"pagemap entry {i} (0x{entry:x}) has no present bit");
            }
        }

        self.AssertInts(buffer.Ptr, 0, size / 4, i => (int)i, "ptr");
        buffer.Ptr = oldPtr;
        self.BufferFree(buffer);
    }

    /// <summary>Migrate, then unmap part of the range (a device THP is split), then fault the rest back (6 rounds).</summary>
    private static void MigratePartialUnmapFault(HmmSelf self)
    {
        HmmProcess p = self.P;
        ulong size = self.PmdSize;
        ulong[] offsets = [0, 512 * OneKb, OneMeg];
        for (int useThp = 0; useThp < 2; ++useThp)
        {
            foreach (ulong offset in offsets)
            {
                HmmBuffer buffer = HugeBuffer(self, Rw, useThp != 0 ? Advice.HugePage : Advice.NoHugePage, size, out _, out ulong npages, out ulong oldPtr);
                p.FillInts(buffer.Ptr, 0, size / 4, i => (int)i);

                int ret = self.MigrateSysToDev(self.Fd, buffer, npages);
                self.AssertEq(ret, 0);
                self.AssertEq(buffer.Cpages, npages);
                self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

                p.Munmap(buffer.Ptr + offset, OneMeg);

                // Fault pages back to system memory and check them.
                string round = $"ptr (use_thp={useThp}, offset={offset})";
                self.AssertInts(buffer.Ptr, 0, offset / 4, i => (int)i, round);
                self.AssertInts(buffer.Ptr, (offset + OneMeg) / 4, size / 4, i => (int)i, round);

                buffer.Ptr = oldPtr;
                self.BufferFree(buffer);
            }
        }
    }

    /// <summary>Migrate and mremap (before or after, with or without MREMAP_DONTUNMAP, to aligned and unaligned targets), then fault back (24 rounds).</summary>
    private static void MigrateRemapFault(HmmSelf self)
    {
        HmmProcess p = self.P;
        ulong size = self.PmdSize;
        ulong[] offsets = [0, 512 * OneKb, OneMeg];
        for (int before = 0; before < 2; ++before)
        {
            for (int dontUnmap = 0; dontUnmap < 2; ++dontUnmap)
            {
                for (int useThp = 0; useThp < 2; ++useThp)
                {
                    foreach (ulong offset in offsets)
                    {
                        MremapFlags flags = MremapFlags.MayMove | MremapFlags.Fixed | (dontUnmap != 0 ? MremapFlags.DontUnmap : 0);
                        HmmBuffer buffer = self.NewBuffer(8 * size, size);
                        p.Memset(buffer.Mirror, 0xFF, size);
                        buffer.Ptr = p.Mmap(0, buffer.Size, Rw, PrivAnon);
                        self.AssertNe(buffer.Ptr, MapFailed);

                        ulong npages = size >> self.PageShift;
                        ulong map = HmmSelf.Align(buffer.Ptr, size);
                        int ret = p.Madvise(map, size, useThp != 0 ? Advice.HugePage : Advice.NoHugePage);
                        self.AssertEq(ret, 0);
                        ulong oldPtr = buffer.Ptr;
                        p.Munmap(map + size, size * 2);
                        buffer.Ptr = map;

                        p.FillInts(buffer.Ptr, 0, size / 4, i => (int)i);

                        ulong newPtr = 0;
                        if (before != 0)
                        {
                            newPtr = p.Mremap(map, size, size, flags, map + size + offset);
                            self.AssertNe(newPtr, MapFailed);
                            buffer.Ptr = newPtr;
                        }

                        ret = self.MigrateSysToDev(self.Fd, buffer, npages);
                        self.AssertEq(ret, 0);
                        self.AssertEq(buffer.Cpages, npages);
                        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, $"mirror (before={before}, dont_unmap={dontUnmap}, use_thp={useThp}, offset={offset})");

                        if (before == 0)
                        {
                            newPtr = p.Mremap(map, size, size, flags, map + size + offset);
                            self.AssertNe(newPtr, MapFailed);
                            buffer.Ptr = newPtr;
                        }

                        self.AssertInts(buffer.Ptr, 0, size / 4, i => (int)i, $"ptr (before={before}, dont_unmap={dontUnmap}, use_thp={useThp}, offset={offset})");

                        p.Munmap(newPtr, size);
                        buffer.Ptr = oldPtr;
                        self.BufferFree(buffer);
                    }
                }
            }
        }
    }

    /// <summary>THP migration with a failed device allocation (falls back to base pages) and a failed system allocation on the way back.</summary>
    private static void MigrateAnonHugeErr(HmmSelf self)
    {
        HmmProcess p = self.P;
        ulong size = self.PmdSize;
        HmmBuffer buffer = self.NewBuffer(2 * size, 2 * size);
        p.Memset(buffer.Mirror, 0xFF, 2 * size);

        ulong oldPtr = p.Mmap(0, 2 * size, Rw, PrivAnon);
        self.AssertNe(oldPtr, MapFailed);
        ulong npages = size >> self.PageShift;
        ulong map = HmmSelf.Align(oldPtr, size);
        int ret = p.Madvise(map, size, Advice.HugePage);
        self.AssertEq(ret, 0);
        buffer.Ptr = map;

        p.FillInts(buffer.Ptr, 0, size / 4, i => (int)i);

        // Migrate memory to device but force a THP allocation error.
        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Flags, buffer, (ulong)DmirrorFlags.FailAlloc);
        self.AssertEq(ret, 0);
        ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

        // Try faulting back a single (PAGE_SIZE) page.
        self.AssertEq(p.ReadInt(buffer.Ptr + 2048 * 4), 2048);

        // Unmap and remap the region to reset things.
        ret = p.Munmap(oldPtr, 2 * size);
        self.AssertEq(ret, 0);
        oldPtr = p.Mmap(0, 2 * size, Rw, PrivAnon);
        self.AssertNe(oldPtr, MapFailed);
        map = HmmSelf.Align(oldPtr, size);
        ret = p.Madvise(map, size, Advice.HugePage);
        self.AssertEq(ret, 0);
        buffer.Ptr = map;

        p.FillInts(buffer.Ptr, 0, size / 4, i => (int)i);

        // Migrate the THP to the device.
        ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);

        // Force an allocation error when migrating back a THP resident in the device.
        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Flags, buffer, (ulong)DmirrorFlags.FailAlloc);
        self.AssertEq(ret, 0);

        ret = self.MigrateDevToSys(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(p.ReadInt(buffer.Ptr + 2048 * 4), 2048);

        buffer.Ptr = oldPtr;
        self.BufferFree(buffer);
    }

    /// <summary>Huge zero page migration with a failed device allocation, read back through the old pointer.</summary>
    private static void MigrateAnonHugeZeroErr(HmmSelf self)
    {
        HmmProcess p = self.P;
        ulong size = self.PmdSize;
        HmmBuffer buffer = self.NewBuffer(2 * size, 2 * size);
        p.Memset(buffer.Mirror, 0xFF, 2 * size);

        ulong oldPtr = p.Mmap(0, 2 * size, Prot.Read, PrivAnon);
        self.AssertNe(oldPtr, MapFailed);
        ulong npages = size >> self.PageShift;
        ulong map = HmmSelf.Align(oldPtr, size);
        int ret = p.Madvise(map, size, Advice.HugePage);
        self.AssertEq(ret, 0);
        buffer.Ptr = map;

        // Migrate memory to device but force a THP allocation error.
        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Flags, buffer, (ulong)DmirrorFlags.FailAlloc);
        self.AssertEq(ret, 0);
        ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, _ => 0, "mirror");

        // Try faulting back a single (PAGE_SIZE) page.
        ulong ptr = buffer.Ptr;
        self.AssertEq(p.ReadInt(ptr + 2048 * 4), 0);

        // Unmap and remap the region to reset things.
        ret = p.Munmap(oldPtr, 2 * size);
        self.AssertEq(ret, 0);
        oldPtr = p.Mmap(0, 2 * size, Prot.Read, PrivAnon);
        self.AssertNe(oldPtr, MapFailed);
        map = HmmSelf.Align(oldPtr, size);
        ret = p.Madvise(map, size, Advice.HugePage);
        self.AssertEq(ret, 0);
        buffer.Ptr = map;

        // Initialize buffer in system memory (zero THP page), through the pointer of the old mapping, as the kernel
        // test does: it works because the new mapping is at the same address.
        ret = p.ReadInt(ptr);
        self.AssertEq(ret, 0);

        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Flags, buffer, (ulong)DmirrorFlags.FailAlloc);
        self.AssertEq(ret, 0);
        ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);

        // Fault the device memory back and check it.
        self.AssertInts(buffer.Ptr, 0, size / 4, _ => 0, "ptr");
        buffer.Ptr = oldPtr;
        self.BufferFree(buffer);
    }

    private sealed class BenchmarkResults
    {
        public double SysToDevTime;
        public double DevToSysTime;
        public double ThroughputS2d;
        public double ThroughputD2s;
    }

    /// <summary>kernel test: run_migration_benchmark. 0 on success, else the failing return value.</summary>
    private static int RunMigrationBenchmark(HmmSelf self, bool useThp, ulong bufferSize, int iterations, BenchmarkResults results)
    {
        HmmProcess p = self.P;
        ulong npages = bufferSize / self.PageSize;
        HmmBuffer buffer = self.NewBuffer(bufferSize, bufferSize);
        p.Memset(buffer.Mirror, 0xFF, bufferSize);

        buffer.Ptr = p.Mmap(0, bufferSize, Rw, PrivAnon);
        if (buffer.Ptr == MapFailed)
        {
            return -1;
        }
        int ret = p.Madvise(buffer.Ptr, bufferSize, useThp ? Advice.HugePage : Advice.NoHugePage);
        if (ret != 0)
        {
            return ret;
        }

        // Initialize memory to make sure pages are allocated.
        p.FillInts(buffer.Ptr, 0, bufferSize / 4, i => (int)(i & 0xFF));

        // Warmup iteration.
        ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        if (ret != 0)
        {
            return ret;
        }
        ret = self.MigrateDevToSys(self.Fd, buffer, npages);
        if (ret != 0)
        {
            return ret;
        }

        double s2dTotal = 0;
        double d2sTotal = 0;
        for (int i = 0; i < iterations; i++)
        {
            long start = Stopwatch.GetTimestamp();
            ret = self.MigrateSysToDev(self.Fd, buffer, npages);
            if (ret != 0)
            {
                return ret;
            }
            s2dTotal += Stopwatch.GetElapsedTime(start).TotalMilliseconds;

            start = Stopwatch.GetTimestamp();
            ret = self.MigrateDevToSys(self.Fd, buffer, npages);
            if (ret != 0)
            {
                return ret;
            }
            d2sTotal += Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }

        results.SysToDevTime = s2dTotal / iterations;
        results.DevToSysTime = d2sTotal / iterations;
        double gib = bufferSize / (1024.0 * 1024.0 * 1024.0);
        results.ThroughputS2d = gib / (results.SysToDevTime / 1000.0);
        results.ThroughputD2s = gib / (results.DevToSysTime / 1000.0);

        self.BufferFree(buffer);
        return 0;
    }

    private static void PrintBenchmarkResults(string testName, ulong bufferSize, BenchmarkResults thp, BenchmarkResults regular)
    {
        double s2dImprovement = (regular.SysToDevTime - thp.SysToDevTime) / regular.SysToDevTime * 100.0;
        double d2sImprovement = (regular.DevToSysTime - thp.DevToSysTime) / regular.DevToSysTime * 100.0;
        double tS2dImprovement = (thp.ThroughputS2d - regular.ThroughputS2d) / regular.ThroughputS2d * 100.0;
        double tD2sImprovement = (thp.ThroughputD2s - regular.ThroughputD2s) / regular.ThroughputD2s * 100.0;
        CultureInfo c = CultureInfo.InvariantCulture;
        Log(string.Format(c, "=== {0} ({1:0.0} MB) ===", testName, bufferSize / (1024.0 * 1024.0)));
        Log("                     | With THP        | Without THP     | Improvement");
        Log("---------------------------------------------------------------------");
        Log(string.Format(c, "Sys->Dev Migration   | {0:0.000} ms        | {1:0.000} ms        | {2:0.0}%", thp.SysToDevTime, regular.SysToDevTime, s2dImprovement));
        Log(string.Format(c, "Dev->Sys Migration   | {0:0.000} ms        | {1:0.000} ms        | {2:0.0}%", thp.DevToSysTime, regular.DevToSysTime, d2sImprovement));
        Log(string.Format(c, "S->D Throughput      | {0:0.00} GB/s      | {1:0.00} GB/s      | {2:0.0}%", thp.ThroughputS2d, regular.ThroughputS2d, tS2dImprovement));
        Log(string.Format(c, "D->S Throughput      | {0:0.00} GB/s      | {1:0.00} GB/s      | {2:0.0}%", thp.ThroughputD2s, regular.ThroughputD2s, tD2sImprovement));
    }

    /// <summary>Migrate buffers of 512 KiB … 256 MiB to the device and back, with and without THP; every run must succeed (no timing is asserted).</summary>
    private static void BenchmarkThpMigration(HmmSelf self)
    {
        ulong thpSize = self.PmdSize;
        const int Iterations = 5;
        Log("HMM THP Migration Benchmark");
        Log("---------------------------");
        Log($"System page size: {self.PageSize} bytes");
        (ulong Size, string Name)[] tests =
        [
            (thpSize / 4, "Small Buffer (512KB)"),
            (thpSize / 2, "Half THP Size (1MB)"),
            (thpSize, "Single THP Size (2MB)"),
            (thpSize * 2, "Two THP Size (4MB)"),
            (thpSize * 4, "Four THP Size (8MB)"),
            (thpSize * 8, "Eight THP Size (16MB)"),
            (thpSize * 128, "One twenty eight THP Size (256MB)"),
        ];
        foreach ((ulong size, string name) in tests)
        {
            if (size > int.MaxValue)
            {
                continue;
            }
            var thp = new BenchmarkResults();
            var regular = new BenchmarkResults();
            int r = RunMigrationBenchmark(self, true, size, Iterations, thp);
            self.AssertEq(r, 0);
            r = RunMigrationBenchmark(self, false, size, Iterations, regular);
            self.AssertEq(r, 0);
            PrintBenchmarkResults(name, size, thp, regular);
        }
    }
}
