using System.Diagnostics;
using System.Text.Json.Serialization;
using Lckv.Formats;

namespace Lckv.Training;

/// <summary>Training hyperparameters; stored in trainer_state.json so a resume uses the same ones.</summary>
public sealed record TrainerOptions
{
    /// <summary>Rows per micro-batch.</summary>
    [JsonPropertyName("batch")] public int Batch { get; init; } = 8;
    /// <summary>Tokens per row (the model predicts seqLen - 1 of them).</summary>
    [JsonPropertyName("seq_len")] public int SeqLen { get; init; } = 256;
    /// <summary>Micro-batches per update (gradient accumulation, each scaled by 1/accum).</summary>
    [JsonPropertyName("accum")] public int Accum { get; init; } = 1;
    /// <summary>Total updates.</summary>
    [JsonPropertyName("steps")] public int Steps { get; init; } = 1000;
    [JsonPropertyName("lr")] public double Lr { get; init; } = 1e-3;
    [JsonPropertyName("min_lr")] public double MinLr { get; init; } = 1e-4;
    [JsonPropertyName("warmup")] public int Warmup { get; init; } = 100;
    [JsonPropertyName("weight_decay")] public float WeightDecay { get; init; } = 0.1f;
    [JsonPropertyName("beta1")] public float Beta1 { get; init; } = 0.9f;
    [JsonPropertyName("beta2")] public float Beta2 { get; init; } = 0.95f;
    [JsonPropertyName("eps")] public float Eps { get; init; } = 1e-8f;
    /// <summary>Global gradient-norm clip; 0 turns clipping off.</summary>
    [JsonPropertyName("clip")] public double Clip { get; init; } = 1.0;
    /// <summary>Seeds the weights (fresh runs) and the data sampler.</summary>
    [JsonPropertyName("seed")] public ulong Seed { get; init; } = 1;
    /// <summary>Updates between validation passes; 0: never (but at the end).</summary>
    [JsonPropertyName("eval_every")] public int EvalEvery { get; init; } = 100;
    /// <summary>Validation batches per pass; 0: the whole validation split.</summary>
    [JsonPropertyName("eval_batches")] public int EvalBatches { get; init; } = 20;
    /// <summary>Updates between checkpoints; 0: only at the end (and on interrupt).</summary>
    [JsonPropertyName("save_every")] public int SaveEvery { get; init; } = 500;

    [JsonIgnore] public CosineSchedule Schedule => new(Lr, MinLr, Warmup, Steps);
    [JsonIgnore] public AdamWOptions AdamW => new() { Beta1 = Beta1, Beta2 = Beta2, Eps = Eps, WeightDecay = WeightDecay };

    public void Validate()
    {
        if (Batch < 1) throw new LckvException($"batch size must be at least 1, not {Batch}") { Settings = [nameof(Batch)] };
        if (SeqLen < 2) throw new LckvException($"sequence length must be at least 2, not {SeqLen}") { Settings = [nameof(SeqLen)] };
        if (Accum < 1) throw new LckvException($"micro-batches per update must be at least 1, not {Accum}") { Settings = [nameof(Accum)] };
        if ((long)Batch * SeqLen > Array.MaxLength)
            throw new LckvException($"batch size {Batch} x sequence length {SeqLen} is too large") { Settings = [nameof(Batch), nameof(SeqLen)] };
        if (!(Clip >= 0) || !double.IsFinite(Clip))
            throw new LckvException($"gradient-norm clip must be 0 (off) or positive, not {Clip}") { Settings = [nameof(Clip)] };
        if (EvalEvery < 0) throw new LckvException($"updates between validations must be 0 or more, not {EvalEvery}") { Settings = [nameof(EvalEvery)] };
        if (EvalBatches < 0) throw new LckvException($"validation batches must be 0 (all) or more, not {EvalBatches}") { Settings = [nameof(EvalBatches)] };
        if (SaveEvery < 0) throw new LckvException($"updates between checkpoints must be 0 or more, not {SaveEvery}") { Settings = [nameof(SaveEvery)] };
        Schedule.Validate();
        AdamW.Validate();
    }
}

