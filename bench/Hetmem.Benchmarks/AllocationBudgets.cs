using System.Globalization;
using System.Text.Json;
using BenchmarkDotNet.Reports;

namespace Hetmem.Benchmarks;

/// <summary>
/// allocation-budgets.json: the managed bytes each benchmark may allocate per operation (0 on hot paths), checked
/// against the MemoryDiagnoser's numbers after a run. The same file drives the CI test
/// tests/Hetmem.Tests/Bench/AllocationBudgetTests.cs.
/// </summary>
public static class AllocationBudgets
{
    /// <summary>The budget file next to the executable.</summary>
    public static string FilePath => Path.Combine(AppContext.BaseDirectory, "allocation-budgets.json");

    /// <summary>Budgets by full benchmark name (<c>Namespace.Class.Method</c>).</summary>
    public static IReadOnlyDictionary<string, long> Load(string? path = null)
    {
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllText(path ?? FilePath));
        return doc.RootElement.GetProperty("budgets").EnumerateArray()
            .ToDictionary(e => e.GetProperty("benchmark").GetString()!, e => e.GetProperty("bytes").GetInt64(), StringComparer.Ordinal);
    }

    /// <summary>Prints one line per measured benchmark and returns false when one is over its budget or has none.</summary>
    public static bool Check(IEnumerable<Summary> summaries, TextWriter output)
    {
        ArgumentNullException.ThrowIfNull(summaries);
        ArgumentNullException.ThrowIfNull(output);
        IReadOnlyDictionary<string, long> budgets = Load();
        bool ok = true;
        int checkedCount = 0;
        foreach (Summary s in summaries)
        {
            foreach (BenchmarkReport r in s.Reports)
            {
                string name = $"{r.BenchmarkCase.Descriptor.Type.FullName}.{r.BenchmarkCase.Descriptor.WorkloadMethod.Name}";
                long? bytes = r.GcStats.GetBytesAllocatedPerOperation(r.BenchmarkCase);
                if (bytes is null)
                {
                    continue; // no MemoryDiagnoser data (e.g. a failed benchmark, already reported by BenchmarkDotNet)
                }
                checkedCount++;
                if (!budgets.TryGetValue(name, out long budget))
                {
                    output.WriteLine($"allocation budget: {name} allocated {bytes} B/op and has no budget in allocation-budgets.json");
                    ok = false;
                }
                else if (bytes > budget)
                {
                    output.WriteLine($"allocation budget: {name} allocated {bytes} B/op, budget {budget} B/op");
                    ok = false;
                }
            }
        }
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"allocation budgets: {checkedCount} benchmarks checked, {(ok ? "all within budget" : "FAILED")}"));
        return ok;
    }
}
