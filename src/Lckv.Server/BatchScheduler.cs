using System.Runtime.InteropServices;
using System.Threading.Channels;
using Lckv.Formats;
using Lckv.Generation;
using Lckv.Numerics;

namespace Lckv.Server;

/// <summary>What one request asks the scheduler for: the prompt and how to continue it.</summary>
public sealed record JobSpec
{
    public required int[] Prompt { get; init; }
    public required int MaxNewTokens { get; init; }
    public required SamplingParams Sampling { get; init; }
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    /// <summary>Alternatives reported beside each sampled token's log-probability; null = no log-probabilities.</summary>
    public int? TopLogprobs { get; init; }
}

/// <summary>A token's log-probability under the model's distribution (raw logits, before the sampling settings).</summary>
public sealed record TokenLogprob(int Token, string Text, float Logprob, IReadOnlyList<(int Token, string Text, float Logprob)> Top);

/// <summary>An event of a job, in order: tokens, then one end.</summary>
public abstract record JobEvent;

/// <summary>A sampled token and the text it completes (may be empty; text after a stop string is never sent).</summary>
public sealed record TokenEvent(int Token, string Text, TokenLogprob? Logprob) : JobEvent;

/// <summary>The job ended: its reason, the token counts and the final text (cut before a stop string).</summary>
public sealed record FinishEvent(FinishReason Reason, int PromptTokens, int CompletionTokens, string? Text) : JobEvent;

/// <summary>The job failed after it was accepted (the engine failed, or the server stopped).</summary>
public sealed record FailEvent(string Message) : JobEvent;

/// <summary>A request the scheduler refuses at once: the HTTP status and an OpenAI-style error.</summary>
public sealed class RejectedException(int status, string message, string code, string type = "invalid_request_error") : Exception(message)
{
    public int Status { get; } = status;
    public string Code { get; } = code;
    public string Type { get; } = type;
}

/// <summary>One request in the scheduler: its engine request, and the events its reader consumes.</summary>
public sealed class Job
{
    private readonly Channel<JobEvent> _events;
    private readonly BatchScheduler _owner;
    private float[]? _row; // the logits that chose the next token, kept when log-probabilities are asked for
    private int[]? _top;
    private readonly TextTokenizer? _tokenizer;

    private readonly long _submitted = System.Diagnostics.Stopwatch.GetTimestamp();
    private long _lastToken; // when the last token arrived (0: none yet), for the latency histograms

    /// <param name="inlineReaders">the reader's continuation may run on the scheduler's delivery thread (a reader
    /// that only writes to a response and never blocks: the server's)</param>
    internal Job(BatchScheduler owner, JobSpec spec, TextTokenizer? tokenizer, IReadOnlyList<int> stopIds, int vocab, SchedulerMetrics metrics, bool inlineReaders)
    {
        _owner = owner;
        _events = Channel.CreateUnbounded<JobEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true, AllowSynchronousContinuations = inlineReaders });
        Spec = spec;
        _tokenizer = tokenizer;
        if (spec.TopLogprobs is int top)
        {
            _row = new float[vocab];
            _top = new int[Math.Max(1, Math.Min(top, vocab))];
        }
        Request = new GenerationRequest
        {
            Prompt = spec.Prompt, MaxNewTokens = spec.MaxNewTokens, Sampling = spec.Sampling, StopIds = stopIds,
            StopStrings = spec.StopStrings, Tokenizer = tokenizer,
            OnLogits = _row is null ? null : (_, _, row) => row.CopyTo(_row),
            OnToken = (_, token, text) =>
            {
                metrics.Token(ref _lastToken, _submitted);
                _owner.Post(this, new TokenEvent(token, text, _row is null ? null : Logprob(token)));
            },
        };
    }

    public JobSpec Spec { get; }
    internal GenerationRequest Request { get; }
    internal EngineSequence? Sequence { get; set; }
    internal bool Cancelled { get; set; }
    internal CancellationTokenRegistration Registration { get; set; }
    /// <summary>True once the job ended (finished, failed or cancelled); its KV is free by then.</summary>
    public bool IsDone { get; private set; }
    public ChannelReader<JobEvent> Events => _events.Reader;

    internal void Complete(JobEvent last)
    {
        if (IsDone) return;
        IsDone = true;
        Registration.Unregister();
        _owner.Post(this, last);
    }

    /// <summary>Hands an event to the reader (the delivery thread's; the last event also completes the channel).</summary>
    internal void Deliver(JobEvent e)
    {
        _events.Writer.TryWrite(e);
        if (e is not TokenEvent) _events.Writer.TryComplete();
    }

    private TokenLogprob Logprob(int token)
    {
        var row = _row!;
        float max = float.NegativeInfinity;
        foreach (float x in row) if (x > max) max = x;
        double sum = 0;
        foreach (float x in row) sum += Math.Exp(x - max);
        float lse = max + (float)Math.Log(sum);
        // the first output token's text drops the space the encoder puts in front, as the output text does
        bool first = _reported++ == 0;
        var top = new List<(int, string, float)>();
        if (Spec.TopLogprobs > 0)
        {
            int n = Selection.TopK(row, _top!.Length, _top);
            for (int i = 0; i < n; i++) top.Add((_top[i], TokenText(_top[i], first), row[_top[i]] - lse));
        }
        return new TokenLogprob(token, TokenText(token, first), row[token] - lse, top);
    }

    private int _reported;

    /// <summary>A token's own text (its bytes as UTF-8; a lone byte of a longer character shows as U+FFFD).</summary>
    private string TokenText(int token, bool first) => _tokenizer is null ? "" : System.Text.Encoding.UTF8.GetString(_tokenizer.TokenBytes(token, first));
}

