using System.Diagnostics;
using System.Globalization;
using System.Text;
using Hetmem.Devices.Dmirror;
using Hetmem.Devices.Gpu;
using Hetmem.Devices.Rdma;
using Hetmem.Diagnostics;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Cli.Stress;

/// <summary>
/// The oracle-checked stress engine behind <c>hetmem stress</c>: worker threads draw seeded random operations (CPU
/// stores and loads, mmap, munmap, mprotect, MADV_DONTNEED/PAGEOUT, mremap, fork, page-cache truncate and punch hole,
/// direct reclaim, dmirror READ/WRITE/MIGRATE/EXCLUSIVE, a probe device's TLB loads and stores, GPU kernel loads and
/// stores, a remote client's RDMA_READ/RDMA_WRITE through one ODP MR over the arena) against one
/// address space, and a <see cref="StressOracle"/> checks every value any of them observes.
/// </summary>
/// <remarks>
/// <para><b>Arena.</b> <see cref="StressLayout.Slots"/> fixed slots of <see cref="StressLayout.SlotPages"/> pages at
/// <see cref="ArenaBase"/>; a slot is either private anonymous memory (mmap/munmap/mremap/fork move it around) or a
/// MAP_SHARED mapping of its own page-cache file or of its own file on a DAX file system (truncate and punch hole
/// zero it; beyond EOF is SIGBUS / EFAULT / REM_ACCESS_ERR). The oracle models each page's
/// first word. Each worker also owns a small buffer (the dmirror commands' user pointer).</para>
/// <para><b>Teardown checks.</b> After the workers stop, every page is read once more by the CPU and checked (so a
/// device write that never became visible is caught), the devices are closed and the address space must have no
/// notifier left; after exit and unmount, RAM use must be back at its baseline.</para>
/// </remarks>
internal static unsafe class OracleStress
{
    /// <summary>Where the arena starts.</summary>
    public const ulong ArenaBase = 0x10_0000_0000;

    /// <summary>Where the workers' buffers start (one <see cref="BufferStride"/> each).</summary>
    public const ulong BufferBase = 0x20_0000_0000;

    /// <summary>Bytes between workers' buffers.</summary>
    public const ulong BufferStride = 1UL << 20;

    /// <summary>Pages in a worker's buffer (the longest device command).</summary>
    public const int BufferPages = 8;

    /// <summary>The writer id of fork children's stores (never legal in the parent).</summary>
    public const int ChildWriter = 255;

    private const int MaxErrors = 8;

    // More possible values than this and a moved page is recorded as Unknown (keeps the page's history short).
    private const int MaxMoveCandidates = 6;

