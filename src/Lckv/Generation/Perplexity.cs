using Lckv.Cache;
using Lckv.Model;
using Lckv.Numerics;

namespace Lckv.Generation;

public sealed record PerplexityResult(double Perplexity, double MeanNll, long ScoredTokens, int Windows, double Seconds)
{
    public double TokensPerSecond => Seconds > 0 ? ScoredTokens / Seconds : 0;

    /// <summary>The negative log-likelihood of each token of the stream by position (NaN where unscored: the first).</summary>
    public IReadOnlyList<double> TokenNll { get; init; } = [];

    /// <summary>Perplexity of each run of `length` stream positions that has scored tokens: (first position, scored
    /// tokens, perplexity).</summary>
    public IEnumerable<(int From, int Tokens, double Perplexity)> Segments(int length)
    {
        if (length < 1) throw new LckvException($"a segment must hold at least 1 token, got {length}");
        for (int from = 0; from < TokenNll.Count; from += length)
        {
            double sum = 0;
            int n = 0;
            for (int p = from; p < Math.Min(from + length, TokenNll.Count); p++)
                if (!double.IsNaN(TokenNll[p])) { sum += TokenNll[p]; n++; }
            if (n > 0) yield return (from, n, Math.Exp(sum / n));
        }
    }
}

/// <summary>
/// Perplexity over a token stream with a context window and a stride (the Hugging Face recipe): windows of
/// `window` tokens start every `stride` tokens; each scores only the tokens not scored by an earlier window. Each
/// window is evaluated as a whole sequence the way the model defines one (the iteration plan for upward layouts).
/// </summary>
public static class Perplexity
{
    /// <param name="eviction">with a policy, each window is teacher-forced decode: every token its own step from
    /// position 0, the policy running after each (kv-compression.md §0); windows run side by side as a batch</param>
    public static PerplexityResult Evaluate(LlamaModel model, ReadOnlySpan<int> ids, int window, int stride,
        DType kvDType = DType.F32, Action<int, int>? progress = null, EvictionSettings? eviction = null)
    {
        if (ids.Length < 2) throw new LckvException($"perplexity needs at least 2 tokens, got {ids.Length}");
        if (window < 2) throw new LckvException($"context length must be at least 2, got {window}");
        if (window > model.ContextLength) throw new LckvException($"context length {window} exceeds the model's {model.ContextLength}");
        if (stride < 1 || stride > window) throw new LckvException($"stride must be in [1, {window}], got {stride}");
        foreach (int id in ids)
            if ((uint)id >= (uint)model.Vocab) throw new LckvException($"token id {id} is outside the vocabulary (size {model.Vocab})");

        const int blockSize = 16;
        if (eviction is { Kind: not EvictionKind.None }) return Decoding(model, ids.ToArray(), window, stride, kvDType, progress, eviction);
        bool whole = model.Map.AnyAttendsTop;
        var engineOptions = new EngineOptions
        {
            MaxStepTokens = whole ? window : Math.Min(window, 256), MaxSequences = 1, MaxPromptTokens = window,
            Prefill = model.Config.UseSequential ? PrefillMode.Sequential : PrefillMode.Plan,
        };
        int maxRows = engineOptions.StepRows(model.Map);
        var layout = model.KvLayout(blockSize, kvDType);
        using var pool = new KvBlockPool(layout, model.KvBlocksFor(window, blockSize, maxRows) * layout.BlockBytes);
        var engine = new GenerationEngine(model, model.CreateCache(pool, maxRows), engineOptions);

        var sw = System.Diagnostics.Stopwatch.StartNew();
        double nll = 0;
        long scored = 0;
        int windows = 0, prevEnd = 0;
        var perToken = new double[ids.Length];
        Array.Fill(perToken, double.NaN);
        int total = (int)Math.Ceiling(Math.Max(1, ids.Length - window) / (double)stride) + 1;
        for (int begin = 0; ; begin += stride)
        {
            int end = Math.Min(begin + window, ids.Length);
            int firstScored = Math.Max(prevEnd, begin + 1); // predict token p from tokens < p
            var tokens = ids[begin..end].ToArray();
            // each window is one teacher-forced sequence; the engine hands over the logits of every position it evaluates
            var seq = engine.Admit(new GenerationRequest
            {
                Prompt = tokens, Logits = LogitsRows.All,
                OnLogits = (_, first, rows) =>
                {
                    int v = model.Vocab;
                    for (int r = 0; r < rows.Length / v; r++)
                    {
                        int p = first + r + 1; // the token these logits predict, within the window
                        if (begin + p < firstScored || p >= tokens.Length) continue;
                        var row = rows.Slice(r * v, v);
                        double x = Softmax.LogSumExp(row) - row[tokens[p]];
                        nll += x;
                        perToken[begin + p] = x;
                        scored++;
                    }
                },
            });
            while (engine.HasWork) engine.Step();
            engine.Retire(seq);
            windows++;
            progress?.Invoke(windows, total);
            prevEnd = end;
            if (end == ids.Length) break;
        }
        double mean = nll / Math.Max(1, scored);
        return new PerplexityResult(Math.Exp(mean), mean, scored, windows, sw.Elapsed.TotalSeconds) { TokenNll = perToken };
    }