public enum TrainerOutcome
{
    /// <summary>All steps done (or there were none left).</summary>
    Completed,
    /// <summary>Stopped by cancellation after saving a checkpoint.</summary>
    Interrupted,
}

/// <summary>
/// The training loop: per update, zero the gradients, run <see cref="TrainerOptions.Accum"/> micro-batches from the
/// sampler (gradScale 1/accum), clip the global gradient norm, take an AdamW step at the schedule's learning rate;
/// validate and checkpoint periodically. Everything that influences the numbers (weights, moments, step, sampler
/// RNG) is in the checkpoint, so <see cref="Resume"/> continues bit-exactly. Cancellation is honoured between updates:
/// a checkpoint is saved and <see cref="Run"/> returns <see cref="TrainerOutcome.Interrupted"/>.
/// </summary>
public sealed class Trainer : IDisposable
{
    public const string CheckpointName = "checkpoint";
    public const string DefaultLogName = "log.jsonl";

    private readonly ModelConfig _config;
    private readonly TokenDataset _data;
    private readonly BatchSampler _sampler;
    private readonly CosineSchedule _schedule;
    private readonly int[] _tokens;
    private readonly List<StepRecord> _tail = [];
    private readonly List<EvalRecord> _evals = [];
    private readonly TrainingLog? _log;
    private readonly string? _initFrom;
    private long _tokensSeen, _savedStep = -1;
    private double _elapsedBefore;

    private Trainer(ITrainable model, ModelConfig config, string arch, TokenDataset data, TrainerOptions options, string outDir,
        string? logPath, string? initFrom)
    {
        options.Validate();
        if (data.Meta.VocabSize > config.VocabSize)
            throw new LckvException($"{data.Folder}: the data's vocabulary ({data.Meta.VocabSize}) is larger than the model's vocab_size {config.VocabSize}");
        if (arch == TrainerModels.Decoder && options.SeqLen > config.MaxPositionEmbeddings)
            throw new LckvException($"sequence length {options.SeqLen} exceeds the model's max_position_embeddings {config.MaxPositionEmbeddings}")
            {
                Settings = [nameof(TrainerOptions.SeqLen)],
            };
        Model = model;
        _config = config;
        Arch = arch;
        _data = data;
        Options = options;
        OutDir = Path.GetFullPath(outDir);
        _initFrom = initFrom;
        Optimizer = new AdamW(model.Parameters, options.AdamW);
        _schedule = options.Schedule;
        _sampler = new BatchSampler(data.Train, options.Batch, options.SeqLen, new TrainingRng(options.Seed).Next());
        _tokens = new int[options.Batch * options.SeqLen];
        Directory.CreateDirectory(OutDir);
        _log = logPath is null ? null : new TrainingLog(logPath);
    }

    public ITrainable Model { get; }
    public AdamW Optimizer { get; }
    public TrainerOptions Options { get; }
    public string Arch { get; }
    public string OutDir { get; }
    public string CheckpointPath => Path.Combine(OutDir, CheckpointName);

    /// <summary>Updates done.</summary>
    public long Step => Optimizer.StepCount;

    public IReadOnlyList<StepRecord> LossTail => _tail;
    public IReadOnlyList<EvalRecord> Evals => _evals;

    public Action<StepRecord>? StepDone { get; set; }
    public Action<EvalRecord>? EvalDone { get; set; }
    /// <summary>Called with the checkpoint folder and step after each save.</summary>
    public Action<string, long>? CheckpointSaved { get; set; }
    /// <summary>Test hook: called at each stage of a checkpoint write (see <see cref="Checkpoint.Save"/>).</summary>
    public Action<string>? CheckpointStage { get; set; }

