using System.Text.Json;
using System.Text.RegularExpressions;
using Hetmem.Cli.Bench;
using Hetmem.Diagnostics;
using Hetmem.Tests.Diagnostics;

namespace Hetmem.Tests.Bench;

/// <summary>
/// The CI gate of bench/Hetmem.Benchmarks/allocation-budgets.json: every budgeted benchmark exists, and each hot path
/// named by the file allocates no more than its budget (0 B) per operation once warm. These are allocation checks on
/// small fixtures (a few dozen pages), not timings. Runs alone so no other test's trace recording is on.
/// </summary>
[Collection(GlobalDiagnosticsCollection.Name)]
public partial class AllocationBudgetTests
{
    private static readonly string s_repo = FindRepository();
    private static readonly string s_budgetFile = Path.Combine(s_repo, "bench", "Hetmem.Benchmarks", "allocation-budgets.json");

    public sealed record Budget(string Benchmark, long Bytes, string? HotPath, string? KnownCause);

    private static IReadOnlyList<Budget> Budgets()
    {
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllText(s_budgetFile));
        return [.. doc.RootElement.GetProperty("budgets").EnumerateArray().Select(e => new Budget(
            e.GetProperty("benchmark").GetString()!,
            e.GetProperty("bytes").GetInt64(),
            e.TryGetProperty("hotPath", out JsonElement h) && h.ValueKind == JsonValueKind.String ? h.GetString() : null,
            e.TryGetProperty("knownCause", out JsonElement k) ? k.GetString() : null))];
    }

    /// <summary>
    /// Each hot path: a fixture and one measured operation (any state reset it needs happens outside the measured
    /// window), returning the bytes the operation allocated on this thread.
    /// </summary>
    private static readonly Dictionary<string, Func<long>> s_hotPaths = new(StringComparer.Ordinal)
    {
        ["page-walk"] = () =>
        {
            using var fx = new ResidentRangeFixture(64);
            return Settle(() => Measure(() => fx.PageWalk()));
        },
        ["tlb-hit"] = () =>
        {
            using var fx = new TlbHitFixture();
            return Settle(() => Measure(() => fx.Chase(4096)));
        },
        ["anon-fault-cpu"] = () =>
        {
            using var fx = new AnonFaultFixture(16);
            return Settle(() =>
            {
                fx.Drop();
                return Measure(fx.CpuWrites);
            });
        },
        ["anon-fault-populate"] = () =>
        {
            using var fx = new AnonFaultFixture(16);
            return Settle(() =>
            {
                fx.Drop();
                return Measure(fx.Populate);
            });
        },
        ["munmap-mirrored"] = () =>
        {
            using var fx = new MirroredRangeFixture(16);
            return Settle(() =>
            {
                fx.Map();
                return Measure(fx.Unmap);
            });
        },
        ["mprotect-mirrored"] = () =>
        {
            using var fx = new MirroredRangeFixture(16);
            fx.Map();
            return Settle(() =>
            {
                fx.Unprotect();
                fx.MirrorAll();
                return Measure(fx.Protect);
            });
        },
        ["hmm-snapshot"] = () =>
        {
            using var fx = new ResidentRangeFixture(64);
            return Settle(() => Measure(() => Ok(fx.Snapshot())));
        },
        ["dax-pmd-snapshot"] = () =>
        {
            using var fx = new DaxPmdFixture(2UL << 20);
            Assert.Equal(1UL, fx.PmdEntries);
            return Settle(() => Measure(() => Ok(fx.Snapshot())));
        },
        ["migrate-to-device"] = () =>
        {
            using var fx = new MigrateFixture(2UL << 20);
            return Settle(() =>
            {
                long b = Measure(() => Moved(fx.ToDevice(), 512));
                Moved(fx.ToRam(), 512);
                return b;
            });
        },
        ["migrate-to-ram"] = () =>
        {
            using var fx = new MigrateFixture(2UL << 20);
            return Settle(() =>
            {
                Moved(fx.ToDevice(), 512);
                return Measure(() => Moved(fx.ToRam(), 512));
            });
        },
        ["trace-off"] = () =>
        {
            Assert.False(TraceLog.Enabled);
            return Settle(() => Measure(() =>
            {
                using (TraceLog.Span(TraceCategory.CpuFault, "anon", TraceArg.Address(0x1000)))
                {
                }
                TraceLog.Instant(TraceCategory.Invalidate, "unmap");
                TraceLog.Counter("resident_pages", "ram", 1);
                Counters.Inc(Counter.PgFault);
            }));
        },
    };

    public static TheoryData<string> HotPathNames() => [.. Budgets().Select(b => b.HotPath).OfType<string>().Distinct()];

    [Fact]
    public void TheBudgetFileNamesExistingBenchmarksAndGivesHotPathsZeroBytes()
    {
        IReadOnlyList<Budget> budgets = Budgets();
        Assert.NotEmpty(budgets);
        Assert.Equal(budgets.Count, budgets.Select(b => b.Benchmark).Distinct().Count());
        foreach (Budget b in budgets)
        {
            // Hetmem.Benchmarks.<Folder>.<Class>.<Method> → bench/Hetmem.Benchmarks/<Folder>/<Class>.cs has [Benchmark] <Method>.
            string[] parts = b.Benchmark.Split('.');
            Assert.True(parts.Length == 5 && parts[0] == "Hetmem" && parts[1] == "Benchmarks", $"{b.Benchmark} is not Hetmem.Benchmarks.Folder.Class.Method");
            string file = Path.Combine(s_repo, "bench", "Hetmem.Benchmarks", parts[2], parts[3] + ".cs");
            Assert.True(File.Exists(file), $"{b.Benchmark}: {file} does not exist");
            string source = File.ReadAllText(file);
            Assert.True(BenchmarkMethod().Matches(source).Any(m => m.Groups["name"].Value == parts[4]),
                $"{b.Benchmark}: no [Benchmark] method {parts[4]} in {Path.GetFileName(file)}");
            if (b.HotPath is not null)
            {
                Assert.True(b.Bytes == 0, $"{b.Benchmark} is a hot path with a budget of {b.Bytes} B; hot paths get 0 B");
                Assert.True(s_hotPaths.ContainsKey(b.HotPath), $"{b.Benchmark}: no allocation check named '{b.HotPath}'");
            }
        }
    }

    [Theory]
    [MemberData(nameof(HotPathNames))]
    public void AWarmHotPathAllocatesNothing(string hotPath)
    {
        Budget[] entries = [.. Budgets().Where(b => b.HotPath == hotPath)];
        long budget = entries.Min(b => b.Bytes);
        long bytes = s_hotPaths[hotPath]();
        string? cause = entries.Select(b => b.KnownCause).FirstOrDefault(c => c is not null);
        Assert.True(bytes <= budget, $"hot path '{hotPath}' allocated {bytes} B per call once warm (budget {budget} B)" + (cause is null ? "" : $"; known cause: {cause}"));
    }

    [GeneratedRegex(@"\[Benchmark[^\]]*\]\s*public\s+[\w<>\[\]?]+\s+(?<name>\w+)\s*\(", RegexOptions.CultureInvariant)]
    private static partial Regex BenchmarkMethod();

    // Checks inside a measured window must not allocate themselves (xunit's Assert.Equal boxes), hence these.
    private static void Ok(Errno e)
    {
        if (e != Errno.Ok)
        {
            throw new InvalidOperationException($"expected Ok, got {e}");
        }
    }

    private static void Moved(long pages, long expected)
    {
        if (pages != expected)
        {
            throw new InvalidOperationException($"migrated {pages} pages, expected {expected}");
        }
    }

    private static long Measure(Action op)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        op();
        return GC.GetAllocatedBytesForCurrentThread() - before;
    }

    /// <summary>
    /// Repeats <paramref name="measureOnce"/> until three readings in a row are 0, pausing now and then so tiered
    /// compilation can replace first-call (Tier-0) code, whose generic and enum helpers may box; returns 0 then, or the
    /// least reading after a few seconds. A path that really allocates never gets three zero readings in a row.
    /// </summary>
    private static long Settle(Func<long> measureOnce)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        long least = long.MaxValue;
        int zeros = 0;
        for (int i = 0; sw.Elapsed < TimeSpan.FromSeconds(4); i++)
        {
            long b = measureOnce();
            least = Math.Min(least, b);
            zeros = b == 0 ? zeros + 1 : 0;
            if (zeros == 3)
            {
                return 0;
            }
            if (i % 16 == 15)
            {
                Thread.Sleep(25);
            }
        }
        return least;
    }

    private static string FindRepository()
    {
        for (DirectoryInfo? d = new(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "Hetmem.slnx")))
            {
                return d.FullName;
            }
        }
        throw new InvalidOperationException($"no Hetmem.slnx above {AppContext.BaseDirectory}");
    }
}
