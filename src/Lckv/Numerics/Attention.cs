using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lckv.Numerics;

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

/// <summary>
/// Grouped-query attention over KV views (kv-sharing.md §3). KV head g serves query heads [g*H/KV, (g+1)*H/KV).
/// Softmax is online (running max), in f32. A query row with no visible entry outputs exactly zero. The mask is the
/// rule, evaluated against each entry's position; no mask matrix exists. On request the kernel writes each (row, head)'s
/// log-sum-exp of the scaled scores (-inf when nothing is visible) and adds every entry's probability into the view's
/// score accumulator.
/// </summary>
public static unsafe class Attention
{
    private interface IHeadCount { static abstract int Value { get; } }
    private struct H1 : IHeadCount { public static int Value => 1; }
    private struct H2 : IHeadCount { public static int Value => 2; }
    private struct H3 : IHeadCount { public static int Value => 3; }
    private struct H4 : IHeadCount { public static int Value => 4; }

    private const int KeyTile = 16;  // keys scored and folded into the running softmax together
    private const int RowChunk = 16; // query rows per work item

    /// <summary>Attention over the blocks of one pool (q and output are [rows, heads * D]).</summary>
    public static void Compute(ReadOnlySpan<float> q, int heads, nint poolBase, KvLayout layout,
        ReadOnlySpan<AttentionSequence> sequences, MaskRule rule, float scale, Span<float> output, Span<float> lse = default,
        ReadOnlySpan<float> lessNum = default, ReadOnlySpan<float> lessDen = default)
        => Compute(q, heads, KvStorage.Paged(poolBase, layout), sequences, rule, scale, output, lse, lessNum, lessDen);

    /// <summary>
    /// output[row] = softmax(scale * q[row]·kᵀ under the rule) · v for each sequence's rows against its view. lse, when
    /// not empty ([rows, heads]), receives each row and head's log-sum-exp; views with a score accumulator receive
    /// the probabilities (of this softmax alone).
    /// LESS (kv-compression.md §3): where lessDen ([rows, heads]) is positive, the row and head's output is instead
    /// (sum_s exp(a_s) v_s + num) / (sum_s exp(a_s) + den), with num = lessNum[row, head] ([rows, heads * D], phi(q) Hs)
    /// and den = max(phi(q).z, 1e-6), computed with both terms scaled by exp(-M), M = max(max_s a_s, ln den), so that
    /// nothing overflows: num / den is a convex combination of values.
    /// </summary>
    public static void Compute(ReadOnlySpan<float> q, int heads, in KvStorage storage,
        ReadOnlySpan<AttentionSequence> sequences, MaskRule rule, float scale, Span<float> output, Span<float> lse = default,
        ReadOnlySpan<float> lessNum = default, ReadOnlySpan<float> lessDen = default)
    {
        int group = Check(q, heads, storage.Layout, sequences, rule, output, lse, lessNum, lessDen), d = storage.Layout.HeadDim, kvHeads = storage.Layout.KvHeads;
        if ((long)group * d > 16384 || d > 1024)
        {
            ComputeReference(q, heads, storage, sequences, rule, scale, output, lse, lessNum, lessDen);
            return;
        }
        int items = 0;
        foreach (var s in sequences)
            if (s.QueryCount > 0) items += kvHeads * Chunks(s);
        if (items == 0) return;
        fixed (float* pq = q, po = output, pl = lse, pn = lessNum, pd = lessDen)
#pragma warning disable CS8500 // the sequences are pinned for the call; the tables are read through them
        fixed (AttentionSequence* ps = sequences)
        {
            var job = new Job
            {
                Q = pq, O = po, Lse = lse.IsEmpty ? null : pl, Sequences = ps, SequenceCount = sequences.Length, Heads = heads,
                Group = group, Storage = storage, Rule = rule, ScoreScale = scale,
                LessNum = lessDen.IsEmpty ? null : pn, LessDen = lessDen.IsEmpty ? null : pd,
            };
            // one item is a (sequence, KV head, chunk of query rows); small calls run on the caller
            long work = 0;
            foreach (var s in sequences) work += (long)s.QueryCount * Math.Max(1, s.View.Count) * heads * d;
            int grain = work < 1 << 16 ? items : 1;
            WorkerPool.Shared.Run(items, job, grain);
        }
#pragma warning restore CS8500
    }

    // a view with a score accumulator is one item per KV head: its rows add into the same entries
    private static int Chunks(in AttentionSequence s) => s.View.Scores is not null ? 1 : (s.QueryCount + RowChunk - 1) / RowChunk;

    // the query heads per KV head, after checking that every sequence's rows, lse rows and entries are in range
    private static int Check(ReadOnlySpan<float> q, int heads, KvLayout layout, ReadOnlySpan<AttentionSequence> sequences,
        MaskRule rule, ReadOnlySpan<float> output, ReadOnlySpan<float> lse, ReadOnlySpan<float> lessNum, ReadOnlySpan<float> lessDen)
    {
        if (layout.KvHeads <= 0 || heads % layout.KvHeads != 0) throw new ArgumentException($"{heads} query heads do not divide into {layout.KvHeads} KV heads");
        foreach (var s in sequences)
        {
            if (s.QueryCount <= 0) continue;
            long rows = (long)s.QueryRow + s.QueryCount;
            if (rows * heads * layout.HeadDim > q.Length || rows * heads * layout.HeadDim > output.Length)
                throw new ArgumentException("a sequence's rows lie outside q or output");
            if (lse.Length > 0 && rows * heads > lse.Length) throw new ArgumentException("a sequence's rows lie outside lse");
            if (lessDen.Length > 0 && (rows * heads > lessDen.Length || rows * heads * layout.HeadDim > lessNum.Length))
                throw new ArgumentException("a sequence's rows lie outside the LESS terms");
            s.View.Check(layout, rule, s.FirstPosition, s.QueryCount);
        }
        return heads / layout.KvHeads;
    }

