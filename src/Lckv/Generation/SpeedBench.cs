using System.Diagnostics;
using Lckv.Cache;
using Lckv.Model;
using Lckv.Diagnostics;
using Lckv.Numerics;

namespace Lckv.Generation;

/// <summary>Mean and sample standard deviation of repeated measurements.</summary>
public sealed record Stats(double Mean, double StdDev, IReadOnlyList<double> Samples)
{
    public static Stats Of(IReadOnlyList<double> xs)
    {
        double mean = xs.Average();
        double sd = xs.Count > 1 ? Math.Sqrt(xs.Sum(x => (x - mean) * (x - mean)) / (xs.Count - 1)) : 0;
        return new Stats(mean, sd, xs);
    }
}

/// <summary>The machine's limits measured in the run: f32 FMA peak and read bandwidth for a thread count.</summary>
public sealed record MachineRoofline(int Threads, double PeakGflops, double BandwidthGBs);

/// <summary>What a test is: pp (prompt processing) or tg (text generation), llama-bench style.</summary>
public enum BenchKind { PromptProcessing, TextGeneration }

/// <param name="RepetitionBandwidths">when the bench probed the read bandwidth between repetitions: for each timed
/// repetition, the better of the probes just before and just after it (GB/s); the roofline is then the mean of the
/// repetitions' own rooflines</param>
/// <param name="Probes">those probes as taken: after the warm-up, then after each repetition (GB/s)</param>
/// <param name="RepetitionRooflines">each timed repetition's own roofline (tokens/s)</param>
/// <param name="Reruns">repetitions run again because the host took CPU time from this machine during them</param>
/// <param name="RerunSteal">the CPU time the host took during those (seconds, all CPUs)</param>
/// <param name="Steal">CPU time the host took during each kept repetition (seconds; null where the kernel does not
/// say): non-zero only when the reruns ran out</param>
/// <param name="RunsPerRepetition">runs of the test timed together as one repetition (see <see cref="SpeedBench.MinRepetitionSeconds"/>)</param>
public sealed record BenchResult(BenchKind Kind, int Tokens, int Batch, int Depth, Stats TokensPerSecond, double RooflineTokensPerSecond, string Bound,
    IReadOnlyList<double>? RepetitionBandwidths = null, IReadOnlyList<double>? Probes = null, IReadOnlyList<double>? RepetitionRooflines = null,
    int Reruns = 0, double RerunSteal = 0, IReadOnlyList<double>? Steal = null, int RunsPerRepetition = 1)
{
    /// <summary>How long one timed repetition took on average (seconds).</summary>
    public double RepetitionSeconds => TokensPerSecond.Mean > 0 ? RunsPerRepetition * Batch * (double)Tokens / TokensPerSecond.Mean : 0;

    public string Name => (Kind == BenchKind.PromptProcessing ? "pp" : "tg") + Tokens;
    public double FractionOfRoofline => RooflineTokensPerSecond > 0 ? TokensPerSecond.Mean / RooflineTokensPerSecond : 0;

    /// <summary>Each timed repetition's tokens/s over its own roofline.</summary>
    public IReadOnlyList<double> RepetitionFractions => TokensPerSecond.Samples
        .Select((t, i) => RepetitionRooflines is { } r && i < r.Count ? (r[i] > 0 ? t / r[i] : 0) : (RooflineTokensPerSecond > 0 ? t / RooflineTokensPerSecond : 0))
        .ToArray();

    /// <summary>The highest repetition fraction over the lowest (1: all alike).</summary>
    public double FractionSpread
    {
        get
        {
            var f = RepetitionFractions;
            return f.Count == 0 || f.Min() <= 0 ? 1 : f.Max() / f.Min();
        }
    }

    /// <summary>The largest change between two consecutive bandwidth probes, as a fraction of the larger (0 without probes).</summary>
    public double ProbeSwing => ProbeSwingAt is int i and >= 0 ? Swing(Probes![i], Probes[i + 1]) : 0;

    /// <summary>Where that change is: between probe i and probe i + 1 (-1 without two probes).</summary>
    public int ProbeSwingAt => Probes is { Count: > 1 } p ? Enumerable.Range(0, p.Count - 1).MaxBy(i => Swing(p[i], p[i + 1])) : -1;

    private static double Swing(double a, double b) => Math.Max(a, b) > 0 ? Math.Abs(a - b) / Math.Max(a, b) : 0;

    /// <summary>
    /// Whether the machine held still during the test: the repetitions reached nearly the same fraction of their own
    /// rooflines (<see cref="MaxFractionSpread"/>) and no probe moved from the one before it by more than
    /// <see cref="MaxProbeSwing"/>. When it did not, a neighbour's load came or went while the test ran (between the
    /// probes, or within a repetition), and the figure says more about the machine than about the engine.
    /// </summary>
    public bool Steady => FractionSpread <= MaxFractionSpread && ProbeSwing <= MaxProbeSwing && KeptSteal == 0;

    /// <summary>CPU time the host took during the kept repetitions (seconds).</summary>
    public double KeptSteal => Steal?.Sum() ?? 0;

    /// <summary>
    /// The largest spread of the repetitions' fractions of roofline a steady test shows: above the spread of quiet
    /// runs, below what a neighbour's burst within one repetition causes (docs/benchmarks.md has the measurements).
    /// </summary>
    public const double MaxFractionSpread = 1.15;

    /// <summary>
    /// The largest change between consecutive bandwidth probes a steady test shows: above what quiet runs show, below
    /// the jumps of a shared host's bandwidth from one minute to the next (docs/benchmarks.md).
    /// </summary>
    public const double MaxProbeSwing = 0.10;
}

