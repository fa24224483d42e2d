using System.Numerics.Tensors;
using Lckv.Cache;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Numerics.Backward;

namespace Lckv.Training;

/// <summary>
/// One window of the frozen full-cache model, recorded for LESS training: every layer's rotated queries
/// ([T, heads * head_dim]) and every store's rotated keys and values ([T, kv_heads * head_dim]).
/// </summary>
public sealed class LessRecording
{
    public required int Length { get; init; }
    public required float[][] Queries { get; init; }
    public required float[][] Keys { get; init; }
    public required float[][] Values { get; init; }
}

/// <summary>Runs the frozen model over windows with a full cache and records what LESS training needs.</summary>
public sealed class LessRecorder : IDisposable
{
    private readonly LlamaModel _model;
    private readonly KvBlockPool _pool;
    private readonly KvCache _cache;
    private readonly ForwardRunner _runner;
    private readonly float[] _logits;
    private float[][] _queries = [];

    /// <param name="maxLength">the longest window</param>
    public LessRecorder(LlamaModel model, int maxLength)
    {
        CheckLayout(model);
        _model = model;
        var layout = model.KvLayout(blockSize: 16, DType.F32);
        _pool = new KvBlockPool(layout, (KvCache.BlocksFor(maxLength, 16) * model.Map.KvLayerCount + 1) * layout.BlockBytes);
        _cache = model.CreateCache(_pool, maxLength);
        _runner = new ForwardRunner(model, _cache, maxLength, 1) { ObserveQueries = (layer, q) => _queries[layer] = q.ToArray() };
        _logits = new float[model.Vocab];
    }

    /// <summary>LESS training simulates each layer's store on the recorded queries, which needs every layer to read its
    /// own or a lower layer's store under the plain causal mask.</summary>
    public static void CheckLayout(LlamaModel model)
    {
        var map = model.Map;
        for (int layer = 0; layer < map.LayerCount; layer++)
        {
            var rule = map.Mask(layer, model.Config.ForceNoDiag, model.Config.SlidingWindow);
            if (map.Target(layer) > layer || rule != MaskRule.Causal)
                throw new LckvException($"LESS training needs every layer to read its own or a lower layer's KV under the causal mask; layer {layer} of '{map}' does not (layouts with upward-reading or sliding-window layers are not supported)");
        }
    }

    public LessRecording Record(ReadOnlySpan<int> window)
    {
        int t = window.Length, kvDim = _model.KvHeads * _model.HeadDim;
        _queries = new float[_model.Map.LayerCount][];
        int seq = _cache.CreateSequence();
        try
        {
            if (!_cache.TryReserve(seq, t)) throw new InvalidOperationException("the recorder's pool is too small");
            _runner.Run([new StepSequence(seq, t)], window, LogitsRows.Last, _logits);
            var keys = new float[_cache.KvLayers][];
            var values = new float[_cache.KvLayers][];
            for (int kv = 0; kv < keys.Length; kv++)
            {
                keys[kv] = new float[t * kvDim];
                values[kv] = new float[t * kvDim];
                _cache.Read(seq, kv, 0, keys[kv], values[kv]);
            }
            if (_queries.Any(q => q is null)) throw new InvalidOperationException("a layer's queries were not observed");
            return new LessRecording { Length = t, Queries = _queries, Keys = keys, Values = values };
        }
        finally
        {
            _cache.Remove(seq);
        }
    }

    public void Dispose() => _pool.Dispose();
}

/// <summary>
/// The eviction policy of one store simulated token by token over one recorded window (every token its own step, the
/// policy after each), with what the store's readers compute from it (kv-compression.md §3, training): per KV head the
/// step at whose end each position left the store, the key each evicted position gives psi, and per reader the plain
/// softmax attention over the kept entries (output and log-sum-exp), the full-cache attention output, and the queries
/// as phi sees them.
/// </summary>
public sealed class LessStoreWindow
{
    public required int Length { get; init; }
    /// <summary>[KV, T]: the step at whose end position s was evicted from KV head g; T when never.</summary>
    public required int[] EvictStep { get; init; }
    /// <summary>[T, KV * D]: each key as psi takes it (the step's rotation when it was evicted).</summary>
    public required float[] PsiKeys { get; init; }
    public required float[] Values { get; init; }
    /// <summary>Per reader: the queries as phi takes them, [T, H * D].</summary>
    public required float[][] PhiQueries { get; init; }
    /// <summary>Per reader: softmax attention over the kept entries, [T, H * D], and its log-sum-exp, [T, H].</summary>
    public required float[][] Plain { get; init; }
    public required float[][] PlainLse { get; init; }
    /// <summary>Per reader: the full-cache attention output, [T, H * D].</summary>
    public required float[][] Full { get; init; }
    /// <summary>The positions whose evicted set is not empty (the loss's rows), ascending.</summary>
    public required int[] LossRows { get; init; }

