using System.Runtime.Intrinsics;
using Lckv.Numerics;

namespace Lckv.Tests.Numerics;

[Trait("Category", "Kernels")]
public class ExpTests
{
    [Fact]
    public void VectorExpIsWithinTwoUlpOfTheExactValue()
    {
        if (!Vector512.IsHardwareAccelerated) return; // the 512-bit kernel only exists there; other paths use the library's
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
