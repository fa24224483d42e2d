using System.Diagnostics;
using System.Runtime.InteropServices;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Model;

namespace Lckv.Generation;

/// <summary>Per-call settings of a generation.</summary>
public sealed record GenerateOptions
{
    public int MaxTokens { get; init; } = 128;
    public SamplingParams Sampling { get; init; } = new() { Temperature = 0 };
    /// <summary>Token ids that end a sequence (the EOS ids of the checkpoint, usually). Not part of the output.</summary>
    public IReadOnlyList<int> StopIds { get; init; } = [];
    /// <summary>Strings that end a sequence; the text is cut before them. Needs a tokenizer.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];
}

public enum FinishReason { Length, Eos, StopString, Context }

/// <summary>One sequence's outcome.</summary>
public sealed class SequenceResult
{
    public required int[] PromptIds { get; init; }
    public List<int> OutputIds { get; } = [];
    public FinishReason Finish { get; internal set; }
    /// <summary>Decoded output (when a tokenizer was given), cut before a stop string.</summary>
    public string? Text { get; internal set; }
}

/// <summary>Timing of a generation call (tokenization excluded).</summary>
public sealed record GenerationTiming(int PrefillTokens, double PrefillSeconds, int DecodeTokens, double DecodeSeconds, int DecodeSteps)
{
    public double PrefillTokensPerSecond => PrefillSeconds > 0 ? PrefillTokens / PrefillSeconds : 0;
    public double DecodeTokensPerSecond => DecodeSeconds > 0 ? DecodeTokens / DecodeSeconds : 0;
}

public sealed record GenerationOutput(IReadOnlyList<SequenceResult> Sequences, GenerationTiming Timing);

/// <summary>Receives each new token of sequence index as it is chosen, with the text it completes (may be empty).</summary>
public delegate void TokenCallback(int sequence, int token, string text);

/// <summary>
/// Generates continuations for a batch of prompts of different lengths: prefill (batched, chunked where exact), then
/// one decode step for all live sequences at a time, each sequence with its own seeded sampler.
/// </summary>
public sealed class Generator
{
    private readonly LlamaModel _model;
    private readonly KvCache _cache;
    private readonly int _maxRows;

    /// <param name="maxStepRows">most tokens evaluated in one step (prefill chunks)</param>
    public Generator(LlamaModel model, KvCache cache, int maxStepRows = 512)
    {
        _model = model;
        _cache = cache;
        _maxRows = maxStepRows;
    }

    public PrefillMode Prefill { get; set; } = PrefillMode.Auto;

