namespace Lckv.Numerics;

/// <summary>
/// Geometry of one KV block: K then V, each [BlockSize, KvHeads, HeadDim] in the storage dtype.
/// Blocks of one pool lie at Base + index * BlockBytes.
/// </summary>
public readonly record struct KvLayout(int BlockSize, int KvHeads, int HeadDim, DType DType)
{
    public int RowElements => KvHeads * HeadDim;
    public long HalfBytes => (long)BlockSize * RowElements * DTypes.SizeOf(DType);
    public long BlockBytes => 2 * HalfBytes;
}

/// <summary>Which keys a query at position t sees among positions j of the KV it reads.</summary>
/// <param name="NoDiagonal">true: j &lt; t (upward-reading layers, force_nodiag); false: j &lt;= t.</param>
/// <param name="Window">0: no window; otherwise also j &gt;= t - Window.</param>
public readonly record struct MaskRule(bool NoDiagonal, int Window)
{
    public static MaskRule Causal => new(false, 0);

    /// <summary>The half-open range [start, end) of visible key positions for query position t, clipped to [0, keyCount).</summary>
    public (int Start, int End) Visible(int t, int keyCount)
    {
        int end = Math.Min(NoDiagonal ? t : t + 1, keyCount);
        int start = Window > 0 ? Math.Max(0, t - Window) : 0;
        return (start, Math.Max(start, end));
    }
}

/// <summary>One sequence's share of an attention call.</summary>
/// <param name="QueryRow">first row of this sequence's queries in q and output</param>
/// <param name="QueryCount">number of query rows</param>
/// <param name="FirstPosition">absolute position of the first query row; rows are consecutive positions</param>
/// <param name="KeyCount">keys at positions 0..KeyCount-1 are present; position p lives in block
/// BlockTable[p / BlockSize] at slot p % BlockSize</param>
/// <param name="BlockTable">block indices into the pool</param>
public readonly record struct AttentionSequence(int QueryRow, int QueryCount, int FirstPosition, int KeyCount, int[] BlockTable);

/// <summary>
/// Grouped-query attention over a paged KV store. KV head g serves query heads [g*H/KV, (g+1)*H/KV).
/// Softmax is online (running max), in f32. A query row with no visible key outputs exactly zero.
/// The mask is the rule, evaluated here; no mask matrix exists.
/// </summary>
public static unsafe class Attention
{
    // q is (rows, heads*D), output is (rows, heads*D); poolBase points at block 0
    public static void Compute(ReadOnlySpan<float> q, int heads, nint poolBase, KvLayout layout,
        ReadOnlySpan<AttentionSequence> sequences, MaskRule rule, float scale, Span<float> output)
        => ComputeReference(q, heads, poolBase, layout, sequences, rule, scale, output);

    public static void ComputeReference(ReadOnlySpan<float> q, int heads, nint poolBase, KvLayout layout,
        ReadOnlySpan<AttentionSequence> sequences, MaskRule rule, float scale, Span<float> output)
    {
        int d = layout.HeadDim, kvHeads = layout.KvHeads;
        if (heads % kvHeads != 0) throw new ArgumentException($"{heads} query heads do not divide into {kvHeads} KV heads");
        int group = heads / kvHeads;
        int es = DTypes.SizeOf(layout.DType);
        Span<float> k = stackalloc float[d];
        Span<float> v = stackalloc float[d];
        var acc = new float[d];
        foreach (var s in sequences)
        {
            for (int r = 0; r < s.QueryCount; r++)
            {
                int row = s.QueryRow + r, t = s.FirstPosition + r;
                var (start, end) = rule.Visible(t, s.KeyCount);
                for (int h = 0; h < heads; h++)
                {
                    int g = h / group;
                    var qh = q.Slice((row * heads + h) * d, d);
                    var oh = output.Slice((row * heads + h) * d, d);
                    float max = float.NegativeInfinity, sum = 0;
                    Array.Clear(acc);
                    for (int j = start; j < end; j++)
                    {
                        nint block = poolBase + (nint)(s.BlockTable[j / layout.BlockSize] * layout.BlockBytes);
                        nint off = (nint)(((long)(j % layout.BlockSize) * kvHeads + g) * d * es);
                        Convert.Widen(block + off, layout.DType, k);
                        Convert.Widen(block + (nint)layout.HalfBytes + off, layout.DType, v);
                        float dot = 0;
                        for (int i = 0; i < d; i++) dot += qh[i] * k[i];
                        dot *= scale;
                        if (dot > max)
                        {
                            float c = MathF.Exp(max - dot);
                            sum *= c;
                            for (int i = 0; i < d; i++) acc[i] *= c;
                            max = dot;
                        }
                        float p = MathF.Exp(dot - max);
                        sum += p;
                        for (int i = 0; i < d; i++) acc[i] += p * v[i];
                    }
                    float inv = end > start ? 1f / sum : 0f;
                    for (int i = 0; i < d; i++) oh[i] = acc[i] * inv;
                }
            }
        }
    }
}
