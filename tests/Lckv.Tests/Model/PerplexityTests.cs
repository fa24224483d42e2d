using System.Text.Json;
using Lckv.Cache;
using Lckv.Generation;
using Lckv.Numerics;
using Lckv.Tests.Cli;
using Lckv.Tests.Formats;

namespace Lckv.Tests.Model;

/// <summary>Perplexity of a golden sequence equals exp(mean NLL) computed from the reference's own logits.</summary>
public sealed class PerplexityTests
{
    /// <summary>exp(mean next-token NLL) of row `row` from the fixture's whole-sequence logits.</summary>
    private static double ReferencePerplexity(GoldenTests.Fixture f, int row)
    {
        var ids = f.Rows("input_ids")[row];
        var logits = f.Read<float>("logits");
        int t = ids.Length, v = f.Model.Vocab;
        double nll = 0;
        for (int p = 0; p + 1 < t; p++)
        {
            var r = logits.AsSpan((row * t + p) * v, v);
            nll += Softmax.LogSumExp(r) - r[ids[p + 1]];
        }
        return Math.Exp(nll / (t - 1));
    }

    [SharedTheory]
    [InlineData("llama-standard")]
    [InlineData("lckv-groups-nodiag")]
    [InlineData("yoco-sliding")]
    public void OneWindowMatchesTheReferenceLogits(string name)
    {
        using var f = GoldenTests.Open(name);
        var ids = f.Rows("input_ids")[1];
        var result = Perplexity.Evaluate(f.Model, ids, window: ids.Length, stride: ids.Length);
        double expected = ReferencePerplexity(f, 1);
        Assert.Equal(ids.Length - 1, result.ScoredTokens);
        Assert.True(Math.Abs(result.Perplexity - expected) <= 1e-4 * expected, $"ppl {result.Perplexity} vs reference {expected}");
    }

    [SharedFact]
    public void StridedWindowsScoreEveryTokenOnce()
    {
        using var f = GoldenTests.Open("llama-standard");
        var ids = f.Rows("input_ids")[0];
        var a = Perplexity.Evaluate(f.Model, ids, window: 8, stride: 3);
        Assert.Equal(ids.Length - 1, a.ScoredTokens);
        Assert.Equal(4, a.Windows); // starts 0, 3, 6, 9 (the last reaches the end)
        // with the window covering the whole sequence, striding changes nothing
        var whole = Perplexity.Evaluate(f.Model, ids, window: 16, stride: 16);
        Assert.True(Math.Abs(whole.Perplexity - ReferencePerplexity(f, 0)) <= 1e-4 * whole.Perplexity);
        // shorter windows see less context: a different (finite) value
        Assert.True(double.IsFinite(a.Perplexity) && a.Perplexity > 1);
    }