/// <summary>The scheduler's time: steps taken, wall time inside the engine's steps, between back-to-back steps, and
/// on the delivery thread handing events to readers (their writes to responses included) (Stopwatch ticks).</summary>
public readonly record struct SchedulerTimes(long Steps, long StepTicks, long BetweenTicks, long DeliverTicks)
{
    public double StepSeconds => StepTicks / (double)System.Diagnostics.Stopwatch.Frequency;
    public double BetweenSeconds => BetweenTicks / (double)System.Diagnostics.Stopwatch.Frequency;
    public double DeliverSeconds => DeliverTicks / (double)System.Diagnostics.Stopwatch.Frequency;
    public static SchedulerTimes operator -(SchedulerTimes a, SchedulerTimes b)
        => new(a.Steps - b.Steps, a.StepTicks - b.StepTicks, a.BetweenTicks - b.BetweenTicks, a.DeliverTicks - b.DeliverTicks);
}

/// <summary>
/// Continuous batching over one <see cref="GenerationEngine"/>: a background thread owns the engine; requests wait
/// in a bounded FIFO queue until the engine can promise their KV blocks (its own admission accounting), every step
/// carries every running sequence (prompts chunked by the engine's step rows beside decoding ones), and a finished
/// or cancelled sequence is retired before the next step, freeing its blocks.
/// </summary>
public sealed class BatchScheduler : IDisposable
{
    private readonly GenerationEngine _engine;
    private readonly TextTokenizer? _tokenizer;
    private readonly IReadOnlyList<int> _stopIds;
    private readonly int _maxQueue;
    private readonly object _lock = new();
    private readonly LinkedList<Job> _waiting = new();
    private readonly List<Job> _cancelled = [];
    private readonly List<Job> _running = [];
    private readonly SemaphoreSlim _wake = new(0);
    private readonly Thread _thread;
    // events the loop produced, delivered by a thread of their own once per pass: one wake per step instead of one
    // thread-pool item per token, and the loop never runs a reader's code
    private List<(Job Job, JobEvent Event)> _outbox = [], _handoff = [];
    private readonly object _deliverLock = new();
    private readonly Thread _deliverer;
    private bool _delivererStopping;
    private volatile bool _stopping;
    private volatile int _runningCount;

    /// <param name="engine">owned by the scheduler's thread from now on</param>
    /// <param name="tokenizer">decodes output text and stop strings; null: token ids only</param>
    /// <param name="stopIds">ids that end every sequence (the model's EOS ids)</param>
    /// <param name="maxQueue">most requests waiting for admission (at least 1); beyond it a request is refused</param>
    public BatchScheduler(GenerationEngine engine, TextTokenizer? tokenizer, IReadOnlyList<int> stopIds, int maxQueue)
    {
        // every request passes through the queue on its way to the engine's thread, so it holds at least one
        if (maxQueue < 1) throw new LckvException($"the queue must hold at least 1 request, got {maxQueue}");
        _engine = engine;
        _tokenizer = tokenizer;
        _stopIds = stopIds;
        _maxQueue = maxQueue;
        Metrics = new SchedulerMetrics(this);
        _thread = new Thread(Loop) { IsBackground = true, Name = "lckv-engine" };
        _deliverer = new Thread(DeliverLoop) { IsBackground = true, Name = "lckv-deliver" };
        _thread.Start();
        _deliverer.Start();
    }

    public GenerationEngine Engine => _engine;
    /// <summary>This scheduler's Prometheus metrics (their own registry).</summary>
    public SchedulerMetrics Metrics { get; }

