namespace Lckv.Formats;

/// <summary>
/// A Hugging Face config.json for model_type "llama" or "lckv-llama". Immutable. Parse validates: required fields
/// present and positive, heads divide evenly, hidden_act silu, rope_scaling absent or null (anything else is an
/// unsupported-setting error), unknown model_type an error naming it.
/// </summary>
public sealed record ModelConfig
{
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

    public static ModelConfig Load(string path) => throw new NotImplementedException();

    /// <summary>source names the file in error messages.</summary>
    public static ModelConfig Parse(string json, string source) => throw new NotImplementedException();

    /// <summary>Hugging Face JSON (model_type llama, or lckv-llama with its fields when LayerTypes is set).</summary>
    public string ToJson() => throw new NotImplementedException();

    /// <summary>Throws LckvException if the record is inconsistent (used by Parse and by presets).</summary>
    public void Validate() => throw new NotImplementedException();
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

    /// <summary>Null if the file does not exist; LckvException if it is malformed.</summary>
    public static GenerationConfig? LoadIfPresent(string path) => throw new NotImplementedException();
}
