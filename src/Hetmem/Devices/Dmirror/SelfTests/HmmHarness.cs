using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Devices.Dmirror.SelfTests;

/// <summary>A failed assertion of a self-test (kselftest: a failing ASSERT_* / EXPECT_*).</summary>
internal sealed class HmmTestFailure(string message) : Exception(message);

/// <summary>Thrown inside a simulated process by <see cref="HmmProcess.Exit"/> (exit / _exit).</summary>
internal sealed class ProcessExitException(int code) : Exception($"exit({code})")
{
    public int Code { get; } = code;
}

/// <summary>Thrown inside a simulated process when it receives a fatal signal at a safe point.</summary>
internal sealed class ProcessKilledException(int signal) : Exception($"killed by signal {signal}")
{
    public int Signal { get; } = signal;
}

/// <summary>Signal numbers and wait-status helpers (x86-64 Linux values; kernel: the W* macros of sys/wait.h).</summary>
internal static class Signals
{
    public const int SigAbrt = 6;
    public const int SigKill = 9;
    public const int SigBus = 7;
    public const int SigSegv = 11;
    public const int SigTerm = 15;

    public static bool WIfExited(int status) => (status & 0x7f) == 0;
    public static int WExitStatus(int status) => (status >> 8) & 0xff;
    public static bool WIfSignaled(int status) => (sbyte)((status & 0x7f) + 1) >> 1 > 0;
    public static int WTermSig(int status) => status & 0x7f;
    public static int Exited(int code) => (code & 0xff) << 8;
}

/// <summary>
/// One machine for one self-test case: physical memory, a hugetlbfs pool with one free default-size (2 MiB) huge page,
/// a page-cache file system in a temporary directory for O_TMPFILE files, and the dmirror driver with its four nodes
/// (the kernel's "module loaded with SPM addresses"). Records the frames in use at start so the case can prove that
/// everything it allocated was freed.
/// </summary>
internal sealed class HmmEnvironment : IDisposable
{
    private readonly bool[] _usedAtStart;
    private readonly long _usedCountAtStart;
    private int _nextPid = 100;
    private int _nextFile;

    public HmmEnvironment(ulong ramBytes)
    {
        Memory = new PhysicalMemory(ramBytes);
        try
        {
            Pool = new HugetlbPool(Memory, Page.PmdOrder, 1);
            Hugetlbfs = new HugetlbFs(Pool);
            string root = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
            TempDir = Path.Combine(root, $"hetmem-hmm-{Environment.ProcessId}-{Guid.NewGuid():N}");
            Directory.CreateDirectory(TempDir);
            Files = new PageCacheFileSystem(Memory, TempDir);
            Driver = new DmirrorDriver(Memory);
        }
        catch
        {
            Dispose();
            throw;
        }
        _usedAtStart = SnapshotUsed();
        _usedCountAtStart = Memory.UsedFrames;
    }

    public PhysicalMemory Memory { get; }
    public HugetlbPool Pool { get; } = null!;
    public HugetlbFs Hugetlbfs { get; } = null!;
    public PageCacheFileSystem Files { get; } = null!;
    public string TempDir { get; } = "";
    public DmirrorDriver Driver { get; } = null!;

    /// <summary>Default huge page size (kernel: default_huge_page_size from /proc/meminfo).</summary>
    public ulong DefaultHugePageSize => Pool.PageBytes;

    internal int NextPid() => Interlocked.Increment(ref _nextPid);

    /// <summary>Set when a thread of the case may still touch the memory (a hung child): the machine is then leaked, not freed.</summary>
    public bool UnsafeToDispose { get; set; }

    /// <summary>Every process started or forked in this machine.</summary>
    public List<HmmProcess> Processes { get; } = [];

    /// <summary>A new process with an empty address space (the harness's fork of the test).</summary>
    public HmmProcess StartProcess()
    {
        var p = new HmmProcess(this, new AddressSpace(Memory) { DefaultHugetlb = Hugetlbfs }, null);
        lock (Processes)
        {
            Processes.Add(p);
        }
        return p;
    }

