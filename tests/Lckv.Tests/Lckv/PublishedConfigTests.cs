using System.Runtime.InteropServices;
using System.Text.Json;
using Lckv.Formats;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Tests.Cli;
using Lckv.Tests.Formats;
using Lckv.Tests.Model;
using Xunit.Abstractions;

namespace Lckv.Tests.LckvSharing;

/// <summary>
/// The published whynlp/tinyllama-lckv-w10-100b config (LCKV w=10 on TinyLlama 1.1B), and a shrunken model with
/// the same layer map in the published tensor layout (bf16, no k_proj/v_proj on layers 5-15).
/// </summary>
public sealed class PublishedConfigTests(ITestOutputHelper output)
{
    private const string PublishedLayerTypes = "0_1_2_3_4_16_16_16_16_16_16_16_16_16_16_16_16_17_18_19_20_21";

    /// <summary>The published config.json, with the shape fields replaceable for a shrunken copy.</summary>
    private static string PublishedConfig(int hidden = 2048, int intermediate = 5632, int heads = 32, int kvHeads = 4,
        int vocab = 32000, string slidingWindow = "4096") => $$"""
        {
          "architectures": ["LCKVLlamaForCausalLM"],
          "attention_bias": false,
          "attention_dropout": 0.0,
          "backward_passes": 2,
          "bos_token_id": 1,
          "eos_token_id": 2,
          "force_nodiag": true,
          "forward_passes": 7,
          "hidden_act": "silu",
          "hidden_size": {{hidden}},
          "initializer_range": 0.02,
          "intermediate_size": {{intermediate}},
          "layer_types": "{{PublishedLayerTypes}}",
          "max_position_embeddings": 2048,
          "model_type": "lckv-llama",
          "num_attention_heads": {{heads}},
          "num_hidden_layers": 22,
          "num_key_value_heads": {{kvHeads}},
          "pretraining_tp": 1,
          "rms_norm_eps": 1e-05,
          "rope_scaling": null,
          "rope_theta": 10000.0,
          "sliding_window": {{slidingWindow}},
          "tie_word_embeddings": false,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.45.2",
          "use_cache": true,
          "use_sequential": false,
          "vocab_size": {{vocab}}
        }
        """;

    [Fact]
    public void TheW10PresetIsThePublishedLayout()
        => Assert.Equal(PublishedLayerTypes, Layouts.LayerTypes("lckv-w10", 22));

    [Theory]
    [InlineData("4096")]
    [InlineData("null")]
    public void InfoReportsElevenKvLayers(string slidingWindow)
    {
        using var dir = new TempDir();
        string path = dir.WriteText("config.json", PublishedConfig(slidingWindow: slidingWindow));
        var cfg = ModelConfig.Load(path);
        Assert.Equal((7, 2, 4096, true, false), (cfg.ForwardPasses, cfg.BackwardPasses, cfg.SlidingWindow, cfg.ForceNoDiag, cfg.UseSequential));

        var r = CliTests.Run("info", "--config", path, "--json");
        output.WriteLine(r.Out + r.Err);
        Assert.Equal(0, r.Code);
        using var doc = JsonDocument.Parse(r.Out);
        var root = doc.RootElement;
        Assert.Equal("lckv-llama", root.GetProperty("model_type").GetString());
        Assert.Equal(22, root.GetProperty("layers").GetInt32());
        Assert.Equal(11, root.GetProperty("kv_layers").GetInt32());
        Assert.Equal(PublishedLayerTypes, root.GetProperty("layer_types").GetString());
        Assert.Equal("bf16", root.GetProperty("kv_dtype").GetString()); // the default beside bf16 weights
        Assert.Equal(2L * 11 * 4 * 64 * 2, root.GetProperty("kv_bytes_per_token").GetInt64());
        Assert.Equal(2.0, root.GetProperty("kv_reduction").GetDouble());
        // TinyLlama's 1,100,048,384 parameters less k_proj and v_proj ([256, 2048] each) on 11 layers
        Assert.Equal(1_100_048_384L - 11 * 2 * 256 * 2048, root.GetProperty("parameters").GetInt64());

        var f32 = CliTests.Run("info", "--config", path, "--json", "--kv-dtype", "f32");
        using var doc2 = JsonDocument.Parse(f32.Out);
        Assert.Equal(2L * 11 * 4 * 64 * 4, doc2.RootElement.GetProperty("kv_bytes_per_token").GetInt64());
        Assert.Equal(22528, doc2.RootElement.GetProperty("kv_bytes_per_token").GetInt64());

        var text = CliTests.Run("info", "--config", path);
        Assert.Equal(0, text.Code);
        Assert.Contains("KV layers       11 of 22", text.Out);
        Assert.Contains("layer   5: reads layer 16 (upward, diagonal masked)", text.Out);
        Assert.Contains("layer  16: computes KV, reads its own", text.Out);
        Assert.Contains("m=7 b=2, force_nodiag=true", text.Out);
    }