    /// <summary>Simulates store kvIndex's policy over a recording; readers are the layers that read the store.</summary>
    public static LessStoreWindow Simulate(LessRecording rec, int kvIndex, IReadOnlyList<int> readers, EvictionSettings policy,
        int heads, int kvHeads, int headDim, RopeTable rope)
    {
        int t = rec.Length, d = headDim, group = heads / kvHeads, kvDim = kvHeads * d, qDim = heads * d;
        float scale = 1f / MathF.Sqrt(d);
        var keys = rec.Keys[kvIndex];
        var values = rec.Values[kvIndex];
        var evictStep = new int[kvHeads * t];
        Array.Fill(evictStep, t);
        var psiKeys = (float[])keys.Clone();
        var plain = readers.Select(_ => new float[t * qDim]).ToArray();
        var plainLse = readers.Select(_ => new float[t * heads]).ToArray();
        var full = readers.Select(_ => new float[t * qDim]).ToArray();
        bool streaming = policy.Kind == EvictionKind.Streaming;
        // StreamingLLM rotates by rank: unrotated copies of the keys and of every reader's queries
        float[] rawKeys = keys, rankKeys = [];
        float[][] rawQueries = [.. readers.Select(r => rec.Queries[r])];
        var phiQueries = readers.Select(r => rec.Queries[r]).ToArray();
        var positions = Enumerable.Range(0, t).ToArray();
        if (streaming)
        {
            rawKeys = (float[])keys.Clone();
            RopeBackward.Apply(rawKeys, positions, kvHeads, rope);
            rawQueries = [.. rawQueries.Select(q => { var c = (float[])q.Clone(); RopeBackward.Apply(c, positions, heads, rope); return c; })];
            phiQueries = [.. rawQueries.Select(q => (float[])q.Clone())];
            rankKeys = new float[(policy.Budget + 1) * d];
        }
        var p = new float[t];
        var score = new float[t];
        var kept = new List<int>(policy.Budget + 2);
        var qr = new float[d];
        for (int g = 0; g < kvHeads; g++)
        {
            kept.Clear();
            Array.Clear(score);
            for (int step = 0; step < t; step++)
            {
                kept.Add(step);
                int n = kept.Count;
                if (streaming)
                    for (int e = 0; e < n; e++)
                    {
                        var dst = rankKeys.AsSpan(e * d, d);
                        rawKeys.AsSpan(kept[e] * kvDim + g * d, d).CopyTo(dst);
                        unsafe { fixed (float* pk = dst) Rope.ApplyHead(pk, e, rope); }
                    }
                for (int ri = 0; ri < readers.Count; ri++)
                    for (int h = g * group; h < (g + 1) * group; h++)
                    {
                        int row = step * heads + h;
                        var q = rec.Queries[readers[ri]].AsSpan(row * d, d);
                        if (streaming)
                        {
                            // the query by its rank: the entries before it
                            rawQueries[ri].AsSpan(row * d, d).CopyTo(qr);
                            unsafe { fixed (float* pq = qr) Rope.ApplyHead(pq, n - 1, rope); }
                            qr.CopyTo(phiQueries[ri].AsSpan(row * d, d));
                        }
                        // plain attention over the entries the step sees
                        for (int e = 0; e < n; e++)
                        {
                            var k = streaming ? rankKeys.AsSpan(e * d, d) : keys.AsSpan(kept[e] * kvDim + g * d, d);
                            p[e] = TensorPrimitives.Dot(streaming ? qr : q, k) * scale;
                        }
                        float lse = Softmax.LogSumExp(p.AsSpan(0, n));
                        Softmax.Apply(p.AsSpan(0, n));
                        plainLse[ri][row] = lse;
                        var o = plain[ri].AsSpan(row * d, d);
                        for (int e = 0; e < n; e++)
                        {
                            TensorPrimitives.MultiplyAdd(values.AsSpan(kept[e] * kvDim + g * d, d), p[e], o, o);
                            score[kept[e]] += p[e];
                        }
                        // the full cache: every position up to the step, rotated by text position
                        for (int s = 0; s <= step; s++) p[s] = TensorPrimitives.Dot(q, keys.AsSpan(s * kvDim + g * d, d)) * scale;
                        Softmax.Apply(p.AsSpan(0, step + 1));
                        var f = full[ri].AsSpan(row * d, d);
                        for (int s = 0; s <= step; s++) TensorPrimitives.MultiplyAdd(values.AsSpan(s * kvDim + g * d, d), p[s], f, f);
                    }
                if (n <= policy.Budget) continue;
                for (int e = 0; e < n; e++)
                    if (Evicts(policy, kept, e, step, score))
                    {
                        int s = kept[e];
                        evictStep[g * t + s] = step;
                        if (streaming) rankKeys.AsSpan(e * d, d).CopyTo(psiKeys.AsSpan(s * kvDim + g * d, d));
                    }
                kept.RemoveAll(s => evictStep[g * t + s] == step);
            }
        }
        // position r's evicted set is not empty once any eviction happened at a step before r
        int firstEviction = evictStep.Min();
        int[] lossRows = [.. Enumerable.Range(firstEviction + 1, Math.Max(0, t - firstEviction - 1))];
        return new LessStoreWindow
        {
            Length = t, EvictStep = evictStep, PsiKeys = psiKeys, Values = values, PhiQueries = phiQueries, Plain = plain,
            PlainLse = plainLse, Full = full, LossRows = lossRows,
        };
    }

    // whether entry e of the kept list (the step included) goes at the end of `step` (kv-compression.md §1-2); kept holds
    // more entries than the budget
    private static bool Evicts(EvictionSettings policy, List<int> kept, int e, int step, float[] score)
    {
        int position = kept[e];
        if (position > step - policy.Recent) return false;
        if (policy.Kind == EvictionKind.Streaming) return position >= policy.Sinks;
        // H2O: the Heavy best scores among the entries older than the recent window stay, a tie to the smaller position
        int better = 0;
        foreach (int other in kept)
        {
            if (other > step - policy.Recent || other == position) continue;
            if (score[other] > score[position] || (score[other] == score[position] && other < position)) better++;
        }
        return better >= policy.Heavy;
    }
}

