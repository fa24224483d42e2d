using Lckv.Formats;
using Lckv.Numerics;

namespace Lckv.Model;

/// <summary>
/// Encodes a row-major matrix of f32 values (rows x cols; a 1-D tensor is one row) into a tensor type's bytes;
/// destination has exactly the tensor's byte length.
/// </summary>
internal delegate void TensorEncoder(ReadOnlySpan<float> values, int rows, int cols, Span<byte> destination);

/// <summary>What <see cref="GgufExport.Write"/> writes.</summary>
public sealed record GgufExportOptions
{
    /// <summary>The type of the 2-D weight matrices (F32, F16, BF16, or Q8_0 / Q4_0 quantized as llama.cpp does); norm
    /// weights stay F32, as llama.cpp's converter keeps them.</summary>
    public DType Weights { get; init; } = DType.F32;
    /// <summary>A tensor's type when it should differ from the rule above (null keeps the rule).</summary>
    public Func<WeightSpec, DType?>? TypeOf { get; init; }
    /// <summary>general.name (default: the input folder's name).</summary>
    public string? Name { get; init; }
    /// <summary>Replace an existing output file.</summary>
    public bool Force { get; init; }
}

/// <summary>What an export wrote.</summary>
public sealed record GgufExportResult(ModelConfig Config, int TensorCount, long Bytes, string? Tokenizer, IReadOnlyDictionary<DType, int> TensorsByType);

