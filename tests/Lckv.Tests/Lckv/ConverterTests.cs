using System.Text.Json;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Tests.Cli;
using Lckv.Tests.Formats;
using Xunit.Abstractions;

namespace Lckv.Tests.LckvSharing;

/// <summary>lckv convert (kv-sharing.md §7): tensor set, MLKV mean initialisation by hand, loading, CLI errors.</summary>
public sealed class ConverterTests(ITestOutputHelper output)
{
    private static string Golden(string name) => SharedData.Path("golden", name);

    private static string Kv(int layer, string proj) => $"model.layers.{layer}.self_attn.{proj}.weight";

    /// <summary>Mean of the readers' tensors, summed in f64 in reader order (the hand computation of §7).</summary>
    private static float[] HandMean(TensorSet src, int[] readers, string proj)
    {
        var rows = readers.Select(r => src.ReadSingles(Kv(r, proj))).ToArray();
        var result = new float[rows[0].Length];
        for (int e = 0; e < result.Length; e++)
        {
            double s = 0;
            foreach (var row in rows) s += row[e];
            result[e] = (float)(s / readers.Length);
        }
        return result;
    }

    /// <summary>
    /// Converts the 4-layer golden Llama and checks: the tensor set (k/v only on KV layers), every averaged k/v
    /// against a hand computation, every other tensor byte-identical.
    /// </summary>
    [SharedTheory]
    [InlineData("0_0_2_2")]   // CLA-2: pairs
    [InlineData("lckv-w2")]   // 0_2_2_3: layer 2 read by 1 and 2 (upward reader)
    [InlineData("lckv-w0")]   // 3_3_3_3: four readers
    [InlineData("1_0_2_3")]   // layers 0 and 1 swap: a KV layer that does not read itself
    [InlineData("yoco")]      // 0s_1s_2_2
    public void ConvertedTensorsAreTheReadersMean(string layout)
    {
        using var dir = new TempDir();
        string outDir = Path.Combine(dir.Root, "out");
        var result = Converter.Convert(Golden("llama-standard"), outDir, new ConvertOptions { Layout = layout });
        var map = result.Map;
        output.WriteLine($"{layout} -> {map}: dropped {result.Dropped.Count}, averaged {string.Join(", ", result.Averaged)}");
        using var src = TensorSet.Open(Golden("llama-standard"));
        using var dst = TensorSet.Open(outDir);

        var expectedNames = src.Names.Where(n => !(n.Contains("self_attn.k_proj") || n.Contains("self_attn.v_proj"))
            || map.ComputesKv(int.Parse(n.Split('.')[2]))).OrderBy(n => n, StringComparer.Ordinal);
        Assert.Equal(expectedNames, dst.Names.OrderBy(n => n, StringComparer.Ordinal));
        for (int l = 0; l < 4; l++)
            Assert.Equal(map.ComputesKv(l), dst.Contains(Kv(l, "k_proj")) && dst.Contains(Kv(l, "v_proj")));

        int averagedChecked = 0;
        foreach (var name in dst.Names)
        {
            Assert.Equal(src.Info(name).DType, dst.Info(name).DType);
            Assert.Equal(src.Info(name).Shape, dst.Info(name).Shape);
            bool kv = name.Contains("self_attn.k_proj") || name.Contains("self_attn.v_proj");
            if (!kv)
            {
                Assert.True(src.Bytes(name).SequenceEqual(dst.Bytes(name)), $"{name} changed");
                continue;
            }
            int layer = int.Parse(name.Split('.')[2]);
            string proj = name.Contains("k_proj") ? "k_proj" : "v_proj";
            int[] readers = Enumerable.Range(0, 4).Where(i => map.Target(i) == layer).ToArray();
            var expected = HandMean(src, readers, proj);
            Assert.Equal(expected, dst.ReadSingles(name)); // exact
            if (!(readers.Length == 1 && readers[0] == layer))
            {
                averagedChecked++;
                Assert.Contains(name, result.Averaged);
                Assert.NotEqual(src.ReadSingles(name), dst.ReadSingles(name));
            }
        }
        Assert.Equal(result.Averaged.Count, averagedChecked);

        var cfg = ModelConfig.Load(outDir);
        var srcCfg = ModelConfig.Load(Golden("llama-standard"));
        Assert.Equal(ModelConfig.LckvLlamaType, cfg.ModelType);
        Assert.Equal(Layouts.LayerTypes(layout, 4), cfg.LayerTypes);
        Assert.Equal(srcCfg with { ModelType = cfg.ModelType, LayerTypes = cfg.LayerTypes }, cfg with { EosTokenIds = srcCfg.EosTokenIds });
        Assert.Equal(srcCfg.EosTokenIds, cfg.EosTokenIds);
        Assert.Equal(["out"], Directory.GetFileSystemEntries(dir.Root).Select(Path.GetFileName));
    }