    /// <summary>Windows side by side, each fed one token per step; windows from Hugging Face's recipe as above.</summary>
    private static PerplexityResult Decoding(LlamaModel model, int[] ids, int window, int stride, DType kvDType,
        Action<int, int>? progress, EvictionSettings eviction)
    {
        const int blockSize = 16, batch = 16;
        var windows = new List<(int Begin, int End, int FirstScored)>();
        for (int begin = 0, prevEnd = 0; ; begin += stride)
        {
            int end = Math.Min(begin + window, ids.Length);
            windows.Add((begin, end, Math.Max(prevEnd, begin + 1)));
            prevEnd = end;
            if (end == ids.Length) break;
        }
        int sequences = Math.Min(batch, windows.Count);
        var layout = model.KvLayout(blockSize, kvDType);
        using var pool = new KvBlockPool(layout, sequences * model.KvBlocksFor(window, blockSize, 1, eviction) * layout.BlockBytes);
        var engine = new GenerationEngine(model, model.CreateCache(pool, 1, eviction),
            new EngineOptions { MaxStepTokens = sequences, MaxSequences = sequences, MaxPromptTokens = 1 });
        var sw = System.Diagnostics.Stopwatch.StartNew();
        double nll = 0;
        long scored = 0;
        int next = 0, done = 0, v = model.Vocab;
        var perToken = new double[ids.Length];
        Array.Fill(perToken, double.NaN);
        var active = new List<(EngineSequence Sequence, int Window)>(sequences);
        while (done < windows.Count)
        {
            while (active.Count < sequences && next < windows.Count)
            {
                var (begin, end, firstScored) = windows[next];
                var seq = engine.Admit(new GenerationRequest
                {
                    Prompt = [ids[begin]], MaxNewTokens = end - begin - 1,
                    // the logits of the token at `position` predict the one after it
                    OnLogits = (_, position, row) =>
                    {
                        int p = begin + position + 1;
                        if (p < firstScored || p >= end) return;
                        double x = Softmax.LogSumExp(row) - row[ids[p]];
                        nll += x;
                        perToken[p] = x;
                        scored++;
                    },
                });
                active.Add((seq, next++));
            }
            if (engine.Step().Sequences == 0)
                throw new InvalidOperationException($"the engine made no progress with {active.Count} windows active ({string.Join(", ", active.Select(x => $"{x.Sequence.Position}/{x.Sequence.Tokens.Count} {x.Sequence.Finish}"))})");
            for (int i = active.Count - 1; i >= 0; i--)
            {
                var (seq, w) = active[i];
                var (begin, end, _) = windows[w];
                if (begin + seq.Position < end) engine.Feed(seq, [ids[begin + seq.Position]]);
                else
                {
                    engine.Retire(seq);
                    active.RemoveAt(i);
                    done++;
                    progress?.Invoke(done, windows.Count);
                }
            }
        }
        double mean = nll / Math.Max(1, scored);
        return new PerplexityResult(Math.Exp(mean), mean, scored, windows.Count, sw.Elapsed.TotalSeconds) { TokenNll = perToken };
    }
}
