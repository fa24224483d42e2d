using Lckv.Numerics;

namespace Lckv.Formats;

/// <summary>
/// The llama architecture as GGUF metadata describes it (llama.cpp's keys), read into the same <see cref="ModelConfig"/>
/// a config.json gives, and written back by the GGUF export.
/// </summary>
/// <remarks>
/// llama.cpp's converter reorders each head's Q and K rows so that RoPE rotates adjacent pairs; a model read from GGUF
/// keeps those rows as they are and rotates with <see cref="RopeStyle.AdjacentPairs"/>, which computes what llama.cpp
/// computes without copying the mapped weights.
/// </remarks>
public static class GgufLlama
{
    public const string Architecture = "llama";

    /// <summary>Lckv's own key: an lckv-llama layer_types map (KVSharer's output); the layers that compute no KV have
    /// no attn_k/attn_v tensors, so llama.cpp does not load such a file.</summary>
    public const string LayerTypesKey = "lckv.layer_types";

    /// <summary>The model config the file's metadata describes; a missing or malformed key is one error naming it.</summary>
    public static ModelConfig Config(GgufFile file)
    {
        var m = new Keys(file);
        string arch = m.RequiredString("general.architecture");
        if (arch != Architecture)
            throw new LckvException($"{file.Path}: general.architecture is '{Printable.Escape(arch)}'; only llama is supported");

        if (m.OptionalInt("llama.expert_count") is > 0)
            throw new LckvException($"{file.Path}: llama.expert_count is {m.OptionalInt("llama.expert_count")}; mixture-of-experts models are not supported");
        if (m.OptionalString("llama.rope.scaling.type") is { } scaling && scaling is not ("none" or "linear"))
            throw new LckvException($"{file.Path}: llama.rope.scaling.type '{Printable.Escape(scaling)}' is not supported (only unscaled RoPE)");
        if (m.OptionalFloat("llama.rope.scaling.factor") is double factor && factor != 1 && factor != 0)
            throw new LckvException($"{file.Path}: llama.rope.scaling.factor {factor} is not supported (only unscaled RoPE)");
        if (file.Tensors.ContainsKey("rope_freqs.weight"))
            throw new LckvException($"{file.Path}: tensor 'rope_freqs.weight' (per-dimension RoPE frequency factors) is not supported");

        int hidden = m.RequiredInt("llama.embedding_length");
        int layers = m.RequiredInt("llama.block_count");
        // each block has its tensors in the file: a count past them is damage, and would size the weight table
        if (layers > file.TensorList.Count)
            throw new LckvException($"{file.Path}: llama.block_count is {layers}, but the file holds only {file.TensorList.Count} tensors");
        int heads = m.RequiredPerLayerInt("llama.attention.head_count", layers);
        int kvHeads = m.OptionalPerLayerInt("llama.attention.head_count_kv", layers) ?? heads;
        int inter = m.RequiredPerLayerInt("llama.feed_forward_length", layers);
        int context = m.RequiredInt("llama.context_length");
        double eps = m.RequiredFloat("llama.attention.layer_norm_rms_epsilon");
        double theta = m.OptionalFloat("llama.rope.freq_base") ?? 10000.0;
        if (heads <= 0) throw new LckvException($"{file.Path}: llama.attention.head_count must be positive, not {heads}");

        int headDim = m.OptionalInt("llama.attention.key_length") ?? (hidden % heads == 0 ? hidden / heads
            : throw new LckvException($"{file.Path}: llama.embedding_length {hidden} is not divisible by llama.attention.head_count {heads}"));
        if (m.OptionalInt("llama.attention.value_length") is int vl && vl != headDim)
            throw new LckvException($"{file.Path}: llama.attention.value_length {vl} differs from the key length {headDim}; only equal head sizes are supported");
        if (m.OptionalInt("llama.rope.dimension_count") is int rd && rd != headDim)
            throw new LckvException($"{file.Path}: llama.rope.dimension_count {rd} differs from the head size {headDim}; partial rotary embeddings are not supported");

        int vocab = m.OptionalInt("llama.vocab_size")
            ?? (file.Metadata.TryGetValue(TokenizerKeys.Tokens, out var tokens) && tokens.IsArray ? tokens.Count
            : throw new LckvException($"{file.Path}: the vocabulary size is in neither llama.vocab_size nor {TokenizerKeys.Tokens}"));

        var eos = new List<int>();
        foreach (var key in new[] { TokenizerKeys.Eos, TokenizerKeys.Eot, TokenizerKeys.Eom })
            if (m.OptionalTokenId(key) is int id && !eos.Contains(id)) eos.Add(id);

        var config = new ModelConfig
        {
            ModelType = ModelConfig.LlamaType,
            HiddenSize = hidden,
            IntermediateSize = inter,
            NumHiddenLayers = layers,
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = headDim,
            VocabSize = vocab,
            RmsNormEps = (float)eps,
            RopeTheta = theta,
            RopeStyle = RopeStyle.AdjacentPairs,
            MaxPositionEmbeddings = context,
            TieWordEmbeddings = !file.Tensors.ContainsKey("output.weight"),
            BosTokenId = m.OptionalTokenId(TokenizerKeys.Bos),
            EosTokenIds = eos,
        };
        if (m.OptionalString(LayerTypesKey) is { } types)
        {
            try { types = Lckv.Model.LayerMap.Parse(types, layers).ToString(); }
            catch (LckvException e) { throw new LckvException($"{file.Path}: {LayerTypesKey}: {e.Message}", e); }
            config = config with { ModelType = ModelConfig.LckvLlamaType, LayerTypes = types };
        }
        config.Validate(file.Path);
        return config;
    }