/// <summary>
/// Writes a standard Llama checkpoint as a GGUF file that llama.cpp runs: the llama.* metadata of its config, its
/// tokenizer when it has one GGUF can express (a SentencePiece BPE tokenizer.model, as tokenizer.ggml.model "llama"),
/// the tensors under their GGUF names in the weight table's order, with each head's Q and K rows reordered as
/// llama.cpp's converter does (row 2i of a head takes row i, row 2i + 1 takes row i + D/2) so that adjacent-pair RoPE
/// computes what rotate_half computed. Layouts that share KV across layers are refused: llama.cpp cannot run them.
/// </summary>
public static class GgufExport
{
    public static GgufExportResult Write(string input, string output, GgufExportOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!Directory.Exists(input)) throw new LckvException($"input folder '{input}' does not exist");
        string configPath = Path.Combine(input, "config.json");
        if (!File.Exists(configPath)) throw new LckvException($"input '{input}' has no config.json");
        CheckOptions(output, options);
        var config = ModelConfig.Load(configPath);
        config = Standard(config, configPath);
        using var tensors = TensorSet.Open(input);
        _ = ModelWeights.FromTensors(config, LayerMap.Identity(config.NumHiddenLayers), tensors); // names, shapes, dtypes
        string name = options.Name ?? Path.GetFileName(Path.GetFullPath(input).TrimEnd(Path.DirectorySeparatorChar));
        return WriteTensors(config, name, Tokenizer(input, config), s => tensors.ReadSingles(s.Name), output, options);
    }

    /// <summary>
    /// Writes a loaded standard Llama model (a preset's random weights, say) as a GGUF file without a tokenizer
    /// ("no_vocab"): its weights as f32 values re-encoded as options.Weights.
    /// </summary>
    public static GgufExportResult Write(LlamaModel model, string output, GgufExportOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        CheckOptions(output, options);
        var config = Standard(model.Config, "the model");
        return WriteTensors(config, options.Name ?? "lckv", (null, NoVocab()), s =>
        {
            var m = model.Weights.Matrix(s);
            var values = new float[(long)m.Rows * m.Cols];
            for (int r = 0; r < m.Rows; r++) m.ReadRow(r, values.AsSpan(r * m.Cols, m.Cols));
            return values;
        }, output, options);
    }

    /// <summary>
    /// Writes the GGUF file at input under another layer_types map (KVSharer's result): its metadata as it is (the
    /// tokenizer included) plus <see cref="GgufLlama.LayerTypesKey"/>, its tensors byte for byte, less the attn_k/attn_v
    /// of the layers that compute no KV in the map; atomically, checked to load. Lckv runs the file; llama.cpp does not
    /// (it expects K/V tensors in every block).
    /// </summary>
    public static ConvertResult WithLayerTypes(string input, string output, string layerTypes, bool force)
    {
        if (!File.Exists(input) || !GgufFile.IsGguf(input)) throw new LckvException($"input '{input}' is not a GGUF file");
        CheckOptions(output, new GgufExportOptions { Force = force });
        string full = Path.GetFullPath(output);
        if (full == Path.GetFullPath(input)) throw new LckvException($"output '{output}' is the input file; choose another path");
        using var gguf = GgufFile.Open(input);
        var source = GgufLlama.Config(gguf);
        var sourceMap = LayerMap.Parse(source.LayerTypes, source.NumHiddenLayers);
        var map = LayerMap.Parse(layerTypes, source.NumHiddenLayers);
        var config = source with { ModelType = ModelConfig.LckvLlamaType, LayerTypes = map.ToString() };
        config.Validate(input);
        for (int layer = 0; layer < map.LayerCount; layer++)
            if (map.ComputesKv(layer) && !sourceMap.ComputesKv(layer))
                throw new LckvException($"layer_types '{config.LayerTypes}' has layer {layer} compute KV, but '{input}' has no attn_k/attn_v for it");
        var dropped = ModelWeights.Specs(source, sourceMap)
            .Where(s => s.Slot is WeightSlot.K or WeightSlot.V && !map.ComputesKv(s.Layer)).Select(s => s.GgufName).ToHashSet(StringComparer.Ordinal);

        var metadata = gguf.Keys.Where(k => k != GgufLlama.LayerTypesKey).Select(k => new KeyValuePair<string, GgufValue>(k, gguf.Metadata[k])).ToList();
        metadata.Add(new(GgufLlama.LayerTypesKey, GgufValue.String(config.LayerTypes!)));
        var tensors = new List<GgufTensorData>();
        foreach (var t in gguf.TensorList)
        {
            if (dropped.Contains(t.Name)) continue;
            if (!GgmlTypes.TryToDType(t.GgmlType, out var dtype)) throw new LckvException($"{input}: tensor '{t.Name}' is of {GgmlTypes.Describe(t.GgmlType)}, which Lckv does not read");
            tensors.Add(new GgufTensorData(t.Name, dtype, [.. t.Ne.Reverse()], dst => gguf.Bytes(t.Name).CopyTo(dst)));
        }

        // a temporary name beside the output, checked to load under the map, then renamed into place
        string temp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.tmp-{System.Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(6))}.gguf");
        try
        {
            GgufWriter.Write(temp, metadata, tensors);
            using (var written = LlamaModel.Load(temp))
                if (written.Map.ToString() != config.LayerTypes) throw new LckvException($"'{temp}' reads back as layer_types {written.Map}, not {config.LayerTypes}");
            long bytes = new FileInfo(temp).Length;
            File.Move(temp, full, overwrite: force);
            return new ConvertResult(config, map, tensors.Count, bytes, [.. gguf.TensorList.Select(t => t.Name).Where(dropped.Contains)], [], []);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    private static void CheckOptions(string output, GgufExportOptions options)
    {
        if (Directory.Exists(output)) throw new LckvException($"output '{output}' is a folder; give the path of the .gguf file to write");
        string? outDir = Path.GetDirectoryName(Path.GetFullPath(output));
        if (outDir is null || !Directory.Exists(outDir)) throw new LckvException($"output '{output}': its folder does not exist");
        if (File.Exists(output) && !options.Force)
            throw new LckvException($"output '{output}' already exists, and it is replaced only when forced") { Settings = [nameof(GgufExportOptions.Force)] };
        if (!DTypes.IsWeight(options.Weights))
            throw new LckvException($"GGUF weights are F32, F16, BF16, Q8_0 or Q4_0, not {DTypes.Name(options.Weights)}") { Settings = [nameof(GgufExportOptions.Weights)] };
    }

    /// <summary>The config as a plain llama config; layouts that share KV across layers are refused.</summary>
    private static ModelConfig Standard(ModelConfig config, string what)
    {
        var map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
        if (config.IsLckv && !IsStandard(config, map))
            throw new LckvException($"{what}: layer_types {map} shares KV across layers or uses a sliding window; GGUF (llama.cpp) holds standard Llama models only");
        return config with { ModelType = ModelConfig.LlamaType, LayerTypes = null };
    }

    private static GgufExportResult WriteTensors(ModelConfig config, string name, (string? Kind, List<KeyValuePair<string, GgufValue>> Keys) tokenizer,
                                                 Func<WeightSpec, float[]> read, string output, GgufExportOptions options)
    {
        var metadata = GgufLlama.Metadata(config, name);
        metadata.AddRange(tokenizer.Keys);
        // checkpoints in Hugging Face layout rotate halves; GGUF's rows are in adjacent-pair order
        bool permute = config.RopeStyle == RopeStyle.RotateHalf;

        var list = new List<GgufTensorData>();
        var byType = new Dictionary<DType, int>();
        foreach (var spec in ModelWeights.Specs(config, LayerMap.Identity(config.NumHiddenLayers)))
        {
            var dtype = options.TypeOf?.Invoke(spec) ?? (spec.Shape.Length == 1 ? DType.F32 : options.Weights);
            if (DTypes.IsBlockQuantized(dtype) && spec.Cols % DTypes.BlockElements(dtype) != 0)
                throw new LckvException($"tensor '{spec.GgufName}' has rows of {spec.Cols} values; {DTypes.Name(dtype)} needs a multiple of {DTypes.BlockElements(dtype)}") { Settings = [nameof(GgufExportOptions.Weights)] };
            TensorEncoder encode = BuiltIn(dtype);
            var s = spec;
            list.Add(new GgufTensorData(spec.GgufName, dtype, spec.Shape, dst =>
            {
                var values = read(s);
                if (permute && s.Slot == WeightSlot.Q) values = PermuteForAdjacentPairs(values, config.NumAttentionHeads, config.HeadDim, s.Cols);
                if (permute && s.Slot == WeightSlot.K) values = PermuteForAdjacentPairs(values, config.NumKeyValueHeads, config.HeadDim, s.Cols);
                encode(values, s.Rows, s.Cols, dst);
            }));
            byType[dtype] = byType.GetValueOrDefault(dtype) + 1;
        }
        metadata.Add(new("general.file_type", GgufValue.UInt32(FileType(options.Weights))));
        if (DTypes.IsBlockQuantized(options.Weights)) metadata.Add(new("general.quantization_version", GgufValue.UInt32(2)));

        // written under a temporary name beside the output, checked to load as a model, then renamed into place, so a
        // failure leaves nothing behind
        string full = Path.GetFullPath(output);
        string temp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.tmp-{System.Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(6))}.gguf");
        try
        {
            GgufWriter.Write(temp, metadata, list);
            using (LlamaModel.Load(temp)) { }
            long bytes = new FileInfo(temp).Length;
            File.Move(temp, full, overwrite: options.Force);
            return new GgufExportResult(config, list.Count, bytes, tokenizer.Kind, byType);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    /// <summary>F32, F16 and BF16 rounded to nearest even; Q8_0 and Q4_0 row by row with llama.cpp's reference quantizers.</summary>
    private static TensorEncoder BuiltIn(DType dtype) => DTypes.IsFloat(dtype)
        ? (v, _, _, dst) => GgufWriter.EncodeFloat(v, dtype, dst)
        : (v, rows, cols, dst) =>
        {
            long rowBytes = DTypes.RowBytes(dtype, cols);
            for (int r = 0; r < rows; r++)
                Quantize.Row(dtype, v.Slice(r * cols, cols), dst.Slice((int)(r * rowBytes), (int)rowBytes));
        };

    /// <summary>An lckv-llama config that is a plain Llama after all: every layer its own KV, no sliding window, the
    /// diagonal not masked.</summary>
    private static bool IsStandard(ModelConfig c, LayerMap map)
        => !c.ForceNoDiag && Enumerable.Range(0, map.LayerCount).All(i => map.Target(i) == i && !map.IsSliding(i));

    /// <summary>
    /// Reorders the rows of each head of a [heads * d, cols] projection from the rotate-half order of Hugging Face
    /// checkpoints to the adjacent-pair order of GGUF files: row 2i of a head takes row i, row 2i + 1 takes row
    /// i + d/2 (llama.cpp's convert_hf_to_gguf permute).
    /// </summary>
    public static float[] PermuteForAdjacentPairs(ReadOnlySpan<float> rows, int heads, int d, int cols)
    {
        if (rows.Length != (long)heads * d * cols) throw new ArgumentException("rows is not heads x d x cols", nameof(rows));
        var result = new float[rows.Length];
        int half = d / 2;
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
            {
                rows.Slice((h * d + i) * cols, cols).CopyTo(result.AsSpan((h * d + 2 * i) * cols, cols));
                rows.Slice((h * d + half + i) * cols, cols).CopyTo(result.AsSpan((h * d + 2 * i + 1) * cols, cols));
            }
        return result;
    }

    /// <summary>llama.cpp's general.file_type (LLAMA_FTYPE) for weights of that type.</summary>
    private static uint FileType(DType t) => t switch
    {
        DType.F32 => 0, DType.F16 => 1, DType.Q4_0 => 2, DType.Q8_0 => 7, DType.BF16 => 32,
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    private static List<KeyValuePair<string, GgufValue>> NoVocab() => [new(TokenizerKeys.Model, GgufValue.String("no_vocab"))];

    /// <summary>The tokenizer.ggml.* keys for the checkpoint's tokenizer.model, when it is a SentencePiece BPE model
    /// of the checkpoint's vocabulary size; none otherwise ("no_vocab").</summary>
    private static (string? Kind, List<KeyValuePair<string, GgufValue>> Keys) Tokenizer(string input, ModelConfig config)
    {
        var none = NoVocab();
        string path = Path.Combine(input, "tokenizer.model");
        if (!File.Exists(path)) return (null, none);
        var tokenizer = TextTokenizer.Load(path); // the same checks and special tokens a run of the folder gets
        SentencePieceModel sp;
        try { sp = SentencePieceModel.Read(File.ReadAllBytes(path)); }
        catch (FormatException e) { throw new LckvException($"{path}: not a SentencePiece model ({e.Message})", e); }
        // llama.cpp's SPM tokenizer: BPE merges by piece score, spaces as U+2581, no normalization
        if (sp.ModelType != SentencePieceModel.Bpe || sp.Pieces.Count != config.VocabSize || sp.TreatWhitespaceAsSuffix
            || !sp.EscapeWhitespaces || sp.NormalizerName is not ("" or "identity"))
            return (null, none);

        var keys = new List<KeyValuePair<string, GgufValue>>
        {
            new(TokenizerKeys.Model, GgufValue.String("llama")),
            new(TokenizerKeys.Tokens, GgufValue.Array(sp.Pieces.Select(p => p.Piece).ToArray())),
            new(TokenizerKeys.Scores, GgufValue.Array(sp.Pieces.Select(p => p.Score).ToArray())),
            new(TokenizerKeys.TokenType, GgufValue.Array(sp.Pieces.Select(p => p.Type).ToArray())),
            new(TokenizerKeys.AddSpacePrefix, GgufValue.Bool(sp.AddDummyPrefix)),
            new(TokenizerKeys.RemoveExtraWhitespaces, GgufValue.Bool(sp.RemoveExtraWhitespaces)),
            new(TokenizerKeys.AddBos, GgufValue.Bool(tokenizer.AddBosByDefault)),
            new(TokenizerKeys.AddEos, GgufValue.Bool(false)),
        };
        if (tokenizer.BosId is int bos) keys.Add(new(TokenizerKeys.Bos, GgufValue.UInt32((uint)bos)));
        if (tokenizer.EosIds.Count > 0) keys.Add(new(TokenizerKeys.Eos, GgufValue.UInt32((uint)tokenizer.EosIds[0])));
        if (tokenizer.UnkId is int unk) keys.Add(new(TokenizerKeys.Unk, GgufValue.UInt32((uint)unk)));
        if (sp.PadId >= 0) keys.Add(new(TokenizerKeys.Pad, GgufValue.UInt32((uint)sp.PadId)));
        return ("llama", keys);
    }
}
