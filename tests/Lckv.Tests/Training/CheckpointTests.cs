using System.Diagnostics;
using Lckv.Formats;
using Lckv.Tests.Cli;
using Lckv.Tests.Formats;
using Lckv.Training;
using Xunit.Abstractions;

namespace Lckv.Tests.Training;

/// <summary>Checkpoint folders: exact round trip, atomic replacement, fallback to the previous one, kill -9 mid-write.</summary>
public sealed class CheckpointTests(ITestOutputHelper output)
{
    private static (AdamW Opt, TrainerState State) Trained(ITrainable model, int steps)
    {
        var opt = new AdamW(model.Parameters, new AdamWOptions());
        var tokens = ToyData.Tokens(4 * 8, 32, 9);
        for (int s = 0; s < steps; s++)
        {
            opt.ZeroGrad();
            model.LossAndGradients(tokens, 4, 8);
            opt.ClipGradNorm(1);
            opt.Step(0.01);
        }
        return (opt, new TrainerState { Step = steps, Arch = "toy", Sampler = new SamplerState(0xDEADBEEFCAFEF00DUL, 7), TokensSeen = 123 });
    }

    [Fact]
    public void RoundTripIsExact()
    {
        using var dir = new TempDir();
        var model = new ToyMlpModel(32, 8, 16, 4);
        var (opt, state) = Trained(model, 3);
        string folder = dir.File("ckpt");
        Checkpoint.Save(folder, ToyData.Config(), opt, state);
        Assert.True(Checkpoint.IsComplete(folder));
        Assert.Equal(Path.GetFullPath(folder), Checkpoint.Find(folder));
        Assert.Equal(["config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"],
            Directory.GetFiles(folder).Select(Path.GetFileName).Order(StringComparer.Ordinal));

        var copy = new ToyMlpModel(32, 8, 16, 99);
        var opt2 = new AdamW(copy.Parameters, new AdamWOptions());
        Assert.Equal(0, Checkpoint.LoadParameters(copy.Parameters, folder));
        Checkpoint.LoadOptimizer(opt2, folder);
        Assert.Equal(3, opt2.StepCount);
        for (int i = 0; i < model.Parameters.Count; i++)
        {
            Assert.Equal(model.Parameters[i].Value, copy.Parameters[i].Value);
            Assert.Equal(opt.Moments(i).M, opt2.Moments(i).M);
            Assert.Equal(opt.Moments(i).V, opt2.Moments(i).V);
        }
        var read = Checkpoint.ReadState(folder);
        Assert.Equal(state.Sampler, read.Sampler);
        Assert.Equal(123, read.TokensSeen);
        Assert.Equal(ToyData.Config().ToJson(), ModelConfig.Load(folder).ToJson());
        using var set = TensorSet.Open(folder);
        Assert.Equal("toy.b1,toy.b_out,toy.embed,toy.out,toy.w1", string.Join(',', set.Names.Order(StringComparer.Ordinal)));
    }

    [Fact]
    public void LoadingChecksNamesAndShapes()
    {
        using var dir = new TempDir();
        var model = new ToyMlpModel(32, 8, 16, 4);
        var (opt, state) = Trained(model, 1);
        Checkpoint.Save(dir.File("ckpt"), ToyData.Config(), opt, state);
        Assert.Contains("toy.embed", Assert.Throws<LckvException>(() => Checkpoint.LoadParameters(new ToyMlpModel(32, 4, 16, 1).Parameters, dir.File("ckpt"))).Message);
        Assert.Contains("bigram.weight", Assert.Throws<LckvException>(() => Checkpoint.LoadParameters(new BigramModel(32, 1).Parameters, dir.File("ckpt"))).Message);
        var bigger = new ToyMlpModel(32, 8, 16, 1);
        Assert.Equal(0, Checkpoint.LoadParameters(bigger.Parameters, dir.File("ckpt")));
    }

