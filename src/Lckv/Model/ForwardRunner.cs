using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Numerics;

namespace Lckv.Model;

/// <summary>One sequence's share of a step: its cache id and how many new tokens it brings.</summary>
public readonly record struct StepSequence(int SequenceId, int TokenCount);

/// <summary>Which rows get logits: every new token, or the last new token of each sequence.</summary>
public enum LogitsRows { All, Last }

/// <summary>How a multi-token step of a model with upward-reading layers is evaluated (kv-sharing.md §4-5).</summary>
public enum PrefillMode
{
    /// <summary>The prefill rule of kv-sharing.md §4: the iteration plan, unless use_sequential is set or the prompt
    /// has at most m+b tokens (then token by token).</summary>
    Auto,
    /// <summary>Always the iteration plan for sequences that start at position 0, whatever their length: the
    /// whole-sequence definition (golden `logits`, training, perplexity).</summary>
    Plan,
    /// <summary>Token by token (exact).</summary>
    Sequential,
}

/// <summary>
/// Evaluates steps of a batch of sequences against a KV cache: one matrix multiply per projection for all rows of
/// the step, KV written in place into the cache, attention reading the cache of each layer's target. Owns the
/// scratch buffers, sized once for at most MaxRows rows per step. A step of a layout with upward-reading layers that
/// mixes prompts with decoding sequences runs as sub-steps: the prompts through the iteration plan, the decodes in one
/// pass, and only sequences the plan cannot take (continuations, short prompts under the prefill rule) token by token.
/// </summary>
public sealed class ForwardRunner : IPlanHost, IKvStores
{
    private readonly LlamaModel _model;
    private readonly KvCache _cache;
    private readonly int _hidden, _qDim, _kvDim, _inter;
    private readonly float[] _x, _xIn, _xn, _q, _k, _v, _att, _gate, _up;
    private readonly int[] _positions, _ranks;
    private readonly AttentionSequence[] _attSeqs;
    private readonly int[] _starts, _rowStarts, _lengthSeqs, _lengths;
    private readonly StepSequence[] _batch;
    private readonly ForwardContext _ctx;
    private readonly LayerBuffers _buffers;
    private readonly IReadOnlyList<PlanPass> _plan;   // whole sequences (multi-token steps)
    private readonly IReadOnlyList<PlanPass> _onePass; // one token per sequence: every layer once
    private int _batchCount;
    private bool _passAdvances;

    public int MaxRows { get; }
    public int MaxSequences { get; }
    public PrefillMode Prefill { get; set; } = PrefillMode.Auto;
    public LlamaModel Model => _model;
    public KvCache Cache => _cache;

    /// <summary>Evaluations of the layer stack so far: one per step, or per sub-step of a mixed step, or per token
    /// of a sequence evaluated token by token.</summary>
    public long Evaluations { get; private set; }

    public ForwardRunner(LlamaModel model, KvCache cache, int maxRows, int maxSequences)
    {
        if (cache.KvLayers != model.Map.KvLayerCount)
            throw new ArgumentException($"cache has {cache.KvLayers} KV layers, the model needs {model.Map.KvLayerCount}");
        _model = model;
        _cache = cache;
        MaxRows = maxRows;
        MaxSequences = maxSequences;
        var c = model.Config;
        _hidden = c.HiddenSize;
        _qDim = c.NumAttentionHeads * c.HeadDim;
        _kvDim = c.NumKeyValueHeads * c.HeadDim;
        _inter = c.IntermediateSize;
        var size = ScratchSizes.For(c, maxRows, maxSequences);
        _x = new float[size.Hidden];
        _xIn = new float[size.Hidden];
        _xn = new float[size.Hidden];
        _q = new float[size.Query];
        _k = new float[size.KeyValue];
        _v = new float[size.KeyValue];
        _att = new float[size.Query];
        _gate = new float[size.Intermediate];
        _up = new float[size.Intermediate];
        _positions = new int[size.Rows];
        _ranks = new int[size.Rows];
        _attSeqs = new AttentionSequence[size.Sequences];
        _starts = new int[size.Sequences];
        _rowStarts = new int[size.Sequences];
        _lengthSeqs = new int[size.Sequences];
        _lengths = new int[size.Sequences];
        _batch = new StepSequence[size.Sequences];
        for (int kv = 0; kv < cache.KvLayers; kv++)
        {
            int ring = cache.RingBlocks(kv);
            if (ring > 0 && (long)ring * cache.Layout.BlockSize < (long)c.SlidingWindow + maxRows + cache.Layout.BlockSize)
                throw new ArgumentException($"KV layer {kv}'s ring of {ring} blocks is too small for steps of {maxRows} rows (create the cache with LlamaModel.CreateCache)");
        }
        _ctx = new ForwardContext(c, model.Map, model.Rope) { Positions = _positions };
        // one scratch set for every layer: the residual stream in place, the normalised input doubling as o_proj's
        // and down_proj's output, the activation in the gate's buffer
        _buffers = new LayerBuffers
        {
            X = _x, Xn1 = _xn, Q = _q, Att = _att, H1 = _x, Xn2 = _xn, G = _gate, U = _up, A = _gate, Tmp = _xn, Out = _x,
        };
        _plan = IterationPlan.Build(model.Map, c.ForwardPasses, c.BackwardPasses);
        _onePass = [new PlanPass(0, model.Map.LayerCount, false, true)];
    }

