using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Hetmem.Benchmarks;

// BenchmarkSwitcher picks benchmarks from the command line (--filter '*TraceLog*', --list flat, --inProcess, …).
// Only a Release build measures anything; a Debug build runs a quick in-process smoke pass.
#if DEBUG
IConfig config = new DebugInProcessConfig();
#else
IConfig config = HetmemBenchConfig.Create();
#endif
IEnumerable<Summary> summaries = BenchmarkSwitcher.FromAssembly(typeof(HetmemBenchConfig).Assembly).Run(args, config);
// Every run is checked against allocation-budgets.json: a benchmark over its budget, or without one, fails the run.
return AllocationBudgets.Check(summaries, Console.Out) ? 0 : 1;
