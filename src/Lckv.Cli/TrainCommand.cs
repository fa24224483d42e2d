using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using Lckv.Formats;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Training;
using Spectre.Console;

namespace Lckv.Cli;

/// <summary>
/// lckv train: train a model (fresh from a preset or config, or continued from a checkpoint) on a prepared dataset,
/// with periodic validation and atomic checkpoints; --resume continues an interrupted run bit-exactly; Ctrl-C saves
/// a checkpoint and exits (code 130).
/// </summary>
public static class TrainCommand
{
    public const int InterruptedExitCode = 130;

    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var d = new TrainerOptions();
        var preset = new Option<string?>("--preset") { Description = "built-in shape: small | tinyllama-1.1b" };
        var layout = new Option<string?>("--layout", "--layer-types") { Description = "KV sharing layout of --preset / --config: llama | lckv-w2 | lckv-w<N> | cla2 | yoco | sandwich-middle | <layer_types>" };
        var config = new Option<string?>("--config") { Description = "Hugging Face config.json of the model to train from scratch" };
        var from = new Option<string?>("--from") { Description = "checkpoint folder to continue training from (weights only; e.g. the output of 'lckv convert')" };
        var arch = new Option<string?>("--arch") { Description = $"decoder (the model the config describes) | bigram (a baseline for testing the pipeline); default {TrainerModels.Decoder}" };
        var data = new Option<string>("--data") { Description = "dataset folder from 'lckv data prepare'", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "run folder: checkpoint/ and log.jsonl go here", Required = true };
        var resume = new Option<bool>("--resume") { Description = "continue the run in --out from its checkpoint (same options, same numbers as an uninterrupted run)" };
        var batch = new Option<int?>("--batch") { Description = $"rows per micro-batch (default {d.Batch})" };
        var seqLen = new Option<int?>("--seq-len") { Description = $"tokens per row (default {d.SeqLen})" };
        var accum = new Option<int?>("--accum") { Description = $"micro-batches per update (default {d.Accum})" };
        var steps = new Option<int?>("--steps") { Description = $"total updates (default {d.Steps}); with --resume, a new total" };
        var lr = new Option<double?>("--lr") { Description = $"peak learning rate (default {d.Lr})" };
        var minLr = new Option<double?>("--min-lr") { Description = "learning rate at the end of the cosine decay (default --lr / 10)" };
        var warmup = new Option<int?>("--warmup") { Description = $"linear warmup updates (default {d.Warmup})" };
        var weightDecay = new Option<float?>("--weight-decay") { Description = $"AdamW decoupled weight decay, not on norms (default {d.WeightDecay})" };
        var beta1 = new Option<float?>("--beta1") { Description = $"AdamW beta1 (default {d.Beta1})" };
        var beta2 = new Option<float?>("--beta2") { Description = $"AdamW beta2 (default {d.Beta2})" };
        var clip = new Option<double?>("--clip") { Description = $"global gradient-norm clip, 0 = off (default {d.Clip})" };
        var seed = new Option<ulong?>("--seed") { Description = $"seed of the initial weights and the data sampler (default {d.Seed})" };
        var evalEvery = new Option<int?>("--eval-every") { Description = $"updates between validation passes, 0 = only at the end (default {d.EvalEvery})" };
        var evalBatches = new Option<int?>("--eval-batches") { Description = $"validation batches per pass, 0 = all (default {d.EvalBatches})" };
        var saveEvery = new Option<int?>("--save-every") { Description = $"updates between checkpoints, 0 = only at the end (default {d.SaveEvery})" };
        var printEvery = new Option<int>("--print-every") { Description = "updates between printed lines when not on a terminal", DefaultValueFactory = _ => 10 };
        var log = new Option<string?>("--log") { Description = $"JSON-lines log file (default: {Trainer.DefaultLogName} in --out)" };
        var threads = new Option<int?>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var debugHang = new Option<string?>("--debug-hang-in-checkpoint")
        {
            Description = "N:STAGE, pause forever in the N-th checkpoint write after STAGE (a file name or 'swap'); for crash tests",
            Hidden = true,
        };

