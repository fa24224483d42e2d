namespace Lckv.Generation;
public sealed record SamplingParams { public float Temperature { get; init; } = 1; public int TopK { get; init; } public float TopP { get; init; } = 1; public float MinP { get; init; } public float RepetitionPenalty { get; init; } = 1; public ulong? Seed { get; init; } public void Validate() { } }
public sealed class Sampler { public Sampler(SamplingParams p, int vocab) { _ = p; _ = vocab; } public int Sample(ReadOnlySpan<float> logits, ReadOnlySpan<int> prev) => Lckv.Numerics.Selection.Argmax(logits); }