    [SharedFact]
    public void CliPrintsPerplexityAsJson()
    {
        using var f = GoldenTests.Open("llama-standard");
        using var dir = new TempDir();
        var ids = f.Rows("input_ids")[0];
        var path = dir.WriteText("ids.txt", string.Join(" ", ids[..8]) + "\n" + string.Join("\t", ids[8..]) + "\n");
        var (code, stdout, stderr) = CliTests.Run("perplexity", "--model", SharedData.Path("golden", "llama-standard"),
            "--ids-file", path, "--context", "16", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        double ppl = doc.RootElement.GetProperty("perplexity").GetDouble();
        double expected = ReferencePerplexity(f, 0);
        Assert.True(Math.Abs(ppl - expected) <= 1e-4 * expected, $"{ppl} vs {expected}");
        Assert.True(doc.RootElement.GetProperty("tokens_per_second").GetDouble() > 0);

        var bad = dir.WriteText("bad.txt", "1 2 three");
        var (code2, _, err2) = CliTests.Run("perplexity", "--model", SharedData.Path("golden", "llama-standard"), "--ids-file", bad);
        Assert.NotEqual(0, code2);
        Assert.Contains("three", err2);
    }

    [SharedFact]
    public void TextPerplexityUsesTheTokenizer()
    {
        var (code, stdout, stderr) = CliTests.Run("perplexity", "--model", SharedData.Path("golden", "llama-standard"),
            "--tokenizer", SharedData.Path("tokenizers", "en4k.model"), "--file", SharedData.Path("data", "tinyshakespeare.txt"),
            "--limit-tokens", "300", "--context", "64", "--stride", "32", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal(299, doc.RootElement.GetProperty("tokens").GetInt64());
    }

    // a store whose budget is at least the sequence evicts nothing: teacher-forced decode under StreamingLLM or H2O gives
    // the full cache's logits step by step, on a standard and an upward-reading layout, with f32 and int8 KV (int8 with
    // H2O only: StreamingLLM quantizes its keys unrotated, so its int8 store holds other values than the full cache's)
    [SharedTheory]
    [InlineData("llama-standard", "streaming", DType.F32)]
    [InlineData("llama-standard", "h2o", DType.KvInt8)]
    [InlineData("lckv-groups-nodiag", "h2o", DType.F32)]
    [InlineData("lckv-groups-nodiag", "streaming", DType.F32)]
    public void ABudgetLargerThanTheSequenceEqualsNoPolicy(string name, string kind, DType kv)
    {
        using var f = GoldenTests.Open(name);
        var ids = f.Rows("input_ids")[0];
        int t = ids.Length;
        var eviction = kind == "h2o" ? new EvictionSettings(EvictionKind.H2O, Heavy: 1, Recent: t)
            : new EvictionSettings(EvictionKind.Streaming, Sinks: 1, Recent: t);
        var full = Decode(f.Model, ids, kv, EvictionSettings.None);
        var evicting = Decode(f.Model, ids, kv, eviction);
        for (int i = 0; i < full.Length; i++)
            Assert.True(Math.Abs(full[i] - evicting[i]) <= 1e-5, $"logit {i}: {evicting[i]} under {kind}, {full[i]} without eviction");
    }

    // every token its own step through the runner; the logits of every step
    private static float[] Decode(Lckv.Model.LlamaModel model, int[] ids, DType kv, EvictionSettings eviction)
    {
        var layout = model.KvLayout(4, kv);
        using var pool = new KvBlockPool(layout, 256 * layout.BlockBytes);
        var cache = model.CreateCache(pool, 1, eviction);
        var runner = new Lckv.Model.ForwardRunner(model, cache, 1, 1);
        int seq = cache.CreateSequence(), v = model.Vocab;
        var logits = new float[ids.Length * v];
        for (int p = 0; p < ids.Length; p++)
        {
            Assert.True(cache.TryReserve(seq, p + 1));
            runner.Run([new Lckv.Model.StepSequence(seq, 1)], [ids[p]], Lckv.Model.LogitsRows.Last, logits.AsSpan(p * v, v));
        }
        return logits;
    }

    // the per-token NLLs are the ones the perplexity averages; segments split them by stream position
    [SharedTheory]
    [InlineData(false)]
    [InlineData(true)]
    public void SegmentsSplitTheStreamsTokenNlls(bool evicting)
    {
        using var f = GoldenTests.Open("llama-standard");
        var ids = f.Rows("input_ids")[0];
        int t = ids.Length;
        var r = Perplexity.Evaluate(f.Model, ids, t, t, eviction: evicting ? new EvictionSettings(EvictionKind.H2O, Heavy: 2, Recent: 2) : null);
        Assert.Equal(t, r.TokenNll.Count);
        Assert.True(double.IsNaN(r.TokenNll[0]));
        Assert.Equal(r.MeanNll, r.TokenNll.Skip(1).Average(), 9);
        var one = Assert.Single(r.Segments(t));
        Assert.Equal((0, t - 1), (one.From, one.Tokens));
        Assert.Equal(r.Perplexity, one.Perplexity, 9);
        var parts = r.Segments(5).ToList();
        Assert.Equal(Enumerable.Range(0, (t + 4) / 5).Select(i => i * 5), parts.Select(x => x.From));
        Assert.Equal(r.MeanNll * (t - 1), parts.Sum(x => x.Tokens * Math.Log(x.Perplexity)), 6);
    }
}