/// <summary>
/// Measures prompt processing and text generation throughput of a model with a paged KV cache, and the roofline of
/// each test from the model's bytes and FLOP against the machine's measured limits. Tokens are fixed random ids;
/// tokenization and sampling are excluded.
/// </summary>
public sealed class SpeedBench
{
    private readonly LlamaModel _model;
    private readonly DType _kvDType;
    private readonly int _blockSize;
    /// <summary>The limits results are compared with; set it to re-judge results with a later measurement.</summary>
    public MachineRoofline Machine { get; set; }

    /// <summary>A result judged against the current <see cref="Machine"/>.</summary>
    public BenchResult Rejudge(BenchResult r)
    {
        var (roof, bound, each) = Judge(r.Kind, r.Tokens, r.Batch, r.Depth, r.RepetitionBandwidths);
        return r with { RooflineTokensPerSecond = roof, Bound = bound, RepetitionRooflines = each };
    }

    /// <summary>
    /// Read bandwidth probe (GB/s) taken after the warm-up, then after every timed repetition, so that each repetition
    /// is judged against the machine as it was around it. Null: every repetition is judged against <see cref="Machine"/>.
    /// </summary>
    public Func<double>? BandwidthProbe { get; set; }

    /// <summary>
    /// CPU time the host has taken from this machine so far (seconds, e.g. <see cref="StealTime.ReadSeconds"/>); null
    /// result: unknown. A timed repetition during which it grows is run again, up to as many extra times as there
    /// are repetitions; after that the repetitions are kept and the result says how much was taken.
    /// </summary>
    public Func<double?>? StealSeconds { get; set; }

    // the roofline of a test: against Machine, or (per-repetition bandwidths) the mean of the repetitions' rooflines
    // with Machine's FMA peak; the bound is the one most repetitions hit
    private (double TokensPerSecond, string Bound, double[]? PerRepetition) Judge(BenchKind kind, int tokens, int batch, int depth, IReadOnlyList<double>? bandwidths)
    {
        if (bandwidths is null || bandwidths.Count == 0)
        {
            var (t, b) = Roofline(kind, tokens, batch, depth);
            return (t, b, null);
        }
        var each = new double[bandwidths.Count];
        int memory = 0;
        for (int i = 0; i < each.Length; i++)
        {
            var (roof, bound) = Roofline(kind, tokens, batch, depth, Machine.PeakGflops, bandwidths[i]);
            each[i] = roof;
            if (bound == "memory") memory++;
        }
        return (each.Average(), 2 * memory >= each.Length ? "memory" : "compute", each);
    }

    public SpeedBench(LlamaModel model, DType kvDType, int blockSize, MachineRoofline machine)
    {
        _model = model;
        _kvDType = kvDType;
        _blockSize = blockSize;
        Machine = machine;
    }

    /// <summary>
    /// Untimed repetitions run first until this much time has passed and the JIT is quiet (at least one, at most
    /// <see cref="MaxWarmups"/>): the JIT recompiles hot methods with profile data for the first seconds, on a thread
    /// that takes a core from the test, and a timed run in that phase is slower than the steady state a server sees.
    /// </summary>
    public const double WarmupSeconds = 2.0;

    /// <summary>The JIT is quiet when compiling took less than this fraction of the last warm-up run.</summary>
    public const double QuietJitFraction = 0.02;

    public const int MaxWarmups = 20;

    /// <summary>
    /// A timed repetition runs the test as many times as it takes to last about this long (judged by the last warm-up
    /// run; seconds): a repetition of a short test lasts about as long as a burst of the neighbours' memory traffic on
    /// a shared host, so one burst would decide its figure.
    /// </summary>
    public double MinRepetitionSeconds { get; set; } = 0.5;