    [Fact]
    public void InfoOnAPresetWithALayout()
    {
        var r = CliTests.Run("info", "--preset", "tinyllama-1.1b", "--layout", "lckv-w2");
        output.WriteLine(r.Out + r.Err);
        Assert.Equal(0, r.Code);
        Assert.Contains("layer_types     0_20_20", r.Out);
        Assert.Contains("KV layers       3 of 22", r.Out);
        Assert.Contains("layer  20: computes KV, reads its own", r.Out);
        Assert.Contains("layer   1: reads layer 20 (upward, diagonal masked)", r.Out);
        // --layer-types stays an alias; an explicit string passes through
        var alias = CliTests.Run("info", "--preset", "small", "--layer-types", "0_6_6_6_6_6_6_7", "--json");
        Assert.Equal(0, alias.Code);
        using (var doc = JsonDocument.Parse(alias.Out)) Assert.Equal(3, doc.RootElement.GetProperty("kv_layers").GetInt32());
        var w10 = CliTests.Run("info", "--preset", "tinyllama-1.1b", "--layout", "lckv-w10", "--json");
        using (var doc = JsonDocument.Parse(w10.Out)) Assert.Equal(PublishedLayerTypes, doc.RootElement.GetProperty("layer_types").GetString());
        CliTests.AssertOneLineError(CliTests.Run("info", "--preset", "small", "--layout", "lckv-w10"), "needs more than 10 layers");
        CliTests.AssertOneLineError(CliTests.Run("info", "--preset", "small", "--layout", "nope"), "unknown layout");
    }