    /// <summary>A fresh run into outDir (which must not hold a checkpoint), optionally initialised from a Hugging Face checkpoint.</summary>
    public static Trainer Start(TrainableFactory factory, ModelConfig config, string arch, TokenDataset data, TrainerOptions options,
        string outDir, string? logPath = null, string? initFrom = null)
    {
        ArgumentNullException.ThrowIfNull(factory);
        options.Validate();
        if (Checkpoint.Find(Path.Combine(outDir, CheckpointName)) is { } existing)
            throw new LckvException($"{outDir} already holds a checkpoint ({existing}); resume that run, or start this one in another folder") { Settings = [nameof(Resume)] };
        // a damaged checkpoint is still the user's: a fresh run does not write over it
        if (Checkpoint.Problem(Path.Combine(outDir, CheckpointName)) is { } damaged)
            throw new LckvException($"{outDir} already holds a checkpoint that cannot be resumed ({damaged}); move it away, or start this run in another folder");
        var model = factory(config, arch, options.Seed);
        if (initFrom is not null) Checkpoint.LoadParameters(model.Parameters, initFrom);
        var t = new Trainer(model, config, arch, data, options, outDir, logPath, initFrom);
        t._log?.Write("start", w =>
        {
            w.WriteString("arch", arch);
            w.WriteString("data", data.Folder);
            if (initFrom is not null) w.WriteString("init_from", initFrom);
            WriteOptions(w, options);
        });
        return t;
    }

    /// <summary>
    /// Continues the run in outDir from its checkpoint (or the previous one when the last write was interrupted).
    /// adjust, when given, changes the stored options (the CLI lets Steps, EvalEvery, EvalBatches and SaveEvery
    /// change; a new Steps also stretches the schedule).
    /// </summary>
    public static Trainer Resume(TrainableFactory factory, TokenDataset data, string outDir,
        Func<TrainerOptions, TrainerOptions>? adjust = null, string? logPath = null)
    {
        ArgumentNullException.ThrowIfNull(factory);
        string target = Path.Combine(outDir, CheckpointName);
        string folder = Checkpoint.Find(target)
            ?? throw new LckvException(Checkpoint.Problem(target) is { } problem
                ? $"{outDir}: the checkpoint cannot be resumed: {problem}"
                : $"{outDir}: no checkpoint to resume (expected {target} or {target}{CheckpointFolder.OldSuffix})");
        var state = Checkpoint.ReadState(folder);
        var config = ModelConfig.Load(folder);
        var options = adjust is null ? state.Options : adjust(state.Options);
        if (state.DataMetaSha256 is { } sha && sha != data.MetaSha256)
            throw new LckvException($"{data.Folder}: not the data the checkpoint was trained on ({state.Data}); a resume must read the same data");
        var model = factory(config, state.Arch, options.Seed);
        Checkpoint.LoadParameters(model.Parameters, folder);
        // a run killed after its last checkpoint logged steps the resume runs again: drop them, so each step is logged once
        int dropped = logPath is null ? 0 : TrainingLog.DropAfter(logPath, state.Step);
        var t = new Trainer(model, config, state.Arch, data, options, outDir, logPath, state.InitFrom);
        Checkpoint.LoadOptimizer(t.Optimizer, folder);
        if (t.Optimizer.StepCount != state.Step)
            throw new LckvException($"{folder}: optimizer step {t.Optimizer.StepCount} disagrees with trainer_state step {state.Step}");
        t._sampler.Restore(state.Sampler);
        t._tokensSeen = state.TokensSeen;
        t._elapsedBefore = state.ElapsedSeconds;
        t._tail.AddRange(state.LossTail);
        t._evals.AddRange(state.Evals);
        t._savedStep = state.Step;
        t._log?.Write("resume", w =>
        {
            w.WriteString("checkpoint", folder);
            w.WriteNumber("from_step", state.Step);
            w.WriteNumber("dropped_entries", dropped);
            WriteOptions(w, options);
        });
        return t;
    }