    /// <summary>
    /// Bytes of the scratch buffers a runner for this config allocates (array elements, headers excluded): three
    /// [rows, hidden], two [rows, heads*head_dim], two [rows, kv_heads*head_dim], two [rows, intermediate] f32 buffers,
    /// the row positions and ranks and the per-sequence tables. The constructor allocates from the same sizes.
    /// </summary>
    public static long ScratchBytes(ModelConfig config, int maxRows, int maxSequences)
        => ScratchSizes.For(config, maxRows, maxSequences).Bytes;

    /// <summary>What this runner's scratch arrays actually hold, summed from their lengths (equals ScratchBytes).</summary>
    public long AllocatedScratchBytes
        => sizeof(float) * ((long)_x.Length + _xIn.Length + _xn.Length + _q.Length + _k.Length + _v.Length + _att.Length + _gate.Length + _up.Length)
           + sizeof(int) * ((long)_positions.Length + _ranks.Length + _starts.Length + _rowStarts.Length)
           + (long)Unsafe.SizeOf<AttentionSequence>() * _attSeqs.Length + (long)Unsafe.SizeOf<StepSequence>() * _batch.Length;

    /// <summary>Element counts of every scratch array; the one place the constructor and ScratchBytes read them from.</summary>
    private readonly record struct ScratchSizes(int Rows, int Sequences, int Hidden, int Query, int KeyValue, int Intermediate)
    {
        public static ScratchSizes For(ModelConfig c, int maxRows, int maxSequences)
        {
            if (maxRows <= 0) throw new ArgumentOutOfRangeException(nameof(maxRows), maxRows, "a runner needs at least one row");
            if (maxSequences <= 0) throw new ArgumentOutOfRangeException(nameof(maxSequences), maxSequences, "a runner needs at least one sequence");
            return new ScratchSizes(maxRows, maxSequences, checked(maxRows * c.HiddenSize),
                checked(maxRows * c.NumAttentionHeads * c.HeadDim), checked(maxRows * c.NumKeyValueHeads * c.HeadDim),
                checked(maxRows * c.IntermediateSize));
        }

        public long Bytes
            => sizeof(float) * (3L * Hidden + 2L * Query + 2L * KeyValue + 2L * Intermediate)
               + sizeof(int) * (2L * Rows + 2L * Sequences)
               + (long)Unsafe.SizeOf<AttentionSequence>() * Sequences + (long)Unsafe.SizeOf<StepSequence>() * Sequences;
    }

    /// <summary>
    /// Evaluates the new tokens of each sequence (tokens: the sequences' tokens concatenated in batch order), writes
    /// their KV at positions Length(seq).., commits each sequence's length (the stores' policies run), and writes
    /// logits ([rows, vocab]: every token, or the last of each sequence) into logits. The caller reserves cache space first.
    /// </summary>
    public void Run(ReadOnlySpan<StepSequence> batch, ReadOnlySpan<int> tokens, LogitsRows rows, Span<float> logits)
    {
        int total = Validate(batch, tokens);
        int logitRows = rows == LogitsRows.All ? total : batch.Length;
        if (logits.Length < (long)logitRows * _model.Vocab) throw new ArgumentException("logits buffer too small");
        bool multi = false, allPlan = true;
        foreach (var s in batch)
        {
            multi |= s.TokenCount > 1;
            allPlan &= UsePlan(s);
        }
        if (!multi || !_model.Map.AnyAttendsTop || allPlan)
        {
            Evaluate(batch, tokens, total, rows, logits, multi);
            return;
        }
        RunMixed(batch, tokens, rows, logits);
    }

