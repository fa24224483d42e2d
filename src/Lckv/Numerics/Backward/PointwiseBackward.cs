using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace Lckv.Numerics.Backward;

/// <summary>
/// Backward of y = w * x * r, r = rsqrt(mean(x^2) + eps), per row:
/// dx = r * (w*dy) - x * r^3 * sum(w*dy*x) / C, dw = sum over rows of dy * x * r.
/// </summary>
public static unsafe class RmsNormBackward
{
    /// <summary>dx += input gradient; dw += weight gradient. rstd is scratch of at least rows values.</summary>
    // dy is (rows, c), x is (rows, c), w is (c), dx is (rows, c), dw is (c), rstd is (rows)
    public static void Apply(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> w, float eps,
        Span<float> dx, Span<float> dw, Span<float> rstd, int rows)
    {
        int c = w.Length;
        if (rows <= 0 || c == 0) return;
        long n = (long)rows * c;
        if (dy.Length < n || x.Length < n || dx.Length < n || dw.Length < c || rstd.Length < rows)
            throw new ArgumentException("a buffer is shorter than rows x c");
        fixed (float* pdy = dy, px = x, pw = w, pdx = dx, pdw = dw, pr = rstd)
        {
            var rowsJob = new RowsJob { Dy = pdy, X = px, W = pw, Dx = pdx, R = pr, C = c, Eps = eps };
            int grain = Math.Max(1, 16384 / c);
            if (n < 1 << 14) rowsJob.Invoke(0, rows);
            else WorkerPool.Shared.Run(rows, rowsJob, grain);
            var colsJob = new WeightJob { Dy = pdy, X = px, Dw = pdw, R = pr, C = c, Rows = rows };
            if (n < 1 << 14) colsJob.Invoke(0, c);
            else WorkerPool.Shared.Run(c, colsJob, 16);
        }
    }

    /// <summary>Scalar reference: the same formulas in f64.</summary>
    public static void ApplyReference(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> w, float eps,
        Span<float> dx, Span<float> dw, int rows)
    {
        int c = w.Length;
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int i = 0; i < c; i++) ss += (double)x[r * c + i] * x[r * c + i];
            double rs = 1.0 / Math.Sqrt(ss / c + eps);
            double dot = 0;
            for (int i = 0; i < c; i++) dot += (double)dy[r * c + i] * w[i] * x[r * c + i];
            for (int i = 0; i < c; i++)
            {
                dx[r * c + i] += (float)(rs * dy[r * c + i] * w[i] - x[r * c + i] * rs * rs * rs * dot / c);
                dw[i] += (float)(dy[r * c + i] * x[r * c + i] * rs);
            }
        }
    }

    private struct RowsJob : IRangeBody
    {
        public float* Dy, X, W, Dx, R;
        public int C;
        public float Eps;

        public readonly void Invoke(int start, int end)
        {
            int c = C;
            for (int r = start; r < end; r++)
            {
                var x = new ReadOnlySpan<float>(X + (long)r * c, c);
                var dy = new ReadOnlySpan<float>(Dy + (long)r * c, c);
                var w = new ReadOnlySpan<float>(W, c);
                float rs = 1f / MathF.Sqrt(TensorPrimitives.Dot(x, x) / c + Eps);
                R[r] = rs;
                // sum(w*dy*x)
                float dot = 0;
                float* px = X + (long)r * c, pdy = Dy + (long)r * c, pdx = Dx + (long)r * c;
                int i = 0;
                if (Vector256.IsHardwareAccelerated)
                {
                    var acc = Vector256<float>.Zero;
                    for (; i <= c - 8; i += 8)
                        acc = Vector256.FusedMultiplyAdd(Vector256.Load(pdy + i) * Vector256.Load(W + i), Vector256.Load(px + i), acc);
                    dot = Vector256.Sum(acc);
                }
                for (; i < c; i++) dot += pdy[i] * W[i] * px[i];
                float k = rs * rs * rs * dot / c;
                i = 0;
                if (Vector256.IsHardwareAccelerated)
                {
                    var vr = Vector256.Create(rs);
                    var vk = Vector256.Create(k);
                    for (; i <= c - 8; i += 8)
                    {
                        var g = Vector256.Load(pdy + i) * Vector256.Load(W + i);
                        (Vector256.Load(pdx + i) + g * vr - Vector256.Load(px + i) * vk).Store(pdx + i);
                    }
                }
                for (; i < c; i++) pdx[i] += rs * dy[i] * w[i] - px[i] * k;
            }
        }
    }

    private struct WeightJob : IRangeBody
    {
        public float* Dy, X, Dw, R;
        public int C, Rows;

        public readonly void Invoke(int start, int end)
        {
            int c = C;
            for (int r = 0; r < Rows; r++)
            {
                float rs = R[r];
                float* px = X + (long)r * c, pdy = Dy + (long)r * c;
                int i = start;
                if (Vector256.IsHardwareAccelerated)
                {
                    var vr = Vector256.Create(rs);
                    for (; i <= end - 8; i += 8)
                        Vector256.FusedMultiplyAdd(Vector256.Load(pdy + i) * Vector256.Load(px + i), vr, Vector256.Load(Dw + i)).Store(Dw + i);
                }
                for (; i < end; i++) Dw[i] += pdy[i] * px[i] * rs;
            }
        }
    }
}

