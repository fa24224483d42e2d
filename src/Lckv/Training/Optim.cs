using System.Numerics;
using System.Numerics.Tensors;

namespace Lckv.Training;

/// <summary>AdamW hyperparameters (PyTorch's names and meaning; the learning rate comes from the schedule per step).</summary>
public sealed record AdamWOptions
{
    public float Beta1 { get; init; } = 0.9f;
    public float Beta2 { get; init; } = 0.95f;
    public float Eps { get; init; } = 1e-8f;
    /// <summary>Decoupled weight decay, applied only to parameters with <see cref="Parameter.Decay"/>.</summary>
    public float WeightDecay { get; init; } = 0.1f;

    public void Validate()
    {
        if (!(Beta1 >= 0 && Beta1 < 1)) throw new LckvException($"beta1 must be in [0, 1), not {Beta1}");
        if (!(Beta2 >= 0 && Beta2 < 1)) throw new LckvException($"beta2 must be in [0, 1), not {Beta2}");
        if (!(Eps > 0) || !float.IsFinite(Eps)) throw new LckvException($"eps must be a positive number, not {Eps}");
        if (!(WeightDecay >= 0) || !float.IsFinite(WeightDecay)) throw new LckvException($"weight decay must be 0 or more, not {WeightDecay}");
    }
}

/// <summary>
/// AdamW (Loshchilov and Hutter) exactly as torch.optim.AdamW computes it, per element, at update t (1-based):
/// <code>
/// p = p * (1 - lr * wd)                       (only when Decay)
/// m = beta1 * m + (1 - beta1) * g
/// v = beta2 * v + (1 - beta2) * g * g
/// p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// </code>
/// The first and second moments (m, v) and the update count are the state; <see cref="Moments"/> exposes them so a
/// checkpoint can save and restore them bit for bit. A step allocates nothing.
/// </summary>
public sealed class AdamW
{
    private readonly Parameter[] _parameters;
    private readonly float[][] _m, _v;

