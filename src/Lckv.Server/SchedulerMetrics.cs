using System.Diagnostics;
using Lckv.Generation;
using Prometheus;

namespace Lckv.Server;

/// <summary>
/// A scheduler's Prometheus metrics, in a registry of its own (so that several schedulers in one process keep
/// separate counts): queue and KV gauges sampled when scraped, token and request counters updated as sequences end,
/// and latency histograms observed on the loop's thread without allocating.
/// </summary>
public sealed class SchedulerMetrics
{
    /// <summary>Finish reasons, as the requests_finished counter labels them.</summary>
    internal enum Reason { Stop, Length, Cancelled, Error }

    private readonly Counter.Child[] _finished;
    private readonly Counter _promptTokens;
    private readonly Counter _generationTokens;
    private readonly Histogram _firstToken;
    private readonly Histogram _interToken;
    private readonly Histogram _step;

    internal SchedulerMetrics(BatchScheduler scheduler)
    {
        Registry = Metrics.NewCustomRegistry();
        var factory = Metrics.WithCustomRegistry(Registry);
        var running = factory.CreateGauge("lckv_requests_running", "Requests admitted to the engine (holding KV blocks).");
        var waiting = factory.CreateGauge("lckv_requests_waiting", "Requests waiting in the queue for admission.");
        var used = factory.CreateGauge("lckv_kv_blocks_used", "KV blocks in use in the pool.");
        var free = factory.CreateGauge("lckv_kv_blocks_free", "KV blocks free in the pool.");
        var pool = scheduler.Engine.Cache.Pool;
        // gauges read the live values at scrape time: nothing to keep up to date on the loop
        Registry.AddBeforeCollectCallback(() =>
        {
            running.Set(scheduler.Running);
            waiting.Set(scheduler.Waiting);
            used.Set(pool.UsedBlocks);
            free.Set(pool.FreeBlocks);
        });
        _promptTokens = factory.CreateCounter("lckv_prompt_tokens_total", "Prompt tokens evaluated, counted as each request ends.");
        _generationTokens = factory.CreateCounter("lckv_generation_tokens_total", "Tokens generated (stop tokens excluded), counted as each request ends.");
        var finished = factory.CreateCounter("lckv_requests_finished_total", "Requests ended, by finish reason (stop, length, cancelled, error).", "reason");
        _finished = [finished.WithLabels("stop"), finished.WithLabels("length"), finished.WithLabels("cancelled"), finished.WithLabels("error")];
        _firstToken = factory.CreateHistogram("lckv_time_to_first_token_seconds", "Time from a request's arrival (queueing included) to its first token.",
            new HistogramConfiguration { Buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60] });
        _interToken = factory.CreateHistogram("lckv_inter_token_latency_seconds", "Time between consecutive tokens of a request.",
            new HistogramConfiguration { Buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5] });
        _step = factory.CreateHistogram("lckv_step_duration_seconds", "Duration of one engine step (every running sequence evaluated once).",
            new HistogramConfiguration { Buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5] });
    }

    /// <summary>The registry to export (LckvServer serves it at /metrics).</summary>
    public CollectorRegistry Registry { get; }

    /// <summary>A job's token arrived: the first observes the time to first token, later ones the gap since the last.</summary>
    internal void Token(ref long last, long submitted)
    {
        long now = Stopwatch.GetTimestamp();
        if (last == 0) _firstToken.Observe(Stopwatch.GetElapsedTime(submitted, now).TotalSeconds);
        else _interToken.Observe(Stopwatch.GetElapsedTime(last, now).TotalSeconds);
        last = now;
    }

    internal void Step(long started) => _step.Observe(Stopwatch.GetElapsedTime(started).TotalSeconds);

    /// <summary>A job ended; its sequence (null when it never left the queue) gives the tokens it evaluated and generated.</summary>
    internal void Ended(Reason reason, EngineSequence? sequence)
    {
        _finished[(int)reason].Inc();
        if (sequence is null) return;
        _promptTokens.Inc(Math.Min(sequence.Position, sequence.PromptLength));
        _generationTokens.Inc(sequence.Output.Count);
    }

    internal static Reason ReasonOf(FinishReason finish) => finish is FinishReason.Eos or FinishReason.StopString ? Reason.Stop : Reason.Length;
}
