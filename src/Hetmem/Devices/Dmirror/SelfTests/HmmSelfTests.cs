using System.Diagnostics;
using System.Globalization;

namespace Hetmem.Devices.Dmirror.SelfTests;

/// <summary>One self-test case: its kselftest name, the code that runs it (throws on failure), and a skip reason if it cannot run.</summary>
/// <param name="Number">The TAP number in harness order (1-based).</param>
/// <param name="Name">kselftest name, <c>fixture.variant.test</c>, e.g. <c>hmm.hmm_device_private.anon_read</c>.</param>
/// <param name="Run">Runs the case on a fresh machine; returns on success, throws <see cref="HmmTestFailure"/> (or the unexpected exception) on failure.</param>
/// <param name="SkipReason">When not null the case must be reported as skipped with this reason instead of run.</param>
internal sealed record HmmSelfTestCase(int Number, string Name, Action Run, string? SkipReason = null);

/// <summary>
/// The port of tools/testing/selftests/mm/hmm-tests.c onto the dmirror device, one case per kernel test and variant
/// in the kselftest harness order (fixture hmm: private then coherent, 35 tests each; fixture hmm2: private then
/// coherent, 3 tests each = 76 cases), plus the Hetmem additions the kernel suite lacks (<see cref="ExtraCases"/>).
/// Both xunit (tests/Hetmem.Tests/SelfTests/HmmTests.cs) and <c>hetmem selftest</c> run these cases.
/// </summary>
/// <remarks>
/// Each case runs on its own thread on a fresh <see cref="HmmEnvironment"/> (128 MiB of RAM; 768 MiB for
/// benchmark_thp_migration): the fixture opens its device nodes, the body runs, the fixture closes them, the test
/// process exits, every child is reaped, and the RAM frames in use must be back to their starting count. A case that
/// does not finish in its time limit fails and its machine is leaked rather than freed under a running thread.
/// </remarks>
internal static partial class HmmSelfTests
{
    /// <summary>RAM of a case's machine.</summary>
    public const ulong DefaultRamBytes = 128UL << 20;
    /// <summary>RAM of benchmark_thp_migration (256 MiB buffer + 256 MiB mirror + 256 MiB of backing pages).</summary>
    public const ulong BenchmarkRamBytes = 768UL << 20;
    /// <summary>Default time limit of a case (the kselftest default is 30 s; Hetmem runs Debug builds too).</summary>
    public const int DefaultTimeoutSeconds = 180;

    private static readonly object s_logLock = new();

    private enum Fixture
    {
        Hmm,
        Hmm2,
    }

    private sealed record TestDef(string Name, Action<HmmSelf> Body, ulong RamBytes = DefaultRamBytes, int TimeoutSeconds = DefaultTimeoutSeconds);

    /// <summary>Where benchmark tables and child-process failures are written (TAP comment lines); null discards them.</summary>
    public static TextWriter? Output { get; set; }

    /// <summary>Writes one diagnostic line (prefixed with "# ") to <see cref="Output"/>.</summary>
    public static void Log(string line)
    {
        TextWriter? w = Output;
        if (w is null)
        {
            return;
        }
        lock (s_logLock)
        {
            foreach (string l in line.Split('\n'))
            {
                w.WriteLine("# " + l.TrimEnd('\r'));
            }
            w.Flush();
        }
    }

