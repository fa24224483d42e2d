using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

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
/// <param name="RingBlocks">0: the table is linear. Otherwise the KV is a ring of that many blocks (a sliding-window
/// layer's bounded store): position p lives in BlockTable[(p / BlockSize) % RingBlocks], and only the last
/// RingBlocks * BlockSize positions are present, so the mask's window must keep every visible key among them.</param>
public readonly record struct AttentionSequence(int QueryRow, int QueryCount, int FirstPosition, int KeyCount, int[] BlockTable, int RingBlocks = 0)
{
    /// <summary>The table entry holding position p.</summary>
    public int BlockOf(int p, int blockSize) => RingBlocks > 0 ? p / blockSize % RingBlocks : p / blockSize;

    /// <summary>Throws if the table cannot hold every key the rule lets these queries see.</summary>
    public void CheckCovers(int blockSize, MaskRule rule)
    {
        if (KeyCount <= 0 || QueryCount <= 0) return;
        if (BlockTable is null) throw new ArgumentException("a sequence has keys but no block table");
        if (RingBlocks == 0)
        {
            if ((long)BlockTable.Length * blockSize < KeyCount) throw new ArgumentException("a sequence's block table does not cover its keys");
            return;
        }
        if (BlockTable.Length < RingBlocks) throw new ArgumentException("a ring's block table is shorter than the ring");
        // the ring holds the blocks of the newest RingBlocks block indices; the first query's window must start there
        long firstPresent = Math.Max(0L, ((long)(KeyCount - 1) / blockSize - RingBlocks + 1) * blockSize);
        long oldestVisible = rule.Window > 0 ? Math.Max(0L, FirstPosition - (long)rule.Window) : 0;
        if (oldestVisible < firstPresent)
            throw new ArgumentException($"a KV ring of {RingBlocks} blocks no longer holds position {oldestVisible}, which the mask makes visible");
    }
}

/// <summary>
/// Grouped-query attention over a paged KV store. KV head g serves query heads [g*H/KV, (g+1)*H/KV).
/// Softmax is online (running max), in f32. A query row with no visible key outputs exactly zero.
/// The mask is the rule, evaluated here; no mask matrix exists.
/// </summary>
public static unsafe class Attention
{
    private const int KeyTile = 16;  // keys scored and folded into the running softmax together
    private const int RowChunk = 16; // query rows per work item

    // q is (rows, heads*D), output is (rows, heads*D); poolBase points at block 0
    public static void Compute(ReadOnlySpan<float> q, int heads, nint poolBase, KvLayout layout,
        ReadOnlySpan<AttentionSequence> sequences, MaskRule rule, float scale, Span<float> output)
    {
        int d = layout.HeadDim, kvHeads = layout.KvHeads;
        if (kvHeads <= 0 || heads % kvHeads != 0) throw new ArgumentException($"{heads} query heads do not divide into {kvHeads} KV heads");
        int group = heads / kvHeads;
        if ((long)group * d > 16384 || d > 1024)
        {
            ComputeReference(q, heads, poolBase, layout, sequences, rule, scale, output);
            return;
        }
        int items = 0;
        foreach (var s in sequences)
        {
            if (s.QueryCount <= 0) continue;
            long rows = (long)s.QueryRow + s.QueryCount;
            if (rows * heads * d > q.Length || rows * heads * d > output.Length) throw new ArgumentException("a sequence's rows lie outside q or output");
            s.CheckCovers(layout.BlockSize, rule);
            items += kvHeads * ((s.QueryCount + RowChunk - 1) / RowChunk);
        }
        if (items == 0) return;
        fixed (float* pq = q, po = output)
#pragma warning disable CS8500 // the sequences are pinned for the call; the block tables are read through them
        fixed (AttentionSequence* ps = sequences)
        {
            var job = new Job
            {
                Q = pq, O = po, Sequences = ps, SequenceCount = sequences.Length, Heads = heads, Group = group,
                PoolBase = (byte*)poolBase, Layout = layout, Rule = rule, ScoreScale = scale,
            };
            // one item is a (sequence, KV head, chunk of query rows); small calls run on the caller
            long work = 0;
            foreach (var s in sequences) work += (long)s.QueryCount * Math.Max(1, s.KeyCount) * heads * d;
            int grain = work < 1 << 16 ? items : 1;
            WorkerPool.Shared.Run(items, job, grain);
        }
#pragma warning restore CS8500
    }

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
        foreach (var s in sequences) s.CheckCovers(layout.BlockSize, rule);
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
                        nint block = poolBase + (nint)(s.BlockTable[s.BlockOf(j, layout.BlockSize)] * layout.BlockBytes);
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

