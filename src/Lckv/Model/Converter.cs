using System.Buffers;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Lckv.Formats;
using Lckv.Numerics;

namespace Lckv.Model;

/// <summary>What <see cref="Converter.Convert"/> turns a standard Llama checkpoint into.</summary>
public sealed record ConvertOptions
{
    /// <summary>A layout name or an explicit layer_types string (see <see cref="Layouts"/>).</summary>
    public required string Layout { get; init; }
    public int? ForwardPasses { get; init; }
    public int? BackwardPasses { get; init; }
    public int? SlidingWindow { get; init; }
    public bool? ForceNoDiag { get; init; }
    /// <summary>Replace an existing output folder.</summary>
    public bool Force { get; init; }
}

/// <summary>What a conversion wrote: the new config and map, the tensors kept, dropped and averaged.</summary>
public sealed record ConvertResult(
    ModelConfig Config, LayerMap Map, int TensorCount, long Bytes,
    IReadOnlyList<string> Dropped, IReadOnlyList<string> Averaged, IReadOnlyList<string> CopiedFiles);

/// <summary>
/// Converts a pretrained Llama checkpoint into an lckv-llama one (kv-sharing.md §7): every tensor is kept in its
/// dtype, except that layers computing no KV lose k_proj/v_proj, and each KV-computing layer's k_proj/v_proj become
/// the mean (in f64) of the pretrained projections of all layers that read its KV. The output is written into a
/// temporary folder beside it and renamed into place, so a failure leaves nothing behind.
/// </summary>
public static class Converter
{
    /// <summary>Files copied unchanged when the input has them.</summary>
    public static IReadOnlyList<string> SideFiles { get; } =
    [
        "generation_config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "added_tokens.json",
    ];

    public static ConvertResult Convert(string input, string output, ConvertOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var (configPath, outFull) = CheckPaths(input, output, options.Force);
        var source = ModelConfig.Load(configPath);
        if (source.ModelType != ModelConfig.LlamaType)
            throw new LckvException($"{configPath}: model_type is '{source.ModelType}'; convert needs a standard Llama checkpoint (model_type llama)");
        var config = Layouts.ApplyLayout(source, options.Layout, options.SlidingWindow);
        config = config with
        {
            ForwardPasses = options.ForwardPasses ?? config.ForwardPasses,
            BackwardPasses = options.BackwardPasses ?? config.BackwardPasses,
            ForceNoDiag = options.ForceNoDiag ?? config.ForceNoDiag,
        };
        config.Validate();
        var map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
        return Write(input, output, outFull, configPath, source, config, map, options.Force, average: true);
    }

    /// <summary>
    /// Writes the checkpoint folder at input (llama or lckv-llama) as an lckv-llama one with another layer_types map
    /// whose KV-computing layers all compute KV in the input: every tensor is kept as it is (no averaging; each reader
    /// reads its target's own K/V), except the k_proj/v_proj of layers that compute no KV in the new map, which are
    /// dropped. Written atomically as <see cref="Convert"/> is.
    /// </summary>
    public static ConvertResult WithLayerTypes(string input, string output, string layerTypes, bool force)
    {
        var (configPath, outFull) = CheckPaths(input, output, force);
        var source = ModelConfig.Load(configPath);
        var sourceMap = LayerMap.Parse(source.LayerTypes, source.NumHiddenLayers);
        var config = source with { ModelType = ModelConfig.LckvLlamaType, LayerTypes = LayerMap.Parse(layerTypes, source.NumHiddenLayers).ToString() };
        config.Validate();
        var map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
        for (int layer = 0; layer < map.LayerCount; layer++)
            if (map.ComputesKv(layer) && !sourceMap.ComputesKv(layer))
                throw new LckvException($"layer_types '{config.LayerTypes}' has layer {layer} compute KV, but '{input}' has no k_proj/v_proj for it");
        return Write(input, output, outFull, configPath, source, config, map, force, average: false);
    }

