using Lckv.Cache;
using Lckv.Formats;
using Lckv.Model;
using Lckv.Numerics;

namespace Lckv.Generation;

/// <summary>The settings of one throughput experiment: a model shape, a total memory budget and a workload.</summary>
public sealed record ThroughputSettings
{
    /// <summary>The model shape (its layer_types is replaced by each layout's).</summary>
    public required ModelConfig Shape { get; init; }
    /// <summary>A name for the shape in reports (a preset name).</summary>
    public string ShapeName { get; init; } = "model";
    public DType WeightDType { get; init; } = DType.BF16;
    /// <summary>Bytes that weights + runner scratch + logits + cache tables + KV must fit in.</summary>
    public long BudgetBytes { get; init; }
    /// <summary>What the budget covers: everything (weights + KV + buffers), or the KV cache alone.</summary>
    public BudgetKind BudgetKind { get; init; } = BudgetKind.Total;
    public int PromptLength { get; init; } = 16;
    public int GenLength { get; init; } = 240;
    public DType KvDType { get; init; } = DType.F32;
    public int BlockSize { get; init; } = 16;
    /// <summary>Upper end of the batch search.</summary>
    public int MaxBatch { get; init; } = 512;
    /// <summary>Most prompt tokens evaluated in one prefill step (the engine's chunk).</summary>
    public int MaxStepRows { get; init; } = 512;
    public ulong Seed { get; init; } = 0;

    public int SequenceLength => PromptLength + GenLength;

    public void Validate()
    {
        if (PromptLength < 1) throw new LckvException($"the prompt length must be at least 1, got {PromptLength}");
        if (GenLength < 1) throw new LckvException($"the generation length must be at least 1, got {GenLength}");
        if (BlockSize < 1) throw new LckvException($"the block size must be at least 1, got {BlockSize}");
        if (MaxBatch < 1) throw new LckvException($"the batch cap must be at least 1, got {MaxBatch}");
        if (MaxStepRows < 1) throw new LckvException($"the prefill step must be at least 1 row, got {MaxStepRows}");
        if (BudgetBytes < 0) throw new LckvException($"the memory budget must not be negative, got {BudgetBytes}");
        if (!DTypes.IsFloat(WeightDType)) throw new LckvException("weights must be f32, f16 or bf16");
        KvRows.Check(KvDType, Shape.HeadDim);
    }
}

/// <summary>
/// What a throughput budget covers. Total: the whole process's model memory, so a layout that drops k/v projection
/// weights also spends those bytes on KV. KvOnly: the KV cache alone, as if every layout had the same weights (the
/// pure KV-size effect; close to a large accelerator where the weights are a small share of memory).
/// </summary>
public enum BudgetKind { Total, KvOnly }

/// <summary>
/// Where the bytes of a batch go: weights (in their dtype, each tensor 64-byte aligned as the model stores them), the
/// forward runner's scratch, the engine's logits buffer and samplers, the KV pool's and cache's tables, and the KV blocks.
/// </summary>
public sealed record MemoryAccount(int Batch, long WeightBytes, long ScratchBytes, long LogitsBytes, long TableBytes, long KvBytes)
{
    public long TotalBytes => WeightBytes + ScratchBytes + LogitsBytes + TableBytes + KvBytes;

    /// <summary>The bytes a budget of the given kind is charged.</summary>
    public long Charged(BudgetKind kind) => kind == BudgetKind.KvOnly ? KvBytes : TotalBytes;
}