/// <summary>Backward of RoPE (either style): the transpose of a rotation is the rotation by the opposite angle.</summary>
public static unsafe class RopeBackward
{
    /// <summary>In place: dx = R(-angle) dy, per head of each row.</summary>
    // dx is (rows, heads*D) holding dy on entry, positions is (rows)
    public static void Apply(Span<float> dx, ReadOnlySpan<int> positions, int heads, RopeTable table)
    {
        int d = table.HeadDim, half = d / 2;
        if (dx.Length < (long)positions.Length * heads * d) throw new ArgumentException("dx is shorter than rows x heads x head_dim", nameof(dx));
        bool pairs = table.Style == RopeStyle.AdjacentPairs;
        for (int r = 0; r < positions.Length; r++)
        {
            var cs = table.Cos(positions[r]);
            var sn = table.Sin(positions[r]);
            fixed (float* pc = cs, ps = sn, px = dx.Slice(r * heads * d, heads * d))
            {
                if (pairs) for (int h = 0; h < heads; h++) UnrotatePairs(px + h * d, pc, ps, half);
                else for (int h = 0; h < heads; h++) Unrotate(px + h * d, pc, ps, half);
            }
        }
    }

    // v is (2*half): [a, b] -> [a*cos + b*sin, b*cos - a*sin]
    private static void Unrotate(float* v, float* cos, float* sin, int half)
    {
        float* b = v + half;
        int j = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; j <= half - 8; j += 8)
            {
                var a = Vector256.Load(v + j); var bb = Vector256.Load(b + j);
                var c = Vector256.Load(cos + j); var s = Vector256.Load(sin + j);
                (a * c + bb * s).Store(v + j);
                (bb * c - a * s).Store(b + j);
            }
        for (; j < half; j++)
        {
            float a = v[j], bb = b[j];
            v[j] = a * cos[j] + bb * sin[j];
            b[j] = bb * cos[j] - a * sin[j];
        }
    }

    // (v[2j], v[2j+1]) -> (v[2j]*cos[j] + v[2j+1]*sin[j], v[2j+1]*cos[j] - v[2j]*sin[j]); training is not a hot path
    // for this style, so it stays scalar.
    private static void UnrotatePairs(float* v, float* cos, float* sin, int half)
    {
        for (int j = 0; j < half; j++)
        {
            float a = v[2 * j], b = v[2 * j + 1];
            v[2 * j] = a * cos[j] + b * sin[j];
            v[2 * j + 1] = b * cos[j] - a * sin[j];
        }
    }

    public static void ApplyReference(Span<float> dx, ReadOnlySpan<int> positions, int heads, RopeTable table)
    {
        int d = table.HeadDim, half = d / 2;
        for (int r = 0; r < positions.Length; r++)
        {
            var cos = table.Cos(positions[r]);
            var sin = table.Sin(positions[r]);
            for (int h = 0; h < heads; h++)
            {
                var v = dx.Slice((r * heads + h) * d, d);
                for (int j = 0; j < half; j++)
                {
                    var (ia, ib) = table.Style == RopeStyle.AdjacentPairs ? (2 * j, 2 * j + 1) : (j, j + half);
                    float a = v[ia], b = v[ib];
                    v[ia] = a * cos[j] + b * sin[j];
                    v[ib] = b * cos[j] - a * sin[j];
                }
            }
        }
    }
}

/// <summary>
/// Backward of a = silu(g) * u: du = da * silu(g), dg = da * u * s * (1 + g * (1 - s)), s = sigmoid(g).
/// </summary>
public static unsafe class SwiGluBackward
{
    /// <summary>dGate, dUp are written (not accumulated); they may alias gate, up or da elementwise.</summary>
    public static void Apply(ReadOnlySpan<float> da, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dGate, Span<float> dUp)
    {
        int n = da.Length;
        if (gate.Length < n || up.Length < n || dGate.Length < n || dUp.Length < n) throw new ArgumentException("buffers shorter than da");
        fixed (float* pa = da, pg = gate, pu = up, dg = dGate, du = dUp)
        {
            var job = new Job { A = pa, G = pg, U = pu, Dg = dg, Du = du };
            if (n >= 1 << 15) WorkerPool.Shared.Run(n, job, 4096);
            else job.Invoke(0, n);
        }
    }

    public static void ApplyReference(ReadOnlySpan<float> da, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dGate, Span<float> dUp)
    {
        for (int i = 0; i < da.Length; i++)
        {
            double g = gate[i], u = up[i], a = da[i];
            double s = 1.0 / (1.0 + Math.Exp(-g));
            dGate[i] = (float)(a * u * s * (1 + g * (1 - s)));
            dUp[i] = (float)(a * g * s);
        }
    }

