using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Lckv.Diagnostics;
using Lckv.Generation;
using Lckv.Numerics;

namespace Lckv.Cli;

/// <summary>
/// lckv bench: llama-bench style prompt processing (pp) and text generation (tg) tokens/s, mean +- sd over
/// repetitions, at given batch sizes and context depths, each beside the roofline measured in the same run.
/// </summary>
public static class BenchCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var mo = new ModelOptions();
        var prompt = new Option<string>("--n-prompt", "-p") { Description = "prompt lengths for pp tests, comma-separated (0 = none)", DefaultValueFactory = _ => "64" };
        var gen = new Option<string>("--n-gen", "-n") { Description = "generated lengths for tg tests, comma-separated (0 = none)", DefaultValueFactory = _ => "32" };
        var batch = new Option<string>("--batch", "-b") { Description = "batch sizes (sequences), comma-separated", DefaultValueFactory = _ => "1,16" };
        var depth = new Option<string>("--depth", "-d") { Description = "context depths (tokens already in the cache), comma-separated", DefaultValueFactory = _ => "0" };
        var reps = new Option<int>("--repetitions", "-r") { Description = "repetitions per test", DefaultValueFactory = _ => 5 };
        var format = new Option<string>("--output", "-o") { Description = "md | json", DefaultValueFactory = _ => "md" };
        var cmd = new Command("bench", "benchmark prompt processing and generation against the machine's roofline");
        mo.AddTo(cmd, ModelUses.WeightSeed | ModelUses.KvDType | ModelUses.BlockSize | ModelUses.Threads | ModelUses.LongContext);
        var eo = EvictionOptions.AddTo(cmd);
        foreach (var o in new Option[] { prompt, gen, batch, depth, reps, format }) cmd.Options.Add(o);
        cmd.Subcommands.Add(ThroughputCommand.Create(stdout, stderr));
        cmd.Subcommands.Add(ServeBenchCommand.Create(stdout, stderr));
        cmd.Subcommands.Add(ServeBenchCommand.CreateClients(stdout));
        cmd.SetAction(p =>
        {
            var pps = Ints(p.GetValue(prompt)!, "--n-prompt", allowZero: true);
            var tgs = Ints(p.GetValue(gen)!, "--n-gen", allowZero: true);
            var batches = Ints(p.GetValue(batch)!, "--batch", allowZero: false);
            var depths = Ints(p.GetValue(depth)!, "--depth", allowZero: true);
            int r = p.GetValue(reps);
            if (r < 1) throw new LckvException($"--repetitions must be at least 1, got {r}");
            string fmt = p.GetValue(format)!;
            if (fmt is not ("md" or "json")) throw new LckvException($"--output must be md or json, got '{fmt}'");
            if (p.GetValue(mo.Model) is null && p.GetValue(mo.Preset) is null) throw new LckvException("give --model <folder> or --preset small|tinyllama-1.1b");

            var tests = new List<(BenchKind Kind, int Tokens, int Batch, int Depth)>();
            foreach (int d in depths)
                foreach (int b in batches)
                {
                    foreach (int n in pps.Where(x => x > 0)) tests.Add((BenchKind.PromptProcessing, n, b, d));
                    foreach (int n in tgs.Where(x => x > 0)) tests.Add((BenchKind.TextGeneration, n, b, d));
                }
            if (tests.Count == 0) throw new LckvException("nothing to run: every --n-prompt and --n-gen is 0");

            var eviction = eo.Parse(p);
            using var model = Progress.Run("loading", _ => mo.LoadModel(p, stderr, eviction), stderr);
            eviction = eo.WithLess(p, eviction, model.Config, model.Map, stderr);
            foreach (var t in tests) SpeedBench.CheckSizes(model, t.Tokens, t.Batch, t.Depth, r); // before the roofline probe
            long afterLoad = System.Diagnostics.Process.GetCurrentProcess().WorkingSet64; // before the roofline probe's buffers
            int threads = WorkerPool.Shared.ThreadCount;
            stderr.WriteLine($"measuring the roofline on {threads} thread(s)...");
            using var probe = new Roofline.BandwidthProbe(threads); // one 256 MiB array for every bandwidth probe of the run
            var roof = new RooflineResult(threads, Roofline.MeasureFmaPeak(threads), probe.Measure());
            var machine = new MachineRoofline(threads, roof.FmaGflops, roof.ReadGBps);
            var kvDType = mo.KvStorage(p, model);
            // each repetition is judged against bandwidth probes taken around it, since a shared host's bandwidth moves;
            // a repetition that lost CPU time to the host (steal) runs again
            var bench = new SpeedBench(model, kvDType, mo.Block(p), machine)
            {
                Eviction = eviction,
                BandwidthProbe = probe.Measure,
                StealSeconds = StealTime.ReadSeconds() is null ? null : StealTime.ReadSeconds,
            };

            var results = Progress.Run("bench", report =>
            {
                var list = new List<BenchResult>();
                foreach (var t in tests)
                {
                    list.Add(bench.Run(t.Kind, t.Tokens, t.Batch, t.Depth, r));
                    report(list.Count, tests.Count);
                }
                return list;
            }, stderr);
            // the FMA peak is measured again after the tests too, and every result judged against the better of the two
            stderr.WriteLine("measuring the roofline again...");
            var after = new RooflineResult(threads, Roofline.MeasureFmaPeak(threads), probe.Measure());
            machine = new MachineRoofline(threads, Math.Max(roof.FmaGflops, after.FmaGflops), Math.Max(roof.ReadGBps, after.ReadGBps));
            bench.Machine = machine;
            results = results.Select(bench.Rejudge).ToList();

            var monitor = WorkerPool.Shared.Cores as CoreMonitor;
            long peak = System.Diagnostics.Process.GetCurrentProcess().PeakWorkingSet64;
            long kvPeak = results.Count == 0 ? 0 : bench.LargestPoolBytes;
            string name = model.Source.StartsWith("preset:", StringComparison.Ordinal) ? model.Source[7..] : Path.GetFileName(Path.TrimEndingDirectorySeparator(model.Source));
            string dtype = Names.DType(model.Weights.Embed.DType);
            if (fmt == "json")
            {
                stdout.WriteLine(JsonSerializer.Serialize(new
                {
                    model = name, parameters = model.ParameterCount, weight_bytes = model.Weights.Bytes, dtype,
                    layer_types = model.Map.ToString(), kv_dtype = KvRows.Name(kvDType), kv_bytes_per_token = model.KvBytesPerToken(kvDType),
                    working_set_after_load_bytes = afterLoad, peak_working_set_bytes = peak, largest_kv_pool_bytes = kvPeak,
                    threads, contended_core_samples = monitor?.Contended, core_samples = monitor?.Samples, fma_peak_gflops = machine.PeakGflops, read_bandwidth_gbs = machine.BandwidthGBs,
                    results = results.Select(x => new
                    {
                        test = x.Name, batch = x.Batch, depth = x.Depth, tokens_per_second = x.TokensPerSecond.Mean,
                        stddev = x.TokensPerSecond.StdDev, samples = x.TokensPerSecond.Samples,
                        roofline_tokens_per_second = x.RooflineTokensPerSecond, bound = x.Bound, fraction_of_roofline = x.FractionOfRoofline,
                        cache_resident = Share(x, bench.StepBytes(x.Kind, x.Tokens, x.Batch, x.Depth), CpuCache.LastLevelBytes()) == "cache-resident",
                        repetition_read_bandwidth_gbs = x.RepetitionBandwidths, probe_read_bandwidth_gbs = x.Probes,
                        repetition_fractions = x.RepetitionFractions, steady = x.Steady, fraction_spread = x.FractionSpread, probe_swing = x.ProbeSwing,
                        reruns = x.Reruns, rerun_steal_seconds = x.RerunSteal, repetition_steal_seconds = x.Steal, runs_per_repetition = x.RunsPerRepetition,
                    }),
                }));
                return 0;
            }
            stdout.WriteLine($"model {name}: {Names.Count(model.ParameterCount)} parameters, weights {dtype} ({model.Weights.Bytes / 1048576.0:F0} MiB), KV {KvRows.Name(kvDType)} {model.KvBytesPerToken(kvDType)} bytes/token, layer_types {model.Map}");
            var repBw = results.SelectMany(x => x.RepetitionBandwidths ?? []).ToArray();
            string beside = repBw.Length == 0 ? "" : $"; each repetition is judged against the read bandwidth probed just before and after it, {repBw.Min():F1}-{repBw.Max():F1} GB/s in this run";
            stdout.WriteLine($"machine: {threads} thread(s), FMA peak {machine.PeakGflops:F1} GFLOP/s, read bandwidth {machine.BandwidthGBs:F1} GB/s (measured in this run, the better of before the tests {roof.FmaGflops:F1} GFLOP/s, {roof.ReadGBps:F1} GB/s and after them {after.FmaGflops:F1} GFLOP/s, {after.ReadGBps:F1} GB/s{beside})");
            if (monitor is { Contended: > 0 } cores)
                stdout.WriteLine($"contention: another process held a core in {cores.Contended} of {cores.Samples} samples (every 10 ms of work); the kernels ran on fewer threads then, which lowers these figures");
            int reruns = results.Sum(x => x.Reruns);
            if (reruns > 0)
                stdout.WriteLine($"steal: {reruns} repetition(s) ran again: the host gave {1000 * results.Sum(x => x.RerunSteal):F0} ms of this machine's CPU time to other guests during them (/proc/stat)");
            stdout.WriteLine($"memory: working set after load {afterLoad / 1048576.0:F0} MiB ({(double)afterLoad / model.Weights.Bytes:F2}x the weights); peak {peak / 1048576.0:F0} MiB including the bandwidth probe; largest KV pool {kvPeak / 1048576.0:F1} MiB");
            stdout.WriteLine();
            stdout.WriteLine("| test | batch | depth | t/s | roofline t/s | bound | % of roofline |");
            stdout.WriteLine("|---|---:|---:|---:|---:|---|---:|");
            long? cache = CpuCache.LastLevelBytes();
            foreach (var x in results)
                stdout.WriteLine($"| {x.Name} | {x.Batch} | {x.Depth} | {Rate(x.TokensPerSecond)} | {x.RooflineTokensPerSecond:F1} | {x.Bound} | " +
                    $"{Share(x, bench.StepBytes(x.Kind, x.Tokens, x.Batch, x.Depth), cache)}{(x.Steady ? "" : " (unsteady)")} |");
            var unsteady = results.Where(x => !x.Steady).ToList();
            if (unsteady.Count > 0) stdout.WriteLine();
            foreach (var x in unsteady) stdout.WriteLine(Unsteady(x));
            return 0;
        });
        return cmd;
    }

    /// <summary>"12.3 ± 0.4", or "12.3" for one repetition (no spread to show).</summary>
    internal static string Rate(Stats s)
        => s.Samples.Count > 1 ? string.Create(CultureInfo.InvariantCulture, $"{s.Mean:F1} ± {s.StdDev:F1}") : s.Mean.ToString("F1", CultureInfo.InvariantCulture);

    /// <summary>A test's share of its roofline; "cache-resident" for a memory-bound test whose step reads fit in the
    /// last-level cache (or beat the bandwidth measured from memory), which the memory roofline does not describe.</summary>
    internal static string Share(BenchResult x, double stepBytes, long? cacheBytes)
        => x.Bound == "memory" && (stepBytes <= cacheBytes || x.FractionOfRoofline > 1)
            ? "cache-resident"
            : string.Create(CultureInfo.InvariantCulture, $"{100 * x.FractionOfRoofline:F0}%");

    // why a test's figure is marked unsteady, in one line
    internal static string Unsteady(BenchResult x)
    {
        var f = x.RepetitionFractions;
        var why = new List<string>();
        if (x.FractionSpread > BenchResult.MaxFractionSpread)
            why.Add($"its repetitions ({1000 * x.RepetitionSeconds:F0} ms each) reached {100 * f.Min():F0}-{100 * f.Max():F0}% of their own rooflines");
        if (x.ProbeSwing > BenchResult.MaxProbeSwing)
            why.Add($"the read bandwidth moved from {x.Probes![x.ProbeSwingAt]:F1} to {x.Probes[x.ProbeSwingAt + 1]:F1} GB/s between two probes");
        if (x.KeptSteal > 0)
            why.Add($"the host took {1000 * x.KeptSteal:F0} ms of CPU time during repetitions kept after {x.Reruns} reruns");
        return $"unsteady: {x.Name} at batch {x.Batch}, depth {x.Depth}: {string.Join(", and ", why)}; the machine's load changed during the test, so its figure says more about the machine than the engine: rerun it";
    }

    private static int[] Ints(string text, string option, bool allowZero)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0) throw new LckvException($"{option} is empty");
        return parts.Select(s => int.TryParse(s, out int v) && (v > 0 || (allowZero && v == 0))
            ? v : throw new LckvException($"{option}: '{s}' is not a {(allowZero ? "non-negative" : "positive")} integer")).ToArray();
    }
}
