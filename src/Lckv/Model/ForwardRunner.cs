using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
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
/// scratch buffers, sized once for at most MaxRows rows per step.
/// </summary>
public sealed class ForwardRunner
{
    private readonly LlamaModel _model;
    private readonly KvCache _cache;
    private readonly int _hidden, _qDim, _kvDim, _inter;
    private readonly float[] _x, _xIn, _xn, _q, _k, _v, _att, _gate, _up;
    private readonly int[] _positions;
    private readonly AttentionSequence[] _attSeqs;
    private readonly int[] _starts, _rowStarts;
    private readonly MaskRule[] _masks;
    private readonly float _scale;
    private readonly IReadOnlyList<PlanPass> _plan;   // whole sequences (multi-token steps)
    private readonly IReadOnlyList<PlanPass> _onePass; // one token per sequence: every layer once

    public int MaxRows { get; }
    public int MaxSequences { get; }
    public PrefillMode Prefill { get; set; } = PrefillMode.Auto;
    public LlamaModel Model => _model;
    public KvCache Cache => _cache;

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
        _attSeqs = new AttentionSequence[size.Sequences];
        _starts = new int[size.Sequences];
        _rowStarts = new int[size.Sequences];
        _masks = new MaskRule[size.Layers];
        for (int i = 0; i < c.NumHiddenLayers; i++) _masks[i] = model.Map.Mask(i, c.ForceNoDiag, c.SlidingWindow);
        for (int kv = 0; kv < cache.KvLayers; kv++)
        {
            int ring = cache.RingBlocks(kv);
            if (ring > 0 && (long)ring * cache.Layout.BlockSize < (long)c.SlidingWindow + maxRows + cache.Layout.BlockSize)
                throw new ArgumentException($"KV layer {kv}'s ring of {ring} blocks is too small for steps of {maxRows} rows (create the cache with LlamaModel.CreateCache)");
        }
        _scale = 1f / MathF.Sqrt(c.HeadDim);
        _plan = IterationPlan.Build(model.Map, c.ForwardPasses, c.BackwardPasses);
        _onePass = [new PlanPass(0, model.Map.LayerCount, false, true)];
    }

    /// <summary>
    /// Bytes of the scratch buffers a runner for this config allocates (array elements, headers excluded): three
    /// [rows, hidden], two [rows, heads*head_dim], two [rows, kv_heads*head_dim], two [rows, intermediate] f32 buffers,
    /// the row positions, the per-sequence tables and one mask per layer. The constructor allocates from the same sizes.
    /// </summary>
    public static long ScratchBytes(ModelConfig config, int maxRows, int maxSequences)
        => ScratchSizes.For(config, maxRows, maxSequences).Bytes;

    /// <summary>What this runner's scratch arrays actually hold, summed from their lengths (equals ScratchBytes).</summary>
    public long AllocatedScratchBytes
        => sizeof(float) * ((long)_x.Length + _xIn.Length + _xn.Length + _q.Length + _k.Length + _v.Length + _att.Length + _gate.Length + _up.Length)
           + sizeof(int) * ((long)_positions.Length + _starts.Length + _rowStarts.Length)
           + (long)Unsafe.SizeOf<AttentionSequence>() * _attSeqs.Length + (long)Unsafe.SizeOf<MaskRule>() * _masks.Length;

    /// <summary>Element counts of every scratch array; the one place the constructor and ScratchBytes read them from.</summary>
    private readonly record struct ScratchSizes(int Rows, int Sequences, int Layers, int Hidden, int Query, int KeyValue, int Intermediate)
    {
        public static ScratchSizes For(ModelConfig c, int maxRows, int maxSequences)
        {
            if (maxRows <= 0) throw new ArgumentOutOfRangeException(nameof(maxRows), maxRows, "a runner needs at least one row");
            if (maxSequences <= 0) throw new ArgumentOutOfRangeException(nameof(maxSequences), maxSequences, "a runner needs at least one sequence");
            return new ScratchSizes(maxRows, maxSequences, c.NumHiddenLayers, checked(maxRows * c.HiddenSize),
                checked(maxRows * c.NumAttentionHeads * c.HeadDim), checked(maxRows * c.NumKeyValueHeads * c.HeadDim),
                checked(maxRows * c.IntermediateSize));
        }

        public long Bytes
            => sizeof(float) * (3L * Hidden + 2L * Query + 2L * KeyValue + 2L * Intermediate)
               + sizeof(int) * ((long)Rows + 2L * Sequences)
               + (long)Unsafe.SizeOf<AttentionSequence>() * Sequences + (long)Unsafe.SizeOf<MaskRule>() * Layers;
    }

    /// <summary>
    /// Evaluates the new tokens of each sequence (tokens: the sequences' tokens concatenated in batch order), writes
    /// their KV at positions Length(seq).., advances each sequence's length, and writes logits
    /// ([rows, vocab]: every token, or the last of each sequence) into logits. The caller reserves cache space first.
    /// </summary>
    public void Run(ReadOnlySpan<StepSequence> batch, ReadOnlySpan<int> tokens, LogitsRows rows, Span<float> logits)
    {
        int total = Validate(batch, tokens, rows, logits);
        var map = _model.Map;
        bool multi = false;
        foreach (var s in batch) multi |= s.TokenCount > 1;
        if (multi && map.AnyAttendsTop && !UsePlan(batch))
        {
            RunSequential(batch, tokens, rows, logits);
            return;
        }
        var plan = multi ? _plan : _onePass;
        Prepare(batch, total);
        Embed(tokens, total);
        for (int p = 0; p < plan.Count; p++)
        {
            var pass = plan[p];
            bool firstOfGroup = p == 0 || plan[p - 1].Start != pass.Start;
            // every pass of a group starts from the group's input; only the last one advances the hidden state
            if (firstOfGroup && !pass.Advances) Array.Copy(_x, _xIn, total * _hidden);
            for (int layer = pass.Start; layer < pass.End; layer++)
                RunLayer(layer, batch, total, zeroUpward: multi && firstOfGroup);
            if (!pass.Advances) Array.Copy(_xIn, _x, total * _hidden);
        }
        for (int s = 0; s < batch.Length; s++)
            _cache.SetLength(batch[s].SequenceId, _starts[s] + batch[s].TokenCount);
        Head(batch, total, rows, logits);
    }

    private bool UsePlan(ReadOnlySpan<StepSequence> batch)
    {
        var c = _model.Config;
        if (Prefill == PrefillMode.Sequential || (Prefill == PrefillMode.Auto && c.UseSequential)) return false;
        for (int s = 0; s < batch.Length; s++)
        {
            // the plan evaluates whole sequences from position 0; a continuation goes token by token
            if (_cache.Length(batch[s].SequenceId) != 0) return false;
            // the prefill rule: a prompt of at most m+b tokens goes token by token
            if (Prefill == PrefillMode.Auto && batch[s].TokenCount <= c.ForwardPasses + c.BackwardPasses) return false;
        }
        return true;
    }

    /// <summary>Token by token for every sequence: the exact definition (§5), used when the plan does not apply.</summary>
    private void RunSequential(ReadOnlySpan<StepSequence> batch, ReadOnlySpan<int> tokens, LogitsRows rows, Span<float> logits)
    {
        int maxLen = 0;
        foreach (var s in batch) maxLen = Math.Max(maxLen, s.TokenCount);
        Span<StepSequence> one = stackalloc StepSequence[batch.Length];
        Span<int> stepTokens = stackalloc int[batch.Length];
        Span<int> stepToBatch = stackalloc int[batch.Length];
        Span<int> tokenStart = stackalloc int[batch.Length];
        Span<int> logitRow = stackalloc int[batch.Length];
        int v = _model.Vocab;
        for (int s = 0, t = 0, r = 0; s < batch.Length; s++)
        {
            tokenStart[s] = t;
            t += batch[s].TokenCount;
            logitRow[s] = r;
            r += rows == LogitsRows.All ? batch[s].TokenCount : 1;
        }
        var stepLogits = new float[batch.Length * v];
        for (int t = 0; t < maxLen; t++)
        {
            int n = 0;
            for (int s = 0; s < batch.Length; s++)
            {
                if (t >= batch[s].TokenCount) continue;
                one[n] = new StepSequence(batch[s].SequenceId, 1);
                stepTokens[n] = tokens[tokenStart[s] + t];
                stepToBatch[n++] = s;
            }
            Run(one[..n], stepTokens[..n], LogitsRows.Last, stepLogits);
            for (int j = 0; j < n; j++)
            {
                int s = stepToBatch[j];
                bool want = rows == LogitsRows.All || t == batch[s].TokenCount - 1;
                if (!want) continue;
                int dst = rows == LogitsRows.All ? logitRow[s] + t : logitRow[s];
                stepLogits.AsSpan(j * v, v).CopyTo(logits.Slice(dst * v, v));
            }
        }
    }

    private int Validate(ReadOnlySpan<StepSequence> batch, ReadOnlySpan<int> tokens, LogitsRows rows, Span<float> logits)
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
        int logitRows = rows == LogitsRows.All ? total : batch.Length;
        if (logits.Length < (long)logitRows * _model.Vocab) throw new ArgumentException("logits buffer too small");
        foreach (int id in tokens)
            if ((uint)id >= (uint)_model.Vocab) throw new LckvException($"token id {id} is outside the vocabulary (size {_model.Vocab})");
        return total;
    }

    private void Prepare(ReadOnlySpan<StepSequence> batch, int total)
    {
        if (total > MaxRows) throw new ArgumentException($"{total} rows exceed the runner's {MaxRows}; split the step");
        for (int s = 0, row = 0; s < batch.Length; s++)
        {
            int start = _cache.Length(batch[s].SequenceId);
            _starts[s] = start;
            _rowStarts[s] = row;
            for (int t = 0; t < batch[s].TokenCount; t++) _positions[row + t] = start + t;
            row += batch[s].TokenCount;
        }
    }

    private void Embed(ReadOnlySpan<int> tokens, int total)
    {
        for (int r = 0; r < total; r++) _model.Weights.Embed.ReadRow(tokens[r], _x.AsSpan(r * _hidden, _hidden));
    }

    private void RunLayer(int layer, ReadOnlySpan<StepSequence> batch, int total, bool zeroUpward)
    {
        var w = _model.Weights.Layers[layer];
        var map = _model.Map;
        var cfg = _model.Config;
        int h = _hidden;
        var x = _x.AsSpan(0, total * h);
        var xn = _xn.AsSpan(0, total * h);
        var positions = _positions.AsSpan(0, total);
        RmsNorm.Apply(x, w.InputNorm, cfg.RmsNormEps, xn, total);
        var q = _q.AsSpan(0, total * _qDim);
        bool computesKv = map.ComputesKv(layer);
        var k = _k.AsSpan(0, total * _kvDim);
        var v = _v.AsSpan(0, total * _kvDim);
        if (computesKv) MatMul.Multiply(xn, w.Q, q, w.K!.Value, k, w.V!.Value, v, total);
        else MatMul.Multiply(xn, w.Q, q, total);
        Numerics.Rope.Apply(q, positions, cfg.NumAttentionHeads, _model.Rope);
        if (computesKv)
        {
            Numerics.Rope.Apply(k, positions, cfg.NumKeyValueHeads, _model.Rope);
            int kvIndex = map.KvIndex(layer);
            for (int s = 0; s < batch.Length; s++)
            {
                int r0 = _rowStarts[s], n = batch[s].TokenCount;
                _cache.Write(batch[s].SequenceId, kvIndex, _starts[s], k.Slice(r0 * _kvDim, n * _kvDim), v.Slice(r0 * _kvDim, n * _kvDim));
            }
        }
        var att = _att.AsSpan(0, total * _qDim);
        if (zeroUpward && map.AttendsTop(layer))
        {
            att.Clear(); // first pass of a group: the upward KV is zeros, so the attention output is exactly zero
        }
        else
        {
            int readKv = map.ReadsKvIndex(layer);
            for (int s = 0; s < batch.Length; s++)
            {
                int n = batch[s].TokenCount;
                _attSeqs[s] = new AttentionSequence(_rowStarts[s], n, _starts[s], _cache.View(batch[s].SequenceId, readKv, n));
            }
            var pool = _cache.Pool;
            Attention.Compute(q, cfg.NumAttentionHeads, KvStorage.Paged(pool.Base, pool.Layout), _attSeqs.AsSpan(0, batch.Length),
                _masks[layer], _scale, att);
        }
        MatMul.Multiply(att, w.O, xn, total);
        TensorPrimitives.Add(x, xn, x);
        RmsNorm.Apply(x, w.PostNorm, cfg.RmsNormEps, xn, total);
        var gate = _gate.AsSpan(0, total * _inter);
        var up = _up.AsSpan(0, total * _inter);
        MatMul.Multiply(xn, w.Gate, gate, w.Up, up, total);
        Activations.SwiGlu(gate, up, gate);
        MatMul.Multiply(gate, w.Down, xn, total);
        TensorPrimitives.Add(x, xn, x);
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
