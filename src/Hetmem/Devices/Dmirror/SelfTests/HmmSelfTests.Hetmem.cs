using System.Runtime.InteropServices;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Devices.Dmirror.SelfTests;

/// <summary>
/// What the kernel suite lacks (issue 4): DAX read, write and snapshot through dmirror (PMD and PUD levels), a hole
/// punched or a truncation under a mirrored DAX mapping, and mprotect / munmap racing a device read loop. They run
/// on fixture hmm with the private node 0, like the kernel cases.
/// </summary>
internal static partial class HmmSelfTests
{
    private const ulong Gib = 1UL << 30;

    private const ulong RacePages = 256;
    private const int RaceRounds = 100;

    /// <summary>A 1 MiB anonymous buffer for the race cases (small, so that many rounds fit in a few seconds).</summary>
    private static HmmBuffer RaceBuffer(HmmSelf self, out ulong npages, out ulong size, Func<ulong, int> f)
    {
        HmmProcess p = self.P;
        npages = RacePages;
        size = npages << self.PageShift;
        HmmBuffer buffer = self.NewBuffer(size, size);
        buffer.Ptr = p.Mmap(0, size, Rw, PrivAnon);
        self.AssertNe(buffer.Ptr, MapFailed);
        p.FillInts(buffer.Ptr, 0, size / 4, f);
        return buffer;
    }

    private static TestDef[] HetmemTests =>
    [
        new("dax_read", DaxRead),
        new("dax_write", DaxWrite),
        new("dax_snapshot_pmd_pud", DaxSnapshotPmdPud),
        new("dax_punch_hole", DaxPunchHole),
        new("dax_truncate", DaxTruncate),
        new("mprotect_race", MprotectRace),
        new("munmap_race", MunmapRace),
    ];

    /// <summary>A DAX file system on a sparse namespace file in the machine's temporary directory.</summary>
    private sealed class Dax : IDisposable
    {
        public Dax(HmmSelf self, ulong bytes)
        {
            Ns = new DaxNamespace(self.Env.Memory, Path.Combine(self.Env.TempDir, $"pmem-{Guid.NewGuid():N}"), bytes);
            Fs = DaxFileSystem.Format(Ns);
        }

        public DaxNamespace Ns { get; }
        public DaxFileSystem Fs { get; }

        public void Dispose()
        {
            Fs.Dispose();
            Ns.Dispose();
        }
    }

    private static void WriteIntsToFile(FileHandle f, ulong count, Func<ulong, int> v)
    {
        int[] data = new int[count];
        for (ulong i = 0; i < count; i++)
        {
            data[i] = v(i);
        }
        f.Write(0, MemoryMarshal.AsBytes(data.AsSpan()));
    }

    private static int[] ReadIntsFromFile(FileHandle f, ulong count)
    {
        int[] data = new int[count];
        f.Read(0, MemoryMarshal.AsBytes(data.AsSpan()));
        return data;
    }

    /// <summary>Maps <paramref name="file"/> at an address aligned to <paramref name="align"/> (reserve, then MAP_FIXED over the reservation).</summary>
    private static ulong MapAligned(HmmSelf self, FileHandle file, ulong size, ulong align, Prot prot)
    {
        HmmProcess p = self.P;
        ulong reserve = p.Mmap(0, size + align, Prot.None, PrivAnon);
        self.AssertNe(reserve, MapFailed);
        ulong at = HmmSelf.Align(reserve, align);
        p.Munmap(reserve, size + align);
        ulong addr = p.Mmap(at, size, prot, MapFlags.Shared | MapFlags.Fixed, file);
        self.AssertEq(addr, at);
        return addr;
    }