/// <summary>
/// The training loss of LESS for one store (kv-compression.md §3) and its gradients: for each reader, the mean over the
/// loss rows' o_proj outputs of the squared difference between o_proj(LESS output) and o_proj(full-cache output); the
/// store's loss is the sum over its readers. The state at position t is the recurrent one, Hs_t = sum over the
/// positions evicted before t of psi(k)^T v (and z_t), computed in parallel as prefix sums over the eviction steps;
/// its gradient with respect to each psi(k_s) is the suffix sum of the states' gradients over the positions that see s
/// evicted.
/// </summary>
public sealed class LessLoss
{
    private readonly LessMaps _maps;
    private readonly int _owner;
    private readonly IReadOnlyList<int> _readers;
    private readonly LlamaModel _model;
    private readonly float[][] _oProj; // per reader: o_proj's weight widened to f32, [hidden, H * D]

    public LessLoss(LessMaps maps, LlamaModel model, int owner, IReadOnlyList<int> readers)
    {
        _maps = maps;
        _model = model;
        _owner = owner;
        _readers = readers;
        _oProj = [.. readers.Select(r =>
        {
            var w = model.Weights.Layers[r].O;
            var f = new float[(long)w.Rows * w.Cols];
            for (int i = 0; i < w.Rows; i++) w.ReadRow(i, f.AsSpan(i * w.Cols, w.Cols));
            return f;
        })];
    }

    /// <summary>The gradients of one store's maps: the owner's key map, then each reader's query map.</summary>
    public sealed class Gradients
    {
        public required LessLayerMaps Owner { get; init; }
        public required LessLayerMaps[] Readers { get; init; }

        public static Gradients ZerosLike(LessMaps maps, int owner, IReadOnlyList<int> readers)
        {
            static LessLayerMaps Zeros(LessLayerMaps m) => new()
            {
                Q1 = new float[m.Q1.Length], Q2 = new float[m.Q2.Length],
                K1 = m.K1 is null ? null : new float[m.K1.Length], K2 = m.K2 is null ? null : new float[m.K2.Length],
                W3 = m.W3 is null ? null : new float[m.W3.Length], S1 = m.S1 is null ? null : new float[m.S1.Length],
                S2 = m.S2 is null ? null : new float[m.S2.Length],
            };
            return new Gradients { Owner = Zeros(maps.Layers[owner]), Readers = [.. readers.Select(r => Zeros(maps.Layers[r]))] };
        }

        private IEnumerable<float[]> Arrays => new[] { Owner.K1, Owner.K2, Owner.W3, Owner.S1, Owner.S2 }.OfType<float[]>()
            .Concat(Readers.SelectMany(r => new[] { r.Q1, r.Q2 }));

        public void Clear()
        {
            foreach (var a in Arrays) Array.Clear(a);
        }

        /// <summary>this += other, tensor by tensor.</summary>
        public void Add(Gradients other)
        {
            foreach (var (a, b) in Arrays.Zip(other.Arrays)) TensorPrimitives.Add(a, b, a);
        }
    }

    /// <summary>
    /// The store's loss over a batch of windows (each reader's squared differences averaged over all the batch's loss
    /// rows and hidden elements, summed over readers), per reader in perReader; with grads, adds d loss / d maps.
    /// </summary>
    public double Evaluate(IReadOnlyList<LessStoreWindow> windows, Gradients? grads, double[]? perReader = null)
    {
        int hidden = _model.Config.HiddenSize;
        long rows = windows.Sum(w => (long)w.LossRows.Length);
        if (rows == 0) return 0;
        double norm = 1.0 / (rows * hidden), total = 0;
        // windows in parallel, each into gradients of its own, summed in window order (the same result on any thread count)
        int count = windows.Count;
        var sums = new double[count][];
        for (int i = 0; i < count; i++) sums[i] = new double[_readers.Count];
        var slots = new Gradients?[count];
        if (grads is not null)
        {
            while (_slots.Count < count) _slots.Add(Gradients.ZerosLike(_maps, _owner, _readers));
            for (int i = 0; i < count; i++) (slots[i] = _slots[i]).Clear();
        }
        WorkerPool.Shared.Run(count, new WindowJob { Loss = this, Windows = windows, Norm = norm, Grads = slots, Sums = sums }, 1);
        if (grads is not null)
            for (int i = 0; i < count; i++) grads.Add(slots[i]!);
        for (int r = 0; r < _readers.Count; r++)
        {
            double sum = 0;
            for (int i = 0; i < count; i++) sum += sums[i][r];
            sum *= norm;
            total += sum;
            if (perReader is not null) perReader[r] = sum;
        }
        return total;
    }

    private readonly List<Gradients> _slots = [];

    private struct WindowJob : IRangeBody
    {
        public LessLoss Loss;
        public IReadOnlyList<LessStoreWindow> Windows;
        public double Norm;
        public Gradients?[] Grads;
        public double[][] Sums;

        public readonly void Invoke(int start, int end)
        {
            for (int i = start; i < end; i++) Loss.Window(Windows[i], Norm, Grads[i], Sums[i]);
        }
    }