    /// <summary>Trains until Options.Steps updates are done or ct is cancelled (then saves and returns Interrupted).</summary>
    public TrainerOutcome Run(CancellationToken ct = default)
    {
        var clock = Stopwatch.StartNew();
        int b = Options.Batch, n = Options.SeqLen, accum = Options.Accum;
        float scale = 1f / accum;
        while (Step < Options.Steps)
        {
            if (ct.IsCancellationRequested)
            {
                Save(clock);
                _log?.Write("interrupted", w => w.WriteNumber("step", Step));
                return TrainerOutcome.Interrupted;
            }
            long start = Stopwatch.GetTimestamp();
            Optimizer.ZeroGrad();
            double loss = 0;
            for (int a = 0; a < accum; a++)
            {
                _sampler.Next(_tokens);
                loss += Model.LossAndGradients(_tokens, b, n, scale);
            }
            loss /= accum;
            long t = Step + 1;
            if (!double.IsFinite(loss))
                throw new LckvException($"the loss is {loss} at step {t}; lower the learning rate or lengthen the warmup (the last checkpoint is in {CheckpointPath})")
                {
                    Settings = [nameof(TrainerOptions.Lr), nameof(TrainerOptions.Warmup)],
                };
            double norm = Optimizer.ClipGradNorm(Options.Clip);
            if (!double.IsFinite(norm))
                throw new LckvException($"the gradient norm is {norm} at step {t}; lower the learning rate or lengthen the warmup (the last checkpoint is in {CheckpointPath})")
                {
                    Settings = [nameof(TrainerOptions.Lr), nameof(TrainerOptions.Warmup)],
                };
            double lr = _schedule.LearningRate(t);
            Optimizer.Step(lr);
            long stepTokens = (long)b * n * accum;
            _tokensSeen += stepTokens;
            double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            var record = new StepRecord(t, loss, lr, norm, _tokensSeen, seconds > 0 ? stepTokens / seconds : 0);
            _tail.Add(record);
            if (_tail.Count > Checkpoint.LossTailLength) _tail.RemoveAt(0);
            _log?.Write("step", w => WriteStep(w, record));
            StepDone?.Invoke(record);

            bool last = t == Options.Steps;
            if ((Options.EvalEvery > 0 && t % Options.EvalEvery == 0) || last) Evaluate();
            if ((Options.SaveEvery > 0 && t % Options.SaveEvery == 0) || last) Save(clock);
        }
        return TrainerOutcome.Completed;
    }

    /// <summary>Validation loss and perplexity over the first EvalBatches validation batches; null when the split has none.</summary>
    public EvalRecord? Evaluate()
    {
        int b = Options.Batch, n = Options.SeqLen;
        long available = ValidationWindows.BatchCount(_data.Validation, b, n);
        long count = Options.EvalBatches == 0 ? available : Math.Min(available, Options.EvalBatches);
        if (count == 0) return null;
        var tokens = new int[b * n];
        double sum = 0;
        for (long i = 0; i < count; i++)
        {
            ValidationWindows.Read(_data.Validation, b, n, i, tokens);
            sum += Model.Loss(tokens, b, n);
        }
        double loss = sum / count;
        var record = new EvalRecord(Step, loss, Math.Exp(loss), count * b * (n - 1));
        _evals.Add(record);
        if (_evals.Count > Checkpoint.LossTailLength) _evals.RemoveAt(0);
        _log?.Write("eval", w =>
        {
            w.WriteNumber("step", record.Step);
            w.WriteNumber("val_loss", record.Loss);
            w.WriteNumber("val_perplexity", record.Perplexity);
            w.WriteNumber("val_tokens", record.Tokens);
        });
        EvalDone?.Invoke(record);
        return record;
    }

    /// <summary>Saves a checkpoint of the current step (unless one was just saved).</summary>
    private void Save(Stopwatch clock)
    {
        if (_savedStep == Step) return;
        var state = new TrainerState
        {
            Step = Step,
            Arch = Arch,
            Options = Options,
            Sampler = _sampler.State,
            TokensSeen = _tokensSeen,
            Data = _data.Folder,
            DataMetaSha256 = _data.MetaSha256,
            InitFrom = _initFrom,
            ElapsedSeconds = _elapsedBefore + clock.Elapsed.TotalSeconds,
            LossTail = [.. _tail],
            Evals = [.. _evals],
        };
        Checkpoint.Save(CheckpointPath, _config, Optimizer, state, ExtraFiles(), CheckpointStage);
        _savedStep = Step;
        _log?.Write("checkpoint", w =>
        {
            w.WriteNumber("step", Step);
            w.WriteString("path", CheckpointPath);
        });
        CheckpointSaved?.Invoke(CheckpointPath, Step);
    }

    /// <summary>The dataset's tokenizer, copied into checkpoints so they can be used for generation directly.</summary>
    private List<(string, string)> ExtraFiles()
    {
        var files = new List<(string, string)>();
        if (_data.Meta.Tokenizer is { } tok && File.Exists(tok))
        {
            if (tok.EndsWith(".model", StringComparison.OrdinalIgnoreCase)) files.Add(("tokenizer.model", tok));
            else if (tok.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) files.Add(("tokenizer.json", tok));
        }
        return files;
    }

