using System.CommandLine;
using System.Text.Json;
using Lckv.Cache;
using Lckv.Generation;
using Lckv.Model;

namespace Lckv.Cli;

/// <summary>lckv generate: continue a prompt (text or ids), streaming text, or printing ids and timing as JSON.</summary>
public static class GenerateCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var mo = new ModelOptions();
        var prompt = new Option<string?>("--prompt") { Description = "prompt text" };
        var promptOld = Deprecated.Alias<string?>("-p", "--prompt"); // -p is a length in bench (llama-bench's)
        var promptIds = new Option<string?>("--prompt-ids") { Description = "prompt token ids, comma-separated; several prompts separated by ';' form a batch" };
        var maxTokens = new Option<int?>("--max-tokens", "-n") { Description = "most new tokens per sequence (default: generation_config max_new_tokens, else 128)" };
        var temperature = new Option<float?>("--temperature") { Description = "0 = greedy (default: generation_config, else 0.8)" };
        var topK = new Option<int?>("--top-k") { Description = "keep the k most likely tokens (0 = off)" };
        var topP = new Option<float?>("--top-p") { Description = "nucleus sampling threshold (1 = off)" };
        var minP = new Option<float?>("--min-p") { Description = "drop tokens below min_p x the top probability (0 = off)" };
        var repetition = new Option<float?>("--repetition-penalty") { Description = "penalty for tokens already seen (1 = off)" };
        var seed = new Option<ulong?>("--seed") { Description = "sampling seed (same seed, same output)" };
        var stop = new Option<string[]>("--stop") { Description = "stop string (repeatable)", AllowMultipleArgumentsPerToken = false };
        var noBos = new Option<bool>("--no-bos") { Description = "do not prepend the BOS token to a text prompt" };
        var ignoreEos = new Option<bool>("--ignore-eos") { Description = "do not stop at EOS" };
        var prefill = new Option<string>("--prefill") { Description = "plan | sequential (how upward-reading layouts evaluate the prompt)", DefaultValueFactory = _ => "plan" };
        var json = new Option<bool>("--json") { Description = "print the generated ids, text and timing as JSON" };
        var cmd = new Command("generate", "generate text from a prompt");
        mo.AddTo(cmd, ModelUses.All);
        var eo = EvictionOptions.AddTo(cmd);
        foreach (var o in new Option[] { prompt, promptOld, promptIds, maxTokens, temperature, topK, topP, minP, repetition, seed, stop, noBos, ignoreEos, prefill, json })
            cmd.Options.Add(o);

        cmd.SetAction(p =>
        {
            string? text = Deprecated.Value(p, prompt, promptOld, "generate", stderr), ids = p.GetValue(promptIds);
            if ((text is null) == (ids is null)) throw new LckvException("give exactly one of --prompt or --prompt-ids");
            var prefillMode = p.GetValue(prefill) switch
            {
                "plan" => PrefillMode.Auto,
                "sequential" => PrefillMode.Sequential,
                var other => throw new LckvException($"--prefill must be plan or sequential, got '{other}'"),
            };
            if (p.GetValue(stop) is { } stops && stops.Any(s => s.Length == 0))
                throw new LckvException("--stop is empty; a stop string needs at least one character");
            var eviction = eo.Parse(p);
            using var model = mo.LoadModel(p, stderr, eviction);
            eviction = eo.WithLess(p, eviction, model.Config, model.Map, stderr);
            var tokenizer = mo.LoadTokenizer(p, required: text is not null, model, stderr);
            var genConfig = p.GetValue(mo.Model) is { } folder && Directory.Exists(folder) ? Formats.GenerationConfig.LoadIfPresent(Path.Combine(folder, "generation_config.json")) : null;

            List<int[]> prompts;
            if (text is not null)
            {
                bool bos = !p.GetValue(noBos) && tokenizer!.AddBosByDefault && (tokenizer.BosId ?? genConfig?.BosTokenId ?? model.Config.BosTokenId) is not null;
                prompts = [tokenizer!.Encode(text, bos)];
            }
            else prompts = ParseIds(ids!);

            var sampling = new SamplingParams
            {
                Temperature = p.GetValue(temperature) ?? genConfig?.Temperature ?? (genConfig?.DoSample == false ? 0f : 0.8f),
                TopK = p.GetValue(topK) ?? genConfig?.TopK ?? 0,
                TopP = p.GetValue(topP) ?? genConfig?.TopP ?? 1f,
                MinP = p.GetValue(minP) ?? genConfig?.MinP ?? 0f,
                RepetitionPenalty = p.GetValue(repetition) ?? genConfig?.RepetitionPenalty ?? 1f,
                Seed = p.GetValue(seed),
            };
            var eos = p.GetValue(ignoreEos) ? [] : StopIds(tokenizer, genConfig, model);
            var options = new GenerateOptions
            {
                MaxTokens = p.GetValue(maxTokens) ?? genConfig?.MaxNewTokens ?? 128,
                Sampling = sampling,
                StopIds = eos,
                StopStrings = p.GetValue(stop) ?? [],
            };

            var kvDType = mo.KvStorage(p, model);
            int block = mo.Block(p);
            var layout = model.KvLayout(block, kvDType);
            int stepRows = Generator.StepRows(model, prompts);
            long needBlocks = prompts.Sum(x => model.KvBlocksFor((int)Math.Min((long)x.Length + options.MaxTokens, model.ContextLength), block, stepRows, eviction));
            long budget = p.GetValue(mo.KvBudget) is double mib ? (long)(mib * 1048576) : Math.Max(1, needBlocks) * layout.BlockBytes;
            using var pool = new KvBlockPool(layout, budget);
            var cache = model.CreateCache(pool, stepRows, eviction);
            var generator = new Generator(model, cache) { Prefill = prefillMode };

            bool asJson = p.GetValue(json);
            bool stream = !asJson && prompts.Count == 1;
            TokenCallback? onToken = stream && tokenizer is not null ? (_, _, piece) => { stdout.Write(piece); stdout.Flush(); } : null;
            var result = generator.Generate(prompts, options, tokenizer, onToken);

            if (asJson)
            {
                var doc = new
                {
                    prompt_ids = result.Sequences.Select(s => s.PromptIds),
                    output_ids = result.Sequences.Select(s => s.OutputIds),
                    text = tokenizer is null ? null : result.Sequences.Select(s => s.Text),
                    finish_reason = result.Sequences.Select(s => FinishName(s.Finish)),
                    timing = new
                    {
                        prefill_tokens = result.Timing.PrefillTokens,
                        prefill_seconds = result.Timing.PrefillSeconds,
                        prefill_tokens_per_second = result.Timing.PrefillTokensPerSecond,
                        decode_tokens = result.Timing.DecodeTokens,
                        decode_seconds = result.Timing.DecodeSeconds,
                        decode_tokens_per_second = result.Timing.DecodeTokensPerSecond,
                        decode_step_ms = result.Timing.DecodeStepSeconds.Select(x => Math.Round(x * 1000, 3)),
                    },
                };
                stdout.WriteLine(JsonSerializer.Serialize(doc));
            }
            else if (stream && tokenizer is not null)
            {
                stdout.WriteLine();
            }
            else
            {
                // a batch's sequences labelled by their index, in the order of the prompts
                for (int i = 0; i < result.Sequences.Count; i++)
                {
                    var s = result.Sequences[i];
                    string? line = tokenizer is null ? string.Join(',', s.OutputIds) : s.Text;
                    stdout.WriteLine(result.Sequences.Count > 1 ? $"[{i}] {line}" : line);
                }
            }
            if (!asJson)
                stderr.WriteLine($"prefill {result.Timing.PrefillTokens} tokens at {result.Timing.PrefillTokensPerSecond:F1} tok/s, " +
                                 $"decode {result.Timing.DecodeTokens} tokens at {result.Timing.DecodeTokensPerSecond:F1} tok/s");
            return 0;
        });
        return cmd;
    }

    internal static string FinishName(FinishReason f) => f switch
    {
        FinishReason.Eos => "eos",
        FinishReason.StopString => "stop",
        FinishReason.Context => "context",
        _ => "length",
    };

    internal static IReadOnlyList<int> StopIds(Formats.TextTokenizer? tokenizer, Formats.GenerationConfig? gen, LlamaModel model)
    {
        var ids = new List<int>();
        if (gen is not null) ids.AddRange(gen.EosTokenIds);
        if (tokenizer is not null) ids.AddRange(tokenizer.EosIds);
        ids.AddRange(model.Config.EosTokenIds);
        return ids.Distinct().ToArray();
    }

    /// <summary>"1,2,3" or "1,2,3;4,5" (a batch).</summary>
    internal static List<int[]> ParseIds(string text)
    {
        var prompts = new List<int[]>();
        foreach (var part in text.Split(';'))
        {
            var tokens = part.Split([',', ' '], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (tokens.Length == 0) throw new LckvException("--prompt-ids has an empty prompt");
            var ids = new int[tokens.Length];
            for (int i = 0; i < tokens.Length; i++)
                if (!int.TryParse(tokens[i], out ids[i]) || ids[i] < 0)
                    throw new LckvException($"--prompt-ids: '{tokens[i]}' is not a token id");
            prompts.Add(ids);
        }
        return prompts;
    }
}