    /// <summary>
    /// Evaluates a step as <see cref="Run"/> does (KV written and committed), but writes the hidden state of every new
    /// token after the final norm ([rows, hidden], the LM head's input) instead of logits. Only for layouts without
    /// upward-reading layers, whose steps are always one evaluation of the layer stack.
    /// </summary>
    public void RunHidden(ReadOnlySpan<StepSequence> batch, ReadOnlySpan<int> tokens, Span<float> hidden)
    {
        if (_model.Map.AnyAttendsTop) throw new InvalidOperationException("final hidden states are read only from layouts without upward-reading layers");
        int total = Validate(batch, tokens);
        if (hidden.Length < (long)total * _hidden) throw new ArgumentException("hidden buffer too small");
        Evaluate(batch, tokens, total, LogitsRows.All, default, multi: total > batch.Length, hidden);
    }

    // whether the iteration plan evaluates this sequence's tokens (it must start at position 0)
    private bool UsePlan(StepSequence s)
    {
        var c = _model.Config;
        if (Prefill == PrefillMode.Sequential || (Prefill == PrefillMode.Auto && c.UseSequential)) return false;
        if (_cache.Length(s.SequenceId) != 0) return false;
        // the prefill rule: a prompt of at most m+b tokens goes token by token
        return Prefill != PrefillMode.Auto || s.TokenCount > c.ForwardPasses + c.BackwardPasses;
    }

    private enum Route { Plan, Decode, Sequential }

    /// <summary>
    /// A multi-token step of an upward layout that the plan cannot take whole: sequences whose prompts the plan takes
    /// go in one sub-step, one-token sequences in another, and the rest token by token (exact, kv-sharing.md §5).
    /// </summary>
    private void RunMixed(ReadOnlySpan<StepSequence> batch, ReadOnlySpan<int> tokens, LogitsRows rows, Span<float> logits)
    {
        int v = _model.Vocab, n = batch.Length;
        var routes = new Route[n];
        var tokenStart = new int[n];
        var logitRow = new int[n];
        for (int s = 0, t = 0, r = 0; s < n; s++)
        {
            routes[s] = batch[s].TokenCount == 1 ? Route.Decode : UsePlan(batch[s]) ? Route.Plan : Route.Sequential;
            tokenStart[s] = t;
            t += batch[s].TokenCount;
            logitRow[s] = r;
            r += rows == LogitsRows.All ? batch[s].TokenCount : 1;
        }
        var sub = new List<StepSequence>(n);
        var subTokens = new List<int>();
        var owners = new List<int>(n);
        foreach (var route in new[] { Route.Plan, Route.Decode })
        {
            sub.Clear(); subTokens.Clear(); owners.Clear();
            for (int s = 0; s < n; s++)
            {
                if (routes[s] != route) continue;
                sub.Add(batch[s]);
                owners.Add(s);
                subTokens.AddRange(tokens.Slice(tokenStart[s], batch[s].TokenCount));
            }
            if (sub.Count == 0) continue;
            int subRows = rows == LogitsRows.All ? subTokens.Count : sub.Count;
            var subLogits = new float[(long)subRows * v];
            Evaluate(CollectionsMarshal.AsSpan(sub), CollectionsMarshal.AsSpan(subTokens), subTokens.Count, rows, subLogits, route == Route.Plan);
            for (int j = 0, r = 0; j < sub.Count; j++)
            {
                int s = owners[j], count = rows == LogitsRows.All ? sub[j].TokenCount : 1;
                subLogits.AsSpan(r * v, count * v).CopyTo(logits.Slice(logitRow[s] * v, count * v));
                r += count;
            }
        }
        // token by token for the rest: each round one token of every such sequence
        int maxLen = 0;
        for (int s = 0; s < n; s++) if (routes[s] == Route.Sequential) maxLen = Math.Max(maxLen, batch[s].TokenCount);
        var stepLogits = new float[(long)n * v];
        for (int t = 0; t < maxLen; t++)
        {
            sub.Clear(); subTokens.Clear(); owners.Clear();
            for (int s = 0; s < n; s++)
            {
                if (routes[s] != Route.Sequential || t >= batch[s].TokenCount) continue;
                sub.Add(new StepSequence(batch[s].SequenceId, 1));
                subTokens.Add(tokens[tokenStart[s] + t]);
                owners.Add(s);
            }
            Evaluate(CollectionsMarshal.AsSpan(sub), CollectionsMarshal.AsSpan(subTokens), sub.Count, LogitsRows.Last, stepLogits, multi: false);
            for (int j = 0; j < sub.Count; j++)
            {
                int s = owners[j];
                if (rows == LogitsRows.Last && t != batch[s].TokenCount - 1) continue;
                int dst = rows == LogitsRows.All ? logitRow[s] + t : logitRow[s];
                stepLogits.AsSpan(j * v, v).CopyTo(logits.Slice(dst * v, v));
            }
        }
    }

