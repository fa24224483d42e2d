using Lckv.Cache;
using Lckv.Formats;
using Lckv.Model;
using Lckv.Numerics;

namespace Lckv.Tests.Model;

/// <summary>
/// A step that admits a prompt while other sequences decode: for a layout with upward-reading layers the prompt goes
/// through the iteration plan and the decodes through one pass (two evaluations of the layer stack, never the whole
/// batch token by token), with the same logits as running each part alone; a standard layout takes it in one.
/// </summary>
public sealed class MixedStepTests
{
    private static LlamaModel Tiny(string? layerTypes)
    {
        var cfg = new ModelConfig
        {
            ModelType = layerTypes is null ? ModelConfig.LlamaType : ModelConfig.LckvLlamaType, LayerTypes = layerTypes,
            HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 4, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8,
            VocabSize = 41, MaxPositionEmbeddings = 64, ForwardPasses = 2, BackwardPasses = 2,
        };
        var map = LayerMap.Parse(cfg.LayerTypes, cfg.NumHiddenLayers);
        return new LlamaModel(cfg, ModelWeights.Random(cfg, map, DType.F32, 7), "tiny");
    }

    [Theory]
    [InlineData(null, 1)]
    [InlineData("0_3_3_3", 2)]
    [InlineData("0_1_3_3", 2)]
    public void APromptJoinsDecodingSequencesInOneStep(string? layerTypes, int evaluations)
    {
        using var model = Tiny(layerTypes);
        int v = model.Vocab;
        var rng = new SplitMix64(3);
        int[] Tokens(int n) => [.. Enumerable.Range(0, n).Select(_ => (int)(rng.Next() % (ulong)v))];
        var prompts = new[] { Tokens(6), Tokens(9), Tokens(7) };
        var next = Tokens(3);
        var late = Tokens(12);

        // together: three sequences prefilled, then one step with their next tokens and the late prompt
        var (mixed, count) = Run(model, prompts, runner =>
        {
            var batch = new StepSequence[] { new(0, 1), new(1, 1), new(3, late.Length), new(2, 1) };
            var tokens = new[] { next[0], next[1] }.Concat(late).Append(next[2]).ToArray();
            var logits = new float[4 * v];
            long before = runner.Evaluations;
            runner.Run(batch, tokens, LogitsRows.Last, logits);
            return (logits, runner.Evaluations - before);
        });
        Assert.Equal(evaluations, count);

        // apart: the decodes in one step, the late prompt alone
        var (apart, _) = Run(model, prompts, runner =>
        {
            var decode = new float[3 * v];
            runner.Run([new(0, 1), new(1, 1), new(2, 1)], next, LogitsRows.Last, decode);
            var prompt = new float[v];
            runner.Run([new(3, late.Length)], late, LogitsRows.Last, prompt);
            var logits = new float[4 * v];
            decode.AsSpan(0, 2 * v).CopyTo(logits);
            prompt.CopyTo(logits.AsSpan(2 * v));
            decode.AsSpan(2 * v, v).CopyTo(logits.AsSpan(3 * v));
            return (logits, 0L);
        });
        for (int i = 0; i < mixed.Length; i++)
            Assert.True(Math.Abs(mixed[i] - apart[i]) <= 1e-5f, $"logit {i}: {mixed[i]} together, {apart[i]} apart");
    }

    private static (float[] Logits, long Evaluations) Run(LlamaModel model, int[][] prompts, Func<ForwardRunner, (float[], long)> step)
    {
        var layout = model.KvLayout(4, DType.F32);
        using var pool = new KvBlockPool(layout, 256 * layout.BlockBytes);
        var cache = model.CreateCache(pool, 32);
        var runner = new ForwardRunner(model, cache, 32, 4);
        var scratch = new float[model.Vocab];
        for (int i = 0; i < prompts.Length; i++)
        {
            int s = cache.CreateSequence();
            Assert.True(cache.TryReserve(s, prompts[i].Length + 1));
            runner.Run([new(s, prompts[i].Length)], prompts[i], LogitsRows.Last, scratch);
        }
        int late = cache.CreateSequence();
        Assert.True(cache.TryReserve(late, 12));
        return step(runner);
    }
}