    public GenerationOutput Generate(IReadOnlyList<int[]> prompts, GenerateOptions options, TextTokenizer? tokenizer = null,
        TokenCallback? onToken = null)
    {
        options.Sampling.Validate();
        if (options.MaxTokens < 0) throw new LckvException($"max_tokens must be >= 0, got {options.MaxTokens}");
        if (options.StopStrings.Count > 0 && tokenizer is null) throw new LckvException("stop strings need a tokenizer");
        if (prompts.Count == 0) return new GenerationOutput([], new GenerationTiming(0, 0, 0, 0, 0));
        int ctx = _model.ContextLength;
        for (int i = 0; i < prompts.Count; i++)
        {
            if (prompts[i].Length == 0) throw new LckvException($"prompt {i} is empty");
            if (prompts[i].Length > ctx)
                throw new LckvException($"prompt {i} has {prompts[i].Length} tokens, longer than the context length {ctx}");
            foreach (int id in prompts[i])
                if ((uint)id >= (uint)_model.Vocab) throw new LckvException($"prompt {i} has token id {id}, outside the vocabulary (size {_model.Vocab})");
        }
        CheckBudget(prompts, options.MaxTokens);

        int n = prompts.Count, vocab = _model.Vocab;
        var results = new SequenceResult[n];
        var seqIds = new int[n];
        var samplers = new Sampler[n];
        var history = new List<int>[n];
        var decoders = new StreamingDecoder?[n];
        var texts = new System.Text.StringBuilder?[n];
        for (int i = 0; i < n; i++)
        {
            results[i] = new SequenceResult { PromptIds = prompts[i] };
            var sp = options.Sampling;
            samplers[i] = new Sampler(sp with { Seed = sp.Seed is ulong s ? s + (ulong)i : null }, vocab);
            history[i] = new List<int>(prompts[i].Length + options.MaxTokens);
            history[i].AddRange(prompts[i]);
            decoders[i] = tokenizer?.CreateStreamingDecoder();
            texts[i] = tokenizer is null ? null : new System.Text.StringBuilder();
        }
        try
        {
            for (int i = 0; i < n; i++) seqIds[i] = _cache.CreateSequence();
            bool upwardPlan = _model.Map.AnyAttendsTop;
            int longest = prompts.Max(p => p.Length);
            var runner = new ForwardRunner(_model, _cache, StepRows(_model, prompts, _maxRows), n) { Prefill = Prefill };
            var lastLogits = new float[n * vocab];

            // prefill
            var sw = Stopwatch.StartNew();
            Prefill_(prompts, seqIds, runner, lastLogits, upwardPlan);
            double prefillSeconds = sw.Elapsed.TotalSeconds;
            int prefillTokens = prompts.Sum(p => p.Length);

            // decode
            sw.Restart();
            var live = new List<int>(n);
            var stepLogits = new float[n * vocab];
            var batch = new StepSequence[n];
            var tokens = new int[n];
            int decodeTokens = 0, steps = 0;
            for (int i = 0; i < n; i++)
            {
                if (options.MaxTokens == 0) { results[i].Finish = FinishReason.Length; continue; }
                live.Add(i);
            }
            // choose the first token of each sequence from the prefill logits
            var current = new int[n];
            foreach (int i in live.ToArray())
            {
                int tok = samplers[i].Sample(lastLogits.AsSpan(i * vocab, vocab), CollectionsMarshal.AsSpan(history[i]));
                if (Accept(i, tok)) live.Remove(i);
            }
            while (live.Count > 0)
            {
                for (int j = 0; j < live.Count; j++)
                {
                    int i = live[j];
                    batch[j] = new StepSequence(seqIds[i], 1);
                    tokens[j] = current[i];
                    if (!_cache.TryReserve(seqIds[i], _cache.Length(seqIds[i]) + 1))
                        throw new LckvException("the KV cache budget is exhausted (raise the KV budget or lower the batch)");
                }
                runner.Run(batch.AsSpan(0, live.Count), tokens.AsSpan(0, live.Count), LogitsRows.Last, stepLogits);
                steps++;
                decodeTokens += live.Count;
                for (int j = live.Count - 1; j >= 0; j--)
                {
                    int i = live[j];
                    int tok = samplers[i].Sample(stepLogits.AsSpan(j * vocab, vocab), CollectionsMarshal.AsSpan(history[i]));
                    if (Accept(i, tok)) live.RemoveAt(j);
                }
                // keep batch order stable: live was edited from the end, so it stays sorted
            }
            double decodeSeconds = sw.Elapsed.TotalSeconds;
            for (int i = 0; i < n; i++)
                if (texts[i] is { } sb)
                {
                    if (results[i].Finish != FinishReason.StopString) sb.Append(decoders[i]!.Flush());
                    results[i].Text = sb.ToString();
                }
            return new GenerationOutput(results, new GenerationTiming(prefillTokens, prefillSeconds, decodeTokens, decodeSeconds, steps));

            // records a chosen token; true when sequence i is finished
            bool Accept(int i, int tok)
            {
                var r = results[i];
                if (options.StopIds.Contains(tok)) { r.Finish = FinishReason.Eos; return true; }
                r.OutputIds.Add(tok);
                history[i].Add(tok);
                current[i] = tok;
                if (decoders[i] is { } dec)
                {
                    string piece = dec.Push(tok);
                    var sb = texts[i]!;
                    int before = sb.Length;
                    sb.Append(piece);
                    foreach (var stop in options.StopStrings)
                    {
                        int from = Math.Max(0, before - stop.Length + 1);
                        int at = sb.ToString(from, sb.Length - from).IndexOf(stop, StringComparison.Ordinal);
                        if (at < 0) continue;
                        int cut = from + at;
                        if (cut > before) onToken?.Invoke(i, tok, sb.ToString(before, cut - before));
                        sb.Length = cut;
                        r.Finish = FinishReason.StopString;
                        return true;
                    }
                    onToken?.Invoke(i, tok, piece);
                }
                else onToken?.Invoke(i, tok, "");
                if (r.OutputIds.Count >= options.MaxTokens) { r.Finish = FinishReason.Length; return true; }
                if (_cache.Length(seqIds[i]) + 1 > ctx) { r.Finish = FinishReason.Context; return true; }
                return false;
            }
        }
        finally
        {
            foreach (int id in seqIds)
                if (_cache.Contains(id)) _cache.Remove(id);
        }
    }