        var cmd = new Command("train", "train a model on a prepared dataset (AdamW, cosine schedule, checkpoints, bit-exact --resume)");
        foreach (var o in new Option[] { preset, layout, config, from, arch, data, output, resume, batch, seqLen, accum, steps, lr, minLr,
                     warmup, weightDecay, beta1, beta2, clip, seed, evalEvery, evalBatches, saveEvery, printEvery, log, threads, debugHang })
            cmd.Options.Add(o);

        cmd.SetAction(p =>
        {
            if (p.GetValue(threads) is int t) ModelOptions.SetThreads(t);
            int print = p.GetValue(printEvery);
            if (print < 1) throw new LckvException($"--print-every must be at least 1, got {print}");
            string outDir = p.GetValue(output)!;
            string logPath = p.GetValue(log) ?? Path.Combine(outDir, Trainer.DefaultLogName);
            var hang = ParseHang(p.GetValue(debugHang));
            using var dataset = TokenDataset.Open(p.GetValue(data)!);

            Trainer trainer;
            if (p.GetValue(resume))
            {
                // the options a run started with may be repeated as they were; a different value is an error
                string change = $"start a new run (--from {Path.Combine(outDir, Trainer.CheckpointName)}) to change it";
                foreach (var o in new Option[] { preset, layout, config, from })
                    if (p.GetResult(o) is not null)
                        throw new LckvException($"{o.Name} is fixed by the checkpoint being resumed; {change}");
                trainer = Trainer.Resume(TrainerModels.Create, dataset, outDir, o =>
                {
                    SameAs(p, batch, o.Batch, change);
                    SameAs(p, seqLen, o.SeqLen, change);
                    SameAs(p, accum, o.Accum, change);
                    SameAs(p, lr, o.Lr, change);
                    SameAs(p, minLr, o.MinLr, change);
                    SameAs(p, warmup, o.Warmup, change);
                    SameAs(p, weightDecay, o.WeightDecay, change);
                    SameAs(p, beta1, o.Beta1, change);
                    SameAs(p, beta2, o.Beta2, change);
                    SameAs(p, clip, o.Clip, change);
                    SameAs(p, seed, o.Seed, change);
                    return o with
                    {
                        Steps = p.GetValue(steps) ?? o.Steps,
                        EvalEvery = p.GetValue(evalEvery) ?? o.EvalEvery,
                        EvalBatches = p.GetValue(evalBatches) ?? o.EvalBatches,
                        SaveEvery = p.GetValue(saveEvery) ?? o.SaveEvery,
                    };
                }, logPath);
                if (p.GetValue(arch) is { } a && a != trainer.Arch)
                {
                    trainer.Dispose();
                    throw new LckvException($"--arch {a} differs from the checkpoint's {trainer.Arch}; {change}");
                }
                stdout.WriteLine($"resuming {trainer.CheckpointPath} at step {trainer.Step} of {trainer.Options.Steps}");
            }
            else
            {
                var (cfg, initFrom) = ResolveModel(p.GetValue(preset), p.GetValue(layout), p.GetValue(config), p.GetValue(from));
                double peak = p.GetValue(lr) ?? d.Lr;
                var options = new TrainerOptions
                {
                    Batch = p.GetValue(batch) ?? d.Batch,
                    SeqLen = p.GetValue(seqLen) ?? d.SeqLen,
                    Accum = p.GetValue(accum) ?? d.Accum,
                    Steps = p.GetValue(steps) ?? d.Steps,
                    Lr = peak,
                    MinLr = p.GetValue(minLr) ?? peak / 10,
                    Warmup = p.GetValue(warmup) ?? d.Warmup,
                    WeightDecay = p.GetValue(weightDecay) ?? d.WeightDecay,
                    Beta1 = p.GetValue(beta1) ?? d.Beta1,
                    Beta2 = p.GetValue(beta2) ?? d.Beta2,
                    Clip = p.GetValue(clip) ?? d.Clip,
                    Seed = p.GetValue(seed) ?? d.Seed,
                    EvalEvery = p.GetValue(evalEvery) ?? d.EvalEvery,
                    EvalBatches = p.GetValue(evalBatches) ?? d.EvalBatches,
                    SaveEvery = p.GetValue(saveEvery) ?? d.SaveEvery,
                };
                options.Validate();
                string a = p.GetValue(arch) ?? TrainerModels.Decoder;
                if (!TrainerModels.Archs.Contains(a)) throw new LckvException($"unknown --arch '{a}' (expected {string.Join(" or ", TrainerModels.Archs)})");
                trainer = Trainer.Start(TrainerModels.Create, cfg, a, dataset, options, outDir, logPath, initFrom);
                if (options.Warmup >= options.Steps)
                    stderr.WriteLine($"warning: --warmup {options.Warmup} is not below --steps {options.Steps}: the learning rate never reaches --lr {options.Lr.ToString(CultureInfo.InvariantCulture)} (give a shorter --warmup)");
                long count = trainer.Model.Parameters.Sum(x => (long)x.Value.Length);
                stdout.WriteLine($"training {a} ({cfg.ModelType}{(cfg.LayerTypes is null ? "" : ", layer_types " + cfg.LayerTypes)}, {count:N0} parameters) " +
                                 $"on {dataset.Meta.TrainTokens:N0} tokens; {options.Steps} steps of {options.Batch}x{options.SeqLen}x{options.Accum} tokens");
            }

            using (trainer)
            {
                if (hang is var (n, stage))
                {
                    int saves = 0;
                    trainer.CheckpointSaved += (_, _) => saves++;
                    trainer.CheckpointStage = s =>
                    {
                        if (s != stage || saves != n - 1) return;
                        stderr.WriteLine($"debug: paused in checkpoint write {n} after {stage}");
                        stderr.Flush();
                        Thread.Sleep(Timeout.Infinite);
                    };
                }
                var outcome = RunWithSignals(trainer, stdout, print);
                if (outcome == TrainerOutcome.Interrupted)
                {
                    stderr.WriteLine($"interrupted at step {trainer.Step}: checkpoint saved to {trainer.CheckpointPath} (continue with --resume)");
                    return InterruptedExitCode;
                }
                var last = trainer.LossTail.Count > 0 ? trainer.LossTail[^1] : null;
                var eval = trainer.Evals.Count > 0 ? trainer.Evals[^1] : null;
                stdout.WriteLine($"done: step {trainer.Step}" + (last is null ? "" : $", loss {last.Loss:F4}")
                                 + (eval is null ? "" : $", validation perplexity {eval.Perplexity:F3}") + $"; checkpoint {trainer.CheckpointPath}");
                return 0;
            }
        });
        return cmd;
    }

    /// <summary>LckvException naming both values when option o was given with a value other than the checkpoint's.</summary>
    private static void SameAs<T>(ParseResult p, Option<T?> o, T stored, string change) where T : struct, IEquatable<T>
    {
        if (p.GetValue(o) is not T given || given.Equals(stored)) return;
        throw new LckvException(string.Create(CultureInfo.InvariantCulture,
            $"{o.Name} {given} differs from the checkpoint's {stored}; a resumed run keeps the options it started with ({change})"));
    }

    private static (int N, string Stage)? ParseHang(string? value)
    {
        if (value is null) return null;
        int colon = value.IndexOf(':', StringComparison.Ordinal);
        if (colon <= 0 || !int.TryParse(value.AsSpan(0, colon), NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 1)
            throw new LckvException($"--debug-hang-in-checkpoint must be N:STAGE (e.g. 2:model.safetensors), not '{value}'");
        return (n, value[(colon + 1)..]);
    }

    private static (ModelConfig Config, string? InitFrom) ResolveModel(string? preset, string? layout, string? config, string? from)
    {
        int given = (preset is null ? 0 : 1) + (config is null ? 0 : 1) + (from is null ? 0 : 1);
        if (given != 1) throw new LckvException("give exactly one of --preset, --config or --from (or --resume)");
        ModelConfig cfg;
        if (from is not null)
        {
            if (layout is not null) throw new LckvException("--layout applies to --preset / --config; convert a checkpoint's layout with 'lckv convert' first");
            if (!Directory.Exists(from)) throw new LckvException($"{from}: checkpoint folder not found");
            cfg = ModelConfig.Load(from);
        }
        else
        {
            cfg = preset is not null ? Presets.Config(preset) : ModelConfig.Load(config!);
            if (layout is not null) cfg = Layouts.ApplyLayout(cfg, layout);
        }
        // checkpoints hold f32 parameters
        return (cfg with { TorchDtype = "float32" }, from);
    }

    /// <summary>Runs the trainer with SIGINT/SIGTERM turned into a checkpoint-and-stop (a second signal kills).</summary>
    private static TrainerOutcome RunWithSignals(Trainer trainer, TextWriter stdout, int printEvery)
    {
        using var cts = new CancellationTokenSource();
        var registrations = new List<PosixSignalRegistration>();
        foreach (var signal in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM })
        {
            try
            {
                registrations.Add(PosixSignalRegistration.Create(signal, ctx =>
                {
                    ctx.Cancel = !cts.IsCancellationRequested;
                    cts.Cancel();
                }));
            }
            catch (PlatformNotSupportedException) { }
        }
        try
        {
            bool terminal = !Console.IsOutputRedirected && ReferenceEquals(stdout, Console.Out);
            return terminal ? RunWithBar(trainer, cts.Token) : RunPlain(trainer, stdout, printEvery, cts.Token);
        }
        finally
        {
            foreach (var r in registrations) r.Dispose();
        }
    }

    private static string StepLine(StepRecord r, int total)
        => $"step {r.Step}/{total} loss {r.Loss:F4} lr {r.Lr:0.00e+00} norm {r.GradNorm:F3} {r.TokensPerSecond / 1000:F1}k tok/s";

    private static string EvalLine(EvalRecord e) => $"eval step {e.Step}: validation loss {e.Loss:F4}, perplexity {e.Perplexity:F3} ({e.Tokens} tokens)";

    private static TrainerOutcome RunPlain(Trainer trainer, TextWriter stdout, int printEvery, CancellationToken ct)
    {
        int total = trainer.Options.Steps;
        trainer.StepDone = r =>
        {
            if (r.Step % printEvery == 0 || r.Step == total || r.Step == 1) stdout.WriteLine(StepLine(r, total));
        };
        trainer.EvalDone = e => stdout.WriteLine(EvalLine(e));
        trainer.CheckpointSaved += (path, step) => stdout.WriteLine($"saved checkpoint at step {step}: {path}");
        return trainer.Run(ct);
    }

    private static TrainerOutcome RunWithBar(Trainer trainer, CancellationToken ct)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Out) });
        var outcome = TrainerOutcome.Completed;
        int total = trainer.Options.Steps;
        console.Progress().AutoClear(false).Columns(
            new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn()).Start(ctx =>
        {
            var task = ctx.AddTask("training", maxValue: total);
            task.Value = trainer.Step;
            trainer.StepDone = r =>
            {
                task.Value = r.Step;
                task.Description = Markup.Escape(StepLine(r, total));
            };
            trainer.EvalDone = e => console.WriteLine(EvalLine(e));
            trainer.CheckpointSaved += (path, step) => console.WriteLine($"saved checkpoint at step {step}: {path}");
            outcome = trainer.Run(ct);
        });
        return outcome;
    }
}
