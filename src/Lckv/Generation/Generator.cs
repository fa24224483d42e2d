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
    /// <summary>Seconds of each decode step, in order (the per-token latency at batch 1).</summary>
    public IReadOnlyList<double> DecodeStepSeconds { get; init; } = [];
}

public sealed record GenerationOutput(IReadOnlyList<SequenceResult> Sequences, GenerationTiming Timing);

/// <summary>Receives each new token of sequence index as it is chosen, with the text it completes (may be empty).</summary>
public delegate void TokenCallback(int sequence, int token, string text);

/// <summary>
/// Generates continuations for a batch of prompts of different lengths through a <see cref="GenerationEngine"/>:
/// prompts are evaluated in chunks (whole for layouts with upward-reading layers), sequences decode together, each
/// with its own seeded sampler, and a sequence that finishes frees its KV at once.
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
        if (options.StopStrings.Any(string.IsNullOrEmpty))
            throw new LckvException("a stop string is empty; it would match before the first token") { Settings = [nameof(GenerateOptions.StopStrings)] };
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

        int n = prompts.Count;
        var engine = new GenerationEngine(_model, _cache, new EngineOptions
        {
            MaxStepTokens = _maxRows, MaxSequences = n, MaxPromptTokens = prompts.Max(p => p.Length), Prefill = Prefill,
        });
        var sequences = new EngineSequence[n];
        try
        {
            var sp = options.Sampling;
            for (int i = 0; i < n; i++)
            {
                int index = i;
                sequences[i] = engine.Admit(new GenerationRequest
                {
                    Prompt = prompts[i], MaxNewTokens = options.MaxTokens,
                    Sampling = sp with { Seed = sp.Seed is ulong s ? s + (ulong)i : null },
                    StopIds = options.StopIds, StopStrings = options.StopStrings, Tokenizer = tokenizer,
                    OnToken = onToken is null ? null : (_, token, text) => onToken(index, token, text),
                });
            }
            var timing = engine.RunToEnd();
            var results = new SequenceResult[n];
            for (int i = 0; i < n; i++)
            {
                var s = sequences[i];
                results[i] = new SequenceResult { PromptIds = prompts[i], Finish = s.Finish ?? FinishReason.Length, Text = s.Text };
                results[i].OutputIds.AddRange(s.Output);
            }
            return new GenerationOutput(results, timing);
        }
        finally
        {
            foreach (var s in sequences)
                if (s is not null) engine.Retire(s);
        }
    }

    /// <summary>
    /// Rows of the largest step a generation takes: prefill chunks of maxStepRows, or whole prompts for layouts with
    /// upward-reading layers (the plan needs the whole sequence). Size the cache's rings with it (LlamaModel.CreateCache).
    /// </summary>
    public static int StepRows(LlamaModel model, IReadOnlyList<int[]> prompts, int maxStepRows = 512)
        => new EngineOptions { MaxStepTokens = maxStepRows, MaxPromptTokens = prompts.Count > 0 ? prompts.Max(p => p.Length) : 0 }.StepRows(model.Map);

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
}