    /// <summary>The metadata that describes a standard Llama config (the keys <see cref="Config"/> reads).</summary>
    public static List<KeyValuePair<string, GgufValue>> Metadata(ModelConfig c, string name)
    {
        if (c.IsLckv)
            throw new LckvException($"a {c.ModelType} model with layer_types {c.LayerTypes} shares KV across layers; GGUF (llama.cpp) holds standard Llama models only");
        return
        [
            new("general.architecture", GgufValue.String(Architecture)),
            new("general.name", GgufValue.String(name)),
            new("general.alignment", GgufValue.UInt32(GgufFile.DefaultAlignment)),
            new("llama.vocab_size", GgufValue.UInt32((uint)c.VocabSize)),
            new("llama.context_length", GgufValue.UInt32((uint)c.MaxPositionEmbeddings)),
            new("llama.embedding_length", GgufValue.UInt32((uint)c.HiddenSize)),
            new("llama.block_count", GgufValue.UInt32((uint)c.NumHiddenLayers)),
            new("llama.feed_forward_length", GgufValue.UInt32((uint)c.IntermediateSize)),
            new("llama.attention.head_count", GgufValue.UInt32((uint)c.NumAttentionHeads)),
            new("llama.attention.head_count_kv", GgufValue.UInt32((uint)c.NumKeyValueHeads)),
            new("llama.attention.key_length", GgufValue.UInt32((uint)c.HeadDim)),
            new("llama.attention.value_length", GgufValue.UInt32((uint)c.HeadDim)),
            new("llama.rope.dimension_count", GgufValue.UInt32((uint)c.HeadDim)),
            new("llama.rope.freq_base", GgufValue.Float32((float)c.RopeTheta)),
            new("llama.attention.layer_norm_rms_epsilon", GgufValue.Float32(c.RmsNormEps)),
        ];
    }

