using System.Text.Json;
using Lckv.Formats;
using Lckv.Tests.Cli;
using Lckv.Tests.Formats;
using Lckv.Training;
using Xunit.Abstractions;

namespace Lckv.Tests.Training;

/// <summary>The training loop with toy models: gradients, bit-exact resume, accumulation, the CLI.</summary>
public sealed class TrainerTests(ITestOutputHelper output)
{
    private static TrainerOptions Options(int steps = 20) => new()
    {
        Batch = 3, SeqLen = 9, Accum = 2, Steps = steps, Lr = 0.05, MinLr = 0.005, Warmup = 4, WeightDecay = 0.1f,
        Clip = 0.5, Seed = 11, EvalEvery = 5, EvalBatches = 4, SaveEvery = 5,
    };

    private static void AssertFiniteDifferences(ITrainable model, int[] tokens, int batch, int seqLen, ITestOutputHelper output)
    {
        foreach (var p in model.Parameters) Array.Clear(p.Grad);
        model.LossAndGradients(tokens, batch, seqLen, 0.5f);
        var rng = new TrainingRng(3);
        foreach (var p in model.Parameters)
        {
            double worst = 0;
            for (int k = 0; k < 6; k++)
            {
                int i = (int)rng.NextBelow((ulong)p.Value.Length);
                float keep = p.Value[i];
                const float h = 1e-2f;
                p.Value[i] = keep + h;
                double up = model.Loss(tokens, batch, seqLen);
                p.Value[i] = keep - h;
                double down = model.Loss(tokens, batch, seqLen);
                p.Value[i] = keep;
                double numeric = 0.5 * (up - down) / (2 * h);
                worst = Math.Max(worst, Math.Abs(numeric - p.Grad[i]));
            }
            output.WriteLine($"{p.Name,-16} max |numeric - analytic| {worst:E2}");
            Assert.True(worst < 2e-4, $"{p.Name}: {worst}");
        }
    }

    [Fact]
    public void ToyAndBigramGradientsMatchFiniteDifferences()
    {
        var tokens = ToyData.Tokens(2 * 7, 12, 5);
        AssertFiniteDifferences(new ToyMlpModel(12, 4, 6, 1), tokens, 2, 7, output);
        AssertFiniteDifferences(new BigramModel(12, 1), tokens, 2, 7, output);
    }

    /// <summary>Runs a trainer, returning the losses it reported.</summary>
    private static List<float> Train(Trainer t, Func<StepRecord, bool>? stop = null, CancellationTokenSource? cts = null)
    {
        var losses = new List<float>();
        t.StepDone = r =>
        {
            losses.Add((float)r.Loss);
            if (stop?.Invoke(r) == true) cts!.Cancel();
        };
        t.Run(cts?.Token ?? default);
        return losses;
    }

    private static float[][] Weights(Trainer t) => [.. t.Model.Parameters.Select(p => p.Value.ToArray())];

    [Fact]
    public void ResumeAfterAnInterruptIsBitExact()
    {
        using var dir = new TempDir();
        using var data = TokenDataset.Open(ToyData.Write(dir.File("data")));
        var cfg = ToyData.Config();

        List<float> straight;
        float[][] straightWeights;
        using (var t = Trainer.Start(ToyMlpModel.Factory, cfg, "toy", data, Options(), dir.File("a")))
        {
            straight = Train(t);
            straightWeights = Weights(t);
            Assert.Equal(20, t.Step);
        }

        var first = new List<float>();
        using (var t = Trainer.Start(ToyMlpModel.Factory, cfg, "toy", data, Options(), dir.File("b")))
        {
            using var cts = new CancellationTokenSource();
            first = Train(t, r => r.Step == 10, cts);
            Assert.Equal(10, t.Step);
        }
        Assert.Equal(10, Checkpoint.ReadState(Checkpoint.Find(Path.Combine(dir.Root, "b", "checkpoint"))!).Step);
        List<float> second;
        float[][] resumedWeights;
        using (var t = Trainer.Resume(ToyMlpModel.Factory, data, dir.File("b")))
        {
            Assert.Equal(10, t.Step);
            second = Train(t);
            resumedWeights = Weights(t);
        }
        output.WriteLine("straight: " + string.Join(' ', straight.Select(l => l.ToString("F5"))));
        output.WriteLine("resumed:  " + string.Join(' ', first.Concat(second).Select(l => l.ToString("F5"))));
        Assert.Equal(straight, first.Concat(second)); // exact float equality
        for (int i = 0; i < straightWeights.Length; i++) Assert.Equal(straightWeights[i], resumedWeights[i]);
        Assert.True(straight[^1] < straight[0] - 0.3, $"the loss should fall: {straight[0]} -> {straight[^1]}");
    }

