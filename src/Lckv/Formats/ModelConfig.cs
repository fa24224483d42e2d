using System.Text.Json;
using Lckv.Numerics;

namespace Lckv.Formats;

/// <summary>
/// A Hugging Face config.json for model_type "llama" or "lckv-llama". Immutable. Parse validates: required fields
/// present and positive, heads divide evenly, hidden_act silu, rope_scaling absent or null (anything else is an
/// unsupported-setting error), unknown model_type an error naming it.
/// </summary>
public sealed record ModelConfig
{
    public const string LlamaType = "llama";
    public const string LckvLlamaType = "lckv-llama";

    public string ModelType { get; init; } = "llama";
    public int HiddenSize { get; init; }
    public int IntermediateSize { get; init; }
    public int NumHiddenLayers { get; init; }
    public int NumAttentionHeads { get; init; }
    public int NumKeyValueHeads { get; init; }
    public int HeadDim { get; init; }
    public int VocabSize { get; init; }
    public float RmsNormEps { get; init; } = 1e-5f;
    public double RopeTheta { get; init; } = 10000.0;
    /// <summary>Which dimensions RoPE pairs: rotate_half for Hugging Face checkpoints, adjacent pairs for GGUF files.</summary>
    public RopeStyle RopeStyle { get; init; } = RopeStyle.RotateHalf;
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public bool TieWordEmbeddings { get; init; }
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    /// <summary>"float32", "bfloat16", "float16" (the checkpoint's dtype) or null.</summary>
    public string? TorchDtype { get; init; }

    // lckv-llama fields (kv-sharing.md §2); for "llama" LayerTypes is null (identity).
    public string? LayerTypes { get; init; }
    public int ForwardPasses { get; init; } = 7;
    public int BackwardPasses { get; init; } = 2;
    public int SlidingWindow { get; init; } = 4096;
    public bool ForceNoDiag { get; init; }
    public bool UseSequential { get; init; }

    /// <summary>True for "lckv-llama" (or any config carrying layer_types).</summary>
    public bool IsLckv => ModelType == LckvLlamaType || LayerTypes is not null;

    /// <summary>Reads and parses config.json; path may also be the checkpoint folder holding it.</summary>
    public static ModelConfig Load(string path)
    {
        if (Directory.Exists(path)) path = Path.Combine(path, "config.json");
        return Parse(JsonFields.ReadText(path), path);
    }

    /// <summary>source names the file in error messages.</summary>
    public static ModelConfig Parse(string json, string source)
    {
        using var doc = JsonFields.ParseDocument(json, source);
        var f = new JsonFields(doc.RootElement, source);

        string? modelType = f.String("model_type");
        if (modelType is null)
            throw new LckvException($"{source}: missing required field 'model_type' (expected llama or lckv-llama)");
        if (modelType is not (LlamaType or LckvLlamaType))
            throw new LckvException($"{source}: unsupported model_type '{Printable.Escape(modelType)}' (expected llama or lckv-llama)");

        string? act = f.String("hidden_act");
        if (act is not null && act != "silu")
            throw new LckvException($"{source}: unsupported hidden_act '{Printable.Escape(act)}' (expected silu)");
        if (f.Root.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind != JsonValueKind.Null)
            throw new LckvException($"{source}: unsupported rope_scaling {JsonFields.Short(rs.GetRawText())} (only null is supported)");
        if (f.Bool("attention_bias") == true)
            throw new LckvException($"{source}: unsupported attention_bias true (only bias-free attention is supported)");
        if (f.Bool("mlp_bias") == true)
            throw new LckvException($"{source}: unsupported mlp_bias true (only a bias-free MLP is supported)");

        int hidden = f.RequiredInt("hidden_size");
        int heads = f.RequiredInt("num_attention_heads");
        if (heads <= 0) throw new LckvException($"{source}: num_attention_heads must be positive, not {heads}");
        var config = new ModelConfig
        {
            ModelType = modelType,
            HiddenSize = hidden,
            IntermediateSize = f.RequiredInt("intermediate_size"),
            NumHiddenLayers = f.RequiredInt("num_hidden_layers"),
            NumAttentionHeads = heads,
            NumKeyValueHeads = f.Int("num_key_value_heads") ?? heads,
            HeadDim = f.Int("head_dim") ?? (hidden % heads == 0 ? hidden / heads
                : throw new LckvException($"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads} and head_dim is not given")),
            VocabSize = f.RequiredInt("vocab_size"),
            // Hugging Face LlamaConfig defaults for absent fields
            RmsNormEps = (float)(f.Double("rms_norm_eps") ?? 1e-6),
            RopeTheta = f.Double("rope_theta") ?? 10000.0,
            MaxPositionEmbeddings = f.Int("max_position_embeddings") ?? 2048,
            TieWordEmbeddings = f.Bool("tie_word_embeddings") ?? false,
            BosTokenId = f.Int("bos_token_id"),
            EosTokenIds = f.IntOrList("eos_token_id"),
            TorchDtype = f.String("torch_dtype") ?? f.String("dtype"),
        };

        if (modelType == LckvLlamaType)
        {
            config = config with
            {
                LayerTypes = f.String("layer_types"),
                ForwardPasses = f.Int("forward_passes") ?? 7,
                BackwardPasses = f.Int("backward_passes") ?? 2,
                SlidingWindow = f.Int("sliding_window") ?? 4096,
                ForceNoDiag = f.Bool("force_nodiag") ?? false,
                UseSequential = f.Bool("use_sequential") ?? false,
            };
        }
        config.Validate(source);
        return config;
    }

