using Lckv.Training;
using Xunit.Abstractions;

namespace Lckv.Tests.Training;

/// <summary>AdamW against PyTorch's documented update rule (computed here in f64), the schedule at chosen steps, clipping.</summary>
public sealed class OptimTests(ITestOutputHelper output)
{
    /// <summary>torch.optim.AdamW, one parameter tensor, in f64 (the documented algorithm, decoupled decay first).</summary>
    private sealed class ReferenceAdamW(double[] p, bool decay, double beta1, double beta2, double eps, double wd)
    {
        public readonly double[] P = p, M = new double[p.Length], V = new double[p.Length];
        private int _t;

        public void Step(double[] g, double lr)
        {
            _t++;
            double bc1 = 1 - Math.Pow(beta1, _t), bc2 = 1 - Math.Pow(beta2, _t);
            for (int i = 0; i < P.Length; i++)
            {
                if (decay) P[i] *= 1 - lr * wd;
                M[i] = beta1 * M[i] + (1 - beta1) * g[i];
                V[i] = beta2 * V[i] + (1 - beta2) * g[i] * g[i];
                double mHat = M[i] / bc1, vHat = V[i] / bc2;
                P[i] -= lr * mHat / (Math.Sqrt(vHat) + eps);
            }
        }
    }

    private static double Grad(int param, int i, int t) => Math.Sin(0.7 * i + 1.3 * t + param) * (1 + 0.5 * param) + 0.05 * t;

    [Theory]
    [InlineData(0.0, 0.0)]   // no decay, no clipping
    [InlineData(0.1, 0.0)]   // decay on the decayed parameter only
    [InlineData(0.1, 1.5)]   // decay and clipping (the norm is ~4-6, so every step clips)
    [InlineData(0.01, 100)]  // a clip that never triggers
    public void MatchesTheReferenceForSeveralSteps(double wd, double clip)
    {
        var a = new Parameter("a.weight", [5, 7], decay: true);   // 35: vector body and a scalar tail
        var b = new Parameter("a.norm", [3], decay: false);
        for (int i = 0; i < a.Value.Length; i++) a.Value[i] = (float)(0.5 - 0.03 * i);
        for (int i = 0; i < b.Value.Length; i++) b.Value[i] = 1f + 0.1f * i;
        var opt = new AdamW([a, b], new AdamWOptions { Beta1 = 0.9f, Beta2 = 0.99f, Eps = 1e-8f, WeightDecay = (float)wd });
        var refA = new ReferenceAdamW([.. a.Value.Select(x => (double)x)], true, 0.9, 0.99, 1e-8, (float)wd);
        var refB = new ReferenceAdamW([.. b.Value.Select(x => (double)x)], false, 0.9, 0.99, 1e-8, (float)wd);
        var schedule = new CosineSchedule(0.01, 0.001, 2, 6);

        for (int t = 1; t <= 6; t++)
        {
            opt.ZeroGrad();
            double[] ga = [.. Enumerable.Range(0, a.Value.Length).Select(i => (double)(float)Grad(0, i, t))];
            double[] gb = [.. Enumerable.Range(0, b.Value.Length).Select(i => (double)(float)Grad(1, i, t))];
            for (int i = 0; i < ga.Length; i++) a.Grad[i] = (float)ga[i];
            for (int i = 0; i < gb.Length; i++) b.Grad[i] = (float)gb[i];

            double norm = Math.Sqrt(ga.Sum(x => x * x) + gb.Sum(x => x * x));
            double got = opt.ClipGradNorm(clip);
            Assert.Equal(norm, got, 1e-5);
            if (clip > 0 && norm > clip)
            {
                double c = clip / (norm + 1e-6);
                for (int i = 0; i < ga.Length; i++) ga[i] *= c;
                for (int i = 0; i < gb.Length; i++) gb[i] *= c;
                Assert.Equal(clip, AdamW.GradNorm([a, b]), 1e-5);
            }

            double lr = schedule.LearningRate(t);
            opt.Step(lr);
            refA.Step(ga, lr);
            refB.Step(gb, lr);
            double worst = 0;
            for (int i = 0; i < a.Value.Length; i++) worst = Math.Max(worst, Math.Abs(a.Value[i] - refA.P[i]));
            for (int i = 0; i < b.Value.Length; i++) worst = Math.Max(worst, Math.Abs(b.Value[i] - refB.P[i]));
            output.WriteLine($"step {t}: lr {lr:G6} grad norm {got:F6} max |p - ref| {worst:E2}");
            Assert.True(worst < 2e-6, $"step {t}: max |p - ref| = {worst}");
            for (int i = 0; i < a.Value.Length; i++) Assert.Equal(refA.M[i], opt.Moments(0).M[i], 1e-6);
            for (int i = 0; i < b.Value.Length; i++) Assert.Equal(refB.V[i], opt.Moments(1).V[i], 1e-6);
        }
        Assert.Equal(6, opt.StepCount);
    }