/// <summary>One layout's result: its KV geometry, the largest batch that fits the budget and the measured run.</summary>
public sealed record ThroughputRow
{
    public required string Layout { get; init; }
    public required string LayerTypes { get; init; }
    public required int KvLayers { get; init; }
    public required long KvBytesPerToken { get; init; }
    /// <summary>Whether upward-reading layers make prefill use the iteration plan (m+b passes over the cyclic groups).</summary>
    public required bool UsesPlan { get; init; }
    /// <summary>The batch that was run: the largest that fits (or the batch asked for). 0 when not even one fits.</summary>
    public required int Batch { get; init; }
    /// <summary>True when Batch came from the search, false when it was given.</summary>
    public required bool Searched { get; init; }
    /// <summary>True when the search stopped at the cap, so Batch + 1 may still fit.</summary>
    public required bool Capped { get; init; }
    /// <summary>The accounting of Batch (what was allocated for the run).</summary>
    public required MemoryAccount Fit { get; init; }
    /// <summary>The accounting of Batch + 1 (over the budget when the search was not capped).</summary>
    public required MemoryAccount Next { get; init; }
    public required bool FitsBudget { get; init; }
    /// <summary>Bytes of the KV pool actually built for the run (its CapacityBytes).</summary>
    public long PoolBytes { get; init; }
    /// <summary>Batch the layout would reach with only the KV bytes llama's batch takes (set by the caller, 0 if unknown).</summary>
    public int BatchAtKvBytes { get; init; }
    public int PromptTokens { get; init; }
    public int GeneratedTokens { get; init; }
    public double PrefillSeconds { get; init; }
    public double DecodeSeconds { get; init; }
    public int DecodeTokens { get; init; }

    /// <summary>How many runs of this layout the times are the medians of (interleaved with the other layouts).</summary>
    public int Rounds { get; init; } = 1;
    /// <summary>The lowest and highest total tokens/s among those runs.</summary>
    public double TotalMin { get; init; }
    public double TotalMax { get; init; }

    public double TotalSeconds => PrefillSeconds + DecodeSeconds;

    /// <summary>
    /// One row for several runs of the same layout and batch: the median prefill and decode times (each on its own),
    /// with the range of total throughput. Runs of one layout interleaved with the others' see the same drift of the
    /// machine, so medians of rounds compare layouts more fairly than single runs.
    /// </summary>
    public static ThroughputRow Median(IReadOnlyList<ThroughputRow> runs)
    {
        if (runs.Count == 0) throw new ArgumentException("no runs", nameof(runs));
        static double Mid(IEnumerable<double> v)
        {
            var a = v.Order().ToArray();
            return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
        }
        var totals = runs.Select(r => r.TotalTokensPerSecond).ToArray();
        return runs[0] with
        {
            PrefillSeconds = Mid(runs.Select(r => r.PrefillSeconds)), DecodeSeconds = Mid(runs.Select(r => r.DecodeSeconds)),
            Rounds = runs.Count, TotalMin = totals.Min(), TotalMax = totals.Max(),
        };
    }

    /// <summary>batch * new tokens / total time including prefill (the paper's measure).</summary>
    public double TotalTokensPerSecond => TotalSeconds > 0 ? GeneratedTokens / TotalSeconds : 0;
    public double PrefillTokensPerSecond => PrefillSeconds > 0 ? PromptTokens / PrefillSeconds : 0;
    public double DecodeTokensPerSecond => DecodeSeconds > 0 ? DecodeTokens / DecodeSeconds : 0;
    /// <summary>Prefill seconds per prompt token (batch included: the whole prefill over every prompt token).</summary>
    public double PrefillSecondsPerToken => PromptTokens > 0 ? PrefillSeconds / PromptTokens : 0;
}

/// <summary>What the experiment is doing: the layout, the phase and its progress in tokens.</summary>
public readonly record struct ThroughputProgress(string Layout, string Phase, long Done, long Total);

/// <summary>
/// The paper's throughput experiment (LCKV Table 1): for each layout of one model shape, find the largest batch whose
/// weights, working buffers and KV fit a memory budget, build exactly that, and generate (greedy, no stop tokens)
/// prompt + gen tokens for every sequence of the batch, timing prefill and decode.
/// </summary>
public sealed class ThroughputBench
{
    private readonly ThroughputSettings _settings;
    private readonly Func<string, int, string> _layerTypes;

    /// <param name="layerTypes">maps a layout name (or a layer_types string) and a layer count to layer_types</param>
    public ThroughputBench(ThroughputSettings settings, Func<string, int, string>? layerTypes = null)
    {
        settings.Validate();
        _settings = settings;
        _layerTypes = layerTypes ?? ThroughputLayouts.LayerTypes;
    }

    public ThroughputSettings Settings => _settings;

    /// <summary>The shape's config with a layout's layer_types and the weight dtype.</summary>
    public ModelConfig ConfigFor(string layout)
    {
        var c = _settings.Shape;
        string types = _layerTypes(layout, c.NumHiddenLayers);
        var config = c with
        {
            ModelType = ModelConfig.LckvLlamaType,
            LayerTypes = types,
            TorchDtype = _settings.WeightDType switch { DType.BF16 => "bfloat16", DType.F16 => "float16", _ => "float32" },
        };
        config.Validate();
        return config;
    }

