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
    /// <summary>KV storage of a row that names none.</summary>
    public DType KvDType { get; init; } = DType.F32;
    /// <summary>Eviction of a row that names none.</summary>
    public EvictionSettings Eviction { get; init; } = EvictionSettings.None;
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
        Eviction.Validate();
    }
}

/// <summary>
/// One row of the experiment: a layout with its KV storage and eviction, written LAYOUT[/KV][/EVICTION] with KV one of
/// f32, f16, bf16, int8, q4 and EVICTION streaming:SINKS:RECENT or h2o:HEAVY:RECENT ("lckv-w2/int8/streaming:4:508").
/// What a row leaves out comes from the settings.
/// </summary>
public sealed record ThroughputVariant(string Spec, string Layout, DType KvDType, EvictionSettings Eviction)
{
    public static ThroughputVariant Parse(string spec, DType kvDType, EvictionSettings eviction)
    {
        var parts = spec.Split('/', StringSplitOptions.TrimEntries);
        if (parts[0].Length == 0) throw new LckvException($"row '{spec}' names no layout");
        bool kvGiven = false, evictionGiven = false;
        foreach (var part in parts.Skip(1))
        {
            var fields = part.Split(':');
            if (fields[0] is "streaming" or "h2o" or "none")
            {
                if (evictionGiven) throw new LckvException($"row '{spec}' names two evictions");
                evictionGiven = true;
                eviction = ParseEviction(spec, fields);
            }
            else
            {
                if (kvGiven) throw new LckvException($"row '{spec}' names two KV dtypes");
                kvGiven = true;
                try { kvDType = KvRows.Parse(part); }
                catch (LckvException) { throw new LckvException($"row '{spec}': '{part}' is neither a KV dtype (f32, f16, bf16, int8, q4) nor an eviction (streaming:SINKS:RECENT, h2o:HEAVY:RECENT, none)"); }
            }
        }
        return new ThroughputVariant(spec, parts[0], kvDType, eviction);
    }

    private static EvictionSettings ParseEviction(string spec, string[] fields)
    {
        if (fields[0] == "none")
            return fields.Length == 1 ? EvictionSettings.None : throw new LckvException($"row '{spec}': 'none' takes no numbers");
        if (fields.Length != 3 || !int.TryParse(fields[1], out int a) || !int.TryParse(fields[2], out int recent))
            throw new LckvException($"row '{spec}': write {fields[0]}:{(fields[0] == "h2o" ? "HEAVY" : "SINKS")}:RECENT with two integers");
        var e = fields[0] == "h2o" ? new EvictionSettings(EvictionKind.H2O, Heavy: a, Recent: recent) : new EvictionSettings(EvictionKind.Streaming, Sinks: a, Recent: recent);
        e.Validate();
        return e;
    }

    public bool Evicts => Eviction.Kind != EvictionKind.None;
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
    public DType KvDType { get; init; } = DType.F32;
    public EvictionSettings Eviction { get; init; } = EvictionSettings.None;
    /// <summary>Weights a token multiplies (every matrix but the embedding table): 2 FLOP each per token.</summary>
    public long MatMulParameters { get; init; }
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
    /// <summary>Decode's share of an FMA peak (GFLOP/s): 2 FLOP per weight per token, attention not counted.</summary>
    public double DecodeFractionOfPeak(double peakGflops) => peakGflops > 0 ? 2.0 * MatMulParameters * DecodeTokensPerSecond / (peakGflops * 1e9) : 0;
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

    /// <summary>Rows the engine's runner gets for a batch (GenerationEngine.RunnerRows).</summary>
    public int RunnerRows(LayerMap map, int batch, bool evicting = false) => GenerationEngine.RunnerRows(EngineOptionsFor(batch), map, evicting);

    // the most tokens one sequence brings to a step: a whole prompt where stores evict, else up to the runner's rows
    private int SequenceStepRows(LayerMap map, int batch, ThroughputVariant v) => v.Evicts ? _settings.PromptLength : RunnerRows(map, batch);

    /// <summary>A row of the experiment from its spec, with the settings' KV dtype and eviction as defaults.</summary>
    public ThroughputVariant Variant(string spec)
    {
        var v = ThroughputVariant.Parse(spec, _settings.KvDType, _settings.Eviction);
        KvRows.Check(v.KvDType, _settings.Shape.HeadDim);
        return v;
    }

    private bool SequentialPrefill(ModelConfig config, LayerMap map)
        => map.AnyAttendsTop && (config.UseSequential || _settings.PromptLength <= config.ForwardPasses + config.BackwardPasses);

    // a row that names neither KV storage nor eviction
    private ThroughputVariant Defaults => new("", "", _settings.KvDType, _settings.Eviction);

    /// <summary>Every byte a batch needs with the settings' KV storage and eviction.</summary>
    public MemoryAccount Account(ModelConfig config, LayerMap map, int batch) => Account(config, map, batch, Defaults);

    /// <summary>The largest batch with the settings' KV storage and eviction.</summary>
    public int MaxBatch(ModelConfig config, LayerMap map) => MaxBatch(config, map, Defaults);

