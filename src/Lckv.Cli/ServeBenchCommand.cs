using System.CommandLine;
using System.Diagnostics;
using System.Runtime;
using System.Text;
using System.Text.Json;
using Lckv.Formats;
using Lckv.Generation;
using Lckv.Server;

namespace Lckv.Cli;

/// <summary>
/// lckv bench serve: the server under load over loopback. An in-process server with a KV budget for some of the
/// clients; every client streams one greedy completion of its own random prompt at once, and the run reports time to
/// first token, inter-token latency and total tokens/s, and checks that each client got exactly the text it gets when
/// it runs alone, that none was dropped and that the pool ends with no blocks in use. Each round also runs the bare
/// engine on the same prompts and lengths (same batch, greedy sampling and detokenization, no server; the two take
/// turns going first), so the server's overhead is the ratio of two figures measured alike in the same run.
/// </summary>
public static class ServeBenchCommand
{
    internal sealed record ClientRun(string Text, int CompletionTokens, double TtftMs, double FirstMs, List<double> GapsMs, double EndMs, string? Error);

    /// <summary>The tokens each client generates in an untimed round, and the time after which no further untimed round
    /// starts (a large model's rounds are long enough that its first one or two leave the JIT quiet).</summary>
    private const int WarmTokens = 64, WarmSeconds = 30;

    /// <summary>What the client process sends back for one round.</summary>
    internal sealed record ClientRound(double WallMs, double CpuSeconds, ClientRun[] Runs, double JitMs = 0);

    /// <summary>One round's figures, alike for the bare engine and the server.</summary>
    private sealed record Figures(double WallSeconds, long Tokens, double TotalRate, double DecodeRate, double TtftP50, double TtftP99, double GapP50, double GapP99,
        long Steps, double StepMs, double BetweenMs, double CpuMsPerStep, double ClientCpuMsPerStep, double WorkItemsPerStep, double Contended = 0, double DeliverMs = 0, double JitMs = 0);

    // the kernels' core monitor's samples so far and those that found another thread wanting a core (it then takes
    // the pool's threads away); (0, 0) without one
    private static (long Samples, long Contended) Monitor()
        => Numerics.WorkerPool.Shared.Cores is Diagnostics.CoreMonitor m ? (m.Samples, m.Contended) : (0, 0);