    [SharedFact]
    public void Cla2HandComputationOfLayerZero()
    {
        // the issue's example, spelled out element by element: layer 0's K/V = (layer 0 + layer 1) / 2
        using var dir = new TempDir();
        string outDir = Path.Combine(dir.Root, "cla2");
        Converter.Convert(Golden("llama-standard"), outDir, new ConvertOptions { Layout = "0_0_2_2" });
        using var src = TensorSet.Open(Golden("llama-standard"));
        using var dst = TensorSet.Open(outDir);
        Assert.Equal(39, src.Names.Count()); // 4 layers x 9 + embed, norm, head
        Assert.Equal(35, dst.Names.Count());
        foreach (var proj in new[] { "k_proj", "v_proj" })
        {
            float[] a0 = src.ReadSingles(Kv(0, proj)), a1 = src.ReadSingles(Kv(1, proj)), got = dst.ReadSingles(Kv(0, proj));
            float[] b2 = src.ReadSingles(Kv(2, proj)), b3 = src.ReadSingles(Kv(3, proj)), got2 = dst.ReadSingles(Kv(2, proj));
            Assert.Equal(32 * 64, got.Length); // [kv_heads * head_dim, hidden] = [2*16, 64]
            for (int e = 0; e < got.Length; e++)
            {
                Assert.Equal((float)(((double)a0[e] + a1[e]) / 2), got[e]);
                Assert.Equal((float)(((double)b2[e] + b3[e]) / 2), got2[e]);
            }
            Assert.False(dst.Contains(Kv(1, proj)));
            Assert.False(dst.Contains(Kv(3, proj)));
        }
    }

    [SharedFact]
    public void Bf16TiedCheckpointKeepsItsDtype()
    {
        using var dir = new TempDir();
        string outDir = Path.Combine(dir.Root, "out");
        Converter.Convert(Golden("llama-bf16-tied"), outDir, new ConvertOptions { Layout = "cla2" });
        using var src = TensorSet.Open(Golden("llama-bf16-tied"));
        using var dst = TensorSet.Open(outDir);
        Assert.False(dst.Contains("lm_head.weight"));
        Assert.All(dst.Names, n => Assert.Equal(DType.BF16, dst.Info(n).DType));
        var expected = HandMean(src, [2, 3], "v_proj").Select(DTypes.SingleToBF16).ToArray();
        var got = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(dst.Bytes(Kv(2, "v_proj"))).ToArray();
        Assert.Equal(expected, got);
        using var model = LlamaModel.Load(outDir);
        Assert.True(model.Config.TieWordEmbeddings);
        Assert.Equal("0_0_2_2", model.Map.ToString());
    }

    [SharedFact]
    public void ConvertedModelLoadsAndGenerates()
    {
        using var dir = new TempDir();
        string outDir = Path.Combine(dir.Root, "w2");
        Converter.Convert(Golden("llama-standard"), outDir, new ConvertOptions { Layout = "lckv-w2", ForwardPasses = 3, BackwardPasses = 1 });
        using var model = LlamaModel.Load(outDir);
        Assert.Equal("0_2_2_3", model.Map.ToString());
        Assert.Equal(3, model.Map.KvLayerCount);
        Assert.Equal(3, model.Config.ForwardPasses);
        Assert.Equal(1, model.Config.BackwardPasses);
        var layout = model.KvLayout(16, DType.F32);
        using var pool = new KvBlockPool(layout, 16 * layout.BlockBytes * model.Map.KvLayerCount);
        var cache = new KvCache(pool, model.Map.KvLayerCount, model.ContextLength);
        var prompts = new[] { new[] { 1, 5, 9, 200, 31, 7 }, new[] { 1, 4000 } };
        var result = new Generator(model, cache).Generate(prompts, new GenerateOptions { MaxTokens = 6, Sampling = new SamplingParams { Temperature = 0 } });
        foreach (var s in result.Sequences)
        {
            Assert.Equal(6, s.OutputIds.Count);
            Assert.All(s.OutputIds, id => Assert.InRange(id, 0, model.Vocab - 1));
        }
        Assert.Equal(pool.TotalBlocks, pool.FreeBlocks);
    }

