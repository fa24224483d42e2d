using Lckv.Formats;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Numerics.Backward;
using Lckv.Training;
using Xunit.Abstractions;
using static Lckv.Tests.Training.BackwardKernelTests;

namespace Lckv.Tests.Training;

/// <summary>
/// Central finite differences in f32 (loss summed in f64) against every backward: each op through the library's forward
/// kernel with loss = sum(r ⊙ y) for a fixed random r, and the whole model (embedding included) on tiny models.
/// Checked entries: the largest analytic gradients plus random ones; normalized error |fd - an| / (|fd| + |an|).
/// </summary>
public sealed class FiniteDifferenceTests(ITestOutputHelper output)
{
    private const double MaxError = 1e-2;

    /// <summary>Perturbs chosen entries of values and compares (L(+eps) - L(-eps)) / 2eps with analytic.</summary>
    private double Check(string what, float[] values, float[] analytic, Func<double> loss, float eps, int top = 4, int random = 4, double floor = 1e-3)
    {
        var order = Enumerable.Range(0, values.Length).OrderByDescending(i => Math.Abs(analytic[i])).Take(top).ToList();
        var rng = new SplitMix64((ulong)what.Length * 977 + (ulong)values.Length);
        for (int r = 0; r < random; r++) order.Add((int)(rng.Next() % (ulong)values.Length));
        double worst = 0;
        int checkedCount = 0;
        foreach (int i in order.Distinct())
        {
            float v = values[i];
            values[i] = v + eps;
            double plus = loss();
            values[i] = v - eps;
            double minus = loss();
            values[i] = v;
            double fd = (plus - minus) / (2.0 * eps);
            double an = analytic[i];
            if (Math.Abs(fd) + Math.Abs(an) < floor) continue; // both at the noise floor
            double err = Math.Abs(fd - an) / (Math.Abs(fd) + Math.Abs(an));
            checkedCount++;
            worst = Math.Max(worst, err);
            Assert.True(err < MaxError, $"{what}[{i}]: finite difference {fd:G6} vs analytic {an:G6} (normalized error {err:E2})");
        }
        output.WriteLine($"{what,-52} {checkedCount,3} entries  worst normalized error {worst:E2}");
        return worst;
    }

    private static double Weighted(ReadOnlySpan<float> y, ReadOnlySpan<float> r)
    {
        double s = 0;
        for (int i = 0; i < y.Length; i++) s += (double)y[i] * r[i];
        return s;
    }

    [Fact]
    public unsafe void MatMul()
    {
        int m = 5, n = 7, k = 9;
        var x = Random(m * k, 1);
        var w = Random(n * k, 2);
        var r = Random(m * n, 3);
        var y = new float[m * n];
        double Loss()
        {
            fixed (float* pw = w) Lckv.Numerics.MatMul.Multiply(x, new WeightMatrix((nint)pw, DType.F32, n, k), y, m);
            return Weighted(y, r);
        }
        var dx = new float[m * k];
        var dw = new float[n * k];
        MatMulBackward.InputGradient(r, w, dx, m, n, k, accumulate: false);
        MatMulBackward.WeightGradient(r, x, dw, m, n, k);
        Check("matmul dx", x, dx, Loss, 1e-2f);
        Check("matmul dW", w, dw, Loss, 1e-2f);
    }

    [Fact]
    public unsafe void RmsNormalization()
    {
        int rows = 3, c = 13;
        var x = Random(rows * c, 4, 2f);
        var w = Random(c, 5);
        var r = Random(rows * c, 6);
        var y = new float[rows * c];
        double Loss()
        {
            fixed (float* pw = w) RmsNorm.Apply(x, new WeightMatrix((nint)pw, DType.F32, 1, c), 1e-5f, y, rows);
            return Weighted(y, r);
        }
        var dx = new float[rows * c];
        var dw = new float[c];
        RmsNormBackward.Apply(r, x, w, 1e-5f, dx, dw, new float[rows], rows);
        Check("rmsnorm dx", x, dx, Loss, 1e-2f);
        Check("rmsnorm dw", w, dw, Loss, 1e-2f);
    }

    [Fact]
    public void RotaryEmbedding()
    {
        int heads = 3, d = 6, rows = 5;
        var table = new RopeTable(d, 10000, 32);
        var positions = new[] { 0, 1, 5, 9, 31 };
        var x = Random(rows * heads * d, 7);
        var r = Random(rows * heads * d, 8);
        var y = new float[x.Length];
        double Loss()
        {
            x.CopyTo(y, 0);
            Rope.Apply(y, positions, heads, table);
            return Weighted(y, r);
        }
        var dx = (float[])r.Clone();
        RopeBackward.Apply(dx, positions, heads, table);
        Check("rope dx", x, dx, Loss, 1e-2f, top: 6, random: 6);
    }

