using System.Text.Json;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;
using Xunit.Abstractions;

namespace Lckv.Tests.Cache;

/// <summary>
/// H2O and StreamingLLM through the policy seam against ../shared/golden-compress: teacher-forced logits (every token its own step) and
/// the positions each store keeps per KV head, and a greedy generation (the prompt in one step attending fully, or token
/// by token where the case says so) with its step logits and kept positions, through the engine.
/// </summary>
public sealed class EvictionGoldenTests(ITestOutputHelper output)
{
    public static TheoryData<string> Cases => new() { "h2o-llama", "h2o-lckv-sandwich", "streaming-llama", "streaming-lckv-nodiag" };

    private sealed record Case(string Evict, int Sinks, int Heavy, int Recent, int MaxNewTokens, string Prefill);

    private static (LlamaModel Model, TensorSet Expected, Case Case) Open(string name)
    {
        var dir = SharedData.Path("golden-compress", name);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "case.json")));
        var r = doc.RootElement;
        static int Int(JsonElement e) => e.ValueKind == JsonValueKind.Number ? e.GetInt32() : 0;
        var c = new Case(r.GetProperty("evict").GetString()!, Int(r.GetProperty("sinks")), Int(r.GetProperty("heavy")),
            r.GetProperty("recent").GetInt32(), r.GetProperty("max_new_tokens").GetInt32(), r.GetProperty("prefill").GetString()!);
        return (LlamaModel.Load(dir), TensorSet.Open(Path.Combine(dir, "expected.safetensors")), c);
    }

    private static unsafe T[] Read<T>(TensorSet set, string name) where T : unmanaged
        => new ReadOnlySpan<T>((void*)set.Pointer(name), (int)(set.Info(name).Length / sizeof(T))).ToArray();

    private static int[][] Rows(TensorSet set, string name)
    {
        var shape = set.Info(name).Shape;
        var all = Read<long>(set, name);
        return [.. Enumerable.Range(0, (int)shape[0]).Select(i => all.Skip(i * (int)shape[1]).Take((int)shape[1]).Select(x => (int)x).ToArray())];
    }

    private static KvCache Cache(LlamaModel model, KvBlockPool pool, Case c, int maxStep)
    {
        KvPolicy policy = c.Evict == "h2o" ? new H2OPolicy(c.Heavy, c.Recent, maxStep) : new StreamingPolicy(c.Sinks, c.Recent, maxStep, model.HeadDim, model.Config.RopeTheta);
        return new KvCache(pool, Enumerable.Repeat<KvPolicy>(policy, model.Map.KvLayerCount).ToArray(), model.ContextLength);
    }

    // kept.<layer> [B, KV, budget]: each store's positions per sequence and KV head, ascending, -1 padded
    private static void CheckKept(LlamaModel model, KvCache cache, TensorSet expected, string prefix, int[] seqs)
    {
        var map = model.Map;
        for (int layer = 0; layer < map.LayerCount; layer++)
        {
            if (!map.ComputesKv(layer)) continue;
            var want = Read<long>(expected, $"{prefix}.{layer}");
            int kv = map.KvIndex(layer), heads = model.KvHeads, width = want.Length / (seqs.Length * heads);
            for (int b = 0; b < seqs.Length; b++)
                for (int g = 0; g < heads; g++)
                {
                    var state = cache.StateOf(seqs[b], kv);
                    var have = Enumerable.Range(0, state.Count).Select(e => (long)state.Positions![g * state.Capacity + e]).ToArray();
                    var exp = want.Skip((b * heads + g) * width).Take(width).Where(p => p >= 0).ToArray();
                    Assert.True(exp.SequenceEqual(have), $"{prefix}.{layer} sequence {b} KV head {g}: kept [{string.Join(",", have)}], expected [{string.Join(",", exp)}]");
                }
        }
    }

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void TeacherForcedLogitsAndKeptPositions(string name)
    {
        var (model, expected, c) = Open(name);
        using var _m = model;
        using var _e = expected;
        var ids = Rows(expected, "input_ids");
        int b = ids.Length, t = ids[0].Length, v = model.Vocab;
        var layout = model.KvLayout(blockSize: 3, DType.F32);
        using var pool = new KvBlockPool(layout, 256 * layout.BlockBytes);
        var cache = Cache(model, pool, c, maxStep: 1);
        var runner = new ForwardRunner(model, cache, b, b);
        var seqs = ids.Select(_ => cache.CreateSequence()).ToArray();
        var logits = new float[b * t * v];
        var step = new float[b * v];
        for (int p = 0; p < t; p++)
        {
            foreach (var s in seqs) Assert.True(cache.TryReserve(s, p + 1));
            runner.Run(seqs.Select(s => new StepSequence(s, 1)).ToArray(), ids.Select(x => x[p]).ToArray(), LogitsRows.Last, step);
            for (int i = 0; i < b; i++) step.AsSpan(i * v, v).CopyTo(logits.AsSpan((i * t + p) * v, v));
            for (int kv = 0; kv < cache.KvLayers; kv++)
                foreach (var s in seqs) Assert.True(cache.EntryCount(s, kv) <= c.Sinks + c.Heavy + c.Recent);
        }
        var want = Read<float>(expected, "logits_tf");
        double diff = 0;
        for (int i = 0; i < want.Length; i++) diff = Math.Max(diff, Math.Abs(want[i] - logits[i]));
        output.WriteLine($"{name}: logits_tf max abs diff {diff:E2}");
        Assert.True(diff <= 1e-4, $"logits_tf differ by {diff}");
        CheckKept(model, cache, expected, "kept_tf", seqs);
        foreach (var s in seqs) cache.Remove(s);
        Assert.Equal(0, pool.UsedBlocks);
    }

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void GreedyGenerationThroughTheEngine(string name)
    {
        var (model, expected, c) = Open(name);
        using var _m = model;
        using var _e = expected;
        var prompts = Rows(expected, "generate.prompt_ids");
        var outputs = Rows(expected, "generate.output_ids");
        int v = model.Vocab, p = prompts[0].Length;
        var layout = model.KvLayout(blockSize: 4, DType.F32);
        using var pool = new KvBlockPool(layout, 256 * layout.BlockBytes);
        var cache = Cache(model, pool, c, maxStep: p);
        var engine = new GenerationEngine(model, cache, new EngineOptions
        {
            MaxStepTokens = p, MaxPromptTokens = p, MaxSequences = prompts.Length,
            Prefill = c.Prefill == "sequential" ? PrefillMode.Sequential : PrefillMode.Plan,
        });
        var stepLogits = prompts.Select(_ => new List<float[]>()).ToArray();
        var seqs = prompts.Select((prompt, i) => engine.Admit(new GenerationRequest
        {
            Prompt = prompt, MaxNewTokens = c.MaxNewTokens, Sampling = SamplingParams.Greedy,
            OnLogits = (_, _, row) => stepLogits[i].Add(row.ToArray()),
        })).ToArray();
        while (engine.HasWork) engine.Step();
        var want = Read<float>(expected, "generate.step_logits");
        double diff = 0;
        for (int i = 0; i < seqs.Length; i++)
        {
            Assert.Equal(outputs[i], seqs[i].Output);
            for (int s = 0; s < c.MaxNewTokens; s++)
                for (int j = 0; j < v; j++) diff = Math.Max(diff, Math.Abs(want[(i * c.MaxNewTokens + s) * v + j] - stepLogits[i][s][j]));
        }
        output.WriteLine($"{name}: generate.step_logits max abs diff {diff:E2}");
        Assert.True(diff <= 1e-4, $"step logits differ by {diff}");
        CheckKept(model, cache, expected, "kept", [.. seqs.Select(s => s.Id)]);
        foreach (var s in seqs) engine.Retire(s);
        Assert.Equal(0, pool.UsedBlocks);
    }

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void TheCliGeneratesTheGoldenIds(string name)
    {
        var (model, expected, c) = Open(name);
        model.Dispose();
        using var _e = expected;
        var prompts = Rows(expected, "generate.prompt_ids");
        var outputs = Rows(expected, "generate.output_ids");
        var args = new List<string>
        {
            "generate", "--model", SharedData.Path("golden-compress", name), "--prompt-ids", string.Join(';', prompts.Select(p => string.Join(',', p))),
            "--temperature", "0", "--max-tokens", c.MaxNewTokens.ToString(), "--ignore-eos", "--json", "--evict", c.Evict,
            "--recent", c.Recent.ToString(), "--prefill", c.Prefill == "sequential" ? "sequential" : "plan",
        };
        args.AddRange(c.Evict == "h2o" ? ["--heavy", c.Heavy.ToString()] : ["--sinks", c.Sinks.ToString()]);
        var (code, stdout, stderr) = Lckv.Tests.Cli.CliTests.Run([.. args]);
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var got = doc.RootElement.GetProperty("output_ids").EnumerateArray().Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        for (int i = 0; i < outputs.Length; i++) Assert.Equal(outputs[i], got[i]);
    }

    [Theory]
    [InlineData("--heavy", "3", "--heavy needs --evict h2o")]
    [InlineData("--sinks", "3", "--sinks needs --evict streaming")]
    [InlineData("--recent", "3", "--recent needs --evict streaming or h2o")]
    [InlineData("--evict", "h2o", "--evict h2o needs --recent N")]
    [InlineData("--evict", "lru", "--evict must be none, streaming or h2o")]
    public void OptionsThatMakeNoSenseAreOneLineErrors(string option, string value, string message)
    {
        var (code, _, stderr) = Lckv.Tests.Cli.CliTests.Run("generate", "--preset", "small", "--prompt-ids", "1,2", "-n", "1", option, value);
        Assert.NotEqual(0, code);
        Assert.Contains(message, stderr);
        Assert.Single(stderr.Trim().Split('\n'));
    }

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void PerplexityIsTeacherForcedDecode(string name)
    {
        var (model, expected, c) = Open(name);
        using var _m = model;
        using var _e = expected;
        var ids = Rows(expected, "input_ids");
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(SharedData.Path("golden-compress", name), "expected.json")));
        var want = doc.RootElement.GetProperty("ppl_tf").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        var eviction = new EvictionSettings(c.Evict == "h2o" ? EvictionKind.H2O : EvictionKind.Streaming, c.Sinks, c.Heavy, c.Recent);
        // each row alone (one window), and both rows as one stream of two windows decoded side by side
        for (int b = 0; b < ids.Length; b++)
        {
            var r = Perplexity.Evaluate(model, ids[b], ids[b].Length, ids[b].Length, eviction: eviction);
            output.WriteLine($"{name} row {b}: perplexity {r.Perplexity:F4}, reference {want[b]:F4}");
            Assert.True(Math.Abs(r.Perplexity - want[b]) <= 1e-4 * want[b], $"row {b}: {r.Perplexity} vs {want[b]}");
        }
        int t = ids[0].Length;
        var both = Perplexity.Evaluate(model, [.. ids[0], .. ids[1]], t, t, eviction: eviction);
        double mean = (Math.Log(want[0]) + Math.Log(want[1])) / 2;
        Assert.Equal(2, both.Windows);
        Assert.True(Math.Abs(both.MeanNll - mean) <= 1e-4 * Math.Abs(mean), $"two windows: mean NLL {both.MeanNll} vs {mean}");
    }
}
