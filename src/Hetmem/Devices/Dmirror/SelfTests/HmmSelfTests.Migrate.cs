using Hetmem.Mm;

namespace Hetmem.Devices.Dmirror.SelfTests;

/// <summary>Migration, repetition, races, snapshots, exclusive access and COW (hmm-tests.c: migrate … hmm_cow_in_device, and the hmm2 cases).</summary>
internal static partial class HmmSelfTests
{
    /// <summary>A fresh anonymous RW buffer of 1024 pages filled with <paramref name="f"/>(i).</summary>
    private static HmmBuffer AnonBuffer(HmmSelf self, out ulong npages, out ulong size, Func<ulong, int> f)
    {
        HmmProcess p = self.P;
        npages = BufferPages(self);
        self.AssertNe(npages, 0UL);
        size = npages << self.PageShift;
        HmmBuffer buffer = self.NewBuffer(size, size);
        buffer.Ptr = p.Mmap(0, size, Rw, PrivAnon);
        self.AssertNe(buffer.Ptr, MapFailed);
        p.FillInts(buffer.Ptr, 0, size / 4, f);
        return buffer;
    }

    /// <summary>Migrate anonymous memory to device memory.</summary>
    private static void Migrate(HmmSelf self)
    {
        HmmBuffer buffer = AnonBuffer(self, out ulong npages, out ulong size, i => (int)i);
        int ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");
        self.BufferFree(buffer);
    }

    /// <summary>Migrate the anonymous COW copies of a private file mapping; the final unmap must not trip any check.</summary>
    private static void MigrateFilePrivate(HmmSelf self)
    {
        HmmProcess p = self.P;
        ulong npages = BufferPages(self);
        self.AssertNe(npages, 0UL);
        ulong size = npages << self.PageShift;

        Storage.FileHandle fd = p.Track(self.Env.CreateTempFile(size));
        HmmBuffer buffer = self.NewBuffer(size, size);
        buffer.Fd = fd;
        buffer.Ptr = p.Mmap(0, size, Rw, MapFlags.Private, fd);
        self.AssertNe(buffer.Ptr, MapFailed);

        // Writing through the private mapping creates anonymous copies of the file pages.
        p.FillInts(buffer.Ptr, 0, size / 4, i => (int)i);

        int ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

        ret = p.Munmap(buffer.Ptr, size);
        self.AssertEq(ret, 0);
        buffer.Ptr = 0;
        p.Close(fd);
        buffer.Fd = null;
        self.BufferFree(buffer);
    }

    /// <summary>Migrate, fault half back by CPU reads, migrate the mix again.</summary>
    private static void MigrateFault(HmmSelf self)
    {
        HmmBuffer buffer = AnonBuffer(self, out ulong npages, out ulong size, i => (int)i);
        int ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

        // Fault half the pages back to system memory and check them.
        self.AssertInts(buffer.Ptr, 0, size / (2 * 4), i => (int)i, "ptr");

        ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");
        self.BufferFree(buffer);
    }

    /// <summary>Migrate, release the device memory (eviction), then the CPU still reads the data.</summary>
    private static void MigrateRelease(HmmSelf self)
    {
        HmmBuffer buffer = AnonBuffer(self, out ulong npages, out ulong size, i => (int)i);
        int ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Release, buffer, npages);
        self.AssertEq(ret, 0);