    /// <summary>Fixture hmm's tests in source order.</summary>
    private static TestDef[] HmmTests =>
    [
        new("open_close", OpenClose),
        new("anon_read", AnonRead),
        new("anon_read_prot", AnonReadProt),
        new("anon_write", AnonWrite),
        new("anon_write_prot", AnonWriteProt),
        new("anon_write_child", AnonWriteChild),
        new("anon_write_child_shared", AnonWriteChildShared),
        new("anon_write_huge", AnonWriteHuge),
        new("anon_write_hugetlbfs", AnonWriteHugetlbfs),
        new("file_read", FileRead),
        new("file_write", FileWrite),
        new("migrate", Migrate),
        new("migrate_file_private", MigrateFilePrivate),
        new("migrate_fault", MigrateFault),
        new("migrate_release", MigrateRelease),
        new("migrate_shared", MigrateShared),
        new("migrate_multiple", MigrateMultiple),
        new("anon_read_multiple", AnonReadMultiple),
        new("anon_teardown", AnonTeardown),
        new("mixedmap", Mixedmap),
        new("compound", Compound),
        new("exclusive", Exclusive),
        new("exclusive_mprotect", ExclusiveMprotect),
        new("exclusive_cow", ExclusiveCow),
        new("hmm_gup_test", HmmGupTest),
        new("hmm_cow_in_device", HmmCowInDevice),
        new("migrate_anon_huge_empty", MigrateAnonHugeEmpty),
        new("migrate_anon_huge_zero", MigrateAnonHugeZero),
        new("migrate_anon_huge_free", MigrateAnonHugeFree),
        new("migrate_anon_huge_fault", MigrateAnonHugeFault),
        new("migrate_partial_unmap_fault", MigratePartialUnmapFault),
        new("migrate_remap_fault", MigrateRemapFault),
        new("migrate_anon_huge_err", MigrateAnonHugeErr),
        new("migrate_anon_huge_zero_err", MigrateAnonHugeZeroErr),
        new("benchmark_thp_migration", BenchmarkThpMigration, BenchmarkRamBytes, 900),
    ];

    /// <summary>Fixture hmm2's tests in source order.</summary>
    private static TestDef[] Hmm2Tests =>
    [
        new("migrate_mixed", MigrateMixed),
        new("snapshot", Snapshot),
        new("double_map", DoubleMap),
    ];

    /// <summary>The 76 kernel cases in harness order (hmm private, hmm coherent, hmm2 private, hmm2 coherent).</summary>
    public static IReadOnlyList<HmmSelfTestCase> Cases { get; } = BuildCases();

    /// <summary>The Hetmem additions (DAX through dmirror, mprotect and munmap races), numbered after <see cref="Cases"/>.</summary>
    public static IReadOnlyList<HmmSelfTestCase> ExtraCases { get; } = BuildExtraCases(77);

    /// <summary><see cref="Cases"/> followed by <see cref="ExtraCases"/>.</summary>
    public static IReadOnlyList<HmmSelfTestCase> All { get; } = [.. Cases, .. ExtraCases];

    /// <summary>The case named <paramref name="name"/>.</summary>
    /// <exception cref="KeyNotFoundException">No such case.</exception>
    public static HmmSelfTestCase Find(string name)
        => All.FirstOrDefault(c => c.Name == name) ?? throw new KeyNotFoundException($"no hmm self-test named {name}");

    private static HmmSelfTestCase[] BuildCases()
    {
        var list = new List<HmmSelfTestCase>(76);
        int n = 1;
        foreach ((string variant, int dev) in new[] { ("hmm_device_private", 0), ("hmm_device_coherent", 2) })
        {
            foreach (TestDef t in HmmTests)
            {
                TestDef def = t;
                list.Add(new HmmSelfTestCase(n++, $"hmm.{variant}.{t.Name}", () => RunCase(def, Fixture.Hmm, dev, -1)));
            }
        }
        foreach ((string variant, int dev0, int dev1) in new[] { ("hmm2_device_private", 0, 1), ("hmm2_device_coherent", 2, 3) })
        {
            foreach (TestDef t in Hmm2Tests)
            {
                TestDef def = t;
                list.Add(new HmmSelfTestCase(n++, $"hmm2.{variant}.{t.Name}", () => RunCase(def, Fixture.Hmm2, dev0, dev1)));
            }
        }
        return [.. list];
    }