    [Fact]
    public void ResumeAfterACrashRepeatsTheStepsSinceTheLastCheckpointExactly()
    {
        using var dir = new TempDir();
        using var data = TokenDataset.Open(ToyData.Write(dir.File("data")));
        var cfg = ToyData.Config();
        List<float> straight;
        using (var t = Trainer.Start(ToyMlpModel.Factory, cfg, "toy", data, Options(), dir.File("a")))
            straight = Train(t);

        using (var t = Trainer.Start(ToyMlpModel.Factory, cfg, "toy", data, Options(), dir.File("b")))
        {
            t.StepDone = r =>
            {
                if (r.Step == 13) throw new InvalidOperationException("simulated crash");
            };
            Assert.Throws<InvalidOperationException>(() => t.Run());
        }
        using (var t = Trainer.Resume(ToyMlpModel.Factory, data, dir.File("b")))
        {
            Assert.Equal(10, t.Step); // the last checkpoint (save-every 5)
            var rest = Train(t);
            Assert.Equal(straight.Skip(10), rest);
            Assert.Equal(20, t.LossTail.Count);
            Assert.Equal(straight, t.LossTail.Select(r => (float)r.Loss));
        }
    }

    [Fact]
    public void AccumulationAveragesMicroBatches()
    {
        // accum 2 x batch 2 draws the same rows as accum 1 x batch 4 (the sampler draws rows in order)
        using var dir = new TempDir();
        using var data = TokenDataset.Open(ToyData.Write(dir.File("data")));
        var o = Options(3) with { EvalEvery = 0, SaveEvery = 0, Clip = 0 };
        using var a = Trainer.Start(ToyMlpModel.Factory, ToyData.Config(), "toy", data, o with { Batch = 2, Accum = 2 }, dir.File("a"));
        using var b = Trainer.Start(ToyMlpModel.Factory, ToyData.Config(), "toy", data, o with { Batch = 4, Accum = 1 }, dir.File("b"));
        var la = Train(a);
        var lb = Train(b);
        for (int i = 0; i < 3; i++) Assert.Equal(lb[i], la[i], 5);
        var wa = Weights(a);
        var wb = Weights(b);
        for (int i = 0; i < wa.Length; i++)
            for (int j = 0; j < wa[i].Length; j++) Assert.Equal(wb[i][j], wa[i][j], 4);
    }

    [Fact]
    public void StartRefusesAFolderWithACheckpointAndResumeNeedsOne()
    {
        using var dir = new TempDir();
        using var data = TokenDataset.Open(ToyData.Write(dir.File("data")));
        Assert.Contains("no checkpoint", Assert.Throws<LckvException>(() => Trainer.Resume(ToyMlpModel.Factory, data, dir.File("run"))).Message);
        using (var t = Trainer.Start(ToyMlpModel.Factory, ToyData.Config(), "toy", data, Options(2), dir.File("run"))) t.Run();
        Assert.Equal([nameof(Trainer.Resume)], Assert.Throws<LckvException>(() => Trainer.Start(ToyMlpModel.Factory, ToyData.Config(), "toy", data, Options(2), dir.File("run"))).Settings);
        Assert.Contains("vocab", Assert.Throws<LckvException>(() => Trainer.Start(ToyMlpModel.Factory, ToyData.Config(16), "toy", data, Options(2), dir.File("run2"))).Message);
    }

    // ---------------- CLI ----------------

    private static string WriteConfig(TempDir dir)
    {
        string path = dir.File("config.json");
        File.WriteAllText(path, ToyData.Config().ToJson());
        return path;
    }

    private static string[] TrainArgs(TempDir dir, string data, string config, params string[] extra) =>
    [
        "train", "--config", config, "--arch", "bigram", "--data", data, "--out", dir.File("run"), "--batch", "4", "--seq-len", "16",
        "--lr", "0.1", "--warmup", "2", "--eval-every", "5", "--eval-batches", "2", "--save-every", "5", "--print-every", "5", .. extra,
    ];