    [Fact]
    public void ReplacingKeepsExactlyOneFolderAndCleansUp()
    {
        using var dir = new TempDir();
        var model = new ToyMlpModel(32, 8, 16, 4);
        var (opt, state) = Trained(model, 1);
        string folder = dir.File("ckpt");
        Directory.CreateDirectory(folder + ".tmp-deadbeef"); // left by a killed writer
        Checkpoint.Save(folder, ToyData.Config(), opt, state);
        Checkpoint.Save(folder, ToyData.Config(), opt, state with { Step = 2 });
        Assert.Equal(["ckpt"], Directory.GetDirectories(dir.Root).Select(Path.GetFileName));
        Assert.Equal(2, Checkpoint.ReadState(folder).Step);
    }

    [Fact]
    public void FallsBackToThePreviousCheckpointWhenTheLastWriteWasInterrupted()
    {
        using var dir = new TempDir();
        var model = new ToyMlpModel(32, 8, 16, 4);
        var (opt, state) = Trained(model, 1);
        string folder = dir.File("ckpt");
        Checkpoint.Save(folder, ToyData.Config(), opt, state);

        // killed between "move the old one aside" and "move the new one in": only ckpt.old is left
        Directory.Move(folder, folder + ".old");
        Assert.Equal(Path.GetFullPath(folder) + ".old", Checkpoint.Find(folder));
        // the next save must not delete the only good checkpoint before the new one is in place
        string? seenOld = null;
        Checkpoint.Save(folder, ToyData.Config(), opt, state with { Step = 2 }, onStage: s =>
        {
            if (s == "swap") seenOld = Checkpoint.Find(folder);
        });
        Assert.Equal(Path.GetFullPath(folder) + ".old", seenOld);
        Assert.Equal(2, Checkpoint.ReadState(Checkpoint.Find(folder)!).Step);
        Assert.False(Directory.Exists(folder + ".old"));

        // an incomplete folder (no trainer_state.json) is not used when an older one exists
        Directory.CreateDirectory(folder + ".old");
        foreach (var f in Directory.GetFiles(folder)) File.Copy(f, Path.Combine(folder + ".old", Path.GetFileName(f)));
        File.Delete(Path.Combine(folder, Checkpoint.StateFile));
        Assert.Equal(Path.GetFullPath(folder) + ".old", Checkpoint.Find(folder));
        File.Delete(Path.Combine(folder + ".old", Checkpoint.StateFile));
        Assert.Null(Checkpoint.Find(folder));
    }

    // ---------------- crash safety with a real process ----------------

    internal static string CliDll
    {
        get
        {
            string path = Path.Combine(AppContext.BaseDirectory, "Lckv.Cli.dll");
            Assert.True(File.Exists(path), $"{path} not found beside the test assembly");
            return path;
        }
    }