    /// <summary>
    /// Rows of the largest step a generation takes: prefill chunks of maxStepRows, or whole prompts for layouts with
    /// upward-reading layers (the plan needs the whole sequence). Size the cache's rings with it (LlamaModel.CreateCache).
    /// </summary>
    public static int StepRows(LlamaModel model, IReadOnlyList<int[]> prompts, int maxStepRows = 512)
        => Math.Max(maxStepRows, model.Map.AnyAttendsTop && prompts.Count > 0 ? prompts.Max(p => p.Length) : 1);

    /// <summary>Fails early, with the numbers, when the prompts and their continuations cannot fit the KV budget.</summary>
    private void CheckBudget(IReadOnlyList<int[]> prompts, int maxTokens)
    {
        var pool = _cache.Pool;
        long need = 0;
        foreach (var p in prompts)
        {
            long tokens = Math.Min((long)p.Length + maxTokens, _model.ContextLength);
            need += _cache.BlocksForTokens((int)tokens);
        }
        if (need > pool.FreeBlocks)
            throw new LckvException($"{prompts.Count} sequence(s) need {need} KV blocks ({need * pool.Layout.BlockBytes / 1048576.0:F1} MiB) but the KV budget has {pool.FreeBlocks} free ({pool.FreeBlocks * pool.Layout.BlockBytes / 1048576.0:F1} MiB)");
    }

    /// <summary>
    /// Evaluates the prompts, leaving the logits of each prompt's last token in lastLogits. Standard layouts split
    /// prompts into steps of at most maxRows tokens (exact, since attention is causal); a layout with upward-reading
    /// layers evaluates each prompt whole in one step (the plan needs the whole sequence).
    /// </summary>
    private void Prefill_(IReadOnlyList<int[]> prompts, int[] seqIds, ForwardRunner runner, float[] lastLogits, bool wholePrompts)
    {
        int n = prompts.Count, vocab = _model.Vocab;
        var batch = new List<StepSequence>(n);
        var owners = new List<int>(n);
        var tokens = new List<int>(runner.MaxRows);
        var logits = new float[n * vocab];
        var done = new int[n];
        int next = 0;
        while (next < n)
        {
            batch.Clear(); owners.Clear(); tokens.Clear();
            int room = runner.MaxRows;
            for (int i = next; i < n && room > 0; i++)
            {
                int left = prompts[i].Length - done[i];
                int take = wholePrompts ? (left <= room || batch.Count == 0 ? left : 0) : Math.Min(left, room);
                if (take == 0) break;
                if (!_cache.TryReserve(seqIds[i], done[i] + take))
                    throw new LckvException("the KV cache budget is exhausted during prefill (raise the KV budget or lower the batch)");
                batch.Add(new StepSequence(seqIds[i], take));
                owners.Add(i);
                tokens.AddRange(prompts[i].AsSpan(done[i], take));
                room -= take;
            }
            runner.Run(CollectionsMarshal.AsSpan(batch), CollectionsMarshal.AsSpan(tokens), LogitsRows.Last, logits);
            for (int j = 0; j < batch.Count; j++)
            {
                int i = owners[j];
                done[i] += batch[j].TokenCount;
                if (done[i] == prompts[i].Length) logits.AsSpan(j * vocab, vocab).CopyTo(lastLogits.AsSpan(i * vocab, vocab));
            }
            while (next < n && done[next] == prompts[next].Length) next++;
        }
    }
}