    /// <summary>Hugging Face JSON (model_type llama, or lckv-llama with its fields when LayerTypes is set).</summary>
    public string ToJson()
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            bool lckv = IsLckv;
            w.WriteStartObject();
            w.WriteStartArray("architectures");
            w.WriteStringValue(lckv ? "LCKVLlamaForCausalLM" : "LlamaForCausalLM");
            w.WriteEndArray();
            w.WriteString("model_type", lckv ? LckvLlamaType : LlamaType);
            w.WriteString("hidden_act", "silu");
            w.WriteNumber("hidden_size", HiddenSize);
            w.WriteNumber("intermediate_size", IntermediateSize);
            w.WriteNumber("num_hidden_layers", NumHiddenLayers);
            w.WriteNumber("num_attention_heads", NumAttentionHeads);
            w.WriteNumber("num_key_value_heads", NumKeyValueHeads);
            w.WriteNumber("head_dim", HeadDim);
            w.WriteNumber("vocab_size", VocabSize);
            w.WriteNumber("rms_norm_eps", RmsNormEps);
            w.WriteNumber("rope_theta", RopeTheta);
            w.WriteNull("rope_scaling");
            w.WriteNumber("max_position_embeddings", MaxPositionEmbeddings);
            w.WriteBoolean("tie_word_embeddings", TieWordEmbeddings);
            w.WriteBoolean("attention_bias", false);
            w.WriteBoolean("mlp_bias", false);
            if (BosTokenId is int bos) w.WriteNumber("bos_token_id", bos);
            if (EosTokenIds.Count == 1) w.WriteNumber("eos_token_id", EosTokenIds[0]);
            else if (EosTokenIds.Count > 1)
            {
                w.WriteStartArray("eos_token_id");
                foreach (int e in EosTokenIds) w.WriteNumberValue(e);
                w.WriteEndArray();
            }
            if (TorchDtype is not null) w.WriteString("torch_dtype", TorchDtype);
            if (lckv)
            {
                if (LayerTypes is not null) w.WriteString("layer_types", LayerTypes);
                w.WriteNumber("forward_passes", ForwardPasses);
                w.WriteNumber("backward_passes", BackwardPasses);
                w.WriteNumber("sliding_window", SlidingWindow);
                w.WriteBoolean("force_nodiag", ForceNoDiag);
                w.WriteBoolean("use_sequential", UseSequential);
            }
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(buffer.WrittenSpan) + "\n";
    }

    /// <summary>Most decoder layers a config may have: far above any real model; a corrupt count fails here, before
    /// per-layer tables are allocated.</summary>
    public const int MaxLayers = 1 << 16;

    /// <summary>Throws LckvException if the record is inconsistent (used by Parse and by presets).</summary>
    public void Validate() => Validate("model config");

    /// <summary>Validate with errors naming source (the file the config came from).</summary>
    internal void Validate(string source)
    {
        if (ModelType is not (LlamaType or LckvLlamaType))
            throw new LckvException($"{source}: unsupported model_type '{Printable.Escape(ModelType)}' (expected llama or lckv-llama)");
        Positive(source, "hidden_size", HiddenSize);
        Positive(source, "intermediate_size", IntermediateSize);
        Positive(source, "num_hidden_layers", NumHiddenLayers);
        if (NumHiddenLayers > MaxLayers)
            throw new LckvException($"{source}: num_hidden_layers {NumHiddenLayers} is more than the {MaxLayers} Lckv supports");
        Positive(source, "num_attention_heads", NumAttentionHeads);
        Positive(source, "num_key_value_heads", NumKeyValueHeads);
        Positive(source, "head_dim", HeadDim);
        Positive(source, "vocab_size", VocabSize);
        Positive(source, "max_position_embeddings", MaxPositionEmbeddings);
        if (NumAttentionHeads % NumKeyValueHeads != 0)
            throw new LckvException($"{source}: num_attention_heads {NumAttentionHeads} is not a multiple of num_key_value_heads {NumKeyValueHeads}");
        if (HeadDim % 2 != 0)
            throw new LckvException($"{source}: head_dim {HeadDim} must be even (rotary embedding rotates pairs)");
        if (!(RmsNormEps > 0) || !float.IsFinite(RmsNormEps))
            throw new LckvException($"{source}: rms_norm_eps must be a positive number, not {RmsNormEps}");
        if (!(RopeTheta > 0) || !double.IsFinite(RopeTheta))
            throw new LckvException($"{source}: rope_theta must be a positive number, not {RopeTheta}");
        if (BosTokenId is int bos && (bos < 0 || bos >= VocabSize))
            throw new LckvException($"{source}: bos_token_id {bos} is outside the vocabulary [0, {VocabSize})");
        foreach (int e in EosTokenIds)
        {
            if (e < 0 || e >= VocabSize)
                throw new LckvException($"{source}: eos_token_id {e} is outside the vocabulary [0, {VocabSize})");
        }
        if (TorchDtype is not (null or "float32" or "bfloat16" or "float16"))
            throw new LckvException($"{source}: unsupported torch_dtype '{Printable.Escape(TorchDtype)}' (expected float32, bfloat16 or float16)");
        if (ForwardPasses < 0)
            throw new LckvException($"{source}: forward_passes must be 0 or more, not {ForwardPasses}");
        Positive(source, "backward_passes", BackwardPasses);
        Positive(source, "sliding_window", SlidingWindow);
        if (LayerTypes is not null && LayerTypes.Length == 0)
            throw new LckvException($"{source}: layer_types is empty");
    }

    private static void Positive(string source, string field, int value)
    {
        if (value <= 0) throw new LckvException($"{source}: {field} must be positive, not {value}");
    }
}