    private void Window(LessStoreWindow w, double norm, Gradients? grads, double[] sums)
    {
        var maps = _maps;
        int t = w.Length, heads = maps.Heads, kvHeads = maps.KvHeads, d = maps.HeadDim, r = maps.Rank, group = heads / kvHeads;
        int qDim = heads * d, kvDim = kvHeads * d, hidden = _model.Config.HiddenSize, rs = r * d;
        var lossRows = w.LossRows;
        int n = lossRows.Length;
        if (n == 0) return;
        // psi of every key evicted before the window's last position, per KV head
        var evicted = new int[kvHeads][];
        var psi = new FeatureMapPass[kvHeads];
        for (int g = 0; g < kvHeads; g++)
        {
            int gg = g;
            evicted[g] = [.. Enumerable.Range(0, t).Where(s => w.EvictStep[gg * t + s] < t - 1)];
            psi[g] = FeatureMapPass.Psi(maps, _owner, g, evicted[g], w.PsiKeys, kvDim);
        }
        // the state at each loss row: prefix sums over the eviction steps ([n, KV, R, D] and [n, KV, R])
        var hsAt = new float[n * kvHeads * rs];
        var zAt = new float[n * kvHeads * r];
        var hasState = new bool[n * kvHeads]; // a KV head's state is empty until its first eviction: plain attention
        {
            var any = new bool[kvHeads];
            var hs = new float[kvHeads * rs];
            var z = new float[kvHeads * r];
            var byStep = new List<(int G, int Index)>[t];
            for (int g = 0; g < kvHeads; g++)
                for (int i = 0; i < evicted[g].Length; i++) (byStep[w.EvictStep[g * t + evicted[g][i]]] ??= []).Add((g, i));
            for (int pos = 0, li = 0; pos < t && li < n; pos++)
            {
                if (pos > 0 && byStep[pos - 1] is { } added)
                    foreach (var (g, i) in added)
                    {
                        Fold(hs.AsSpan(g * rs, rs), z.AsSpan(g * r, r), psi[g].Output(i), w.Values.AsSpan(evicted[g][i] * kvDim + g * d, d));
                        any[g] = true;
                    }
                if (lossRows[li] != pos) continue;
                hs.CopyTo(hsAt, li * kvHeads * rs);
                z.CopyTo(zAt, li * kvHeads * r);
                any.CopyTo(hasState, li * kvHeads);
                li++;
            }
        }
        var dHsAt = grads is null ? [] : new float[hsAt.Length];
        var dZAt = grads is null ? [] : new float[zAt.Length];
        var diff = new float[n * qDim];
        var outRows = new float[n * qDim];
        var y = new float[n * hidden];
        var dOut = new float[n * qDim];
        var num = new float[d];
        var den = new float[n * heads];
        for (int ri = 0; ri < _readers.Count; ri++)
        {
            var phi = new FeatureMapPass[heads];
            for (int h = 0; h < heads; h++) phi[h] = FeatureMapPass.Phi(maps, _readers[ri], h, lossRows, w.PhiQueries[ri], qDim);
            for (int li = 0; li < n; li++)
            {
                int pos = lossRows[li];
                for (int h = 0; h < heads; h++)
                {
                    int g = h / group;
                    var o = outRows.AsSpan((li * heads + h) * d, d);
                    if (!hasState[li * kvHeads + g])
                    {
                        w.Plain[ri].AsSpan((pos * heads + h) * d, d).CopyTo(o);
                        continue;
                    }
                    var f = phi[h].Output(li);
                    var hs = hsAt.AsSpan((li * kvHeads + g) * rs, rs);
                    num.AsSpan().Clear();
                    for (int i = 0; i < r; i++) TensorPrimitives.MultiplyAdd(hs.Slice(i * d, d), f[i], num, num);
                    float dz = TensorPrimitives.Dot(f, zAt.AsSpan((li * kvHeads + g) * r, r));
                    den[li * heads + h] = dz;
                    Combine(w.Plain[ri].AsSpan((pos * heads + h) * d, d), w.PlainLse[ri][pos * heads + h], num, MathF.Max(dz, 1e-6f), o);
                }
                TensorPrimitives.Subtract(outRows.AsSpan(li * qDim, qDim), w.Full[ri].AsSpan(pos * qDim, qDim), diff.AsSpan(li * qDim, qDim));
            }
            MatMul.Multiply(diff, _model.Weights.Layers[_readers[ri]].O, y, n);
            double sq = 0;
            foreach (float v in y) sq += (double)v * v;
            sums[ri] += sq;
            if (grads is null) continue;
            // d loss / d out = 2 norm (o_proj^T o_proj) diff, through y
            TensorPrimitives.Multiply(y, (float)(2 * norm), y);
            MatMulBackward.InputGradient(y, _oProj[ri], dOut, n, hidden, qDim, accumulate: false);
            var gq = grads.Readers[ri];
            for (int h = 0; h < heads; h++)
            {
                int g = h / group;
                for (int li = 0; li < n; li++)
                {
                    if (!hasState[li * kvHeads + g]) continue;
                    int pos = lossRows[li];
                    var f = phi[h].Output(li);
                    var hs = hsAt.AsSpan((li * kvHeads + g) * rs, rs);
                    var zr = zAt.AsSpan((li * kvHeads + g) * r, r);
                    float dot = den[li * heads + h];
                    var go = dOut.AsSpan((li * heads + h) * d, d);
                    var o = outRows.AsSpan((li * heads + h) * d, d);
                    // out = (plain e^L + num) / (e^L + den): d out / d num = 1 / Q, d out / d den = -out / Q, Q = e^L + den,
                    // both as e^-M / (e^{L-M} + den e^-M)
                    float lse = w.PlainLse[ri][pos * heads + h], dn = MathF.Max(dot, 1e-6f);
                    float big = MathF.Max(lse, MathF.Log(dn)), b = MathF.Exp(-big), inv = b / (MathF.Exp(lse - big) + dn * b);
                    float dDen = dot > 1e-6f ? -TensorPrimitives.Dot(go, o) * inv : 0;
                    var dPhiRow = phi[h].OutputGradient(li);
                    for (int i = 0; i < r; i++) dPhiRow[i] = TensorPrimitives.Dot(hs.Slice(i * d, d), go) * inv + dDen * zr[i];
                    // the state's gradients at this row: dHs += phi (x) dnum, dz += phi dden
                    var dHs = dHsAt.AsSpan((li * kvHeads + g) * rs, rs);
                    var dZ = dZAt.AsSpan((li * kvHeads + g) * r, r);
                    for (int i = 0; i < r; i++)
                    {
                        TensorPrimitives.MultiplyAdd(go, f[i] * inv, dHs.Slice(i * d, d), dHs.Slice(i * d, d));
                        dZ[i] += f[i] * dDen;
                    }
                }
                phi[h].Backward(gq.Q1.AsSpan(h * d * maps.Hidden, d * maps.Hidden), gq.Q2.AsSpan(h * maps.Hidden * r, maps.Hidden * r));
            }
        }
        if (grads is null) return;
        // d loss / d psi(k_s) = (sum of dHs over the rows after s's eviction) v_s + (the same sum of dz): suffix sums
        var sHs = new float[rs];
        var sZ = new float[r];
        var go2 = grads.Owner;
        for (int g = 0; g < kvHeads; g++)
        {
            Array.Clear(sHs);
            Array.Clear(sZ);
            var order = Enumerable.Range(0, evicted[g].Length).OrderByDescending(i => w.EvictStep[g * t + evicted[g][i]]).ToArray();
            int li = n - 1, oi = 0;
            for (int pos = t - 1; pos >= 1; pos--)
            {
                if (li >= 0 && lossRows[li] == pos)
                {
                    TensorPrimitives.Add(sHs, dHsAt.AsSpan((li * kvHeads + g) * rs, rs), sHs);
                    TensorPrimitives.Add(sZ, dZAt.AsSpan((li * kvHeads + g) * r, r), sZ);
                    li--;
                }
                // keys evicted at the end of step pos - 1 are in the state of every row from pos on
                for (; oi < order.Length && w.EvictStep[g * t + evicted[g][order[oi]]] == pos - 1; oi++)
                {
                    int i = order[oi];
                    var v = w.Values.AsSpan(evicted[g][i] * kvDim + g * d, d);
                    var dPsi = psi[g].OutputGradient(i);
                    for (int c = 0; c < r; c++) dPsi[c] = TensorPrimitives.Dot(sHs.AsSpan(c * d, d), v) + sZ[c];
                }
            }
            psi[g].Backward(go2.K1.AsSpan(g * d * maps.Hidden, d * maps.Hidden), go2.K2.AsSpan(g * maps.Hidden * r, maps.Hidden * r),
                go2.W3.AsSpan(g * r * r, r * r), go2.S1.AsSpan(g * r, r), go2.S2.AsSpan(g * r, r));
        }
    }