    /// <summary>Every byte a batch needs, by where it goes.</summary>
    public MemoryAccount Account(ModelConfig config, LayerMap map, int batch, ThroughputVariant v)
    {
        var s = _settings;
        long weights = WeightBytes(config, map, s.WeightDType);
        long scratch = ForwardRunner.ScratchBytes(config, RunnerRows(map, batch, v.Evicts), batch);
        // the engine's logits buffer (the last row of each sequence) and each sequence's greedy sampler; the sequential
        // path (short prompts of upward layouts) adds a logits buffer for its steps
        long logits = GenerationEngine.LogitsBytes(config.VocabSize, batch) * (SequentialPrefill(config, map) ? 2 : 1)
                      + batch * GenerationEngine.SamplerBytes(config.VocabSize, penalized: false);
        long seqBlocks = KvCache.BlocksFor(s.SequenceLength, s.BlockSize);
        long perSequence = 0, tableEntries = 0, policyBytes = 0;
        if (v.Eviction.Policy(SequenceStepRows(map, batch, v), config.HeadDim, config.RopeTheta, config.RopeStyle) is { } policy)
        {
            // every store keeps at most its capacity, with positions (and scores) per KV head
            perSequence = policy.BlocksFor(s.SequenceLength, s.BlockSize) * map.KvLayerCount;
            tableEntries = policy.TableLength(s.SequenceLength, s.BlockSize) * (long)map.KvLayerCount;
            long capacity = Math.Min(((EvictingPolicy)policy).Capacity, s.SequenceLength);
            policyBytes = (long)batch * map.KvLayerCount * config.NumKeyValueHeads * capacity * (sizeof(int) + (policy.TracksScores ? sizeof(float) : 0))
                + (policy.RankRope is { } rope ? (long)rope.MaxPositions * rope.HeadDim * sizeof(float) : 0);
        }
        else
        {
            // sliding-window KV layers keep a bounded ring (LlamaModel.RingPositions, as the cache is built in Run)
            foreach (int ring in LlamaModel.RingPositions(config, map, s.SequenceLength, RunnerRows(map, batch), s.BlockSize))
            {
                long ringBlocks = KvCache.BlocksFor(ring, s.BlockSize);
                bool bounded = ringBlocks > 0 && ringBlocks < seqBlocks;
                perSequence += bounded ? Math.Min(seqBlocks, ringBlocks) : seqBlocks;
                tableEntries += bounded ? ringBlocks : seqBlocks;
            }
        }
        long blocks = batch * perSequence;
        long blockBytes = new KvLayout(s.BlockSize, config.NumKeyValueHeads, config.HeadDim, v.KvDType).BlockBytes;
        // the pool's free stack and reference counts, one block table per (sequence, KV layer), and the policies' state
        long tables = blocks * 2 * sizeof(int) + (long)batch * tableEntries * sizeof(int) + policyBytes;
        return new MemoryAccount(batch, weights, scratch, logits, tables, blocks * blockBytes);
    }

    /// <summary>The largest batch in [1, MaxBatch] whose account fits the budget; 0 when batch 1 does not fit.</summary>
    public int MaxBatch(ModelConfig config, LayerMap map, ThroughputVariant v)
    {
        bool Fits(int b) => Account(config, map, b, v).Charged(_settings.BudgetKind) <= _settings.BudgetBytes;
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
    public ThroughputRow Run(string spec, int? batch = null, Action<ThroughputProgress>? progress = null, bool accountOnly = false)
    {
        var s = _settings;
        var v = Variant(spec);
        string layout = v.Spec;
        var config = ConfigFor(v.Layout);
        var map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
        int found = batch ?? MaxBatch(config, map, v);
        if (batch is < 1) throw new LckvException($"the batch must be at least 1, got {batch}");
        var fit = Account(config, map, Math.Max(found, 1), v);
        var next = Account(config, map, found + 1, v);
        var row = new ThroughputRow
        {
            Layout = layout, LayerTypes = config.LayerTypes!, KvLayers = map.KvLayerCount, KvDType = v.KvDType, Eviction = v.Eviction,
            MatMulParameters = ModelWeights.Specs(config, map).Where(w => w.Slot != WeightSlot.Embed && w.Shape.Length == 2).Sum(w => w.Elements),
            KvBytesPerToken = KvCache.BytesPerTokenFor(map.KvLayerCount, config.NumKeyValueHeads, config.HeadDim, v.KvDType),
            UsesPlan = map.AnyAttendsTop && !SequentialPrefill(config, map),
            Batch = found, Searched = batch is null, Capped = batch is null && found == s.MaxBatch,
            Fit = fit, Next = next, FitsBudget = found > 0 && fit.Charged(s.BudgetKind) <= s.BudgetBytes,
        };
        if (found == 0 || accountOnly) return row;

        progress?.Invoke(new ThroughputProgress(layout, "weights", 0, 1));
        using var model = new LlamaModel(config, ModelWeights.Random(config, map, s.WeightDType, s.Seed), $"preset:{s.ShapeName}", s.SequenceLength);
        using var pool = new KvBlockPool(model.KvLayout(s.BlockSize, v.KvDType), fit.KvBytes);
        var engine = new GenerationEngine(model, model.CreateCache(pool, SequenceStepRows(map, found, v), v.Eviction), EngineOptionsFor(found));
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
    public long BudgetFor(string spec, int batch)
    {
        var v = Variant(spec);
        var config = ConfigFor(v.Layout);
        return Account(config, LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers), batch, v).Charged(_settings.BudgetKind);
    }
}