    private int Validate(ReadOnlySpan<StepSequence> batch, ReadOnlySpan<int> tokens)
    {
        if (batch.Length > MaxSequences) throw new ArgumentException($"{batch.Length} sequences exceed the runner's {MaxSequences}");
        int total = 0;
        foreach (var s in batch)
        {
            if (s.TokenCount <= 0) throw new ArgumentException("every sequence in a step needs at least one token");
            total += s.TokenCount;
            int need = _cache.Length(s.SequenceId) + s.TokenCount;
            if (need > _model.ContextLength)
                throw new LckvException($"sequence of {need} tokens exceeds the context length {_model.ContextLength}");
        }
        if (total != tokens.Length) throw new ArgumentException($"batch has {total} tokens, tokens span {tokens.Length}");
        // (a step of an upward layout that goes token by token may exceed MaxRows: each of its steps has one row per sequence)
        if (total > MaxRows && !_model.Map.AnyAttendsTop) throw new ArgumentException($"{total} rows exceed the runner's {MaxRows}; split the step");
        foreach (int id in tokens)
            if ((uint)id >= (uint)_model.Vocab) throw new LckvException($"token id {id} is outside the vocabulary (size {_model.Vocab})");
        return total;
    }

    // one evaluation of the layer stack: the plan for whole sequences (multi), one pass otherwise; then logits, or with
    // a hidden buffer the final-normed hidden state of every row
    private void Evaluate(ReadOnlySpan<StepSequence> batch, ReadOnlySpan<int> tokens, int total, LogitsRows rows, Span<float> logits, bool multi,
        Span<float> hidden = default)
    {
        if (total > MaxRows) throw new ArgumentException($"{total} rows exceed the runner's {MaxRows}; split the step");
        Evaluations++;
        _batchCount = batch.Length;
        for (int s = 0, row = 0; s < batch.Length; s++)
        {
            _batch[s] = batch[s];
            int start = _cache.Length(batch[s].SequenceId);
            _starts[s] = start;
            _rowStarts[s] = row;
            for (int t = 0; t < batch[s].TokenCount; t++) _positions[row + t] = start + t;
            row += batch[s].TokenCount;
        }
        _ctx.Rows = total;
        for (int r = 0; r < total; r++) _model.Weights.Embed.ReadRow(tokens[r], _x.AsSpan(r * _hidden, _hidden));
        bool whole = multi && _model.Map.AnyAttendsTop;
        IterationPlan.Execute(whole ? _plan : _onePass, _model.Map, whole, this);
        for (int s = 0; s < batch.Length; s++)
        {
            _lengthSeqs[s] = batch[s].SequenceId;
            _lengths[s] = _starts[s] + batch[s].TokenCount;
        }
        _cache.SetLengths(_lengthSeqs.AsSpan(0, batch.Length), _lengths.AsSpan(0, batch.Length));
        if (hidden.IsEmpty) Head(batch, total, rows, logits);
        else RmsNorm.Apply(_x.AsSpan(0, total * _hidden), _model.Weights.FinalNorm, _model.Config.RmsNormEps, hidden[..(total * _hidden)], total);
    }

    void IPlanHost.BeginPass(PlanPass pass, bool firstOfGroup)
    {
        _passAdvances = pass.Advances;
        // every pass of a group starts from the group's input; only the last one advances the hidden state
        if (firstOfGroup && !pass.Advances) Array.Copy(_x, _xIn, _ctx.Rows * _hidden);
    }

