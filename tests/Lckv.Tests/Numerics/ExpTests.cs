using System.Runtime.Intrinsics;
using Lckv.Numerics;

namespace Lckv.Tests.Numerics;

[Trait("Category", "Kernels")]
public class ExpTests
{
    // the kernel is 512-bit only (its callers use the library's exp on other hardware): skipped, not passed, elsewhere
    [Vector512Fact]
    public void VectorExpIsWithinTwoUlpOfTheExactValue()
    {
        var xs = new List<float>();
        for (double x = -90; x <= 90; x += 0.0137) xs.Add((float)x);
        var rng = new Random(21);
        for (int i = 0; i < 20000; i++) xs.Add((float)(rng.NextDouble() * 40 - 30));
        xs.AddRange([0f, -0f, 1e-30f, -1e-30f, 88.7f, -87.3f, 0.34657359f, -0.34657359f]);
        double worst = 0;
        var buf = new float[16];
        for (int i = 0; i < xs.Count; i += 16)
        {
            int n = Math.Min(16, xs.Count - i);
            Array.Clear(buf);
            xs.CopyTo(i, buf, 0, n);
            var e = Simd.Exp(Vector512.Create(buf));
            for (int j = 0; j < n; j++)
            {
                float x = buf[j], got = e[j];
                double exact = Math.Exp(x);
                if (x < -87.34f) { Assert.Equal(0f, got); continue; }
                if (x > 88.73f) { Assert.Equal(float.PositiveInfinity, got); continue; }
                if (exact < 1.2e-38) continue; // subnormal results: absolute error below 1e-38 is enough
                double ulp = (double)MathF.BitIncrement((float)exact) - (float)exact;
                double err = Math.Abs(got - exact) / Math.Max(ulp, float.Epsilon);
                worst = Math.Max(worst, err);
                Assert.True(err <= 2, $"exp({x:R}) = {got:R}, exact {exact:R} ({err:F2} ulp)");
            }
        }
        Assert.Equal(1f, Simd.Exp(Vector512<float>.Zero)[0]);
        Assert.Equal(0f, Simd.Exp(Vector512.Create(float.NegativeInfinity))[0]);
        Assert.Equal(float.PositiveInfinity, Simd.Exp(Vector512.Create(float.PositiveInfinity))[0]);
        Assert.True(float.IsNaN(Simd.Exp(Vector512.Create(float.NaN))[0]));
        Assert.True(worst > 0); // the sweep compared something
    }
}

public sealed class Vector512FactAttribute : FactAttribute
{
    public Vector512FactAttribute()
    {
        if (!Vector512.IsHardwareAccelerated) Skip = "512-bit vectors are not accelerated here (e.g. DOTNET_EnableAVX512F=0)";
    }
}

/// <summary>Runs only when CI names the vector path it asked the runtime for (LCKV_EXPECT_PATH = 512, 256 or scalar).</summary>
public sealed class ExpectedPathFactAttribute : FactAttribute
{
    public ExpectedPathFactAttribute()
    {
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("LCKV_EXPECT_PATH"))) Skip = "LCKV_EXPECT_PATH is not set";
    }
}

[Trait("Category", "Kernels")]
public class VectorPathTests
{
    // the kernel tests are rerun on the 256-bit and scalar paths by switching the runtime's vector support off with
    // environment variables; if a runtime stops honouring one, those runs would silently test the 512-bit path again
    [ExpectedPathFact]
    public void TheRuntimeTookThePathCiAskedFor()
    {
        string expected = Environment.GetEnvironmentVariable("LCKV_EXPECT_PATH")!;
        string actual = Vector512.IsHardwareAccelerated ? "512" : Vector256.IsHardwareAccelerated ? "256" : "scalar";
        Assert.Equal(expected, actual);
    }
}