        self.AssertInts(buffer.Ptr, 0, size / (2 * 4), i => (int)i, "ptr");
        self.BufferFree(buffer);
    }

    /// <summary>Shared anonymous memory cannot migrate: the read-back finds nothing (ENOENT).</summary>
    private static void MigrateShared(HmmSelf self)
    {
        HmmProcess p = self.P;
        ulong npages = BufferPages(self);
        self.AssertNe(npages, 0UL);
        ulong size = npages << self.PageShift;
        HmmBuffer buffer = self.NewBuffer(size, size);
        buffer.Ptr = p.Mmap(0, size, Rw, MapFlags.Shared | MapFlags.Anonymous);
        self.AssertNe(buffer.Ptr, MapFailed);

        int ret = self.MigrateSysToDev(self.Fd, buffer, npages);
        self.AssertEq(ret, -(int)Errno.ENOENT);
        self.BufferFree(buffer);
    }

    /// <summary>(hmm2) Migrate various kinds of memory: no read permission, a hole, the zero page, read-only and writable pages, another device's page.</summary>
    private static void MigrateMixed(HmmSelf self)
    {
        HmmProcess p = self.P;
        ulong npages = 6;
        ulong size = npages << self.PageShift;
        HmmBuffer buffer = self.NewBuffer(size, size);

        buffer.Ptr = p.Mmap(0, size, Prot.None, PrivAnon);
        self.AssertNe(buffer.Ptr, MapFailed);
        ulong pp = buffer.Ptr;

        // Migrating a protected area should be an error.
        int ret = self.MigrateSysToDev(self.Fd1, buffer, npages);
        self.AssertEq(ret, -(int)Errno.EINVAL);

        // Punch a hole after the first page address.
        ret = p.Munmap(buffer.Ptr + self.PageSize, self.PageSize);
        self.AssertEq(ret, 0);

        // We expect an error if the vma doesn't cover the range.
        ret = self.MigrateSysToDev(self.Fd1, buffer, 3);
        self.AssertEq(ret, -(int)Errno.EINVAL);

        // Page 2 will be a read-only zero page.
        ret = p.Mprotect(buffer.Ptr + 2 * self.PageSize, self.PageSize, Prot.Read);
        self.AssertEq(ret, 0);
        int val = p.ReadInt(buffer.Ptr + 2 * self.PageSize) + 3;
        self.AssertEq(val, 3);

        // Page 3 will be read-only.
        ret = p.Mprotect(buffer.Ptr + 3 * self.PageSize, self.PageSize, Prot.Read | Prot.Write);
        self.AssertEq(ret, 0);
        p.WriteInt(buffer.Ptr + 3 * self.PageSize, val);
        ret = p.Mprotect(buffer.Ptr + 3 * self.PageSize, self.PageSize, Prot.Read);
        self.AssertEq(ret, 0);

        // Pages 4-5 will be read-write.
        ret = p.Mprotect(buffer.Ptr + 4 * self.PageSize, 2 * self.PageSize, Prot.Read | Prot.Write);
        self.AssertEq(ret, 0);
        p.WriteInt(buffer.Ptr + 4 * self.PageSize, val);
        p.WriteInt(buffer.Ptr + 5 * self.PageSize, val);

        // Now try to migrate pages 2-5 to device 1.
        buffer.Ptr = pp + 2 * self.PageSize;
        ret = self.MigrateSysToDev(self.Fd1, buffer, 4);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, 4UL);

        // Page 5 won't be migrated to device 0 because it's on device 1.
        buffer.Ptr = pp + 5 * self.PageSize;
        ret = self.MigrateSysToDev(self.Fd0, buffer, 1);
        self.AssertEq(ret, -(int)Errno.ENOENT);

        buffer.Ptr = pp;
        self.BufferFree(buffer);
    }

    /// <summary>Migrate to device memory and back 10 times (CPU faults for private memory, explicit MIGRATE_TO_SYS for coherent).</summary>
    private static void MigrateMultiple(HmmSelf self)
    {
        for (int c = 0; c < NTimes; c++)
        {
            HmmBuffer buffer = AnonBuffer(self, out ulong npages, out ulong size, i => (int)i);
            int ret = self.MigrateSysToDev(self.Fd, buffer, npages);
            self.AssertEq(ret, 0);
            self.AssertEq(buffer.Cpages, npages);
            self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

            if (self.Coherent)
            {
                ret = self.MigrateDevToSys(self.Fd, buffer, npages);
                self.AssertEq(ret, 0);
                self.AssertEq(buffer.Cpages, npages);
            }

            self.AssertInts(buffer.Ptr, 0, size / 4, i => (int)i, "ptr");
            self.BufferFree(buffer);
        }
    }

    /// <summary>Read anonymous memory 10 times with fresh buffers.</summary>
    private static void AnonReadMultiple(HmmSelf self)
    {
        for (int c = 0; c < NTimes; c++)
        {
            int round = c;
            HmmBuffer buffer = AnonBuffer(self, out ulong npages, out ulong size, i => (int)i + round);
            int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, npages);
            self.AssertEq(ret, 0);
            self.AssertEq(buffer.Cpages, npages);
            self.AssertEq(buffer.Faults, 1UL);
            self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i + round, "mirror");
            self.BufferFree(buffer);
        }
    }

    /// <summary>The seed of the random delays of the race cases (env HETMEM_SEED, else random; always logged).</summary>
    private static int Seed(string what)
    {
        string? env = Environment.GetEnvironmentVariable("HETMEM_SEED");
        int seed = env is not null && int.TryParse(env, out int s) ? s : Random.Shared.Next();
        Log($"{what}: seed {seed} (HETMEM_SEED={seed} reproduces)");
        return seed;
    }

    /// <summary>Sleeps about <paramref name="ns"/> nanoseconds (kernel test: hmm_nanosleep).</summary>
    private static void NanoSleep(long ns)
    {
        long until = System.Diagnostics.Stopwatch.GetTimestamp() + ns * System.Diagnostics.Stopwatch.Frequency / 1_000_000_000;
        while (System.Diagnostics.Stopwatch.GetTimestamp() < until)
        {
            Thread.SpinWait(20);
        }
    }

    /// <summary>Read anonymous memory while another thread unmaps its second half; any error is accepted, a hang or crash is not.</summary>
    private static void AnonTeardown(HmmSelf self)
    {
        HmmProcess p = self.P;
        var rng = new Random(Seed("anon_teardown"));
        for (int c = 0; c < NTimes; ++c)
        {
            int round = c;
            HmmBuffer buffer = AnonBuffer(self, out ulong npages, out ulong size, i => (int)i + round);
            int delay = rng.Next(32000);
            ulong ptr = buffer.Ptr;
            var thread = new Thread(() =>
            {
                NanoSleep(delay);
                p.Munmap(ptr + size / 2, size / 2);
            });
            thread.Start();

            int rc = self.DmirrorCmd(self.Fd, DmirrorCommand.Read, buffer, npages);
            if (rc == 0)
            {
                self.AssertEq(buffer.Cpages, npages);
                self.AssertEq(buffer.Faults, 1UL);
                self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i + round, "mirror");
            }

            thread.Join();
            self.BufferFree(buffer);
        }
    }

    /// <summary>Snapshot a mapping of the device file itself (VM_MIXEDMAP): a private mapping of an inserted page is read-only.</summary>
    private static void Mixedmap(HmmSelf self)
    {
        HmmProcess p = self.P;
        ulong npages = 1;
        ulong size = npages << self.PageShift;
        HmmBuffer buffer = self.NewBuffer(size, npages);

        try
        {
            buffer.Ptr = self.Fd.Mmap(0, size, Rw, MapFlags.Private);
        }
        catch (MmException)
        {
            buffer.Ptr = MapFailed;
        }
        self.AssertNe(buffer.Ptr, MapFailed);

        int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Snapshot, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);

        byte m0 = p.ReadByte(buffer.Mirror);
        self.AssertEq(m0, DmirrorProt.Read);
        self.BufferFree(buffer);
    }

    /// <summary>(hmm2) Snapshot without faulting: no VMA access, a hole, the zero page, read-only and writable pages, this and the other device's pages.</summary>
    private static void Snapshot(HmmSelf self)
    {
        HmmProcess p = self.P;
        ulong npages = 7;
        ulong size = npages << self.PageShift;
        HmmBuffer buffer = self.NewBuffer(size, npages);

        buffer.Ptr = p.Mmap(0, size, Prot.None, PrivAnon);
        self.AssertNe(buffer.Ptr, MapFailed);
        ulong pp = buffer.Ptr;

        // Punch a hole after the first page address.
        int ret = p.Munmap(buffer.Ptr + self.PageSize, self.PageSize);
        self.AssertEq(ret, 0);

        // Page 2 will be read-only zero page.
        ret = p.Mprotect(buffer.Ptr + 2 * self.PageSize, self.PageSize, Prot.Read);
        self.AssertEq(ret, 0);
        int val = p.ReadInt(buffer.Ptr + 2 * self.PageSize) + 3;
        self.AssertEq(val, 3);

        // Page 3 will be read-only.
        ret = p.Mprotect(buffer.Ptr + 3 * self.PageSize, self.PageSize, Prot.Read | Prot.Write);
        self.AssertEq(ret, 0);
        p.WriteInt(buffer.Ptr + 3 * self.PageSize, val);
        ret = p.Mprotect(buffer.Ptr + 3 * self.PageSize, self.PageSize, Prot.Read);
        self.AssertEq(ret, 0);

        // Pages 4-6 will be read-write.
        ret = p.Mprotect(buffer.Ptr + 4 * self.PageSize, 3 * self.PageSize, Prot.Read | Prot.Write);
        self.AssertEq(ret, 0);
        p.WriteInt(buffer.Ptr + 4 * self.PageSize, val);

        // Page 5 will be migrated to device 0.
        buffer.Ptr = pp + 5 * self.PageSize;
        ret = self.MigrateSysToDev(self.Fd0, buffer, 1);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, 1UL);

        // Page 6 will be migrated to device 1.
        buffer.Ptr = pp + 6 * self.PageSize;
        ret = self.MigrateSysToDev(self.Fd1, buffer, 1);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, 1UL);

        buffer.Ptr = pp;
        ret = self.DmirrorCmd(self.Fd0, DmirrorCommand.Snapshot, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);

        byte[] m = p.ReadBytes(buffer.Mirror, (int)npages);
        self.AssertEq(m[0], DmirrorProt.Error);
        self.AssertEq(m[1], DmirrorProt.Error);
        self.AssertEq(m[2], (byte)(DmirrorProt.Zero | DmirrorProt.Read));
        self.AssertEq(m[3], DmirrorProt.Read);
        self.AssertEq(m[4], DmirrorProt.Write);
        if (!self.Coherent)
        {
            self.AssertEq(m[5], (byte)(DmirrorProt.DevPrivateLocal | DmirrorProt.Write));
            self.AssertEq(m[6], DmirrorProt.None);
        }
        else
        {
            self.AssertEq(m[5], (byte)(DmirrorProt.DevCoherentLocal | DmirrorProt.Write));
            self.AssertEq(m[6], (byte)(DmirrorProt.DevCoherentRemote | DmirrorProt.Write));
        }
        self.BufferFree(buffer);
    }

    /// <summary>Snapshot a hugetlbfs mapping: every page reports the huge level (PMD for 2 MiB pages, PUD for 1 GiB).</summary>
    private static void Compound(HmmSelf self)
    {
        HmmProcess p = self.P;
        ulong defaultHsize = self.Env.DefaultHugePageSize;
        self.AssertTrue(self.Env.Pool.Free >= 1, "a free default-size huge page (the machine reserves one)");
        ulong size = HmmSelf.Align(TwoMeg, defaultHsize);
        ulong npages = size >> self.PageShift;

        var buffer = new HmmBuffer { Size = size, MirrorSize = npages };
        buffer.Ptr = p.Mmap(0, size, Rw, PrivAnon | MapFlags.HugeTlb);
        // kselftest returns (passes) when this mmap fails; here the pool guarantees a page, so failing is a bug.
        self.AssertTrue(buffer.Ptr != MapFailed, $"MAP_HUGETLB mmap succeeds ({p.LastSyscallError})");
        buffer.Mirror = p.Malloc(npages);
        self.AssertNe(buffer.Mirror, 0UL);

        p.FillInts(buffer.Ptr, 0, size / 4, i => (int)i);

        int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Snapshot, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);

        byte[] m = p.ReadBytes(buffer.Mirror, (int)npages);
        byte level = (m[0] & DmirrorProt.Pud) != 0 ? DmirrorProt.Pud : DmirrorProt.Pmd;
        for (ulong i = 0; i < npages; ++i)
        {
            self.AssertEq(m[i], (byte)(DmirrorProt.Write | level));
        }

        ret = p.Mprotect(buffer.Ptr, size, Prot.Read);
        self.AssertEq(ret, 0);

        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Snapshot, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);

        m = p.ReadBytes(buffer.Mirror, (int)npages);
        for (ulong i = 0; i < npages; ++i)
        {
            self.AssertEq(m[i], (byte)(DmirrorProt.Read | level));
        }

        p.Munmap(buffer.Ptr, buffer.Size);
        buffer.Ptr = 0;
        self.BufferFree(buffer);
    }

    /// <summary>(hmm2) Two devices read the same memory; after device 1 migrates it, device 0 still reads it.</summary>
    private static void DoubleMap(HmmSelf self)
    {
        HmmProcess p = self.P;
        ulong npages = 6;
        ulong size = npages << self.PageShift;
        HmmBuffer buffer = self.NewBuffer(size, size);
        buffer.Ptr = p.Mmap(0, size, Rw, PrivAnon);
        self.AssertNe(buffer.Ptr, MapFailed);

        p.FillInts(buffer.Ptr, 0, size / 4, i => (int)i);

        int ret = p.Mprotect(buffer.Ptr, size, Prot.Read);
        self.AssertEq(ret, 0);

        ret = self.DmirrorCmd(self.Fd0, DmirrorCommand.Read, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertEq(buffer.Faults, 1UL);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

        ret = self.DmirrorCmd(self.Fd1, DmirrorCommand.Read, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertEq(buffer.Faults, 1UL);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

        // Migrate pages to device 1 and try to read from device 0.
        ret = self.MigrateSysToDev(self.Fd1, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);

        ret = self.DmirrorCmd(self.Fd0, DmirrorCommand.Read, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertEq(buffer.Faults, 1UL);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");
        self.BufferFree(buffer);
    }

    /// <summary>ASSERT_EQ(ptr[i]++, i) for every element, in chunks through the process's CPU.</summary>
    private static void CheckAndIncrement(HmmSelf self, HmmProcess p, ulong ptr, ulong count)
    {
        int[] chunk = new int[4096];
        for (ulong i = 0; i < count;)
        {
            int n = (int)Math.Min(4096UL, count - i);
            Span<byte> bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(chunk.AsSpan(0, n));
            p.CheckSignals();
            p.Cpu.Read(ptr + i * 4, bytes);
            for (int k = 0; k < n; k++)
            {
                if (chunk[k] != (int)(i + (ulong)k))
                {
                    throw new HmmTestFailure($"ASSERT_EQ(ptr[{i + (ulong)k}]++, {i + (ulong)k}) failed: saw {chunk[k]}");
                }
                chunk[k]++;
            }
            p.Cpu.Write(ptr + i * 4, bytes);
            i += (ulong)n;
        }
        self.AssertInts(p, ptr, 0, count, i => (int)i + 1, "ptr");
    }

    /// <summary>Device-exclusive access, revoked by CPU accesses (CHECK_EXCLUSIVE then returns 0).</summary>
    private static void Exclusive(HmmSelf self)
    {
        HmmBuffer buffer = AnonBuffer(self, out ulong npages, out ulong size, i => (int)i);
        int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Exclusive, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

        // Fault pages back to system memory and check them.
        CheckAndIncrement(self, self.P, buffer.Ptr, size / 4);

        // Check atomic access revoked.
        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.CheckExclusive, buffer, npages);
        self.AssertEq(ret, 0);
        self.BufferFree(buffer);
    }

    /// <summary>Exclusive access then mprotect READ: a device write is EPERM.</summary>
    private static void ExclusiveMprotect(HmmSelf self)
    {
        HmmProcess p = self.P;
        HmmBuffer buffer = AnonBuffer(self, out ulong npages, out ulong size, i => (int)i);
        int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Exclusive, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        self.AssertInts(buffer.Mirror, 0, size / 4, i => (int)i, "mirror");

        ret = p.Mprotect(buffer.Ptr, size, Prot.Read);
        self.AssertEq(ret, 0);

        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Write, buffer, npages);
        self.AssertEq(ret, -(int)Errno.EPERM);
        self.BufferFree(buffer);
    }

    /// <summary>Exclusive access then fork: parent and child each see and update their own copy.</summary>
    private static void ExclusiveCow(HmmSelf self)
    {
        HmmProcess p = self.P;
        HmmBuffer buffer = AnonBuffer(self, out ulong npages, out ulong size, i => (int)i);
        int ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Exclusive, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);

        HmmProcess child = p.Fork(c =>
        {
            CheckAndIncrement(self, c, buffer.Ptr, size / 4);
            HmmProcess.Exit(0);
        });

        CheckAndIncrement(self, p, buffer.Ptr, size / 4);

        (int pid, int status) = HmmProcess.WaitPid(child, ChildTimeout);
        self.AssertEq(pid, child.Pid);
        self.AssertEq(Signals.WIfExited(status) ? 1 : 0, 1);
        self.AssertEq(Signals.WExitStatus(status), 0);
        self.BufferFree(buffer);
    }

    /// <summary>
    /// COW of device pages: after fork the parent writes every element (private pages migrate back first, coherent
    /// pages are copied directly); the child is killed; the parent then has ordinary writable system pages.
    /// </summary>
    private static void HmmCowInDevice(HmmSelf self)
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

        // The child spins until it is killed.
        HmmProcess child = p.Fork(c => c.SpinUntilKilled());

        // The parent writes to the COW pages and gets new copies in system memory.
        p.FillInts(buffer.Ptr, 0, size / 4, i => (int)i);

        self.ExpectEq(HmmProcess.Kill(child, Signals.SigKill), 0);
        (int pid, int status) = HmmProcess.WaitPid(child, ChildTimeout);
        self.ExpectEq(pid, child.Pid);
        self.ExpectTrue(Signals.WIfSignaled(status), "WIFSIGNALED(status)");
        self.ExpectEq(Signals.WTermSig(status), Signals.SigKill);

        ret = self.DmirrorCmd(self.Fd, DmirrorCommand.Snapshot, buffer, npages);
        self.AssertEq(ret, 0);
        self.AssertEq(buffer.Cpages, npages);
        byte[] m = p.ReadBytes(buffer.Mirror, (int)npages);
        for (ulong i = 0; i < npages; i++)
        {
            self.AssertEq(m[i], DmirrorProt.Write);
        }
        self.BufferFree(buffer);
    }
}
