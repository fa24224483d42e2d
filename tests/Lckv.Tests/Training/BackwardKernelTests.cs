using Lckv.Model;
using Lckv.Numerics;
using Lckv.Numerics.Backward;

namespace Lckv.Tests.Training;

/// <summary>Each SIMD backward kernel against its scalar reference on odd sizes (small: inline; large: the worker pool).</summary>
[Trait("Category", "Kernels")]
public sealed class BackwardKernelTests
{
    internal static float[] Random(int n, ulong seed, float scale = 1f)
    {
        var rng = new SplitMix64(seed);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = scale * (float)(rng.NextDouble() * 2 - 1);
        return a;
    }

    internal static void Near(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double tol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            double d = Math.Abs((double)expected[i] - actual[i]);
            if (!(d <= tol * Math.Max(1, Math.Abs(expected[i]))))
                Assert.Fail($"{what}: element {i} expected {expected[i]} got {actual[i]} (diff {d:E3})");
        }
    }

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(3, 5, 7)]
    [InlineData(4, 16, 32)]
    [InlineData(5, 17, 33)]
    [InlineData(13, 37, 65)]
    [InlineData(67, 129, 70)]
    [InlineData(130, 300, 47)]
    [InlineData(9, 260, 131)]
    public void MatMulGradientsMatchTheReference(int m, int n, int k)
    {
        var dy = Random(m * n, 1);
        var w = Random(n * k, 2);
        var x = Random(m * k, 3);
        foreach (bool acc in new[] { false, true })
        {
            var expected = Random(m * k, 4);
            var actual = (float[])expected.Clone();
            MatMulBackward.InputGradientReference(dy, w, expected, m, n, k, acc);
            MatMulBackward.InputGradient(dy, w, actual, m, n, k, acc);
            Near(expected, actual, 1e-5 * Math.Sqrt(n), $"dx accumulate={acc}");
        }
        var dwRef = Random(n * k, 5);
        var dw = (float[])dwRef.Clone();
        MatMulBackward.WeightGradientReference(dy, x, dwRef, m, n, k);
        MatMulBackward.WeightGradient(dy, x, dw, m, n, k);
        Near(dwRef, dw, 1e-5 * Math.Sqrt(m), "dw");
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 7)]
    [InlineData(5, 33)]
    [InlineData(17, 100)]
    [InlineData(130, 131)]
    public void RmsNormBackwardMatchesTheReference(int rows, int c)
    {
        var dy = Random(rows * c, 11);
        var x = Random(rows * c, 12, 2f);
        var w = Random(c, 13);
        var dxRef = Random(rows * c, 14);
        var dwRef = Random(c, 15);
        var dx = (float[])dxRef.Clone();
        var dw = (float[])dwRef.Clone();
        RmsNormBackward.ApplyReference(dy, x, w, 1e-5f, dxRef, dwRef, rows);
        RmsNormBackward.Apply(dy, x, w, 1e-5f, dx, dw, new float[rows], rows);
        Near(dxRef, dx, 1e-5, "dx");
        Near(dwRef, dw, 1e-5 * Math.Sqrt(rows), "dw");
    }

    [Theory]
    [InlineData(2, 1, 1, RopeStyle.RotateHalf)]
    [InlineData(6, 3, 5, RopeStyle.RotateHalf)]
    [InlineData(16, 2, 9, RopeStyle.RotateHalf)]
    [InlineData(34, 3, 4, RopeStyle.RotateHalf)]
    [InlineData(6, 3, 5, RopeStyle.AdjacentPairs)]
    [InlineData(34, 3, 4, RopeStyle.AdjacentPairs)]
    public void RopeBackwardMatchesTheReference(int headDim, int heads, int rows, RopeStyle style)
    {
        var table = new RopeTable(headDim, 10000, 64, style);
        var positions = Enumerable.Range(0, rows).Select(r => (r * 7) % 64).ToArray();
        var expected = Random(rows * heads * headDim, 21);
        var actual = (float[])expected.Clone();
        RopeBackward.ApplyReference(expected, positions, heads, table);
        RopeBackward.Apply(actual, positions, heads, table);
        Near(expected, actual, 1e-6, "rope backward");
        // the backward undoes the forward rotation
        var back = (float[])actual.Clone();
        Rope.Apply(back, positions, heads, table);
        var original = Random(rows * heads * headDim, 21);
        Near(original, back, 1e-5, "forward after backward");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(33)]
    [InlineData(40_003)]
    public void SwiGluBackwardMatchesTheReference(int n)
    {
        var da = Random(n, 31);
        var g = Random(n, 32, 6f);
        var u = Random(n, 33, 2f);
        var dgRef = new float[n];
        var duRef = new float[n];
        SwiGluBackward.ApplyReference(da, g, u, dgRef, duRef);
        var dg = (float[])da.Clone(); // in place over da
        var du = new float[n];
        SwiGluBackward.Apply(dg, g, u, dg, du);
        Near(dgRef, dg, 2e-6, "dgate");
        Near(duRef, du, 2e-6, "dup");
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 7)]
    [InlineData(9, 33)]
    [InlineData(40, 1001)]
    public void CrossEntropyMatchesTheReference(int rows, int v)
    {
        var logits = Random(rows * v, 41, 8f);
        var targets = Enumerable.Range(0, rows).Select(r => r % 4 == 3 ? -1 : (r * 5) % v).ToArray();
        var lossRef = new float[rows];
        var dRef = new float[rows * v];
        double sumRef = CrossEntropy.ApplyReference(logits, targets, v, lossRef, dRef, 0.3f);
        var loss = new float[rows];
        var d = (float[])logits.Clone(); // in place
        double sum = CrossEntropy.Apply(d, targets, v, loss, d, 0.3f);
        Assert.Equal(sumRef, sum, 1e-4 * Math.Max(1, Math.Abs(sumRef)));
        Near(lossRef, loss, 1e-5, "row loss");
        Near(dRef, d, 1e-6, "dlogits");
        var lossOnly = new float[rows];
        Assert.Equal(sum, CrossEntropy.Apply(logits, targets, v, lossOnly, default, 1f), 1e-9);
    }

    public static TheoryData<int, int, int, int, int, bool, int> AttentionShapes => new()
    {
        // batch, seqLen, heads, kvHeads, headDim, noDiagonal, window
        { 1, 1, 1, 1, 2, false, 0 },
        { 1, 1, 2, 1, 4, true, 0 },      // every row fully masked
        { 2, 5, 4, 2, 6, false, 0 },
        { 2, 7, 4, 2, 6, true, 0 },
        { 3, 9, 6, 3, 10, false, 2 },
        { 2, 11, 4, 1, 18, true, 3 },
        { 2, 40, 8, 2, 34, true, 0 },    // large enough for the worker pool
        { 3, 37, 4, 4, 16, false, 5 },
    };

    [Theory]
    [MemberData(nameof(AttentionShapes))]
    public void DenseAttentionMatchesTheReference(int batch, int seqLen, int heads, int kvHeads, int headDim, bool noDiag, int window)
    {
        var rule = new MaskRule(noDiag, window);
        float scale = 1f / MathF.Sqrt(headDim);
        int rows = batch * seqLen, qn = rows * heads * headDim, kn = rows * kvHeads * headDim;
        var q = Random(qn, 51, 2f);
        var k = Random(kn, 52, 2f);
        var v = Random(kn, 53);
        var oRef = new float[qn];
        var lseRef = new float[rows * heads];
        DenseAttention.ForwardReference(q, k, v, batch, seqLen, heads, kvHeads, headDim, rule, scale, oRef, lseRef);
        var o = Random(qn, 54); // stale contents must be overwritten
        var lse = new float[rows * heads];
        DenseAttention.Forward(q, k, v, batch, seqLen, heads, kvHeads, headDim, rule, scale, o, lse);
        Near(oRef, o, 1e-5, "o");
        for (int i = 0; i < lse.Length; i++)
            if (float.IsNegativeInfinity(lseRef[i])) Assert.True(float.IsNegativeInfinity(lse[i]));
            else Assert.Equal(lseRef[i], lse[i], 1e-4);

        var dO = Random(qn, 55);
        var dqRef = new float[qn];
        var dkRef = Random(kn, 56);
        var dvRef = Random(kn, 57);
        var dq = Random(qn, 58);
        var dk = (float[])dkRef.Clone();
        var dv = (float[])dvRef.Clone();
        DenseAttention.BackwardReference(q, k, v, dO, batch, seqLen, heads, kvHeads, headDim, rule, scale, dqRef, dkRef, dvRef);
        DenseAttention.Backward(q, k, v, o, lse, dO, batch, seqLen, heads, kvHeads, headDim, rule, scale, dq, dk, dv);
        Near(dqRef, dq, 1e-4, "dq");
        Near(dkRef, dk, 1e-4, "dk (accumulated)");
        Near(dvRef, dv, 1e-4, "dv (accumulated)");
        // a constant KV: dk/dv skipped, dq unchanged
        var dq2 = new float[qn];
        DenseAttention.Backward(q, k, v, o, lse, dO, batch, seqLen, heads, kvHeads, headDim, rule, scale, dq2, default, default);
        Near(dq, dq2, 0, "dq without dk/dv");
    }
}