    /// <summary>The scalar definition: one (row, head, entry) at a time, each row read value by value.</summary>
    public static void ComputeReference(ReadOnlySpan<float> q, int heads, nint poolBase, KvLayout layout,
        ReadOnlySpan<AttentionSequence> sequences, MaskRule rule, float scale, Span<float> output, Span<float> lse = default,
        ReadOnlySpan<float> lessNum = default, ReadOnlySpan<float> lessDen = default)
        => ComputeReference(q, heads, KvStorage.Paged(poolBase, layout), sequences, rule, scale, output, lse, lessNum, lessDen);

    public static void ComputeReference(ReadOnlySpan<float> q, int heads, in KvStorage storage,
        ReadOnlySpan<AttentionSequence> sequences, MaskRule rule, float scale, Span<float> output, Span<float> lse = default,
        ReadOnlySpan<float> lessNum = default, ReadOnlySpan<float> lessDen = default)
    {
        var layout = storage.Layout;
        int group = Check(q, heads, layout, sequences, rule, output, lse, lessNum, lessDen), d = layout.HeadDim;
        Span<float> k = stackalloc float[d];
        Span<float> v = stackalloc float[d];
        var acc = new float[d];
        foreach (var s in sequences)
        {
            var view = s.View;
            for (int r = 0; r < s.QueryCount; r++)
            {
                int row = s.QueryRow + r, t = s.FirstPosition + r;
                for (int h = 0; h < heads; h++)
                {
                    int g = h / group;
                    var (start, end) = view.Visible(rule, t, g);
                    var qh = q.Slice((row * heads + h) * d, d);
                    var oh = output.Slice((row * heads + h) * d, d);
                    float max = float.NegativeInfinity, sum = 0;
                    Array.Clear(acc);
                    for (int e = start; e < end; e++)
                    {
                        nint kr = (nint)view.KeyRow(storage, e, g);
                        KvRows.LoadReference(kr, layout.DType, d, k);
                        KvRows.LoadReference(kr + (nint)storage.ValueOffset, layout.DType, d, v);
                        if (view.KeyRope is { } rope) fixed (float* pk = k) Rope.ApplyHead(pk, e, rope);
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
                    float den = lessDen.IsEmpty ? 0 : lessDen[row * heads + h];
                    if (den > 0)
                    {
                        // (sum_s e^{a_s} v_s + num) / (sum_s e^{a_s} + den), both scaled by e^{-M}
                        var num = lessNum.Slice((row * heads + h) * d, d);
                        float big = MathF.Max(max, MathF.Log(den)), a = end > start ? MathF.Exp(max - big) : 0, b = MathF.Exp(-big);
                        float norm = 1f / (sum * a + den * b);
                        for (int i = 0; i < d; i++) oh[i] = (acc[i] * a + num[i] * b) * norm;
                    }
                    else
                    {
                        float inv = end > start ? 1f / sum : 0f;
                        for (int i = 0; i < d; i++) oh[i] = acc[i] * inv;
                    }
                    float l = end > start ? max + MathF.Log(sum) : float.NegativeInfinity;
                    if (!lse.IsEmpty) lse[row * heads + h] = l;
                    if (view.Scores is null) continue;
                    for (int e = start; e < end; e++)
                    {
                        KvRows.LoadReference((nint)view.KeyRow(storage, e, g), layout.DType, d, k);
                        if (view.KeyRope is { } rope) fixed (float* pk = k) Rope.ApplyHead(pk, e, rope);
                        float dot = 0;
                        for (int i = 0; i < d; i++) dot += qh[i] * k[i];
                        view.Scores[g * view.Stride + e] += MathF.Exp(dot * scale - l);
                    }
                }
            }
        }
    }

    private struct Job : IRangeBody
    {
        public float* Q, O, Lse, LessNum, LessDen;
#pragma warning disable CS8500
        public AttentionSequence* Sequences;
#pragma warning restore CS8500
        public int SequenceCount, Heads, Group;
        public KvStorage Storage;
        public MaskRule Rule;
        public float ScoreScale;

        public readonly void Invoke(int start, int end)
        {
            int kvHeads = Storage.Layout.KvHeads;
            int item = 0;
            for (int si = 0; si < SequenceCount && item < end; si++)
            {
                ref readonly var s = ref Sequences[si];
                if (s.QueryCount <= 0) continue;
                int chunks = Chunks(in s), rowsPerChunk = s.View.Scores is not null ? s.QueryCount : RowChunk;
                int count = kvHeads * chunks;
                if (item + count <= start) { item += count; continue; }
                for (int local = Math.Max(0, start - item); local < count && item + local < end; local++)
                {
                    int g = local / chunks, c = local % chunks;
                    int r0 = c * rowsPerChunk, r1 = Math.Min(s.QueryCount, r0 + rowsPerChunk);
                    if (Sse.IsSupported && item + local + 1 < end)
                    {
                        // the next item's first tile of keys and values, so that its first scores do not wait on memory
                        if (local + 1 < count) PrefetchFirstTile(in s, (local + 1) / chunks, (local + 1) % chunks * rowsPerChunk);
                        else
                        {
                            int sn = si + 1;
                            while (sn < SequenceCount && Sequences[sn].QueryCount <= 0) sn++;
                            if (sn < SequenceCount) PrefetchFirstTile(in Sequences[sn], 0, 0);
                        }
                    }
                    bool fast = Storage.Layout.HeadDim == 64 && (Vector512.IsHardwareAccelerated || (Vector256.IsHardwareAccelerated && Fma.IsSupported));
                    switch (Storage.Layout.DType)
                    {
                        case DType.F32 when fast: Segments64<FloatRow<F32Element>>(in s, g, r0, r1); break;
                        case DType.BF16 when fast: Segments64<FloatRow<BF16Element>>(in s, g, r0, r1); break;
                        case DType.F16 when fast: Segments64<FloatRow<F16Element>>(in s, g, r0, r1); break;
                        case DType.KvInt8 when fast: Segments64<Int8Row>(in s, g, r0, r1); break;
                        case DType.KvQ4 when fast: Segments64<Q4Row>(in s, g, r0, r1); break;
                        case DType.F32: Rows<FloatRow<F32Element>>(in s, g, r0, r1); break;
                        case DType.BF16: Rows<FloatRow<BF16Element>>(in s, g, r0, r1); break;
                        case DType.F16: Rows<FloatRow<F16Element>>(in s, g, r0, r1); break;
                        case DType.KvInt8: Rows<Int8Row>(in s, g, r0, r1); break;
                        case DType.KvQ4: Rows<Q4Row>(in s, g, r0, r1); break;
                        default: throw new ArgumentException($"KV dtype {Storage.Layout.DType} is not supported");
                    }
                }
                item += count;
            }
        }

        // the keys and values of KV head g that query row r0 of s sees first (up to a tile), prefetched into L1
        private readonly void PrefetchFirstTile(in AttentionSequence s, int g, int r0)
        {
            var (start, end) = s.View.Visible(Rule, s.FirstPosition + r0, g);
            int n = Math.Min(end - start, KeyTile);
            if (n <= 0) return;
            byte** rows = stackalloc byte*[KeyTile];
            s.View.KeyRows(in Storage, start, n, g, rows);
            long rowBytes = Storage.HeadBytes, vOff = Storage.ValueOffset;
            for (int j = 0; j < n; j++)
                for (long b = 0; b < rowBytes; b += 64) { Sse.Prefetch0(rows[j] + b); Sse.Prefetch0(rows[j] + vOff + b); }
        }

        // the log-sum-exp of each head of row `row` (group heads from g * group), and the probabilities into the view's
        // accumulator: a second pass over the visible keys, scores recomputed
        private readonly void Finish<TR>(in AttentionSequence s, int g, int row, float* qRow, int start, int end, float* max,
            float* sum, float* kt, bool scoresAdded = false) where TR : struct, IKvRow
        {
            int group = Group, d = Storage.Layout.HeadDim;
            float* lse = stackalloc float[group];
            for (int h = 0; h < group; h++)
            {
                lse[h] = end > start ? max[h] + MathF.Log(sum[h]) : float.NegativeInfinity;
                if (Lse != null) Lse[(long)row * Heads + g * group + h] = lse[h];
            }
            var scores = s.View.Scores;
            if (scores is null || end <= start || scoresAdded) return;
            byte** rows = stackalloc byte*[KeyTile];
            fixed (float* acc = &scores[g * s.View.Stride])
            {
                for (int j0 = start; j0 < end; j0 += KeyTile)
                {
                    int nk = Math.Min(KeyTile, end - j0);
                    s.View.KeyRows(in Storage, j0, nk, g, rows);
                    for (int jj = 0; jj < nk; jj++)
                    {
                        TR.Widen(rows[jj], kt, d);
                        if (s.View.KeyRope is { } rope) Rope.ApplyHead(kt, j0 + jj, rope);
                        float p = 0;
                        for (int h = 0; h < group; h++) p += MathF.Exp(Dot(qRow + h * d, kt, d) * ScoreScale - lse[h]);
                        acc[j0 + jj] += p;
                    }
                }
            }
        }

        // the outputs of the group's heads of one row from their accumulators: acc / sum (zero for a row that sees no
        // entry: sum 0, acc 0), or with a LESS term (den > 0) (acc e^{m-M} + num e^{-M}) / (sum e^{m-M} + den e^{-M})
        // with M = max(m, ln den)
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private readonly void Normalize(int row, int g, float* acc, float* max, float* sum, float* oRow)
        {
            int d = Storage.Layout.HeadDim;
            for (int h = 0; h < Group; h++)
            {
                long at = (long)row * Heads + g * Group + h;
                float den = LessDen != null ? LessDen[at] : 0;
                if (den > 0) Combine(acc + h * d, max[h], sum[h], LessNum + at * d, den, oRow + h * d, d);
                else Scale(acc + h * d, sum[h] > 0 ? 1f / sum[h] : 0f, oRow + h * d, d);
            }
        }

        // a query row that sees no entry outputs zero (and its lse, -inf, when asked: scratch not null) and returns false;
        // otherwise its accumulators start empty
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private readonly bool StartRow<TR>(in AttentionSequence s, int g, int row, float* qRow, float* oRow, int start, int end,
            float* acc, float* max, float* sum, float* scratch) where TR : struct, IKvRow
        {
            new Span<float>(acc, Group * Storage.Layout.HeadDim).Clear();
            for (int h = 0; h < Group; h++) { max[h] = float.NegativeInfinity; sum[h] = 0; }
            if (end > start) return true;
            // nothing visible: zero, or num / den where a LESS state exists
            Normalize(row, g, acc, max, sum, oRow);
            if (scratch != null) Finish<TR>(in s, g, row, qRow, start, end, max, sum, scratch);
            return false;
        }

        // query rows [r0, r1) of sequence s, the query heads of KV head g
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private readonly void Rows<TR>(in AttentionSequence s, int g, int r0, int r1) where TR : struct, IKvRow
        {
            int d = Storage.Layout.HeadDim, group = Group;
            long vOff = Storage.ValueOffset;
            float* acc = stackalloc float[group * d];          // (group, d) running sum of p * v
            float* scores = stackalloc float[group * KeyTile]; // (group, KeyTile)
            float* kt = stackalloc float[KeyTile * d];         // (KeyTile, d) widened keys
            float* vt = stackalloc float[KeyTile * d];         // (KeyTile, d) widened values
            float* max = stackalloc float[group];
            float* sum = stackalloc float[group];
            byte** rows = stackalloc byte*[KeyTile];
            bool finish = Lse != null || s.View.Scores is not null;
            var rope = s.View.KeyRope;
            for (int r = r0; r < r1; r++)
            {
                int row = s.QueryRow + r, t = s.FirstPosition + r;
                var (start, end) = s.View.Visible(Rule, t, g);
                float* qRow = Q + ((long)row * Heads + g * group) * d;   // (group, d)
                float* oRow = O + ((long)row * Heads + g * group) * d;   // (group, d)
                if (!StartRow<TR>(in s, g, row, qRow, oRow, start, end, acc, max, sum, finish ? kt : null)) continue;
                for (int j0 = start; j0 < end; j0 += KeyTile)
                {
                    int nk = Math.Min(KeyTile, end - j0);
                    s.View.KeyRows(in Storage, j0, nk, g, rows);
                    for (int jj = 0; jj < nk; jj++)
                    {
                        TR.Widen(rows[jj], kt + jj * d, d);
                        TR.Widen(rows[jj] + vOff, vt + jj * d, d);
                        if (rope is not null) Rope.ApplyHead(kt + jj * d, j0 + jj, rope);
                    }
                    for (int h = 0; h < group; h++)
                    {
                        float* qh = qRow + h * d, sh = scores + h * KeyTile;
                        for (int jj = 0; jj < nk; jj++) sh[jj] = Dot(qh, kt + jj * d, d) * ScoreScale;
                        Fold(sh, nk, ref max[h], ref sum[h], acc + h * d, vt, d);
                    }
                }
                Normalize(row, g, acc, max, sum, oRow);
                if (finish) Finish<TR>(in s, g, row, qRow, start, end, max, sum, kt);
            }
        }

        /// <summary>Keys per segment for a group of query heads: the group's scores of a segment stay in L1.</summary>
        private static int SegmentKeys(int group, bool inPlace)
        {
            int seg = Math.Clamp(4096 / group, KeyTile, inPlace ? 128 : 64);
            return seg / KeyTile * KeyTile;
        }

        // Head_dim 64 on 512-bit hardware (or 256-bit with FMA), keys in segments: first every score of the segment
        // (each key row is loaded once for all query heads of the group), then one max, exp and sum per head, then the
        // p * v sums (each value row loaded once per chunk of up to 4 heads at 512 bits, 2 heads and half a row at 256,
        // the accumulators in registers). The running max and sum carry across segments, so the dependent chain
        // score -> max -> exp -> p * v runs once per segment instead of once per 16 keys and head.
        [MethodImpl(MethodImplOptions.AggressiveOptimization), SkipLocalsInit]
        private readonly void Segments64<TR>(in AttentionSequence s, int g, int r0, int r1) where TR : struct, IKvRow
        {
            const int d = 64;
            int group = Group;
            long half = Storage.ValueOffset;
            long rowBytes = TR.Bytes(d);
            bool inPlace = typeof(TR) == typeof(FloatRow<F32Element>);
            var rope = s.View.KeyRope;
            bool keysInPlace = inPlace && rope is null; // keys rotated when read are rotated in a widened copy
            int seg = SegmentKeys(group, inPlace);
            float* acc = stackalloc float[group * d];
            float* max = stackalloc float[group];
            float* sum = stackalloc float[group];
            float* scores = stackalloc float[group * seg];   // (group, seg): scores, then p
            byte** rows = stackalloc byte*[seg];             // the key rows of the segment (values at + half)
            float** kp = stackalloc float*[KeyTile];
            float** vrows = stackalloc float*[seg];
            float* kt = stackalloc float[keysInPlace ? 1 : KeyTile * d]; // widened keys of a tile
            float* vs = stackalloc float[inPlace ? 1 : seg * d];     // widened values of a segment
            float* kf = stackalloc float[keysInPlace && s.View.Scores is not null ? d : 1]; // scratch of Finish
            bool finish = Lse != null || s.View.Scores is not null;
            // with a score accumulator: each segment's p = exp(score - m) per head and that m, so that the row's
            // probabilities p * exp(m - max) / sum are added at its end without scoring the keys again
            bool collect = s.View.Scores is not null;
            int entries = collect ? (s.View.Count + KeyTile - 1) / KeyTile * KeyTile : 0, segments = collect ? entries / seg + 1 : 0;
            float[]? saved = collect ? ScoreScratch(group * entries) : null;
            float* segMax = stackalloc float[group * segments];
            var scale = Vector128.Create(ScoreScale);
            for (int r = r0; r < r1; r++)
            {
                int row = s.QueryRow + r, t = s.FirstPosition + r;
                var (start, end) = s.View.Visible(Rule, t, g);
                float* qRow = Q + ((long)row * Heads + g * group) * d;
                float* oRow = O + ((long)row * Heads + g * group) * d;
                if (!StartRow<TR>(in s, g, row, qRow, oRow, start, end, acc, max, sum, finish ? (keysInPlace ? kf : kt) : null)) continue;
                for (int j0 = start; j0 < end; j0 += seg)
                {
                    int si = (j0 - start) / seg;
                    int n = Math.Min(seg, end - j0);
                    s.View.KeyRows(in Storage, j0, n, g, rows);
                    // scores, a tile of 16 keys at a time (the next tile's keys to L1, this tile's values to L2)
                    for (int t0 = 0; t0 < n; t0 += KeyTile)
                    {
                        int nk = Math.Min(KeyTile, n - t0);
                        if (Sse.IsSupported)
                        {
                            for (int jj = t0 + KeyTile, last = Math.Min(n, t0 + 2 * KeyTile); jj < last; jj++)
                                for (long b = 0; b < rowBytes; b += 64) Sse.Prefetch0(rows[jj] + b);
                            for (int jj = t0; jj < t0 + nk; jj++)
                                for (long b = 0; b < rowBytes; b += 64) Sse.Prefetch1(rows[jj] + half + b);
                        }
                        for (int jj = 0; jj < nk; jj++)
                        {
                            if (keysInPlace) kp[jj] = (float*)rows[t0 + jj];
                            else
                            {
                                kp[jj] = kt + jj * d;
                                TR.Widen(rows[t0 + jj], kp[jj], d);
                                if (rope is not null) Rope.ApplyHead(kp[jj], j0 + t0 + jj, rope);
                            }
                        }
                        for (int jj = nk; jj < KeyTile; jj++) kp[jj] = kp[0]; // padding keys: their scores are never read
                        for (int jj = 0; jj < nk; jj += 4)
                        {
                            if (Vector512.IsHardwareAccelerated) Scores4(kp[jj], kp[jj + 1], kp[jj + 2], kp[jj + 3], qRow, group, scores + t0 + jj, seg, scale);
                            else Scores4x256(kp[jj], kp[jj + 1], kp[jj + 2], kp[jj + 3], qRow, group, scores + t0 + jj, seg, scale);
                        }
                    }
                    // per head: the segment's max joins the running max, p = exp(score - max), the sum and the
                    // accumulator rescaled once
                    for (int h = 0; h < group; h++)
                    {
                        float* sh = scores + h * seg;
                        if (Vector512.IsHardwareAccelerated) ExpSegment512(sh, n, ref max[h], ref sum[h], acc + h * d);
                        else ExpSegment256(sh, n, ref max[h], ref sum[h], acc + h * d);
                        if (collect)
                        {
                            new ReadOnlySpan<float>(sh, n).CopyTo(saved.AsSpan(h * entries + (j0 - start), n));
                            segMax[h * segments + si] = max[h];
                        }
                    }
                    // the sums of p * v: the values in place (f32) or widened once for all query heads
                    for (int jj = 0; jj < n; jj++)
                    {
                        if (inPlace) vrows[jj] = (float*)(rows[jj] + half);
                        else
                        {
                            vrows[jj] = vs + jj * d;
                            TR.Widen(rows[jj] + half, vrows[jj], d);
                        }
                    }
                    if (Vector512.IsHardwareAccelerated)
                        for (int h = 0; h < group; h += 4)
                        {
                            bool prefetch = h == 0 && inPlace; // the first chunk of heads brings the value rows to L1
                            switch (Math.Min(4, group - h))
                            {
                                case 1: SumValues<H1>(vrows, n, scores + h * seg, seg, acc + h * d, prefetch); break;
                                case 2: SumValues<H2>(vrows, n, scores + h * seg, seg, acc + h * d, prefetch); break;
                                case 3: SumValues<H3>(vrows, n, scores + h * seg, seg, acc + h * d, prefetch); break;
                                default: SumValues<H4>(vrows, n, scores + h * seg, seg, acc + h * d, prefetch); break;
                            }
                        }
                    else
                        for (int h = 0; h < group; h += 2)
                        {
                            bool prefetch = h == 0 && inPlace;
                            if (group - h == 1) SumValues256<H1>(vrows, n, scores + h * seg, seg, acc + h * d, prefetch);
                            else SumValues256<H2>(vrows, n, scores + h * seg, seg, acc + h * d, prefetch);
                        }
                }
                Normalize(row, g, acc, max, sum, oRow);
                if (collect) AddScores(in s, g, group, start, end, seg, saved!, entries, segMax, segments, max, sum);
                if (finish) Finish<TR>(in s, g, row, qRow, start, end, max, sum, keysInPlace ? kf : kt, scoresAdded: collect);
            }
        }

        // the view's accumulator of KV head g gains each of the group's heads' probabilities of entries [start, end): the
        // saved p = exp(score - m) of each segment, times exp(m - max) / sum
        private static void AddScores(in AttentionSequence s, int g, int group, int start, int end, int seg, float[] saved, int entries,
            float* segMax, int segments, float* max, float* sum)
        {
            var acc = s.View.Scores.AsSpan(g * s.View.Stride + start, end - start);
            for (int h = 0; h < group; h++)
                for (int j0 = 0, si = 0; j0 < end - start; j0 += seg, si++)
                {
                    int n = Math.Min(seg, end - start - j0);
                    float f = MathF.Exp(segMax[h * segments + si] - max[h]) / sum[h];
                    System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(saved.AsSpan(h * entries + j0, n), f, acc.Slice(j0, n), acc.Slice(j0, n));
                }
        }

        // per worker thread: the saved probabilities of one row's segments
        [ThreadStatic] private static float[]? _scoreScratch;

        private static float[] ScoreScratch(int length)
        {
            if (_scoreScratch is null || _scoreScratch.Length < length) _scoreScratch = new float[Math.Max(length, 1024)];
            return _scoreScratch;
        }

        // the scores of 4 keys (64 values each) for `group` query heads at q (64 apart), times scale, stored at
        // s + h * lds (4 values per head); each key is loaded once for all heads
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void Scores4(float* k0, float* k1, float* k2, float* k3, float* q, int group, float* s, int lds, Vector128<float> scale)
        {
            var k00 = Vector512.Load(k0); var k01 = Vector512.Load(k0 + 16); var k02 = Vector512.Load(k0 + 32); var k03 = Vector512.Load(k0 + 48);
            var k10 = Vector512.Load(k1); var k11 = Vector512.Load(k1 + 16); var k12 = Vector512.Load(k1 + 32); var k13 = Vector512.Load(k1 + 48);
            var k20 = Vector512.Load(k2); var k21 = Vector512.Load(k2 + 16); var k22 = Vector512.Load(k2 + 32); var k23 = Vector512.Load(k2 + 48);
            var k30 = Vector512.Load(k3); var k31 = Vector512.Load(k3 + 16); var k32 = Vector512.Load(k3 + 32); var k33 = Vector512.Load(k3 + 48);
            for (int h = 0; h < group; h++)
            {
                float* qh = q + h * 64;
                var q0 = Vector512.Load(qh); var q1 = Vector512.Load(qh + 16);
                var q2 = Vector512.Load(qh + 32); var q3 = Vector512.Load(qh + 48);
                var e0 = Vector512.FusedMultiplyAdd(q3, k03, Vector512.FusedMultiplyAdd(q2, k02, Vector512.FusedMultiplyAdd(q1, k01, q0 * k00)));
                var e1 = Vector512.FusedMultiplyAdd(q3, k13, Vector512.FusedMultiplyAdd(q2, k12, Vector512.FusedMultiplyAdd(q1, k11, q0 * k10)));
                var e2 = Vector512.FusedMultiplyAdd(q3, k23, Vector512.FusedMultiplyAdd(q2, k22, Vector512.FusedMultiplyAdd(q1, k21, q0 * k20)));
                var e3 = Vector512.FusedMultiplyAdd(q3, k33, Vector512.FusedMultiplyAdd(q2, k32, Vector512.FusedMultiplyAdd(q1, k31, q0 * k30)));
                (Simd.Sum4(e0, e1, e2, e3) * scale).Store(s + h * lds);
            }
        }

        // acc[h] (HC heads, 64 values each) += sum over keys j < n of p[h * ldp + j] * v[j]; two sets of accumulators
        // for one or two heads, so that consecutive keys do not wait on each other's FMAs. prefetch: the value rows 8
        // keys ahead go to L1.
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void SumValues<HC>(float** v, int n, float* p, int ldp, float* acc, bool prefetch) where HC : struct, IHeadCount
        {
            int hc = HC.Value;
            var a00 = Vector512.Load(acc); var a01 = Vector512.Load(acc + 16); var a02 = Vector512.Load(acc + 32); var a03 = Vector512.Load(acc + 48);
            Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default;
            Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default;
            Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default;
            if (hc > 1) { a10 = Vector512.Load(acc + 64); a11 = Vector512.Load(acc + 80); a12 = Vector512.Load(acc + 96); a13 = Vector512.Load(acc + 112); }
            if (hc > 2) { a20 = Vector512.Load(acc + 128); a21 = Vector512.Load(acc + 144); a22 = Vector512.Load(acc + 160); a23 = Vector512.Load(acc + 176); }
            if (hc > 3) { a30 = Vector512.Load(acc + 192); a31 = Vector512.Load(acc + 208); a32 = Vector512.Load(acc + 224); a33 = Vector512.Load(acc + 240); }
            var b00 = Vector512<float>.Zero; var b01 = b00; var b02 = b00; var b03 = b00;
            var b10 = b00; var b11 = b00; var b12 = b00; var b13 = b00;
            int j = 0;
            if (hc <= 2)
            {
                for (; j + 2 <= n; j += 2)
                {
                    float* x = v[j], y = v[j + 1];
                    if (prefetch && Sse.IsSupported && j + 9 < n)
                    {
                        float* px = v[j + 8], py = v[j + 9];
                        Sse.Prefetch0(px); Sse.Prefetch0(px + 16); Sse.Prefetch0(px + 32); Sse.Prefetch0(px + 48);
                        Sse.Prefetch0(py); Sse.Prefetch0(py + 16); Sse.Prefetch0(py + 32); Sse.Prefetch0(py + 48);
                    }
                    var x0 = Vector512.Load(x); var x1 = Vector512.Load(x + 16); var x2 = Vector512.Load(x + 32); var x3 = Vector512.Load(x + 48);
                    var y0 = Vector512.Load(y); var y1 = Vector512.Load(y + 16); var y2 = Vector512.Load(y + 32); var y3 = Vector512.Load(y + 48);
                    var px0 = Vector512.Create(p[j]); var py0 = Vector512.Create(p[j + 1]);
                    a00 = Vector512.FusedMultiplyAdd(x0, px0, a00); a01 = Vector512.FusedMultiplyAdd(x1, px0, a01);
                    a02 = Vector512.FusedMultiplyAdd(x2, px0, a02); a03 = Vector512.FusedMultiplyAdd(x3, px0, a03);
                    b00 = Vector512.FusedMultiplyAdd(y0, py0, b00); b01 = Vector512.FusedMultiplyAdd(y1, py0, b01);
                    b02 = Vector512.FusedMultiplyAdd(y2, py0, b02); b03 = Vector512.FusedMultiplyAdd(y3, py0, b03);
                    if (hc > 1)
                    {
                        var px1 = Vector512.Create(p[ldp + j]); var py1 = Vector512.Create(p[ldp + j + 1]);
                        a10 = Vector512.FusedMultiplyAdd(x0, px1, a10); a11 = Vector512.FusedMultiplyAdd(x1, px1, a11);
                        a12 = Vector512.FusedMultiplyAdd(x2, px1, a12); a13 = Vector512.FusedMultiplyAdd(x3, px1, a13);
                        b10 = Vector512.FusedMultiplyAdd(y0, py1, b10); b11 = Vector512.FusedMultiplyAdd(y1, py1, b11);
                        b12 = Vector512.FusedMultiplyAdd(y2, py1, b12); b13 = Vector512.FusedMultiplyAdd(y3, py1, b13);
                    }
                }
            }
            for (; j < n; j++)
            {
                float* x = v[j];
                if (prefetch && Sse.IsSupported && j + 8 < n)
                {
                    float* px = v[j + 8];
                    Sse.Prefetch0(px); Sse.Prefetch0(px + 16); Sse.Prefetch0(px + 32); Sse.Prefetch0(px + 48);
                }
                var x0 = Vector512.Load(x); var x1 = Vector512.Load(x + 16); var x2 = Vector512.Load(x + 32); var x3 = Vector512.Load(x + 48);
                var p0 = Vector512.Create(p[j]);
                a00 = Vector512.FusedMultiplyAdd(x0, p0, a00); a01 = Vector512.FusedMultiplyAdd(x1, p0, a01);
                a02 = Vector512.FusedMultiplyAdd(x2, p0, a02); a03 = Vector512.FusedMultiplyAdd(x3, p0, a03);
                if (hc > 1)
                {
                    var p1 = Vector512.Create(p[ldp + j]);
                    a10 = Vector512.FusedMultiplyAdd(x0, p1, a10); a11 = Vector512.FusedMultiplyAdd(x1, p1, a11);
                    a12 = Vector512.FusedMultiplyAdd(x2, p1, a12); a13 = Vector512.FusedMultiplyAdd(x3, p1, a13);
                }
                if (hc > 2)
                {
                    var p2 = Vector512.Create(p[2 * ldp + j]);
                    a20 = Vector512.FusedMultiplyAdd(x0, p2, a20); a21 = Vector512.FusedMultiplyAdd(x1, p2, a21);
                    a22 = Vector512.FusedMultiplyAdd(x2, p2, a22); a23 = Vector512.FusedMultiplyAdd(x3, p2, a23);
                }
                if (hc > 3)
                {
                    var p3 = Vector512.Create(p[3 * ldp + j]);
                    a30 = Vector512.FusedMultiplyAdd(x0, p3, a30); a31 = Vector512.FusedMultiplyAdd(x1, p3, a31);
                    a32 = Vector512.FusedMultiplyAdd(x2, p3, a32); a33 = Vector512.FusedMultiplyAdd(x3, p3, a33);
                }
            }
            (a00 + b00).Store(acc); (a01 + b01).Store(acc + 16); (a02 + b02).Store(acc + 32); (a03 + b03).Store(acc + 48);
            if (hc > 1) { (a10 + b10).Store(acc + 64); (a11 + b11).Store(acc + 80); (a12 + b12).Store(acc + 96); (a13 + b13).Store(acc + 112); }
            if (hc > 2) { a20.Store(acc + 128); a21.Store(acc + 144); a22.Store(acc + 160); a23.Store(acc + 176); }
            if (hc > 3) { a30.Store(acc + 192); a31.Store(acc + 208); a32.Store(acc + 224); a33.Store(acc + 240); }
        }

        // one head's scores of a segment (n of them at sh): the segment's max joins the running max (the sum and the
        // accumulator rescaled once), then p = exp(score - max) in place and their sum added; lanes past n store 0
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void ExpSegment512(float* sh, int n, ref float max, ref float sum, float* acc)
        {
            int full = n / 16 * 16;
            var live = Vector512.LessThan(Vector512<int>.Indices, Vector512.Create(n - full)).AsSingle();
            var mv = Vector512.Create(float.NegativeInfinity);
            for (int i = 0; i < full; i += 16) mv = Vector512.Max(mv, Vector512.Load(sh + i));
            if (full < n) mv = Vector512.Max(mv, Vector512.ConditionalSelect(live, Vector512.Load(sh + full), Vector512.Create(float.NegativeInfinity)));
            float m = Rescale(HMax(mv), ref max, ref sum, acc);
            var vm = Vector512.Create(m);
            var total = Vector512<float>.Zero;
            for (int i = 0; i < full; i += 16)
            {
                var pe = Simd.Exp(Vector512.Load(sh + i) - vm);
                pe.Store(sh + i);
                total += pe;
            }
            if (full < n)
            {
                var pe = Vector512.ConditionalSelect(live, Simd.Exp(Vector512.Load(sh + full) - vm), Vector512<float>.Zero);
                pe.Store(sh + full);
                total += pe;
            }
            sum += Vector512.Sum(total);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void ExpSegment256(float* sh, int n, ref float max, ref float sum, float* acc)
        {
            int full = n / 8 * 8;
            var live = Vector256.LessThan(Vector256<int>.Indices, Vector256.Create(n - full)).AsSingle();
            var mv = Vector256.Create(float.NegativeInfinity);
            for (int i = 0; i < full; i += 8) mv = Vector256.Max(mv, Vector256.Load(sh + i));
            if (full < n) mv = Vector256.Max(mv, Vector256.ConditionalSelect(live, Vector256.Load(sh + full), Vector256.Create(float.NegativeInfinity)));
            var b = Vector128.Max(mv.GetLower(), mv.GetUpper());
            b = Vector128.Max(b, Vector128.Shuffle(b, Vector128.Create(2, 3, 0, 1)));
            b = Vector128.Max(b, Vector128.Shuffle(b, Vector128.Create(1, 0, 3, 2)));
            float m = Rescale(b.ToScalar(), ref max, ref sum, acc);
            var vm = Vector256.Create(m);
            var total = Vector256<float>.Zero;
            for (int i = 0; i < full; i += 8)
            {
                var pe = Simd.ExpNonPositive(Vector256.Load(sh + i) - vm);
                pe.Store(sh + i);
                total += pe;
            }
            if (full < n)
            {
                var pe = Vector256.ConditionalSelect(live, Simd.ExpNonPositive(Vector256.Load(sh + full) - vm), Vector256<float>.Zero);
                pe.Store(sh + full);
                total += pe;
            }
            sum += Vector256.Sum(total);
        }

        // the running max becomes max(max, segmentMax); sum and the accumulator (64 values) are rescaled to it
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static float Rescale(float segmentMax, ref float max, ref float sum, float* acc)
        {
            float old = max, m = MathF.Max(old, segmentMax);
            if (m > old && old != float.NegativeInfinity)
            {
                float c = MathF.Exp(old - m);
                sum *= c;
                Scale(acc, c, acc, 64);
            }
            max = m;
            return m;
        }

        // Scores4 with 256-bit vectors: per head, two accumulators per key (even and odd 8-value chunks) so that eight
        // FMA chains are in flight; the keys are read from L1 once per head
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void Scores4x256(float* k0, float* k1, float* k2, float* k3, float* q, int group, float* s, int lds, Vector128<float> scale)
        {
            for (int h = 0; h < group; h++)
            {
                float* qh = q + h * 64;
                Vector256<float> e0 = default, e1 = default, e2 = default, e3 = default, f0 = default, f1 = default, f2 = default, f3 = default;
                for (int c = 0; c < 64; c += 16)
                {
                    var qa = Vector256.Load(qh + c);
                    e0 = Vector256.FusedMultiplyAdd(qa, Vector256.Load(k0 + c), e0); e1 = Vector256.FusedMultiplyAdd(qa, Vector256.Load(k1 + c), e1);
                    e2 = Vector256.FusedMultiplyAdd(qa, Vector256.Load(k2 + c), e2); e3 = Vector256.FusedMultiplyAdd(qa, Vector256.Load(k3 + c), e3);
                    var qb = Vector256.Load(qh + c + 8);
                    f0 = Vector256.FusedMultiplyAdd(qb, Vector256.Load(k0 + c + 8), f0); f1 = Vector256.FusedMultiplyAdd(qb, Vector256.Load(k1 + c + 8), f1);
                    f2 = Vector256.FusedMultiplyAdd(qb, Vector256.Load(k2 + c + 8), f2); f3 = Vector256.FusedMultiplyAdd(qb, Vector256.Load(k3 + c + 8), f3);
                }
                (Simd.Sum4(e0 + f0, e1 + f1, e2 + f2, e3 + f3) * scale).Store(s + h * lds);
            }
        }

        // SumValues with 256-bit vectors: the 64 values in two halves of 32 (4 registers a head); two heads share each
        // value load (8 FMA chains), one head alternates two sets of accumulators between consecutive keys
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void SumValues256<HC>(float** v, int n, float* p, int ldp, float* acc, bool prefetch) where HC : struct, IHeadCount
        {
            bool two = HC.Value == 2;
            for (int half = 0; half < 64; half += 32)
            {
                float* a = acc + half, b = two ? acc + 64 + half : null;
                var a0 = Vector256.Load(a); var a1 = Vector256.Load(a + 8); var a2 = Vector256.Load(a + 16); var a3 = Vector256.Load(a + 24);
                Vector256<float> b0 = default, b1 = default, b2 = default, b3 = default;
                if (two) { b0 = Vector256.Load(b); b1 = Vector256.Load(b + 8); b2 = Vector256.Load(b + 16); b3 = Vector256.Load(b + 24); }
                bool fetch = prefetch && half == 0 && Sse.IsSupported;
                int j = 0;
                if (two)
                    for (; j < n; j++)
                    {
                        float* x = v[j] + half;
                        if (fetch && j + 8 < n)
                        {
                            float* px = v[j + 8];
                            Sse.Prefetch0(px); Sse.Prefetch0(px + 16); Sse.Prefetch0(px + 32); Sse.Prefetch0(px + 48);
                        }
                        var x0 = Vector256.Load(x); var x1 = Vector256.Load(x + 8); var x2 = Vector256.Load(x + 16); var x3 = Vector256.Load(x + 24);
                        var p0 = Vector256.Create(p[j]); var p1 = Vector256.Create(p[ldp + j]);
                        a0 = Vector256.FusedMultiplyAdd(x0, p0, a0); a1 = Vector256.FusedMultiplyAdd(x1, p0, a1);
                        a2 = Vector256.FusedMultiplyAdd(x2, p0, a2); a3 = Vector256.FusedMultiplyAdd(x3, p0, a3);
                        b0 = Vector256.FusedMultiplyAdd(x0, p1, b0); b1 = Vector256.FusedMultiplyAdd(x1, p1, b1);
                        b2 = Vector256.FusedMultiplyAdd(x2, p1, b2); b3 = Vector256.FusedMultiplyAdd(x3, p1, b3);
                    }
                else
                {
                    for (; j + 2 <= n; j += 2)
                    {
                        float* x = v[j] + half, y = v[j + 1] + half;
                        if (fetch && j + 9 < n)
                        {
                            float* px = v[j + 8], py = v[j + 9];
                            Sse.Prefetch0(px); Sse.Prefetch0(px + 16); Sse.Prefetch0(px + 32); Sse.Prefetch0(px + 48);
                            Sse.Prefetch0(py); Sse.Prefetch0(py + 16); Sse.Prefetch0(py + 32); Sse.Prefetch0(py + 48);
                        }
                        var px0 = Vector256.Create(p[j]); var py0 = Vector256.Create(p[j + 1]);
                        a0 = Vector256.FusedMultiplyAdd(Vector256.Load(x), px0, a0); a1 = Vector256.FusedMultiplyAdd(Vector256.Load(x + 8), px0, a1);
                        a2 = Vector256.FusedMultiplyAdd(Vector256.Load(x + 16), px0, a2); a3 = Vector256.FusedMultiplyAdd(Vector256.Load(x + 24), px0, a3);
                        b0 = Vector256.FusedMultiplyAdd(Vector256.Load(y), py0, b0); b1 = Vector256.FusedMultiplyAdd(Vector256.Load(y + 8), py0, b1);
                        b2 = Vector256.FusedMultiplyAdd(Vector256.Load(y + 16), py0, b2); b3 = Vector256.FusedMultiplyAdd(Vector256.Load(y + 24), py0, b3);
                    }
                    if (j < n)
                    {
                        float* x = v[j] + half;
                        var px0 = Vector256.Create(p[j]);
                        a0 = Vector256.FusedMultiplyAdd(Vector256.Load(x), px0, a0); a1 = Vector256.FusedMultiplyAdd(Vector256.Load(x + 8), px0, a1);
                        a2 = Vector256.FusedMultiplyAdd(Vector256.Load(x + 16), px0, a2); a3 = Vector256.FusedMultiplyAdd(Vector256.Load(x + 24), px0, a3);
                    }
                    a0 += b0; a1 += b1; a2 += b2; a3 += b3;
                }
                a0.Store(a); a1.Store(a + 8); a2.Store(a + 16); a3.Store(a + 24);
                if (two) { b0.Store(b); b1.Store(b + 8); b2.Store(b + 16); b3.Store(b + 24); }
            }
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
        for (int j = 0; j < nk; j++) Simd.MultiplyAdd(v + j * d, s[j], acc, d);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot(float* a, float* b, int d) => Simd.Dot(a, b, d);

    // o = (acc e^{m-M} + num e^{-M}) / (sum e^{m-M} + den e^{-M}), M = max(m, ln den); o may alias acc
    private static void Combine(float* acc, float max, float sum, float* num, float den, float* o, int d)
    {
        float big = MathF.Max(max, MathF.Log(den));
        float a = sum > 0 ? MathF.Exp(max - big) : 0, b = MathF.Exp(-big), norm = 1f / (sum * a + den * b);
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (var va = Vector512.Create(a * norm); i <= d - 16; i += 16)
                Vector512.FusedMultiplyAdd(Vector512.Load(acc + i), va, Vector512.Load(num + i) * (b * norm)).Store(o + i);
        if (Vector256.IsHardwareAccelerated)
            for (var va = Vector256.Create(a * norm); i <= d - 8; i += 8)
                Vector256.FusedMultiplyAdd(Vector256.Load(acc + i), va, Vector256.Load(num + i) * (b * norm)).Store(o + i);
        for (; i < d; i++) o[i] = acc[i] * (a * norm) + num[i] * (b * norm);
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