    // the input folder's config.json and the output's full path; the output must not be the input or inside it, and
    // exists only when forced
    private static (string ConfigPath, string OutFull) CheckPaths(string input, string output, bool force)
    {
        if (!Directory.Exists(input)) throw new LckvException($"input folder '{input}' does not exist");
        string configPath = Path.Combine(input, "config.json");
        if (!File.Exists(configPath)) throw new LckvException($"input '{input}' has no config.json");
        string inFull = Path.GetFullPath(input).TrimEnd(Path.DirectorySeparatorChar);
        string outFull = Path.GetFullPath(output).TrimEnd(Path.DirectorySeparatorChar);
        if (inFull == outFull || outFull.StartsWith(inFull + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new LckvException($"output '{output}' is the input folder or inside it; choose another folder");
        if (Exists(outFull) && !force)
            throw new LckvException($"output '{output}' already exists, and it is replaced only when forced") { Settings = [nameof(ConvertOptions.Force)] };
        return (configPath, outFull);
    }

    // the tensors (K/V dropped or, with average, averaged over their readers), config and side files into a temporary
    // folder beside the output, checked to load, then renamed into place
    private static ConvertResult Write(string input, string output, string outFull, string configPath, ModelConfig source,
        ModelConfig config, LayerMap map, bool force, bool average)
    {
        string parent = Path.GetDirectoryName(outFull) ?? throw new LckvException($"output '{output}' has no parent folder");
        Directory.CreateDirectory(parent);
        string temp = Path.Combine(parent, $".{Path.GetFileName(outFull)}.tmp-{Hex()}");
        Directory.CreateDirectory(temp);
        try
        {
            ConvertResult result;
            using (var tensors = TensorSet.Open(input))
            {
                // the input must be a complete, well-shaped Llama checkpoint; FromTensors checks names, shapes, dtypes
                _ = ModelWeights.FromTensors(source, LayerMap.Parse(source.LayerTypes, source.NumHiddenLayers), tensors);
                var (list, dropped, averaged, managers) = BuildTensors(config, map, tensors, average);
                try
                {
                    SafeTensorsWriter.Write(Path.Combine(temp, TensorSet.SingleFileName), list,
                        new Dictionary<string, string> { ["format"] = "pt" });
                }
                finally
                {
                    foreach (var m in managers) ((IDisposable)m).Dispose();
                }
                WriteConfig(Path.Combine(temp, "config.json"), configPath, config);
                var copied = new List<string>();
                foreach (var f in SideFiles)
                {
                    string src = Path.Combine(input, f);
                    if (!File.Exists(src)) continue;
                    File.Copy(src, Path.Combine(temp, f));
                    copied.Add(f);
                }
                result = new ConvertResult(config, map, list.Count, list.Sum(t => (long)t.Bytes.Length), dropped, averaged, copied);
            }
            // what was written must load as the converted model
            using (LlamaModel.Load(temp)) { }
            Replace(temp, outFull, force, output);
            return result;
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    /// <summary>The output tensors: copies of the input's (views of its mapped memory) and the averaged K/V.</summary>
    private static (List<TensorData> List, List<string> Dropped, List<string> Averaged, List<MemoryManager<byte>> Managers)
        BuildTensors(ModelConfig config, LayerMap map, TensorSet tensors, bool average)
    {
        var list = new List<TensorData>();
        var dropped = new List<string>();
        var averaged = new List<string>();
        var managers = new List<MemoryManager<byte>>();
        int layers = config.NumHiddenLayers;
        var readers = new List<int>[layers];
        for (int j = 0; j < layers; j++) readers[j] = [];
        for (int i = 0; i < layers; i++) readers[map.Target(i)].Add(i);

        foreach (var name in tensors.Names.OrderBy(n => n, StringComparer.Ordinal))
        {
            var info = tensors.Info(name);
            if (KvProjection(name, out int layer, out string proj))
            {
                if (!map.ComputesKv(layer))
                {
                    dropped.Add(name);
                    continue;
                }
                var sameAsSelf = readers[layer].Count == 1 && readers[layer][0] == layer;
                if (average && !sameAsSelf)
                {
                    var names = readers[layer].Select(r => $"model.layers.{r}.self_attn.{proj}.weight").ToList();
                    list.Add(new TensorData(name, info.DType, info.Shape, Mean(tensors, names, info.DType)));
                    averaged.Add(name);
                    continue;
                }
            }
            if (info.Length > int.MaxValue)
                throw new LckvException($"tensor '{name}' is {info.Length} bytes; tensors over 2 GiB are not supported by convert");
            var view = new PointerMemory(tensors.Pointer(name), (int)info.Length);
            managers.Add(view);
            list.Add(new TensorData(name, info.DType, info.Shape, view.Memory));
        }
        return (list, dropped, averaged, managers);
    }

    /// <summary>"model.layers.{i}.self_attn.{k,v}_proj.weight" → layer i and "k_proj"/"v_proj".</summary>
    private static bool KvProjection(string name, out int layer, out string proj)
    {
        layer = -1;
        proj = "";
        const string prefix = "model.layers.";
        if (!name.StartsWith(prefix, StringComparison.Ordinal)) return false;
        int dot = name.IndexOf('.', prefix.Length);
        if (dot < 0 || !int.TryParse(name.AsSpan(prefix.Length, dot - prefix.Length), System.Globalization.NumberStyles.None,
                System.Globalization.CultureInfo.InvariantCulture, out layer)) return false;
        string rest = name[(dot + 1)..];
        if (rest == "self_attn.k_proj.weight") proj = "k_proj";
        else if (rest == "self_attn.v_proj.weight") proj = "v_proj";
        else return false;
        return true;
    }

    /// <summary>Element-wise mean of the named tensors, summed in f64 in the given order, rounded to dtype.</summary>
    private static byte[] Mean(TensorSet tensors, IReadOnlyList<string> names, DType dtype)
    {
        double[]? sum = null;
        foreach (var n in names)
        {
            var values = tensors.ReadSingles(n);
            sum ??= new double[values.Length];
            if (values.Length != sum.Length) throw new LckvException($"tensor '{n}' has {values.Length} elements, expected {sum.Length}");
            for (int e = 0; e < values.Length; e++) sum[e] += values[e];
        }
        var mean = new float[sum!.Length];
        for (int e = 0; e < mean.Length; e++) mean[e] = (float)(sum[e] / names.Count);
        switch (dtype)
        {
            case DType.F32:
                return MemoryMarshal.AsBytes(mean.AsSpan()).ToArray();
            case DType.BF16:
            case DType.F16:
            {
                var bits = new ushort[mean.Length];
                for (int e = 0; e < mean.Length; e++)
                    bits[e] = dtype == DType.BF16 ? DTypes.SingleToBF16(mean[e]) : DTypes.SingleToF16(mean[e]);
                return MemoryMarshal.AsBytes(bits.AsSpan()).ToArray();
            }
            default:
                throw new LckvException($"cannot average tensors of dtype {DTypes.Name(dtype)}");
        }
    }

    /// <summary>config.json: the input's fields (unknown ones kept) overwritten by the converted config; atomic.</summary>
    private static void WriteConfig(string path, string inputConfigPath, ModelConfig config)
    {
        JsonObject merged;
        try { merged = JsonNode.Parse(File.ReadAllText(inputConfigPath)) as JsonObject ?? new JsonObject(); }
        catch (System.Text.Json.JsonException) { merged = new JsonObject(); }
        var converted = (JsonObject)JsonNode.Parse(config.ToJson())!;
        foreach (var (key, value) in converted.ToList())
        {
            converted.Remove(key);
            merged[key] = value;
        }
        if (config.ModelType == ModelConfig.LlamaType)
        {
            foreach (var key in new[] { "layer_types", "forward_passes", "backward_passes", "sliding_window", "force_nodiag", "use_sequential" })
                merged.Remove(key);
        }
        string text = merged.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n";
        string tmp = path + ".tmp-" + Hex();
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                fs.Write(System.Text.Encoding.UTF8.GetBytes(text));
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
    }

    /// <summary>Moves the finished temporary folder to the output path, replacing what is there when forced.</summary>
    private static void Replace(string temp, string outFull, bool force, string shownName)
    {
        string? old = null;
        if (Exists(outFull))
        {
            if (!force) throw new LckvException($"output '{shownName}' already exists, and it is replaced only when forced") { Settings = [nameof(ConvertOptions.Force)] };
            old = Path.Combine(Path.GetDirectoryName(outFull)!, $".{Path.GetFileName(outFull)}.old-{Hex()}");
            if (Directory.Exists(outFull)) Directory.Move(outFull, old);
            else File.Move(outFull, old);
        }
        try
        {
            Directory.Move(temp, outFull);
        }
        catch
        {
            // put the previous output back
            if (old is not null)
            {
                if (Directory.Exists(old)) Directory.Move(old, outFull);
                else File.Move(old, outFull);
            }
            throw;
        }
        if (old is not null) TryDelete(old);
    }

    private static bool Exists(string path) => Directory.Exists(path) || File.Exists(path);

    private static string Hex() => System.Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(6));

    private static void TryDelete(string path)
    {
        try
        {
            if (Directory.Exists(path)) Directory.Delete(path, recursive: true);
            else if (File.Exists(path)) File.Delete(path);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>A read-only view of unmanaged memory (a mapped tensor) as Memory&lt;byte&gt;, so writing copies nothing.</summary>
    private sealed unsafe class PointerMemory(nint pointer, int length) : MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => new((void*)pointer, length);
        public override MemoryHandle Pin(int elementIndex = 0) => new((byte*)pointer + elementIndex);
        public override void Unpin() { }
        protected override void Dispose(bool disposing) { }
    }
}
