using System.CommandLine;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Lckv.Generation;
using Lckv.Server;

namespace Lckv.Cli;

/// <summary>
/// lckv bench serve: the server under load over loopback. An in-process server with a KV budget for some of the
/// clients; every client streams one greedy completion of its own random prompt at once, and the run reports time to
/// first token, inter-token latency and total tokens/s, and checks that each client got exactly the text it gets when
/// it runs alone, that none was dropped and that the pool ends with no blocks in use.
/// </summary>
public static class ServeBenchCommand
{
    private sealed record ClientRun(string Text, int CompletionTokens, double TtftMs, double FirstMs, List<double> GapsMs, double EndMs, string? Error);

    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var mo = new ModelOptions();
        var clients = new Option<int>("--clients") { Description = "concurrent streaming clients", DefaultValueFactory = _ => 64 };
        var prompt = new Option<int>("--prompt") { Description = "prompt tokens per client (BOS and random ids)", DefaultValueFactory = _ => 64 };
        var gen = new Option<int>("--gen") { Description = "tokens each client asks for", DefaultValueFactory = _ => 64 };
        var fit = new Option<int?>("--fit") { Description = "the KV budget, in sequences of prompt + gen tokens (default: a quarter of the clients)" };
        var stepTokens = new Option<int>("--step-tokens") { Description = "most tokens one step evaluates", DefaultValueFactory = _ => 512 };
        var check = new Option<bool>("--no-check") { Description = "skip the solo runs that each client's text is compared with" };
        var seed = new Option<ulong>("--seed") { Description = "seed of the random prompts", DefaultValueFactory = _ => 1 };
        var format = new Option<string>("--output", "-o") { Description = "md | json", DefaultValueFactory = _ => "md" };
        var cmd = new Command("serve", "load-test the OpenAI-compatible server in process over loopback: concurrent streaming clients under a KV budget");
        mo.AddTo(cmd, ModelUses.All & ~ModelUses.KvBudget); // --fit sizes the pool
        var eo = EvictionOptions.AddTo(cmd);
        foreach (var o in new Option[] { clients, prompt, gen, fit, stepTokens, check, seed, format }) cmd.Options.Add(o);
        cmd.SetAction(p =>
        {
            int n = p.GetValue(clients), promptTokens = p.GetValue(prompt), genTokens = p.GetValue(gen), step = p.GetValue(stepTokens);
            int fits = p.GetValue(fit) ?? Math.Max(1, n / 4);
            string fmt = p.GetValue(format)!;
            if (n is < 1 or > 4096) throw new LckvException($"--clients must be in [1, 4096], got {n}");
            if (promptTokens < 1) throw new LckvException($"--prompt must be at least 1 token, got {promptTokens}");
            if (genTokens < 1) throw new LckvException($"--gen must be at least 1 token, got {genTokens}");
            if (fits < 1) throw new LckvException($"--fit must be at least 1 sequence, got {fits}");
            if (step < 1) throw new LckvException($"--step-tokens must be at least 1, got {step}");
            if (fmt is not ("md" or "json")) throw new LckvException($"--output must be md or json, got '{fmt}'");
            if (p.GetValue(mo.Model) is null && p.GetValue(mo.Preset) is null) throw new LckvException("give --model <folder or .gguf> or --preset small|tinyllama-1.1b");

            var parts = ServeCommand.Build(p, mo, eo, batch: n, step, queue: n, budgetFor: (fits, promptTokens + genTokens), stderr);
            using var model = parts.Model;
            using var pool = parts.Pool;
            if (parts.Tokenizer is null) throw new LckvException("bench serve compares the clients' texts and needs a tokenizer (--tokenizer, or a model with one)");
            if (promptTokens + genTokens > model.ContextLength)
                throw new LckvException($"--prompt + --gen = {promptTokens + genTokens} tokens is more than the context of {model.ContextLength}");
            var prompts = Prompts(n, promptTokens, model.Vocab, parts.Tokenizer.BosId, p.GetValue(seed));
            var server = LckvServer.StartAsync(parts.Scheduler, parts.Tokenizer, new ServerOptions { Port = 0, ModelName = "bench" }).GetAwaiter().GetResult();
            try
            {
                using var http = new HttpClient { BaseAddress = server.Address, Timeout = Timeout.InfiniteTimeSpan };
                var alone = p.GetValue(check) ? null : prompts.Select(q => Stream(http, q, genTokens).GetAwaiter().GetResult()).ToArray();
                // an untimed round of every client with a few tokens compiles the kernels and the server's paths first
                Task.WhenAll(prompts.Select(q => Task.Run(() => Stream(http, q, Math.Min(genTokens, 4))))).GetAwaiter().GetResult();
                var clock = Stopwatch.StartNew();
                var runs = Task.WhenAll(prompts.Select(q => Task.Run(() => Stream(http, q, genTokens, clock)))).GetAwaiter().GetResult();
                double wallMs = clock.Elapsed.TotalMilliseconds;
                // the scheduler retires a finished sequence before its last event reaches the client; wait for the pool
                var drained = Stopwatch.StartNew();
                while (pool.UsedBlocks > 0 && drained.Elapsed < TimeSpan.FromSeconds(10)) Thread.Sleep(5);
                long blocksAfter = pool.UsedBlocks;
                string metricBlocks = MetricValue(http, "lckv_kv_blocks_used");

                int failed = runs.Count(r => r.Error is not null);
                int mismatched = alone is null ? 0 : runs.Where((r, i) => r.Error is null && r.Text != alone[i].Text).Count();
                long tokens = runs.Sum(r => (long)r.CompletionTokens);
                var ttft = runs.Where(r => r.Error is null).Select(r => r.TtftMs).Order().ToArray();
                var gaps = runs.SelectMany(r => r.GapsMs).Order().ToArray();
                // decode: the tokens after each client's first, over the span from the first first token to the last end
                var ok = runs.Where(r => r.Error is null && r.CompletionTokens > 0).ToArray();
                double decodeSpan = ok.Length == 0 ? 0 : (ok.Max(r => r.EndMs) - ok.Min(r => r.FirstMs)) / 1000;
                double decodeRate = decodeSpan > 0 ? ok.Sum(r => r.CompletionTokens - 1) / decodeSpan : 0;
                var report = new
                {
                    clients = n, prompt_tokens = promptTokens, gen_tokens = genTokens, kv_budget_sequences = fits,
                    kv_budget_blocks = pool.TotalBlocks, kv_budget_mib = pool.CapacityBytes / 1048576.0,
                    completed = n - failed, failed, checked_alone = alone is not null, mismatched,
                    completion_tokens = tokens, wall_seconds = wallMs / 1000, total_tokens_per_second = tokens / (wallMs / 1000),
                    decode_tokens_per_second = decodeRate,
                    ttft_ms_p50 = Percentile(ttft, 0.5), ttft_ms_p99 = Percentile(ttft, 0.99),
                    inter_token_ms_p50 = Percentile(gaps, 0.5), inter_token_ms_p99 = Percentile(gaps, 0.99),
                    kv_blocks_after = blocksAfter, metrics_kv_blocks_used_after = metricBlocks,
                    errors = runs.Where(r => r.Error is not null).Select(r => r.Error).Distinct().Take(5).ToArray(),
                };
                if (fmt == "json") stdout.WriteLine(JsonSerializer.Serialize(report));
                else
                {
                    stdout.WriteLine($"{n} streaming clients, prompt {promptTokens} + {genTokens} generated tokens each, KV budget {fits} sequences ({pool.TotalBlocks} blocks, {report.kv_budget_mib:F1} MiB)");
                    stdout.WriteLine();
                    stdout.WriteLine("| completed | same text as alone | total tok/s | decode tok/s | TTFT p50 | TTFT p99 | inter-token p50 | inter-token p99 | KV blocks after |");
                    stdout.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
                    stdout.WriteLine($"| {n - failed}/{n} | {(alone is null ? "not checked" : $"{n - failed - mismatched}/{n - failed}")} | {report.total_tokens_per_second:F1} | {decodeRate:F1} | " +
                                     $"{report.ttft_ms_p50:F1} ms | {report.ttft_ms_p99:F1} ms | {report.inter_token_ms_p50:F2} ms | {report.inter_token_ms_p99:F2} ms | {blocksAfter} |");
                }
                if (failed > 0) throw new LckvException($"{failed} of {n} clients failed: {report.errors[0]}");
                if (mismatched > 0) throw new LckvException($"{mismatched} of {n} clients got a different text than alone");
                if (blocksAfter != 0) throw new LckvException($"{blocksAfter} KV blocks still in use after every client finished");
                return 0;
            }
            finally
            {
                server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        });
        return cmd;
    }

