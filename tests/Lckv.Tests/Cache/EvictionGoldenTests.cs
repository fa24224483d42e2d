using System.Text.Json;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Tests.Cli;
using Lckv.Tests.Formats;
using Lckv.Tests.Model;
using Xunit.Abstractions;

namespace Lckv.Tests.Cache;

/// <summary>
/// H2O, StreamingLLM and quantized KV (int8, q4) through the policy seam against ../shared/golden-compress, through the
/// library and the CLI:
/// teacher-forced logits (every token its own step) and the positions each store keeps per KV head; a greedy generation
/// (the prompt in one step attending fully, or token by token where the case says so) with its step logits and kept
/// positions, through the engine; perplexity as teacher-forced decode.
/// </summary>
public sealed class EvictionGoldenTests(ITestOutputHelper output)
{
    public static TheoryData<string> Cases => new() { "h2o-llama", "h2o-lckv-sandwich", "streaming-llama", "streaming-lckv-nodiag", "int8-llama", "q4-cla", "less-h2o-llama" };

    /// <summary>One case: its model, expected tensors, eviction settings and the CLI options that say the same.</summary>
    internal sealed class Fixture : IDisposable
    {
        public required string Dir { get; init; }
        public required LlamaModel Model { get; init; }
        public required TensorSet Expected { get; init; }
        public required EvictionSettings Eviction { get; init; }
        public required DType KvDType { get; init; }
        public required int MaxNewTokens { get; init; }
        public required bool Sequential { get; init; }
        /// <summary>The LESS maps file of the case, or null.</summary>
        public string? LessPath { get; init; }

        public string[] CliOptions =>
        [
            "--kv-dtype", KvRows.Name(KvDType),
            .. Eviction.Kind switch
            {
                EvictionKind.H2O => ["--evict", "h2o", "--recent", Eviction.Recent.ToString(), "--heavy", Eviction.Heavy.ToString()],
                EvictionKind.Streaming => ["--evict", "streaming", "--recent", Eviction.Recent.ToString(), "--sinks", Eviction.Sinks.ToString()],
                _ => Array.Empty<string>(),
            },
            .. LessPath is null ? Array.Empty<string>() : ["--less", LessPath],
        ];

        public unsafe T[] Read<T>(string name) where T : unmanaged
            => new ReadOnlySpan<T>((void*)Expected.Pointer(name), (int)(Expected.Info(name).Length / sizeof(T))).ToArray();

        public int[][] Rows(string name)
        {
            var shape = Expected.Info(name).Shape;
            var all = Read<long>(name);
            return [.. Enumerable.Range(0, (int)shape[0]).Select(i => all.Skip(i * (int)shape[1]).Take((int)shape[1]).Select(x => (int)x).ToArray())];
        }

        /// <summary>A cache whose every store evicts as the case says, for steps of at most maxStep tokens per sequence.</summary>
        public KvCache Cache(KvBlockPool pool, int maxStep) => Model.CreateCache(pool, maxStep, Eviction);

        public void Dispose()
        {
            Model.Dispose();
            Expected.Dispose();
        }
    }