    /// <summary>Starts `dotnet Lckv.Cli.dll args` with stdout and stderr collected line by line.</summary>
    internal static (Process Process, List<string> Lines) StartCli(params string[] args)
    {
        string host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h : "dotnet";
        var psi = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(CliDll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        var lines = new List<string>();
        var process = new Process { StartInfo = psi };
        DataReceivedEventHandler collect = (_, e) =>
        {
            if (e.Data is null) return;
            lock (lines) lines.Add(e.Data);
        };
        process.OutputDataReceived += collect;
        process.ErrorDataReceived += collect;
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return (process, lines);
    }

    internal static void WaitForLine(Process process, List<string> lines, string text, int timeoutMs = 60_000)
    {
        var sw = Stopwatch.StartNew();
        while (sw.ElapsedMilliseconds < timeoutMs)
        {
            lock (lines)
                if (lines.Any(l => l.Contains(text, StringComparison.Ordinal))) return;
            if (process.HasExited) break;
            Thread.Sleep(20);
        }
        string all;
        lock (lines) all = string.Join('\n', lines);
        if (!process.HasExited) process.Kill(entireProcessTree: true);
        Assert.Fail($"no line containing '{text}' (exited: {process.HasExited}):\n{all}");
    }

    [Theory]
    [InlineData("model.safetensors")]
    [InlineData("optimizer.safetensors")]
    [InlineData("swap")]
    public void KillDuringACheckpointWriteLeavesThePreviousOneLoadable(string stage)
    {
        using var dir = new TempDir();
        string data = ToyData.Write(dir.File("data"));
        string config = dir.WriteText("config.json", ToyData.Config().ToJson());
        string run = dir.File("run");
        string[] common = ["--config", config, "--arch", "bigram", "--data", data, "--batch", "4", "--seq-len", "16", "--lr", "0.1",
            "--warmup", "1", "--eval-every", "0", "--save-every", "2", "--steps", "4", "--seed", "5"];

        var (process, lines) = StartCli(["train", "--out", run, "--debug-hang-in-checkpoint", "2:" + stage, .. common]);
        using (process)
        {
            WaitForLine(process, lines, "paused in checkpoint write 2");
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
        }
        lock (lines) output.WriteLine(string.Join('\n', lines));

        string? found = Checkpoint.Find(Path.Combine(run, Trainer.CheckpointName));
        Assert.NotNull(found);
        output.WriteLine($"after kill at '{stage}': loading {found}; folders: {string.Join(", ", Directory.GetDirectories(run).Select(Path.GetFileName))}");
        var state = Checkpoint.ReadState(found);
        Assert.Equal(2, state.Step);

        // the surviving checkpoint holds exactly what an in-process run has after 2 steps
        using var ds = TokenDataset.Open(data);
        using var reference = Trainer.Start(TrainerModels.Create, ToyData.Config(), TrainerModels.Bigram, ds, state.Options with { Steps = 4 },
            dir.File("reference"));
        using var cts = new CancellationTokenSource();
        reference.StepDone = r =>
        {
            if (r.Step == 2) cts.Cancel();
        };
        reference.Run(cts.Token);
        var loaded = new BigramModel(ToyData.Config().VocabSize, 0);
        Checkpoint.LoadParameters(loaded.Parameters, found);
        var opt = new AdamW(loaded.Parameters, new AdamWOptions());
        Checkpoint.LoadOptimizer(opt, found);
        Assert.Equal(2, opt.StepCount);
        for (int i = 0; i < loaded.Parameters.Count; i++) Assert.Equal(reference.Model.Parameters[i].Value, loaded.Parameters[i].Value);

        // and the run resumes from it to the end
        var resumed = CliTests.Run("train", "--resume", "--data", data, "--out", run);
        output.WriteLine(resumed.Out + resumed.Err);
        Assert.Equal(0, resumed.Code);
        Assert.Equal(4, Checkpoint.ReadState(Path.Combine(run, Trainer.CheckpointName)).Step);
        Assert.Equal([Trainer.CheckpointName], Directory.GetDirectories(run).Select(Path.GetFileName));
    }

    [Fact]
    public void SigintSavesACheckpointAndExitsCleanly()
    {
        if (OperatingSystem.IsWindows()) return; // no kill -INT
        using var dir = new TempDir();
        string data = ToyData.Write(dir.File("data"));
        string config = dir.WriteText("config.json", ToyData.Config().ToJson());
        string run = dir.File("run");
        var (process, lines) = StartCli("train", "--out", run, "--config", config, "--arch", "bigram", "--data", data, "--batch", "64",
            "--seq-len", "64", "--steps", "1000000", "--eval-every", "0", "--save-every", "0", "--print-every", "1");
        using (process)
        {
            WaitForLine(process, lines, "step 3/");
            using (var kill = Process.Start("kill", ["-INT", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])) kill.WaitForExit();
            Assert.True(process.WaitForExit(30_000), "the trainer did not stop after SIGINT");
            process.WaitForExit();
            lock (lines) output.WriteLine(string.Join('\n', lines.TakeLast(5)));
            Assert.Equal(130, process.ExitCode);
        }
        lock (lines) Assert.Contains(lines, l => l.StartsWith("interrupted at step ", StringComparison.Ordinal) && l.Contains("--resume", StringComparison.Ordinal));
        var state = Checkpoint.ReadState(Checkpoint.Find(Path.Combine(run, Trainer.CheckpointName))!);
        Assert.True(state.Step >= 3);
    }
}
