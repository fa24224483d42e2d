using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Lckv.Formats;
using Lckv.Model;

namespace Lckv.Cli;

/// <summary>lckv kvsharer: search which KV layers share (KVSharer, kv-compression.md §4) and write the result as an
/// lckv-llama checkpoint (from a folder) or a GGUF file that names the map (from a GGUF file).</summary>
public static class KvSharerCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var model = new Option<string>("--model", "-m") { Description = "checkpoint folder or GGUF file of a model without upward-reading layers", Required = true };
        var calib = new Option<string?>("--calib") { Description = "calibration text: each sequence is BOS plus the first length-1 tokens of one line long enough, in file order" };
        var calibIds = new Option<string?>("--calib-ids") { Description = "calibration ids: one sequence per line, whitespace-separated ids, BOS included" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "tokenizer for --calib (default: the one in --model, a GGUF file's included)" };
        var samples = new Option<int?>("--samples") { Description = "calibration sequences N (default 30; with --calib-ids, its lines)" };
        var length = new Option<int?>("--length") { Description = "tokens per calibration sequence T, BOS included (default 64; with --calib-ids, its shortest line)" };
        var share = new Option<int?>("--share") { Description = "stop after this many accepted candidates (default: a quarter of the layers)" };
        var threshold = new Option<double>("--threshold") { Description = "accept a candidate whose mean cosine of the final hidden states is above this, in (-1, 1]", DefaultValueFactory = _ => 0.5 };
        var order = new Option<string>("--order") { Description = "dissimilar (most distant pairs first, the paper's) | similar", DefaultValueFactory = _ => "dissimilar" };
        var output = new Option<string>("--out", "-o") { Description = "checkpoint folder to write (a .gguf file for a GGUF --model); must not exist unless --force", Required = true };
        var force = new Option<bool>("--force") { Description = "replace an existing output" };
        var threads = new Option<int?>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var json = new Option<bool>("--json") { Description = "print distances, the candidates tried and the layer_types as JSON" };
        var cmd = new Command("kvsharer", "choose which layers share KV after training (KVSharer) and write the model that shares them");
        foreach (var o in new Option[] { model, calib, calibIds, tokenizer, samples, length, share, threshold, order, output, force, threads, json })
            cmd.Options.Add(o);
        cmd.SetAction(p =>
        {
            string folder = p.GetValue(model)!, outPath = p.GetValue(output)!;
            string? textPath = p.GetValue(calib), idsPath = p.GetValue(calibIds);
            if ((textPath is null) == (idsPath is null)) throw new LckvException("give exactly one of --calib (a text file) or --calib-ids (a file of ids)");
            if (p.GetValue(threads) is int t)
            {
                if (t < 1) throw new LckvException($"--threads must be at least 1, got {t}");
                Numerics.WorkerPool.Shared.ThreadCount = t;
            }
            var sortOrder = p.GetValue(order) switch
            {
                "dissimilar" => KvSharerOrder.Dissimilar,
                "similar" => KvSharerOrder.Similar,
                var other => throw new LckvException($"--order must be dissimilar or similar, got '{other}'"),
            };
            var options = new KvSharerOptions { Threshold = p.GetValue(threshold), Share = p.GetValue(share), Order = sortOrder };
            if (!(options.Threshold > -1 && options.Threshold <= 1))
                throw new LckvException($"--threshold must be in (-1, 1], got {options.Threshold.ToString(CultureInfo.InvariantCulture)}");
            if (options.Share is < 1) throw new LckvException($"--share must be at least 1, got {options.Share}");
            if (p.GetValue(samples) is < 1) throw new LckvException($"--samples must be at least 1, got {p.GetValue(samples)}");
            if (p.GetValue(length) is < 2) throw new LckvException($"--length must be at least 2 (BOS and one token), got {p.GetValue(length)}");
            var config = LlamaModel.LoadConfig(folder);
            var map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
            if (map.AnyAttendsTop)
                throw new LckvException($"KVSharer is for models without upward-reading layers; '{folder}' has layer_types '{map}'");

            int[][] ids;
            if (idsPath is not null)
            {
                var lines = ReadIdLines(idsPath);
                if (lines.Count == 0) throw new LckvException($"{idsPath}: no sequences");
                ids = KvSharer.CalibrationFromIds(lines, p.GetValue(samples) ?? lines.Count, p.GetValue(length) ?? lines.Min(l => l.Length));
            }
            else
            {
                if (!File.Exists(textPath)) throw new LckvException($"calibration text '{textPath}' does not exist");
                var tok = LoadTokenizer(p.GetValue(tokenizer), folder);
                int bos = config.BosTokenId ?? tok.BosId ?? throw new LckvException("the model names no bos_token_id, and the tokenizer has no BOS token");
                ids = KvSharer.CalibrationFromLines(tok, File.ReadLines(textPath!), bos, p.GetValue(samples) ?? 30, p.GetValue(length) ?? 64);
            }

            bool asJson = p.GetValue(json);
            KvSharerResult result;
            using (var m = LlamaModel.Load(folder))
            {
                if (!asJson)
                {
                    stdout.WriteLine($"calibration: {ids.Length} sequences of {ids[0].Length} tokens; threshold {options.Threshold.ToString(CultureInfo.InvariantCulture)}, " +
                                     $"share up to {options.Share ?? Math.Max(1, map.LayerCount / 4)}, {p.GetValue(order)} pairs first");
                    stdout.WriteLine($"{"#",3}  {"layer",5}  {"reads",5}  {"score",9}  result");
                }
                int n = 0;
                result = KvSharer.Search(m, ids, options, trial =>
                {
                    if (!asJson)
                        stdout.WriteLine($"{++n,3}  {trial.Layer,5}  {trial.Target,5}  {trial.Score.ToString("F6", CultureInfo.InvariantCulture),9}  {(trial.Accepted ? "accepted" : "rejected")}");
                });
            }
            var written = KvSharer.Write(folder, outPath, result, p.GetValue(force));
            if (asJson)
            {
                int layers = result.Map.LayerCount;
                stdout.WriteLine(JsonSerializer.Serialize(new
                {
                    output = outPath,
                    layer_types = result.Map.ToString(),
                    kv_layers = result.Map.KvLayerCount,
                    layers,
                    samples = result.Samples,
                    length = result.Length,
                    threshold = options.Threshold,
                    order = p.GetValue(order),
                    distances = Enumerable.Range(0, layers).Select(i => Enumerable.Range(0, layers).Select(j => result.Distances[i, j]).ToArray()).ToArray(),
                    pairs = result.Order.Select(x => new[] { x.I, x.J }).ToArray(),
                    tried = result.Tried.Select(x => new { layer = x.Layer, target = x.Target, score = x.Score, accepted = x.Accepted, layer_types = x.LayerTypes }).ToArray(),
                    dropped = written.Dropped,
                    copied = written.CopiedFiles,
                }));
                return 0;
            }
            stdout.WriteLine($"layer_types {result.Map}: {result.Accepted} accepted of {result.Tried.Count} tried; KV layers {result.Map.KvLayerCount} of {result.Map.LayerCount}");
            if (File.Exists(folder))
                stdout.WriteLine($"wrote {outPath}: GGUF with {GgufLlama.LayerTypesKey} (runs in Lckv, not in llama.cpp), {written.Dropped.Count} k/v tensors dropped, metadata copied");
            else
                stdout.WriteLine($"wrote {outPath}: lckv-llama, {written.Dropped.Count} k/v projections dropped" +
                                 (written.CopiedFiles.Count > 0 ? $", copied {string.Join(", ", written.CopiedFiles)}" : ""));
            return 0;
        });
        return cmd;
    }

    // --tokenizer, else the GGUF file's tokenizer or the model folder's tokenizer file
    private static TextTokenizer LoadTokenizer(string? path, string folder)
    {
        if (path is null && File.Exists(folder)) path = folder;
        if (path is null && (File.Exists(Path.Combine(folder, "tokenizer.model")) || File.Exists(Path.Combine(folder, "tokenizer.json")))) path = folder;
        if (path is null) throw new LckvException("--calib needs a tokenizer: the model folder has none; give --tokenizer <tokenizer.model> or use --calib-ids");
        return TextTokenizer.Load(path);
    }

    // one sequence of ids per non-empty line
    private static List<int[]> ReadIdLines(string path)
    {
        if (!File.Exists(path)) throw new LckvException($"calibration ids file '{path}' does not exist");
        var result = new List<int[]>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            var tokens = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (tokens.Length == 0) continue;
            var ids = new int[tokens.Length];
            for (int i = 0; i < tokens.Length; i++)
                if (!int.TryParse(tokens[i], NumberStyles.None, CultureInfo.InvariantCulture, out ids[i]))
                    throw new LckvException($"{path}: line {lineNo}: '{Printable.Escape(tokens[i])}' is not a token id");
            result.Add(ids);
        }
        return result;
    }
}