    [Fact]
    public void CliTrainsABigramThenResumesWithMoreSteps()
    {
        using var dir = new TempDir();
        string data = ToyData.Write(dir.File("data"));
        string config = WriteConfig(dir);
        var r = CliTests.Run(TrainArgs(dir, data, config, "--steps", "10"));
        output.WriteLine(r.Out + r.Err);
        Assert.Equal(0, r.Code);
        Assert.Contains("step 10/10 loss", r.Out);
        Assert.Contains("eval step 10: validation loss", r.Out);
        Assert.Contains("done: step 10", r.Out);
        var state = Checkpoint.ReadState(Path.Combine(dir.Root, "run", "checkpoint"));
        Assert.Equal("bigram", state.Arch);
        Assert.Equal(10, state.Step);
        Assert.Equal(ToyData.Config().VocabSize, ModelConfig.Load(Path.Combine(dir.Root, "run", "checkpoint")).VocabSize);

        var lines = File.ReadAllLines(Path.Combine(dir.Root, "run", "log.jsonl")).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal("start", lines[0].GetProperty("event").GetString());
        var steps = lines.Where(l => l.GetProperty("event").GetString() == "step").ToList();
        Assert.Equal(Enumerable.Range(1, 10), steps.Select(s => s.GetProperty("step").GetInt32()));
        Assert.All(steps, s => Assert.True(s.GetProperty("loss").GetDouble() > 0));
        Assert.Equal(2, lines.Count(l => l.GetProperty("event").GetString() == "eval"));

        var again = CliTests.Run("train", "--resume", "--data", data, "--out", dir.File("run"), "--steps", "15", "--print-every", "5");
        output.WriteLine(again.Out + again.Err);
        Assert.Equal(0, again.Code);
        Assert.Contains("resuming", again.Out);
        Assert.Contains("step 15/15", again.Out);
        Assert.Equal(15, Checkpoint.ReadState(Path.Combine(dir.Root, "run", "checkpoint")).Step);

        var done = CliTests.Run("train", "--resume", "--data", data, "--out", dir.File("run"));
        Assert.Equal(0, done.Code);
        Assert.Contains("done: step 15", done.Out);
    }

    [Fact]
    public void CliErrorsAreOneLine()
    {
        using var dir = new TempDir();
        string data = ToyData.Write(dir.File("data"));
        string config = WriteConfig(dir);
        CliTests.AssertOneLineError(CliTests.Run("train", "--data", data, "--out", dir.File("x"), "--steps", "2"), "--preset");
        CliTests.AssertOneLineError(CliTests.Run("train", "--preset", "small", "--config", config, "--data", data, "--out", dir.File("x")), "exactly one");
        CliTests.AssertOneLineError(CliTests.Run("train", "--config", config, "--data", data, "--out", dir.File("x"), "--steps", "2"), "--seq-len");
        CliTests.AssertOneLineError(CliTests.Run("train", "--config", config, "--arch", "rnn", "--data", data, "--out", dir.File("x")), "rnn");
        CliTests.AssertOneLineError(CliTests.Run("train", "--config", config, "--arch", "bigram", "--data", dir.File("nodata"), "--out", dir.File("x")), "nodata");
        CliTests.AssertOneLineError(CliTests.Run(TrainArgs(dir, data, config, "--lr", "-1")), "--lr");
        CliTests.AssertOneLineError(CliTests.Run(TrainArgs(dir, data, config, "--batch", "0")), "--batch");
        CliTests.AssertOneLineError(CliTests.Run(TrainArgs(dir, data, config, "--seq-len", "5000")), "--seq-len");
        CliTests.AssertOneLineError(CliTests.Run("train", "--resume", "--data", data, "--out", dir.File("none")), "no checkpoint");
        CliTests.AssertOneLineError(CliTests.Run("train", "--preset", "small", "--layout", "lckv-w99", "--data", data, "--out", dir.File("x")), "lckv-w99");
        Assert.Equal(0, CliTests.Run(TrainArgs(dir, data, config, "--steps", "2")).Code);
        CliTests.AssertOneLineError(CliTests.Run(TrainArgs(dir, data, config, "--steps", "2")), "--resume");
        CliTests.AssertOneLineError(CliTests.Run("train", "--resume", "--lr", "0.5", "--data", data, "--out", dir.File("run")), "--lr");
        CliTests.AssertOneLineError(CliTests.Run("train", "--from", Path.Combine(dir.Root, "run", "checkpoint"), "--layout", "cla2", "--data", data, "--out", dir.File("y")), "convert");
    }

    [Fact]
    public void CliContinuesTrainingFromACheckpointFolder()
    {
        using var dir = new TempDir();
        string data = ToyData.Write(dir.File("data"));
        string config = WriteConfig(dir);
        Assert.Equal(0, CliTests.Run(TrainArgs(dir, data, config, "--steps", "4")).Code);
        var r = CliTests.Run("train", "--from", Path.Combine(dir.Root, "run", "checkpoint"), "--arch", "bigram", "--data", data, "--out", dir.File("next"),
            "--steps", "3", "--batch", "4", "--seq-len", "16", "--warmup", "0");
        output.WriteLine(r.Out + r.Err);
        Assert.Equal(0, r.Code);
        var state = Checkpoint.ReadState(Path.Combine(dir.Root, "next", "checkpoint"));
        Assert.Equal(3, state.Step);
        Assert.Equal(Path.Combine(dir.Root, "run", "checkpoint"), state.InitFrom);
    }
}