    private struct Job : IRangeBody
    {
        public float* Q, O;
#pragma warning disable CS8500
        public AttentionSequence* Sequences;
#pragma warning restore CS8500
        public int SequenceCount, Heads, Group;
        public byte* PoolBase;
        public KvLayout Layout;
        public MaskRule Rule;
        public float ScoreScale;

        public readonly void Invoke(int start, int end)
        {
            int kvHeads = Layout.KvHeads;
            int item = 0;
            for (int si = 0; si < SequenceCount && item < end; si++)
            {
                ref readonly var s = ref Sequences[si];
                if (s.QueryCount <= 0) continue;
                int chunks = (s.QueryCount + RowChunk - 1) / RowChunk;
                int count = kvHeads * chunks;
                if (item + count <= start) { item += count; continue; }
                for (int local = Math.Max(0, start - item); local < count && item + local < end; local++)
                {
                    int g = local / chunks, c = local % chunks;
                    int r0 = c * RowChunk, r1 = Math.Min(s.QueryCount, r0 + RowChunk);
                    if (Sse.IsSupported && item + local + 1 < end)
                    {
                        // the next item's first tile of keys and values, so that its first scores do not wait on memory
                        // (the tile walker in Rows64 only prefetches within an item; at decode a short context is one
                        // or two tiles): `small` batch-16 decode, interleaved steps in one process, 1-2% faster
                        if (local + 1 < count) PrefetchFirstTile(in s, (local + 1) / chunks, (local + 1) % chunks * RowChunk);
                        else
                        {
                            int sn = si + 1;
                            while (sn < SequenceCount && Sequences[sn].QueryCount <= 0) sn++;
                            if (sn < SequenceCount) PrefetchFirstTile(in Sequences[sn], 0, 0);
                        }
                    }
                    bool fast = Vector512.IsHardwareAccelerated && Layout.HeadDim == 64;
                    switch (Layout.DType)
                    {
                        case DType.F32 when fast: Rows64<F32Element>(in s, g, r0, r1); break;
                        case DType.BF16 when fast: Rows64<BF16Element>(in s, g, r0, r1); break;
                        case DType.F16 when fast: Rows64<F16Element>(in s, g, r0, r1); break;
                        case DType.F32: Rows<F32Element>(in s, g, r0, r1); break;
                        case DType.BF16: Rows<BF16Element>(in s, g, r0, r1); break;
                        case DType.F16: Rows<F16Element>(in s, g, r0, r1); break;
                        default: throw new ArgumentException($"KV dtype {Layout.DType} is not supported");
                    }
                }
                item += count;
            }
        }

        // the keys and values of KV head g that query row r0 of s sees first (up to a tile), prefetched into L1
        private readonly void PrefetchFirstTile(in AttentionSequence s, int g, int r0)
        {
            var (start, end) = Rule.Visible(s.FirstPosition + r0, s.KeyCount);
            int bs = Layout.BlockSize;
            long rowBytes = (long)Layout.HeadDim * DTypes.SizeOf(Layout.DType), keyStride = Layout.KvHeads * rowBytes, half = Layout.HalfBytes;
            for (int j = start, last = Math.Min(end, start + KeyTile); j < last; j++)
            {
                byte* row = PoolBase + s.BlockTable[s.BlockOf(j, bs)] * Layout.BlockBytes + j % bs * keyStride + g * rowBytes;
                for (long b = 0; b < rowBytes; b += 64) { Sse.Prefetch0(row + b); Sse.Prefetch0(row + half + b); }
            }
        }