    /// <summary>A case with its own model, or (modelDir) another checkpoint's, e.g. the model a KVSharer search wrote.</summary>
    internal static Fixture Open(string name, string? modelDir = null)
    {
        var dir = SharedData.Path("golden-compress", name);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "case.json")));
        var r = doc.RootElement;
        static int Int(JsonElement e) => e.ValueKind == JsonValueKind.Number ? e.GetInt32() : 0;
        var kind = r.GetProperty("evict").GetString() switch { "h2o" => EvictionKind.H2O, "streaming" => EvictionKind.Streaming, _ => EvictionKind.None };
        var model = LlamaModel.Load(modelDir ?? dir);
        string? less = r.TryGetProperty("less", out var l) && l.ValueKind == JsonValueKind.String ? Path.Combine(dir, l.GetString()!) : null;
        return new Fixture
        {
            Dir = dir, Model = model, Expected = TensorSet.Open(Path.Combine(dir, "expected.safetensors")), LessPath = less,
            Eviction = new EvictionSettings(kind, Int(r.GetProperty("sinks")), Int(r.GetProperty("heavy")), Int(r.GetProperty("recent")))
            {
                Less = less is null ? null : LessMaps.Load(less, model.Config, model.Map),
            },
            KvDType = KvRows.Parse(r.GetProperty("kv_dtype").GetString()!),
            MaxNewTokens = r.GetProperty("max_new_tokens").GetInt32(), Sequential = r.GetProperty("prefill").GetString() == "sequential",
        };
    }

    // kept.<layer> [B, KV, budget]: each store's positions per sequence and KV head, ascending, -1 padded
    private static void CheckKept(Fixture f, KvCache cache, string prefix, int[] seqs)
    {
        var map = f.Model.Map;
        for (int layer = 0; layer < map.LayerCount; layer++)
        {
            if (!map.ComputesKv(layer)) continue;
            var want = f.Read<long>($"{prefix}.{layer}");
            int kv = map.KvIndex(layer), heads = f.Model.KvHeads, width = want.Length / (seqs.Length * heads);
            for (int b = 0; b < seqs.Length; b++)
                for (int g = 0; g < heads; g++)
                {
                    var state = cache.StateOf(seqs[b], kv);
                    var have = state.Positions is null
                        ? Enumerable.Range(0, cache.EntryCount(seqs[b], kv)).Select(e => (long)e).ToArray()
                        : Enumerable.Range(0, state.Count).Select(e => (long)state.Positions[g * state.Capacity + e]).ToArray();
                    var exp = want.Skip((b * heads + g) * width).Take(width).Where(p => p >= 0).ToArray();
                    Assert.True(exp.SequenceEqual(have), $"{prefix}.{layer} sequence {b} KV head {g}: kept [{string.Join(",", have)}], expected [{string.Join(",", exp)}]");
                }
        }
    }

    // every token of input_ids its own step, KV stored as kvDType; checks the budget after every step and, with
    // checkKept, the positions kept after the last; the pool is empty afterwards
    internal static float[] TeacherForced(Fixture f, DType kvDType, bool checkKept)
    {
        var model = f.Model;
        var ids = f.Rows("input_ids");
        int b = ids.Length, t = ids[0].Length, v = model.Vocab;
        var layout = model.KvLayout(blockSize: 3, kvDType);
        using var pool = new KvBlockPool(layout, 256 * layout.BlockBytes);
        var cache = f.Cache(pool, maxStep: 1);
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
                foreach (var s in seqs) Assert.True(cache.EntryCount(s, kv) <= f.Eviction.Budget);
        }
        if (checkKept) CheckKept(f, cache, "kept_tf", seqs);
        foreach (var s in seqs) cache.Remove(s);
        Assert.Equal(0, pool.UsedBlocks);
        return logits;
    }

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void TeacherForcedLogitsAndKeptPositions(string name)
    {
        using var f = Open(name);
        double diff = GoldenTests.MaxAbsDiff(f.Read<float>("logits_tf"), TeacherForced(f, f.KvDType, checkKept: true));
        output.WriteLine($"{name}: logits_tf max abs diff {diff:E2}");
        Assert.True(diff <= 1e-4, $"logits_tf differ by {diff}");
    }

    // the quantized cases pin the quantization down: the same model with f32 KV misses their logits by far more than
    // the tolerance
    [SharedTheory]
    [InlineData("int8-llama")]
    [InlineData("q4-cla")]
    public void FullPrecisionKvMissesTheQuantizedLogits(string name)
    {
        using var f = Open(name);
        double diff = GoldenTests.MaxAbsDiff(f.Read<float>("logits_tf"), TeacherForced(f, DType.F32, checkKept: false));
        output.WriteLine($"{name} with f32 KV: logits_tf max abs diff {diff:E2}");
        Assert.True(diff > 1e-3, $"f32 KV is within {diff} of the {KvRows.Name(f.KvDType)} logits");
    }

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void GreedyGenerationThroughTheEngine(string name)
    {
        using var f = Open(name);
        Greedy(f, output);
    }

    /// <summary>The case's greedy generation through the engine: output ids, step logits within 1e-4, kept positions.</summary>
    internal static void Greedy(Fixture f, ITestOutputHelper output)
    {
        string name = Path.GetFileName(f.Dir);
        var prompts = f.Rows("generate.prompt_ids");
        var outputs = f.Rows("generate.output_ids");
        int p = prompts[0].Length;
        var layout = f.Model.KvLayout(blockSize: 4, f.KvDType);
        using var pool = new KvBlockPool(layout, 256 * layout.BlockBytes);
        var cache = f.Cache(pool, maxStep: p);
        var engine = new GenerationEngine(f.Model, cache, new EngineOptions
        {
            MaxStepTokens = p, MaxPromptTokens = p, MaxSequences = prompts.Length,
            Prefill = f.Sequential ? PrefillMode.Sequential : PrefillMode.Plan,
        });
        var stepLogits = prompts.Select(_ => new List<float>()).ToArray();
        var seqs = prompts.Select((prompt, i) => engine.Admit(new GenerationRequest
        {
            Prompt = prompt, MaxNewTokens = f.MaxNewTokens, Sampling = SamplingParams.Greedy,
            OnLogits = (_, _, row) => stepLogits[i].AddRange(row),
        })).ToArray();
        while (engine.HasWork) engine.Step();
        for (int i = 0; i < seqs.Length; i++) Assert.Equal(outputs[i], seqs[i].Output);
        double diff = GoldenTests.MaxAbsDiff(f.Read<float>("generate.step_logits"), [.. stepLogits.SelectMany(x => x)]);
        output.WriteLine($"{name}: generate.step_logits max abs diff {diff:E2}");
        Assert.True(diff <= 1e-4, $"step logits differ by {diff}");
        CheckKept(f, cache, "kept", [.. seqs.Select(s => s.Id)]);
        foreach (var s in seqs) engine.Retire(s);
        Assert.Equal(0, pool.UsedBlocks);
    }

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void PerplexityIsTeacherForcedDecode(string name)
    {
        using var f = Open(name);
        var ids = f.Rows("input_ids");
        var want = ExpectedPerplexities(f);
        // each row alone (one window), and both rows as one stream of two windows decoded side by side
        for (int b = 0; b < ids.Length; b++)
        {
            var r = Perplexity.Evaluate(f.Model, ids[b], ids[b].Length, ids[b].Length, f.KvDType, eviction: f.Eviction);
            output.WriteLine($"{name} row {b}: perplexity {r.Perplexity:F4}, reference {want[b]:F4}");
            Assert.True(Math.Abs(r.Perplexity - want[b]) <= 1e-4 * want[b], $"row {b}: {r.Perplexity} vs {want[b]}");
        }
        int t = ids[0].Length;
        var both = Perplexity.Evaluate(f.Model, [.. ids[0], .. ids[1]], t, t, f.KvDType, eviction: f.Eviction);
        double mean = (Math.Log(want[0]) + Math.Log(want[1])) / 2;
        Assert.Equal(2, both.Windows);
        Assert.True(Math.Abs(both.MeanNll - mean) <= 1e-4 * Math.Abs(mean), $"two windows: mean NLL {both.MeanNll} vs {mean}");
    }

    private static double[] ExpectedPerplexities(Fixture f)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(f.Dir, "expected.json")));
        return [.. doc.RootElement.GetProperty("ppl_tf").EnumerateArray().Select(x => x.GetDouble())];
    }

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void TheCliGeneratesTheGoldenIdsAndPerplexity(string name)
    {
        using var f = Open(name);
        var prompts = f.Rows("generate.prompt_ids");
        var (code, stdout, stderr) = CliTests.Run(
        [
            "generate", "--model", f.Dir, "--prompt-ids", string.Join(';', prompts.Select(p => string.Join(',', p))),
            "--temperature", "0", "--max-tokens", f.MaxNewTokens.ToString(), "--ignore-eos", "--json",
            "--prefill", f.Sequential ? "sequential" : "plan", .. f.CliOptions,
        ]);
        Assert.True(code == 0, stderr);
        using (var doc = JsonDocument.Parse(stdout))
        {
            var got = doc.RootElement.GetProperty("output_ids").EnumerateArray().Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
            Assert.Equal(f.Rows("generate.output_ids"), got);
        }

        var row = f.Rows("input_ids")[0];
        using var dir = new TempDir();
        string ids = dir.WriteText("ids.txt", string.Join(' ', row));
        (code, stdout, stderr) = CliTests.Run(["perplexity", "--model", f.Dir, "--ids-file", ids, "--context", row.Length.ToString(), "--json", .. f.CliOptions]);
        Assert.True(code == 0, stderr);
        using (var doc = JsonDocument.Parse(stdout))
        {
            double ppl = doc.RootElement.GetProperty("perplexity").GetDouble(), want = ExpectedPerplexities(f)[0];
            Assert.True(Math.Abs(ppl - want) <= 1e-4 * want, $"lckv perplexity {ppl}, reference {want}");
        }
    }

    [Theory]
    [InlineData("--heavy", "3", "--heavy needs --evict h2o")]
    [InlineData("--sinks", "3", "--sinks needs --evict streaming")]
    [InlineData("--recent", "3", "--recent needs --evict streaming or h2o")]
    [InlineData("--evict", "h2o", "--evict h2o needs --recent N")]
    [InlineData("--evict", "lru", "--evict must be none, streaming or h2o")]
    public void OptionsThatMakeNoSenseAreOneLineErrors(string option, string value, string message)
    {
        var r = CliTests.Run("generate", "--preset", "small", "--prompt-ids", "1,2", "-n", "1", option, value);
        CliTests.AssertOneLineError(r, message);
    }
}