    /// <summary>Typed reads of metadata keys with one-line errors naming the file and key.</summary>
    internal readonly struct Keys(GgufFile file)
    {
        private LckvException Missing(string key) => new($"{file.Path}: missing GGUF metadata key '{key}'");

        private LckvException Wrong(string key, GgufValue v, string expected)
            => new($"{file.Path}: GGUF metadata key '{key}' is a {v.TypeName} ({v.Describe(3, 40)}), expected {expected}");

        public string RequiredString(string key) => OptionalString(key) ?? throw Missing(key);

        public string? OptionalString(string key)
        {
            if (!file.Metadata.TryGetValue(key, out var v)) return null;
            return v.Value as string ?? throw Wrong(key, v, "a string");
        }

        public int RequiredInt(string key) => OptionalInt(key) ?? throw Missing(key);

        public int? OptionalInt(string key)
        {
            if (!file.Metadata.TryGetValue(key, out var v)) return null;
            if (!v.TryGetInteger(out long l)) throw Wrong(key, v, "an integer");
            if (l < 0 || l > int.MaxValue) throw new LckvException($"{file.Path}: GGUF metadata key '{key}' is {l}, outside [0, {int.MaxValue}]");
            return (int)l;
        }

        /// <summary>An integer, or an array of one per layer that must all be equal (Lckv has one value per model).</summary>
        public int RequiredPerLayerInt(string key, int layers) => OptionalPerLayerInt(key, layers) ?? throw Missing(key);

        public int? OptionalPerLayerInt(string key, int layers)
        {
            if (!file.Metadata.TryGetValue(key, out var v)) return null;
            if (!v.IsArray) return OptionalInt(key);
            if (v.ElementType is GgufType.String or GgufType.Bool or GgufType.Float32 or GgufType.Float64 or GgufType.Array)
                throw Wrong(key, v, "an integer or one integer per layer");
            var values = new List<long>();
            foreach (var item in (System.Array)v.Value)
                values.Add(item is ulong u ? (u > long.MaxValue ? -1 : (long)u) : System.Convert.ToInt64(item, System.Globalization.CultureInfo.InvariantCulture));
            if (values.Count != layers) throw new LckvException($"{file.Path}: GGUF metadata key '{key}' lists {values.Count} values for {layers} layers");
            if (values.Distinct().Count() != 1)
                throw new LckvException($"{file.Path}: GGUF metadata key '{key}' differs between layers ({v.Describe()}); only one value for every layer is supported");
            if (values[0] < 0 || values[0] > int.MaxValue) throw new LckvException($"{file.Path}: GGUF metadata key '{key}' is {values[0]}, outside [0, {int.MaxValue}]");
            return (int)values[0];
        }

        public double RequiredFloat(string key) => OptionalFloat(key) ?? throw Missing(key);

        public double? OptionalFloat(string key)
        {
            if (!file.Metadata.TryGetValue(key, out var v)) return null;
            return v.TryGetNumber(out double d) ? d : throw Wrong(key, v, "a number");
        }

        /// <summary>A token id; absent, or -1 (0xFFFFFFFF as a u32), means none.</summary>
        public int? OptionalTokenId(string key)
        {
            if (!file.Metadata.TryGetValue(key, out var v)) return null;
            if (v.Value is uint.MaxValue or -1) return null;
            return OptionalInt(key);
        }

        public bool? OptionalBool(string key)
        {
            if (!file.Metadata.TryGetValue(key, out var v)) return null;
            return v.Value is bool b ? b : throw Wrong(key, v, "a bool");
        }
    }
}

/// <summary>The tokenizer.ggml.* keys of GGUF metadata.</summary>
public static class TokenizerKeys
{
    public const string Model = "tokenizer.ggml.model";
    public const string Pre = "tokenizer.ggml.pre";
    public const string Tokens = "tokenizer.ggml.tokens";
    public const string Scores = "tokenizer.ggml.scores";
    public const string TokenType = "tokenizer.ggml.token_type";
    public const string Merges = "tokenizer.ggml.merges";
    public const string Bos = "tokenizer.ggml.bos_token_id";
    public const string Eos = "tokenizer.ggml.eos_token_id";
    public const string Eot = "tokenizer.ggml.eot_token_id";
    public const string Eom = "tokenizer.ggml.eom_token_id";
    public const string Unk = "tokenizer.ggml.unknown_token_id";
    public const string Pad = "tokenizer.ggml.padding_token_id";
    public const string AddBos = "tokenizer.ggml.add_bos_token";
    public const string AddEos = "tokenizer.ggml.add_eos_token";
    public const string AddSpacePrefix = "tokenizer.ggml.add_space_prefix";
    public const string RemoveExtraWhitespaces = "tokenizer.ggml.remove_extra_whitespaces";
}
