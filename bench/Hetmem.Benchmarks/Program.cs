using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Running;
using Hetmem.Benchmarks;

// BenchmarkSwitcher picks benchmarks from the command line (--filter '*TraceLog*', --list flat, --inProcess, …).
// Only a Release build measures anything; a Debug build runs a quick in-process smoke pass.
#if DEBUG
IConfig config = new DebugInProcessConfig();
#else
IConfig config = HetmemBenchConfig.Create();
#endif
BenchmarkSwitcher.FromAssembly(typeof(HetmemBenchConfig).Assembly).Run(args, config);
return 0;
