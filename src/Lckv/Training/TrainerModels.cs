using Lckv.Formats;

namespace Lckv.Training;

/// <summary>Builds a trainable model from a config, an architecture name and an initialisation seed.</summary>
public delegate ITrainable TrainableFactory(ModelConfig config, string arch, ulong seed);

/// <summary>
/// The models <c>lckv train</c> can build: <c>decoder</c>, the Llama / LCKV decoder the config describes, and
/// <c>bigram</c>, a baseline (a vocab x vocab table of next-token logits plus a bias) for testing the data and
/// checkpoint pipeline in seconds.
/// </summary>
public static class TrainerModels
{
    public const string Decoder = "decoder";
    public const string Bigram = "bigram";
    public static IReadOnlyList<string> Archs { get; } = [Decoder, Bigram];

    /// <summary>The default factory (the one the CLI uses).</summary>
    public static ITrainable Create(ModelConfig config, string arch, ulong seed) => arch switch
    {
        Decoder => CreateDecoder(config, seed),
        Bigram => new BigramModel(config.VocabSize, seed),
        _ => throw new LckvException($"unknown architecture '{arch}' (expected {string.Join(" or ", Archs)})") { Settings = ["arch"] },
    };

    /// <summary>The trainable decoder (autograd through the iteration plan).</summary>
    private static ITrainable CreateDecoder(ModelConfig config, ulong seed) => TrainableModel.FromConfig(config, seed);
}