/// <summary>generation_config.json, when present: defaults for sampling and stop ids.</summary>
public sealed record GenerationConfig
{
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    public float? Temperature { get; init; }
    public int? TopK { get; init; }
    public float? TopP { get; init; }
    public float? MinP { get; init; }
    public float? RepetitionPenalty { get; init; }
    public int? MaxNewTokens { get; init; }
    public bool? DoSample { get; init; }

    /// <summary>Null if the file does not exist; LckvException if it is malformed. A folder means its generation_config.json.</summary>
    public static GenerationConfig? LoadIfPresent(string path)
    {
        if (Directory.Exists(path)) path = Path.Combine(path, "generation_config.json");
        if (!File.Exists(path)) return null;
        return Parse(JsonFields.ReadText(path), path);
    }

    /// <summary>source names the file in error messages.</summary>
    public static GenerationConfig Parse(string json, string source)
    {
        using var doc = JsonFields.ParseDocument(json, source);
        var f = new JsonFields(doc.RootElement, source);
        var g = new GenerationConfig
        {
            BosTokenId = f.Int("bos_token_id"),
            EosTokenIds = f.IntOrList("eos_token_id"),
            Temperature = (float?)f.Double("temperature"),
            TopK = f.Int("top_k"),
            TopP = (float?)f.Double("top_p"),
            MinP = (float?)f.Double("min_p"),
            RepetitionPenalty = (float?)f.Double("repetition_penalty"),
            MaxNewTokens = f.Int("max_new_tokens"),
            DoSample = f.Bool("do_sample"),
        };
        if (g.Temperature is < 0) throw new LckvException($"{source}: temperature must be 0 or more, not {g.Temperature}");
        if (g.TopK is < 0) throw new LckvException($"{source}: top_k must be 0 or more, not {g.TopK}");
        if (g.TopP is < 0 or > 1) throw new LckvException($"{source}: top_p must be in [0, 1], not {g.TopP}");
        if (g.MinP is < 0 or > 1) throw new LckvException($"{source}: min_p must be in [0, 1], not {g.MinP}");
        if (g.RepetitionPenalty is <= 0) throw new LckvException($"{source}: repetition_penalty must be positive, not {g.RepetitionPenalty}");
        if (g.MaxNewTokens is < 0) throw new LckvException($"{source}: max_new_tokens must be 0 or more, not {g.MaxNewTokens}");
        return g;
    }
}