    void IPlanHost.Layer(PlanPass pass, int layer, LayerWork work, bool zeroAttention)
        => DecoderLayer.Forward(_ctx, _model.Weights.Layers[layer], layer, work, zeroAttention, _buffers, this);

    void IPlanHost.EndPass(PlanPass pass)
    {
        if (!pass.Advances) Array.Copy(_xIn, _x, _ctx.Rows * _hidden);
    }

    void IKvStores.Target(int kvIndex, out Span<float> k, out Span<float> v)
    {
        k = _k.AsSpan(0, _ctx.Rows * _kvDim);
        v = _v.AsSpan(0, _ctx.Rows * _kvDim);
    }

    void IKvStores.Commit(int kvIndex)
    {
        for (int s = 0; s < _batchCount; s++)
        {
            int r0 = _rowStarts[s], n = _batch[s].TokenCount;
            _cache.Write(_batch[s].SequenceId, kvIndex, _starts[s], _k.AsSpan(r0 * _kvDim, n * _kvDim), _v.AsSpan(r0 * _kvDim, n * _kvDim));
        }
    }

    bool IKvStores.Read(int kvIndex, out KvStorage storage, out ReadOnlySpan<AttentionSequence> sequences)
    {
        for (int s = 0; s < _batchCount; s++)
        {
            int n = _batch[s].TokenCount;
            var view = _cache.View(_batch[s].SequenceId, kvIndex, n);
            // attention scores (H2O) count the step's attention: the advancing pass's, not the plan's earlier passes
            if (!_passAdvances && view.Scores is not null) view = view with { Scores = null };
            _attSeqs[s] = new AttentionSequence(_rowStarts[s], n, _starts[s], view);
        }
        var pool = _cache.Pool;
        storage = KvStorage.Paged(pool.Base, pool.Layout);
        sequences = _attSeqs.AsSpan(0, _batchCount);
        return true;
    }

    ReadOnlySpan<int> IKvStores.KeyPositions(int kvIndex)
        => _cache.Policy(kvIndex).RankRope is null ? _positions.AsSpan(0, _ctx.Rows) : default;

    ReadOnlySpan<int> IKvStores.QueryPositions(int kvIndex)
    {
        if (_cache.Policy(kvIndex).RankRope is null) return _positions.AsSpan(0, _ctx.Rows);
        // a query's rank: the store's entries before it, the kept ones and the step's earlier ones
        for (int s = 0; s < _batchCount; s++)
        {
            int kept = _cache.EntryCount(_batch[s].SequenceId, kvIndex);
            for (int i = 0; i < _batch[s].TokenCount; i++) _ranks[_rowStarts[s] + i] = kept + i;
        }
        return _ranks.AsSpan(0, _ctx.Rows);
    }

    private float[] _lessNum = [], _lessDen = [];
    private int[] _lessRows = [];
    private LessState?[] _lessStates = [];

    /// <summary>Receives a layer's rotated queries of a step ([rows, heads * head_dim]).</summary>
    public delegate void QueryObserver(int layer, ReadOnlySpan<float> q);

    /// <summary>Called with every layer's rotated queries just before its attention reads a store (recording the
    /// frozen model for LESS training).</summary>
    public QueryObserver? ObserveQueries { get; set; }

    bool IKvStores.LessTerms(int layer, int kvIndex, ReadOnlySpan<float> q, out ReadOnlySpan<float> num, out ReadOnlySpan<float> den)
    {
        num = den = default;
        ObserveQueries?.Invoke(layer, q);
        if (_cache.Policy(kvIndex) is not EvictingPolicy { Less: { } maps } policy) return false;
        var c = _model.Config;
        int heads = c.NumAttentionHeads, kvHeads = c.NumKeyValueHeads, rows = _ctx.Rows;
        if (_lessDen.Length < MaxRows * heads)
        {
            _lessNum = new float[MaxRows * heads * c.HeadDim];
            _lessDen = new float[MaxRows * heads];
            _lessRows = new int[kvHeads * MaxRows];
            _lessStates = new LessState?[MaxRows];
        }
        // each row's state; LESS terms are due if the step folds evictions or a state already holds some
        bool any = policy.BeginFold() > 0;
        for (int s = 0; s < _batchCount; s++)
        {
            var state = (LessState)_cache.StateOf(_batch[s].SequenceId, kvIndex);
            for (int row = _rowStarts[s]; row < _rowStarts[s] + _batch[s].TokenCount; row++) _lessStates[row] = state;
            if (!any) foreach (bool e in state.Evicted) any |= e;
        }
        if (!any) return false;
        Array.Clear(_lessDen, 0, rows * heads);
        unsafe
        {
            fixed (float* pq = q)
                WorkerPool.Shared.Run(kvHeads, new LessJob { Runner = this, Maps = maps, Policy = policy, Layer = layer, Q = pq }, 1);
        }
        policy.EndFold();
        num = _lessNum.AsSpan(0, rows * heads * c.HeadDim);
        den = _lessDen.AsSpan(0, rows * heads);
        return true;
    }

