using Lckv.Formats;
using Lckv.Numerics;

namespace Lckv.Model;

/// <summary>Built-in model shapes with random weights, so benchmarks and demos need no download.</summary>
public static class Presets
{
    public static IReadOnlyList<string> Names { get; } = ["small", "tinyllama-1.1b"];

    /// <summary>The config of a preset shape (plain Llama layout).</summary>
    public static ModelConfig Config(string name) => name.ToLowerInvariant() switch
    {
        "small" => new ModelConfig
        {
            HiddenSize = 512, IntermediateSize = 1408, NumHiddenLayers = 8, NumAttentionHeads = 8, NumKeyValueHeads = 4,
            HeadDim = 64, VocabSize = 4096, MaxPositionEmbeddings = 2048, RmsNormEps = 1e-5f, RopeTheta = 10000,
            BosTokenId = 1, EosTokenIds = [2], TorchDtype = "float32",
        },
        "tinyllama-1.1b" or "tinyllama" => new ModelConfig
        {
            HiddenSize = 2048, IntermediateSize = 5632, NumHiddenLayers = 22, NumAttentionHeads = 32, NumKeyValueHeads = 4,
            HeadDim = 64, VocabSize = 32000, MaxPositionEmbeddings = 2048, RmsNormEps = 1e-5f, RopeTheta = 10000,
            BosTokenId = 1, EosTokenIds = [2], TorchDtype = "bfloat16",
        },
        _ => throw new LckvException($"unknown preset '{name}' (expected one of: {string.Join(", ", Names)})"),
    };

    /// <summary>The dtype a preset's weights use unless told otherwise.</summary>
    public static DType DefaultDType(string name) => Config(name).TorchDtype == "bfloat16" ? DType.BF16 : DType.F32;
}
