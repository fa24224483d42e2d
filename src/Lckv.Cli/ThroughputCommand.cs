using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Lckv.Diagnostics;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Plotting;

namespace Lckv.Cli;

/// <summary>
/// lckv bench throughput: the paper's Table 1 experiment. For each layout of one model shape, the largest batch whose
/// weights, buffers and KV fit a total memory budget, run for real (greedy, no stop tokens); throughput is
/// batch * new tokens / total time including prefill.
/// </summary>
public static class ThroughputCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var preset = new Option<string>("--preset") { Description = "model shape with random weights: " + string.Join(" | ", Presets.Names), DefaultValueFactory = _ => "tinyllama-1.1b" };
        var dtype = new Option<string?>("--dtype") { Description = "weight dtype: f32 | f16 | bf16 (default: the preset's)" };
        var layouts = new Option<string>("--layouts") { Description = "rows, comma-separated: LAYOUT[/KV][/EVICTION] with LAYOUT one of " + string.Join(", ", ThroughputLayouts.Names) + " or a layer_types string, KV f32|f16|bf16|int8|q4, EVICTION streaming:SINKS:RECENT|h2o:HEAVY:RECENT (e.g. lckv-w2/int8/streaming:4:508); what a row leaves out comes from --kv-dtype and --evict", DefaultValueFactory = _ => string.Join(',', ThroughputLayouts.Names) };
        var budget = new Option<double?>("--budget") { Description = "total memory budget in MiB: weights + KV + working buffers (default: exactly what the first layout needs for batch 1)" };
        var prompt = new Option<int>("--prompt") { Description = "prompt tokens per sequence", DefaultValueFactory = _ => 16 };
        var gen = new Option<int>("--gen") { Description = "generated tokens per sequence", DefaultValueFactory = _ => 240 };
        var kvDType = new Option<string?>("--kv-dtype") { Description = "KV cache storage: f32 | f16 | bf16 | int8 | q4 (default: bf16 beside f16/bf16 weights, f32 beside f32)" };
        var blockSize = new Option<int>("--block-size") { Description = "tokens per KV block", DefaultValueFactory = _ => 16 };
        var maxBatch = new Option<int>("--max-batch") { Description = "upper end of the batch search", DefaultValueFactory = _ => 512 };
        var batch = new Option<int?>("--batch") { Description = "run every layout at this batch instead of searching (equal-batch comparison)" };
        var format = new Option<string>("--output", "-o") { Description = "md | json", DefaultValueFactory = _ => "md" };
        var plot = new Option<string?>("--plot") { Description = "write a PNG bar chart of throughput and max batch per layout" };
        var seed = new Option<ulong>("--weight-seed") { Description = "seed of the random weights and prompts", DefaultValueFactory = _ => 0 };
        var accountOnly = new Option<bool>("--account-only") { Description = "only find the max batch of each layout and print the accounting (no generation)" };
        var threads = new Option<int?>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var budgetKind = new Option<string>("--budget-kind") { Description = "what --budget covers: total (weights + KV + buffers) | kv (the KV cache alone: every layout charged as if its weights were llama's)", DefaultValueFactory = _ => "total" };
        var rounds = new Option<int>("--rounds") { Description = "run the layouts this many times, interleaved, and report the median times (fairer on a noisy machine)", DefaultValueFactory = _ => 1 };
        var cmd = new Command("throughput", "max batch and throughput per KV layout under one memory budget (the LCKV paper's Table 1)");
        foreach (var o in new Option[] { preset, dtype, layouts, budget, prompt, gen, kvDType, blockSize, maxBatch, batch, format, plot, seed, accountOnly, threads, rounds, budgetKind })
            cmd.Options.Add(o);
        var evict = EvictionOptions.AddTo(cmd);
        cmd.SetAction(p =>
        {
            string fmt = p.GetValue(format)!;
            if (fmt is not ("md" or "json")) throw new LckvException($"--output must be md or json, got '{fmt}'");
            if (p.GetValue(threads) is int t) ModelOptions.SetThreads(t);
            string shapeName = p.GetValue(preset)!;
            var shape = Presets.Config(shapeName);
            var weightDType = p.GetValue(dtype) is { } d ? ParseDType(d, "--dtype") : Presets.DefaultDType(shapeName);
            var names = p.GetValue(layouts)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (names.Length == 0) throw new LckvException("--layouts is empty");
            var kind = p.GetValue(budgetKind) switch
            {
                "total" => BudgetKind.Total,
                "kv" => BudgetKind.KvOnly,
                var other => throw new LckvException($"--budget-kind must be total or kv, got '{other}'"),
            };
            int requestedRounds = p.GetValue(rounds);
            if (requestedRounds < 1 || requestedRounds > 100) throw new LckvException($"--rounds must be in [1, 100], got {requestedRounds}");
            int? fixedBatch = p.GetValue(batch);
            if (fixedBatch is < 1) throw new LckvException($"--batch must be at least 1, got {fixedBatch}");
            int maxB = p.GetValue(maxBatch);
            if (maxB < 1) throw new LckvException($"--max-batch must be at least 1, got {maxB}");
            int bs = p.GetValue(blockSize);
            if (bs < 1 || bs > 4096) throw new LckvException($"--block-size must be in [1, 4096], got {bs}");
            int promptLength = p.GetValue(prompt), genLength = p.GetValue(gen);
            if (promptLength < 1) throw new LckvException($"--prompt must be at least 1, got {promptLength}");
            if (genLength < 1) throw new LckvException($"--gen must be at least 1, got {genLength}");
            var settings = new ThroughputSettings
            {
                Shape = shape, ShapeName = shapeName, WeightDType = weightDType, PromptLength = promptLength, GenLength = genLength,
                KvDType = p.GetValue(kvDType) is { } kv ? KvRows.Parse(kv) : ModelOptions.DefaultKvDType(weightDType), Eviction = evict.Parse(p), BlockSize = bs, MaxBatch = maxB, Seed = p.GetValue(seed), BudgetKind = kind,
            };
            var check = new ThroughputBench(settings);
            foreach (var n in names) ThroughputLayouts.LayerTypes(check.Variant(n).Layout, shape.NumHiddenLayers); // fail early on a bad row
            // StreamingLLM rotates keys and queries by their rank in a bounded store, so a stream may outrun the context
            if (promptLength + genLength > shape.MaxPositionEmbeddings && !names.All(n => check.Variant(n).Eviction.Kind == Cache.EvictionKind.Streaming))
                throw new LckvException($"--prompt {promptLength} + --gen {genLength} exceed the context length {shape.MaxPositionEmbeddings} of {shapeName} (only rows under StreamingLLM may run past it)");
            double? budgetMiB = p.GetValue(budget);
            if (budgetMiB is { } mib)
            {
                if (!(mib > 0) || double.IsInfinity(mib)) throw new LckvException($"--budget must be a positive number of MiB, got {mib}");
                settings = settings with { BudgetBytes = (long)(mib * 1048576) };
            }
            else
            {
                // the tightest budget where the first layout fits one sequence
                settings = settings with { BudgetBytes = new ThroughputBench(settings).BudgetFor(names[0], 1) };
            }
            string? plotPath = p.GetValue(plot);
            if (plotPath is not null && !plotPath.EndsWith(".png", StringComparison.OrdinalIgnoreCase))
                throw new LckvException($"--plot must name a .png file, got '{plotPath}'");

            var bench = new ThroughputBench(settings);
            // a budget no layout can run one sequence in is an error, before the roofline probe
            if (fixedBatch is null && names.Select(n => (Name: n, Bytes: bench.BudgetFor(n, 1))).MinBy(x => x.Bytes) is var least
                && least.Bytes > settings.BudgetBytes)
            {
                var one = bench.Run(least.Name, 1, accountOnly: true).Fit;
                string what = kind == BudgetKind.Total && one.WeightBytes > settings.BudgetBytes
                    ? $"the weights alone of every layout are more (the least, {least.Name}: {one.WeightBytes / 1048576.0:F2} MiB)"
                    : $"no layout fits one sequence (the least, {least.Name}, needs {least.Bytes / 1048576.0:F2} MiB)";
                throw new LckvException($"--budget {settings.BudgetBytes / 1048576.0:F2} MiB is too small: {what}");
            }
            bool noRun = p.GetValue(accountOnly);
            // the machine's limits, measured in the same run, for each row's share of the FMA peak
            RooflineResult? roof = noRun ? null : Roofline.Measure(WorkerPool.Shared.ThreadCount);
            if (roof is { } r0) stderr.WriteLine(r0.ToString());
            stderr.WriteLine($"budget {settings.BudgetBytes / 1048576.0:F2} MiB; {names.Length} layout(s); prompt {promptLength} + gen {genLength}");
            int roundCount = noRun ? 1 : requestedRounds;
            var runs = names.Select(_ => new List<ThroughputRow>()).ToArray();
            for (int round = 1; round <= roundCount; round++)
                for (int i = 0; i < names.Length; i++)
                {
                    string name = names[i], label = roundCount > 1 ? $"{name} ({round}/{roundCount})" : name;
                    var row = noRun ? bench.Run(name, fixedBatch, accountOnly: true) : Progress.Run(label, report =>
                        bench.Run(name, fixedBatch, e => { if (e.Phase == "generate") report((int)e.Done, (int)Math.Max(1, e.Total)); }), stderr);
                    runs[i].Add(row);
                    stderr.WriteLine($"{label}: batch {row.Batch}, {row.TotalTokensPerSecond:F2} tok/s total");
                }
            var rows = runs.Select(ThroughputRow.Median).ToList();
            rows = [.. WithKvOnlyBatch(rows)];

            if (fmt == "json") WriteJson(stdout, settings, rows, roof);
            else WriteMarkdown(stdout, settings, rows, fixedBatch is not null, roof);
            if (plotPath is not null) WritePlot(plotPath, settings, rows);
            return 0;
        });
        return cmd;
    }

    /// <summary>The batch each layout's KV per sequence allows within the first layout's KV bytes.</summary>
    private static IEnumerable<ThroughputRow> WithKvOnlyBatch(List<ThroughputRow> rows)
    {
        long kv = rows[0].Batch > 0 ? rows[0].Fit.KvBytes : 0;
        return rows.Select(r => r with { BatchAtKvBytes = (int)(kv / Math.Max(1, r.Fit.KvBytes / r.Fit.Batch)) });
    }

    private static ThroughputRow? Reference(List<ThroughputRow> rows)
        => rows.FirstOrDefault(r => r.Layout.Equals("llama", StringComparison.OrdinalIgnoreCase) && r.Batch > 0)
           ?? rows.FirstOrDefault(r => r.Batch > 0);

    private static string Ratio(double x, double reference) => reference > 0 ? (x / reference).ToString("F2", CultureInfo.InvariantCulture) + "x" : "-";

    private static string Header(ThroughputSettings s)
        => $"{s.ShapeName} ({Names.DType(s.WeightDType)} weights), budget {s.BudgetBytes / 1048576.0:F2} MiB = {s.BudgetBytes} bytes ({(s.BudgetKind == BudgetKind.KvOnly ? "KV only" : "weights + KV + buffers")}), " +
           $"prompt {s.PromptLength} + gen {s.GenLength}, KV {KvRows.Name(s.KvDType)} in blocks of {s.BlockSize}, greedy, no stop tokens, " +
           $"{WorkerPool.Shared.ThreadCount} thread(s)";

    private static void WriteMarkdown(TextWriter o, ThroughputSettings s, List<ThroughputRow> rows, bool fixedBatch, RooflineResult? roof)
    {
        var reference = Reference(rows);
        double refTotal = reference?.TotalTokensPerSecond ?? 0, peak = roof?.FmaGflops ?? 0;
        o.WriteLine(Header(s));
        if (roof is { } m) o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Machine, measured in this run: FMA peak {m.FmaGflops:F1} GFLOP/s, read bandwidth {m.ReadGBps:F1} GB/s ({m.Threads} thread(s))."));
        o.WriteLine();
        o.WriteLine($"| row | layer_types | KV | eviction | KV layers | KV bytes/token | {(fixedBatch ? "batch" : "max batch")} | prefill tok/s | decode tok/s | decode % of FMA peak | total tok/s | vs {reference?.Layout ?? "-"} | prefill ms/token |");
        o.WriteLine("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rows)
            o.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Layout} | {ThroughputLayouts.Abbreviate(r.LayerTypes)} | {KvRows.Name(r.KvDType)} | {EvictionName(r.Eviction)} | {r.KvLayers} | {r.KvBytesPerToken} | {r.Batch}{(r.Capped ? " (cap)" : "")} | " +
                $"{r.PrefillTokensPerSecond:F1} | {r.DecodeTokensPerSecond:F2} | {(peak > 0 ? (100 * r.DecodeFractionOfPeak(peak)).ToString("F0", CultureInfo.InvariantCulture) + "%" : "-")} | {r.TotalTokensPerSecond:F2} | {Ratio(r.TotalTokensPerSecond, refTotal)} | {1000 * r.PrefillSecondsPerToken:F1} |"));
        if (rows.Any(r => r.Rounds > 1))
        {
            o.WriteLine();
            o.WriteLine($"Times are medians of {rows.Max(r => r.Rounds)} interleaved rounds; total tok/s per round ranged over " +
                string.Join(", ", rows.Where(r => r.Rounds > 1).Select(r => string.Create(CultureInfo.InvariantCulture, $"{r.Layout} {r.TotalMin:F2}-{r.TotalMax:F2}"))) + ".");
        }
        o.WriteLine();
        o.WriteLine("Memory accounting (MiB) of the batch run, and of one more sequence:");
        o.WriteLine();
        o.WriteLine($"| layout | batch | weights | runner scratch | logits | cache tables | KV | total | fits | batch + 1 {(s.BudgetKind == BudgetKind.KvOnly ? "KV" : "total")} | KV-only batch |");
        o.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|");
        foreach (var r in rows)
        {
            var f = r.Fit;
            string fits = r.Batch == 0 ? "no (batch 1 over budget)" : r.FitsBudget ? "yes" : "no (over budget)";
            long nextCharged = r.Next.Charged(s.BudgetKind);
            string next = r.Capped ? $"{Mib(nextCharged)} (cap)" : $"{Mib(nextCharged)}{(nextCharged > s.BudgetBytes ? " > budget" : "")}";
            o.WriteLine($"| {r.Layout} | {r.Batch} | {Mib(f.WeightBytes)} | {Mib(f.ScratchBytes)} | {Mib(f.LogitsBytes)} | {Mib(f.TableBytes)} | {Mib(f.KvBytes)} | {Mib(f.TotalBytes)} | {fits} | {next} | {r.BatchAtKvBytes} |");
        }
        o.WriteLine();
        o.WriteLine($"KV-only batch: sequences of the layout that fit in the KV bytes of {rows[0].Layout}'s batch (the KV-size ratio alone, without the k/v projection weights that sharing also frees).");
    }

    private static string EvictionName(Cache.EvictionSettings e) => e.Kind switch
    {
        Cache.EvictionKind.Streaming => $"streaming {e.Sinks}+{e.Recent}",
        Cache.EvictionKind.H2O => $"h2o {e.Heavy}+{e.Recent}",
        _ => "none",
    };

    private static string Mib(long bytes) => (bytes / 1048576.0).ToString("F1", CultureInfo.InvariantCulture);

    private static void WriteJson(TextWriter o, ThroughputSettings s, List<ThroughputRow> rows, RooflineResult? roof)
    {
        var reference = Reference(rows);
        o.WriteLine(JsonSerializer.Serialize(new
        {
            preset = s.ShapeName, dtype = Names.DType(s.WeightDType), budget_bytes = s.BudgetBytes, budget_kind = s.BudgetKind == BudgetKind.KvOnly ? "kv" : "total", prompt = s.PromptLength, gen = s.GenLength,
            kv_dtype = KvRows.Name(s.KvDType), block_size = s.BlockSize, threads = WorkerPool.Shared.ThreadCount, reference = reference?.Layout,
            fma_peak_gflops = roof?.FmaGflops, read_bandwidth_gbs = roof?.ReadGBps,
            rows = rows.Select(r => new
            {
                layout = r.Layout, layer_types = r.LayerTypes, kv_dtype = KvRows.Name(r.KvDType), eviction = EvictionName(r.Eviction),
                kv_layers = r.KvLayers, kv_bytes_per_token = r.KvBytesPerToken, matmul_parameters = r.MatMulParameters,
                decode_fraction_of_fma_peak = roof is { } m ? r.DecodeFractionOfPeak(m.FmaGflops) : (double?)null,
                batch = r.Batch, searched = r.Searched, capped = r.Capped, fits_budget = r.FitsBudget, uses_plan = r.UsesPlan,
                memory = Account(r.Fit), next_batch_memory = Account(r.Next), pool_bytes = r.PoolBytes, kv_only_batch = r.BatchAtKvBytes,
                prompt_tokens = r.PromptTokens, generated_tokens = r.GeneratedTokens, decode_tokens = r.DecodeTokens,
                prefill_seconds = r.PrefillSeconds, decode_seconds = r.DecodeSeconds, total_seconds = r.TotalSeconds,
                prefill_tokens_per_second = r.PrefillTokensPerSecond, decode_tokens_per_second = r.DecodeTokensPerSecond,
                total_tokens_per_second = r.TotalTokensPerSecond, prefill_seconds_per_token = r.PrefillSecondsPerToken,
                ratio_to_reference = reference is { TotalTokensPerSecond: > 0 } ? r.TotalTokensPerSecond / reference.TotalTokensPerSecond : 0,
                rounds = r.Rounds, total_tokens_per_second_min = r.TotalMin, total_tokens_per_second_max = r.TotalMax,
            }),
        }));
    }

    private static object Account(MemoryAccount a) => new
    {
        batch = a.Batch, weights = a.WeightBytes, scratch = a.ScratchBytes, logits = a.LogitsBytes, tables = a.TableBytes, kv = a.KvBytes, total = a.TotalBytes,
    };

    private static void WritePlot(string path, ThroughputSettings s, List<ThroughputRow> rows)
    {
        var names = rows.Select(r => r.Layout).ToList();
        var chart = BarChart.Render(
            $"{s.ShapeName} throughput under {s.BudgetBytes / 1048576.0:F1} MiB{(s.BudgetKind == BudgetKind.KvOnly ? " of KV" : "")}",
            $"prompt {s.PromptLength} + gen {s.GenLength}, {Names.DType(s.WeightDType)} weights, {KvRows.Name(s.KvDType)} KV, greedy",
            names,
            [
                new BarPanel("total tok/s (incl. prefill)", rows.Select(r => r.TotalTokensPerSecond).ToList(), "0.0"),
                new BarPanel("max batch", rows.Select(r => (double)r.Batch).ToList(), "0"),
                new BarPanel("KV bytes/token (KiB)", rows.Select(r => r.KvBytesPerToken / 1024.0).ToList(), "0.#"),
            ]);
        Png.Save(path, chart.Width, chart.Height, chart.Rgb);
    }

    private static DType ParseDType(string s, string option)
    {
        try { return DTypes.ParseFloat(s); }
        catch (FormatException e) { throw new LckvException($"{option}: {e.Message}"); }
    }
}