    /// <summary>While true the loop takes no step, but still admits, cancels and retires (tests hold sequences
    /// mid-generation with it).</summary>
    internal bool Paused
    {
        get => _paused;
        set { _paused = value; _wake.Release(); }
    }
    private volatile bool _paused;

    /// <summary>Runs on the loop's thread after every step (tests).</summary>
    internal Action? AfterStep { get; set; }
    /// <summary>Requests admitted to the engine and not yet retired.</summary>
    public int Running => _runningCount;

    /// <summary>Where the loop's time went so far (profiling: read before and after a load and subtract).</summary>
    public SchedulerTimes Times => new(Volatile.Read(ref _steps), Volatile.Read(ref _stepTicks), Volatile.Read(ref _betweenTicks), Volatile.Read(ref _deliverTicks));
    private long _steps, _stepTicks, _betweenTicks, _deliverTicks;
    /// <summary>Requests waiting for admission.</summary>
    public int Waiting { get { lock (_lock) return _waiting.Count; } }

    /// <summary>
    /// Queues a request. Refuses at once, with the numbers, a request that can never fit the KV budget or the
    /// context, and one that finds the queue full. Cancelling the token retires the sequence before the next step.
    /// </summary>
    public Job Submit(JobSpec spec, CancellationToken cancel = default) => Submit(spec, cancel, inlineReaders: false);

    /// <param name="inlineReaders">the job's reader never blocks, so its continuations may run on the delivery thread</param>
    internal Job Submit(JobSpec spec, CancellationToken cancel, bool inlineReaders)
    {
        var job = new Job(this, spec, _tokenizer, _stopIds, _engine.Model.Vocab, Metrics, inlineReaders);
        int context = _engine.Model.ContextLength;
        if (spec.Prompt.Length == 0) throw new RejectedException(400, "the prompt is empty", "invalid_prompt");
        if (spec.Prompt.Length > context)
            throw new RejectedException(400, $"the prompt has {spec.Prompt.Length} tokens, longer than the context length {context}", "context_length_exceeded");
        if (spec.StopStrings.Count > 0 && _tokenizer is null) throw new RejectedException(400, "stop strings need a tokenizer and this model has none", "invalid_stop");
        foreach (int id in spec.Prompt)
            if ((uint)id >= (uint)_engine.Model.Vocab)
                throw new RejectedException(400, $"the prompt has token id {id}, outside the vocabulary (size {_engine.Model.Vocab})", "invalid_prompt");
        try { spec.Sampling.Validate(); }
        catch (LckvException e) { throw new RejectedException(400, e.Message, "invalid_sampling"); }
        // BlocksFor is arithmetic over the cache's fixed policies, safe beside the engine's thread
        long need = _engine.BlocksFor(job.Request), total = _engine.Cache.Pool.TotalBlocks;
        if (need > total)
        {
            double blockMiB = _engine.Cache.Pool.Layout.BlockBytes / 1048576.0;
            throw new RejectedException(400,
                $"a sequence of up to {_engine.MaxTokensOf(job.Request)} tokens needs {need} KV blocks ({need * blockMiB:F1} MiB) but the KV budget has {total} in all ({total * blockMiB:F1} MiB); lower max_tokens or the prompt",
                "kv_budget_exceeded");
        }
        lock (_lock)
        {
            if (_stopping) throw new RejectedException(503, "the server is stopping", "unavailable", "server_error");
            if (_waiting.Count >= _maxQueue)
                throw new RejectedException(429, $"the server is busy: {_waiting.Count} request(s) already wait for admission", "queue_full", "rate_limit_error");
            _waiting.AddLast(job);
        }
        if (cancel.CanBeCanceled) job.Registration = cancel.Register(() => Cancel(job));
        _wake.Release();
        return job;
    }

    /// <summary>Ends a job: a waiting one leaves the queue, a running one is retired before the next step.</summary>
    public void Cancel(Job job)
    {
        lock (_lock)
        {
            if (job.IsDone || job.Cancelled) return;
            job.Cancelled = true;
            _cancelled.Add(job);
        }
        _wake.Release();
    }

