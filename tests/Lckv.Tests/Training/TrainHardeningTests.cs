using Lckv.Tests.Cli;
using Lckv.Tests.Formats;

namespace Lckv.Tests.Training;

/// <summary>train's handling of repeated options on --resume, damaged checkpoints and schedules shorter than warmup.</summary>
public sealed class TrainHardeningTests
{
    private static string[] Args(TempDir dir, string data, string config, params string[] extra) =>
    [
        "train", "--config", config, "--arch", "bigram", "--data", data, "--out", dir.File("run"), "--batch", "4", "--seq-len", "16",
        "--lr", "0.1", "--warmup", "2", "--eval-every", "0", "--eval-batches", "2", "--save-every", "0", "--print-every", "5", .. extra,
    ];

    private static (string Data, string Config) Setup(TempDir dir)
    {
        string data = ToyData.Write(dir.File("data"));
        string config = dir.File("config.json");
        File.WriteAllText(config, ToyData.Config().ToJson());
        return (data, config);
    }

    [Fact]
    public void ResumeAcceptsTheOriginalOptionsRepeatedAndNamesBothValuesOfAChange()
    {
        using var dir = new TempDir();
        var (data, config) = Setup(dir);
        Assert.Equal(0, CliTests.Run(Args(dir, data, config, "--steps", "4")).Code);
        // the same command line again with --resume and a longer run: the repeated values are the checkpoint's
        string[] resume = ["train", "--resume", "--arch", "bigram", "--data", data, "--out", dir.File("run"), "--batch", "4", "--seq-len", "16",
            "--lr", "0.1", "--warmup", "2", "--steps", "6"];
        var again = CliTests.Run(resume);
        Assert.True(again.Code == 0, again.Err);
        Assert.Contains("done: step 6", again.Out);
        var lr = CliTests.Run("train", "--resume", "--data", data, "--out", dir.File("run"), "--lr", "0.5");
        CliTests.AssertOneLineError(lr, "--lr 0.5 differs from the checkpoint's 0.1");
        CliTests.AssertOneLineError(CliTests.Run("train", "--resume", "--data", data, "--out", dir.File("run"), "--batch", "8"), "--batch 8 differs from the checkpoint's 4");
        CliTests.AssertOneLineError(CliTests.Run("train", "--resume", "--data", data, "--out", dir.File("run"), "--arch", "decoder"), "--arch decoder differs from the checkpoint's bigram");
    }

    [Fact]
    public void CorruptTrainerStateNamesTheCauseAndIsNeverOverwritten()
    {
        using var dir = new TempDir();
        var (data, config) = Setup(dir);
        Assert.Equal(0, CliTests.Run(Args(dir, data, config, "--steps", "2")).Code);
        string state = Path.Combine(dir.Root, "run", "checkpoint", "trainer_state.json");
        File.WriteAllText(state, "{\"format\": 1, \"step\": ");
        var r = CliTests.Run("train", "--resume", "--data", data, "--out", dir.File("run"));
        CliTests.AssertOneLineError(r, "trainer_state.json: malformed JSON");
        // a fresh run into the same folder must not replace the damaged checkpoint
        var fresh = CliTests.Run(Args(dir, data, config, "--steps", "2"));
        CliTests.AssertOneLineError(fresh, "already holds a checkpoint that cannot be resumed");
        Assert.Equal("{\"format\": 1, \"step\": ", File.ReadAllText(state));
    }

    [Fact]
    public void StepsNotPastWarmupWarn()
    {
        using var dir = new TempDir();
        var (data, config) = Setup(dir);
        string[] args = ["train", "--config", config, "--arch", "bigram", "--data", data, "--out", dir.File("run"), "--batch", "4", "--seq-len", "16",
            "--steps", "6", "--eval-every", "0", "--eval-batches", "1", "--save-every", "0"];
        var r = CliTests.Run(args); // default warmup: 100 updates
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("warning: --warmup 100 is not below --steps 6", r.Err);
    }
}

public sealed class TrainLogResumeTests
{
    [Fact]
    public void ResumeDropsTheLogEntriesPastTheCheckpoint()
    {
        using var dir = new TempDir();
        string data = ToyData.Write(dir.File("data"));
        string config = dir.File("config.json");
        File.WriteAllText(config, ToyData.Config().ToJson());
        string[] common = ["--data", data, "--out", dir.File("run"), "--eval-every", "0", "--save-every", "0"];
        var first = CliTests.Run(["train", "--config", config, "--arch", "bigram", "--batch", "4", "--seq-len", "16", "--lr", "0.1", "--warmup", "2", "--steps", "4", .. common]);
        Assert.True(first.Code == 0, first.Err);
        // a kill -9 after steps 5 and 6 were logged but before their checkpoint, in the middle of a line
        string log = Path.Combine(dir.Root, "run", "log.jsonl");
        File.AppendAllText(log, "{\"event\":\"step\",\"step\":5,\"loss\":1}\n{\"event\":\"step\",\"step\":6,\"loss\":1}\n{\"event\":\"st");
        var resumed = CliTests.Run(["train", "--resume", "--steps", "6", .. common]);
        Assert.True(resumed.Code == 0, resumed.Err);

        var events = File.ReadAllLines(log).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement).ToList();
        var steps = events.Where(e => e.GetProperty("event").GetString() == "step").Select(e => e.GetProperty("step").GetInt64()).ToList();
        Assert.Equal([1, 2, 3, 4, 5, 6], steps);
        // the superseded entries (no "lr": written above) are gone, the resumed run's are there
        Assert.All(events.Where(e => e.GetProperty("event").GetString() == "step"), e => Assert.True(e.TryGetProperty("lr", out _)));
        var resume = Assert.Single(events, e => e.GetProperty("event").GetString() == "resume");
        Assert.Equal(4, resume.GetProperty("from_step").GetInt64());
        Assert.Equal(3, resume.GetProperty("dropped_entries").GetInt32());
        Assert.False(File.Exists(log + ".tmp"));
    }

    [Fact]
    public void DropAfterKeepsALogWithNothingPastTheStep()
    {
        using var dir = new TempDir();
        string log = dir.WriteText("log.jsonl", "{\"event\":\"start\"}\n{\"event\":\"step\",\"step\":1}\n");
        Assert.Equal(0, Lckv.Training.TrainingLog.DropAfter(log, 1));
        Assert.Equal("{\"event\":\"start\"}\n{\"event\":\"step\",\"step\":1}\n", File.ReadAllText(log));
        Assert.Equal(1, Lckv.Training.TrainingLog.DropAfter(log, 0));
        Assert.Equal("{\"event\":\"start\"}\n", File.ReadAllText(log));
        Assert.Equal(0, Lckv.Training.TrainingLog.DropAfter(dir.File("none.jsonl"), 0));
    }
}
