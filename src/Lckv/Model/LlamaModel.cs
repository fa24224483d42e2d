using Lckv.Formats;
using Lckv.Numerics;

namespace Lckv.Model;

/// <summary>
/// A Llama decoder with cross-layer KV sharing: config, layer map, weights (in their checkpoint dtype), RoPE table.
/// Immutable after construction; evaluation state lives in <see cref="ForwardRunner"/>.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    public ModelConfig Config { get; }
    public LayerMap Map { get; }
    public ModelWeights Weights { get; }
    public RopeTable Rope { get; }
    /// <summary>Longest sequence the model evaluates (RoPE table and cache tables are sized by it).</summary>
    public int ContextLength { get; }
    /// <summary>Where the weights came from (a folder, or "preset:name").</summary>
    public string Source { get; }

    /// <summary>Longest context a model is built for: the RoPE table alone holds head_dim floats per position.</summary>
    public const int MaxContextLength = 1 << 24;

    public LlamaModel(ModelConfig config, ModelWeights weights, string source, int? contextLength = null)
    {
        config.Validate();
        Config = config;
        Map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
        Weights = weights;
        Source = source;
        ContextLength = contextLength ?? config.MaxPositionEmbeddings;
        if (ContextLength <= 0) throw new LckvException($"context length must be positive, got {ContextLength}");
        if (ContextLength > MaxContextLength)
            throw new LckvException($"context length {ContextLength}{(contextLength is null ? " (the model's max_position_embeddings)" : "")} is more than the {MaxContextLength} positions Lckv supports; give a shorter context");
        if ((long)ContextLength * config.HeadDim > Array.MaxLength)
            throw new LckvException($"context length {ContextLength} x head_dim {config.HeadDim} is too large for a RoPE table; give a shorter context");
        Rope = new RopeTable(config.HeadDim, config.RopeTheta, ContextLength, config.RopeStyle);
    }

    /// <summary>
    /// Loads config.json and the safetensors weights from a checkpoint folder, or the config and weights of a GGUF file
    /// (<see cref="GgufLlama"/>): memory-mapped in their checkpoint dtype, or, given weights, with every matrix converted
    /// to that dtype at load (Q8_0 or Q4_0 quantized as llama.cpp does, or f32/f16/bf16; <see cref="ModelWeights.ConvertTo"/>);
    /// the norms keep their dtype.
    /// </summary>
    public static LlamaModel Load(string folder, int? contextLength = null, DType? weights = null)
    {
        if (File.Exists(folder))
        {
            if (!GgufFile.IsGguf(folder))
                throw new LckvException($"model '{folder}' is a file but not a GGUF file; expected a checkpoint folder or a .gguf file");
            return LoadGguf(folder, contextLength, weights);
        }
        if (!Directory.Exists(folder)) throw new LckvException($"model folder '{folder}' does not exist");
        var configPath = Path.Combine(folder, "config.json");
        if (!File.Exists(configPath)) throw new LckvException($"'{folder}' has no config.json");
        var config = ModelConfig.Load(configPath);
        var map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
        var tensors = TensorSet.Open(folder);
        ModelWeights w;
        try
        {
            w = ModelWeights.FromTensors(config, map, tensors);
        }
        catch
        {
            tensors.Dispose();
            throw;
        }
        return Create(config, w, weights, folder, contextLength);
    }

    /// <summary>The config of a checkpoint folder (its config.json) or of a GGUF file (its metadata), without the weights.</summary>
    public static ModelConfig LoadConfig(string path)
    {
        if (File.Exists(path))
        {
            if (!GgufFile.IsGguf(path))
                throw new LckvException($"model '{path}' is a file but not a GGUF file; expected a checkpoint folder or a .gguf file");
            using var gguf = GgufFile.Open(path);
            return GgufLlama.Config(gguf);
        }
        if (!Directory.Exists(path)) throw new LckvException($"model folder '{path}' does not exist");
        var configPath = Path.Combine(path, "config.json");
        if (!File.Exists(configPath)) throw new LckvException($"'{path}' has no config.json");
        return ModelConfig.Load(configPath);
    }

    /// <summary>A GGUF file's model: its config from the metadata, its weights memory-mapped under their GGUF names.</summary>
    public static LlamaModel LoadGguf(string path, int? contextLength = null, DType? weightsDType = null)
    {
        var tensors = TensorSet.FromFile(GgufFile.Open(path));
        try
        {
            var config = GgufLlama.Config(tensors.Gguf!);
            var weights = ModelWeights.FromTensors(config, LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers), tensors);
            return Create(config, weights, weightsDType, path, contextLength);
        }
        catch
        {
            tensors.Dispose();
            throw;
        }
    }

    // the model over w converted to dtype (w disposed once converted), or over w as it is (also when its matrices are
    // in dtype already); whatever w is then is disposed if this fails
    private static LlamaModel Create(ModelConfig config, ModelWeights w, DType? dtype, string source, int? contextLength)
    {
        try
        {
            if (dtype is { } d && !w.MatricesAre(d))
            {
                var converted = w.ConvertTo(d);
                w.Dispose();
                w = converted;
            }
            return new LlamaModel(config, w, source, contextLength);
        }
        catch
        {
            w.Dispose();
            throw;
        }
    }

    /// <summary>A built-in shape with random weights (deterministic in seed) in the given float dtype; given weights,
    /// the matrices are then converted to that dtype as <see cref="Load"/> does.</summary>
    public static LlamaModel FromPreset(string name, DType? dtype = null, string? layerTypes = null, ulong seed = 0, int? contextLength = null,
        DType? weights = null)
    {
        var config = Presets.Config(name);
        var dt = dtype ?? Presets.DefaultDType(name);
        config = config with { TorchDtype = dt switch { DType.BF16 => "bfloat16", DType.F16 => "float16", _ => "float32" } };
        if (layerTypes is not null) config = config with { ModelType = "lckv-llama", LayerTypes = layerTypes };
        var map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
        return Create(config, ModelWeights.Random(config, map, dt, seed), weights, $"preset:{name}", contextLength);
    }

    public int Hidden => Config.HiddenSize;
    public int Heads => Config.NumAttentionHeads;
    public int KvHeads => Config.NumKeyValueHeads;
    public int HeadDim => Config.HeadDim;
    public int Vocab => Config.VocabSize;

    /// <summary>Parameters counted from the weight table (the embedding once when tied).</summary>
    public long ParameterCount => ModelWeights.Specs(Config, Map).Sum(s => s.Elements);

    /// <summary>Weight bytes read per decoded token: every matrix but the embedding (only one row of it is read), in
    /// the dtype each is stored in.</summary>
    public long DecodeWeightBytes
    {
        get
        {
            long total = 0;
            foreach (var s in ModelWeights.Specs(Config, Map))
                if (s.Slot != WeightSlot.Embed) total += Weights.Matrix(s).ByteLength;
            if (Config.TieWordEmbeddings) total += Weights.Head.ByteLength;
            return total;
        }
    }

    /// <summary>FLOP of one token's forward through the weights (2 per multiply-add), attention excluded.</summary>
    public long FlopsPerToken
    {
        get
        {
            long total = 0;
            foreach (var s in ModelWeights.Specs(Config, Map))
                if (s.Shape.Length == 2 && s.Slot != WeightSlot.Embed) total += 2 * s.Elements;
            if (Config.TieWordEmbeddings) total += 2L * Vocab * Hidden;
            return total;
        }
    }

    /// <summary>KV geometry of this model's cache for a block size and storage dtype.</summary>
    public KvLayout KvLayout(int blockSize, DType dtype) => new(blockSize, KvHeads, HeadDim, dtype);

    /// <summary>
    /// Per KV layer, the positions a bounded ring must keep (0: a linear store). A KV layer can be a ring when every
    /// layer that reads it uses the sliding window: a step of up to maxStepRows queries starting at position s sees
    /// keys [s - W, s + rows), so the ring keeps W + maxStepRows positions plus a block of slack (kv-sharing.md §6).
    /// </summary>
    public int[] RingPositions(int maxStepRows, int blockSize) => RingPositions(Config, Map, ContextLength, maxStepRows, blockSize);

    /// <summary>RingPositions for a config and layer map without weights (for accounting).</summary>
    public static int[] RingPositions(ModelConfig config, LayerMap map, int contextLength, int maxStepRows, int blockSize)
    {
        var rings = new int[map.KvLayerCount];
        for (int layer = 0; layer < map.LayerCount; layer++)
        {
            if (!map.ComputesKv(layer)) continue;
            bool allSliding = true;
            for (int reader = 0; reader < map.LayerCount; reader++)
                if (map.Target(reader) == layer && !map.IsSliding(reader)) allSliding = false;
            long positions = (long)config.SlidingWindow + maxStepRows + blockSize;
            if (allSliding && positions < contextLength) rings[map.KvIndex(layer)] = (int)positions;
        }
        return rings;
    }

    /// <summary>Pool blocks one sequence of `tokens` positions takes over every KV layer (rings bounded).</summary>
    public long KvBlocksFor(int tokens, int blockSize, int maxStepRows) => KvBlocksFor(Config, Map, ContextLength, tokens, blockSize, maxStepRows);

    /// <summary>KvBlocksFor for a config and layer map without weights (for accounting).</summary>
    public static long KvBlocksFor(ModelConfig config, LayerMap map, int contextLength, int tokens, int blockSize, int maxStepRows)
    {
        long linear = (tokens + (long)blockSize - 1) / blockSize, tableBlocks = (contextLength + (long)blockSize - 1) / blockSize, total = 0;
        foreach (int ring in RingPositions(config, map, contextLength, maxStepRows, blockSize))
        {
            long ringBlocks = (ring + (long)blockSize - 1) / blockSize;
            total += ringBlocks > 0 && ringBlocks < tableBlocks ? Math.Min(linear, ringBlocks) : linear;
        }
        return total;
    }

    /// <summary>A KV cache for this model over a pool: one table per KV layer, rings for sliding-window layers.</summary>
    public Cache.KvCache CreateCache(Cache.KvBlockPool pool, int maxStepRows)
        => new(pool, Map.KvLayerCount, ContextLength, RingPositions(maxStepRows, pool.Layout.BlockSize));

    /// <summary>A KV cache whose stores all evict by the settings (steps of at most maxStepRows tokens), or
    /// <see cref="CreateCache(Cache.KvBlockPool, int)"/>'s without eviction.</summary>
    public Cache.KvCache CreateCache(Cache.KvBlockPool pool, int maxStepRows, Cache.EvictionSettings eviction)
    {
        var policy = eviction.Policy(maxStepRows, HeadDim, Config.RopeTheta, Config.RopeStyle);
        if (policy is null) return CreateCache(pool, maxStepRows);
        if (eviction.Less is null) return new Cache.KvCache(pool, Enumerable.Repeat(policy, Map.KvLayerCount).ToArray(), ContextLength);
        // LESS: each store's policy folds its evictions with its owner layer's key map
        var policies = new Cache.KvPolicy[Map.KvLayerCount];
        for (int layer = 0; layer < Map.LayerCount; layer++)
            if (Map.ComputesKv(layer))
                policies[Map.KvIndex(layer)] = eviction.Policy(maxStepRows, HeadDim, Config.RopeTheta, Config.RopeStyle, lessOwner: layer)!;
        return new Cache.KvCache(pool, policies, ContextLength);
    }

    /// <summary>Pool blocks one sequence of `tokens` positions takes over every KV layer under the eviction settings.</summary>
    public long KvBlocksFor(int tokens, int blockSize, int maxStepRows, Cache.EvictionSettings eviction)
        => KvBlocksFor(Config, Map, ContextLength, tokens, blockSize, maxStepRows, eviction);

    /// <summary>The same for a config and layer map without weights.</summary>
    public static long KvBlocksFor(ModelConfig config, LayerMap map, int contextLength, int tokens, int blockSize, int maxStepRows,
        Cache.EvictionSettings eviction)
        => eviction.Policy(maxStepRows, config.HeadDim, config.RopeTheta, config.RopeStyle) is { } policy
            ? policy.BlocksFor(tokens, blockSize) * map.KvLayerCount
            : KvBlocksFor(config, map, contextLength, tokens, blockSize, maxStepRows);

    /// <summary>2 * kv_layers * kv_heads * head_dim * bytes(dtype) (kv-sharing.md §6).</summary>
    public long KvBytesPerToken(DType dtype) => Cache.KvCache.BytesPerTokenFor(Map.KvLayerCount, KvHeads, HeadDim, dtype);

    /// <summary>
    /// This model's weights read under another layer_types map (model_type lckv-llama), without copying them: every
    /// layer that computes KV in the new map must have K/V weights here. The view does not own the weights; disposing
    /// it leaves them to this model, which must outlive it.
    /// </summary>
    public LlamaModel WithLayerTypes(string layerTypes)
    {
        var config = Config with { ModelType = ModelConfig.LckvLlamaType, LayerTypes = LayerMap.Parse(layerTypes, Config.NumHiddenLayers).ToString() };
        var map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
        for (int layer = 0; layer < map.LayerCount; layer++)
            if (map.ComputesKv(layer) && Weights.Layers[layer].K is null)
                throw new LckvException($"layer_types '{config.LayerTypes}' has layer {layer} compute KV, but the model has no k_proj/v_proj for it");
        return new LlamaModel(config, Weights, Source, ContextLength) { _ownsWeights = false };
    }

    private bool _ownsWeights = true;

    public void Dispose()
    {
        if (_ownsWeights) Weights.Dispose();
    }
}