    /// <summary>Runs the stress on <paramref name="memory"/> and tears everything down again.</summary>
    public static OracleStressResult Run(PhysicalMemory memory, OracleStressOptions options)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(options);
        var run = new RunState(memory, options);
        return run.Execute();
    }

    /// <summary>Everything one run shares between its workers.</summary>
    private sealed class RunState
    {
        public readonly PhysicalMemory Memory;
        public readonly OracleStressOptions Options;
        public readonly StressLayout Layout;
        public readonly StressOracle Oracle;
        public readonly OracleStressResult Result;
        public readonly CancellationTokenSource Stop = new();
        public AddressSpace Mm = null!;
        public SwapStore? Swap;
        public PageCacheFileSystem? PageCache;
        public string? PageCacheDir;
        public FileHandle?[] SlotFiles = [];
        public DaxNamespace? DaxNamespace;
        public DaxFileSystem? DaxFs;
        public DmirrorDriver? Driver;
        public DmirrorFile?[] Mirrors = new DmirrorFile?[4];
        public ProbeDevice? Probe;
        public GpuDevice? Gpu;
        public GpuContext? GpuContext;
        public RemoteClient? Remote;
        public Worker[] Workers = [];
        private readonly object _errorLock = new();

        /// <summary>Held across an mremap and its oracle bookkeeping (see Worker.Mremap).</summary>
        public readonly object MoveLock = new();

        public RunState(PhysicalMemory memory, OracleStressOptions options)
        {
            Memory = memory;
            Options = options;
            Layout = options.Layout;
            Oracle = new StressOracle(Layout.Pages);
            Result = new OracleStressResult { Seed = options.Seed };
        }

        public ulong SlotAddress(int slot) => ArenaBase + ((ulong)slot * (ulong)Layout.SlotPages << Page.Shift);

        public ulong SlotBytes => (ulong)Layout.SlotPages << Page.Shift;

        public void Error(string message)
        {
            lock (_errorLock)
            {
                if (Result.Errors.Count < MaxErrors)
                {
                    Result.Errors.Add(message);
                }
                if (Result.Errors.Count >= MaxErrors)
                {
                    Stop.Cancel();
                }
            }
        }

        public OracleStressResult Execute()
        {
            long baseline = Memory.UsedFrames;
            long invalidationsBefore = Counters.Read(Counter.IntervalInvalidate);
            FaultSites sites = FaultSites.FrameAllocation | FaultSites.PageTableAllocation | FaultSites.DeviceMemoryAllocation;
            try
            {
                SetUp();
                if (Options.FailRate > 0)
                {
                    FaultInjection.Configure(Options.Seed, Options.FailRate, sites, domain: Memory);   // only this run's machine
                }
                var sw = Stopwatch.StartNew();
                try
                {
                    RunWorkers(sw);
                }
                finally
                {
                    if (Options.FailRate > 0)
                    {
                        Result.InjectedFailures = FaultInjection.Injected(sites);
                        FaultInjection.Disable();
                    }
                }
                Result.Seconds = sw.Elapsed.TotalSeconds;
                FinalSweep();
                Result.Invalidations = Counters.Read(Counter.IntervalInvalidate) - invalidationsBefore;
            }
            finally
            {
                TearDown();
            }
            Result.LeakedFrames = Memory.UsedFrames - baseline;
            foreach (Worker w in Workers)
            {
                Result.Operations += w.Operations;
                Result.DeviceOperations += w.DeviceOperations;
                Result.Signals += w.Signals;
                Result.ExpectedErrors += w.ExpectedErrors;
                for (int k = 0; k < Result.ByKind.Length; k++)
                {
                    Result.ByKind[k] += w.ByKind[k];
                }
            }
            Result.Violations = Oracle.ViolationCount;
            Result.Checks = Oracle.Checks;
            if (Result.Violations > 0)
            {
                Result.Report = BuildReport();
            }
            return Result;
        }

        private void SetUp()
        {
            Swap = new SwapStore((uint)Layout.Pages * 2);
            Mm = new AddressSpace(Memory, Swap);
            if (Layout.HasFileSlots)
            {
                PageCacheDir = Directory.CreateTempSubdirectory("hetmem-stress-").FullName;
            }
            if (Layout.FileSlotEvery > 0)
            {
                PageCache = new PageCacheFileSystem(Memory, PageCacheDir!);
            }
            int daxSlots = Enumerable.Range(0, Layout.Slots).Count(Layout.IsDaxSlot);
            if (daxSlots > 0)
            {
                // 2 MiB of file-system metadata, then room for every slot file in its own 2 MiB block (sparse host file).
                ulong bytes = (ulong)(daxSlots + 2) << (Page.Shift + Page.PmdOrder);
                DaxNamespace = new DaxNamespace(Memory, Path.Combine(PageCacheDir!, "pmem0"), bytes);
                DaxFs = DaxFileSystem.Format(DaxNamespace);
            }
            SlotFiles = new FileHandle?[Layout.Slots];
            for (int s = 0; s < Layout.Slots; s++)
            {
                if (Layout.IsSharedSlot(s))
                {
                    string name = string.Create(CultureInfo.InvariantCulture, $"slot{s}");
                    FileHandle h = Layout.IsDaxSlot(s) ? DaxFs!.Create(name) : PageCache!.Create(name);
                    h.Truncate(SlotBytes);
                    SlotFiles[s] = h;
                    Mm.MmapFile(SlotAddress(s), SlotBytes, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Fixed, h);
                }
                else
                {
                    Mm.Mmap(SlotAddress(s), SlotBytes, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
                }
            }
            Workers = new Worker[Math.Max(1, Options.Threads)];
            for (int t = 0; t < Workers.Length; t++)
            {
                ulong buf = BufferBase + (ulong)t * BufferStride;
                Mm.Mmap(buf, (ulong)BufferPages << Page.Shift, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed);
                Workers[t] = new Worker(this, t, buf);
            }
            if (Options.Devices)
            {
                Driver = new DmirrorDriver(Memory);
                Mirrors[0] = Driver.Open(0, Mm);
                Mirrors[2] = Driver.Open(2, Mm);
                Probe = new ProbeDevice(Mm, ArenaBase, Layout.Pages, Options.PlantStaleBug);
                if (Options.Gpu)
                {
                    Gpu = new GpuDevice(Memory, new GpuDeviceOptions { Name = "stress-gpu", ExecutionUnits = 2, VramBytes = 16UL << 20 });
                    GpuContext = Gpu.CreateContext(Mm);
                }
                if (Options.Rdma)
                {
                    Remote = new RemoteClient(Memory, Mm, ArenaBase, (ulong)Layout.Pages << Page.Shift);
                }
            }
        }

        private void RunWorkers(Stopwatch sw)
        {
            using CancellationTokenRegistration reg = Options.Cancellation.Register(() => Stop.Cancel());
            var threads = new Thread[Workers.Length];
            for (int t = 0; t < threads.Length; t++)
            {
                Worker w = Workers[t];
                threads[t] = new Thread(w.Loop) { IsBackground = true, Name = $"stress-{t}" };
                threads[t].Start();
            }
            while (!threads.All(th => th.Join(threads.Length == 1 ? 50 : 0)) && !Stop.IsCancellationRequested)
            {
                if (threads.Length > 1)
                {
                    Stop.Token.WaitHandle.WaitOne(50);
                }
                Options.Progress?.Invoke(Math.Min(1, sw.Elapsed / Options.Duration));
                if (sw.Elapsed >= Options.Duration || Oracle.ViolationCount > 0)
                {
                    Stop.Cancel();
                }
            }
            Stop.Cancel();
            foreach (Thread th in threads)
            {
                th.Join();
            }
            Options.Progress?.Invoke(1);
        }

        // Every page once more, quiescent: a value written by a device must be what the CPU reads now.
        private void FinalSweep()
        {
            using var cpu = new Cpu(Mm);
            for (int gp = 0; gp < Layout.Pages; gp++)
            {
                ulong va = ArenaBase + ((ulong)gp << Page.Shift);
                long s = Oracle.Tick();
                try
                {
                    ulong v = cpu.Read<ulong>(va);
                    Oracle.CheckRead(gp, v, s, Oracle.Tick(), -1, -1, "final CPU read after the workers stopped");
                }
                catch (Exception ex) when (ex is SegmentationFault or BusError or MmException)
                {
                    // unmapped slot, or a truncated file page mid-window: nothing to compare
                }
            }
        }

        private void TearDown()
        {
            if (Remote is not null)
            {
                if (Remote.InternalErrors > 0)
                {
                    Error($"RDMA device thread failed: {Remote.LastInternalError}");
                }
                Result.RdmaReconnects = Remote.Reconnects;
                Remote.Dispose();
            }
            Probe?.Dispose();
            foreach (DmirrorFile? f in Mirrors)
            {
                f?.Close();
            }
            GpuContext?.Dispose();
            Gpu?.Dispose();          // migrates its VRAM pages back while the address space is alive
            if (Mm is not null)
            {
                Result.NotifiersLeft = Mm.Notifiers.IntervalCount + Mm.Notifiers.ClassicCount;
                Mm.Exit();
            }
            Driver?.Dispose();
            foreach (FileHandle? h in SlotFiles)
            {
                h?.Dispose();
            }
            PageCache?.Dispose();
            DaxFs?.Dispose();
            DaxNamespace?.Dispose();
            Swap?.Dispose();
            if (PageCacheDir is not null)
            {
                try
                {
                    Directory.Delete(PageCacheDir, recursive: true);
                }
                catch (IOException)
                {
                    // best effort: a leftover temporary directory is harmless
                }
                catch (UnauthorizedAccessException)
                {
                }
            }
        }

        private string BuildReport()
        {
            var sb = new StringBuilder();
            IReadOnlyList<OracleViolation> vs = Oracle.Violations;
            sb.Append(CultureInfo.InvariantCulture, $"{Oracle.ViolationCount} violation(s); the first {Math.Min(3, vs.Count)}:\n");
            foreach (OracleViolation v in vs.Take(3))
            {
                int gp = (int)v.Page;
                int slot = gp / Layout.SlotPages;
                ulong va = ArenaBase + ((ulong)gp << Page.Shift);
                sb.Append(CultureInfo.InvariantCulture,
                    $"VIOLATION: {v.What}: page {gp} (slot {slot}{(Layout.IsDaxSlot(slot) ? ", shared DAX file" : Layout.IsFileSlot(slot) ? ", shared file" : ", anonymous")}, va 0x{va:x}) " +
                    $"observed {StressOracle.Format(v.Observed)} over [t={v.ReadStart}, t={v.ReadEnd}] by thread {v.Thread} op #{v.Op}\n");
                sb.Append("  the oracle's stores of that page at the time:\n").Append(v.History);
                sb.Append("  operations around it touching that page, all threads:\n");
                var around = new List<(OpRecord R, int Thread)>();
                foreach (Worker w in Workers)
                {
                    foreach (OpRecord r in w.History())
                    {
                        int first = r.Op.Slot * Layout.SlotPages + r.Op.Page;
                        bool touches = (gp >= first && gp < first + r.Op.Pages)
                            || (r.Op.Kind == StressOpKind.Mremap && r.Op.Arg == slot)
                            || r.Op.Kind is StressOpKind.Reclaim or StressOpKind.Fork;
                        if (touches || (w.Id == v.Thread && r.Index >= v.Op - 3 && r.Index <= v.Op))
                        {
                            around.Add((r, w.Id));
                        }
                    }
                }
                foreach ((OpRecord r, int t) in around.Where(x => x.R.End >= v.ReadStart - 5000 && x.R.Start <= v.ReadEnd + 50).OrderBy(x => x.R.Start).TakeLast(30))
                {
                    sb.Append(CultureInfo.InvariantCulture, $"    [t={r.Start}, t={r.End}] thread {t} op #{r.Index}: {r.Op} -> {r.Outcome}\n");
                }
            }
            sb.Append("replay: ").Append(Options.ReplayCommand).Append('\n');
            return sb.ToString();
        }
    }

    /// <summary>One executed operation, for the history printed with a violation.</summary>
    private readonly record struct OpRecord(int Index, long Start, long End, StressOp Op, string Outcome);

    /// <summary>One worker thread: its generator, CPU, buffer and recent history.</summary>
    private sealed class Worker
    {
        private const int HistoryDepth = 512;

        private readonly RunState _run;
        private readonly StressOpGenerator _generator;
        private readonly ulong _buffer;
        private readonly OpRecord[] _history = new OpRecord[HistoryDepth];
        private readonly List<ulong> _candidates = [];
        private int _historyCount;
        private uint _seq;
        private int _op;
        private Cpu _cpu = null!;

        public long Operations;
        public long DeviceOperations;
        public long Signals;
        public long ExpectedErrors;
        public readonly long[] ByKind = new long[Enum.GetValues<StressOpKind>().Length];

        public Worker(RunState run, int id, ulong buffer)
        {
            _run = run;
            Id = id;
            _buffer = buffer;
            _generator = new StressOpGenerator(run.Options.Seed, id, run.Layout, run.Options.Devices);
            if (id == 0 && run.Options.RecordWorker0)
            {
                run.Result.Worker0Ops = [];
            }
        }

        public int Id { get; }

        private StressOracle Oracle => _run.Oracle;

        public IEnumerable<OpRecord> History()
        {
            int n = Math.Min(_historyCount, HistoryDepth);
            for (int i = _historyCount - n; i < _historyCount; i++)
            {
                yield return _history[i % HistoryDepth];
            }
        }

        public void Loop()
        {
            TraceLog.SetThreadTrack($"stress{Id}");
            using Cpu cpu = new(_run.Mm);
            _cpu = cpu;
            CancellationToken stop = _run.Stop.Token;
            long max = _run.Options.MaxOperations;
            while (!stop.IsCancellationRequested && (max == 0 || _op < max))
            {
                StressOp op = _generator.Next();
                _run.Result.Worker0Ops?.Add(op);
                int index = _op++;
                long start = Oracle.Tick();
                string outcome;
                if (_run.Options.SkipKinds.Contains(op.Kind))
                {
                    continue;
                }
                try
                {
                    outcome = Execute(op, index);
                }
                catch (Exception ex) when (ex is SegmentationFault or BusError)
                {
                    Signals++;
                    outcome = ex is BusError ? "SIGBUS" : "SIGSEGV";
                }
                catch (MmException ex) when (Expected(op.Kind, ex.Errno))
                {
                    ExpectedErrors++;
                    outcome = ex.Errno.ToString();
                }
                catch (InjectedFaultException ex) when (_run.Options.FailRate > 0)
                {
                    ExpectedErrors++;
                    outcome = "injected " + ex.Site;
                }
                catch (Exception ex)
                {
                    outcome = ex.GetType().Name;
                    _run.Error($"thread {Id} op #{index} ({op}): {ex.GetType().Name}: {ex.Message}");
                }
                Operations++;
                ByKind[(int)op.Kind]++;
                if (op.Kind >= StressOpKind.DevRead)
                {
                    DeviceOperations++;
                }
                _history[_historyCount++ % HistoryDepth] = new OpRecord(index, start, Oracle.Tick(), op, outcome);
            }
        }

        private bool Expected(StressOpKind kind, Errno e) =>
            _run.Options.FailRate > 0
            || e is Errno.ENOMEM                                  // part of the range is unmapped (madvise, mprotect)
            || (kind == StressOpKind.Mremap && e is Errno.EFAULT or Errno.EINVAL); // source split or unmapped

        private int PageIndex(StressOp op, int i = 0) => op.Slot * _run.Layout.SlotPages + op.Page + i;

        private ulong Va(StressOp op, int i = 0) => ArenaBase + ((ulong)PageIndex(op, i) << Page.Shift);

        private ulong Fresh(int page) => StressOracle.MakeValue(page, Id, ++_seq);

        private string Execute(StressOp op, int index)
        {
            ulong va = Va(op);
            ulong len = (ulong)op.Pages << Page.Shift;
            bool file = _run.Layout.IsSharedSlot(op.Slot);
            switch (op.Kind)
            {
                case StressOpKind.CpuWrite:
                    return Store(op, index, page =>
                    {
                        _cpu.Write(ArenaBase + ((ulong)page << Page.Shift), Fresh(page));
                        return Errno.Ok;
                    });
                case StressOpKind.CpuRead:
                {
                    long s = Oracle.Tick();
                    ulong v = _cpu.Read<ulong>(va);
                    Oracle.CheckRead(PageIndex(op), v, s, Oracle.Tick(), Id, index, "CPU load");
                    return StressOracle.Format(v);
                }
                case StressOpKind.Mprotect:
                    _run.Mm.Mprotect(va, len, op.Arg == 0 ? Prot.Read : Prot.Read | Prot.Write);
                    return "ok";
                case StressOpKind.Munmap:
                    return RangeStore(op, index, StressOracle.Unmapped, () => _run.Mm.Munmap(va, len));
                case StressOpKind.Mmap:
                    return RangeStore(op, index, 0, () => _run.Mm.Mmap(va, len, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed));
                case StressOpKind.DontNeed:
                    if (file)
                    {
                        _run.Mm.Madvise(va, len, Advice.DontNeed);
                        return "ok";
                    }
                    return RangeStore(op, index, 0, () => _run.Mm.Madvise(va, len, Advice.DontNeed));
                case StressOpKind.PageOut:
                    _run.Mm.Madvise(va, len, Advice.PageOut);
                    return "ok";
                case StressOpKind.Mremap:
                    return Mremap(op, index);
                case StressOpKind.Fork:
                    return Fork(op, index);
                case StressOpKind.PunchHole:
                {
                    FileHandle h = _run.SlotFiles[op.Slot]!;
                    ulong off = (ulong)op.Page << Page.Shift;
                    return RangeStore(op, index, 0, () => h.PunchHole(off, len));
                }
                case StressOpKind.Truncate:
                {
                    FileHandle h = _run.SlotFiles[op.Slot]!;
                    ulong off = (ulong)op.Page << Page.Shift;
                    var tail = op with { Pages = _run.Layout.SlotPages - op.Page };
                    return RangeStore(tail, index, 0, () =>
                    {
                        h.Truncate(off);
                        h.Truncate(_run.SlotBytes);
                    });
                }
                case StressOpKind.Reclaim:
                {
                    int n;
                    _run.Mm.MmapLock.EnterRead();
                    try
                    {
                        n = Reclaim.DirectReclaim(_run.Mm, 16 * op.Pages);
                    }
                    finally
                    {
                        _run.Mm.MmapLock.ExitRead();
                    }
                    return string.Create(CultureInfo.InvariantCulture, $"{n} pages reclaimed");
                }
                case StressOpKind.DevRead or StressOpKind.DevMigrate or StressOpKind.DevExclusive:
                    return DeviceRead(op, index);
                case StressOpKind.DevWrite:
                    return DeviceWrite(op, index);
                case StressOpKind.DevMigrateBack:
                {
                    var cmd = new DmirrorCmd { Addr = va, Ptr = _buffer, Npages = (ulong)op.Pages };
                    Errno e = _run.Mirrors[op.Arg]!.TryIoctl(DmirrorCommand.MigrateToSystem, ref cmd, _cpu);
                    return DeviceOutcome(op, index, e);
                }
                case StressOpKind.ProbeRead:
                {
                    long s = Oracle.Tick();
                    Errno e = _run.Probe!.Read(va, out ulong v, out bool freed);
                    long t = Oracle.Tick();
                    ReportFreed(op, index, freed, s, t);
                    if (e == Errno.Ok)
                    {
                        Oracle.CheckRead(PageIndex(op), v, s, t, Id, index, "probe device load through its TLB");
                        return StressOracle.Format(v);
                    }
                    return DeviceOutcome(op, index, e);
                }
                case StressOpKind.ProbeWrite:
                {
                    Errno result = Errno.Ok;
                    string done = Store(op, index, page =>
                    {
                        long s = Oracle.Tick();
                        result = _run.Probe!.Write(ArenaBase + ((ulong)page << Page.Shift), Fresh(page), out bool freed);
                        ReportFreed(op, index, freed, s, Oracle.Tick());
                        return result;
                    });
                    return result == Errno.Ok ? done : DeviceOutcome(op, index, result);
                }
                case StressOpKind.GpuLoad:
                {
                    if (_run.GpuContext is not { } ctx)
                    {
                        return "no GPU";
                    }
                    ulong v = 0;
                    long s = Oracle.Tick();
                    Errno e = Launch(ctx, g => v = g.Load<ulong>(va));
                    long t = Oracle.Tick();
                    if (e != Errno.Ok)
                    {
                        return DeviceOutcome(op, index, e);
                    }
                    Oracle.CheckRead(PageIndex(op), v, s, t, Id, index, "GPU kernel load");
                    return StressOracle.Format(v);
                }
                case StressOpKind.GpuStore:
                {
                    if (_run.GpuContext is not { } ctx)
                    {
                        return "no GPU";
                    }
                    Errno result = Errno.Ok;
                    string done = Store(op, index, page =>
                    {
                        ulong value = Fresh(page);
                        result = Launch(ctx, g => g.Store(va, value));
                        return result;
                    });
                    return result == Errno.Ok ? done : DeviceOutcome(op, index, result);
                }
                case StressOpKind.RemoteRead:
                {
                    if (_run.Remote is not { } remote)
                    {
                        return "no RDMA";
                    }
                    long s = Oracle.Tick();
                    WcStatus st = remote.Read(va, out ulong v);
                    long t = Oracle.Tick();
                    if (st != WcStatus.SUCCESS)
                    {
                        return RemoteOutcome(op, index, st);
                    }
                    Oracle.CheckRead(PageIndex(op), v, s, t, Id, index, "remote RDMA_READ through the ODP MR");
                    return StressOracle.Format(v);
                }
                case StressOpKind.RemoteWrite:
                {
                    if (_run.Remote is not { } remote)
                    {
                        return "no RDMA";
                    }
                    WcStatus st = WcStatus.SUCCESS;
                    string done = Store(op, index, page =>
                    {
                        st = remote.Write(ArenaBase + ((ulong)page << Page.Shift), Fresh(page));
                        return st == WcStatus.SUCCESS ? Errno.Ok : Errno.EFAULT;
                    });
                    return st == WcStatus.SUCCESS ? done : RemoteOutcome(op, index, st);
                }
                default:
                    throw new InvalidOperationException($"unknown operation {op.Kind}");
            }
        }

        // One GPU thread runs `kernel`; a fault the GPU could not service comes back as the launch's errno.
        private static Errno Launch(GpuContext ctx, GpuKernel kernel)
        {
            try
            {
                ctx.Launch(1, 1, kernel);
                return Errno.Ok;
            }
            catch (GpuLaunchException ex)
            {
                return ex.Errno;
            }
        }

        private void ReportFreed(StressOp op, int index, bool freed, long s, long t)
        {
            if (freed)
            {
                int page = PageIndex(op);
                Oracle.Report(new OracleViolation((ulong)page, 0, s, t, Id, index,
                    "probe device entry maps a frame that was freed (generation changed) while the device still mapped it", Oracle.Describe(page)));
            }
        }

        // A single-page store of a fresh value by `store` (which returns Ok when it happened).
        private string Store(StressOp op, int index, Func<int, Errno> store)
        {
            int page = PageIndex(op);
            ulong v = StressOracle.MakeValue(page, Id, _seq + 1);
            long s = Oracle.Begin(page, v, Id, index);
            StoreState state = StoreState.Maybe;
            try
            {
                state = store(page) == Errno.Ok ? StoreState.Definite : StoreState.Maybe;
            }
            finally
            {
                Oracle.Complete(page, s, v, Oracle.Tick(), state);
            }
            return StressOracle.Format(v);
        }

        // Every page of the range becomes `value` during `body`; definite when body returns.
        private string RangeStore(StressOp op, int index, ulong value, Action body)
        {
            Span<long> starts = stackalloc long[op.Pages];
            for (int i = 0; i < op.Pages; i++)
            {
                starts[i] = Oracle.Begin(PageIndex(op, i), value, Id, index);
            }
            StoreState state = StoreState.Maybe;
            try
            {
                body();
                state = StoreState.Definite;
            }
            finally
            {
                long end = Oracle.Tick();
                for (int i = 0; i < op.Pages; i++)
                {
                    Oracle.Complete(PageIndex(op, i), starts[i], value, end, state);
                }
            }
            return "ok";
        }

        private string Mremap(StressOp op, int index)
        {
            // mremaps are serialised by the mmap write lock anyway; holding MoveLock across the call and the
            // bookkeeping makes sure no move reads a slot whose incoming move is not recorded yet.
            lock (_run.MoveLock)
            {
                return MremapLocked(op, index);
            }
        }

        private string MremapLocked(StressOp op, int index)
        {
            int src = op.Slot * _run.Layout.SlotPages;
            int dst = op.Arg * _run.Layout.SlotPages;
            int n = _run.Layout.SlotPages;
            var srcStarts = new long[n];
            var dstStarts = new long[n];
            long s = Oracle.Tick();
            for (int i = 0; i < n; i++)
            {
                dstStarts[i] = Oracle.Begin(dst + i, StressOracle.Moving, Id, index);
                srcStarts[i] = Oracle.Begin(src + i, StressOracle.Unmapped, Id, index);
            }
            bool ok = false;
            try
            {
                _run.Mm.Mremap(_run.SlotAddress(op.Slot), _run.SlotBytes, _run.SlotBytes, MremapFlags.MayMove | MremapFlags.Fixed, _run.SlotAddress(op.Arg));
                ok = true;
            }
            finally
            {
                long end = Oracle.Tick();
                for (int i = 0; i < n; i++)
                {
                    _candidates.Clear();
                    bool maybeHole = false;
                    if (ok)
                    {
                        bool complete = Oracle.Candidates(src + i, s, end, _candidates);
                        // A hole in the source (Linux 6.17+ moves several VMAs and the holes between them) leaves
                        // the target page as it was: then the moved values are only possible, not certain.
                        maybeHole = _candidates.Remove(StressOracle.Unmapped);
                        if (!complete || _candidates.Count > MaxMoveCandidates)
                        {
                            _candidates.Clear();
                            _candidates.Add(StressOracle.Unknown);
                            maybeHole = true;
                        }
                    }
                    Oracle.CompleteMove(dst + i, dstStarts[i], end, _candidates, Id, index, certain: !maybeHole);
                    Oracle.Complete(src + i, srcStarts[i], StressOracle.Unmapped, end, ok ? StoreState.Definite : StoreState.Maybe);
                }
            }
            return "ok";
        }

        private string Fork(StressOp op, int index)
        {
            long s = Oracle.Tick();
            AddressSpace child = _run.Mm.Fork();
            long e = Oracle.Tick();
            int checkedPages = 0;
            try
            {
                using var cc = new Cpu(child);
                for (int i = 0; i < op.Pages; i++)
                {
                    ulong va = Va(op, i);
                    try
                    {
                        ulong v = cc.Read<ulong>(va);
                        Oracle.CheckRead(PageIndex(op, i), v, s, e, Id, index, "fork child's load of its copy (must be the parent's value at fork)");
                        cc.Write(va, StressOracle.MakeValue(PageIndex(op, i), ChildWriter, ++_seq));
                        checkedPages++;
                    }
                    catch (Exception ex) when (ex is SegmentationFault or BusError)
                    {
                        Signals++;
                    }
                }
            }
            finally
            {
                child.Exit();
            }
            return string.Create(CultureInfo.InvariantCulture, $"child checked {checkedPages} pages");
        }

        private string DeviceRead(StressOp op, int index)
        {
            DmirrorCommand command = op.Kind switch
            {
                StressOpKind.DevMigrate => DmirrorCommand.MigrateToDevice,
                StressOpKind.DevExclusive => DmirrorCommand.Exclusive,
                _ => DmirrorCommand.Read,
            };
            var cmd = new DmirrorCmd { Addr = Va(op), Ptr = _buffer, Npages = (ulong)op.Pages };
            long s = Oracle.Tick();
            Errno e = _run.Mirrors[op.Arg]!.TryIoctl(command, ref cmd, _cpu);
            long t = Oracle.Tick();
            if (e != Errno.Ok)
            {
                return DeviceOutcome(op, index, e);
            }
            for (int i = 0; i < op.Pages; i++)
            {
                ulong v = _cpu.Read<ulong>(_buffer + ((ulong)i << Page.Shift));
                Oracle.CheckRead(PageIndex(op, i), v, s, t, Id, index, $"dmirror{op.Arg} {command}");
            }
            return "ok";
        }

        private string DeviceWrite(StressOp op, int index)
        {
            Span<long> starts = stackalloc long[op.Pages];
            Span<ulong> values = stackalloc ulong[op.Pages];
            for (int i = 0; i < op.Pages; i++)
            {
                values[i] = Fresh(PageIndex(op, i));
                _cpu.Write(_buffer + ((ulong)i << Page.Shift), values[i]);
            }
            for (int i = 0; i < op.Pages; i++)
            {
                starts[i] = Oracle.Begin(PageIndex(op, i), values[i], Id, index);
            }
            var cmd = new DmirrorCmd { Addr = Va(op), Ptr = _buffer, Npages = (ulong)op.Pages };
            Errno e = Errno.EIO;
            try
            {
                e = _run.Mirrors[op.Arg]!.TryIoctl(DmirrorCommand.Write, ref cmd, _cpu);
            }
            finally
            {
                long end = Oracle.Tick();
                for (int i = 0; i < op.Pages; i++)
                {
                    Oracle.Complete(PageIndex(op, i), starts[i], values[i], end, e == Errno.Ok ? StoreState.Definite : StoreState.Maybe);
                }
            }
            return e == Errno.Ok ? "ok" : DeviceOutcome(op, index, e);
        }

        // REM_ACCESS_ERR: the responder's ODP fault failed (page unmapped, read-only for a write, beyond EOF).
        private string RemoteOutcome(StressOp op, int index, WcStatus st)
        {
            if (st == WcStatus.REM_ACCESS_ERR || _run.Options.FailRate > 0)
            {
                ExpectedErrors++;
            }
            else
            {
                _run.Error($"thread {Id} op #{index} ({op}): unexpected completion {st}");
            }
            return st.ToString();
        }

        // The errnos a device command may return in a race with munmap/mprotect/truncate: counted, not violations.
        private string DeviceOutcome(StressOp op, int index, Errno e)
        {
            if (e == Errno.Ok)
            {
                return "ok";
            }
            // EOPNOTSUPP: device-exclusive access to a shared file page (make_device_exclusive handles anonymous pages only).
            if (e is Errno.EFAULT or Errno.EPERM or Errno.EBUSY or Errno.ENOMEM or Errno.ENOENT or Errno.EINVAL
                || (e == Errno.EOPNOTSUPP && op.Kind == StressOpKind.DevExclusive) || _run.Options.FailRate > 0)
            {
                ExpectedErrors++;
            }
            else
            {
                _run.Error($"thread {Id} op #{index} ({op}): unexpected {e}");
            }
            return e.ToString();
        }
    }
}
