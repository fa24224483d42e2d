using System.Text;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Tests.Model;
using Xunit.Abstractions;

namespace Lckv.Tests.LckvSharing;

/// <summary>
/// Random tiny models with random valid layouts (any target per layer, sliding flags with small windows, force_nodiag
/// sometimes): the iteration plan agrees with the exact token-by-token definition (kv-sharing.md §4-5) wherever it has
/// converged, and the cache holds KV for exactly the KV-computing layers.
/// </summary>
/// <remarks>
/// The plan's passes move information one position forward each (a position's upward attention reads the previous
/// pass's KV of earlier positions; position 0 sees no key), so after P = m+b passes positions 0..P-1 are exact. The
/// runner only uses the plan for prompts longer than m+b (shorter ones go token by token), so a plan step always has
/// T &gt; P: the cases check rows t &lt; P of the plan exactly, and all rows when T &lt;= P (sequential prefill).
/// </remarks>
public sealed class PlanPropertyTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-4;
    private const int Count = 100;

    internal sealed record Case(int Seed, ModelConfig Config, int Tokens, int Batch, int BlockSize)
    {
        public int Passes => Config.ForwardPasses + Config.BackwardPasses;
        public override string ToString()
            => $"seed {Seed}: layer_types {Config.LayerTypes}, W={Config.SlidingWindow}, nodiag={Config.ForceNoDiag}, " +
               $"m={Config.ForwardPasses} b={Config.BackwardPasses}, T={Tokens}, B={Batch}, block {BlockSize}, kv heads {Config.NumKeyValueHeads}";
    }

    /// <summary>A random valid case: every layer_types string built this way parses (targets in [0, L)).</summary>
    internal static Case MakeCase(int seed)
    {
        var rng = new SplitMix64(0xC0FFEEUL + (ulong)seed * 0x9E3779B97F4A7C15UL);
        int Next(int n) => (int)(rng.Next() % (ulong)n);
        int layers = 2 + Next(5); // 2..6
        var tokens = new string[layers];
        for (int i = 0; i < layers; i++)
        {
            // bias towards the layouts of interest: upward targets, self, or a shared lower layer
            int target = Next(5) switch
            {
                0 => i,
                1 => Math.Min(layers - 1, i + 1 + Next(2)), // short upward hops make several cyclic groups
                2 or 3 => i + Next(layers - i),
                _ => Next(layers),
            };
            tokens[i] = target + (Next(4) == 0 ? "s" : "");
        }
        int t = 6 + Next(5); // 6..10
        int b = 1 + Next(3);
        // mostly fewer passes than tokens (the plan runs), sometimes at least as many (sequential prefill)
        int passes = Next(5) == 0 ? t + Next(3) : Math.Max(b, t - 1 - Next(4));
        int kvHeads = new[] { 1, 2, 4 }[Next(3)];
        var config = new ModelConfig
        {
            ModelType = ModelConfig.LckvLlamaType, HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = layers,
            NumAttentionHeads = 4, NumKeyValueHeads = kvHeads, HeadDim = 8, VocabSize = 64, MaxPositionEmbeddings = 32,
            RmsNormEps = 1e-5f, TorchDtype = "float32",
            LayerTypes = string.Join('_', tokens), ForwardPasses = passes - b, BackwardPasses = b,
            SlidingWindow = 1 + Next(4), ForceNoDiag = Next(3) == 0,
        };
        config.Validate();
        return new Case(seed, config, t, 1 + Next(2), 1 + Next(5));
    }

    internal sealed record Evaluation(float[] Logits, float[][] Keys, float[][] Values);

    /// <summary>
    /// Evaluates whole sequences in one step (or token by token) in a pool of exactly the blocks they need, checking
    /// the cache geometry on the way, and returns the logits [B, T, V] and the cached K/V per (sequence, KV layer).
    /// </summary>
    internal static Evaluation Evaluate(LlamaModel model, int[][] ids, PrefillMode mode, bool tokenByToken, int blockSize)
    {
        int b = ids.Length, t = ids[0].Length, v = model.Vocab;
        var map = model.Map;
        int kvLayers = map.KvLayerCount;
        var layout = model.KvLayout(blockSize, DType.F32);
        int blocks = b * (int)KvCache.BlocksFor(t, blockSize) * kvLayers;
        using var pool = new KvBlockPool(layout, blocks * layout.BlockBytes);
        Assert.Equal(blocks, pool.TotalBlocks);
        var cache = new KvCache(pool, kvLayers, model.ContextLength);
        Assert.Equal(Enumerable.Range(0, map.LayerCount).Count(map.ComputesKv), cache.KvLayers);
        Assert.Equal(2L * kvLayers * model.KvHeads * model.HeadDim * sizeof(float), cache.BytesPerToken);
        Assert.Equal(cache.BytesPerToken, model.KvBytesPerToken(DType.F32));
        var runner = new ForwardRunner(model, cache, b * t, b) { Prefill = mode };
        var seqs = ids.Select(_ => cache.CreateSequence()).ToArray();
        foreach (var s in seqs) Assert.True(cache.TryReserve(s, t));
        var logits = new float[b * t * v];
        if (!tokenByToken)
        {
            runner.Run(seqs.Select(s => new StepSequence(s, t)).ToArray(), ids.SelectMany(x => x).ToArray(), LogitsRows.All, logits);
        }
        else
        {
            var step = new float[b * v];
            for (int p = 0; p < t; p++)
            {
                runner.Run(seqs.Select(s => new StepSequence(s, 1)).ToArray(), ids.Select(x => x[p]).ToArray(), LogitsRows.Last, step);
                for (int i = 0; i < b; i++) step.AsSpan(i * v, v).CopyTo(logits.AsSpan((i * t + p) * v, v));
            }
        }
        // every sequence holds ceil(T / block) blocks in each KV layer, and nothing else is in use
        Assert.Equal(b * KvCache.BlocksFor(t, blockSize) * kvLayers, pool.UsedBlocks);
        int row = layout.RowElements;
        var keys = new float[b * kvLayers][];
        var values = new float[b * kvLayers][];
        for (int i = 0; i < b; i++)
        {
            Assert.Equal(t, cache.Length(seqs[i]));
            for (int l = 0; l < kvLayers; l++)
            {
                keys[i * kvLayers + l] = new float[t * row];
                values[i * kvLayers + l] = new float[t * row];
                cache.Read(seqs[i], l, 0, keys[i * kvLayers + l], values[i * kvLayers + l]);
            }
        }
        return new Evaluation(logits, keys, values);
    }

    /// <summary>Max |a - b| over rows [0, rows) of [groups, T, width] arrays.</summary>
    private static double MaxDiff(float[] a, float[] b, int groups, int t, int width, int rows)
    {
        double m = 0;
        for (int g = 0; g < groups; g++)
            for (int r = 0; r < rows; r++)
                for (int e = 0; e < width; e++)
                {
                    int i = (g * t + r) * width + e;
                    m = Math.Max(m, Math.Abs(a[i] - b[i]));
                }
        return m;
    }

    private static double MaxKvDiff(Evaluation a, Evaluation b, int t, int row, int rows)
    {
        double m = 0;
        for (int i = 0; i < a.Keys.Length; i++)
        {
            m = Math.Max(m, MaxDiff(a.Keys[i], b.Keys[i], 1, t, row, rows));
            m = Math.Max(m, MaxDiff(a.Values[i], b.Values[i], 1, t, row, rows));
        }
        return m;
    }

    public static TheoryData<int> Seeds()
    {
        var d = new TheoryData<int>();
        for (int s = 0; s < Count; s++) d.Add(s);
        return d;
    }

    [Theory]
    [MemberData(nameof(Seeds))]
    public void PlanMatchesTokenByTokenWhereItConverged(int seed)
    {
        var c = MakeCase(seed);
        var cfg = c.Config;
        var map = LayerMap.Parse(cfg.LayerTypes, cfg.NumHiddenLayers);
        using var model = new LlamaModel(cfg, ModelWeights.Random(cfg, map, DType.F32, (ulong)seed + 1), $"random:{seed}");
        var rng = new SplitMix64((ulong)seed * 31 + 7);
        var ids = Enumerable.Range(0, c.Batch).Select(_ => Enumerable.Range(0, c.Tokens).Select(_ => (int)(rng.Next() % 64)).ToArray()).ToArray();
        int t = c.Tokens, v = model.Vocab, row = cfg.NumKeyValueHeads * cfg.HeadDim;

        var exact = Evaluate(model, ids, PrefillMode.Plan, tokenByToken: true, c.BlockSize);
        var plan = Evaluate(model, ids, PrefillMode.Plan, tokenByToken: false, c.BlockSize);
        var sequential = Evaluate(model, ids, PrefillMode.Sequential, tokenByToken: false, c.BlockSize);

        bool planRan = map.AnyAttendsTop;
        // rows the plan must have right: all of them when m+b >= T (the property), else the first m+b
        int exactRows = Math.Min(t, c.Passes);
        var report = new StringBuilder($"{c}\n  map {map}, kv layers {map.KvLayerCount}, {(planRan ? $"plan ran, rows [0, {exactRows}) exact" : "single pass")}\n");
        double logitDiff = MaxDiff(plan.Logits, exact.Logits, c.Batch, t, v, exactRows);
        double kvDiff = MaxKvDiff(plan, exact, t, row, exactRows);
        double seqDiff = MaxDiff(sequential.Logits, exact.Logits, c.Batch, t, v, t);
        double seqKvDiff = MaxKvDiff(sequential, exact, t, row, t);
        report.AppendLine($"  plan vs token-by-token: logits {logitDiff:E2}, kv {kvDiff:E2}; sequential prefill: logits {seqDiff:E2}, kv {seqKvDiff:E2}");
        if (planRan && exactRows < t)
            report.AppendLine($"  (not converged, unchecked) rows [{exactRows}, {t}): logits differ by up to {MaxDiff(plan.Logits, exact.Logits, c.Batch, t, v, t):E2}");
        output.WriteLine(report.ToString());
        Assert.True(logitDiff <= Tolerance && kvDiff <= Tolerance && seqDiff <= Tolerance && seqKvDiff <= Tolerance, report.ToString());
        // the shared golden helper agrees with this harness
        Assert.Equal(exact.Logits, GoldenTests.WholeSequenceLogits(model, ids, PrefillMode.Plan, tokenByToken: true));
    }

    [Fact]
    public void CasesCoverThePlanAndTheLayouts()
    {
        var cases = Enumerable.Range(0, Count).Select(MakeCase).ToArray();
        var maps = cases.Select(c => LayerMap.Parse(c.Config.LayerTypes, c.Config.NumHiddenLayers)).ToArray();
        output.WriteLine($"plan ran {cases.Where((c, i) => maps[i].AnyAttendsTop && c.Tokens > c.Passes).Count()}, sequential {cases.Count(c => c.Tokens <= c.Passes)}, " +
            $"T = P+1 {cases.Where((c, i) => maps[i].AnyAttendsTop && c.Tokens == c.Passes + 1).Count()}, sliding {maps.Count(m => Enumerable.Range(0, m.LayerCount).Any(m.IsSliding))}, " +
            $"shared {maps.Count(m => m.KvLayerCount < m.LayerCount)}, no upward {maps.Count(m => !m.AnyAttendsTop)}, nodiag {cases.Count(c => c.Config.ForceNoDiag)}, " +
            $"2+ groups {maps.Count(m => IterationPlan.Build(m, 1, 1).Count(p => p.Advances && m.AttendsTop(p.Start)) >= 2)}");
        Assert.True(cases.Where((c, i) => maps[i].AnyAttendsTop && c.Tokens > c.Passes).Count() >= 30);
        Assert.True(cases.Where((c, i) => maps[i].AnyAttendsTop && c.Tokens <= c.Passes).Count() >= 10); // the property: m+b >= T, plan == exact on every row
        Assert.True(cases.Where((c, i) => maps[i].AnyAttendsTop && c.Tokens == c.Passes + 1).Count() >= 5);
        Assert.True(maps.Count(m => Enumerable.Range(0, m.LayerCount).Any(m.IsSliding)) >= 30);
        Assert.True(maps.Count(m => m.KvLayerCount < m.LayerCount) >= 40);
        Assert.True(maps.Count(m => !m.AnyAttendsTop) >= 3);
        Assert.True(cases.Count(c => c.Config.ForceNoDiag) >= 15);
        // several cyclic groups in one model
        Assert.True(maps.Count(m => IterationPlan.Build(m, 1, 1).Count(p => p.Advances && m.AttendsTop(p.Start)) >= 2) >= 5);
    }
}
