using System.Numerics;
using System.Numerics.Tensors;
using Lckv.Numerics;

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
/// checkpoint can save and restore them bit for bit. A step allocates nothing. The loops run on the shared worker pool in
/// chunks; every result is independent of the thread count (element-wise updates; the norm sums fixed blocks in order).
/// </summary>
public sealed class AdamW
{
    private readonly Parameter[] _parameters;
    private readonly float[][] _m, _v;
    private readonly double[] _partials;
    private readonly WorkerPool _pool;

    /// <param name="pool">Threads for the loops (default: the shared pool).</param>
    public AdamW(IReadOnlyList<Parameter> parameters, AdamWOptions options, WorkerPool? pool = null)
    {
        _pool = pool ?? WorkerPool.Shared;
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
        _partials = new double[_parameters.Select(p => Blocks(p.Value.Length)).DefaultIfEmpty(0).Max()];
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
    public unsafe double ClipGradNorm(double maxNorm)
    {
        double sum = 0;
        fixed (double* partials = _partials)
        {
            foreach (var p in _parameters)
            {
                fixed (float* g = p.Grad)
                {
                    int blocks = Blocks(p.Grad.Length);
                    _pool.Run(blocks, new SquaresJob { G = g, N = p.Grad.Length, Partials = partials });
                    for (int b = 0; b < blocks; b++) sum += partials[b];
                }
            }
        }
        double norm = Math.Sqrt(sum);
        if (maxNorm > 0 && norm > maxNorm && double.IsFinite(norm))
        {
            float scale = (float)(maxNorm / (norm + 1e-6));
            foreach (var p in _parameters)
                fixed (float* g = p.Grad)
                    _pool.Run(p.Grad.Length, new ScaleJob { G = g, Scale = scale }, Grain);
        }
        return norm;
    }

    /// <summary>
    /// Global L2 norm of the gradients: sums of squares over fixed blocks of <see cref="NormBlock"/> elements in f32,
    /// added in order in f64, so the result does not depend on the thread count (the same sum ClipGradNorm computes).
    /// </summary>
    public static double GradNorm(IReadOnlyList<Parameter> parameters)
    {
        double sum = 0;
        for (int i = 0; i < parameters.Count; i++)
        {
            var g = parameters[i].Grad;
            for (int s = 0; s < g.Length; s += NormBlock)
                sum += TensorPrimitives.SumOfSquares<float>(g.AsSpan(s, Math.Min(NormBlock, g.Length - s)));
        }
        return Math.Sqrt(sum);
    }

    /// <summary>Elements per partial sum of the gradient norm.</summary>
    public const int NormBlock = 1 << 16;

    /// <summary>Elements per thread chunk of the element-wise loops (a multiple of every vector width).</summary>
    private const int Grain = 1 << 14;

    private static int Blocks(int n) => (n + NormBlock - 1) / NormBlock;

    private unsafe struct SquaresJob : IRangeBody
    {
        public float* G;
        public int N;
        public double* Partials;

        public readonly void Invoke(int start, int end)
        {
            for (int b = start; b < end; b++)
            {
                int s = b * NormBlock, e = Math.Min(N, s + NormBlock);
                Partials[b] = TensorPrimitives.SumOfSquares<float>(new ReadOnlySpan<float>(G + s, e - s));
            }
        }
    }

    private unsafe struct ScaleJob : IRangeBody
    {
        public float* G;
        public float Scale;

        public readonly void Invoke(int start, int end)
        {
            var span = new Span<float>(G + start, end - start);
            TensorPrimitives.Multiply(span, Scale, span);
        }
    }

    private unsafe struct UpdateJob : IRangeBody
    {
        public float* P, G, M, V;
        public float Decay;
        public Coefficients K;

        public readonly void Invoke(int start, int end)
        {
            int n = end - start;
            Update(new Span<float>(P + start, n), new ReadOnlySpan<float>(G + start, n), new Span<float>(M + start, n),
                new Span<float>(V + start, n), Decay, K);
        }
    }

    /// <summary>One update of every parameter from its gradient with learning rate lr.</summary>
    public unsafe void Step(double lr)
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
            fixed (float* pv = p.Value, g = p.Grad, m = _m[i], v = _v[i])
                _pool.Run(p.Value.Length, new UpdateJob { P = pv, G = g, M = m, V = v, Decay = decay, K = k }, Grain);
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
        if (!(MaxLr > 0) || !double.IsFinite(MaxLr))
            throw new LckvException($"peak learning rate must be a positive number, not {MaxLr}") { Settings = [nameof(MaxLr)] };
        if (!(MinLr >= 0) || MinLr > MaxLr)
            throw new LckvException($"final learning rate must be in [0, the peak learning rate {MaxLr}], not {MinLr}") { Settings = [nameof(MinLr)] };
        if (Warmup < 0) throw new LckvException($"warmup must be 0 or more steps, not {Warmup}") { Settings = [nameof(Warmup)] };
        if (TotalSteps < 1) throw new LckvException($"total steps must be at least 1, not {TotalSteps}") { Settings = [nameof(TotalSteps)] };
    }

    public double LearningRate(long t)
    {
        if (Warmup > 0 && t <= Warmup) return MaxLr * Math.Max(t, 0) / Warmup;
        if (TotalSteps <= Warmup) return MinLr;
        double progress = Math.Min(1.0, (double)(t - Warmup) / (TotalSteps - Warmup));
        return MinLr + (MaxLr - MinLr) * (1 + Math.Cos(Math.PI * progress)) / 2;
    }
}
