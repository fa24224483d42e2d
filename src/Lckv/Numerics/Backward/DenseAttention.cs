using System.Numerics.Tensors;

namespace Lckv.Numerics.Backward;

/// <summary>
/// Grouped-query attention over contiguous K/V for training: whole sequences of length T, query t of sequence b against
/// keys of the same sequence under a <see cref="MaskRule"/>. The forward keeps the log-sum-exp of each (row, head) so
/// the backward recomputes probabilities instead of storing them. A row with no visible key outputs exactly zero and
/// gets zero gradient (its log-sum-exp is -inf).
/// </summary>
public static unsafe class DenseAttention
{
    /// <summary>Forward: o = softmax(scale * q·kᵀ + mask) · v, lse = log-sum-exp of the masked scaled scores; the one
    /// attention kernel (<see cref="Attention"/>) over views of the contiguous K/V, one block per sequence.</summary>
    // q is (B*T, H*D), k and v are (B*T, KV*D), o is (B*T, H*D), lse is (B*T, H)
    public static void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        int batch, int seqLen, int heads, int kvHeads, int headDim, MaskRule rule, float scale,
        Span<float> o, Span<float> lse)
    {
        Check(q, k, v, o, lse, batch, seqLen, heads, kvHeads, headDim);
        var sequences = new AttentionSequence[batch];
        for (int b = 0; b < batch; b++) sequences[b] = new AttentionSequence(b * seqLen, seqLen, 0, KvView.Linear([b], seqLen));
        fixed (float* pk = k, pv = v)
            Attention.Compute(q, heads, KvStorage.Contiguous(pk, pv, seqLen, kvHeads, headDim), sequences, rule, scale,
                o[..(batch * seqLen * heads * headDim)], lse[..(batch * seqLen * heads)]);
    }

    /// <summary>
    /// Backward: dq is written; dk and dv are ADDED to (pass empty spans to skip them: a KV that is a constant).
    /// </summary>
    // q, o, dO, dq are (B*T, H*D); k, v, dk, dv are (B*T, KV*D); lse is (B*T, H)
    public static void Backward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        ReadOnlySpan<float> o, ReadOnlySpan<float> lse, ReadOnlySpan<float> dO,
        int batch, int seqLen, int heads, int kvHeads, int headDim, MaskRule rule, float scale,
        Span<float> dq, Span<float> dk, Span<float> dv)
    {
        Check(q, k, v, o, lse, batch, seqLen, heads, kvHeads, headDim);
        long qn = (long)batch * seqLen * heads * headDim, kn = (long)batch * seqLen * kvHeads * headDim;
        if (dO.Length < qn || dq.Length < qn) throw new ArgumentException("dO or dq is shorter than B*T x H*D");
        bool kvGrad = !dk.IsEmpty;
        if (kvGrad && (dk.Length < kn || dv.Length < kn)) throw new ArgumentException("dk or dv is shorter than B*T x KV*D");
        fixed (float* pq = q, pk = k, pv = v, po = o, pl = lse, pdo = dO, pdq = dq, pdk = dk, pdv = dv)
        {
            var job = new Job
            {
                Q = pq, K = pk, V = pv, O = po, Lse = pl, T = seqLen, H = heads, KvH = kvHeads, D = headDim,
                Rule = rule, Scale = scale, DO = pdo, DQ = pdq, DK = kvGrad ? pdk : null, DV = kvGrad ? pdv : null,
            };
            int items = batch * kvHeads; // one item owns the dk/dv rows of one (sequence, KV head)
            if ((long)batch * seqLen * seqLen * heads * headDim < 1 << 15) job.Backward(0, items);
            else WorkerPool.Shared.Run(items, new BackwardJob { Inner = job });
        }
    }

    private static void Check(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<float> o,
        ReadOnlySpan<float> lse, int batch, int seqLen, int heads, int kvHeads, int headDim)
    {
        if (kvHeads <= 0 || heads % kvHeads != 0) throw new ArgumentException($"{heads} query heads do not divide into {kvHeads} KV heads");
        long rows = (long)batch * seqLen;
        if (q.Length < rows * heads * headDim || o.Length < rows * heads * headDim) throw new ArgumentException("q or o is shorter than B*T x H*D");
        if (k.Length < rows * kvHeads * headDim || v.Length < rows * kvHeads * headDim) throw new ArgumentException("k or v is shorter than B*T x KV*D");
        if (lse.Length < rows * heads) throw new ArgumentException("lse is shorter than B*T x H");
        if (seqLen > 1 << 16) throw new ArgumentException("sequence too long for the training attention kernel");
    }

    private struct BackwardJob : IRangeBody
    {
        public Job Inner;
        public readonly void Invoke(int start, int end) => Inner.Backward(start, end);
    }

    private struct Job
    {
        public float* Q, K, V, O, Lse, DO, DQ, DK, DV;
        public int T, H, KvH, D;
        public MaskRule Rule;
        public float Scale;

        // items are (b, h)
        public readonly void Backward(int start, int end)
        {
            int d = D, qStride = H * d, kStride = KvH * d, group = H / KvH;
            for (int item = start; item < end; item++)
            {
                int b = item / KvH, g = item % KvH;
                float* kBase = K + (long)b * T * kStride + g * d, vBase = V + (long)b * T * kStride + g * d;
                for (int h = g * group; h < (g + 1) * group; h++)
                    for (int t = 0; t < T; t++)
                    {
                        long row = (long)b * T + t;
                        long qo = row * qStride + h * d;
                        var dq = new Span<float>(DQ + qo, d);
                        dq.Clear();
                        var (j0, j1) = Rule.Visible(t, T);
                        if (j0 >= j1) continue;
                        float* qh = Q + qo, doh = DO + qo, dqh = DQ + qo;
                        float lse = Lse[row * H + h];
                        float di = Simd.Dot(doh, O + qo, d);
                        for (int j = j0; j < j1; j++)
                        {
                            float* kj = kBase + (long)j * kStride, vj = vBase + (long)j * kStride;
                            float p = MathF.Exp(Simd.Dot(qh, kj, d) * Scale - lse);
                            float dp = Simd.Dot(doh, vj, d);
                            float ds = p * (dp - di) * Scale;
                            Simd.MultiplyAdd(kj, ds, dqh, d);
                            if (DK == null) continue;
                            long kv = (long)b * T * kStride + (long)j * kStride + g * d;
                            Simd.MultiplyAdd(qh, ds, DK + kv, d);
                            Simd.MultiplyAdd(doh, p, DV + kv, d);
                        }
                    }
            }
        }
    }

    /// <summary>Scalar reference of the forward: explicit probabilities, f64 softmax.</summary>
    public static void ForwardReference(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        int batch, int seqLen, int heads, int kvHeads, int headDim, MaskRule rule, float scale, Span<float> o, Span<float> lse)
    {
        int d = headDim, group = heads / kvHeads;
        var p = new double[seqLen];
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < heads; h++)
                for (int t = 0; t < seqLen; t++)
                {
                    int row = b * seqLen + t, g = h / group;
                    var (j0, j1) = rule.Visible(t, seqLen);
                    var oh = o.Slice((row * heads + h) * d, d);
                    oh.Clear();
                    if (j0 >= j1) { lse[row * heads + h] = float.NegativeInfinity; continue; }
                    double max = double.NegativeInfinity;
                    for (int j = j0; j < j1; j++)
                    {
                        double s = 0;
                        for (int i = 0; i < d; i++) s += (double)q[(row * heads + h) * d + i] * k[((b * seqLen + j) * kvHeads + g) * d + i];
                        p[j] = s * scale;
                        max = Math.Max(max, p[j]);
                    }
                    double sum = 0;
                    for (int j = j0; j < j1; j++) sum += Math.Exp(p[j] - max);
                    for (int j = j0; j < j1; j++)
                    {
                        double w = Math.Exp(p[j] - max) / sum;
                        for (int i = 0; i < d; i++) oh[i] += (float)(w * v[((b * seqLen + j) * kvHeads + g) * d + i]);
                    }
                    lse[row * heads + h] = (float)(max + Math.Log(sum));
                }
    }

    /// <summary>Scalar reference of the backward: explicit probabilities (recomputed in f64, not from lse).</summary>
    public static void BackwardReference(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<float> dO,
        int batch, int seqLen, int heads, int kvHeads, int headDim, MaskRule rule, float scale,
        Span<float> dq, Span<float> dk, Span<float> dv)
    {
        int d = headDim, group = heads / kvHeads;
        var p = new double[seqLen];
        var dp = new double[seqLen];
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < heads; h++)
                for (int t = 0; t < seqLen; t++)
                {
                    int row = b * seqLen + t, g = h / group;
                    int qo = (row * heads + h) * d;
                    dq.Slice(qo, d).Clear();
                    var (j0, j1) = rule.Visible(t, seqLen);
                    if (j0 >= j1) continue;
                    double max = double.NegativeInfinity;
                    for (int j = j0; j < j1; j++)
                    {
                        double s = 0;
                        for (int i = 0; i < d; i++) s += (double)q[qo + i] * k[((b * seqLen + j) * kvHeads + g) * d + i];
                        p[j] = s * scale;
                        max = Math.Max(max, p[j]);
                    }
                    double sum = 0;
                    for (int j = j0; j < j1; j++) sum += Math.Exp(p[j] - max);
                    double di = 0;
                    for (int j = j0; j < j1; j++)
                    {
                        p[j] = Math.Exp(p[j] - max) / sum;
                        double x = 0;
                        for (int i = 0; i < d; i++) x += (double)dO[qo + i] * v[((b * seqLen + j) * kvHeads + g) * d + i];
                        dp[j] = x;
                        di += p[j] * x;
                    }
                    for (int j = j0; j < j1; j++)
                    {
                        double ds = p[j] * (dp[j] - di) * scale;
                        int ko = ((b * seqLen + j) * kvHeads + g) * d;
                        for (int i = 0; i < d; i++)
                        {
                            dq[qo + i] += (float)(ds * k[ko + i]);
                            if (dk.IsEmpty) continue;
                            dk[ko + i] += (float)(ds * q[qo + i]);
                            dv[ko + i] += (float)(p[j] * dO[qo + i]);
                        }
                    }
                }
    }
}