    /// <summary>
    /// A temporary file deleted on close, sized with ftruncate (kernel test: hmm_create_file, open(O_TMPFILE) + ftruncate).
    /// </summary>
    public FileHandle CreateTempFile(ulong size)
    {
        string name = $"tmp{Interlocked.Increment(ref _nextFile)}";
        FileHandle h = Files.Create(name);
        Files.Unlink(name);
        h.Truncate(size);
        return h;
    }

    private bool[] SnapshotUsed()
    {
        var used = new bool[Memory.RamFrames];
        for (ulong i = 0; i < Memory.RamFrames; i++)
        {
            used[i] = Volatile.Read(ref Memory.Frame(PhysicalMemory.RamFirstPfn + i).RefCount) > 0;
        }
        return used;
    }

    /// <summary>Fails when RAM frames in use differ from the start (something the case did leaked or was over-freed).</summary>
    public void CheckFrameBalance()
    {
        long now = Memory.UsedFrames;
        if (now == _usedCountAtStart)
        {
            return;
        }
        var leaked = new List<string>();
        for (ulong i = 0; i < Memory.RamFrames && leaked.Count < 8; i++)
        {
            ulong pfn = PhysicalMemory.RamFirstPfn + i;
            ref FrameInfo f = ref Memory.Frame(pfn);
            if (Volatile.Read(ref f.RefCount) > 0 && !_usedAtStart[i])
            {
                leaked.Add($"0x{pfn:x} refs={f.RefCount} maps={f.MapCount} flags={(FrameFlags)(f.Flags & 0xFFFFFF)} order={f.Order} mapping={f.Mapping?.GetType().Name ?? "null"}");
            }
        }
        throw new HmmTestFailure($"frame balance: {now} RAM frames in use after the case, {_usedCountAtStart} before ({now - _usedCountAtStart:+#;-#}); first new: {string.Join("; ", leaked)}");
    }

