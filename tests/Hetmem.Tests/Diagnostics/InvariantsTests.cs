using Hetmem.Diagnostics;

namespace Hetmem.Tests.Diagnostics;

[Collection(GlobalDiagnosticsCollection.Name)]
public class InvariantsTests
{
    private sealed class CountingFormattable
    {
        public int Formatted;

        public override string ToString()
        {
            Formatted++;
            return "formatted";
        }
    }

    [Fact]
    public void AFailedAssertThrowsWhereInvariantsAreCompiledIn()
    {
        if (Invariants.CompiledIn)
        {
            InvariantViolationException ex = Assert.Throws<InvariantViolationException>(() => Invariants.Assert(false, "frame 0x10 mapped -1 times"));
            Assert.Equal("frame 0x10 mapped -1 times", ex.Message);
        }
        else
        {
            Invariants.Assert(false, "compiled out");
        }
    }

    [Fact]
    public void AnAssertFormatsItsMessageOnlyWhenItFails()
    {
        var arg = new CountingFormattable();
        Invariants.Assert(true, $"value {arg}");
        Assert.Equal(0, arg.Formatted);
        if (Invariants.CompiledIn)
        {
            InvariantViolationException ex = Assert.Throws<InvariantViolationException>(() => Invariants.Assert(false, $"value {arg} at 0x{4096:x}"));
            Assert.Equal("value formatted at 0x1000", ex.Message);
            Assert.Equal(1, arg.Formatted);
        }
    }

    [Fact]
    public void CheckThrowsOnlyWhileTheSwitchIsOn()
    {
        bool was = Invariants.Enabled;
        try
        {
            Invariants.Enabled = false;
            Invariants.Check(false, "ignored while off");
            Invariants.Enabled = true;
            Assert.Throws<InvariantViolationException>(() => Invariants.Check(false, "reported while on"));
            Invariants.Check(true, "holds");
        }
        finally
        {
            Invariants.Enabled = was;
        }
    }

    [Fact]
    public void EveryViolationIsCounted()
    {
        long before = Invariants.Violations;
        Assert.Throws<InvariantViolationException>(() => Invariants.Fail("counted"));
        Assert.Equal(before + 1, Invariants.Violations);
    }

    [Fact]
    public void TheSwitchIsOnInBuildsWithInvariantsCompiledIn()
    {
        if (Invariants.CompiledIn)
        {
            Assert.True(Invariants.Enabled);
        }
    }
}