    // per KV head g: fold the step's evictions of g into the states, then for each query head of g's group and every row
    // whose state of g holds something, phi of the queries (one product per map layer), phi Hs and phi.z (rows without
    // keep a zero denominator: plain attention)
    private unsafe struct LessJob : IRangeBody
    {
        public ForwardRunner Runner;
        public ILessMaps Maps;
        public EvictingPolicy Policy;
        public int Layer;
        public float* Q;

        [ThreadStatic] private static float[]? _x, _phi, _scratch;

        public readonly void Invoke(int start, int end)
        {
            var runner = Runner;
            var c = runner._model.Config;
            int heads = c.NumAttentionHeads, d = c.HeadDim, group = heads / c.NumKeyValueHeads, r = Maps.Rank, maxRows = runner.MaxRows;
            for (int g = start; g < end; g++)
            {
                Policy.FoldHead(g);
                var rows = runner._lessRows.AsSpan(g * maxRows, maxRows);
                int n = 0;
                for (int row = 0; row < runner._ctx.Rows; row++)
                    if (runner._lessStates[row]!.Evicted[g]) rows[n++] = row;
                if (n == 0) continue;
                if (_x is null || _x.Length < n * d) _x = new float[maxRows * d];
                if (_phi is null || _phi.Length < n * r) _phi = new float[maxRows * r];
                if (_scratch is null || _scratch.Length < n * Maps.Hidden) _scratch = new float[maxRows * Maps.Hidden];
                for (int h = g * group; h < (g + 1) * group; h++)
                {
                    for (int i = 0; i < n; i++) new ReadOnlySpan<float>(Q + ((long)rows[i] * heads + h) * d, d).CopyTo(_x.AsSpan(i * d, d));
                    Maps.PhiRows(Layer, h, _x, n, _phi, _scratch);
                    fixed (float* num = runner._lessNum)
                        for (int i = 0; i < n; i++)
                        {
                            var state = runner._lessStates[rows[i]]!;
                            int at = rows[i] * heads + h;
                            var phi = _phi.AsSpan(i * r, r);
                            float* o = num + (long)at * d;
                            new Span<float>(o, d).Clear();
                            fixed (float* hs = state.Hs)
                                for (int k = 0; k < r; k++) Simd.MultiplyAdd(hs + (g * r + k) * d, phi[k], o, d);
                            runner._lessDen[at] = MathF.Max(TensorPrimitives.Dot(phi, state.Z.AsSpan(g * r, r)), 1e-6f);
                        }
                }
            }
        }
    }

    private void Head(ReadOnlySpan<StepSequence> batch, int total, LogitsRows rows, Span<float> logits)
    {
        int h = _hidden;
        var weights = _model.Weights;
        if (rows == LogitsRows.All)
        {
            RmsNorm.Apply(_x.AsSpan(0, total * h), weights.FinalNorm, _model.Config.RmsNormEps, _xn.AsSpan(0, total * h), total);
            MatMul.Multiply(_xn.AsSpan(0, total * h), weights.Head, logits[..(total * _model.Vocab)], total);
            return;
        }
        for (int s = 0; s < batch.Length; s++)
        {
            int last = _rowStarts[s] + batch[s].TokenCount - 1;
            _x.AsSpan(last * h, h).CopyTo(_xIn.AsSpan(s * h, h));
        }
        int n = batch.Length;
        RmsNorm.Apply(_xIn.AsSpan(0, n * h), weights.FinalNorm, _model.Config.RmsNormEps, _xn.AsSpan(0, n * h), n);
        MatMul.Multiply(_xn.AsSpan(0, n * h), weights.Head, logits[..(n * _model.Vocab)], n);
    }
}