    private static void WriteStep(System.Text.Json.Utf8JsonWriter w, StepRecord r)
    {
        w.WriteNumber("step", r.Step);
        w.WriteNumber("loss", r.Loss);
        w.WriteNumber("lr", r.Lr);
        w.WriteNumber("grad_norm", r.GradNorm);
        w.WriteNumber("tokens", r.Tokens);
        w.WriteNumber("tokens_per_second", Math.Round(r.TokensPerSecond, 1));
    }

    private static void WriteOptions(System.Text.Json.Utf8JsonWriter w, TrainerOptions o)
    {
        w.WritePropertyName("options");
        System.Text.Json.JsonSerializer.Serialize(w, o);
    }

    public void Dispose()
    {
        _log?.Dispose();
    }
}

/// <summary>A JSON-lines log: one object per line with "event" and "time" (UTC), flushed after each line; appended to.</summary>
public sealed class TrainingLog : IDisposable
{
    private readonly FileStream _stream;
    private readonly System.Buffers.ArrayBufferWriter<byte> _buffer = new();

    public TrainingLog(string path)
    {
        try
        {
            string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
            if (dir is not null) Directory.CreateDirectory(dir);
            _stream = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.Read);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new LckvException($"{path}: cannot open the log: {e.Message}", e);
        }
    }

    public void Write(string kind, Action<System.Text.Json.Utf8JsonWriter> fields)
    {
        _buffer.ResetWrittenCount();
        using (var w = new System.Text.Json.Utf8JsonWriter(_buffer))
        {
            w.WriteStartObject();
            w.WriteString("event", kind);
            w.WriteString("time", DateTime.UtcNow.ToString("O", System.Globalization.CultureInfo.InvariantCulture));
            fields(w);
            w.WriteEndObject();
        }
        _stream.Write(_buffer.WrittenSpan);
        _stream.WriteByte((byte)'\n');
        _stream.Flush();
    }

    public void Dispose() => _stream.Dispose();

    /// <summary>
    /// Rewrites the log without the entries past a checkpoint's step (those a resume from it logs again) and without a
    /// last line torn by a kill; atomically (a new file moved over the old). Returns how many lines it dropped.
    /// </summary>
    public static int DropAfter(string path, long step)
    {
        if (!File.Exists(path)) return 0;
        try
        {
            var bytes = File.ReadAllBytes(path);
            var kept = new MemoryStream(bytes.Length);
            int dropped = 0, start = 0;
            while (start < bytes.Length)
            {
                int end = Array.IndexOf(bytes, (byte)'\n', start);
                bool torn = end < 0;
                var line = bytes.AsSpan(start, (torn ? bytes.Length : end) - start);
                start = torn ? bytes.Length : end + 1;
                if (line.IsEmpty) continue;
                if (After(line, step)) dropped++;
                else
                {
                    kept.Write(line);
                    kept.WriteByte((byte)'\n');
                }
            }
            if (dropped == 0 && (bytes.Length == 0 || bytes[^1] == (byte)'\n')) return 0;
            string temp = path + ".tmp";
            using (var f = new FileStream(temp, FileMode.Create, FileAccess.Write))
            {
                kept.WriteTo(f);
                f.Flush(flushToDisk: true);
            }
            File.Move(temp, path, overwrite: true);
            return dropped;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new LckvException($"{path}: cannot rewrite the log for the resume: {e.Message}", e);
        }
    }

    // a line with a "step" past the given one, or one that is not a JSON object (torn by a kill mid-line)
    private static bool After(ReadOnlySpan<byte> line, long step)
    {
        try
        {
            var reader = new System.Text.Json.Utf8JsonReader(line);
            using var doc = System.Text.Json.JsonDocument.ParseValue(ref reader);
            return doc.RootElement.ValueKind != System.Text.Json.JsonValueKind.Object
                || (doc.RootElement.TryGetProperty("step", out var s) && s.TryGetInt64(out long n) && n > step);
        }
        catch (System.Text.Json.JsonException)
        {
            return true;
        }
    }
}