    // Hs += psi^T v, z += psi
    private static void Fold(Span<float> hs, Span<float> z, ReadOnlySpan<float> psi, ReadOnlySpan<float> v)
    {
        int d = v.Length;
        for (int i = 0; i < psi.Length; i++) TensorPrimitives.MultiplyAdd(v, psi[i], hs.Slice(i * d, d), hs.Slice(i * d, d));
        TensorPrimitives.Add(z, psi, z);
    }

    // out = (plain e^L + num) / (e^L + den), scaled by e^-M with M = max(L, ln den)
    private static void Combine(ReadOnlySpan<float> plain, float lse, ReadOnlySpan<float> num, float den, Span<float> o)
    {
        float big = MathF.Max(lse, MathF.Log(den)), a = MathF.Exp(lse - big), b = MathF.Exp(-big), inv = 1f / (a + den * b);
        for (int i = 0; i < o.Length; i++) o[i] = (plain[i] * a + num[i] * b) * inv;
    }
}

/// <summary>
/// A feature map of LESS over a batch of rows, with what its backward needs: h1 = x W1, a1 = gelu(h1), h2 = a1 W2,
/// a2 = gelu(h2); phi = |a2|; psi: k1 = |s1| a2, u = k1 + s2 * (k1 W3), psi = |u|. Backward adds the parameters'
/// gradients from the gradient of the output (written into <see cref="OutputGradient"/>).
/// </summary>
public sealed class FeatureMapPass
{
    private readonly int _n, _d, _rh, _r;
    private readonly float[] _x, _h1, _a1, _h2, _out, _dOut;
    private readonly float[] _w1, _w2;
    private readonly int _w1Offset, _w2Offset;
    // psi only
    private readonly float[]? _k1, _p, _w3, _s1, _s2;
    private readonly int _kvHead;

    private FeatureMapPass(int n, int d, int rh, int r, float[] x, float[] w1, int w1Offset, float[] w2, int w2Offset,
        float[]? w3 = null, float[]? s1 = null, float[]? s2 = null, int kvHead = 0)
    {
        (_n, _d, _rh, _r, _x, _w1, _w1Offset, _w2, _w2Offset, _w3, _s1, _s2, _kvHead) = (n, d, rh, r, x, w1, w1Offset, w2, w2Offset, w3, s1, s2, kvHead);
        _h1 = new float[n * rh];
        _a1 = new float[n * rh];
        _h2 = new float[n * r];
        _out = new float[n * r];
        _dOut = new float[n * r];
        MatMulBackward.InputGradient(_x, W1, _h1, n, d, rh, accumulate: false);
        Gelu.Apply(_h1, _a1);
        MatMulBackward.InputGradient(_a1, W2, _h2, n, rh, r, accumulate: false);
        if (w3 is null)
        {
            for (int i = 0; i < _out.Length; i++) _out[i] = MathF.Abs(Gelu.Apply(_h2[i]));
            return;
        }
        _k1 = new float[n * r];
        _p = new float[n * r];
        for (int i = 0; i < n; i++)
            for (int c = 0; c < r; c++) _k1[i * r + c] = MathF.Abs(s1![kvHead * r + c]) * Gelu.Apply(_h2[i * r + c]);
        MatMulBackward.InputGradient(_k1, W3, _p, n, r, r, accumulate: false);
        for (int i = 0; i < n; i++)
            for (int c = 0; c < r; c++) _out[i * r + c] = MathF.Abs(_k1[i * r + c] + s2![kvHead * r + c] * _p[i * r + c]);
    }

