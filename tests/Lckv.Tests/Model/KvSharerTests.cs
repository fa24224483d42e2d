using System.Text.Json;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Model;
using Lckv.Tests.Cache;
using Lckv.Tests.Formats;
using Xunit.Abstractions;

namespace Lckv.Tests.Model;

/// <summary>
/// KVSharer against ../shared/golden-compress/kvsharer-llama: the distances, the candidates tried with their scores,
/// the resulting layer_types, and the resulting model's logits (calibration prefill, teacher-forced, greedy generation),
/// both over the original weights and from the checkpoint the search writes.
/// </summary>
public sealed class KvSharerTests(ITestOutputHelper output)
{
    private const string Case = "kvsharer-llama";

    private sealed record Golden(double Threshold, int Cap, string LayerTypes, (int I, int J)[] Order);

    private static Golden ReadCase()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(SharedData.Path("golden-compress", Case, "expected.json")));
        var k = doc.RootElement.GetProperty("kvsharer");
        return new Golden(k.GetProperty("threshold").GetDouble(), k.GetProperty("cap").GetInt32(), k.GetProperty("layer_types").GetString()!,
            [.. k.GetProperty("order").EnumerateArray().Select(p => (p[0].GetInt32(), p[1].GetInt32()))]);
    }

    private static KvSharerResult Search(EvictionGoldenTests.Fixture f, Golden g, KvSharerOrder order = KvSharerOrder.Dissimilar)
        => KvSharer.Search(f.Model, f.Rows("kvsharer.calib_ids"), new KvSharerOptions { Threshold = g.Threshold, Share = g.Cap, Order = order });

    /// <summary>Logits of a one-step prefill of every sequence ([N, T, vocab]), all sequences in one step.</summary>
    internal static float[] Prefill(LlamaModel model, int[][] ids)
    {
        int n = ids.Length, t = ids[0].Length;
        var layout = model.KvLayout(blockSize: 4, Lckv.Numerics.DType.F32);
        using var pool = new KvBlockPool(layout, (long)n * model.Map.KvLayerCount * KvCache.BlocksFor(t, 4) * layout.BlockBytes);
        var cache = model.CreateCache(pool, n * t);
        var runner = new ForwardRunner(model, cache, n * t, n);
        var seqs = ids.Select(_ => cache.CreateSequence()).ToArray();
        foreach (var s in seqs) Assert.True(cache.TryReserve(s, t));
        var logits = new float[n * t * model.Vocab];
        runner.Run([.. seqs.Select(s => new StepSequence(s, t))], [.. ids.SelectMany(x => x)], LogitsRows.All, logits);
        return logits;
    }

    [SharedFact]
    public void SearchMatchesTheGolden()
    {
        using var f = EvictionGoldenTests.Open(Case);
        var g = ReadCase();
        var r = Search(f, g);
        int layers = f.Model.Map.LayerCount;

        var distances = f.Read<float>("kvsharer.distances");
        double dDiff = 0;
        for (int i = 0; i < layers; i++)
            for (int j = 0; j < layers; j++) dDiff = Math.Max(dDiff, Math.Abs(r.Distances[i, j] - distances[i * layers + j]));
        Assert.Equal(g.Order, r.Order);

        var tried = f.Read<float>("kvsharer.tried");
        Assert.Equal(tried.Length / 3, r.Tried.Count);
        double sDiff = 0;
        for (int k = 0; k < r.Tried.Count; k++)
        {
            Assert.Equal(((int)tried[3 * k], (int)tried[3 * k + 1]), (r.Tried[k].Layer, r.Tried[k].Target));
            sDiff = Math.Max(sDiff, Math.Abs(r.Tried[k].Score - tried[3 * k + 2]));
            Assert.Equal(r.Tried[k].Score > g.Threshold, r.Tried[k].Accepted);
        }
        Assert.Equal(g.LayerTypes, r.Map.ToString());
        Assert.Equal(g.Cap, r.Accepted);

        using var shared = f.Model.WithLayerTypes(r.Map.ToString());
        double lDiff = GoldenTests.MaxAbsDiff(f.Read<float>("kvsharer.logits"), Prefill(shared, f.Rows("kvsharer.calib_ids")));
        output.WriteLine($"distances max abs diff {dDiff:E2}, scores {sDiff:E2}, kvsharer.logits {lDiff:E2}; tried " +
                         string.Join(", ", r.Tried.Select(t => $"({t.Layer},{t.Target}) {t.Score:F6}{(t.Accepted ? " accepted" : "")}")) + $"; layer_types {r.Map}");
        Assert.True(dDiff <= 1e-5, $"distances differ by {dDiff}");
        Assert.True(sDiff <= 1e-5, $"scores differ by {sDiff}");
        Assert.True(lDiff <= 1e-4, $"kvsharer.logits differ by {lDiff}");
    }

    [SharedFact]
    public void SimilarFirstTriesThePairsInTheOppositeOrder()
    {
        using var f = EvictionGoldenTests.Open(Case);
        var g = ReadCase();
        var r = Search(f, g, KvSharerOrder.Similar);
        Assert.Equal(Enumerable.Reverse(g.Order), r.Order);
        Assert.Equal(r.Order[0], (r.Tried[0].Layer, r.Tried[0].Target));
    }

    [SharedFact]
    public void TheWrittenCheckpointIsTheResultingModel()
    {
        using var input = new TempDir();
        foreach (var file in new[] { "config.json", "model.safetensors" })
            File.Copy(SharedData.Path("golden-compress", Case, file), input.File(file));
        input.WriteText("tokenizer_config.json", "{}");
        using var outDir = new TempDir();
        string written = outDir.File("shared");
        var g = ReadCase();
        KvSharerResult r;
        using (var f = EvictionGoldenTests.Open(Case))
        {
            r = Search(f, g);
            KvSharer.Write(input.Root, written, r, force: false);
        }
        Assert.True(File.Exists(Path.Combine(written, "tokenizer_config.json")));
        var config = ModelConfig.Load(Path.Combine(written, "config.json"));
        Assert.Equal(ModelConfig.LckvLlamaType, config.ModelType);
        Assert.Equal(g.LayerTypes, config.LayerTypes);
        using (var tensors = TensorSet.Open(written))
            for (int layer = 0; layer < r.Map.LayerCount; layer++)
                Assert.Equal(r.Map.ComputesKv(layer), tensors.Contains($"model.layers.{layer}.self_attn.k_proj.weight"));
        Assert.Throws<LckvException>(() => KvSharer.Write(input.Root, written, r, force: false));

        using var w = EvictionGoldenTests.Open(Case, written);
        double lDiff = GoldenTests.MaxAbsDiff(w.Read<float>("kvsharer.logits"), Prefill(w.Model, w.Rows("kvsharer.calib_ids")));
        double tfDiff = GoldenTests.MaxAbsDiff(w.Read<float>("logits_tf"), EvictionGoldenTests.TeacherForced(w, w.KvDType, checkKept: true));
        output.WriteLine($"written checkpoint: kvsharer.logits max abs diff {lDiff:E2}, logits_tf {tfDiff:E2}");
        Assert.True(lDiff <= 1e-4, $"kvsharer.logits differ by {lDiff}");
        Assert.True(tfDiff <= 1e-4, $"logits_tf differ by {tfDiff}");
        EvictionGoldenTests.Greedy(w, output);
    }

    [SharedFact]
    public void BadSettingsAreErrors()
    {
        using var f = EvictionGoldenTests.Open(Case);
        var ids = f.Rows("kvsharer.calib_ids");
        Assert.Contains("threshold", Assert.Throws<LckvException>(() => KvSharer.Search(f.Model, ids, new KvSharerOptions { Threshold = -1 })).Message);
        Assert.Contains("threshold", Assert.Throws<LckvException>(() => KvSharer.Search(f.Model, ids, new KvSharerOptions { Threshold = 1.5 })).Message);
        Assert.Throws<LckvException>(() => KvSharer.Search(f.Model, ids, new KvSharerOptions { Share = 0 }));
        Assert.Throws<LckvException>(() => KvSharer.CalibrationFromIds(ids, 7, 16));
        Assert.Equal(ids.Select(x => x[..8]), KvSharer.CalibrationFromIds(ids, 6, 8));
        using var upward = EvictionGoldenTests.Open("h2o-lckv-sandwich");
        Assert.Contains("upward", Assert.Throws<LckvException>(() => KvSharer.Search(upward.Model, ids, new KvSharerOptions())).Message);
    }
}
