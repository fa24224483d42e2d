using Lckv.Numerics;

namespace Lckv.Tests.Numerics;

[Trait("Category", "Kernels")]
public class ElementwiseTests
{
    public static TheoryData<DType> Types => new(TestData.FloatTypes);

    private static void Close(float expected, float actual, float tol, string what)
    {
        if (float.IsNaN(expected)) { Assert.True(float.IsNaN(actual), $"{what}: {actual}, expected NaN"); return; }
        Assert.True(Math.Abs(expected - actual) <= tol * Math.Max(1f, Math.Abs(expected)), $"{what}: {actual}, reference {expected}");
    }

    // GELU in f32 lanes against its scalar definition (f64), in place and on odd lengths; the definition itself against
    // known values of x * Phi(x) and the derivative against central differences
    [Fact]
    public void GeluMatchesItsReferenceAndTheNormalCdf()
    {
        var rng = new Random(31);
        for (int n = 1; n <= 53; n += 4)
        {
            var x = TestData.Random(rng, n, 6f);
            x[0] = 0; if (n > 1) x[1] = -12; if (n > 2) x[2] = 12;
            var expected = new float[n];
            Gelu.ApplyReference(x, expected);
            var actual = (float[])x.Clone();
            Gelu.Apply(actual, actual);
            for (int i = 0; i < n; i++) Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-6f * Math.Max(1f, Math.Abs(expected[i])), $"gelu({x[i]}) = {actual[i]}, reference {expected[i]}");
        }
        var xs = TestData.Random(rng, 37, 5f);
        var dy = TestData.Random(rng, 37, 1f);
        var scaled = (float[])dy.Clone();
        Gelu.MultiplyByDerivative(xs, scaled);
        for (int i = 0; i < xs.Length; i++)
            Assert.True(Math.Abs(dy[i] * Gelu.Derivative(xs[i]) - scaled[i]) <= 1e-6f, $"gelu'({xs[i]}) * {dy[i]} = {scaled[i]}");
        // x * Phi(x): Phi(1) = 0.841344746, Phi(-2) = 0.022750132, Phi(0.5) = 0.691462461
        Assert.Equal(0.841344746, Gelu.Apply(1f), 6);
        Assert.Equal(-2 * 0.022750132, Gelu.Apply(-2f), 6);
        Assert.Equal(0.5 * 0.691462461, Gelu.Apply(0.5f), 6);
        foreach (float v in new[] { -3f, -1f, -0.2f, 0f, 0.7f, 2.5f })
        {
            float a = v + 1e-3f, b = v - 1e-3f;
            Assert.Equal((Gelu.Apply(a) - (double)Gelu.Apply(b)) / ((double)a - b), Gelu.Derivative(v), 3);
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void RmsNormMatchesReferenceIncludingInPlace(DType dtype)
    {
        var rng = new Random(21);
        for (int c = 1; c <= 67; c++)
            foreach (int rows in new[] { 1, 3 })
            {
                var x = TestData.Random(rng, rows * c, 3f);
                using var wb = NativeBuffer.From(TestData.Random(rng, c), dtype, out _);
                var w = new WeightMatrix(wb.Address, dtype, 1, c);
                var expected = new float[rows * c];
                RmsNorm.ApplyReference(x, w, 1e-5f, expected, rows);
                var actual = new float[rows * c];
                RmsNorm.Apply(x, w, 1e-5f, actual, rows);
                var inPlace = (float[])x.Clone();
                RmsNorm.Apply(inPlace, w, 1e-5f, inPlace, rows);
                for (int i = 0; i < expected.Length; i++)
                {
                    Close(expected[i], actual[i], 1e-5f, $"c={c} rows={rows} [{i}]");
                    Assert.Equal(actual[i], inPlace[i]);
                }
            }
        // many rows across the pool
        var bx = TestData.Random(rng, 300 * 130);
        using var bw = NativeBuffer.From(TestData.Random(rng, 130), dtype, out _);
        var bwm = new WeightMatrix(bw.Address, dtype, 1, 130);
        var be = new float[bx.Length];
        RmsNorm.ApplyReference(bx, bwm, 1e-6f, be, 300);
        RmsNorm.Apply(bx, bwm, 1e-6f, bx, 300);
        for (int i = 0; i < be.Length; i++) Close(be[i], bx[i], 1e-5f, $"300x130 [{i}]");
    }

    [Theory]
    [InlineData(RopeStyle.RotateHalf)]
    [InlineData(RopeStyle.AdjacentPairs)]
    public void RopeMatchesReference(RopeStyle style)
    {
        var rng = new Random(22);
        foreach (int d in new[] { 2, 4, 6, 8, 14, 16, 18, 32, 34, 64, 66, 128 })
        {
            var table = new RopeTable(d, 10000, 50, style);
            int heads = 3;
            int[] positions = [0, 1, 7, 49, 20];
            var x = TestData.Random(rng, positions.Length * heads * d);
            var expected = (float[])x.Clone();
            Rope.ApplyReference(expected, positions, heads, table);
            Rope.Apply(x, positions, heads, table);
            for (int i = 0; i < x.Length; i++) Close(expected[i], x[i], 1e-6f, $"d={d} [{i}]");
            // one head at a time (the KV cache's rank rotation) gives the same
            var y = TestData.Random(new Random(d), x.Length);
            var whole = (float[])y.Clone();
            Rope.Apply(whole, positions, heads, table);
            unsafe
            {
                fixed (float* py = y)
                    for (int r = 0; r < positions.Length; r++)
                        for (int h = 0; h < heads; h++) Rope.ApplyHead(py + (r * heads + h) * d, positions[r], table);
            }
            Assert.Equal(whole, y);
        }
    }

    [Fact]
    public void AdjacentPairsOnInterleavedDimsEqualsRotateHalf()
    {
        // GGUF's Q/K rows are each head's rows reordered (2i <- i, 2i+1 <- i + D/2): the adjacent-pair rotation of the
        // reordered vector is the rotate-half rotation of the original, reordered the same way
        var rng = new Random(5);
        foreach (int d in new[] { 2, 8, 16, 34, 64, 128 })
        {
            int heads = 2;
            int[] positions = [0, 3, 17, 40];
            var half = new RopeTable(d, 10000, 41);
            var pairs = new RopeTable(d, 10000, 41, RopeStyle.AdjacentPairs);
            var x = TestData.Random(rng, positions.Length * heads * d);
            var interleaved = new float[x.Length];
            for (int v = 0; v < x.Length / d; v++)
                for (int i = 0; i < d / 2; i++)
                {
                    interleaved[v * d + 2 * i] = x[v * d + i];
                    interleaved[v * d + 2 * i + 1] = x[v * d + i + d / 2];
                }
            Rope.Apply(x, positions, heads, half);
            Rope.Apply(interleaved, positions, heads, pairs);
            for (int v = 0; v < x.Length / d; v++)
                for (int i = 0; i < d / 2; i++)
                {
                    Assert.Equal(x[v * d + i], interleaved[v * d + 2 * i]);
                    Assert.Equal(x[v * d + i + d / 2], interleaved[v * d + 2 * i + 1]);
                }
        }
    }

    [Fact]
    public void SwiGluMatchesReferenceAndAliases()
    {
        var rng = new Random(23);
        foreach (int n in Enumerable.Range(0, 68).Concat([1000, 40000]))
        {
            var g = TestData.Random(rng, n, 12f);
            var u = TestData.Random(rng, n, 2f);
            if (n > 5) { g[0] = 100f; g[1] = -100f; g[2] = 0f; g[3] = -0f; g[4] = 1e-30f; }
            var expected = new float[n];
            Activations.SwiGluReference(g, u, expected);
            var actual = new float[n];
            Activations.SwiGlu(g, u, actual);
            var aliasGate = (float[])g.Clone();
            Activations.SwiGlu(aliasGate, u, aliasGate);
            var aliasUp = (float[])u.Clone();
            Activations.SwiGlu(g, aliasUp, aliasUp);
            for (int i = 0; i < n; i++)
            {
                Close(expected[i], actual[i], 2e-6f, $"n={n} [{i}]");
                Assert.Equal(actual[i], aliasGate[i]);
                Assert.Equal(actual[i], aliasUp[i]);
            }
        }
    }

    [Fact]
    public void SoftmaxMatchesReference()
    {
        var rng = new Random(24);
        foreach (int n in Enumerable.Range(1, 67).Concat([256, 4099]))
        {
            var x = TestData.Random(rng, n, 20f);
            var expected = (float[])x.Clone();
            Softmax.ApplyReference(expected);
            Softmax.Apply(x);
            for (int i = 0; i < n; i++) Close(expected[i], x[i], 1e-5f, $"n={n} [{i}]");
        }
    }

    [Fact]
    public void SoftmaxSpecialValues()
    {
        foreach (int n in new[] { 3, 17, 40 })
        {
            foreach (float special in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity, -0f, 1e30f, -1e30f })
                foreach (int at in new[] { 0, n / 2, n - 1 })
                {
                    var x = Enumerable.Range(0, n).Select(i => (float)Math.Sin(i)).ToArray();
                    x[at] = special;
                    var expected = (float[])x.Clone();
                    Softmax.ApplyReference(expected);
                    Softmax.Apply(x);
                    for (int i = 0; i < n; i++) Close(expected[i], x[i], 1e-5f, $"n={n} {special}@{at} [{i}]");
                }
            var allNegInf = Enumerable.Repeat(float.NegativeInfinity, n).ToArray();
            var e2 = (float[])allNegInf.Clone();
            Softmax.ApplyReference(e2);
            Softmax.Apply(allNegInf);
            for (int i = 0; i < n; i++) Close(e2[i], allNegInf[i], 0, "all -inf");
        }
    }

