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

    // the batched phi of inference (matrix products, GELU in f32 lanes) against the one-vector definition
    [SharedFact]
    public void PhiOfManyRowsMatchesOneRowAtATime()
    {
        using var f = EvictionGoldenTests.Open(Case);
        var maps = (LessMaps)f.Eviction.Less!;
        var rng = new Random(5);
        int n = 7, d = maps.HeadDim, r = maps.Rank;
        var x = Lckv.Tests.Numerics.TestData.Random(rng, n * d, 2f);
        var rows = new float[n * r];
        maps.PhiRows(2, 3, x, n, rows, new float[n * maps.Hidden]);
        var one = new float[r];
        for (int i = 0; i < n; i++)
        {
            maps.Phi(2, 3, x.AsSpan(i * d, d), one, new float[maps.Hidden]);
            for (int c = 0; c < r; c++) Assert.True(Math.Abs(one[c] - rows[i * r + c]) <= 1e-5f * Math.Max(1, Math.Abs(one[c])), $"row {i} feature {c}: {rows[i * r + c]} vs {one[c]}");
        }
        // the same for psi (what a step's evictions fold at once)
        maps.PsiRows(2, 1, x, n, rows, new float[n * maps.PsiScratchFloats]);
        for (int i = 0; i < n; i++)
        {
            maps.Psi(2, 1, x.AsSpan(i * d, d), one, new float[maps.ScratchFloats]);
            for (int c = 0; c < r; c++) Assert.True(Math.Abs(one[c] - rows[i * r + c]) <= 1e-5f * Math.Max(1, Math.Abs(one[c])), $"psi row {i} feature {c}: {rows[i * r + c]} vs {one[c]}");
        }
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

/// <summary>Finite-difference checks of LESS training's gradients: a CLA store read by two layers (the key map gets
/// the sum of their losses), under H2O and under StreamingLLM (keys rotated by rank), fresh maps with scalings large
/// enough that every tensor matters.</summary>
public sealed class LessGradientCheckTests(ITestOutputHelper output)
{
    [SharedTheory]
    [InlineData("h2o")]
    [InlineData("streaming")]
    public void GradientsMatchFiniteDifferences(string policy)
    {
        using var f = EvictionGoldenTests.Open("q4-cla");
        var model = f.Model;
        var eviction = policy == "h2o" ? new EvictionSettings(EvictionKind.H2O, Heavy: 2, Recent: 2) : new EvictionSettings(EvictionKind.Streaming, Sinks: 1, Recent: 3);
        var maps = LessMaps.Initial(model.Config, model.Map, rank: 3, hidden: 5, eviction, seed: 7);
        foreach (var m in maps.Layers.Where(m => m.HasKeyMap))
        {
            for (int i = 0; i < m.S1!.Length; i++) { m.S1[i] = 0.5f + 0.1f * i; m.S2![i] = -0.3f + 0.2f * i; }
        }
        var rng = new Random(3);
        int[][] ids = [[.. Enumerable.Range(0, 11).Select(_ => rng.Next(3, 500))], [.. Enumerable.Range(0, 9).Select(_ => rng.Next(3, 500))]];
        var fixture = new EvictionGoldenTests.Fixture
        {
            Dir = f.Dir, Model = model, Expected = f.Expected, Eviction = eviction, KvDType = Lckv.Numerics.DType.F32, MaxNewTokens = 1, Sequential = false,
        };
        // store 0 of 0_0_2_2: owner 0, readers 0 and 1
        int kv = model.Map.ReadsKvIndex(1);
        int[] readers = [0, 1];
        using var recorder = new LessRecorder(model, 11);
        var windows = ids.Select(row => LessStoreWindow.Simulate(recorder.Record(row), kv, readers, eviction, model.Config.NumAttentionHeads,
            model.KvHeads, model.HeadDim, model.Rope)).ToArray();
        Assert.All(windows, w => Assert.NotEmpty(w.LossRows));
        var loss = new LessLoss(maps, model, 0, readers);
        var grads = LessLoss.Gradients.ZerosLike(maps, 0, readers);
        loss.Evaluate(windows, grads);
        var tensors = new (string Name, float[] Value, float[] Grad)[]
        {
            ("k1", maps.Layers[0].K1!, grads.Owner.K1!), ("k2", maps.Layers[0].K2!, grads.Owner.K2!), ("w3", maps.Layers[0].W3!, grads.Owner.W3!),
            ("s1", maps.Layers[0].S1!, grads.Owner.S1!), ("s2", maps.Layers[0].S2!, grads.Owner.S2!),
            ("q1 of layer 0", maps.Layers[0].Q1, grads.Readers[0].Q1), ("q2 of layer 0", maps.Layers[0].Q2, grads.Readers[0].Q2),
            ("q1 of layer 1", maps.Layers[1].Q1, grads.Readers[1].Q1), ("q2 of layer 1", maps.Layers[1].Q2, grads.Readers[1].Q2),
        };
        foreach (var (name, value, grad) in tensors)
        {
            double largest = grad.Max(x => Math.Abs(x));
            Assert.True(largest > 0, $"{name}: every gradient is zero");
            // the elements with the largest gradients, and a few others
            var picks = Enumerable.Range(0, grad.Length).OrderByDescending(i => Math.Abs(grad[i])).Take(3).Concat([0, grad.Length / 2, grad.Length - 1]).Distinct();
            double worst = 0;
            foreach (int i in picks)
            {
                // central differences at doubling steps, and their Richardson extrapolations (4 D(h) - D(2h)) / 3,
                // whose error falls as h^4: f32 rounding spoils the smallest steps, curvature and the kinks of |x| the
                // largest; the best estimate is the check
                double best = double.MaxValue, previous = double.NaN;
                foreach (float step in new[] { 3e-4f, 6e-4f, 1.2e-3f, 2.4e-3f, 4.8e-3f, 9.6e-3f })
                {
                    float keep = value[i], h = step * Math.Max(1, Math.Abs(keep));
                    value[i] = keep + h;
                    double up = loss.Evaluate(windows, null);
                    value[i] = keep - h;
                    double down = loss.Evaluate(windows, null);
                    value[i] = keep;
                    double central = (up - down) / (2 * h);
                    best = Math.Min(best, Math.Abs(central - grad[i]) / largest);
                    if (!double.IsNaN(previous)) best = Math.Min(best, Math.Abs((4 * previous - central) / 3 - grad[i]) / largest);
                    previous = central;
                }
                worst = Math.Max(worst, best);
            }
            output.WriteLine($"{policy} {name}: max |grad| {largest:E2}, worst finite-difference error {worst:E2} of it");
            Assert.True(worst < 5e-3, $"{policy} {name}: finite differences differ from the gradient by {worst} of its largest element");
        }
    }
}

/// <summary>lckv less train and --less through the CLI.</summary>
public sealed class LessCliTests(ITestOutputHelper output)
{
    // the golden loss through the CLI: the case's maps as the start, its two rows as two windows, the loss before the
    // first update on the training windows
    [SharedFact]
    public void TrainReportsTheGoldenLossBeforeItsFirstUpdate()
    {
        using var f = EvictionGoldenTests.Open("less-h2o-llama");
        using var dir = new TempDir();
        var rows = f.Rows("less_train.input_ids");
        string ids = dir.WriteText("train.ids", string.Join(' ', rows.SelectMany(x => x)));
        var r = CliTests.Run("less", "train", "--model", f.Dir, "--ids-file", ids, "--evict", "h2o", "--heavy", "4", "--recent", "4",
            "--seq-len", rows[0].Length.ToString(), "--val-fraction", "0", "--epochs", "1", "--init", f.LessPath!, "--out", dir.File("out.safetensors"), "--json");
        Assert.True(r.Code == 0, r.Err);
        using var doc = System.Text.Json.JsonDocument.Parse(r.Out);
        var store = doc.RootElement.GetProperty("stores").EnumerateArray().Single(s => s.GetProperty("layer").GetInt32() == 1);
        double got = store.GetProperty("loss_before").GetDouble(), want = f.Read<float>("less_train.loss")[0];
        output.WriteLine($"lckv less train: layer 1 loss before training {got:R}, reference {want:R}; after one epoch {store.GetProperty("loss_after").GetDouble():R}");
        Assert.True(Math.Abs(got - want) <= 1e-5 * want, $"{got} vs {want}");
        Assert.True(store.GetProperty("loss_after").GetDouble() < got, "one epoch did not lower the loss");
        // the written maps load back for the model and run under the budget they were trained for, without a warning
        var p = CliTests.Run("perplexity", "--model", f.Dir, "--ids-file", ids, "--evict", "h2o", "--heavy", "4", "--recent", "4", "--less", dir.File("out.safetensors"));
        Assert.True(p.Code == 0, p.Err);
        Assert.DoesNotContain("warning", p.Err);
    }

    [SharedFact]
    public void ResumeTrainsOnlyTheStoresNotYetDone()
    {
        using var f = EvictionGoldenTests.Open("less-h2o-llama");
        using var dir = new TempDir();
        var rng = new Random(9);
        string ids = dir.WriteText("train.ids", string.Join(' ', Enumerable.Range(0, 60).Select(_ => rng.Next(3, 500))));
        string outPath = dir.File("less.safetensors");
        // a run stopped after layers 0 and 1: its file says so
        var eviction = new EvictionSettings(EvictionKind.H2O, Heavy: 4, Recent: 4);
        LessMaps.Initial(f.Model.Config, f.Model.Map, 4, 16, eviction, 1).Save(outPath, new Dictionary<string, string> { [LessTrainer.DoneKey] = "0,1" });
        string[] common = ["less", "train", "--model", f.Dir, "--ids-file", ids, "--evict", "h2o", "--heavy", "4", "--recent", "4", "--seq-len", "20",
            "--rank", "4", "--hidden", "16", "--epochs", "1", "--out", outPath, "--json"];
        CliTests.AssertOneLineError(CliTests.Run(common), "exists; --resume continues it, --force replaces it");
        var r = CliTests.Run([.. common, "--resume"]);
        Assert.True(r.Code == 0, r.Err);
        using (var doc = System.Text.Json.JsonDocument.Parse(r.Out))
            Assert.Equal([2, 3], doc.RootElement.GetProperty("stores").EnumerateArray().Select(s => s.GetProperty("layer").GetInt32()));
        using (var file = Lckv.Formats.SafeTensorsFile.Open(outPath)) Assert.Equal("0,1,2,3", file.Metadata[LessTrainer.DoneKey]);
        // everything done: nothing to train; another rank is refused
        r = CliTests.Run([.. common, "--resume"]);
        Assert.True(r.Code == 0, r.Err);
        CliTests.AssertOneLineError(CliTests.Run([.. common.Take(12), "--seq-len", "20", "--rank", "2", "--hidden", "16", "--out", outPath, "--resume"]),
            "holds maps of rank 4");
    }

    [SharedFact]
    public void BenchAndGenerateRunWithLess()
    {
        using var f = EvictionGoldenTests.Open("less-h2o-llama");
        var r = CliTests.Run("bench", "--model", f.Dir, "-p", "16", "-n", "8", "-b", "1,2", "-r", "1", "--evict", "h2o", "--heavy", "4", "--recent", "4", "--less", f.LessPath!, "-o", "json");
        Assert.True(r.Code == 0, r.Err);
        r = CliTests.Run("generate", "--model", f.Dir, "--prompt-ids", "5,6,7,8,9,10,11,12,13,14,15,16", "-n", "6", "--temperature", "0", "--evict", "h2o", "--heavy", "4", "--recent", "4", "--less", f.LessPath!);
        Assert.True(r.Code == 0, r.Err);
    }
}
