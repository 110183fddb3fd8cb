using Hetmem.Devices.Dmirror.SelfTests;

namespace Hetmem.Cli.Selftests;

/// <summary>
/// Registers the port of the kernel's HMM self-tests (tools/testing/selftests/mm/hmm-tests.c on the dmirror device,
/// <c>HmmSelfTests</c>) in the kselftest harness order: the 76 kernel cases (<c>hmm.*</c>, <c>hmm2.*</c>), then the
/// Hetmem additions (<c>hetmem.dmirror.*</c>), then Hetmem's own checks of the layers below (<c>hetmem.*</c>).
/// </summary>
internal sealed class KernelSelftests : ICliExtension
{
    /// <inheritdoc/>
    public void Register(CliRegistries registries)
    {
        foreach (HmmSelfTestCase c in HmmSelfTests.All)
        {
            HmmSelfTestCase kase = c;
            registries.Selftests.Add(kase.Name, ctx =>
            {
                if (kase.SkipReason is { } why)
                {
                    Selftest.Skip(why);
                }
                TextWriter? previous = HmmSelfTests.Output;
                HmmSelfTests.Output = ctx.Comments;
                try
                {
                    kase.Run();
                }
                finally
                {
                    HmmSelfTests.Output = previous;
                }
            });
        }
        BuiltinSelftests.Register(registries.Selftests);
    }
}