    private ReadOnlySpan<float> W1 => _w1.AsSpan(_w1Offset, _d * _rh);
    private ReadOnlySpan<float> W2 => _w2.AsSpan(_w2Offset, _rh * _r);
    private ReadOnlySpan<float> W3 => _w3.AsSpan(_kvHead * _r * _r, _r * _r);

    /// <summary>phi of query head h for the given rows of queries ([T, H * D], row stride qDim).</summary>
    public static FeatureMapPass Phi(LessMaps maps, int layer, int head, IReadOnlyList<int> rows, float[] queries, int qDim)
    {
        int d = maps.HeadDim, rh = maps.Hidden, r = maps.Rank;
        var x = Gather(rows, queries, qDim, head * d, d);
        var m = maps.Layers[layer];
        return new FeatureMapPass(rows.Count, d, rh, r, x, m.Q1, head * d * rh, m.Q2, head * rh * r);
    }

    /// <summary>psi of KV head g of the owner layer's key map for the given rows of keys ([T, KV * D]).</summary>
    public static FeatureMapPass Psi(LessMaps maps, int owner, int g, IReadOnlyList<int> rows, float[] keys, int kvDim)
    {
        int d = maps.HeadDim, rh = maps.Hidden, r = maps.Rank;
        var x = Gather(rows, keys, kvDim, g * d, d);
        var m = maps.Layers[owner];
        return new FeatureMapPass(rows.Count, d, rh, r, x, m.K1!, g * d * rh, m.K2!, g * rh * r, m.W3, m.S1, m.S2, g);
    }

    private static float[] Gather(IReadOnlyList<int> rows, float[] src, int stride, int offset, int d)
    {
        var x = new float[rows.Count * d];
        for (int i = 0; i < rows.Count; i++) src.AsSpan(rows[i] * stride + offset, d).CopyTo(x.AsSpan(i * d, d));
        return x;
    }

    public ReadOnlySpan<float> Output(int row) => _out.AsSpan(row * _r, _r);

    /// <summary>Where the caller writes d loss / d output of a row (zero until written).</summary>
    public Span<float> OutputGradient(int row) => _dOut.AsSpan(row * _r, _r);

    /// <summary>Adds the gradients of the query map (dW1 [D, Rh], dW2 [Rh, R]) from the output gradients.</summary>
    public void Backward(Span<float> dW1, Span<float> dW2) => Backward(dW1, dW2, default, default, default);

    /// <summary>Adds the gradients of the key map: dW1, dW2, dW3 [R, R], ds1, ds2 [R].</summary>
    public void Backward(Span<float> dW1, Span<float> dW2, Span<float> dW3, Span<float> dS1, Span<float> dS2)
    {
        int n = _n, r = _r, rh = _rh;
        if (n == 0) return;
        var dH2 = new float[n * r];
        if (_k1 is null)
        {
            // phi = |gelu(h2)|
            for (int i = 0; i < dH2.Length; i++)
            {
                float a2 = Gelu.Apply(_h2[i]);
                dH2[i] = _dOut[i] * MathF.Sign(a2) * Gelu.Derivative(_h2[i]);
            }
        }
        else
        {
            // psi = |u|, u = k1 + s2 * (k1 W3), k1 = |s1| * gelu(h2)
            var du = new float[n * r];
            var sdu = new float[n * r];
            for (int i = 0; i < n; i++)
                for (int c = 0; c < r; c++)
                {
                    float s2 = _s2![_kvHead * r + c], u = _k1[i * r + c] + s2 * _p![i * r + c];
                    du[i * r + c] = _dOut[i * r + c] * MathF.Sign(u);
                    sdu[i * r + c] = du[i * r + c] * s2;
                    dS2[c] += du[i * r + c] * _p[i * r + c];
                }
            // dW3 += k1^T (s2 du); dk1 = du + (s2 du) W3^T
            MatMulBackward.WeightGradient(_k1, sdu, dW3, n, r, r);
            var w3 = W3;
            for (int i = 0; i < n; i++)
                for (int c = 0; c < r; c++)
                {
                    float dk1 = du[i * r + c] + TensorPrimitives.Dot(sdu.AsSpan(i * r, r), w3.Slice(c * r, r));
                    float s1 = _s1![_kvHead * r + c], a2 = Gelu.Apply(_h2[i * r + c]);
                    dS1[c] += dk1 * a2 * MathF.Sign(s1);
                    dH2[i * r + c] = dk1 * MathF.Abs(s1) * Gelu.Derivative(_h2[i * r + c]);
                }
        }
        // dW2 += a1^T dh2; da1 = dh2 W2^T; dh1 = da1 gelu'(h1); dW1 += x^T dh1
        MatMulBackward.WeightGradient(_a1, dH2, dW2, n, rh, r);
        var w2 = W2;
        var w2t = new float[r * rh];
        for (int j = 0; j < rh; j++)
            for (int c = 0; c < r; c++) w2t[c * rh + j] = w2[j * r + c];
        var dH1 = new float[n * rh];
        MatMulBackward.InputGradient(dH2, w2t, dH1, n, r, rh, accumulate: false);
        Gelu.MultiplyByDerivative(_h1, dH1);
        MatMulBackward.WeightGradient(_x, dH1, dW1, n, _d, rh);
    }
}

