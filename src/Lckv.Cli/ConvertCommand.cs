using System.CommandLine;
using System.Text.Json;
using Lckv.Model;

namespace Lckv.Cli;

/// <summary>lckv convert: a standard Llama checkpoint into an lckv-llama one with a KV sharing layout (kv-sharing.md §7), or
/// into a GGUF file (--to gguf).</summary>
public static class ConvertCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var input = new Option<string>("--input", "-i") { Description = "standard Llama checkpoint folder (config.json, *.safetensors)", Required = true };
        var output = new Option<string>("--output", "-o") { Description = "folder (or .gguf file with --to gguf) to write; must not exist unless --force", Required = true };
        var layout = new Option<string?>("--layout")
        {
            Description = "llama | lckv-w2 | lckv-w10 | lckv-w<N> | cla2 | yoco | sandwich-middle | <layer_types> (required unless --to gguf)",
        };
        var to = new Option<string>("--to") { Description = "lckv (a checkpoint folder with the --layout) | gguf (a .gguf file llama.cpp runs)", DefaultValueFactory = _ => "lckv" };
        var weights = new Option<string?>("--weights") { Description = "with --to gguf: the type of the weight matrices, f32 | f16 | bf16 | q8_0 | q4_0 (default f32; Q8_0 and Q4_0 quantized as llama.cpp does); norms stay f32" };
        var forward = new Option<int?>("--forward-passes") { Description = "forward_passes m of the iteration plan (default 7)" };
        var backward = new Option<int?>("--backward-passes") { Description = "backward_passes b of the iteration plan (default 2)" };
        var window = new Option<int?>("--sliding-window") { Description = "sliding_window of 's' layers (default 4096)" };
        var noDiag = new Option<bool>("--force-nodiag") { Description = "mask the diagonal in every layer" };
        var force = new Option<bool>("--force") { Description = "replace an existing output folder" };
        var json = new Option<bool>("--json") { Description = "print the result as JSON" };
        var cmd = new Command("convert", "convert a Llama checkpoint to a cross-layer KV sharing layout (K/V initialised as the mean of their readers')");
        foreach (var o in new Option[] { input, output, layout, to, weights, forward, backward, window, noDiag, force, json }) cmd.Options.Add(o);
        cmd.SetAction(p =>
        {
            string target = p.GetValue(to)!;
            if (target == "gguf")
            {
                if (p.GetValue(layout) is not null || p.GetValue(forward) is not null || p.GetValue(backward) is not null
                    || p.GetValue(window) is not null || p.GetValue(noDiag))
                    throw new LckvException("--layout, --forward-passes, --backward-passes, --sliding-window and --force-nodiag make an lckv checkpoint; --to gguf writes the model as it is");
                return Gguf(p.GetValue(input)!, p.GetValue(output)!, p.GetValue(weights), p.GetValue(force), p.GetValue(json), stdout);
            }
            if (target != "lckv") throw new LckvException($"--to must be lckv or gguf, got '{target}'");
            if (p.GetValue(weights) is not null) throw new LckvException("--weights applies to --to gguf; an lckv checkpoint keeps the input's dtype");
            var options = new ConvertOptions
            {
                Layout = p.GetValue(layout) ?? throw new LckvException("--layout is required (or --to gguf)"),
                ForwardPasses = p.GetValue(forward),
                BackwardPasses = p.GetValue(backward),
                SlidingWindow = p.GetValue(window),
                ForceNoDiag = p.GetValue(noDiag) ? true : null,
                Force = p.GetValue(force),
            };
            string outPath = p.GetValue(output)!;
            var r = Converter.Convert(p.GetValue(input)!, outPath, options);
            var c = r.Config;
            if (p.GetValue(json))
            {
                stdout.WriteLine(JsonSerializer.Serialize(new
                {
                    output = outPath, model_type = c.ModelType, layer_types = r.Map.ToString(), kv_layers = r.Map.KvLayerCount,
                    layers = r.Map.LayerCount, forward_passes = c.ForwardPasses, backward_passes = c.BackwardPasses,
                    sliding_window = c.SlidingWindow, force_nodiag = c.ForceNoDiag, tensors = r.TensorCount, bytes = r.Bytes,
                    dropped = r.Dropped, averaged = r.Averaged, copied = r.CopiedFiles,
                }));
                return 0;
            }
            stdout.WriteLine($"wrote {outPath}: {c.ModelType}, layer_types {r.Map}");
            stdout.WriteLine($"KV layers {r.Map.KvLayerCount} of {r.Map.LayerCount}; {r.TensorCount} tensors ({r.Bytes / 1048576.0:F1} MiB), " +
                             $"{r.Dropped.Count} k/v projections dropped, {r.Averaged.Count} averaged over their readers");
            if (r.CopiedFiles.Count > 0) stdout.WriteLine($"copied {string.Join(", ", r.CopiedFiles)}");
            return 0;
        });
        return cmd;
    }

    private static int Gguf(string input, string output, string? weights, bool force, bool json, TextWriter stdout)
    {
        var dtype = weights switch
        {
            null or "f32" => Numerics.DType.F32,
            "f16" => Numerics.DType.F16,
            "bf16" => Numerics.DType.BF16,
            "q8_0" => Numerics.DType.Q8_0,
            "q4_0" => Numerics.DType.Q4_0,
            _ => throw new LckvException($"--weights must be f32, f16, bf16, q8_0 or q4_0, got '{weights}'"),
        };
        var r = GgufExport.Write(input, output, new GgufExportOptions { Weights = dtype, Force = force });
        var types = string.Join(", ", r.TensorsByType.Select(kv => $"{kv.Value} {Numerics.DTypes.Name(kv.Key)}"));
        if (json)
        {
            stdout.WriteLine(JsonSerializer.Serialize(new
            {
                output, format = "gguf", weights = Numerics.DTypes.Name(dtype), tensors = r.TensorCount, bytes = r.Bytes,
                tokenizer = r.Tokenizer, types = r.TensorsByType.ToDictionary(kv => Numerics.DTypes.Name(kv.Key), kv => kv.Value),
            }));
            return 0;
        }
        stdout.WriteLine($"wrote {output}: GGUF, {r.TensorCount} tensors ({types}), {r.Bytes / 1048576.0:F1} MiB, " +
                         (r.Tokenizer is null ? "no tokenizer" : $"tokenizer {r.Tokenizer}"));
        return 0;
    }
}