    /// <summary>Weight bytes as the model holds them: every tensor of the layout's weight table in the weight dtype,
    /// each padded to 64 bytes (layers that compute no KV have no k_proj/v_proj).</summary>
    public static long WeightBytes(ModelConfig config, LayerMap map, DType dtype)
    {
        int es = DTypes.SizeOf(dtype);
        return ModelWeights.Specs(config, map).Sum(s => (s.Elements * es + 63) / 64 * 64);
    }

    /// <summary>The engine a batch runs on: prefill chunks no longer than all the batch's prompts together, and
    /// room for a whole prompt (upward layouts evaluate a prompt in one step).</summary>
    public EngineOptions EngineOptionsFor(int batch) => new()
    {
        MaxStepTokens = (int)Math.Min(_settings.MaxStepRows, (long)batch * _settings.PromptLength),
        MaxSequences = batch, MaxPromptTokens = _settings.PromptLength,
    };

    /// <summary>Rows the engine's runner gets for a batch: its prefill chunk, or a whole prompt for upward layouts.</summary>
    public int RunnerRows(LayerMap map, int batch) => EngineOptionsFor(batch).StepRows(map);

    private bool SequentialPrefill(ModelConfig config, LayerMap map)
        => map.AnyAttendsTop && (config.UseSequential || _settings.PromptLength <= config.ForwardPasses + config.BackwardPasses);

    /// <summary>Every byte a batch needs, by where it goes.</summary>
    public MemoryAccount Account(ModelConfig config, LayerMap map, int batch)
    {
        var s = _settings;
        long weights = WeightBytes(config, map, s.WeightDType);
        long scratch = ForwardRunner.ScratchBytes(config, RunnerRows(map, batch), batch);
        // the engine's logits buffer (the last row of each sequence) and each sequence's greedy sampler; the sequential
        // path (short prompts of upward layouts) adds a logits buffer for its steps
        long logits = GenerationEngine.LogitsBytes(config.VocabSize, batch) * (SequentialPrefill(config, map) ? 2 : 1)
                      + batch * GenerationEngine.SamplerBytes(config.VocabSize, repetitionPenalty: false);
        long seqBlocks = KvCache.BlocksFor(s.SequenceLength, s.BlockSize);
        // sliding-window KV layers keep a bounded ring (LlamaModel.RingPositions, as the cache is built in Run)
        long perSequence = 0, tableEntries = 0;
        foreach (int ring in LlamaModel.RingPositions(config, map, s.SequenceLength, RunnerRows(map, batch), s.BlockSize))
        {
            long ringBlocks = KvCache.BlocksFor(ring, s.BlockSize);
            bool bounded = ringBlocks > 0 && ringBlocks < seqBlocks;
            perSequence += bounded ? Math.Min(seqBlocks, ringBlocks) : seqBlocks;
            tableEntries += bounded ? ringBlocks : seqBlocks;
        }
        long blocks = batch * perSequence;
        long blockBytes = new KvLayout(s.BlockSize, config.NumKeyValueHeads, config.HeadDim, s.KvDType).BlockBytes;
        // the pool's free stack and reference counts, and one block table per (sequence, KV layer)
        long tables = blocks * 2 * sizeof(int) + (long)batch * tableEntries * sizeof(int);
        return new MemoryAccount(batch, weights, scratch, logits, tables, blocks * blockBytes);
    }

    /// <summary>The largest batch in [1, MaxBatch] whose account fits the budget; 0 when batch 1 does not fit.</summary>
    public int MaxBatch(ModelConfig config, LayerMap map)
    {
        bool Fits(int b) => Account(config, map, b).Charged(_settings.BudgetKind) <= _settings.BudgetBytes;
        if (!Fits(1)) return 0;
        int lo = 1, hi = _settings.MaxBatch; // Fits(lo) holds
        while (lo < hi)
        {
            int mid = lo + (hi - lo + 1) / 2;
            if (Fits(mid)) lo = mid; else hi = mid - 1;
        }
        return lo;
    }