/// <summary>Typed, optional reads of a JSON object's fields with one-line errors naming the file and field.</summary>
internal readonly struct JsonFields(JsonElement root, string source)
{
    public JsonElement Root => root;

    public static string ReadText(string path)
    {
        try { return File.ReadAllText(path); }
        catch (FileNotFoundException e) { throw new LckvException($"{path}: file not found", e); }
        catch (DirectoryNotFoundException e) { throw new LckvException($"{path}: file not found", e); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new LckvException($"{path}: cannot read: {e.Message}", e);
        }
    }

    /// <summary>Parses a document whose root must be an object.</summary>
    public static JsonDocument ParseDocument(string json, string source)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json);
        }
        catch (JsonException e)
        {
            throw new LckvException($"{source}: malformed JSON at line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}: {SafeTensorsFile.JsonMessage(e)}", e);
        }
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
        {
            var kind = doc.RootElement.ValueKind;
            doc.Dispose();
            throw new LckvException($"{source}: expected a JSON object, found a {SafeTensorsFile.Kind(kind)}");
        }
        return doc;
    }

    public static string Short(string s) => Printable.Escape(s);

    private bool TryGet(string name, out JsonElement value)
        => root.TryGetProperty(name, out value) && value.ValueKind != JsonValueKind.Null;

    private LckvException WrongType(string name, JsonElement value, string expected)
        => new($"{source}: field '{name}' must be {expected}, not {Short(value.GetRawText())}");

    public int RequiredInt(string name)
        => Int(name) ?? throw new LckvException($"{source}: missing required field '{name}'");

    public int? Int(string name)
    {
        if (!TryGet(name, out var v)) return null;
        return AsInt(name, v);
    }

    private int AsInt(string name, JsonElement v)
    {
        if (v.ValueKind == JsonValueKind.Number)
        {
            if (v.TryGetInt32(out int i)) return i;
            // integral values written as floats (64.0)
            if (v.TryGetDouble(out double d) && d == Math.Floor(d) && d >= int.MinValue && d <= int.MaxValue) return (int)d;
        }
        throw WrongType(name, v, "an integer");
    }

    public double? Double(string name)
    {
        if (!TryGet(name, out var v)) return null;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d)) return d;
        throw WrongType(name, v, "a number");
    }

    public bool? Bool(string name)
    {
        if (!TryGet(name, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw WrongType(name, v, "true or false"),
        };
    }

    public string? String(string name)
    {
        if (!TryGet(name, out var v)) return null;
        if (v.ValueKind == JsonValueKind.String) return v.GetString();
        throw WrongType(name, v, "a string");
    }

    /// <summary>An integer, a list of integers, or absent/null (empty).</summary>
    public IReadOnlyList<int> IntOrList(string name)
    {
        if (!TryGet(name, out var v)) return [];
        if (v.ValueKind == JsonValueKind.Array)
        {
            var list = new List<int>(v.GetArrayLength());
            foreach (var item in v.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.Number) throw WrongType(name, v, "an integer or a list of integers");
                list.Add(AsInt(name, item));
            }
            return list.ToArray();
        }
        if (v.ValueKind == JsonValueKind.Number) return [AsInt(name, v)];
        throw WrongType(name, v, "an integer or a list of integers");
    }
}
