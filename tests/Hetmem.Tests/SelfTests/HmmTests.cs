using Hetmem.Devices.Dmirror.SelfTests;
using Xunit.Abstractions;

namespace Hetmem.Tests.SelfTests;

/// <summary>
/// The port of tools/testing/selftests/mm/hmm-tests.c (plus Hetmem's additions): every case of
/// <see cref="HmmSelfTests"/> runs as its own test, the same code <c>hetmem selftest</c> runs.
/// </summary>
public sealed class HmmTests : IDisposable
{
    private readonly OutputWriter _output;

    public HmmTests(ITestOutputHelper output)
    {
        _output = new OutputWriter(output);
        HmmSelfTests.Output = _output;
    }

    public static TheoryData<string> KernelCaseNames => [.. HmmSelfTests.Cases.Select(c => c.Name)];

    public static TheoryData<string> HetmemCaseNames => [.. HmmSelfTests.ExtraCases.Select(c => c.Name)];

    [Theory]
    [MemberData(nameof(KernelCaseNames))]
    public void EveryKernelHmmSelfTestCasePasses(string name)
    {
        HmmSelfTestCase c = HmmSelfTests.Find(name);
        Assert.Null(c.SkipReason);
        c.Run();
    }

    [Theory]
    [MemberData(nameof(HetmemCaseNames))]
    public void EveryHetmemAdditionToTheHmmSuitePasses(string name)
    {
        HmmSelfTestCase c = HmmSelfTests.Find(name);
        Assert.Null(c.SkipReason);
        c.Run();
    }

    [Fact]
    public void TheSuiteHas76KernelCasesInKselftestHarnessOrder()
    {
        IReadOnlyList<HmmSelfTestCase> cases = HmmSelfTests.Cases;
        Assert.Equal(76, cases.Count);
        Assert.Equal(Enumerable.Range(1, 76), cases.Select(c => c.Number));
        Assert.Equal("hmm.hmm_device_private.open_close", cases[0].Name);
        Assert.Equal("hmm.hmm_device_private.benchmark_thp_migration", cases[34].Name);
        Assert.Equal("hmm.hmm_device_coherent.open_close", cases[35].Name);
        Assert.Equal("hmm2.hmm2_device_private.migrate_mixed", cases[70].Name);
        Assert.Equal("hmm2.hmm2_device_private.double_map", cases[72].Name);
        Assert.Equal("hmm2.hmm2_device_coherent.double_map", cases[75].Name);
        Assert.Equal(76, cases.Select(c => c.Name).Distinct().Count());
        Assert.All(cases, c => Assert.Null(c.SkipReason));
    }

    [Fact]
    public void TheHetmemAdditionsAreNumberedAfterTheKernelCases()
    {
        Assert.Equal(77, HmmSelfTests.ExtraCases[0].Number);
        Assert.All(HmmSelfTests.ExtraCases, c => Assert.StartsWith("hetmem.dmirror.", c.Name, StringComparison.Ordinal));
        Assert.Contains(HmmSelfTests.ExtraCases, c => c.Name == "hetmem.dmirror.dax_snapshot_pmd_pud");
        Assert.Equal(HmmSelfTests.Cases.Count + HmmSelfTests.ExtraCases.Count, HmmSelfTests.All.Count);
    }

    public void Dispose() => HmmSelfTests.Output = null;

    private sealed class OutputWriter(ITestOutputHelper helper) : TextWriter
    {
        public override System.Text.Encoding Encoding => System.Text.Encoding.UTF8;

        public override void WriteLine(string? value)
        {
            try
            {
                helper.WriteLine(value ?? "");
            }
            catch (InvalidOperationException)
            {
                // The test already finished (a late child message).
            }
        }
    }
}
