using System.Buffers;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Serialization;
using Lckv.Formats;
using Lckv.Numerics;

namespace Lckv.Training;

/// <summary>One training step as logged and kept in the trainer state's loss tail.</summary>
public sealed record StepRecord(
    [property: JsonPropertyName("step")] long Step,
    [property: JsonPropertyName("loss")] double Loss,
    [property: JsonPropertyName("lr")] double Lr,
    [property: JsonPropertyName("grad_norm")] double GradNorm,
    [property: JsonPropertyName("tokens")] long Tokens,
    [property: JsonPropertyName("tokens_per_second")] double TokensPerSecond);

/// <summary>One validation pass.</summary>
public sealed record EvalRecord(
    [property: JsonPropertyName("step")] long Step,
    [property: JsonPropertyName("val_loss")] double Loss,
    [property: JsonPropertyName("val_perplexity")] double Perplexity,
    [property: JsonPropertyName("val_tokens")] long Tokens);

/// <summary>trainer_state.json: everything besides the weights and moments that a bit-exact resume needs, and a record.</summary>
public sealed record TrainerState
{
    public const string CurrentFormat = "lckv-trainer-v1";

    [JsonPropertyName("format")] public string Format { get; init; } = CurrentFormat;
    /// <summary>Updates done (the optimizer's step count).</summary>
    [JsonPropertyName("step")] public long Step { get; init; }
    [JsonPropertyName("arch")] public string Arch { get; init; } = TrainerModels.Decoder;
    [JsonPropertyName("options")] public TrainerOptions Options { get; init; } = new();
    /// <summary>The data loader's position: its RNG state and batches drawn.</summary>
    [JsonPropertyName("sampler")] public SamplerState Sampler { get; init; } = new(0, 0);
    [JsonPropertyName("tokens_seen")] public long TokensSeen { get; init; }
    [JsonPropertyName("data")] public string? Data { get; init; }
    [JsonPropertyName("data_meta_sha256")] public string? DataMetaSha256 { get; init; }
    /// <summary>The checkpoint training started from (its weights only), if any.</summary>
    [JsonPropertyName("init_from")] public string? InitFrom { get; init; }
    [JsonPropertyName("elapsed_seconds")] public double ElapsedSeconds { get; init; }
    /// <summary>The last steps (at most <see cref="Checkpoint.LossTailLength"/>).</summary>
    [JsonPropertyName("loss_tail")] public IReadOnlyList<StepRecord> LossTail { get; init; } = [];
    [JsonPropertyName("evals")] public IReadOnlyList<EvalRecord> Evals { get; init; } = [];
}

/// <summary>
/// A training checkpoint folder: Hugging Face <c>config.json</c> and <c>model.safetensors</c> (every parameter in
/// f32, under its Hugging Face name), <c>optimizer.safetensors</c> (AdamW moments as <c>NAME.exp_avg</c> and
/// <c>NAME.exp_avg_sq</c>, the step in the metadata) and <c>trainer_state.json</c>, plus any extra files (the
/// tokenizer). Written atomically through <see cref="CheckpointFolder"/>; readers use <see cref="Find"/>, which falls
/// back to the previous checkpoint (<c>NAME.old</c>) when a write was interrupted.
/// </summary>
public static class Checkpoint
{
    public const string ConfigFile = "config.json";
    public const string ModelFile = "model.safetensors";
    public const string OptimizerFile = "optimizer.safetensors";
    public const string StateFile = "trainer_state.json";
    public const int LossTailLength = 100;

    private static readonly JsonSerializerOptions _jsonOptions = new() { WriteIndented = true };