    private void Loop()
    {
        var cancelled = new List<Job>();
        long lastStepEnd = 0;
        while (!_stopping)
        {
            lock (_lock)
            {
                cancelled.AddRange(_cancelled);
                _cancelled.Clear();
                foreach (var job in cancelled) _waiting.Remove(job);
            }
            foreach (var job in cancelled) End(job, new FailEvent("cancelled"));
            cancelled.Clear();
            Admit();
            Handoff();
            if (!_engine.HasWork || _paused)
            {
                _wake.Wait(TimeSpan.FromSeconds(1));
                lastStepEnd = 0;
                continue;
            }
            long started = System.Diagnostics.Stopwatch.GetTimestamp();
            // the loop's own work between two back-to-back steps (retiring, admitting, cancelling)
            if (lastStepEnd != 0) Interlocked.Add(ref _betweenTicks, started - lastStepEnd);
            try
            {
                _engine.Step();
                lastStepEnd = System.Diagnostics.Stopwatch.GetTimestamp();
                Interlocked.Add(ref _stepTicks, lastStepEnd - started);
                Interlocked.Increment(ref _steps);
                Metrics.Step(started);
            }
            catch (Exception e)
            {
                foreach (var job in _running.ToArray()) End(job, new FailEvent($"the engine failed: {e.Message}"));
                Handoff();
                continue;
            }
            foreach (var seq in _engine.Finished)
            {
                var job = _running.Find(j => j.Sequence == seq);
                if (job is null) continue;
                End(job, new FinishEvent(seq.Finish!.Value, seq.PromptLength, seq.Output.Count, seq.Text));
            }
            Handoff();
            AfterStep?.Invoke();
        }
        lock (_lock)
        {
            foreach (var job in _waiting)
            {
                Metrics.Ended(SchedulerMetrics.Reason.Error, null);
                job.Complete(new FailEvent("the server stopped"));
            }
            _waiting.Clear();
        }
        foreach (var job in _running.ToArray()) End(job, new FailEvent("the server stopped"));
        Handoff();
        lock (_deliverLock)
        {
            _delivererStopping = true;
            Monitor.Pulse(_deliverLock);
        }
    }

    /// <summary>Queues a job's event for delivery (the loop's thread only).</summary>
    internal void Post(Job job, JobEvent e) => _outbox.Add((job, e));

    // hands this pass's events to the delivery thread
    private void Handoff()
    {
        if (_outbox.Count == 0) return;
        lock (_deliverLock)
        {
            if (_handoff.Count == 0) (_handoff, _outbox) = (_outbox, _handoff);
            else
            {
                _handoff.AddRange(_outbox);
                _outbox.Clear();
            }
            Monitor.Pulse(_deliverLock);
        }
    }

    private void DeliverLoop()
    {
        var batch = new List<(Job Job, JobEvent Event)>();
        while (true)
        {
            lock (_deliverLock)
            {
                while (_handoff.Count == 0 && !_delivererStopping) Monitor.Wait(_deliverLock);
                if (_handoff.Count == 0) return;
                (batch, _handoff) = (_handoff, batch);
            }
            long started = System.Diagnostics.Stopwatch.GetTimestamp();
            foreach (var (job, e) in batch)
            {
                try { job.Deliver(e); }
                catch (Exception) { } // a reader's failure is its own request's; the others still get theirs
            }
            batch.Clear();
            Interlocked.Add(ref _deliverTicks, System.Diagnostics.Stopwatch.GetTimestamp() - started);
        }
    }

    // admits waiting jobs in arrival order while the engine can promise their blocks (no overtaking: a large request
    // at the head is not starved by smaller ones behind it)
    private void Admit()
    {
        while (true)
        {
            Job job;
            lock (_lock)
            {
                if (_waiting.First is not { } first) return;
                job = first.Value;
            }
            bool admitted;
            EngineSequence? seq;
            try { admitted = _engine.TryAdmit(job.Request, out seq); }
            catch (LckvException e)
            {
                lock (_lock) _waiting.Remove(job);
                Metrics.Ended(SchedulerMetrics.Reason.Error, null);
                job.Complete(new FailEvent(e.Message));
                continue;
            }
            if (!admitted) return;
            lock (_lock) _waiting.Remove(job);
            job.Sequence = seq;
            _running.Add(job);
            _runningCount = _running.Count;
        }
    }

    private void End(Job job, JobEvent last)
    {
        if (!job.IsDone)
        {
            var reason = last switch
            {
                FinishEvent f => SchedulerMetrics.ReasonOf(f.Reason),
                _ when job.Cancelled => SchedulerMetrics.Reason.Cancelled,
                _ => SchedulerMetrics.Reason.Error,
            };
            Metrics.Ended(reason, job.Sequence);
        }
        if (job.Sequence is { } seq) _engine.Retire(seq);
        if (_running.Remove(job)) _runningCount = _running.Count;
        job.Complete(last);
    }

    /// <summary>Stops the loop; waiting and running jobs end with a failure event.</summary>
    public void Dispose()
    {
        lock (_lock) _stopping = true;
        _wake.Release();
        _thread.Join(TimeSpan.FromSeconds(30));
        _deliverer.Join(TimeSpan.FromSeconds(30));
        _wake.Dispose();
    }
}