    [Fact]
    public void ArgmaxMatchesReferenceWithSpecialValues()
    {
        var rng = new Random(25);
        float[] specials = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, -0f, 0f, float.MaxValue];
        for (int n = 0; n <= 67; n++)
        {
            for (int trial = 0; trial < 8; trial++)
            {
                var x = TestData.Random(rng, n);
                for (int s = 0; s < trial && n > 0; s++) x[rng.Next(n)] = specials[rng.Next(specials.Length)];
                if (trial == 7) for (int i = 0; i < n; i++) x[i] = rng.Next(3) == 0 ? float.NaN : (rng.Next(2) == 0 ? -0f : 0f);
                Assert.Equal(Selection.ArgmaxReference(x), Selection.Argmax(x));
            }
            var nans = Enumerable.Repeat(float.NaN, n).ToArray();
            Assert.Equal(Selection.ArgmaxReference(nans), Selection.Argmax(nans));
            var negInf = Enumerable.Repeat(float.NegativeInfinity, n).ToArray();
            if (n > 3) negInf[2] = float.NaN;
            Assert.Equal(Selection.ArgmaxReference(negInf), Selection.Argmax(negInf));
            var ties = Enumerable.Repeat(1f, n).ToArray();
            Assert.Equal(Selection.ArgmaxReference(ties), Selection.Argmax(ties));
        }
    }

    [Fact]
    public void TopKMatchesReference()
    {
        var rng = new Random(26);
        foreach (int n in Enumerable.Range(1, 67).Concat([500, 4096]))
            foreach (int k in new[] { 1, 2, 5, 40, n })
            {
                var x = TestData.Random(rng, n);
                for (int i = 0; i < n; i += 7) x[i] = x[Math.Max(0, i - 3)]; // ties
                if (n > 10) { x[3] = float.NaN; x[9] = float.PositiveInfinity; x[10] = -0f; }
                var e = new int[Math.Min(k, n)];
                var a = new int[Math.Min(k, n)];
                int ce = Selection.TopKReference(x, k, e);
                int ca = Selection.TopK(x, k, a);
                Assert.Equal(ce, ca);
                Assert.Equal(e, a);
            }
    }

    [Fact]
    public void ConvertRoundTripsMatchScalar()
    {
        var rng = new Random(27);
        foreach (int n in Enumerable.Range(0, 68).Concat([1000]))
        {
            var x = TestData.Random(rng, n, 100f);
            if (n > 8) { x[0] = float.NaN; x[1] = float.PositiveInfinity; x[2] = -0f; x[3] = 1e-40f; x[4] = 65519f; x[5] = 3.4e38f; x[6] = -1e-7f; x[7] = 1.00390625f; }
            var bf = new ushort[n];
            Lckv.Numerics.Convert.NarrowBF16(x, bf);
            for (int i = 0; i < n; i++) Assert.Equal(DTypes.SingleToBF16(x[i]), bf[i]);
            var back = new float[n];
            Lckv.Numerics.Convert.WidenBF16(bf, back);
            for (int i = 0; i < n; i++) Assert.Equal(DTypes.BF16ToSingle(bf[i]), back[i]);
        }
    }

    [Fact]
    public unsafe void F16WideningIsExactForEveryBitPattern()
    {
        var all = new ushort[65536];
        for (int i = 0; i < all.Length; i++) all[i] = (ushort)i;
        var wide = new float[all.Length];
        fixed (ushort* p = all)
        fixed (float* w = wide)
            Simd.Widen<F16Element>((byte*)p, w, all.Length);
        for (int i = 0; i < all.Length; i++)
        {
            float expected = DTypes.F16ToSingle((ushort)i);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(wide[i]));
            else Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(wide[i]));
        }
    }
}