    /// <summary>Writes the checkpoint folder, replacing the previous one atomically.</summary>
    /// <param name="extraFiles">Files copied into the folder (name in the folder, source path).</param>
    /// <param name="onStage">Test hook: called with each file name once it is written, and "swap" (see CheckpointFolder).</param>
    public static void Save(string folder, ModelConfig config, AdamW optimizer, TrainerState state,
        IReadOnlyList<(string Name, string Source)>? extraFiles = null, Action<string>? onStage = null)
    {
        CheckpointFolder.Write(folder, tmp =>
        {
            CheckpointFolder.WriteDurable(Path.Combine(tmp, ConfigFile), System.Text.Encoding.UTF8.GetBytes(config.ToJson()));
            onStage?.Invoke(ConfigFile);
            foreach (var (name, source) in extraFiles ?? [])
            {
                CheckpointFolder.WriteDurable(Path.Combine(tmp, name), File.ReadAllBytes(source));
                onStage?.Invoke(name);
            }

            var parameters = optimizer.Parameters;
            SafeTensorsWriter.Write(Path.Combine(tmp, ModelFile),
                parameters.Select(p => Tensor(p.Name, p.Shape, p.Value)), new Dictionary<string, string> { ["format"] = "pt" });
            onStage?.Invoke(ModelFile);

            var moments = new List<TensorData>(2 * parameters.Count);
            for (int i = 0; i < parameters.Count; i++)
            {
                var (m, v) = optimizer.Moments(i);
                moments.Add(Tensor(parameters[i].Name + ".exp_avg", parameters[i].Shape, m));
                moments.Add(Tensor(parameters[i].Name + ".exp_avg_sq", parameters[i].Shape, v));
            }
            SafeTensorsWriter.Write(Path.Combine(tmp, OptimizerFile), moments, new Dictionary<string, string>
            {
                ["step"] = optimizer.StepCount.ToString(CultureInfo.InvariantCulture),
                ["optimizer"] = "adamw",
            });
            onStage?.Invoke(OptimizerFile);

            // last: its presence marks the folder complete
            CheckpointFolder.WriteDurable(Path.Combine(tmp, StateFile), JsonSerializer.SerializeToUtf8Bytes(state, _jsonOptions));
            onStage?.Invoke(StateFile);
        }, onStage);
    }

    /// <summary>The folder to load: folder itself, or folder.old when folder is missing or incomplete; null if neither.</summary>
    public static string? Find(string folder) => CheckpointFolder.Resolve(folder, IsComplete);