    [SharedFact]
    public void ConvertCommandEndToEnd()
    {
        using var dir = new TempDir();
        string input = Path.Combine(dir.Root, "llama");
        Directory.CreateDirectory(input);
        foreach (var f in new[] { "config.json", "model.safetensors" }) File.Copy(Path.Combine(Golden("llama-standard"), f), Path.Combine(input, f));
        File.Copy(SharedData.Path("tokenizers", "en4k.model"), Path.Combine(input, "tokenizer.model"));
        File.WriteAllText(Path.Combine(input, "generation_config.json"), "{ \"bos_token_id\": 1, \"eos_token_id\": 2, \"do_sample\": false }");
        string outDir = Path.Combine(dir.Root, "converted");

        var r = CliTests.Run("convert", "--input", input, "--output", outDir, "--layout", "yoco", "--sliding-window", "3",
            "--forward-passes", "4", "--backward-passes", "1", "--force-nodiag", "--json");
        output.WriteLine(r.Out + r.Err);
        Assert.Equal(0, r.Code);
        using (var doc = JsonDocument.Parse(r.Out))
        {
            Assert.Equal("0s_1s_2_2", doc.RootElement.GetProperty("layer_types").GetString());
            Assert.Equal(3, doc.RootElement.GetProperty("kv_layers").GetInt32());
            Assert.Equal(2, doc.RootElement.GetProperty("dropped").GetArrayLength());
            Assert.Equal(2, doc.RootElement.GetProperty("averaged").GetArrayLength());
        }
        Assert.True(File.Exists(Path.Combine(outDir, "tokenizer.model")));
        Assert.True(File.Exists(Path.Combine(outDir, "generation_config.json")));
        var cfg = ModelConfig.Load(outDir);
        Assert.Equal((3, 4, 1, true), (cfg.SlidingWindow, cfg.ForwardPasses, cfg.BackwardPasses, cfg.ForceNoDiag));

        var g = CliTests.Run("generate", "--model", outDir, "--prompt", "Once upon a time", "--max-tokens", "5", "--ignore-eos", "--json");
        output.WriteLine(g.Out + g.Err);
        Assert.Equal(0, g.Code);
        var info = CliTests.Run("info", "--model", outDir, "--json");
        Assert.Equal(0, info.Code);
        using (var doc = JsonDocument.Parse(info.Out)) Assert.Equal(3, doc.RootElement.GetProperty("kv_layers").GetInt32());

        // the output exists now: refused without --force, replaced with it
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", input, "-o", outDir, "--layout", "cla2"), "already exists");
        Assert.Equal("0s_1s_2_2", ModelConfig.Load(outDir).LayerTypes);
        var forced = CliTests.Run("convert", "-i", input, "-o", outDir, "--layout", "cla2", "--force");
        Assert.Equal(0, forced.Code);
        Assert.Contains("0_0_2_2", forced.Out);
        Assert.Equal("0_0_2_2", ModelConfig.Load(outDir).LayerTypes);
        // nothing else left beside the output (no temporary or old folders)
        Assert.Equal(new[] { "converted", "llama" }, Directory.GetFileSystemEntries(dir.Root).Select(Path.GetFileName).Order());
    }

    [SharedFact]
    public void BadInputsAreOneLineErrors()
    {
        using var dir = new TempDir();
        string outDir = Path.Combine(dir.Root, "out");
        string llama = Golden("llama-standard");
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", llama, "-o", outDir, "--layout", "sandwich-top"), "unknown layout 'sandwich-top'");
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", llama, "-o", outDir, "--layout", "lckv-w10"), "needs more than 10 layers");
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", llama, "-o", outDir, "--layout", "0_1_7_3"), "layer_types");
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", Golden("cla-2"), "-o", outDir, "--layout", "cla2"), "model_type");
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", Path.Combine(dir.Root, "nope"), "-o", outDir, "--layout", "cla2"), "does not exist");
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", llama, "-o", outDir, "--layout", "cla2", "--backward-passes", "0"), "backward_passes");
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", llama, "-o", llama, "--layout", "cla2", "--force"), "input folder");
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", llama, "-o", outDir), "--layout");
        Directory.CreateDirectory(outDir);
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", llama, "-o", outDir, "--layout", "cla2"), "already exists");
        Assert.Empty(Directory.GetFileSystemEntries(outDir)); // untouched
        Directory.Delete(outDir);

        // a checkpoint missing a tensor fails after the temporary folder exists: nothing is left behind
        string broken = Path.Combine(dir.Root, "broken");
        Directory.CreateDirectory(broken);
        File.Copy(Path.Combine(llama, "config.json"), Path.Combine(broken, "config.json"));
        using (var src = TensorSet.Open(llama))
        {
            SafeTensorsWriter.Write(Path.Combine(broken, "model.safetensors"), src.Names.Where(n => n != "model.layers.1.mlp.up_proj.weight")
                .Select(n => new TensorData(n, src.Info(n).DType, src.Info(n).Shape, src.Bytes(n).ToArray())).ToList());
        }
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", broken, "-o", outDir, "--layout", "cla2"), "model.layers.1.mlp.up_proj.weight");
        Assert.Equal(["broken"], Directory.GetFileSystemEntries(dir.Root).Select(Path.GetFileName));
    }

    [SharedFact]
    public void LayoutAppliesToPresetsOnly()
    {
        CliTests.AssertOneLineError(CliTests.Run("generate", "--model", Golden("llama-standard"), "--layout", "cla2", "--prompt-ids", "1,2"), "lckv convert");
        CliTests.AssertOneLineError(CliTests.Run("info", "--model", Golden("llama-standard"), "--layout", "cla2"), "lckv convert");
    }
}