    /// <summary>Each client's prompt: BOS (when the tokenizer has one) then uniform random ids past the special ones.</summary>
    private static int[][] Prompts(int n, int length, int vocab, int? bos, ulong seed)
    {
        var rng = new Random((int)(seed % int.MaxValue));
        return Enumerable.Range(0, n).Select(_ =>
        {
            var ids = new int[length];
            for (int t = 0; t < length; t++) ids[t] = t == 0 && bos is int b ? b : rng.Next(Math.Min(3, vocab - 1), vocab);
            return ids;
        }).ToArray();
    }

    /// <summary>One greedy streamed completion: its text, token count (from the usage chunk), time to the first token
    /// and the gaps between later token chunks, in ms from the clock.</summary>
    private static async Task<ClientRun> Stream(HttpClient http, int[] prompt, int gen, Stopwatch? clock = null)
    {
        clock ??= Stopwatch.StartNew();
        double start = clock.Elapsed.TotalMilliseconds, first = -1, last = 0;
        var gaps = new List<double>(gen);
        var text = new StringBuilder();
        int tokens = 0;
        try
        {
            string body = JsonSerializer.Serialize(new { prompt, max_tokens = gen, temperature = 0, stream = true, stream_options = new { include_usage = true } });
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode) return new ClientRun("", 0, 0, 0, gaps, 0, $"HTTP {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync().ConfigureAwait(false)}");
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync().ConfigureAwait(false));
            while (await reader.ReadLineAsync().ConfigureAwait(false) is { } line)
            {
                if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]") continue;
                using var chunk = JsonDocument.Parse(line.AsMemory("data: ".Length));
                if (chunk.RootElement.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object)
                    tokens = u.GetProperty("completion_tokens").GetInt32();
                foreach (var c in chunk.RootElement.GetProperty("choices").EnumerateArray())
                {
                    text.Append(c.GetProperty("text").GetString());
                    if (c.GetProperty("finish_reason").ValueKind != JsonValueKind.Null) continue; // the closing chunk
                    double now = clock.Elapsed.TotalMilliseconds;
                    if (first < 0) first = now;
                    else gaps.Add(now - last);
                    last = now;
                }
            }
            return new ClientRun(text.ToString(), tokens, first < 0 ? 0 : first - start, first, gaps, clock.Elapsed.TotalMilliseconds, null);
        }
        catch (Exception e) when (e is HttpRequestException or IOException or JsonException)
        {
            return new ClientRun("", 0, 0, 0, gaps, 0, e.Message);
        }
    }

    /// <summary>A metric's value as /metrics prints it ("-" when it cannot be read).</summary>
    private static string MetricValue(HttpClient http, string name)
    {
        try
        {
            string text = http.GetStringAsync("/metrics").GetAwaiter().GetResult();
            return text.Split('\n').FirstOrDefault(l => l.StartsWith(name + " ", StringComparison.Ordinal))?[(name.Length + 1)..].Trim() ?? "-";
        }
        catch (HttpRequestException) { return "-"; }
    }

    private static double Percentile(double[] sorted, double q)
        => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
}