    /// <summary>A shrunken w=10 checkpoint in the published layout, bf16, random weights (deterministic).</summary>
    private static TempDir ShrunkenCheckpoint()
    {
        var dir = new TempDir();
        string json = PublishedConfig(hidden: 64, intermediate: 96, heads: 4, kvHeads: 2, vocab: 256);
        dir.WriteText("config.json", json);
        var cfg = ModelConfig.Parse(json, "config.json");
        var map = LayerMap.Parse(cfg.LayerTypes, cfg.NumHiddenLayers);
        var specs = ModelWeights.Specs(cfg, map);
        var kvLayers = specs.Where(s => s.Slot == WeightSlot.K).Select(s => s.Layer).ToArray();
        Assert.Equal([0, 1, 2, 3, 4, 16, 17, 18, 19, 20, 21], kvLayers);
        var rng = new SplitMix64(2024);
        var tensors = new List<TensorData>();
        foreach (var s in specs)
        {
            bool norm = s.Shape.Length == 1;
            float scale = s.Slot == WeightSlot.Embed ? 1f : norm ? 0.1f : 1f / MathF.Sqrt(s.Cols);
            var bits = new ushort[s.Elements];
            for (long e = 0; e < bits.Length; e++) bits[e] = DTypes.SingleToBF16((norm ? 1f : 0f) + scale * rng.NextGaussian());
            tensors.Add(new TensorData(s.Name, DType.BF16, s.Shape, MemoryMarshal.AsBytes(bits.AsSpan()).ToArray()));
        }
        SafeTensorsWriter.Write(dir.File("model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        return dir;
    }

    [Fact]
    public void ShrunkenPublishedModelLoadsAndGenerates()
    {
        using var dir = ShrunkenCheckpoint();
        using (var tensors = TensorSet.Open(dir.Root))
        {
            for (int l = 5; l <= 15; l++) Assert.False(tensors.Contains($"model.layers.{l}.self_attn.k_proj.weight"));
            Assert.All(tensors.Names, n => Assert.Equal(DType.BF16, tensors.Info(n).DType));
        }
        using (var model = LlamaModel.Load(dir.Root))
        {
            Assert.Equal(11, model.Map.KvLayerCount);
            Assert.True(model.Config.ForceNoDiag);
            Assert.Equal(DType.BF16, model.Weights.Embed.DType);
            Assert.Equal(2L * 11 * 2 * 16 * 4, model.KvBytesPerToken(DType.F32));
        }
        var r = CliTests.Run("generate", "--model", dir.Root, "--prompt-ids", "1,17,42", "--temperature", "0", "--max-tokens", "8", "--ignore-eos", "--json");
        output.WriteLine(r.Out + r.Err);
        Assert.Equal(0, r.Code);
        using var doc = JsonDocument.Parse(r.Out);
        var ids = doc.RootElement.GetProperty("output_ids")[0].EnumerateArray().Select(x => x.GetInt32()).ToArray();
        Assert.Equal(8, ids.Length);
        Assert.All(ids, id => Assert.InRange(id, 0, 255));

        // a 12-token prompt (> m+b = 9) is prefilled by the iteration plan, and sequentially on request
        string longPrompt = string.Join(',', Enumerable.Range(0, 12).Select(i => (i * 37 + 1) % 256));
        foreach (var mode in new[] { "plan", "sequential" })
        {
            var g = CliTests.Run("generate", "--model", dir.Root, "--prompt-ids", longPrompt, "--temperature", "0", "--max-tokens", "8",
                "--ignore-eos", "--prefill", mode, "--json");
            output.WriteLine($"{mode}: {g.Out}{g.Err}");
            Assert.Equal(0, g.Code);
            using var d = JsonDocument.Parse(g.Out);
            Assert.Equal(8, d.RootElement.GetProperty("output_ids")[0].GetArrayLength());
        }
    }

    [Fact]
    public void ShrunkenPublishedModelPlanAgreesWithSequential()
    {
        using var dir = ShrunkenCheckpoint();
        using var model = LlamaModel.Load(dir.Root);
        int v = model.Vocab, passes = model.Config.ForwardPasses + model.Config.BackwardPasses;
        Assert.Equal(9, passes);

        // T <= m+b: the plan mode prefills token by token, identical to single-token steps
        int[][] shortIds = [[1, 17, 42, 99, 3, 250], [1, 2, 3, 4, 5, 6]];
        var plan = GoldenTests.WholeSequenceLogits(model, shortIds, PrefillMode.Plan);
        var exact = GoldenTests.WholeSequenceLogits(model, shortIds, PrefillMode.Plan, tokenByToken: true);
        Assert.True(MaxDiff(plan, exact, 0, plan.Length) <= 1e-4);

        // T = 12 > m+b: the plan runs; after 9 passes positions 0..8 have converged to the exact values
        int[][] longIds = [Enumerable.Range(0, 12).Select(i => (i * 37 + 1) % 256).ToArray()];
        var planLong = GoldenTests.WholeSequenceLogits(model, longIds, PrefillMode.Plan);
        var exactLong = GoldenTests.WholeSequenceLogits(model, longIds, PrefillMode.Plan, tokenByToken: true);
        double converged = MaxDiff(planLong, exactLong, 0, passes * v);
        double rest = MaxDiff(planLong, exactLong, passes * v, 12 * v);
        output.WriteLine($"T=12: rows 0..8 differ by {converged:E2}, rows 9..11 by {rest:E2}");
        Assert.True(converged <= 1e-4, $"converged rows differ by {converged}");
        Assert.All(planLong, x => Assert.True(float.IsFinite(x)));
    }

    private static double MaxDiff(float[] a, float[] b, int from, int to)
    {
        double m = 0;
        for (int i = from; i < to; i++) m = Math.Max(m, Math.Abs(a[i] - b[i]));
        return m;
    }
}