    /// <summary>The device reads a mirrored DAX file mapping (faults once, sees the file's data).</summary>
    private static void DaxRead(HmmSelf self)
    {
        HmmProcess p = self.P;
        using var dax = new Dax(self, 16 * OneMeg);
        ulong npages = BufferPages(self);
        ulong size = npages << self.PageShift;
        using FileHandle f = dax.Fs.Create("data");
        f.Truncate(size);
        WriteIntsToFile(f, size / 4, i => (int)i * 3);

        HmmBuffer buffer = self.NewBuffer(size, size);
        buffer.Ptr = p.Mmap(0, size, Prot.Read, MapFlags.Shared, f);
        self.AssertNe(buffer.Ptr, MapFailed);

        int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertEq(buffer.Faults, 1UL);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i * 3, "mirror");
        self.BufferFree(buffer);
    }

    /// <summary>The device writes a mirrored DAX file mapping; the file (the namespace) holds the data.</summary>
    private static void DaxWrite(HmmSelf self)
    {
        HmmProcess p = self.P;
        using var dax = new Dax(self, 16 * OneMeg);
        ulong npages = BufferPages(self);
        ulong size = npages << self.PageShift;
        using FileHandle f = dax.Fs.Create("data");
        f.Truncate(size);

        HmmBuffer buffer = self.NewBuffer(size, size);
        buffer.Ptr = p.Mmap(0, size, Rw, MapFlags.Shared, f);
        self.AssertNe(buffer.Ptr, MapFailed);
        p.FillInts(buffer.Mirror, 0, size / 4, i => (int)i ^ 0x5a5a);

        int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Write, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertEq(buffer.Faults, 1UL);

        self.AssertInts(buffer.Ptr, 0, size / 4, i => (int)i ^ 0x5a5a, "ptr");
        int[] data = ReadIntsFromFile(f, size / 4);
        for (ulong i = 0; i < size / 4; i++)
        {
            self.AssertEq(data[i], (int)i ^ 0x5a5a);
        }
        self.BufferFree(buffer);
    }

    private static byte[] SnapshotBytes(HmmSelf self, ulong addr, ulong npages, ulong mirror)
    {
        var b = new HmmBuffer { Ptr = addr, Mirror = mirror };
        int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Snapshot, b, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(b.Cpages, npages);
        return self.P.ReadBytes(mirror, (int)npages);
    }

    /// <summary>
    /// SNAPSHOT of DAX mappings reports the mapping level: a 1 GiB extent mapped at a 1 GiB-aligned address is one PUD
    /// (0x09 read-only, 0x0A after a write), a 2 MiB extent at a 2 MiB-aligned address a PMD (0x05 / 0x06); the device
    /// reads and writes through them.
    /// </summary>
    private static void DaxSnapshotPmdPud(HmmSelf self)
    {
        HmmProcess p = self.P;
        using var dax = new Dax(self, 3 * Gib);
        ulong mirror = p.Malloc(64 * self.PageSize);
        self.AssertNe(mirror, 0UL);

        // PUD: a 1 GiB file at a 1 GiB-aligned address.
        using FileHandle big = dax.Fs.Create("big");
        big.Truncate(Gib);
        ulong pud = MapAligned(self, big, Gib, Gib, Rw);
        self.AssertEq(p.ReadInt(pud), 0);
        self.AssertEq(p.Mm.QueryPte(pud, out int order).IsPresent, true);
        self.AssertEq(order, Page.PudOrder);
        byte[] m = SnapshotBytes(self, pud, 32, mirror);
        foreach (byte b in m)
        {
            self.AssertEq(b, (byte)(DmirrorProt.Read | DmirrorProt.Pud));
        }
        m = SnapshotBytes(self, pud + Gib / 2, 32, mirror);
        foreach (byte b in m)
        {
            self.AssertEq(b, (byte)(DmirrorProt.Read | DmirrorProt.Pud));
        }
        p.WriteInt(pud + 8, 77);
        m = SnapshotBytes(self, pud + Gib - 32 * self.PageSize, 32, mirror);
        foreach (byte b in m)
        {
            self.AssertEq(b, (byte)(DmirrorProt.Write | DmirrorProt.Pud));
        }
        // The device reads and writes through the PUD mapping.
        var buffer = new HmmBuffer { Ptr = pud, Mirror = mirror };
        int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, 16);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, 16UL);
        self.AssertEq(p.ReadInt(mirror + 8), 77);
        p.FillInts(mirror, 0, 16 * self.PageSize / 4, i => (int)i + 1000);
        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Write, buffer, 16);
        self.AssertEq(ret, 0);
        int[] fileInts = ReadIntsFromFile(big, 16 * self.PageSize / 4);
        for (ulong i = 0; i < (ulong)fileInts.Length; i++)
        {
            self.AssertEq(fileInts[i], (int)i + 1000);
        }
        p.Munmap(pud, Gib);

        // PMD: a 4 MiB file at a 2 MiB-aligned address.
        using FileHandle small = dax.Fs.Create("small");
        small.Truncate(4 * OneMeg);
        ulong pmd = MapAligned(self, small, 4 * OneMeg, self.PmdSize, Rw);
        self.AssertEq(p.ReadInt(pmd + self.PmdSize), 0);
        self.AssertEq(p.Mm.QueryPte(pmd + self.PmdSize, out order).IsPresent, true);
        self.AssertEq(order, Page.PmdOrder);
        m = SnapshotBytes(self, pmd + self.PmdSize, 32, mirror);
        foreach (byte b in m)
        {
            self.AssertEq(b, (byte)(DmirrorProt.Read | DmirrorProt.Pmd));
        }
        // The first PMD was never touched: not populated.
        m = SnapshotBytes(self, pmd, 32, mirror);
        foreach (byte b in m)
        {
            self.AssertEq(b, DmirrorProt.None);
        }
        p.WriteInt(pmd + self.PmdSize, 5);
        m = SnapshotBytes(self, pmd + self.PmdSize, 32, mirror);
        foreach (byte b in m)
        {
            self.AssertEq(b, (byte)(DmirrorProt.Write | DmirrorProt.Pmd));
        }
        p.Munmap(pmd, 4 * OneMeg);
        p.Free(mirror, 64 * self.PageSize);
    }

    /// <summary>A hole punched under a mirrored DAX mapping: the device loses those pages (snapshot NONE) and reads zeroes there afterwards.</summary>
    private static void DaxPunchHole(HmmSelf self)
    {
        HmmProcess p = self.P;
        using var dax = new Dax(self, 16 * OneMeg);
        ulong npages = BufferPages(self);
        ulong size = npages << self.PageShift;
        using FileHandle f = dax.Fs.Create("data");
        f.Truncate(size);
        WriteIntsToFile(f, size / 4, i => (int)i + 1);

        HmmBuffer buffer = self.NewBuffer(size, size);
        buffer.Ptr = p.Mmap(0, size, Rw, MapFlags.Shared, f);
        self.AssertNe(buffer.Ptr, MapFailed);
        int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i + 1, "mirror");
        self.AssertTrue(self.Fd.TryGetMirrorEntry(buffer.Ptr + OneMeg, out _, out _, out _), "the device mirrors the page before the punch");

        f.PunchHole(OneMeg, OneMeg);

        // The device lost every page of the hole (the kernel may zap a superset, e.g. a whole PMD, never less).
        ulong holeFirst = OneMeg >> self.PageShift;
        ulong holeEnd = 2 * OneMeg >> self.PageShift;
        for (ulong i = holeFirst; i < holeEnd; i++)
        {
            self.AssertTrue(!self.Fd.TryGetMirrorEntry(buffer.Ptr + (i << self.PageShift), out _, out _, out _), $"page {i} of the hole is not mirrored");
        }
        ulong snap = p.Malloc(npages);
        byte[] m = SnapshotBytes(self, buffer.Ptr, npages, snap);
        for (ulong i = 0; i < npages; i++)
        {
            if (i >= holeFirst && i < holeEnd)
            {
                self.AssertEq(m[i], DmirrorProt.None);
            }
            else
            {
                self.AssertTrue(m[i] != DmirrorProt.Error && (m[i] & DmirrorProt.Write) == 0, $"page {i} outside the hole is not-populated or read-only (0x{m[i]:x2})");
            }
        }
        p.Free(snap, npages);

        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Faults, 1UL);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => i * 4 >= OneMeg && i * 4 < 2 * OneMeg ? 0 : (int)i + 1, "mirror");
        self.BufferFree(buffer);
    }

    /// <summary>A truncation under a mirrored DAX mapping: the device loses the truncated pages, reading them fails (EFAULT), and after the file grows again it reads zeroes, never old data.</summary>
    private static void DaxTruncate(HmmSelf self)
    {
        HmmProcess p = self.P;
        using var dax = new Dax(self, 16 * OneMeg);
        ulong npages = BufferPages(self);
        ulong size = npages << self.PageShift;
        using FileHandle f = dax.Fs.Create("data");
        f.Truncate(size);
        WriteIntsToFile(f, size / 4, i => (int)i + 7);

        HmmBuffer buffer = self.NewBuffer(size, size);
        buffer.Ptr = p.Mmap(0, size, Rw, MapFlags.Shared, f);
        self.AssertNe(buffer.Ptr, MapFailed);
        int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, npages);
        self.AssertEq(ret, 0);

        f.Truncate(OneMeg);
        ulong keep = OneMeg >> self.PageShift;
        for (ulong i = keep; i < npages; i++)
        {
            self.AssertTrue(!self.Fd.TryGetMirrorEntry(buffer.Ptr + (i << self.PageShift), out _, out _, out _), $"page {i} beyond the new end of file is not mirrored");
        }
        p.Memset(buffer.Mirror, 0xEE, size);
        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, npages);
        self.AssertEq(ret, -(int)Errno.EFAULT);
        self.AssertInts(buffer.Mirror, 0, size / 4, _ => unchecked((int)0xEEEEEEEE), "mirror");
        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, keep);
        self.AssertEq(ret, 0);
        self.AssertInts(buffer.Mirror, 0, OneMeg / 4, i => (int)i + 7, "mirror");

        f.Truncate(size);
        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => i < OneMeg / 4 ? (int)i + 7 : 0, "mirror");
        self.BufferFree(buffer);
    }

    /// <summary>mprotect NONE / RW in a loop against a device read loop: every read either fails with EFAULT or returns the data.</summary>
    private static void MprotectRace(HmmSelf self)
    {
        HmmProcess p = self.P;
        var rng = new Random(Seed("mprotect_race"));
        HmmBuffer buffer = RaceBuffer(self, out ulong npages, out ulong size, i => (int)i + 11);
        int[] delays = [.. Enumerable.Range(0, 4096).Select(_ => rng.Next(300_000))];
        var stop = new ManualResetEventSlim(false);
        Exception? threadFailure = null;
        ulong ptr = buffer.Ptr;
        var thread = new Thread(() =>
        {
            try
            {
                for (int k = 0; !stop.IsSet; k++)
                {
                    // PROT_NONE over a random quarter-aligned part for a short while, then read-write for longer.
                    ulong first = (ulong)(delays[k % delays.Length] % 4) * (size / 4);
                    p.Mm.Mprotect(ptr + first, size - first, Prot.None);
                    NanoSleep(delays[k % delays.Length]);
                    p.Mm.Mprotect(ptr, size, Rw);
                    NanoSleep(500_000 + 4L * delays[(k + 1) % delays.Length]);
                }
            }
            catch (Exception ex)
            {
                threadFailure = ex;
            }
        });
        thread.Start();
        int ok = 0;
        int faulted = 0;
        try
        {
            for (int round = 0; round < RaceRounds; round++)
            {
                int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, npages);
                if (ret == 0)
                {
                    ok++;
                    self.AssertEq(buffer.Cpages, npages);
                    self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i + 11, "mirror");
                }
                else
                {
                    faulted++;
                    self.AssertEq(ret, -(int)Errno.EFAULT);
                }
            }
        }
        finally
        {
            stop.Set();
            thread.Join();
        }
        self.AssertTrue(threadFailure is null, $"the mprotect thread ran without error ({threadFailure?.Message})");
        Log($"mprotect_race: {ok} reads succeeded, {faulted} failed with EFAULT");
        int final = p.Mprotect(buffer.Ptr, size, Rw);
        self.AssertEq(final, 0);
        int last = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, npages);
        self.AssertEq(last, 0);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i + 11, "mirror");
        self.BufferFree(buffer);
    }

    /// <summary>
    /// munmap and re-mmap of the range (with the freed frames immediately reused for a poison pattern) against a device
    /// read loop: a read that succeeds returns, for every word, the data or zeroes of the new mapping, never a word of a
    /// freed and reused frame.
    /// </summary>
    private static void MunmapRace(HmmSelf self)
    {
        HmmProcess p = self.P;
        const int Poison = 0x5A5A5A5A;
        var rng = new Random(Seed("munmap_race"));
        HmmBuffer buffer = RaceBuffer(self, out ulong npages, out ulong size, i => (int)i + 1);
        int[] delays = [.. Enumerable.Range(0, 4096).Select(_ => rng.Next(1, 5))];
        var stop = new ManualResetEventSlim(false);
        Exception? threadFailure = null;
        ulong ptr = buffer.Ptr;
        int remaps = 0;
        var thread = new Thread(() =>
        {
            using var cpu = new Cpu(p.Mm);
            try
            {
                int[] pattern = new int[size / 4];
                for (int i = 0; i < pattern.Length; i++)
                {
                    pattern[i] = i + 1;
                }
                for (int k = 0; !stop.IsSet; k++)
                {
                    Thread.Sleep(delays[k % delays.Length]);
                    // Reserve another range first (so it cannot land on ptr), then reuse the freed frames there at once.
                    ulong other = p.Mm.Mmap(0, size, Rw, PrivAnon);
                    p.Mm.Munmap(ptr, size);
                    cpu.Fill(other, size, 0x5A);
                    p.Mm.Munmap(other, size);
                    ulong again = p.Mm.Mmap(ptr, size, Rw, PrivAnon | MapFlags.Fixed);
                    if (again != ptr)
                    {
                        throw new InvalidOperationException($"MAP_FIXED returned 0x{again:x}, not 0x{ptr:x}");
                    }
                    cpu.Write(ptr, MemoryMarshal.AsBytes(pattern.AsSpan()));
                    Interlocked.Increment(ref remaps);
                }
            }
            catch (Exception ex)
            {
                threadFailure = ex;
            }
        });
        thread.Start();
        int ok = 0;
        int failed = 0;
        try
        {
            for (int round = 0; round < RaceRounds; round++)
            {
                Thread.Sleep(delays[(round * 7) % delays.Length] & 1);
                int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, npages);
                if (ret != 0)
                {
                    failed++;
                    self.AssertEq(ret, -(int)Errno.EFAULT);
                    // Give the next read a chance: wait (bounded) until the range was mapped again.
                    int seen = Volatile.Read(ref remaps);
                    var wait = System.Diagnostics.Stopwatch.StartNew();
                    while (Volatile.Read(ref remaps) == seen && threadFailure is null && wait.ElapsedMilliseconds < 1000)
                    {
                        Thread.Yield();
                    }
                    continue;
                }
                ok++;
                self.AssertEq(buffer.Cpages, npages);
                if (p.FirstMismatch(buffer.Mirror, 0, size / 4, _ => 0) is null)
                {
                    continue;
                }
                int[] words = new int[size / 4];
                p.Cpu.Read(buffer.Mirror, MemoryMarshal.AsBytes(words.AsSpan()));
                for (int i = 0; i < words.Length; i++)
                {
                    if (words[i] == Poison)
                    {
                        self.AssertTrue(false, $"mirror[{i}] is not a word of a freed, reused frame (saw 0x{words[i]:x})");
                    }
                    if (words[i] != i + 1 && words[i] != 0)
                    {
                        self.AssertTrue(false, $"mirror[{i}] is {i + 1} or 0 (saw {words[i]})");
                    }
                }
            }
        }
        finally
        {
            stop.Set();
            thread.Join();
        }
        self.AssertTrue(threadFailure is null, $"the munmap thread ran without error ({threadFailure?.Message})");
        Log($"munmap_race: {ok} reads succeeded, {failed} failed, {remaps} remaps");
        self.BufferFree(buffer);
    }
}
