using System.Runtime.InteropServices;
using Lckv.Numerics;

namespace Lckv.Tests.Numerics;

public unsafe class HugePagesTests
{
    [Fact]
    public void LargeBuffersAreHugePageAlignedAndUsableSmallOnesAreLineAligned()
    {
        long large = HugePages.PageBytes * 2 + 12345;
        byte* p = (byte*)HugePages.Allocate(large);
        byte* q = (byte*)HugePages.Allocate(1000);
        try
        {
            if (OperatingSystem.IsLinux()) Assert.Equal(0, (long)p % HugePages.PageBytes);
            Assert.Equal(0, (long)p % 64);
            Assert.Equal(0, (long)q % 64);
            // every byte asked for is there (the last one included)
            new Span<byte>(p, (int)large).Fill(7);
            Assert.Equal(7, p[large - 1]);
            new Span<byte>(q, 1000).Fill(9);
            Assert.Equal(9, q[999]);
        }
        finally
        {
            NativeMemory.AlignedFree(p);
            NativeMemory.AlignedFree(q);
        }
    }
}