    [Fact]
    public void FirstStepIsDecayThenSignOfTheGradient()
    {
        // t = 1: m_hat = g, v_hat = g^2, so p1 = p0 (1 - lr wd) - lr g / (|g| + eps)
        var w = new Parameter("w", [2], decay: true);
        var n = new Parameter("n", [1], decay: false);
        w.Value[0] = 1f; w.Value[1] = -2f; n.Value[0] = 1f;
        w.Grad[0] = 0.5f; w.Grad[1] = -3f; n.Grad[0] = 0.25f;
        var opt = new AdamW([w, n], new AdamWOptions { Beta1 = 0.9f, Beta2 = 0.999f, Eps = 1e-8f, WeightDecay = 0.1f });
        opt.Step(0.1);
        Assert.Equal(1 * 0.99 - 0.1, w.Value[0], 6);      // 0.89
        Assert.Equal(-2 * 0.99 + 0.1, w.Value[1], 6);     // -1.88
        Assert.Equal(1 - 0.1, n.Value[0], 6);             // 0.9: no decay on n
    }

    [Fact]
    public void ScheduleAtChosenSteps()
    {
        var s = new CosineSchedule(1e-3, 1e-4, 10, 110);
        Assert.Equal(1e-4, s.LearningRate(1), 12);      // warmup: max * 1/10
        Assert.Equal(5e-4, s.LearningRate(5), 12);
        Assert.Equal(1e-3, s.LearningRate(10), 12);     // peak at the end of warmup
        Assert.Equal(1e-4 + 9e-4 * (1 + Math.Cos(Math.PI / 4)) / 2, s.LearningRate(35), 12); // a quarter into the decay: 8.682e-4
        Assert.Equal(5.5e-4, s.LearningRate(60), 12);   // half-way: the mean of max and min
        Assert.Equal(1e-4, s.LearningRate(110), 12);    // the end: min
        Assert.Equal(1e-4, s.LearningRate(500), 12);    // after the end: min
        var noWarmup = new CosineSchedule(1e-3, 0, 0, 100);
        Assert.Equal(1e-3 * (1 + Math.Cos(Math.PI / 100)) / 2, noWarmup.LearningRate(1), 12);
        Assert.Equal(0, noWarmup.LearningRate(100), 12);
        for (int t = 11; t < 110; t++) Assert.True(s.LearningRate(t + 1) <= s.LearningRate(t));
    }