    public AdamW(IReadOnlyList<Parameter> parameters, AdamWOptions options)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _parameters = [.. parameters];
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in _parameters)
        {
            if (!names.Add(p.Name)) throw new LckvException($"parameter '{p.Name}' is listed twice");
            if (p.Grad.Length != p.Value.Length) throw new LckvException($"parameter '{p.Name}': gradient and value lengths differ");
        }
        _m = [.. _parameters.Select(p => new float[p.Value.Length])];
        _v = [.. _parameters.Select(p => new float[p.Value.Length])];
        Options = options;
    }

    public AdamWOptions Options { get; }
    public IReadOnlyList<Parameter> Parameters => _parameters;

    /// <summary>Updates done so far (t of the last update; 0 before the first).</summary>
    public long StepCount { get; set; }

    /// <summary>First and second moment of parameter i (same length as its value), for checkpoints.</summary>
    public (float[] M, float[] V) Moments(int i) => (_m[i], _v[i]);

    /// <summary>Sets every gradient to zero.</summary>
    public void ZeroGrad()
    {
        foreach (var p in _parameters) Array.Clear(p.Grad);
    }

    /// <summary>
    /// The global L2 norm of all gradients; when it exceeds maxNorm (and maxNorm is positive) every gradient is scaled
    /// by maxNorm / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_ does. Returns the norm before clipping.
    /// </summary>
    public double ClipGradNorm(double maxNorm)
    {
        double norm = GradNorm(_parameters);
        if (maxNorm > 0 && norm > maxNorm && double.IsFinite(norm))
        {
            float scale = (float)(maxNorm / (norm + 1e-6));
            foreach (var p in _parameters) TensorPrimitives.Multiply(p.Grad, scale, p.Grad);
        }
        return norm;
    }

    /// <summary>Global L2 norm of the gradients (sum of squares per parameter in f32, summed in f64; deterministic).</summary>
    public static double GradNorm(IReadOnlyList<Parameter> parameters)
    {
        double sum = 0;
        for (int i = 0; i < parameters.Count; i++) sum += TensorPrimitives.SumOfSquares<float>(parameters[i].Grad);
        return Math.Sqrt(sum);
    }

    /// <summary>One update of every parameter from its gradient with learning rate lr.</summary>
    public void Step(double lr)
    {
        if (!(lr >= 0) || !double.IsFinite(lr)) throw new LckvException($"learning rate must be 0 or more, not {lr}");
        long t = ++StepCount;
        var o = Options;
        double bc1 = 1 - Math.Pow(o.Beta1, t), bc2 = 1 - Math.Pow(o.Beta2, t);
        var k = new Coefficients
        {
            Beta1 = o.Beta1,
            OneMinusBeta1 = 1 - o.Beta1,
            Beta2 = o.Beta2,
            OneMinusBeta2 = 1 - o.Beta2,
            StepSize = (float)(lr / bc1),
            InvSqrtBc2 = (float)(1 / Math.Sqrt(bc2)),
            Eps = o.Eps,
        };
        for (int i = 0; i < _parameters.Length; i++)
        {
            var p = _parameters[i];
            float decay = p.Decay ? (float)(1 - lr * o.WeightDecay) : 1f;
            Update(p.Value, p.Grad, _m[i], _v[i], decay, k);
        }
    }

    internal struct Coefficients
    {
        public float Beta1, OneMinusBeta1, Beta2, OneMinusBeta2, StepSize, InvSqrtBc2, Eps;
    }

    /// <summary>The element-wise update over one parameter; p, m, v are updated in place. Vector path plus scalar tail,
    /// both computing the same f32 operations in the same order so results do not depend on the vector width.</summary>
    internal static void Update(Span<float> p, ReadOnlySpan<float> g, Span<float> m, Span<float> v, float decay, in Coefficients k)
    {
        int n = p.Length, i = 0;
        if (Vector.IsHardwareAccelerated && n >= Vector<float>.Count)
        {
            var b1 = new Vector<float>(k.Beta1); var c1 = new Vector<float>(k.OneMinusBeta1);
            var b2 = new Vector<float>(k.Beta2); var c2 = new Vector<float>(k.OneMinusBeta2);
            var step = new Vector<float>(k.StepSize); var inv = new Vector<float>(k.InvSqrtBc2);
            var eps = new Vector<float>(k.Eps); var dec = new Vector<float>(decay);
            for (; i <= n - Vector<float>.Count; i += Vector<float>.Count)
            {
                var gi = new Vector<float>(g[i..]);
                var mi = b1 * new Vector<float>(m[i..]) + c1 * gi;
                var vi = b2 * new Vector<float>(v[i..]) + c2 * (gi * gi);
                var pi = new Vector<float>(p[i..]) * dec;
                var denom = Vector.SquareRoot(vi) * inv + eps;
                pi -= step * (mi / denom);
                mi.CopyTo(m[i..]);
                vi.CopyTo(v[i..]);
                pi.CopyTo(p[i..]);
            }
        }
        for (; i < n; i++)
        {
            float gi = g[i];
            float mi = k.Beta1 * m[i] + k.OneMinusBeta1 * gi;
            float vi = k.Beta2 * v[i] + k.OneMinusBeta2 * (gi * gi);
            float pi = p[i] * decay;
            float denom = MathF.Sqrt(vi) * k.InvSqrtBc2 + k.Eps;
            pi -= k.StepSize * (mi / denom);
            m[i] = mi;
            v[i] = vi;
            p[i] = pi;
        }
    }
}

/// <summary>
/// Learning rate at update t (1-based): linear warmup from maxLr/warmup to maxLr over updates 1..warmup, then a
/// half cosine from maxLr down to minLr at update totalSteps; minLr after that.
/// <code>
/// t &lt;= warmup:  lr = maxLr * t / warmup
/// otherwise:    lr = minLr + (maxLr - minLr) * (1 + cos(pi * min(1, (t - warmup) / (totalSteps - warmup)))) / 2
/// </code>
/// </summary>
public sealed record CosineSchedule(double MaxLr, double MinLr, int Warmup, int TotalSteps)
{
    public void Validate()
    {
        if (!(MaxLr > 0) || !double.IsFinite(MaxLr)) throw new LckvException($"--lr must be a positive number, not {MaxLr}");
        if (!(MinLr >= 0) || MinLr > MaxLr) throw new LckvException($"--min-lr must be in [0, --lr {MaxLr}], not {MinLr}");
        if (Warmup < 0) throw new LckvException($"--warmup must be 0 or more, not {Warmup}");
        if (TotalSteps < 1) throw new LckvException($"--steps must be at least 1, not {TotalSteps}");
    }

    public double LearningRate(long t)
    {
        if (Warmup > 0 && t <= Warmup) return MaxLr * Math.Max(t, 0) / Warmup;
        if (TotalSteps <= Warmup) return MinLr;
        double progress = Math.Min(1.0, (double)(t - Warmup) / (TotalSteps - Warmup));
        return MinLr + (MaxLr - MinLr) * (1 + Math.Cos(Math.PI * progress)) / 2;
    }
}