    public const int MaxRunsPerRepetition = 1000;

    /// <summary>What every KV store keeps (the rooflines count the entries a store holds).</summary>
    public EvictionSettings Eviction { get; init; } = EvictionSettings.None;

    /// <summary>The largest KV pool any test has allocated (for the memory report).</summary>
    public long LargestPoolBytes { get; private set; }

    /// <summary>LckvException unless a test of these sizes fits the model's context: callers check every test of a run
    /// before any of them (or a roofline probe) runs.</summary>
    public static void CheckSizes(LlamaModel model, int tokens, int batch, int depth, int repetitions)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (tokens < 1 || batch < 1 || depth < 0 || repetitions < 1) throw new LckvException("bench sizes must be positive");
        if ((long)depth + tokens > model.ContextLength)
            throw new LckvException($"depth {depth} + {tokens} tokens exceed the context length {model.ContextLength}") { Settings = ["Depth", "ContextLength"] };
    }

    public BenchResult Run(BenchKind kind, int tokens, int batch, int depth, int repetitions)
    {
        CheckSizes(_model, tokens, batch, depth, repetitions);
        int total = depth + tokens;
        var layout = _model.KvLayout(_blockSize, _kvDType);
        bool upward = _model.Map.AnyAttendsTop;
        int maxRows = kind == BenchKind.PromptProcessing ? batch * tokens : batch;
        // a store that evicts takes the depth as one prompt (the policy runs after each step)
        bool evicts = Eviction.Kind != EvictionKind.None;
        maxRows = Math.Max(maxRows, upward || evicts ? Math.Max(depth, tokens) : Math.Min(depth, 512));
        using var pool = new KvBlockPool(layout, _model.KvBlocksFor(total, _blockSize, maxRows, Eviction) * batch * layout.BlockBytes);
        LargestPoolBytes = Math.Max(LargestPoolBytes, pool.CapacityBytes);
        var engine = new GenerationEngine(_model, _model.CreateCache(pool, maxRows, Eviction),
            new EngineOptions { MaxStepTokens = maxRows, MaxSequences = batch, MaxPromptTokens = maxRows });
        var rng = new SplitMix64(1234);
        int Token() => 3 + (int)(rng.Next() % (ulong)(_model.Vocab - 3));
        var samples = new List<double>(repetitions);
        // the depth each sequence is filled to before the test, and the test's tokens: fixed random ids
        var prompts = Enumerable.Range(0, batch).Select(_ => Enumerable.Range(0, depth).Select(_ => Token()).ToArray()).ToArray();
        var ids = new int[Math.Max(batch * tokens, maxRows)];
        for (int i = 0; i < ids.Length; i++) ids[i] = Token();
        var seqs = new EngineSequence[batch];
        var warm = Stopwatch.StartNew();
        var probes = BandwidthProbe is null ? null : new List<double>(repetitions + 1);
        var steal = StealSeconds is null ? null : new List<double>(repetitions);
        int reruns = 0;
        double rerunSteal = 0;
        // one run of the test: teacher-forced sequences admitted and filled to the depth (untimed), the test timed,
        // sequences retired
        double Once()
        {
            for (int b = 0; b < batch; b++) seqs[b] = engine.Admit(new GenerationRequest { Prompt = prompts[b], MaxNewTokens = tokens });
            while (engine.HasWork) engine.Step();
            var sw = Stopwatch.StartNew();
            if (kind == BenchKind.PromptProcessing)
            {
                // the whole batch's prompts in as few steps as the runner allows (exact for causal layouts)
                for (int b = 0; b < batch; b++) engine.Feed(seqs[b], ids.AsSpan(b * tokens, tokens));
                while (engine.HasWork) engine.Step();
            }
            else
            {
                // one token per sequence per step
                for (int t = 0; t < tokens; t++)
                {
                    for (int b = 0; b < batch; b++) engine.Feed(seqs[b], ids.AsSpan((t * batch + b) % ids.Length, 1));
                    engine.Step();
                }
            }
            double seconds = sw.Elapsed.TotalSeconds;
            foreach (var s in seqs) engine.Retire(s);
            return seconds;
        }

        int runs = 0;
        double fastestWarm = double.MaxValue, lastJit = 0; // the fastest untimed run sizes the repetitions: one slow run (a pause, a compile) would make them short
        for (int warmups = 0; samples.Count < repetitions;)
        {
            bool timed = warmups > 0 && (warmups >= MaxWarmups || (warm.Elapsed.TotalSeconds >= WarmupSeconds && lastJit < QuietJitFraction));
            if (!timed)
            {
                warmups++;
                var jit0 = System.Runtime.JitInfo.GetCompilationTime();
                long t0 = Stopwatch.GetTimestamp();
                fastestWarm = Math.Min(fastestWarm, Once());
                lastJit = (System.Runtime.JitInfo.GetCompilationTime() - jit0).TotalSeconds / Math.Max(Stopwatch.GetElapsedTime(t0).TotalSeconds, 1e-9);
                continue;
            }
            if (runs == 0) runs = (int)Math.Clamp(Math.Ceiling(MinRepetitionSeconds / Math.Max(fastestWarm, 1e-9)), 1, MaxRunsPerRepetition);
            if (probes is { Count: 0 }) probes.Add(BandwidthProbe!());
            double? steal0 = StealSeconds?.Invoke();
            double seconds = 0;
            for (int r = 0; r < runs; r++) seconds += Once();
            double stolen = steal0 is double before && StealSeconds?.Invoke() is double after ? Math.Max(0, after - before) : 0;
            bool rerun = stolen > 0 && reruns < repetitions;
            if (rerun)
            {
                reruns++;
                rerunSteal += stolen;
            }
            else
            {
                samples.Add(runs * batch * (double)tokens / seconds);
                steal?.Add(stolen);
            }
            // the probe before the next repetition: after a rerun it replaces the one taken before that repetition
            if (probes is not null)
            {
                if (rerun) probes[^1] = BandwidthProbe!();
                else probes.Add(BandwidthProbe!());
            }
        }
        double[]? bandwidths = probes is null ? null : Enumerable.Range(0, repetitions).Select(i => Math.Max(probes[i], probes[i + 1])).ToArray();
        var (roof, bound, each) = Judge(kind, tokens, batch, depth, bandwidths);
        return new BenchResult(kind, tokens, batch, depth, Stats.Of(samples), roof, bound, bandwidths, probes, each, reruns, rerunSteal, steal, runs);
    }

    /// <summary>
    /// The best tokens/s the machine allows for a test: the lower of the compute bound (FLOP of weights and attention
    /// at the FMA peak) and the memory bound (weights once per step plus the KV every layer reads, at the read bandwidth).
    /// </summary>
    public (double TokensPerSecond, string Bound) Roofline(BenchKind kind, int tokens, int batch, int depth)
        => Roofline(kind, tokens, batch, depth, Machine.PeakGflops, Machine.BandwidthGBs);

    /// <summary>Bytes one step of a test reads: the weights, and in decoding each sequence's KV in every layer.</summary>
    public double StepBytes(BenchKind kind, int tokens, int batch, int depth)
    {
        var c = _model.Config;
        double kvRowBytes = 2.0 * c.NumKeyValueHeads * KvRows.RowBytes(_kvDType, c.HeadDim); // one position of one layer
        double avgContext = depth + (tokens + 1) / 2.0;
        if (Eviction.Kind != EvictionKind.None) avgContext = Math.Min(avgContext, Eviction.Budget + 1);
        return _model.DecodeWeightBytes + (kind == BenchKind.TextGeneration ? batch * c.NumHiddenLayers * avgContext * kvRowBytes : 0);
    }

    /// <summary>The roofline of a test against the given FMA peak (GFLOP/s) and read bandwidth (GB/s).</summary>
    public (double TokensPerSecond, string Bound) Roofline(BenchKind kind, int tokens, int batch, int depth, double peakGflops, double bandwidthGBs)
    {
        var c = _model.Config;
        double avgContext = depth + (tokens + 1) / 2.0;
        // a store that evicts holds at most its budget and the step's token
        if (Eviction.Kind != EvictionKind.None) avgContext = Math.Min(avgContext, Eviction.Budget + 1);
        // attention: q·k and p·v for every head over the visible context, in every layer
        double attnFlops = 4.0 * c.NumHiddenLayers * c.NumAttentionHeads * c.HeadDim * avgContext;
        double flopsPerToken = _model.FlopsPerToken + attnFlops;
        double compute = peakGflops * 1e9 / flopsPerToken;
        double weights = _model.DecodeWeightBytes;
        double memory;
        if (kind == BenchKind.TextGeneration)
        {
            // per step: all weights once, and each sequence's KV once per layer that reads it
            memory = batch * bandwidthGBs * 1e9 / StepBytes(kind, tokens, batch, depth);
        }
        else
        {
            memory = batch * (double)tokens * bandwidthGBs * 1e9 / weights;
        }
        return compute < memory ? (compute, "compute") : (memory, "memory");
    }
}