/// <summary>What <see cref="LessTrainer"/> trains: the policy and budget, the maps' shape and the schedule.</summary>
public sealed record LessTrainOptions
{
    public required EvictionSettings Policy { get; init; }
    public int Rank { get; init; } = 8;
    public int Hidden { get; init; } = 512;
    /// <summary>Tokens per training window.</summary>
    public int SeqLen { get; init; } = 512;
    public int Epochs { get; init; } = 10;
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>The learning rate halves every this many epochs (the paper's schedule).</summary>
    public int HalveEvery { get; init; } = 10;
    /// <summary>Windows per Adam update.</summary>
    public int Batch { get; init; } = 4;
    /// <summary>The last windows, this fraction of them, are held out for the validation loss (none with one window).</summary>
    public double ValFraction { get; init; } = 0.1;
    public int Seed { get; init; } = 1;
    /// <summary>Maps to start from instead of a fresh draw (their shape must be Rank and Hidden).</summary>
    public LessMaps? Initial { get; init; }

    public void Validate(LlamaModel model)
    {
        Policy.Validate();
        if (Policy.Kind == EvictionKind.None) throw new LckvException("LESS trains for an eviction policy: h2o or streaming");
        if (Rank < 1 || Hidden < 1) throw new LckvException($"--rank and --hidden must be at least 1, got {Rank} and {Hidden}");
        if (SeqLen <= Policy.Budget + 1) throw new LckvException($"--seq-len {SeqLen} must exceed the budget plus one ({Policy.Budget + 1}): shorter windows never evict");
        if (SeqLen > model.ContextLength) throw new LckvException($"--seq-len {SeqLen} exceeds the model's context length {model.ContextLength}");
        if (Epochs < 1 || Batch < 1 || HalveEvery < 1) throw new LckvException("--epochs, --batch and the halving period must be at least 1");
        if (!(LearningRate > 0) || !double.IsFinite(LearningRate)) throw new LckvException($"--lr must be a positive number, got {LearningRate}");
        if (!(ValFraction >= 0 && ValFraction < 1)) throw new LckvException($"the validation fraction must be in [0, 1), got {ValFraction}");
    }
}

/// <summary>One epoch of one store, as the trainer reports it.</summary>
public readonly record struct LessEpoch(int Store, int Stores, int Owner, int Epoch, int Epochs, double TrainLoss, double? ValLoss, double LearningRate, double Seconds);

/// <summary>A finished store: the validation loss (or the training loss without validation windows) before training,
/// which is that of plain eviction up to the scalings' 1e-4, and after.</summary>
public readonly record struct LessStoreResult(int Owner, int[] Readers, double LossBefore, double LossAfter, bool OnValidation, double Seconds);

/// <summary>
/// Trains LESS maps (kv-compression.md §3): the frozen model's full-cache activations recorded over the training
/// windows, then each store on its own (its owner's key map and its readers' query maps) with Adam on the loss of
/// <see cref="LessLoss"/>, the learning rate halved every HalveEvery epochs. After each store the maps are written
/// atomically with the stores done so far in the metadata, so that a stopped run resumes at the next store.
/// </summary>
public static class LessTrainer
{
    /// <summary>Metadata key of the stores (owner layers) trained so far.</summary>
    public const string DoneKey = "trained_layers";