    public void Dispose()
    {
        Driver?.Dispose();
        Files?.Dispose();
        Hugetlbfs?.Dispose();
        Pool?.Dispose();
        Memory.Dispose();
        try
        {
            if (TempDir.Length > 0 && Directory.Exists(TempDir))
            {
                Directory.Delete(TempDir, recursive: true);
            }
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>
/// A simulated process of the self-tests: an address space, the CPU of the thread running it, its open files, and the
/// fork / exit / kill / waitpid model. A child runs on its own thread with its own <see cref="Cpu"/>; a fatal signal
/// is delivered at the next safe point (any memory access through this class, or <see cref="SpinUntilKilled"/>), like
/// a signal delivered on return to user mode.
/// </summary>
/// <remarks>
/// Exit (kernel: do_exit): the CPU detaches, the address space exits (exit_mmap), then the open files are closed
/// (exit_files: a dmirror file's close evicts its node's memory). A child that fails an assertion exits with status 1,
/// as a kselftest child does (its failure is kept in <see cref="FailureMessage"/>); one that takes SIGSEGV or SIGBUS
/// ends signalled.
/// </remarks>
internal sealed class HmmProcess
{
    private const int IntsPerChunk = 4096;

    private readonly List<object> _files = [];          // owner thread only: DmirrorFile / FileHandle
    private Thread? _thread;                             // the child's thread
    private int _pendingSignal;                          // atomic
    private int _status = -1;                            // written by the exiting thread before _done is set
    private readonly ManualResetEventSlim _done = new(false);
    private Cpu? _cpu;

    internal HmmProcess(HmmEnvironment env, AddressSpace mm, HmmProcess? parent)
    {
        Env = env;
        Mm = mm;
        Parent = parent;
        Pid = env.NextPid();
    }

    public HmmEnvironment Env { get; }
    public AddressSpace Mm { get; }
    public HmmProcess? Parent { get; }
    public int Pid { get; }
    public string? FailureMessage { get; private set; }
    public bool Exited => _done.IsSet;

    /// <summary>The CPU of the thread running this process (created on first use by that thread).</summary>
    public Cpu Cpu => _cpu ??= new Cpu(Mm);

    // ---- system calls -------------------------------------------------------------------------------------------

    /// <summary>mmap: the address, or MAP_FAILED (<see cref="MapFailed"/>) with the error kept in <see cref="LastSyscallError"/>.</summary>
    public ulong Mmap(ulong addr, ulong len, Prot prot, MapFlags flags, FileHandle? file = null, ulong offset = 0)
    {
        CheckSignals();
        try
        {
            return Mm.Mmap(addr, len, prot, flags, file?.Inode, offset, file?.Access ?? FileAccess.ReadWrite);
        }
        catch (MmException ex)
        {
            LastSyscallError = ex.Message;
            return MapFailed;
        }
    }

    /// <summary>MAP_FAILED.</summary>
    public const ulong MapFailed = ulong.MaxValue;

    /// <summary>munmap; returns 0 or -errno.</summary>
    public int Munmap(ulong addr, ulong len) => Sys(() => Mm.Munmap(addr, len));

    /// <summary>mprotect; returns 0 or -errno.</summary>
    public int Mprotect(ulong addr, ulong len, Prot prot) => Sys(() => Mm.Mprotect(addr, len, prot));

    /// <summary>madvise; returns 0 or -errno.</summary>
    public int Madvise(ulong addr, ulong len, Advice advice) => Sys(() => Mm.Madvise(addr, len, advice));

    /// <summary>mremap; returns the new address or MAP_FAILED.</summary>
    public ulong Mremap(ulong old, ulong oldLen, ulong newLen, MremapFlags flags, ulong newAddr)
    {
        CheckSignals();
        try
        {
            return Mm.Mremap(old, oldLen, newLen, flags, newAddr);
        }
        catch (MmException ex)
        {
            LastSyscallError = ex.Message;
            return MapFailed;
        }
    }

    public string? LastSyscallError { get; private set; }

    private int Sys(Action call)
    {
        CheckSignals();
        try
        {
            call();
            LastSyscallError = null;
            return 0;
        }
        catch (MmException ex)
        {
            LastSyscallError = ex.Message;
            return -(int)ex.Errno;
        }
    }

    /// <summary>malloc: an anonymous private read-write mapping (so fork copies it, as a heap is copied).</summary>
    public ulong Malloc(ulong size)
    {
        ulong p = Mmap(0, Math.Max(size, 1), Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        return p == MapFailed ? 0 : p;
    }

    /// <summary>free of a <see cref="Malloc"/> block.</summary>
    public void Free(ulong ptr, ulong size)
    {
        if (ptr != 0)
        {
            Munmap(ptr, Math.Max(size, 1));
        }
    }

    /// <summary>open("/dev/hmm_dmirror&lt;unit&gt;") (kernel test: hmm_open).</summary>
    public DmirrorFile HmmOpen(int unit)
    {
        CheckSignals();
        DmirrorFile f = Env.Driver.Open(unit, Mm);
        _files.Add(f);
        return f;
    }

    /// <summary>Tracks a file descriptor so the process closes it at exit.</summary>
    public FileHandle Track(FileHandle h)
    {
        _files.Add(h);
        return h;
    }

    /// <summary>close(fd).</summary>
    public int Close(object fd)
    {
        _files.Remove(fd);
        switch (fd)
        {
            case DmirrorFile d:
                d.Close();
                break;
            case FileHandle h:
                h.Dispose();
                break;
        }
        return 0;
    }

    // ---- memory access ------------------------------------------------------------------------------------------

    public int ReadInt(ulong addr)
    {
        CheckSignals();
        return Cpu.Read<int>(addr);
    }

    public void WriteInt(ulong addr, int value)
    {
        CheckSignals();
        Cpu.Write(addr, value);
    }

    public byte ReadByte(ulong addr)
    {
        CheckSignals();
        return Cpu.Read<byte>(addr);
    }

    /// <summary>memset.</summary>
    public void Memset(ulong addr, byte value, ulong len)
    {
        CheckSignals();
        Cpu.Fill(addr, len, value);
    }

    /// <summary>ptr[i] = f(i) for i in [from, to) of the int array at <paramref name="addr"/>.</summary>
    public void FillInts(ulong addr, ulong from, ulong to, Func<ulong, int> f)
    {
        int[] chunk = new int[IntsPerChunk];
        for (ulong i = from; i < to;)
        {
            CheckSignals();
            int n = (int)Math.Min((ulong)IntsPerChunk, to - i);
            for (int k = 0; k < n; k++)
            {
                chunk[k] = f(i + (ulong)k);
            }
            Cpu.Write(addr + i * 4, MemoryMarshal.AsBytes(chunk.AsSpan(0, n)));
            i += (ulong)n;
        }
    }

    /// <summary>The first i in [from, to) whose int differs from <paramref name="expected"/>(i), with the value seen; null when all match.</summary>
    public (ulong Index, int Seen)? FirstMismatch(ulong addr, ulong from, ulong to, Func<ulong, int> expected)
    {
        int[] chunk = new int[IntsPerChunk];
        for (ulong i = from; i < to;)
        {
            CheckSignals();
            int n = (int)Math.Min((ulong)IntsPerChunk, to - i);
            Cpu.Read(addr + i * 4, MemoryMarshal.AsBytes(chunk.AsSpan(0, n)));
            for (int k = 0; k < n; k++)
            {
                if (chunk[k] != expected(i + (ulong)k))
                {
                    return (i + (ulong)k, chunk[k]);
                }
            }
            i += (ulong)n;
        }
        return null;
    }

    public byte[] ReadBytes(ulong addr, int n)
    {
        CheckSignals();
        var b = new byte[n];
        Cpu.Read(addr, b);
        return b;
    }

    // ---- processes ----------------------------------------------------------------------------------------------

    /// <summary>Delivers a pending fatal signal (a safe point).</summary>
    public void CheckSignals()
    {
        int s = Volatile.Read(ref _pendingSignal);
        if (s != 0 && Parent is not null)
        {
            throw new ProcessKilledException(s);
        }
    }

    /// <summary>A child that loops until a signal kills it (kernel test: <c>while (1) { }</c>).</summary>
    public void SpinUntilKilled()
    {
        var spin = new SpinWait();
        while (true)
        {
            CheckSignals();
            spin.SpinOnce(sleep1Threshold: 20);
        }
    }

    /// <summary>exit / _exit.</summary>
    public static void Exit(int code) => throw new ProcessExitException(code);

    /// <summary>
    /// fork(): the child gets a copy of the address space (<see cref="AddressSpace.Fork"/>) and runs
    /// <paramref name="childMain"/> on its own thread; returning from it is exit(0).
    /// </summary>
    public HmmProcess Fork(Action<HmmProcess> childMain)
    {
        CheckSignals();
        AddressSpace childMm = Mm.Fork();
        var child = new HmmProcess(Env, childMm, this);
        lock (Env.Processes)
        {
            Env.Processes.Add(child);
        }
        child._thread = new Thread(() => child.RunChild(childMain)) { IsBackground = true, Name = $"hmm pid {child.Pid}" };
        child._thread.Start();
        return child;
    }

    private void RunChild(Action<HmmProcess> main)
    {
        int status;
        try
        {
            main(this);
            status = Signals.Exited(0);
        }
        catch (ProcessExitException e)
        {
            status = Signals.Exited(e.Code);
        }
        catch (ProcessKilledException k)
        {
            status = k.Signal;
        }
        catch (HmmTestFailure f)
        {
            FailureMessage = f.Message;
            status = Signals.Exited(1);
        }
        catch (SegmentationFault ex)
        {
            FailureMessage = ex.Message;
            status = Signals.SigSegv;
        }
        catch (BusError ex)
        {
            FailureMessage = ex.Message;
            status = Signals.SigBus;
        }
        catch (Exception ex)
        {
            FailureMessage = ex.ToString();
            status = Signals.SigAbrt;
        }
        try
        {
            ExitResources();
        }
        catch (Exception ex)
        {
            FailureMessage = (FailureMessage is null ? "" : FailureMessage + "; ") + "exit: " + ex;
            status = Signals.SigAbrt;
        }
        _status = status;
        if (FailureMessage is not null)
        {
            HmmSelfTests.Log($"child {Pid}: {FailureMessage}");
        }
        _done.Set();
    }

    /// <summary>What do_exit releases: the CPU, the address space (exit_mmap), then the open files (exit_files).</summary>
    public void ExitResources()
    {
        _cpu?.Dispose();
        _cpu = null;
        Mm.Exit();
        for (int i = _files.Count - 1; i >= 0; i--)
        {
            object f = _files[i];
            _files.RemoveAt(i);
            if (f is DmirrorFile d)
            {
                d.Close();
            }
            else if (f is FileHandle h)
            {
                h.Dispose();
            }
        }
    }

    /// <summary>kill(pid, sig): 0, or -ESRCH when the child already exited.</summary>
    public static int Kill(HmmProcess child, int signal)
    {
        if (child.Exited)
        {
            return -3; // -ESRCH
        }
        Volatile.Write(ref child._pendingSignal, signal);
        return 0;
    }

    /// <summary>waitpid(pid, &amp;status, 0): the pid and the wait status. Fails the test when the child does not exit in time.</summary>
    public static (int Pid, int Status) WaitPid(HmmProcess child, TimeSpan timeout)
    {
        if (!child._done.Wait(timeout))
        {
            child.Env.UnsafeToDispose = true;
            throw new HmmTestFailure($"waitpid({child.Pid}): the child did not exit within {timeout.TotalSeconds:0} s");
        }
        child._thread?.Join();
        return (child.Pid, child._status);
    }
}

/// <summary>kernel test: struct hmm_buffer.</summary>
internal sealed class HmmBuffer
{
    public ulong Ptr;
    public ulong Mirror;
    public ulong Size;
    public ulong MirrorSize;
    public FileHandle? Fd;
    public ulong Cpages;
    public ulong Faults;
}

/// <summary>
/// The fixture of a case (kernel test: FIXTURE(hmm) / FIXTURE(hmm2) with its variant): the process, the opened
/// device files, page size and shift, and the ASSERT / EXPECT helpers.
/// </summary>
internal sealed class HmmSelf
{
    private readonly List<string> _expectFailures = [];

    public HmmSelf(HmmEnvironment env, HmmProcess p, int device0, int device1)
    {
        Env = env;
        P = p;
        DeviceNumber0 = device0;
        DeviceNumber1 = device1;
    }

    public HmmEnvironment Env { get; }
    public HmmProcess P { get; }
    public int DeviceNumber0 { get; }
    public int DeviceNumber1 { get; }
    public DmirrorFile Fd { get => Fd0; set => Fd0 = value; }
    public DmirrorFile Fd0 { get; set; } = null!;
    public DmirrorFile Fd1 { get; set; } = null!;
    public ulong PageSize { get; } = Page.Size;
    public int PageShift { get; } = Page.Shift;
    public ulong PmdSize { get; } = Page.PmdSize;
    public string? LastDriverError { get; private set; }

    /// <summary>kernel test: hmm_is_coherent_type(variant->device_number).</summary>
    public bool Coherent => DeviceNumber0 >= 2;

    public IReadOnlyList<string> ExpectFailures => _expectFailures;

    // ---- the ioctl helper ---------------------------------------------------------------------------------------

    /// <summary>kernel test: hmm_dmirror_cmd — 0 or -errno; cpages/faults copied only on success.</summary>
    public int DmirrorCmd(DmirrorFile fd, DmirrorCommand request, HmmBuffer buffer, ulong npages) => DmirrorCmd(P, fd, request, buffer, npages);

    public int DmirrorCmd(HmmProcess p, DmirrorFile fd, DmirrorCommand request, HmmBuffer buffer, ulong npages)
    {
        p.CheckSignals();
        var cmd = new DmirrorCmd { Addr = buffer.Ptr, Ptr = buffer.Mirror, Npages = npages };
        Errno e;
        do
        {
            e = fd.TryIoctl(request, ref cmd, p.Cpu);
        }
        while (e == Errno.EINTR);
        if (e != Errno.Ok)
        {
            LastDriverError = $"{request}: {fd.LastError}";
            return -(int)e;
        }
        LastDriverError = null;
        buffer.Cpages = cmd.Cpages;
        buffer.Faults = cmd.Faults;
        return 0;
    }

    public int MigrateSysToDev(DmirrorFile fd, HmmBuffer buffer, ulong npages) => DmirrorCmd(fd, DmirrorCommand.MigrateToDevice, buffer, npages);

    public int MigrateDevToSys(DmirrorFile fd, HmmBuffer buffer, ulong npages) => DmirrorCmd(fd, DmirrorCommand.MigrateToSystem, buffer, npages);

    /// <summary>kernel test: hmm_buffer_free.</summary>
    public void BufferFree(HmmBuffer buffer)
    {
        if (buffer.Ptr != 0)
        {
            P.Munmap(buffer.Ptr, buffer.Size);
            buffer.Ptr = 0;
        }
        P.Free(buffer.Mirror, buffer.MirrorSize);
        buffer.Mirror = 0;
    }

    /// <summary>A new buffer whose mirror is malloc(mirrorSize) (kernel test: the malloc + malloc pair every case starts with).</summary>
    public HmmBuffer NewBuffer(ulong size, ulong mirrorSize)
    {
        var b = new HmmBuffer { Fd = null, Size = size, MirrorSize = mirrorSize };
        b.Mirror = P.Malloc(mirrorSize);
        AssertNe(b.Mirror, 0UL);
        return b;
    }

    // ---- assertions ---------------------------------------------------------------------------------------------

    public void AssertEq<T>(T seen, T expected, [CallerArgumentExpression(nameof(seen))] string seenExpr = "",
        [CallerArgumentExpression(nameof(expected))] string expectedExpr = "", [CallerLineNumber] int line = 0)
    {
        if (!EqualityComparer<T>.Default.Equals(seen, expected))
        {
            throw new HmmTestFailure(Describe($"ASSERT_EQ({seenExpr}, {expectedExpr}) failed: {Show(seen)} != {Show(expected)}", line));
        }
    }

    public void AssertNe<T>(T seen, T other, [CallerArgumentExpression(nameof(seen))] string seenExpr = "",
        [CallerArgumentExpression(nameof(other))] string otherExpr = "", [CallerLineNumber] int line = 0)
    {
        if (EqualityComparer<T>.Default.Equals(seen, other))
        {
            throw new HmmTestFailure(Describe($"ASSERT_NE({seenExpr}, {otherExpr}) failed: both {Show(seen)}", line));
        }
    }

    public void AssertTrue(bool condition, string what, [CallerLineNumber] int line = 0)
    {
        if (!condition)
        {
            throw new HmmTestFailure(Describe($"ASSERT({what}) failed", line));
        }
    }

    /// <summary>EXPECT_EQ: records a failure and continues; the case fails at its end.</summary>
    public void ExpectEq<T>(T seen, T expected, [CallerArgumentExpression(nameof(seen))] string seenExpr = "",
        [CallerArgumentExpression(nameof(expected))] string expectedExpr = "", [CallerLineNumber] int line = 0)
    {
        if (!EqualityComparer<T>.Default.Equals(seen, expected))
        {
            _expectFailures.Add(Describe($"EXPECT_EQ({seenExpr}, {expectedExpr}) failed: {Show(seen)} != {Show(expected)}", line));
        }
    }

    public void ExpectTrue(bool condition, string what, [CallerLineNumber] int line = 0)
    {
        if (!condition)
        {
            _expectFailures.Add(Describe($"EXPECT({what}) failed", line));
        }
    }

    /// <summary>ASSERT_EQ(ptr[i], expected(i)) for every i in [from, to) of the int array at <paramref name="addr"/>.</summary>
    public void AssertInts(ulong addr, ulong from, ulong to, Func<ulong, int> expected, string what, [CallerLineNumber] int line = 0)
        => AssertInts(P, addr, from, to, expected, what, line);

    public void AssertInts(HmmProcess p, ulong addr, ulong from, ulong to, Func<ulong, int> expected, string what, [CallerLineNumber] int line = 0)
    {
        if (p.FirstMismatch(addr, from, to, expected) is { } m)
        {
            throw new HmmTestFailure(Describe($"ASSERT_EQ({what}[{m.Index}], {expected(m.Index)}) failed: saw {m.Seen}", line));
        }
    }

    private string Describe(string message, int line)
    {
        string s = $"{message} (line {line})";
        if (LastDriverError is not null)
        {
            s += $"; last failed command: {LastDriverError}";
        }
        if (P.LastSyscallError is not null)
        {
            s += $"; last failed syscall: {P.LastSyscallError}";
        }
        return s;
    }

    private static string Show<T>(T v) => v switch
    {
        int i when i < 0 && -i < 200 => $"{i} ({(Errno)(-i)})",
        byte b => $"0x{b:x2}",
        _ => v?.ToString() ?? "null",
    };

    public static ulong Align(ulong x, ulong a) => (x + (a - 1)) & ~(a - 1);
}