        // query rows [r0, r1) of sequence s, the query heads of KV head g
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private readonly void Rows<TE>(in AttentionSequence s, int g, int r0, int r1) where TE : struct, IElement
        {
            int d = Layout.HeadDim, group = Group, kvHeads = Layout.KvHeads, bs = Layout.BlockSize;
            long blockBytes = Layout.BlockBytes, half = Layout.HalfBytes;
            long rowBytes = (long)d * TE.Size;
            float* acc = stackalloc float[group * d];          // (group, d) running sum of p * v
            float* scores = stackalloc float[group * KeyTile]; // (group, KeyTile)
            float* kt = stackalloc float[KeyTile * d];         // (KeyTile, d) widened keys
            float* vt = stackalloc float[KeyTile * d];         // (KeyTile, d) widened values
            float* max = stackalloc float[group];
            float* sum = stackalloc float[group];
            int[] table = s.BlockTable;
            int ring = s.RingBlocks;
            for (int r = r0; r < r1; r++)
            {
                int row = s.QueryRow + r, t = s.FirstPosition + r;
                var (start, end) = Rule.Visible(t, s.KeyCount);
                float* qRow = Q + ((long)row * Heads + g * group) * d;   // (group, d)
                float* oRow = O + ((long)row * Heads + g * group) * d;   // (group, d)
                if (end <= start)
                {
                    new Span<float>(oRow, group * d).Clear();
                    continue;
                }
                new Span<float>(acc, group * d).Clear();
                for (int h = 0; h < group; h++) { max[h] = float.NegativeInfinity; sum[h] = 0; }
                for (int j0 = start; j0 < end; j0 += KeyTile)
                {
                    int nk = Math.Min(KeyTile, end - j0);
                    for (int jj = 0; jj < nk; jj++)
                    {
                        int j = j0 + jj;
                        int slot = ring > 0 ? j / bs % ring : j / bs;
                        byte* kRow = PoolBase + table[slot] * blockBytes + ((long)(j % bs) * kvHeads + g) * rowBytes;
                        Simd.Widen<TE>(kRow, kt + jj * d, d);
                        Simd.Widen<TE>(kRow + half, vt + jj * d, d);
                    }
                    for (int h = 0; h < group; h++)
                    {
                        float* qh = qRow + h * d, sh = scores + h * KeyTile;
                        for (int jj = 0; jj < nk; jj++) sh[jj] = Dot(qh, kt + jj * d, d) * ScoreScale;
                        Fold(sh, nk, ref max[h], ref sum[h], acc + h * d, vt, d);
                    }
                }
                for (int h = 0; h < group; h++) Scale(acc + h * d, 1f / sum[h], oRow + h * d, d);
            }
        }