    /// <summary>
    /// Runs one layout: the largest batch that fits (or the given batch, fitting or not), with a KV pool of exactly
    /// the accounted size, greedy decoding and no stop tokens. A layout where not even one sequence fits is not run.
    /// </summary>
    /// <param name="accountOnly">only search and account (no model is built, nothing is generated)</param>
    public ThroughputRow Run(string layout, int? batch = null, Action<ThroughputProgress>? progress = null, bool accountOnly = false)
    {
        var s = _settings;
        var config = ConfigFor(layout);
        var map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
        int found = batch ?? MaxBatch(config, map);
        if (batch is < 1) throw new LckvException($"the batch must be at least 1, got {batch}");
        var fit = Account(config, map, Math.Max(found, 1));
        var next = Account(config, map, found + 1);
        var row = new ThroughputRow
        {
            Layout = layout, LayerTypes = config.LayerTypes!, KvLayers = map.KvLayerCount,
            KvBytesPerToken = KvCache.BytesPerTokenFor(map.KvLayerCount, config.NumKeyValueHeads, config.HeadDim, s.KvDType),
            UsesPlan = map.AnyAttendsTop && !SequentialPrefill(config, map),
            Batch = found, Searched = batch is null, Capped = batch is null && found == s.MaxBatch,
            Fit = fit, Next = next, FitsBudget = found > 0 && fit.Charged(s.BudgetKind) <= s.BudgetBytes,
        };
        if (found == 0 || accountOnly) return row;

        progress?.Invoke(new ThroughputProgress(layout, "weights", 0, 1));
        using var model = new LlamaModel(config, ModelWeights.Random(config, map, s.WeightDType, s.Seed), $"preset:{s.ShapeName}", s.SequenceLength);
        using var pool = new KvBlockPool(model.KvLayout(s.BlockSize, s.KvDType), fit.KvBytes);
        var engine = new GenerationEngine(model, model.CreateCache(pool, RunnerRows(map, found)), EngineOptionsFor(found));
        var rng = new SplitMix64(s.Seed ^ 0x7468726F75676870UL);
        int vocab = config.VocabSize;
        int Token() => vocab > 3 ? 3 + (int)(rng.Next() % (ulong)(vocab - 3)) : (int)(rng.Next() % (ulong)vocab);
        var greedy = new SamplingParams { Temperature = 0 };

        // warm up the code paths (JIT) on one short sequence: a prompt just long enough to take the same prefill path
        int warmLength = Math.Min(s.PromptLength, config.ForwardPasses + config.BackwardPasses + 1);
        progress?.Invoke(new ThroughputProgress(layout, "warmup", 0, 1));
        engine.Admit(new GenerationRequest
        {
            Prompt = Enumerable.Range(0, warmLength).Select(_ => Token()).ToArray(), MaxNewTokens = Math.Min(2, s.GenLength), Sampling = greedy,
        });
        engine.RunToEnd();

        var prompts = Enumerable.Range(0, found).Select(_ => Enumerable.Range(0, s.PromptLength).Select(_ => Token()).ToArray()).ToArray();
        long total = (long)found * s.GenLength, done = 0;
        progress?.Invoke(new ThroughputProgress(layout, "generate", 0, total));
        EngineTokenCallback onToken = (_, _, _) => progress?.Invoke(new ThroughputProgress(layout, "generate", ++done, total));
        var sequences = prompts.Select(p => engine.Admit(new GenerationRequest { Prompt = p, MaxNewTokens = s.GenLength, Sampling = greedy, OnToken = onToken })).ToArray();
        var t = engine.RunToEnd();
        int generated = sequences.Sum(x => x.Output.Count);
        if (generated != total) throw new LckvException($"layout {layout}: generated {generated} tokens, expected {total}");
        return row with
        {
            PoolBytes = pool.CapacityBytes, PromptTokens = t.PrefillTokens, GeneratedTokens = generated,
            PrefillSeconds = t.PrefillSeconds, DecodeSeconds = t.DecodeSeconds, DecodeTokens = t.DecodeTokens,
        };
    }

    /// <summary>The budget at which a layout fits exactly the given batch (its account's charged bytes).</summary>
    public long BudgetFor(string layout, int batch)
    {
        var config = ConfigFor(layout);
        return Account(config, LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers), batch).Charged(_settings.BudgetKind);
    }
}