    private static HmmSelfTestCase[] BuildExtraCases(int first)
    {
        var list = new List<HmmSelfTestCase>();
        int n = first;
        foreach (TestDef t in HetmemTests)
        {
            TestDef def = t;
            list.Add(new HmmSelfTestCase(n++, $"hetmem.dmirror.{t.Name}", () => RunCase(def, Fixture.Hmm, 0, -1)));
        }
        return [.. list];
    }

    /// <summary>
    /// Runs one case like the kselftest harness runs a TEST_F: setup (open the device files), the body, teardown
    /// (close them, asserting success), then the test process exits; afterwards every child is reaped and the frame
    /// balance is checked.
    /// </summary>
    private static void RunCase(TestDef t, Fixture fixture, int dev0, int dev1)
    {
        Exception? failure = null;
        HmmEnvironment? env = null;
        var thread = new Thread(() =>
        {
            try
            {
                env = new HmmEnvironment(t.RamBytes);
                failure = RunInEnvironment(env, t, fixture, dev0, dev1);
            }
            catch (Exception ex)
            {
                failure = ex;
            }
        }, 16 << 20)
        { IsBackground = true, Name = $"hmm selftest {t.Name}" };
        var sw = Stopwatch.StartNew();
        thread.Start();
        if (!thread.Join(TimeSpan.FromSeconds(t.TimeoutSeconds)))
        {
            // The machine stays allocated: a thread is still inside it.
            throw new HmmTestFailure($"{t.Name}: timed out after {t.TimeoutSeconds} s (kselftest: TEST_F timeout)");
        }
        if (failure is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(failure).Throw();
        }
        Log(string.Create(CultureInfo.InvariantCulture, $"{t.Name}: {sw.Elapsed.TotalMilliseconds:0} ms"));
    }

    private static Exception? RunInEnvironment(HmmEnvironment env, TestDef t, Fixture fixture, int dev0, int dev1)
    {
        Exception? failure = null;
        HmmProcess p = env.StartProcess();
        var self = new HmmSelf(env, p, dev0, fixture == Fixture.Hmm2 ? dev1 : -1);
        bool setUp = false;
        try
        {
            // FIXTURE_SETUP
            self.Fd0 = p.HmmOpen(dev0);
            if (fixture == Fixture.Hmm2)
            {
                self.Fd1 = p.HmmOpen(dev1);
            }
            setUp = true;
            t.Body(self);
        }
        catch (Exception ex)
        {
            failure = ex;
        }
        try
        {
            // FIXTURE_TEARDOWN: close() must return 0.
            if (setUp)
            {
                self.AssertEq(p.Close(self.Fd0), 0);
                if (fixture == Fixture.Hmm2)
                {
                    self.AssertEq(p.Close(self.Fd1), 0);
                }
            }
        }
        catch (Exception ex)
        {
            failure ??= ex;
        }
        failure ??= ReapAndExit(env, p);
        if (failure is null && self.ExpectFailures.Count > 0)
        {
            failure = new HmmTestFailure(string.Join("; ", self.ExpectFailures));
        }
        if (!env.UnsafeToDispose)
        {
            try
            {
                if (failure is null)
                {
                    env.CheckFrameBalance();
                }
            }
            catch (Exception ex)
            {
                failure = ex;
            }
            env.Dispose();
        }
        return failure;
    }

    /// <summary>The test process exits; children still running are killed (the harness kills the process group) and reaped.</summary>
    private static Exception? ReapAndExit(HmmEnvironment env, HmmProcess main)
    {
        Exception? failure = null;
        try
        {
            main.ExitResources();
        }
        catch (Exception ex)
        {
            failure = ex;
        }
        HmmProcess[] all;
        lock (env.Processes)
        {
            all = [.. env.Processes];
        }
        foreach (HmmProcess c in all)
        {
            if (c == main)
            {
                continue;
            }
            if (!c.Exited)
            {
                HmmProcess.Kill(c, Signals.SigKill);
            }
            try
            {
                HmmProcess.WaitPid(c, TimeSpan.FromSeconds(30));
            }
            catch (Exception ex)
            {
                failure ??= ex;
            }
        }
        return failure;
    }
}