        // Rows for head_dim 64 on 512-bit hardware: a head's 64 values are 4 registers. Keys come a tile of 16 at a time
        // (f32 K/V read in place, 16-bit ones widened once per tile for all heads of the group; a short last tile is
        // padded with key 0 and its scores masked to -inf). For each query head: 16 scores (4 keys per horizontal
        // reduction), one vector exp, then the p * v sums with the accumulator in registers. Nothing that lives in a
        // register spans a call (every zmm is caller-saved).
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private readonly void Rows64<TE>(in AttentionSequence s, int g, int r0, int r1) where TE : struct, IElement
        {
            const int d = 64;
            int group = Group, kvHeads = Layout.KvHeads, bs = Layout.BlockSize;
            long blockBytes = Layout.BlockBytes, half = Layout.HalfBytes;
            long rowBytes = (long)d * TE.Size, keyStride = kvHeads * rowBytes;
            bool inPlace = typeof(TE) == typeof(F32Element);
            float* acc = stackalloc float[group * d];
            float* max = stackalloc float[group];
            float* sum = stackalloc float[group];
            float* kt = stackalloc float[inPlace ? 1 : KeyTile * d];
            float* vt = stackalloc float[inPlace ? 1 : KeyTile * d];
            float** kp = stackalloc float*[KeyTile];
            float** vp = stackalloc float*[KeyTile];
            float* p = stackalloc float[KeyTile];
            int[] table = s.BlockTable;
            int ring = s.RingBlocks;
            var scale = Vector128.Create(ScoreScale);
            for (int r = r0; r < r1; r++)
            {
                int row = s.QueryRow + r, t = s.FirstPosition + r;
                var (start, end) = Rule.Visible(t, s.KeyCount);
                float* qRow = Q + ((long)row * Heads + g * group) * d;
                float* oRow = O + ((long)row * Heads + g * group) * d;
                if (end <= start)
                {
                    new Span<float>(oRow, group * d).Clear();
                    continue;
                }
                new Span<float>(acc, group * d).Clear();
                for (int h = 0; h < group; h++) { max[h] = float.NegativeInfinity; sum[h] = 0; }
                int block = start / bs, slotInBlock = start % bs; // walked forward, no division per key
                // a second walker a tile ahead prefetches the keys and values of the next tile
                int aheadKey = start + KeyTile, aheadBlock = aheadKey / bs, aheadSlot = aheadKey % bs;
                for (int j0 = start; j0 < end; j0 += KeyTile)
                {
                    int nk = Math.Min(KeyTile, end - j0);
                    int nAhead = Math.Min(KeyTile, end - j0 - KeyTile);
                    for (int jj = 0; jj < nAhead; jj++)
                    {
                        byte* next = PoolBase + table[ring > 0 ? aheadBlock % ring : aheadBlock] * blockBytes + aheadSlot * keyStride + g * rowBytes;
                        if (++aheadSlot == bs) { aheadSlot = 0; aheadBlock++; }
                        for (int b = 0; b < rowBytes; b += 64) { Sse.Prefetch0(next + b); Sse.Prefetch0(next + half + b); }
                    }
                    for (int jj = 0; jj < nk; jj++)
                    {
                        byte* kRow = PoolBase + table[ring > 0 ? block % ring : block] * blockBytes + slotInBlock * keyStride + g * rowBytes;
                        if (++slotInBlock == bs) { slotInBlock = 0; block++; }
                        if (inPlace)
                        {
                            kp[jj] = (float*)kRow;
                            vp[jj] = (float*)(kRow + half);
                        }
                        else
                        {
                            kp[jj] = kt + jj * d;
                            vp[jj] = vt + jj * d;
                            Simd.Widen<TE>(kRow, kp[jj], d);
                            Simd.Widen<TE>(kRow + half, vp[jj], d);
                        }
                    }
                    for (int jj = nk; jj < KeyTile; jj++) kp[jj] = kp[0];
                    for (int h = 0; h < group; h++)
                    {
                        float* qh = qRow + h * d;
                        var q0 = Vector512.Load(qh); var q1 = Vector512.Load(qh + 16);
                        var q2 = Vector512.Load(qh + 32); var q3 = Vector512.Load(qh + 48);
                        for (int jj = 0; jj < KeyTile; jj += 4)
                        {
                            var e0 = Score(q0, q1, q2, q3, kp[jj]);
                            var e1 = Score(q0, q1, q2, q3, kp[jj + 1]);
                            var e2 = Score(q0, q1, q2, q3, kp[jj + 2]);
                            var e3 = Score(q0, q1, q2, q3, kp[jj + 3]);
                            (Simd.Sum4(e0, e1, e2, e3) * scale).Store(p + jj);
                        }
                        var sc = Vector512.Load(p);
                        if (nk < KeyTile)
                            sc = Vector512.ConditionalSelect(Vector512.LessThan(Vector512<int>.Indices, Vector512.Create(nk)).AsSingle(),
                                sc, Vector512.Create(float.NegativeInfinity));
                        float m = max[h], tileMax = HMax(Vector512.Max(sc, Vector512.Create(m)));
                        float* ah = acc + h * d;
                        if (tileMax > m)
                        {
                            float c = MathF.Exp(m - tileMax);
                            sum[h] *= c;
                            Scale(ah, c, ah, d);
                            m = tileMax;
                            max[h] = m;
                        }
                        var pe = Simd.Exp(sc - Vector512.Create(m));
                        pe.Store(p);
                        sum[h] += Vector512.Sum(pe);
                        var a0 = Vector512.Load(ah); var a1 = Vector512.Load(ah + 16);
                        var a2 = Vector512.Load(ah + 32); var a3 = Vector512.Load(ah + 48);
                        // two sets of accumulators, so that consecutive keys do not wait on each other's FMAs
                        var b0 = Vector512<float>.Zero; var b1 = b0; var b2 = b0; var b3 = b0;
                        int jv = 0;
                        for (; jv + 2 <= nk; jv += 2)
                        {
                            float* v = vp[jv], w = vp[jv + 1];
                            var pj = Vector512.Create(p[jv]);
                            var pw = Vector512.Create(p[jv + 1]);
                            a0 = Vector512.FusedMultiplyAdd(Vector512.Load(v), pj, a0);
                            a1 = Vector512.FusedMultiplyAdd(Vector512.Load(v + 16), pj, a1);
                            a2 = Vector512.FusedMultiplyAdd(Vector512.Load(v + 32), pj, a2);
                            a3 = Vector512.FusedMultiplyAdd(Vector512.Load(v + 48), pj, a3);
                            b0 = Vector512.FusedMultiplyAdd(Vector512.Load(w), pw, b0);
                            b1 = Vector512.FusedMultiplyAdd(Vector512.Load(w + 16), pw, b1);
                            b2 = Vector512.FusedMultiplyAdd(Vector512.Load(w + 32), pw, b2);
                            b3 = Vector512.FusedMultiplyAdd(Vector512.Load(w + 48), pw, b3);
                        }
                        if (jv < nk)
                        {
                            float* v = vp[jv];
                            var pj = Vector512.Create(p[jv]);
                            a0 = Vector512.FusedMultiplyAdd(Vector512.Load(v), pj, a0);
                            a1 = Vector512.FusedMultiplyAdd(Vector512.Load(v + 16), pj, a1);
                            a2 = Vector512.FusedMultiplyAdd(Vector512.Load(v + 32), pj, a2);
                            a3 = Vector512.FusedMultiplyAdd(Vector512.Load(v + 48), pj, a3);
                        }
                        (a0 + b0).Store(ah); (a1 + b1).Store(ah + 16); (a2 + b2).Store(ah + 32); (a3 + b3).Store(ah + 48);
                    }
                }
                for (int h = 0; h < group; h++) Scale(acc + h * d, 1f / sum[h], oRow + h * d, d);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<float> Score(Vector512<float> q0, Vector512<float> q1, Vector512<float> q2, Vector512<float> q3, float* k)
        {
            var e = Vector512.FusedMultiplyAdd(q1, Vector512.Load(k + 16), q0 * Vector512.Load(k));
            e = Vector512.FusedMultiplyAdd(q2, Vector512.Load(k + 32), e);
            return Vector512.FusedMultiplyAdd(q3, Vector512.Load(k + 48), e);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static float HMax(Vector512<float> v)
        {
            var a = Vector256.Max(v.GetLower(), v.GetUpper());
            var b = Vector128.Max(a.GetLower(), a.GetUpper());
            b = Vector128.Max(b, Vector128.Shuffle(b, Vector128.Create(2, 3, 0, 1)));
            b = Vector128.Max(b, Vector128.Shuffle(b, Vector128.Create(1, 0, 3, 2)));
            return b.ToScalar();
        }
    }

    // online softmax step over nk scores: rescale the running sum and accumulator to the new maximum, then add
    // p_j = exp(s_j - max) and p_j * v_j. s is overwritten with p.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Fold(float* s, int nk, ref float max, ref float sum, float* acc, float* v, int d)
    {
        float m = max;
        for (int j = 0; j < nk; j++) m = MathF.Max(m, s[j]);
        if (m > max)
        {
            float c = MathF.Exp(max - m);
            sum *= c;
            Scale(acc, c, acc, d);
            max = m;
        }
        if (Vector512.IsHardwareAccelerated && nk == KeyTile)
        {
            var e = Simd.Exp(Vector512.Load(s) - Vector512.Create(m));
            e.Store(s);
            sum += Vector512.Sum(e);
        }
        else
        {
            for (int j = 0; j < nk; j++) { s[j] = MathF.Exp(s[j] - m); sum += s[j]; }
        }
        for (int j = 0; j < nk; j++) Axpy(s[j], v + j * d, acc, d);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Dot(float* a, float* b, int d)
    {
        int i = 0;
        float s = 0;
        if (Vector512.IsHardwareAccelerated && d >= 16)
        {
            var acc = Vector512<float>.Zero;
            for (; i <= d - 16; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), acc);
            if (i <= d - 8) { s = Vector256.Sum(Vector256.Load(a + i) * Vector256.Load(b + i)); i += 8; }
            s += Vector512.Sum(acc);
        }
        else if (Vector256.IsHardwareAccelerated && d >= 8)
        {
            var acc = Vector256<float>.Zero;
            for (; i <= d - 8; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), acc);
            s = Vector256.Sum(acc);
        }
        for (; i < d; i++) s += a[i] * b[i];
        return s;
    }

    // y += a * x
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Axpy(float a, float* x, float* y, int d)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (var va = Vector512.Create(a); i <= d - 16; i += 16)
                Vector512.FusedMultiplyAdd(Vector512.Load(x + i), va, Vector512.Load(y + i)).Store(y + i);
        if (Vector256.IsHardwareAccelerated)
            for (var va = Vector256.Create(a); i <= d - 8; i += 8)
                Vector256.FusedMultiplyAdd(Vector256.Load(x + i), va, Vector256.Load(y + i)).Store(y + i);
        for (; i < d; i++) y[i] += a * x[i];
    }

    // dst = src * c
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scale(float* src, float c, float* dst, int d)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (var vc = Vector512.Create(c); i <= d - 16; i += 16) (Vector512.Load(src + i) * vc).Store(dst + i);
        if (Vector256.IsHardwareAccelerated)
            for (var vc = Vector256.Create(c); i <= d - 8; i += 8) (Vector256.Load(src + i) * vc).Store(dst + i);
        for (; i < d; i++) dst[i] = src[i] * c;
    }
}