    [Fact]
    public void VectorAndScalarPathsAgreeBitForBit()
    {
        var rng = new TrainingRng(7);
        foreach (int n in new[] { 1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100 })
        {
            float[] p = Values(n, ref rng), g = Values(n, ref rng), m = Values(n, ref rng), v = [.. Values(n, ref rng).Select(Math.Abs)];
            float[] p2 = [.. p], m2 = [.. m], v2 = [.. v];
            var k = new AdamW.Coefficients { Beta1 = 0.9f, OneMinusBeta1 = 0.1f, Beta2 = 0.95f, OneMinusBeta2 = 0.05f, StepSize = 0.01f, InvSqrtBc2 = 3f, Eps = 1e-8f };
            AdamW.Update(p, g, m, v, 0.999f, k);
            for (int i = 0; i < n; i++) AdamW.Update(p2.AsSpan(i, 1), g.AsSpan(i, 1), m2.AsSpan(i, 1), v2.AsSpan(i, 1), 0.999f, k);
            Assert.Equal(p2, p);
            Assert.Equal(m2, m);
            Assert.Equal(v2, v);
        }
    }

    private static float[] Values(int n, ref TrainingRng rng)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)((rng.Next() >> 40) / (double)(1UL << 24) - 0.5);
        return a;
    }

    [Fact]
    public void ResultsDoNotDependOnTheThreadCount()
    {
        float[][] Run(int threads, out double norm)
        {
            var ps = new[] { new Parameter("big", [300_001], true), new Parameter("small", [7], false) };
            var rng = new TrainingRng(5);
            foreach (var p in ps)
            {
                for (int i = 0; i < p.Value.Length; i++) p.Value[i] = (float)((rng.Next() >> 40) / (double)(1UL << 24) - 0.5);
                for (int i = 0; i < p.Grad.Length; i++) p.Grad[i] = (float)((rng.Next() >> 40) / (double)(1UL << 24) - 0.5);
            }
            var opt = new AdamW(ps, new AdamWOptions(), new Lckv.Numerics.WorkerPool(threads));
            norm = opt.ClipGradNorm(1.0);
            Assert.Equal(AdamW.GradNorm(ps) * (norm + 1e-6), norm, 1e-3); // clipped to ~1
            opt.Step(1e-3);
            opt.Step(1e-3);
            return [.. ps.Select(p => p.Value)];
        }
        var one = Run(1, out double n1);
        var four = Run(4, out double n4);
        Assert.Equal(n1, n4);
        Assert.Equal(one[0], four[0]);
        Assert.Equal(one[1], four[1]);
    }

    [Fact]
    public void AStepAllocatesNothing()
    {
        var ps = new[] { new Parameter("a", [1000], true), new Parameter("b", [33], false) };
        foreach (var p in ps) Array.Fill(p.Grad, 0.5f);
        var opt = new AdamW(ps, new AdamWOptions());
        opt.ClipGradNorm(1.0);
        opt.Step(1e-3);
        Assert.Equal(0, Allocations.Least(() =>
        {
            for (int i = 0; i < 10; i++)
            {
                foreach (var p in ps) Array.Fill(p.Grad, 0.5f);
                opt.ClipGradNorm(1.0);
                opt.Step(1e-3);
                opt.ZeroGrad();
            }
        }));
    }

    [Fact]
    public void BadHyperparametersAreClearErrors()
    {
        var p = new[] { new Parameter("a", [1], true) };
        Assert.Contains("beta2", Assert.Throws<LckvException>(() => new AdamW(p, new AdamWOptions { Beta2 = 1f })).Message);
        Assert.Contains("twice", Assert.Throws<LckvException>(() => new AdamW([p[0], p[0]], new AdamWOptions())).Message);
        var min = Assert.Throws<LckvException>(() => new CosineSchedule(1e-3, 1e-2, 0, 10).Validate());
        Assert.Contains("final learning rate", min.Message);
        Assert.Equal([nameof(CosineSchedule.MinLr)], min.Settings);
        var peak = Assert.Throws<LckvException>(() => new CosineSchedule(0, 0, 0, 10).Validate());
        Assert.Contains("peak learning rate", peak.Message);
        Assert.Equal([nameof(CosineSchedule.MaxLr)], peak.Settings);
    }
}
