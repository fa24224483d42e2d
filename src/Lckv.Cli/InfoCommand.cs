using System.CommandLine;
using System.Text.Json;
using Lckv.Formats;
using Lckv.Model;
using Lckv.Numerics;

namespace Lckv.Cli;

/// <summary>lckv info: parameters, dtype, KV bytes per token, layer map. Works on a config.json alone.</summary>
public static class InfoCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var mo = new ModelOptions();
        var config = new Option<string?>("--config") { Description = "a config.json alone (no weights needed)" };
        var json = new Option<bool>("--json") { Description = "print as JSON" };
        var cmd = new Command("info", "describe a model: parameters, dtype, KV bytes per token, layer map");
        mo.AddTo(cmd, ModelUses.KvDType | ModelUses.BlockSize);
        var evict = EvictionOptions.AddTo(cmd);
        cmd.Options.Add(config);
        cmd.Options.Add(json);
        cmd.SetAction(p =>
        {
            ModelConfig cfg;
            string source;
            string dtype;
            DType? stored = null; // the matrices' dtype, for the default KV dtype
            GgufFile? gguf = null;
            if (p.GetValue(config) is { } path)
            {
                if (!File.Exists(path)) throw new LckvException($"config file '{path}' does not exist");
                cfg = ModelConfig.Load(path);
                if (p.GetValue(mo.Layout) is { } layout) cfg = Layouts.ApplyLayout(cfg, layout);
                source = path;
                (dtype, stored) = TorchDType(cfg);
            }
            else if (p.GetValue(mo.Model) is { } file && File.Exists(file) && p.GetValue(mo.Preset) is null)
            {
                if (p.GetValue(mo.Layout) is not null)
                    throw new LckvException("--layout applies to --preset or --config; use 'lckv convert' to change a checkpoint's layout");
                if (!GgufFile.IsGguf(file)) throw new LckvException($"model '{file}' is a file but not a GGUF file; expected a checkpoint folder or a .gguf file");
                gguf = GgufFile.Open(file);
                try { cfg = GgufLlama.Config(gguf); }
                catch
                {
                    gguf.Dispose();
                    throw;
                }
                source = file;
                dtype = string.Join(", ", gguf.TensorList.Select(t => Names.DType(t.DType)).Distinct());
                stored = gguf.TensorList.FirstOrDefault(t => t.Name == "token_embd.weight")?.DType;
            }
            else if (p.GetValue(mo.Model) is { } folder && p.GetValue(mo.Preset) is null)
            {
                if (p.GetValue(mo.Layout) is not null)
                    throw new LckvException("--layout applies to --preset or --config; use 'lckv convert' to change a checkpoint's layout");
                var cpath = Path.Combine(folder, "config.json");
                if (!File.Exists(cpath)) throw new LckvException($"'{folder}' has no config.json");
                cfg = ModelConfig.Load(cpath);
                source = folder;
                if (Directory.Exists(folder) && !Directory.EnumerateFiles(folder, "*.safetensors").Any()
                    && !File.Exists(Path.Combine(folder, "model.safetensors.index.json")))
                {
                    // the report needs only the config: say so, rather than fail on the missing weights
                    stderr.WriteLine($"note: no weights found in '{folder}' (no *.safetensors); this is the report of its config.json");
                    (dtype, stored) = TorchDType(cfg);
                }
                else
                {
                    using var tensors = TensorSet.Open(folder);
                    dtype = string.Join(", ", tensors.Names.Select(n => Names.DType(tensors.Info(n).DType)).Distinct());
                    stored = tensors.Names.Contains("model.embed_tokens.weight") ? tensors.Info("model.embed_tokens.weight").DType : null;
                }
            }
            else
            {
                string preset = p.GetValue(mo.Preset) ?? throw new LckvException("give --config, --model or --preset");
                cfg = Presets.Config(preset);
                if (p.GetValue(mo.Layout) is { } layout) cfg = Layouts.ApplyLayout(cfg, layout);
                var dt = p.GetValue(mo.DType) is { } d ? DTypes.ParseFloat(d) : Presets.DefaultDType(preset);
                source = $"preset:{preset}";
                dtype = Names.DType(dt);
                stored = dt;
            }
            using var ggufOwner = gguf;
            if (mo.WeightsDType(p) is { } weights)
            {
                dtype = $"{Names.DType(weights)} matrices (--weights), norms {dtype}";
                stored = weights;
            }
            cfg.Validate();
            var map = LayerMap.Parse(cfg.LayerTypes, cfg.NumHiddenLayers);
            var kvDType = mo.KvStorage(p, stored ?? DType.F32);
            KvRows.Check(kvDType, cfg.HeadDim);
            var eviction = evict.WithLess(p, evict.Parse(p), cfg, map, stderr);
            int block = mo.Block(p), context = p.GetValue(mo.Context) ?? cfg.MaxPositionEmbeddings;
            if (context < 1) throw new LckvException($"--context must be at least 1, got {context}");
            long kvPerToken = Cache.KvCache.BytesPerTokenFor(map.KvLayerCount, cfg.NumKeyValueHeads, cfg.HeadDim, kvDType);
            long fullPerToken = Cache.KvCache.BytesPerTokenFor(cfg.NumHiddenLayers, cfg.NumKeyValueHeads, cfg.HeadDim, kvDType);
            // one sequence of the whole context, decoded a token per step, in pool blocks (rings and eviction bound it)
            long kvPerSequence = LlamaModel.KvBlocksFor(cfg, map, context, context, block, 1, eviction)
                * new KvLayout(block, cfg.NumKeyValueHeads, cfg.HeadDim, kvDType).BlockBytes;
            string policy = eviction.Kind switch
            {
                Cache.EvictionKind.Streaming => $"streaming, sinks {eviction.Sinks} + recent {eviction.Recent}",
                Cache.EvictionKind.H2O => $"h2o, heavy {eviction.Heavy} + recent {eviction.Recent}",
                _ => "none",
            };
            // LESS: per store and sequence, Hs [KV, R, D] and z [KV, R] in f32
            if (eviction.Less is LessMaps less)
                policy += $", LESS rank {less.Rank} (+{(long)map.KvLayerCount * less.StateFloats * sizeof(float):N0} bytes of state per sequence)";
            long parameters = ModelWeights.Specs(cfg, map).Sum(s => s.Elements);
            if (p.GetValue(json))
            {
                stdout.WriteLine(JsonSerializer.Serialize(new
                {
                    source, format = gguf is null ? "safetensors" : $"gguf v{gguf.Version}",
                    metadata = gguf?.Keys.ToDictionary(k => Printable.Escape(k), k => gguf.Metadata[k].Describe()),
                    rope = cfg.RopeStyle == RopeStyle.AdjacentPairs ? "adjacent pairs" : "rotate half",
                    model_type = cfg.ModelType, parameters, dtype, layers = cfg.NumHiddenLayers,
                    hidden_size = cfg.HiddenSize, heads = cfg.NumAttentionHeads, kv_heads = cfg.NumKeyValueHeads,
                    head_dim = cfg.HeadDim, vocab_size = cfg.VocabSize, context = cfg.MaxPositionEmbeddings,
                    layer_types = map.ToString(), kv_layers = map.KvLayerCount, kv_dtype = KvRows.Name(kvDType),
                    kv_bytes_per_token = kvPerToken, kv_reduction = (double)fullPerToken / kvPerToken,
                    kv_policy = policy, kv_block_size = block, kv_context = context, kv_bytes_per_sequence = kvPerSequence, less_state_bytes_per_sequence = eviction.Less is LessMaps lm ? (long)map.KvLayerCount * lm.StateFloats * sizeof(float) : 0,
                    targets = Enumerable.Range(0, map.LayerCount).Select(map.Target),
                }));
                return 0;
            }
            stdout.WriteLine($"source          {source}");
            stdout.WriteLine($"model_type      {cfg.ModelType}");
            stdout.WriteLine($"parameters      {parameters:N0} ({Names.Count(parameters)})");
            stdout.WriteLine($"dtype           {dtype}");
            stdout.WriteLine($"shape           {cfg.NumHiddenLayers} layers, hidden {cfg.HiddenSize}, {cfg.NumAttentionHeads} heads / {cfg.NumKeyValueHeads} KV heads x {cfg.HeadDim}, intermediate {cfg.IntermediateSize}, vocab {cfg.VocabSize}");
            stdout.WriteLine($"context         {cfg.MaxPositionEmbeddings}");
            stdout.WriteLine($"layer_types     {map}");
            stdout.WriteLine($"KV layers       {map.KvLayerCount} of {map.LayerCount}");
            stdout.WriteLine($"KV bytes/token  {kvPerToken:N0} ({KvRows.Name(kvDType)}; {Reduction(fullPerToken, kvPerToken)})");
            stdout.WriteLine($"KV/sequence     {kvPerSequence:N0} bytes ({kvPerSequence / 1048576.0:F2} MiB) at {context} tokens in blocks of {block}, eviction {policy}");
            if (map.AnyAttendsTop)
                stdout.WriteLine($"plan            m={cfg.ForwardPasses} b={cfg.BackwardPasses}, force_nodiag={cfg.ForceNoDiag.ToString().ToLowerInvariant()}");
            stdout.WriteLine("layer map");
            stdout.Write(map.Describe());
            if (gguf is not null)
            {
                // every string from the file escaped, long arrays shortened: a file cannot drive the terminal
                stdout.WriteLine($"GGUF v{gguf.Version} metadata ({gguf.Keys.Count} keys, {gguf.TensorList.Count} tensors, alignment {gguf.Alignment}; RoPE on adjacent pairs)");
                int width = Math.Min(48, gguf.Keys.Select(k => Printable.Escape(k).Length).DefaultIfEmpty(0).Max());
                foreach (var k in gguf.Keys)
                {
                    var v = gguf.Metadata[k];
                    stdout.WriteLine($"  {Printable.Escape(k, 48).PadRight(width)}  {v.TypeName,-14} {v.Describe()}");
                }
            }
            return 0;
        });
        return cmd;
    }

    /// <summary>KV bytes against a standard layout's: "same as", or "2.00x smaller than".</summary>
    internal static string Reduction(long standard, long kv)
        => standard == kv ? "same as a standard layout" : $"{standard / (double)kv:F2}x smaller than a standard layout";

    /// <summary>config.json's torch_dtype in the CLI's names, and as a dtype when it names one.</summary>
    private static (string Name, DType? DType) TorchDType(ModelConfig cfg) => cfg.TorchDtype switch
    {
        "float32" => ("f32", DType.F32),
        "bfloat16" => ("bf16", DType.BF16),
        "float16" => ("f16", DType.F16),
        _ => ("unknown", null),
    };
}
