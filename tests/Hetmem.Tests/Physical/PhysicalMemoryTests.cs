using Hetmem.Physical;

namespace Hetmem.Tests.Physical;

public class PhysicalMemoryTests
{
    [Fact]
    public void FrameMetadataFitsInThirtyTwoBytes() => Assert.True(PhysicalMemory.FrameMetadataBytes <= 32);
}