    private struct Job : IRangeBody
    {
        public float* A, G, U, Dg, Du;

        public readonly void Invoke(int start, int end)
        {
            int i = start;
            if (Vector256.IsHardwareAccelerated)
            {
                var one = Vector256<float>.One;
                for (; i <= end - 8; i += 8)
                {
                    var g = Vector256.Load(G + i); var u = Vector256.Load(U + i); var a = Vector256.Load(A + i);
                    var s = one / (one + Vector256.Exp(-g));
                    var silu = g * s;
                    (a * u * s * (one + g * (one - s))).Store(Dg + i);
                    (a * silu).Store(Du + i);
                }
            }
            for (; i < end; i++)
            {
                float g = G[i], u = U[i], a = A[i];
                float s = 1f / (1f + MathF.Exp(-g));
                Dg[i] = a * u * s * (1f + g * (1f - s));
                Du[i] = a * g * s;
            }
        }
    }
}

/// <summary>
/// Mean-style cross-entropy pieces: per row loss = logsumexp(x) - x[target]; gradient (softmax(x) - onehot) * scale.
/// A row with target -1 is ignored (loss 0, gradient 0).
/// </summary>
public static unsafe class CrossEntropy
{
    /// <summary>
    /// Writes each row's loss into rowLoss and returns their sum (f64). When dlogits is not empty it receives the
    /// gradient times scale; it may be the logits buffer itself (in place).
    /// </summary>
    // logits is (rows, v), targets is (rows), rowLoss is (rows), dlogits is (rows, v) or empty
    public static double Apply(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, int v, Span<float> rowLoss, Span<float> dlogits, float scale)
    {
        int rows = targets.Length;
        if (logits.Length < (long)rows * v || rowLoss.Length < rows) throw new ArgumentException("buffers shorter than rows x vocab");
        bool grad = !dlogits.IsEmpty;
        if (grad && dlogits.Length < (long)rows * v) throw new ArgumentException("dlogits shorter than rows x vocab", nameof(dlogits));
        foreach (int t in targets)
            if (t < -1 || t >= v) throw new ArgumentOutOfRangeException(nameof(targets), $"target {t} outside [-1, {v})");
        fixed (float* px = logits, pl = rowLoss, pd = dlogits)
        fixed (int* pt = targets)
        {
            var job = new Job { X = px, L = pl, D = grad ? pd : null, T = pt, V = v, Scale = scale };
            if ((long)rows * v < 1 << 15) job.Invoke(0, rows);
            else WorkerPool.Shared.Run(rows, job, Math.Max(1, 8192 / v));
        }
        double sum = 0;
        for (int r = 0; r < rows; r++) sum += rowLoss[r];
        return sum;
    }

    public static double ApplyReference(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, int v, Span<float> rowLoss, Span<float> dlogits, float scale)
    {
        double sum = 0;
        for (int r = 0; r < targets.Length; r++)
        {
            var x = logits.Slice(r * v, v);
            int t = targets[r];
            if (t < 0)
            {
                rowLoss[r] = 0;
                if (!dlogits.IsEmpty) dlogits.Slice(r * v, v).Clear();
                continue;
            }
            double max = double.NegativeInfinity;
            for (int i = 0; i < v; i++) max = Math.Max(max, x[i]);
            double s = 0;
            for (int i = 0; i < v; i++) s += Math.Exp(x[i] - max);
            double lse = max + Math.Log(s);
            rowLoss[r] = (float)(lse - x[t]);
            sum += lse - x[t];
            if (dlogits.IsEmpty) continue;
            var d = dlogits.Slice(r * v, v);
            for (int i = 0; i < v; i++) d[i] = (float)((Math.Exp(x[i] - lse) - (i == t ? 1 : 0)) * scale);
        }
        return sum;
    }

    private struct Job : IRangeBody
    {
        public float* X, L, D;
        public int* T;
        public int V;
        public float Scale;

        public readonly void Invoke(int start, int end)
        {
            int v = V;
            for (int r = start; r < end; r++)
            {
                var x = new ReadOnlySpan<float>(X + (long)r * v, v);
                int t = T[r];
                if (t < 0)
                {
                    L[r] = 0;
                    if (D != null) new Span<float>(D + (long)r * v, v).Clear();
                    continue;
                }
                float max = TensorPrimitives.Max(x);
                float* xr = X + (long)r * v;
                float lse = max + (float)Math.Log(Softmax.SumExp(xr, v, max));
                L[r] = lse - x[t];
                if (D == null) continue;
                // D may alias X: each element is read before it is overwritten
                float* dr = D + (long)r * v;
                Softmax.ExpScaled(xr, lse, Scale, dr, v);
                dr[t] -= Scale;
            }
        }
    }
}