    public static IReadOnlyList<LessStoreResult> Train(LlamaModel model, ReadOnlySpan<int> tokens, LessTrainOptions o, string outPath, bool resume,
        Action<LessEpoch>? onEpoch = null, Action<string>? log = null, CancellationToken cancel = default)
    {
        o.Validate(model);
        LessRecorder.CheckLayout(model);
        var map = model.Map;
        int windowsCount = tokens.Length / o.SeqLen;
        if (windowsCount < 1) throw new LckvException($"the data holds {tokens.Length} tokens, fewer than one window of {o.SeqLen}");
        int val = windowsCount >= 2 ? Math.Max(1, (int)Math.Round(windowsCount * o.ValFraction)) : 0;
        if (o.ValFraction == 0) val = 0;
        LessMaps maps;
        var done = new SortedSet<int>();
        if (resume && File.Exists(outPath))
        {
            maps = LessMaps.Load(outPath, model.Config, map);
            if (maps.Rank != o.Rank || maps.Hidden != o.Hidden || maps.TrainedFor != o.Policy with { Less = null })
                throw new LckvException($"{outPath} holds maps of rank {maps.Rank}, hidden {maps.Hidden} for {maps.TrainedFor.Kind} budget {maps.TrainedFor.Budget}; the options ask for rank {o.Rank}, hidden {o.Hidden}, {o.Policy.Kind} budget {o.Policy.Budget}");
            using var file = Formats.SafeTensorsFile.Open(outPath);
            if (file.Metadata.TryGetValue(DoneKey, out var list))
                foreach (var s in list.Split(',', StringSplitOptions.RemoveEmptyEntries)) done.Add(int.Parse(s, System.Globalization.CultureInfo.InvariantCulture));
            log?.Invoke($"resuming: stores of layers {string.Join(", ", done)} are trained");
        }
        else if (o.Initial is { } start)
        {
            if (start.Rank != o.Rank || start.Hidden != o.Hidden)
                throw new LckvException($"the initial maps have rank {start.Rank} and hidden {start.Hidden}, the options ask for {o.Rank} and {o.Hidden}");
            maps = new LessMaps(start.Heads, start.KvHeads, start.HeadDim, start.Rank, start.Hidden, o.Policy with { Less = null }, [.. start.Layers]);
        }
        else maps = LessMaps.Initial(model.Config, map, o.Rank, o.Hidden, o.Policy with { Less = null }, o.Seed);

        var owners = Enumerable.Range(0, map.LayerCount).Where(map.ComputesKv).ToArray();
        var results = new List<LessStoreResult>();
        if (owners.All(done.Contains)) return results;
        // the frozen model over every window, once
        var recordings = new LessRecording[windowsCount];
        using (var recorder = new LessRecorder(model, o.SeqLen))
            for (int w = 0; w < windowsCount; w++)
            {
                cancel.ThrowIfCancellationRequested();
                recordings[w] = recorder.Record(tokens.Slice(w * o.SeqLen, o.SeqLen));
            }
        log?.Invoke($"recorded {windowsCount} windows of {o.SeqLen} tokens ({windowsCount - val} for training, {val} for validation)");
        var rng = new Random(o.Seed);
        for (int si = 0; si < owners.Length; si++)
        {
            int owner = owners[si];
            if (done.Contains(owner)) continue;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            int kv = map.KvIndex(owner);
            int[] readers = [.. Enumerable.Range(0, map.LayerCount).Where(l => map.ReadsKvIndex(l) == kv)];
            var windows = new LessStoreWindow[windowsCount];
            Parallel.For(0, windowsCount, new ParallelOptions { MaxDegreeOfParallelism = WorkerPool.Shared.ThreadCount, CancellationToken = cancel },
                w => windows[w] = LessStoreWindow.Simulate(recordings[w], kv, readers, o.Policy, model.Config.NumAttentionHeads, model.KvHeads, model.HeadDim, model.Rope));
            var train = windows[..(windowsCount - val)];
            var valid = windows[(windowsCount - val)..];
            var (parameters, grads) = Bind(maps, owner, readers);
            var loss = new LessLoss(maps, model, owner, readers);
            var adam = new AdamW(parameters, new AdamWOptions { Beta1 = 0.9f, Beta2 = 0.999f, WeightDecay = 0 });
            var evalSet = val > 0 ? valid : train;
            double before = loss.Evaluate(evalSet, null);
            var order = Enumerable.Range(0, train.Length).ToArray();
            double after = before;
            for (int epoch = 0; epoch < o.Epochs; epoch++)
            {
                double lr = o.LearningRate * Math.Pow(0.5, epoch / o.HalveEvery);
                rng.Shuffle(order);
                double sum = 0;
                long rows = 0;
                for (int b = 0; b < order.Length; b += o.Batch)
                {
                    cancel.ThrowIfCancellationRequested();
                    var batch = order[b..Math.Min(order.Length, b + o.Batch)].Select(i => train[i]).ToArray();
                    adam.ZeroGrad();
                    double l = loss.Evaluate(batch, grads);
                    long n = batch.Sum(w => (long)w.LossRows.Length);
                    if (!double.IsFinite(l)) throw new LckvException($"the LESS loss of layer {owner}'s store became {l} at epoch {epoch + 1}; try a smaller --lr");
                    sum += l * n;
                    rows += n;
                    if (n > 0) adam.Step(lr);
                }
                double? v = val > 0 ? loss.Evaluate(valid, null) : null;
                after = v ?? sum / Math.Max(1, rows);
                onEpoch?.Invoke(new LessEpoch(si, owners.Length, owner, epoch + 1, o.Epochs, sum / Math.Max(1, rows), v, lr, clock.Elapsed.TotalSeconds));
            }
            if (val == 0) after = loss.Evaluate(train, null);
            done.Add(owner);
            maps.Save(outPath, new Dictionary<string, string> { [DoneKey] = string.Join(",", done) });
            results.Add(new LessStoreResult(owner, readers, before, after, val > 0, clock.Elapsed.TotalSeconds));
        }
        return results;
    }

    // the store's tensors as Parameters whose values are the maps' arrays from now on, and their gradients
    private static (List<Parameter> Parameters, LessLoss.Gradients Grads) Bind(LessMaps maps, int owner, int[] readers)
    {
        var list = new List<Parameter>();
        float[] Param(string name, float[] values)
        {
            var p = new Parameter(name, [values.Length], decay: false);
            values.CopyTo(p.Value, 0);
            list.Add(p);
            return p.Value;
        }
        var o = maps.Layers[owner];
        o.K1 = Param($"{owner}.k1", o.K1!);
        o.K2 = Param($"{owner}.k2", o.K2!);
        o.W3 = Param($"{owner}.w3", o.W3!);
        o.S1 = Param($"{owner}.s1", o.S1!);
        o.S2 = Param($"{owner}.s2", o.S2!);
        foreach (int r in readers)
        {
            maps.Layers[r].Q1 = Param($"{r}.q1", maps.Layers[r].Q1);
            maps.Layers[r].Q2 = Param($"{r}.q2", maps.Layers[r].Q2);
        }
        LessLayerMaps Grad(int start, bool key) => key
            ? new LessLayerMaps { Q1 = [], Q2 = [], K1 = list[start].Grad, K2 = list[start + 1].Grad, W3 = list[start + 2].Grad, S1 = list[start + 3].Grad, S2 = list[start + 4].Grad }
            : new LessLayerMaps { Q1 = list[start].Grad, Q2 = list[start + 1].Grad };
        return (list, new LessLoss.Gradients { Owner = Grad(0, true), Readers = [.. readers.Select((_, i) => Grad(5 + 2 * i, false))] });
    }
}
