using Lckv.Cache;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;
using Xunit.Abstractions;

namespace Lckv.Tests.Model;

/// <summary>
/// Sliding-window KV layers keep a bounded ring (kv-sharing.md §6): the golden YOCO fixture (window 4) evaluated
/// through rings much shorter than its sequences gives the reference's results, in bounded memory.
/// </summary>
public sealed class RingTests(ITestOutputHelper output)
{
    [SharedFact]
    public void TokenByTokenThroughRingsMatchesTheReference()
    {
        using var f = GoldenTests.Open("yoco-sliding"); // 0s_1s_2s_3_3_3, window 4
        var model = f.Model;
        var ids = f.Rows("input_ids");
        int b = ids.Length, t = ids[0].Length, v = model.Vocab;
        var layout = model.KvLayout(blockSize: 2, DType.F32);
        var rings = model.RingPositions(maxStepRows: 1, blockSize: 2);
        Assert.Equal([7, 7, 7, 0], rings); // layers 0-2 read only themselves through the window; layer 3 is read by 3-5
        using var pool = new KvBlockPool(layout, 64 * layout.BlockBytes);
        var cache = model.CreateCache(pool, maxStepRows: 1);
        Assert.Equal(4, cache.RingBlocks(0)); // 7 positions -> 4 blocks of 2, far fewer than the 8 blocks of 16 tokens
        Assert.Equal(0, cache.RingBlocks(3));
        var runner = new ForwardRunner(model, cache, 1 * b, b);
        var seqs = ids.Select(_ => cache.CreateSequence()).ToArray();
        var logits = new float[b * t * v];
        var step = new float[b * v];
        int maxUsed = 0;
        for (int p = 0; p < t; p++)
        {
            foreach (var s in seqs) Assert.True(cache.TryReserve(s, p + 1));
            runner.Run(seqs.Select(s => new StepSequence(s, 1)).ToArray(), ids.Select(x => x[p]).ToArray(), LogitsRows.Last, step);
            for (int i = 0; i < b; i++) step.AsSpan(i * v, v).CopyTo(logits.AsSpan((i * t + p) * v, v));
            maxUsed = Math.Max(maxUsed, pool.UsedBlocks);
        }
        var expected = f.Read<float>("logits_sequential");
        double diff = 0;
        for (int i = 0; i < logits.Length; i++) diff = Math.Max(diff, Math.Abs(logits[i] - expected[i]));
        output.WriteLine($"max abs diff {diff:E3}; blocks in use at most {maxUsed} (linear would take {b * 4 * 8})");
        Assert.True(diff <= 1e-4, $"max abs diff {diff}");
        Assert.Equal(b * (3 * 4 + 8), maxUsed); // three rings of 4 blocks and one linear layer of 8 blocks per sequence
    }

    [SharedFact]
    public void GenerationThroughRingsMatchesTheReference()
    {
        using var f = GoldenTests.Open("yoco-sliding");
        var model = f.Model;
        var prompts = f.Rows("generate.prompt_ids");
        var expected = f.Rows("generate.output_ids");
        const int stepRows = 3, block = 2;
        var layout = model.KvLayout(block, DType.F16);
        long need = prompts.Sum(p => model.KvBlocksFor(p.Length + expected[0].Length, block, stepRows));
        using var pool = new KvBlockPool(layout, need * layout.BlockBytes);
        var cache = model.CreateCache(pool, stepRows);
        Assert.True(cache.RingBlocks(0) > 0);
        var gen = new Generator(model, cache, maxStepRows: stepRows); // prefill in chunks of 3: the rings wrap during prefill too
        int maxUsed = 0;
        var result = gen.Generate(prompts, new GenerateOptions { MaxTokens = expected[0].Length, Sampling = new SamplingParams { Temperature = 0 } },
            onToken: (_, _, _) => maxUsed = Math.Max(maxUsed, pool.UsedBlocks));
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], result.Sequences[i].OutputIds);
        Assert.True(maxUsed <= need, $"{maxUsed} blocks used, {need} accounted");
        Assert.Equal(pool.TotalBlocks, pool.FreeBlocks);
    }

    [SharedFact]
    public void ARingTooSmallForTheStepIsRefused()
    {
        using var f = GoldenTests.Open("yoco-sliding");
        var model = f.Model;
        var layout = model.KvLayout(2, DType.F32);
        using var pool = new KvBlockPool(layout, 64 * layout.BlockBytes);
        var cache = model.CreateCache(pool, maxStepRows: 1);
        Assert.Throws<ArgumentException>(() => new ForwardRunner(model, cache, maxRows: 8, maxSequences: 1));
    }
}