    private static double ContendedSince((long Samples, long Contended) before)
    {
        var now = Monitor();
        long samples = now.Samples - before.Samples;
        return samples > 0 ? (now.Contended - before.Contended) / (double)samples : 0;
    }

    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var mo = new ModelOptions();
        var clients = new Option<int>("--clients") { Description = "concurrent clients, each streaming a greedy completion (whole answers with --no-stream)", DefaultValueFactory = _ => 64 };
        var prompt = new Option<int>("--prompt") { Description = "prompt tokens per client (BOS and random ids)", DefaultValueFactory = _ => 64 };
        var gen = new Option<int>("--gen") { Description = "tokens each client asks for", DefaultValueFactory = _ => 64 };
        var fit = new Option<int?>("--fit") { Description = "the KV budget, in sequences of prompt + gen tokens (default: a quarter of the clients)" };
        var stepTokens = new Option<int>("--step-tokens") { Description = "most tokens one step evaluates", DefaultValueFactory = _ => 512 };
        var check = new Option<bool>("--no-check") { Description = "skip the solo runs that each client's text is compared with" };
        var seed = new Option<ulong>("--seed") { Description = "seed of the random prompts", DefaultValueFactory = _ => 1 };
        var warmUp = new Option<int>("--warm-up") { Description = "at most this many untimed rounds of both sides first, fewer once the JIT is quiet (compiling under 2% of a round); none starts after 30 s", DefaultValueFactory = _ => 16 };
        var rounds = new Option<int>("--rounds") { Description = "timed rounds, each the bare engine and the server (taking turns going first)", DefaultValueFactory = _ => 1 };
        var noStream = new Option<bool>("--no-stream") { Description = "the clients ask for each completion whole (stream: false) instead of streaming it" };
        var process = new Option<bool>("--clients-process") { Description = "run the clients in a child process (this program, bench serve-clients) instead of this one" };
        var format = new Option<string>("--output", "-o") { Description = "md | json", DefaultValueFactory = _ => "md" };
        var cmd = new Command("serve", "load-test the OpenAI-compatible server in process over loopback: concurrent greedy clients (streaming, or whole answers) under a KV budget, against the bare engine");
        mo.AddTo(cmd, ModelUses.All & ~ModelUses.KvBudget); // --fit sizes the pool
        var eo = EvictionOptions.AddTo(cmd);
        foreach (var o in new Option[] { clients, prompt, gen, fit, stepTokens, check, seed, rounds, warmUp, noStream, process, format }) cmd.Options.Add(o);
        cmd.SetAction(p =>
        {
            bool stream = !p.GetValue(noStream);
            int n = p.GetValue(clients), promptTokens = p.GetValue(prompt), genTokens = p.GetValue(gen), step = p.GetValue(stepTokens), roundCount = p.GetValue(rounds);
            int fits = p.GetValue(fit) ?? Math.Max(1, n / 4);
            string fmt = p.GetValue(format)!;
            if (n is < 1 or > 4096) throw new LckvException($"--clients must be in [1, 4096], got {n}");
            if (promptTokens < 1) throw new LckvException($"--prompt must be at least 1 token, got {promptTokens}");
            if (genTokens < 1) throw new LckvException($"--gen must be at least 1 token, got {genTokens}");
            if (fits < 1) throw new LckvException($"--fit must be at least 1 sequence, got {fits}");
            if (step < 1) throw new LckvException($"--step-tokens must be at least 1, got {step}");
            if (roundCount is < 1 or > 100) throw new LckvException($"--rounds must be in [1, 100], got {roundCount}");
            int maxWarm = p.GetValue(warmUp);
            if (maxWarm is < 0 or > 100) throw new LckvException($"--warm-up must be in [0, 100], got {maxWarm}");
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
            string? promptFile = null;
            Process? child = null;
            var (bare, barePool) = parts.NewEngine();
            try
            {
                using var http = new HttpClient { BaseAddress = server.Address };
                // each prompt streamed alone: whole answers are checked against the streamed texts too
                var alone = p.GetValue(check) ? null : prompts.Select(q => RawSseClients.Round(server.Address, [q], genTokens).Runs[0]).ToArray();
                if (p.GetValue(process))
                {
                    promptFile = Path.GetTempFileName();
                    File.WriteAllText(promptFile, JsonSerializer.Serialize(prompts));
                    child = StartClients(server.Address, promptFile, genTokens, stream);
                }
                // Untimed rounds of both sides until the JIT is quiet. Tiered compilation keeps recompiling the
                // server's and the engine's methods for seconds after the first requests, on the same cores, and would
                // count against whichever side ran then: a round is quiet when compiling took under 2% of it.
                var warm = Stopwatch.StartNew();
                int warmRounds = 0;
                double warmJitMs = 0;
                for (bool quiet = false; !quiet && warmRounds < maxWarm && warm.Elapsed.TotalSeconds < WarmSeconds; warmRounds++)
                {
                    var jit0 = JitInfo.GetCompilationTime();
                    long t0 = Stopwatch.GetTimestamp();
                    EngineRound(bare, prompts, Math.Min(genTokens, WarmTokens), parts.Tokenizer, parts.StopIds);
                    double clientJit = child is null ? RawSseClients.Round(server.Address, prompts, Math.Min(genTokens, WarmTokens), stream).JitMs : ChildRound(child).JitMs;
                    double jitMs = (JitInfo.GetCompilationTime() - jit0).TotalMilliseconds + clientJit;
                    warmJitMs += jitMs;
                    quiet = warmRounds >= 1 && jitMs < SpeedBench.QuietJitFraction * Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                }
                stderr.WriteLine($"warm-up: {warmRounds} untimed round(s) of both sides in {warm.Elapsed.TotalSeconds:F1} s, {warmJitMs:F0} ms of it compiling");

                var engineFigures = new List<Figures>();
                var serverFigures = new List<Figures>();
                int failed = 0, mismatched = 0;
                var errors = new List<string>();
                using var cpu = Process.GetCurrentProcess();
                void EngineSide()
                {
                    // the bare engine: same prompts, lengths and batch, greedy, in this thread
                    cpu.Refresh();
                    var cpu0 = cpu.TotalProcessorTime;
                    var monitor0 = Monitor();
                    var jit0 = JitInfo.GetCompilationTime();
                    var (engineRuns, engineWall, steps, stepSeconds) = EngineRound(bare, prompts, genTokens, parts.Tokenizer, parts.StopIds);
                    cpu.Refresh();
                    engineFigures.Add(Summarize(engineRuns, engineWall, steps, stepSeconds, 0, (cpu.TotalProcessorTime - cpu0).TotalSeconds, 0, 0)
                        with { Contended = ContendedSince(monitor0), JitMs = (JitInfo.GetCompilationTime() - jit0).TotalMilliseconds });
                }
                void ServerSide()
                {
                    // the server: every client at once
                    var times0 = parts.Scheduler.Times;
                    long items0 = ThreadPool.CompletedWorkItemCount;
                    cpu.Refresh();
                    var cpu0 = cpu.TotalProcessorTime;
                    var monitor0 = Monitor();
                    var jit0 = JitInfo.GetCompilationTime();
                    var clientRound = child is null ? RawSseClients.Round(server.Address, prompts, genTokens, stream) : ChildRound(child);
                    cpu.Refresh();
                    var times = parts.Scheduler.Times - times0;
                    long items = ThreadPool.CompletedWorkItemCount - items0;
                    var runs = clientRound.Runs;
                    serverFigures.Add(Summarize(runs, clientRound.WallMs / 1000, times.Steps, times.StepSeconds, times.BetweenSeconds,
                        (cpu.TotalProcessorTime - cpu0).TotalSeconds, clientRound.CpuSeconds, items, tokenTimes: stream)
                        with
                        {
                            Contended = ContendedSince(monitor0), DeliverMs = times.Steps > 0 ? times.DeliverSeconds * 1000 / times.Steps : 0,
                            JitMs = (JitInfo.GetCompilationTime() - jit0).TotalMilliseconds + clientRound.JitMs,
                        });
                    failed += runs.Count(r => r.Error is not null);
                    errors.AddRange(runs.Where(r => r.Error is not null).Select(r => r.Error!));
                    mismatched += alone is null ? 0 : runs.Where((r, i) => r.Error is null && r.Text != alone[i].Text).Count();
                }
                // the sides take turns going first, so that neither always follows the other
                for (int round = 0; round < roundCount; round++)
                {
                    if (round % 2 == 0) { EngineSide(); ServerSide(); }
                    else { ServerSide(); EngineSide(); }
                }
                // the scheduler retires a finished sequence before its last event reaches the client; wait for the pool
                var drained = Stopwatch.StartNew();
                while (pool.UsedBlocks > 0 && drained.Elapsed < TimeSpan.FromSeconds(10)) Thread.Sleep(5);
                long blocksAfter = pool.UsedBlocks;
                string metricBlocks = MetricValue(http, "lckv_kv_blocks_used");

                var last = serverFigures[^1];
                double Median(IEnumerable<double> xs) { var s = xs.Order().ToArray(); return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2; }
                var ratios = serverFigures.Zip(engineFigures, (s, e) => (Total: s.TotalRate / e.TotalRate, Decode: s.DecodeRate > 0 ? s.DecodeRate / e.DecodeRate : 0)).ToArray();
                var report = new
                {
                    clients = n, prompt_tokens = promptTokens, gen_tokens = genTokens, kv_budget_sequences = fits,
                    kv_budget_blocks = pool.TotalBlocks, kv_budget_mib = pool.CapacityBytes / 1048576.0,
                    stream, clients_process = child is not null, rounds = roundCount, warm_up_rounds = warmRounds, warm_up_jit_ms = warmJitMs,
                    completed = n * roundCount - failed, failed, checked_alone = alone is not null, mismatched,
                    completion_tokens = last.Tokens, wall_seconds = last.WallSeconds,
                    total_tokens_per_second = Median(serverFigures.Select(f => f.TotalRate)),
                    decode_tokens_per_second = Median(serverFigures.Select(f => f.DecodeRate)),
                    engine_total_tokens_per_second = Median(engineFigures.Select(f => f.TotalRate)),
                    engine_decode_tokens_per_second = Median(engineFigures.Select(f => f.DecodeRate)),
                    total_ratio = Median(ratios.Select(r => r.Total)), decode_ratio = Median(ratios.Select(r => r.Decode)),
                    ttft_ms_p50 = last.TtftP50, ttft_ms_p99 = last.TtftP99, inter_token_ms_p50 = last.GapP50, inter_token_ms_p99 = last.GapP99,
                    engine_rounds = engineFigures.Select(Json).ToArray(), server_rounds = serverFigures.Select(Json).ToArray(),
                    kv_blocks_after = blocksAfter, metrics_kv_blocks_used_after = metricBlocks,
                    errors = errors.Distinct().Take(5).ToArray(),
                };
                if (fmt == "json") stdout.WriteLine(JsonSerializer.Serialize(report));
                else
                {
                    stdout.WriteLine($"{n} {(stream ? "streaming" : "non-streaming")} clients{(child is null ? "" : " (in a child process)")}, prompt {promptTokens} + {genTokens} generated tokens each, KV budget {fits} sequences ({pool.TotalBlocks} blocks, {report.kv_budget_mib:F1} MiB)");
                    stdout.WriteLine();
                    string first = stream ? "TTFT" : "answer"; // without streaming, the time to the whole answer
                    stdout.WriteLine($"| completed | same text as alone | total tok/s | decode tok/s | {first} p50 | {first} p99 | inter-token p50 | inter-token p99 | KV blocks after |");
                    stdout.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
                    stdout.WriteLine($"| {report.completed}/{n * roundCount} | {(alone is null ? "not checked" : $"{report.completed - mismatched}/{report.completed}")} | {report.total_tokens_per_second:F1} | {report.decode_tokens_per_second:F1} | " +
                                     $"{last.TtftP50:F1} ms | {last.TtftP99:F1} ms | {last.GapP50:F2} ms | {last.GapP99:F2} ms | {blocksAfter} |");
                    stdout.WriteLine();
                    stdout.WriteLine("Against the bare engine (same prompts, lengths and batch, greedy), round by round:");
                    stdout.WriteLine();
                    stdout.WriteLine("| round | side | total tok/s | decode tok/s | steps | step ms | between steps ms | delivery ms/step | CPU ms/step (this process) | client process CPU ms/step | thread-pool items/step | contended core samples | JIT ms |");
                    stdout.WriteLine("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
                    for (int r = 0; r < roundCount; r++)
                        foreach (var (side, f) in new[] { ("engine", engineFigures[r]), ("server", serverFigures[r]) })
                            stdout.WriteLine($"| {r + 1} | {side} | {f.TotalRate:F1} | {f.DecodeRate:F1} | {f.Steps} | {f.StepMs:F2} | {f.BetweenMs:F3} | {f.DeliverMs:F3} | {f.CpuMsPerStep:F2} | {f.ClientCpuMsPerStep:F2} | {f.WorkItemsPerStep:F1} | {f.Contended:P0} | {f.JitMs:F0} |");
                    stdout.WriteLine();
                    stdout.WriteLine($"server / engine: total {report.total_ratio:F3}, decode {(stream ? report.decode_ratio.ToString("F3", System.Globalization.CultureInfo.InvariantCulture) : "not measured (whole answers)")} (median of {roundCount} round(s))");
                }
                if (failed > 0) throw new LckvException($"{failed} of {n * roundCount} clients failed: {report.errors[0]}");
                if (mismatched > 0) throw new LckvException($"{mismatched} of {n * roundCount} clients got a different text than alone");
                if (blocksAfter != 0) throw new LckvException($"{blocksAfter} KV blocks still in use after every client finished");
                return 0;
            }
            finally
            {
                if (child is not null)
                {
                    try { child.StandardInput.WriteLine("quit"); } catch (IOException) { }
                    if (!child.WaitForExit(10000)) child.Kill();
                    child.Dispose();
                }
                if (promptFile is not null) File.Delete(promptFile);
                barePool.Dispose();
                server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        });
        return cmd;
    }

    /// <summary>
    /// lckv bench serve-clients (hidden; bench serve --clients-process starts it): the streaming clients of bench serve
    /// in a process of their own. After an untimed round it prints "ready" and waits for a line: "go" runs a timed
    /// round and prints its <see cref="ClientRound"/> as one JSON line, then "ready" again; anything else ends it.
    /// </summary>
    public static Command CreateClients(TextWriter stdout)
    {
        var url = new Option<string>("--url") { Required = true };
        var promptFile = new Option<string>("--prompts") { Required = true };
        var gen = new Option<int>("--gen") { Required = true };
        var noStream = new Option<bool>("--no-stream");
        var cmd = new Command("serve-clients", "the clients of bench serve --clients-process") { Hidden = true };
        foreach (var o in new Option[] { url, promptFile, gen, noStream }) cmd.Options.Add(o);
        cmd.SetAction(p =>
        {
            var prompts = JsonSerializer.Deserialize<int[][]>(File.ReadAllText(p.GetValue(promptFile)!))!;
            int tokens = p.GetValue(gen);
            var address = new Uri(p.GetValue(url)!);
            bool stream = !p.GetValue(noStream);
            RawSseClients.Round(address, prompts, Math.Min(tokens, 4), stream);
            using var self = Process.GetCurrentProcess();
            while (true)
            {
                stdout.WriteLine("ready");
                stdout.Flush();
                if (Console.In.ReadLine() != "go") return 0;
                self.Refresh();
                var cpu0 = self.TotalProcessorTime;
                var jit0 = JitInfo.GetCompilationTime();
                var round = RawSseClients.Round(address, prompts, tokens, stream);
                self.Refresh();
                stdout.WriteLine(JsonSerializer.Serialize(round with { CpuSeconds = (self.TotalProcessorTime - cpu0).TotalSeconds, JitMs = (JitInfo.GetCompilationTime() - jit0).TotalMilliseconds }));
                stdout.Flush();
            }
        });
        return cmd;
    }


    private static Process StartClients(Uri address, string promptFile, int gen, bool stream)
    {
        // this program again: its apphost, else the dotnet host with this assembly (under dotnet or a test host)
        string dll = typeof(ServeBenchCommand).Assembly.Location;
        string? self = Environment.ProcessPath;
        bool apphost = self is not null && Path.GetFileNameWithoutExtension(self) is "lckv" or "Lckv.Cli";
        string exe = apphost ? self! : Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host
            : self is not null && Path.GetFileNameWithoutExtension(self) == "dotnet" ? self : "dotnet";
        var psi = new ProcessStartInfo(exe) { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        if (!apphost) psi.ArgumentList.Add(dll);
        foreach (var a in new[] { "bench", "serve-clients", "--url", address.ToString(), "--prompts", promptFile, "--gen", gen.ToString(System.Globalization.CultureInfo.InvariantCulture) })
            psi.ArgumentList.Add(a);
        if (!stream) psi.ArgumentList.Add("--no-stream");
        var child = Process.Start(psi) ?? throw new LckvException($"cannot start the client process {exe}");
        ExpectReady(child);
        return child;
    }

    private static void ExpectReady(Process child)
    {
        string? line = child.StandardOutput.ReadLine();
        if (line != "ready") throw new LckvException($"the client process did not start: {line ?? "it exited"}");
    }

    private static ClientRound ChildRound(Process child)
    {
        child.StandardInput.WriteLine("go");
        child.StandardInput.Flush();
        string line = child.StandardOutput.ReadLine() ?? throw new LckvException("the client process exited during a round");
        var round = JsonSerializer.Deserialize<ClientRound>(line) ?? throw new LckvException("the client process sent no round");
        ExpectReady(child);
        return round;
    }

    /// <summary>
    /// The bare engine over the same prompts: every sequence admitted at once, stepped until all finish (each retired
    /// as it finishes, as the scheduler does), greedy with the same stop ids and detokenization; token times taken
    /// as each token is sampled, the way a client sees them arrive.
    /// </summary>
    private static (ClientRun[] Runs, double WallSeconds, long Steps, double StepSeconds) EngineRound(GenerationEngine engine, int[][] prompts, int gen, TextTokenizer tokenizer, IReadOnlyList<int> stopIds)
    {
        int n = prompts.Length;
        var clock = Stopwatch.StartNew();
        var first = new double[n];
        var last = new double[n];
        var gaps = new List<double>[n];
        var seqs = new EngineSequence[n];
        var greedy = new SamplingParams { Temperature = 0 };
        var requests = new GenerationRequest[n];
        for (int i = 0; i < n; i++)
        {
            int k = i;
            first[k] = -1;
            gaps[k] = new List<double>(gen);
            requests[k] = new GenerationRequest
            {
                Prompt = prompts[k], MaxNewTokens = gen, Sampling = greedy, StopIds = stopIds, Tokenizer = tokenizer,
                OnToken = (_, _, _) =>
                {
                    double now = clock.Elapsed.TotalMilliseconds;
                    if (first[k] < 0) first[k] = now;
                    else gaps[k].Add(now - last[k]);
                    last[k] = now;
                },
            };
        }
        long steps = 0, stepTicks = 0;
        int admitted = 0;
        while (true)
        {
            // admitted in arrival order while the pool can promise their blocks, as the scheduler does
            while (admitted < n && engine.TryAdmit(requests[admitted], out var seq)) seqs[admitted++] = seq;
            if (!engine.HasWork) break;
            long t0 = Stopwatch.GetTimestamp();
            engine.Step();
            stepTicks += Stopwatch.GetTimestamp() - t0;
            steps++;
            foreach (var s in engine.Finished)
            {
                last[Array.IndexOf(seqs, s)] = clock.Elapsed.TotalMilliseconds;
                engine.Retire(s);
            }
        }
        if (admitted < n) throw new LckvException($"the bare engine could not admit request {admitted + 1} of {n}");
        double wall = clock.Elapsed.TotalSeconds;
        var runs = new ClientRun[n];
        for (int i = 0; i < n; i++)
        {
            if (!seqs[i].IsRetired) engine.Retire(seqs[i]);
            runs[i] = new ClientRun(seqs[i].Text ?? "", seqs[i].Output.Count, first[i] < 0 ? 0 : first[i], first[i], gaps[i], last[i], null);
        }
        return (runs, wall, steps, stepTicks / (double)Stopwatch.Frequency);
    }

    /// <param name="tokenTimes">false: each client saw its tokens all at once (no decode rate)</param>
    private static Figures Summarize(ClientRun[] runs, double wallSeconds, long steps, double stepSeconds, double betweenSeconds, double cpuSeconds, double clientCpuSeconds, long workItems, bool tokenTimes = true)
    {
        long tokens = runs.Sum(r => (long)r.CompletionTokens);
        var ttft = runs.Where(r => r.Error is null).Select(r => r.TtftMs).Order().ToArray();
        var gaps = runs.SelectMany(r => r.GapsMs).Order().ToArray();
        // decode: the tokens after each client's first, over the span from the first first token to the last end
        var ok = runs.Where(r => r.Error is null && r.CompletionTokens > 0).ToArray();
        double decodeSpan = ok.Length == 0 ? 0 : (ok.Max(r => r.EndMs) - ok.Min(r => r.FirstMs)) / 1000;
        double decodeRate = tokenTimes && decodeSpan > 0 ? ok.Sum(r => r.CompletionTokens - 1) / decodeSpan : 0;
        double perStep(double seconds) => steps > 0 ? seconds * 1000 / steps : 0;
        return new Figures(wallSeconds, tokens, wallSeconds > 0 ? tokens / wallSeconds : 0, decodeRate,
            Percentile(ttft, 0.5), Percentile(ttft, 0.99), Percentile(gaps, 0.5), Percentile(gaps, 0.99),
            steps, perStep(stepSeconds), perStep(betweenSeconds), perStep(cpuSeconds), perStep(clientCpuSeconds), steps > 0 ? workItems / (double)steps : 0);
    }

    private static object Json(Figures f) => new
    {
        wall_seconds = f.WallSeconds, completion_tokens = f.Tokens, total_tokens_per_second = f.TotalRate, decode_tokens_per_second = f.DecodeRate,
        ttft_ms_p50 = f.TtftP50, ttft_ms_p99 = f.TtftP99, inter_token_ms_p50 = f.GapP50, inter_token_ms_p99 = f.GapP99,
        steps = f.Steps, step_ms = f.StepMs, between_steps_ms = f.BetweenMs, cpu_ms_per_step = f.CpuMsPerStep,
        client_process_cpu_ms_per_step = f.ClientCpuMsPerStep, thread_pool_items_per_step = f.WorkItemsPerStep,
        core_monitor_contended = f.Contended, deliver_ms_per_step = f.DeliverMs, jit_ms = f.JitMs,
    };

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

    /// <summary>One completion chunk: appends its text, takes usage's completion_tokens and an error's message; true
    /// when it is a token chunk (a choice with text and no finish reason).</summary>
    internal static bool ReadEvent(ReadOnlySpan<byte> json, StringBuilder text, ref int tokens, ref string? error)
    {
        var r = new Utf8JsonReader(json);
        bool sawText = false, open = false, inError = false;
        int field = 0; // 1 text, 2 finish_reason, 3 completion_tokens, 4 message
        while (r.Read())
        {
            switch (r.TokenType)
            {
                case JsonTokenType.PropertyName:
                    field = r.ValueTextEquals("text"u8) ? 1 : r.ValueTextEquals("finish_reason"u8) ? 2 : r.ValueTextEquals("completion_tokens"u8) ? 3 : r.ValueTextEquals("message"u8) ? 4 : 0;
                    if (r.CurrentDepth == 1 && r.ValueTextEquals("error"u8)) inError = true;
                    continue;
                case JsonTokenType.String when field == 1:
                    text.Append(r.GetString());
                    sawText = true;
                    break;
                case JsonTokenType.String when field == 4 && inError:
                    error = r.GetString();
                    break;
                case JsonTokenType.Null when field == 2:
                    open = true;
                    break;
                case JsonTokenType.Number when field == 3:
                    tokens = r.GetInt32();
                    break;
            }
            field = 0;
        }
        return sawText && open;
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
