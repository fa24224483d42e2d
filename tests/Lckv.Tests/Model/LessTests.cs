using Lckv.Cache;
using Lckv.Formats;
using Lckv.Model;
using Lckv.Tests.Cache;
using Lckv.Tests.Cli;
using Lckv.Tests.Formats;
using Lckv.Training;
using Xunit.Abstractions;

namespace Lckv.Tests.Model;

/// <summary>LESS maps (kv-compression.md §3): what the golden case pins beyond its logits, and the maps file's checks.</summary>
public sealed class LessTests(ITestOutputHelper output)
{
    private const string Case = "less-h2o-llama";

    [SharedFact]
    public void WithoutTheMapsH2OMissesTheLessLogits()
    {
        using var f = EvictionGoldenTests.Open(Case);
        var plain = new EvictionGoldenTests.Fixture
        {
            Dir = f.Dir, Model = f.Model, Expected = f.Expected, Eviction = f.Eviction with { Less = null },
            KvDType = f.KvDType, MaxNewTokens = f.MaxNewTokens, Sequential = f.Sequential,
        };
        double diff = GoldenTests.MaxAbsDiff(f.Read<float>("logits_tf"), EvictionGoldenTests.TeacherForced(plain, f.KvDType, checkKept: true));
        output.WriteLine($"H2O alone against the LESS logits: max abs diff {diff:E2}");
        Assert.True(diff > 1e-3, $"H2O without LESS is within {diff} of the LESS logits");
    }

    [SharedFact]
    public void SavedMapsLoadBackBitForBit()
    {
        using var f = EvictionGoldenTests.Open(Case);
        var maps = (LessMaps)f.Eviction.Less!;
        using var dir = new TempDir();
        string path = dir.File(LessMaps.FileName);
        maps.Save(path);
        var back = LessMaps.Load(dir.Root, f.Model.Config, f.Model.Map);
        Assert.Equal(maps.TrainedFor, back.TrainedFor);
        Assert.Equal((maps.Rank, maps.Hidden), (back.Rank, back.Hidden));
        for (int i = 0; i < maps.Layers.Count; i++)
        {
            Assert.Equal(maps.Layers[i].Q1, back.Layers[i].Q1);
            Assert.Equal(maps.Layers[i].W3, back.Layers[i].W3);
            Assert.Equal(maps.Layers[i].S2, back.Layers[i].S2);
        }
        Assert.Null(back.Mismatch(new EvictionSettings(EvictionKind.H2O, Heavy: 4, Recent: 4)));
        Assert.Contains("trained for h2o heavy 4 recent 4", back.Mismatch(new EvictionSettings(EvictionKind.H2O, Heavy: 8, Recent: 4)));
        Assert.Throws<LckvException>(() => back.Mismatch(EvictionSettings.None));
    }

    // a maps file rewritten with one change, loaded against the golden model: each a one-line error naming the cause
    [SharedTheory]
    [InlineData("drop", "no tensor 'model.layers.2.self_attn.less.kernel_k_mat1'")]
    [InlineData("shape", "has shape [2, 16, 8], the model needs [2, 16, 16]")]
    [InlineData("extra", "does not belong to this model's LESS maps")]
    [InlineData("policy", "metadata policy 'lru'")]
    [InlineData("rank", "metadata 'rank' is 'four'")]
    [InlineData("nan", "holds a non-finite value")]
    public void BrokenMapsFilesAreOneLineErrors(string change, string message)
    {
        using var f = EvictionGoldenTests.Open(Case);
        using var source = SafeTensorsFile.Open(f.LessPath!);
        var tensors = new List<TensorData>();
        foreach (var (name, info) in source.Tensors)
        {
            var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(source.Bytes(name)).ToArray();
            var shape = info.Shape;
            if (name == "model.layers.2.self_attn.less.kernel_k_mat1")
            {
                if (change == "drop") continue;
                if (change == "shape") { shape = [2, 16, 8]; values = values[..(2 * 16 * 8)]; }
                if (change == "nan") values[3] = float.NaN;
            }
            tensors.Add(TensorData.FromSingles(name, shape, values));
        }
        if (change == "extra") tensors.Add(TensorData.FromSingles("model.layers.9.self_attn.less.scalingD", [2, 4], new float[8]));
        var meta = new Dictionary<string, string>(source.Metadata);
        if (change == "policy") meta["policy"] = "lru";
        if (change == "rank") meta["rank"] = "four";
        using var dir = new TempDir();
        string path = dir.File("less.safetensors");
        SafeTensorsWriter.Write(path, tensors, meta);
        var e = Assert.Throws<LckvException>(() => LessMaps.Load(path, f.Model.Config, f.Model.Map));
        Assert.Contains(message, e.Message);
        var r = CliTests.Run("perplexity", "--model", f.Dir, "--ids-file", dir.WriteText("ids.txt", "1 5 9 13"), "--evict", "h2o", "--heavy", "4", "--recent", "4", "--less", path);
        CliTests.AssertOneLineError(r, message);
    }

