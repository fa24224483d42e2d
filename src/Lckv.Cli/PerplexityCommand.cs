using System.CommandLine;
using System.Text.Json;
using Lckv.Generation;

namespace Lckv.Cli;

/// <summary>lckv perplexity: perplexity of a text file or a file of token ids, windowed with a stride.</summary>
public static class PerplexityCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var mo = new ModelOptions();
        var file = new Option<string?>("--file", "-f") { Description = "text file (tokenized with the model's tokenizer)" };
        var idsFile = new Option<string?>("--ids-file") { Description = "file of whitespace-separated token ids" };
        // --context is the window here (llama.cpp's perplexity -c); the model is loaded with that context
        var window = new Option<int?>("--context", "-c") { Description = "tokens per window, the model's context (default: 512, capped at max_position_embeddings)" };
        var windowOld = Deprecated.Alias<int?>("--ctx", "--context");
        var stride = new Option<int?>("--stride") { Description = "tokens between window starts (default: the window)" };
        var limit = new Option<int?>("--limit-tokens") { Description = "score only the first N tokens of the file" };
        var limitOld = Deprecated.Alias<int?>("--max-tokens", "--limit-tokens");
        var json = new Option<bool>("--json") { Description = "print the result as JSON" };
        var segment = new Option<int?>("--segment") { Description = "also report the perplexity of every N positions of the stream (e.g. 1000)" };
        var cmd = new Command("perplexity", "perplexity of a text or token file");
        mo.AddTo(cmd, ModelUses.WeightSeed | ModelUses.KvDType | ModelUses.Tokenizer | ModelUses.Threads | ModelUses.LongContext, context: false);
        var eo = EvictionOptions.AddTo(cmd);
        foreach (var o in new Option[] { file, idsFile, window, windowOld, stride, limit, limitOld, json, segment }) cmd.Options.Add(o);
        cmd.SetAction(p =>
        {
            string? textPath = p.GetValue(file), idsPath = p.GetValue(idsFile);
            if ((textPath is null) == (idsPath is null)) throw new LckvException("give exactly one of --file or --ids-file");
            if (idsPath is not null && p.GetResult(mo.Tokenizer) is not null)
                throw new LckvException("--tokenizer applies to --file; an --ids-file holds token ids already");
            var eviction = eo.Parse(p);
            int? segmentLength = p.GetValue(segment);
            if (segmentLength is < 1) throw new LckvException($"--segment must be at least 1, got {segmentLength}");
            int? context = Deprecated.Value(p, window, windowOld, "perplexity", stderr);
            int? maxTokens = Deprecated.Value(p, limit, limitOld, "perplexity", stderr);
            if (context is < 2) throw new LckvException($"--context must be at least 2 tokens, got {context}");
            if (maxTokens is < 0) throw new LckvException($"--limit-tokens must not be negative, got {maxTokens}");
            using var model = mo.LoadModel(p, stderr, eviction, context);
            eviction = eo.WithLess(p, eviction, model.Config, model.Map, stderr);
            int[] ids;
            if (textPath is not null)
            {
                if (Directory.Exists(textPath)) throw new LckvException($"--file '{textPath}' is a folder, expected a text file");
                if (!File.Exists(textPath)) throw new LckvException($"text file '{textPath}' does not exist");
                var tokenizer = mo.LoadTokenizer(p, required: true, model, stderr)!;
                ids = tokenizer.Encode(File.ReadAllText(textPath), tokenizer.AddBosByDefault && tokenizer.BosId is not null);
            }
            else ids = ReadIds(idsPath!);
            if (maxTokens is int n) ids = ids[..Math.Min(n, ids.Length)];
            int win = context ?? Math.Min(512, model.ContextLength);
            int str = p.GetValue(stride) ?? win;
            var result = Progress.Run("perplexity", report =>
                Perplexity.Evaluate(model, ids, win, str, mo.KvStorage(p, model), (done, total) => report(done, total), eviction), stderr);
            if (p.GetValue(json))
                stdout.WriteLine(JsonSerializer.Serialize(new
                {
                    perplexity = result.Perplexity,
                    mean_nll = result.MeanNll,
                    tokens = result.ScoredTokens,
                    windows = result.Windows,
                    context = win,
                    stride = str,
                    seconds = result.Seconds,
                    tokens_per_second = result.TokensPerSecond,
                    segments = segmentLength is int sl ? result.Segments(sl).Select(x => new { from = x.From, tokens = x.Tokens, perplexity = x.Perplexity }) : null,
                }));
            else
            {
                stdout.WriteLine($"perplexity {result.Perplexity:F4} over {result.ScoredTokens} tokens ({result.Windows} windows of {win}, stride {str}), {result.TokensPerSecond:F1} tok/s");
                if (segmentLength is int sl)
                    foreach (var (from, tokens, ppl) in result.Segments(sl))
                        stdout.WriteLine($"  positions {from}-{from + sl - 1}: perplexity {ppl:F4} over {tokens} tokens");
            }
            return 0;
        });
        return cmd;
    }

    internal static int[] ReadIds(string path)
    {
        if (Directory.Exists(path)) throw new LckvException($"--ids-file '{path}' is a folder, expected a file of token ids");
        if (!File.Exists(path)) throw new LckvException($"ids file '{path}' does not exist");
        var tokens = File.ReadAllText(path).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        var ids = new int[tokens.Length];
        for (int i = 0; i < tokens.Length; i++)
            if (!int.TryParse(tokens[i], out ids[i]) || ids[i] < 0)
                throw new LckvException($"{path}: '{tokens[i]}' (token {i}) is not a token id");
        return ids;
    }
}
