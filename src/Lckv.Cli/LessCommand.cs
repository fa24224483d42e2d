using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using Lckv.Training;

namespace Lckv.Cli;

/// <summary>lckv less train: LESS maps for a model and an eviction budget (kv-compression.md §3).</summary>
public static class LessCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var cmd = new Command("less", "LESS: a learned low-rank state of what an eviction policy drops");
        cmd.Subcommands.Add(Train(stdout, stderr));
        return cmd;
    }

    private static Command Train(TextWriter stdout, TextWriter stderr)
    {
        var mo = new ModelOptions();
        var data = new Option<string?>("--data") { Description = "training text (tokenized with the model's tokenizer) cut into windows of --seq-len" };
        var ids = new Option<string?>("--ids-file") { Description = "training token ids (whitespace-separated) instead of --data" };
        var rank = new Option<int>("--rank") { Description = "R: features of phi and psi", DefaultValueFactory = _ => 8 };
        var hidden = new Option<int>("--hidden") { Description = "Rh: hidden width of the maps", DefaultValueFactory = _ => 512 };
        var seqLen = new Option<int?>("--seq-len") { Description = "tokens per training window (default 512, capped at the context length)" };
        var epochs = new Option<int>("--epochs") { Description = "passes over the training windows per store", DefaultValueFactory = _ => 10 };
        var lr = new Option<double>("--lr") { Description = "Adam learning rate, halved every 10 epochs", DefaultValueFactory = _ => 1e-3 };
        var batch = new Option<int>("--batch") { Description = "windows per update", DefaultValueFactory = _ => 4 };
        var valFraction = new Option<double>("--val-fraction") { Description = "the last windows held out for the validation loss", DefaultValueFactory = _ => 0.1 };
        var seed = new Option<int>("--seed") { Description = "seed of the initial maps and the window order", DefaultValueFactory = _ => 1 };
        var output = new Option<string>("--out", "-o") { Description = "maps file to write (less.safetensors), written after every store", Required = true };
        var resume = new Option<bool>("--resume") { Description = "continue a stopped run: the stores already in --out are kept" };
        var force = new Option<bool>("--force") { Description = "replace an existing --out" };
        var json = new Option<bool>("--json") { Description = "print the result as JSON" };
        var init = new Option<string?>("--init") { Description = "maps to start from (less.safetensors) instead of a fresh draw; --rank and --hidden default to theirs" };
        var cmd = new Command("train", "train LESS maps for a model and an eviction budget, each store on its own");
        mo.AddTo(cmd, ModelUses.WeightSeed | ModelUses.Tokenizer | ModelUses.Threads);
        var eo = EvictionOptions.AddTo(cmd, less: false);
        foreach (var o in new Option[] { data, ids, rank, hidden, seqLen, epochs, lr, batch, valFraction, seed, output, resume, force, json, init }) cmd.Options.Add(o);
        cmd.SetAction(p =>
        {
            string? textPath = p.GetValue(data), idsPath = p.GetValue(ids);
            if ((textPath is null) == (idsPath is null)) throw new LckvException("give exactly one of --data (text) or --ids-file");
            string outPath = Path.GetFullPath(p.GetValue(output)!);
            if (Directory.Exists(outPath)) outPath = Path.Combine(outPath, Model.LessMaps.FileName);
            bool resuming = p.GetValue(resume);
            if (File.Exists(outPath) && !resuming && !p.GetValue(force))
                throw new LckvException($"{outPath} exists; --resume continues it, --force replaces it");
            if (resuming && !File.Exists(outPath)) throw new LckvException($"--resume: {outPath} does not exist");
            if (!Directory.Exists(Path.GetDirectoryName(outPath))) throw new LckvException($"the folder of --out '{outPath}' does not exist");
            var eviction = eo.Parse(p);
            if (eviction.Kind == Cache.EvictionKind.None) throw new LckvException("LESS trains for an eviction policy: give --evict h2o (--heavy, --recent) or streaming (--sinks, --recent)");
            using var model = mo.LoadModel(p, stderr, eviction);
            int[] tokens;
            if (textPath is not null)
            {
                if (!File.Exists(textPath)) throw new LckvException($"--data '{textPath}' does not exist");
                var tokenizer = mo.LoadTokenizer(p, required: true, model, stderr)!;
                tokens = tokenizer.Encode(File.ReadAllText(textPath), false);
            }
            else tokens = PerplexityCommand.ReadIds(idsPath!);
            foreach (int id in tokens)
                if (id >= model.Vocab) throw new LckvException($"token id {id} is outside the vocabulary (size {model.Vocab})");
            Model.LessMaps? start = null;
            if (p.GetValue(init) is { } initPath)
            {
                if (resuming) throw new LckvException("--init starts a new run; --resume continues one");
                start = Model.LessMaps.Load(initPath, model.Config, model.Map);
            }
            bool explicitShape = p.GetResult(rank) is { Implicit: false } || p.GetResult(hidden) is { Implicit: false };
            var options = new LessTrainOptions
            {
                Initial = start,
                Policy = eviction, Rank = start is not null && !explicitShape ? start.Rank : p.GetValue(rank), Hidden = start is not null && !explicitShape ? start.Hidden : p.GetValue(hidden), SeqLen = p.GetValue(seqLen) ?? Math.Min(512, model.ContextLength),
                Epochs = p.GetValue(epochs), LearningRate = p.GetValue(lr), Batch = p.GetValue(batch), ValFraction = p.GetValue(valFraction), Seed = p.GetValue(seed),
            };
            using var cts = new CancellationTokenSource();
            var registrations = new List<PosixSignalRegistration>();
            foreach (var signal in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM })
            {
                try { registrations.Add(PosixSignalRegistration.Create(signal, ctx => { ctx.Cancel = !cts.IsCancellationRequested; cts.Cancel(); })); }
                catch (PlatformNotSupportedException) { }
            }
            IReadOnlyList<LessStoreResult> results;
            try
            {
                results = LessTrainer.Train(model, tokens, options, outPath, resuming,
                    e => stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"store {e.Store + 1}/{e.Stores} (layer {e.Owner}) epoch {e.Epoch}/{e.Epochs}: train loss {e.TrainLoss:G5}{(e.ValLoss is double v ? $", validation {v:G5}" : "")}, lr {e.LearningRate:G3}, {e.Seconds:F1} s")),
                    stderr.WriteLine, cts.Token);
            }
            catch (OperationCanceledException)
            {
                stderr.WriteLine($"stopped: the stores finished so far are in {outPath}; --resume continues");
                return 130;
            }
            finally
            {
                foreach (var r in registrations) r.Dispose();
            }
            if (p.GetValue(json))
            {
                stdout.WriteLine(JsonSerializer.Serialize(new
                {
                    maps = outPath,
                    stores = results.Select(r => new { layer = r.Owner, readers = r.Readers, loss_before = r.LossBefore, loss_after = r.LossAfter, on_validation = r.OnValidation, seconds = r.Seconds }),
                }));
                return 0;
            }
            stdout.WriteLine($"LESS maps: {outPath}");
            stdout.WriteLine("| store (layer) | readers | loss before | loss after | change |");
            stdout.WriteLine("|---:|---|---:|---:|---:|");
            foreach (var r in results)
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {r.Owner} | {string.Join(",", r.Readers)} | {r.LossBefore:G5} | {r.LossAfter:G5} | {Math.Round(r.LossBefore > 0 ? (r.LossAfter / r.LossBefore - 1) * 100 : 0, 1):+0.0;-0.0;0.0}% |"));
            stdout.WriteLine(results.Count > 0 && results[0].OnValidation ? "(losses on the held-out windows; before = plain eviction)" : "(losses on the training windows; before = plain eviction)");
            return 0;
        });
        return cmd;
    }
}