    /// <summary>Why folder (and folder.old) hold no loadable checkpoint: the first missing file or trainer_state.json's
    /// error, for the folder that exists; null when neither exists.</summary>
    public static string? Problem(string folder)
    {
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder));
        foreach (var f in new[] { full, full + CheckpointFolder.OldSuffix })
        {
            if (!Directory.Exists(f)) continue;
            foreach (var file in new[] { ConfigFile, ModelFile, OptimizerFile, StateFile })
                if (!File.Exists(Path.Combine(f, file))) return $"{f} has no {file}";
            try { ReadState(f); }
            catch (LckvException e) { return e.Message; }
        }
        return null;
    }

    /// <summary>True when the four checkpoint files exist and trainer_state.json parses.</summary>
    public static bool IsComplete(string folder)
    {
        foreach (var f in new[] { ConfigFile, ModelFile, OptimizerFile, StateFile })
            if (!File.Exists(Path.Combine(folder, f))) return false;
        try
        {
            ReadState(folder);
            return true;
        }
        catch (LckvException)
        {
            return false;
        }
    }

    public static TrainerState ReadState(string folder)
    {
        string path = Path.Combine(folder, StateFile);
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new LckvException($"{path}: cannot read: {e.Message}", e);
        }
        TrainerState? state;
        try { state = JsonSerializer.Deserialize<TrainerState>(bytes); }
        catch (JsonException e)
        {
            throw new LckvException($"{path}: malformed JSON: {SafeTensorsFile.JsonMessage(e)}", e);
        }
        if (state is null || state.Format != TrainerState.CurrentFormat)
            throw new LckvException($"{path}: not a trainer state (format '{state?.Format}', expected {TrainerState.CurrentFormat})");
        return state;
    }

    /// <summary>
    /// Copies each parameter's value from a Hugging Face checkpoint folder (model.safetensors or a sharded index),
    /// widening F16/BF16 to f32. Every parameter must be present with its shape; tensors the model does not have are
    /// ignored and counted in the result.
    /// </summary>
    public static int LoadParameters(IReadOnlyList<Parameter> parameters, string folder)
    {
        using var set = TensorSet.Open(folder);
        var wanted = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in parameters)
        {
            wanted.Add(p.Name);
            if (!set.Contains(p.Name)) throw new LckvException($"{set.Source}: no tensor '{p.Name}' (the model has this parameter)");
            var info = set.Info(p.Name);
            if (!info.Shape.SequenceEqual(p.Shape))
                throw new LckvException($"{set.Source}: tensor '{p.Name}' has shape {info.ShapeText}, the model expects {SafeTensorsFile.FormatShape(p.Shape)}");
            if (!DTypes.IsFloat(info.DType))
                throw new LckvException($"{set.Source}: tensor '{p.Name}' has dtype {DTypes.Name(info.DType)}; weights must be F32, F16 or BF16");
            if (info.DType == Numerics.DType.F32) MemoryMarshal.Cast<byte, float>(set.Bytes(p.Name)).CopyTo(p.Value);
            else set.ReadSingles(p.Name).CopyTo(p.Value, 0);
        }
        return set.Names.Count(n => !wanted.Contains(n));
    }

    /// <summary>Restores the AdamW moments and step count from folder's optimizer.safetensors.</summary>
    public static void LoadOptimizer(AdamW optimizer, string folder)
    {
        string path = Path.Combine(folder, OptimizerFile);
        using var file = SafeTensorsFile.Open(path);
        var parameters = optimizer.Parameters;
        for (int i = 0; i < parameters.Count; i++)
        {
            var (m, v) = optimizer.Moments(i);
            ReadExact(file, parameters[i].Name + ".exp_avg", parameters[i].Shape, m);
            ReadExact(file, parameters[i].Name + ".exp_avg_sq", parameters[i].Shape, v);
        }
        if (file.Tensors.Count != 2 * parameters.Count)
            throw new LckvException($"{path}: {file.Tensors.Count} tensors, expected {2 * parameters.Count} (two per parameter); a different model?");
        if (!file.Metadata.TryGetValue("step", out var s) || !long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out long step))
            throw new LckvException($"{path}: no 'step' in the metadata");
        optimizer.StepCount = step;
    }

    private static void ReadExact(SafeTensorsFile file, string name, long[] shape, float[] destination)
    {
        var info = file.Info(name);
        if (info.DType != Numerics.DType.F32 || !info.Shape.SequenceEqual(shape))
            throw new LckvException($"{file.Path}: tensor '{name}' is {DTypes.Name(info.DType)} {info.ShapeText}, expected F32 {SafeTensorsFile.FormatShape(shape)}");
        MemoryMarshal.Cast<byte, float>(file.Bytes(name)).CopyTo(destination);
    }

    /// <summary>An f32 tensor over the array's memory (no copy).</summary>
    private static TensorData Tensor(string name, long[] shape, float[] values)
        => new(name, Numerics.DType.F32, shape, new FloatBytes(values).Memory);

    /// <summary>A float array seen as bytes, so large tensors are written without a copy.</summary>
    private sealed class FloatBytes(float[] array) : MemoryManager<byte>
    {
        private GCHandle _pin;

        public override Span<byte> GetSpan() => MemoryMarshal.AsBytes(array.AsSpan());

        public override unsafe MemoryHandle Pin(int elementIndex = 0)
        {
            if (!_pin.IsAllocated) _pin = GCHandle.Alloc(array, GCHandleType.Pinned);
            return new MemoryHandle((byte*)_pin.AddrOfPinnedObject() + elementIndex);
        }

        public override void Unpin()
        {
            if (_pin.IsAllocated) _pin.Free();
        }

        protected override void Dispose(bool disposing) => Unpin();
    }
}