    [Theory]
    [InlineData(false, 0)]
    [InlineData(true, 0)]   // diagonal masked: row 0 sees nothing (zero output, zero gradient)
    [InlineData(false, 2)]
    [InlineData(true, 2)]
    [InlineData(true, 1)]   // nodiag with window 1: exactly one key per row from t = 1
    public void AttentionWithEachMaskKind(bool noDiag, int window)
    {
        int batch = 2, t = 7, heads = 4, kvHeads = 2, d = 6; // GQA: two query heads per KV head
        var rule = new MaskRule(noDiag, window);
        float scale = 1f / MathF.Sqrt(d);
        int qn = batch * t * heads * d, kn = batch * t * kvHeads * d;
        var q = Random(qn, 9, 1.5f);
        var k = Random(kn, 10, 1.5f);
        var v = Random(kn, 11);
        var r = Random(qn, 12);
        var o = new float[qn];
        var lse = new float[batch * t * heads];
        double Loss()
        {
            DenseAttention.Forward(q, k, v, batch, t, heads, kvHeads, d, rule, scale, o, lse);
            return Weighted(o, r);
        }
        Loss();
        var dq = new float[qn];
        var dk = new float[kn];
        var dv = new float[kn];
        DenseAttention.Backward(q, k, v, o, lse, r, batch, t, heads, kvHeads, d, rule, scale, dq, dk, dv);
        string tag = $"attention nodiag={noDiag} window={window}";
        Check(tag + " dq", q, dq, Loss, 1e-2f);
        Check(tag + " dk", k, dk, Loss, 1e-2f);
        Check(tag + " dv", v, dv, Loss, 1e-2f);
        if (noDiag)
        {
            // position 0 of each sequence sees no key: output exactly zero and zero query gradient
            for (int b = 0; b < batch; b++)
                for (int i = 0; i < heads * d; i++)
                {
                    Assert.Equal(0f, o[b * t * heads * d + i]);
                    Assert.Equal(0f, dq[b * t * heads * d + i]);
                }
        }
    }

    [Fact]
    public void SwiGlu()
    {
        int n = 37;
        var g = Random(n, 13, 4f);
        var u = Random(n, 14, 2f);
        var r = Random(n, 15);
        var a = new float[n];
        double Loss()
        {
            Activations.SwiGlu(g, u, a);
            return Weighted(a, r);
        }
        var dg = new float[n];
        var du = new float[n];
        SwiGluBackward.Apply(r, g, u, dg, du);
        Check("swiglu dgate", g, dg, Loss, 1e-2f);
        Check("swiglu dup", u, du, Loss, 1e-2f);
    }

    [Fact]
    public void CrossEntropyMean()
    {
        int rows = 6, v = 11;
        var logits = Random(rows * v, 16, 3f);
        var targets = new[] { 3, 0, 10, -1, 5, 5 };
        var rowLoss = new float[rows];
        double Loss() => CrossEntropy.Apply(logits, targets, v, rowLoss, default, 1f) / 5;
        var d = new float[rows * v];
        CrossEntropy.Apply(logits, targets, v, rowLoss, d, 1f / 5);
        Check("cross-entropy dlogits", logits, d, Loss, 1e-2f, top: 6, random: 10);
    }

    public static TheoryData<string> TinyModels => new() { "llama-tied", "lckv-top-nodiag", "lckv-middle-window-b3" };

    /// <summary>
    /// Tiny models with forward_passes = 0, so the plan's gradient (through the last b passes) is the full derivative
    /// of the plan's loss and finite differences of Loss() must match it; every parameter tensor is probed.
    /// </summary>
    [Theory]
    [MemberData(nameof(TinyModels))]
    public void WholeModel(string name)
    {
        var baseConfig = new ModelConfig
        {
            HiddenSize = 12, IntermediateSize = 20, NumHiddenLayers = 4, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            HeadDim = 4, VocabSize = 23, MaxPositionEmbeddings = 32, RmsNormEps = 1e-5f,
        };
        var config = name switch
        {
            "llama-tied" => baseConfig with { TieWordEmbeddings = true },
            "lckv-top-nodiag" => baseConfig with
            {
                ModelType = ModelConfig.LckvLlamaType, LayerTypes = "0_3_3_3", ForceNoDiag = true, ForwardPasses = 0, BackwardPasses = 2,
            },
            _ => baseConfig with
            {
                ModelType = ModelConfig.LckvLlamaType, LayerTypes = "0s_2_2_3", SlidingWindow = 2, ForwardPasses = 0, BackwardPasses = 3,
            },
        };
        var model = TrainableModel.FromConfig(config, 7);
        // larger weights than the training init so every path carries a visible gradient
        var rng = new SplitMix64(99);
        foreach (var p in model.Parameters)
        {
            bool norm = p.Shape.Length == 1;
            float scale = p.Name.Contains("embed") ? 1f : norm ? 0.2f : 1f / MathF.Sqrt(p.Shape[^1]);
            for (int i = 0; i < p.Value.Length; i++) p.Value[i] = (norm ? 1f : 0f) + scale * rng.NextGaussian();
        }
        int batch = 2, seqLen = 7;
        var tokens = Enumerable.Range(0, batch * seqLen).Select(i => (int)(rng.Next() % 23)).ToArray();
        model.ZeroGrad();
        float loss = model.LossAndGradients(tokens, batch, seqLen, gradScale: 2f);
        Assert.Equal(loss, model.Loss(tokens, batch, seqLen));
        output.WriteLine($"{name}: loss {loss:F5}, plan {string.Join(" ", model.Plan.Select(p => $"[{p.Start},{p.End}){(p.Gradient ? "g" : "")}{(p.Advances ? "a" : "")}"))}");
        foreach (var p in model.Parameters)
        {
            var analytic = p.Grad.Select(g => g / 2f).ToArray(); // gradScale 2 doubled every gradient
            Check($"{name} {p.Name}", p.Value, analytic, () => model.Loss(tokens, batch, seqLen), 1e-2f, top: 3, random: 2, floor: 2e-3);
        }
    }
}