    [SharedFact]
    public void TheCliWarnsForAnotherBudgetAndRefusesLessWithoutEviction()
    {
        using var f = EvictionGoldenTests.Open(Case);
        using var dir = new TempDir();
        string ids = dir.WriteText("ids.txt", "1 5 9 13 17 21 25 29 33 37 41 45");
        var r = CliTests.Run("perplexity", "--model", f.Dir, "--ids-file", ids, "--evict", "h2o", "--heavy", "2", "--recent", "4", "--less", f.LessPath!);
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("warning: the LESS maps were trained for h2o heavy 4 recent 4, running under h2o heavy 2 recent 4", r.Err);
        CliTests.AssertOneLineError(CliTests.Run("perplexity", "--model", f.Dir, "--ids-file", ids, "--less", f.LessPath!), "--less needs --evict h2o or streaming");
        r = CliTests.Run("info", "--model", f.Dir, "--evict", "h2o", "--heavy", "4", "--recent", "4", "--less", f.LessPath!);
        Assert.True(r.Code == 0, r.Err);
        // 4 stores x 2 KV heads x (4 x 16 + 4) floats
        Assert.Contains("LESS rank 4 (+2,176 bytes of state per sequence)", r.Out);
    }
}

/// <summary>LESS training's loss and gradients (kv-compression.md §3) against the golden case's less_train, and
/// against finite differences of the loss.</summary>
public sealed class LessTrainingTests(ITestOutputHelper output)
{
    // the store of `layer`, its readers and one simulated window per input row
    private static (LessLoss Loss, LessStoreWindow[] Windows, int Owner, int[] Readers) Setup(EvictionGoldenTests.Fixture f, LessMaps maps, int layer, int[][] ids)
    {
        var model = f.Model;
        var map = model.Map;
        int kv = map.ReadsKvIndex(layer);
        int owner = Enumerable.Range(0, map.LayerCount).First(l => map.ComputesKv(l) && map.KvIndex(l) == kv);
        int[] readers = [.. Enumerable.Range(0, map.LayerCount).Where(l => map.ReadsKvIndex(l) == kv)];
        using var recorder = new LessRecorder(model, ids.Max(x => x.Length));
        var windows = ids.Select(row => LessStoreWindow.Simulate(recorder.Record(row), kv, readers, f.Eviction, model.Config.NumAttentionHeads,
            model.KvHeads, model.HeadDim, model.Rope)).ToArray();
        return (new LessLoss(maps, model, owner, readers), windows, owner, readers);
    }

    private static IEnumerable<(string Name, float[] Grad)> Named(LessLoss.Gradients g, int owner, int[] readers)
    {
        string P(int layer, string name) => $"model.layers.{layer}.self_attn.less.{name}";
        yield return (P(owner, "kernel_k_mat1"), g.Owner.K1!);
        yield return (P(owner, "kernel_k_mat2"), g.Owner.K2!);
        yield return (P(owner, "interaction_k"), g.Owner.W3!);
        yield return (P(owner, "scalingD"), g.Owner.S1!);
        yield return (P(owner, "scalingD2"), g.Owner.S2!);
        for (int i = 0; i < readers.Length; i++)
        {
            yield return (P(readers[i], "kernel_q_mat1"), g.Readers[i].Q1);
            yield return (P(readers[i], "kernel_q_mat2"), g.Readers[i].Q2);
        }
    }

    [SharedFact]
    public void LossAndGradientsMatchTheGoldenCase()
    {
        using var f = EvictionGoldenTests.Open("less-h2o-llama");
        var maps = (LessMaps)f.Eviction.Less!;
        int layer = (int)f.Read<long>("less_train.layer")[0];
        var (loss, windows, owner, readers) = Setup(f, maps, layer, f.Rows("less_train.input_ids"));
        var grads = LessLoss.Gradients.ZerosLike(maps, owner, readers);
        double got = loss.Evaluate(windows, grads), want = f.Read<float>("less_train.loss")[0];
        output.WriteLine($"layer {layer}: loss {got:R}, reference {want:R} (relative {Math.Abs(got - want) / want:E2})");
        Assert.True(Math.Abs(got - want) <= 1e-5 * want, $"loss {got} vs {want}");
        foreach (var (name, grad) in Named(grads, owner, readers))
        {
            var expected = f.Read<float>("less_train.grad." + name);
            double scale = expected.Max(x => Math.Abs(x)), diff = GoldenTests.MaxAbsDiff(expected, grad);
            output.WriteLine($"{name}: max |grad| {scale:E2}, max abs diff {diff:E2} ({diff / scale:E2} relative)");
            Assert.True(diff <= 1e-4 * scale, $"{name}: gradient differs by {diff} (largest {scale})");
        }
    }
}
