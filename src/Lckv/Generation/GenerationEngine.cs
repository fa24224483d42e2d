using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Model;

namespace Lckv.Generation;

/// <summary>How a <see cref="GenerationEngine"/> sizes its runner and evaluates prompts.</summary>
public sealed record EngineOptions
{
    /// <summary>Most tokens one step evaluates: on a standard layout, prompts are split into chunks that fit the rows
    /// the decoding sequences leave (the prefill chunk).</summary>
    public int MaxStepTokens { get; init; } = 512;

    /// <summary>Most sequences admitted at once (finished ones count until they are retired).</summary>
    public int MaxSequences { get; init; } = 16;

    /// <summary>
    /// Longest prompt admitted where prompts are evaluated whole in one step (a layout with upward-reading layers: the
    /// iteration plan needs the whole sequence; a store that evicts: kv-compression.md §0): the runner gets
    /// max(MaxStepTokens, MaxPromptTokens) rows. Otherwise prompts are chunked and it is ignored.
    /// </summary>
    public int MaxPromptTokens { get; init; }

    public PrefillMode Prefill { get; init; } = PrefillMode.Auto;

    /// <summary>Rows of the engine's runner for a layout whose stores keep every position; create the cache with the
    /// same number (<see cref="LlamaModel.CreateCache"/>) so that sliding-window rings hold a step.</summary>
    public int StepRows(LayerMap map) => Math.Max(MaxStepTokens, map.AnyAttendsTop ? MaxPromptTokens : 0);

    public void Validate()
    {
        if (MaxStepTokens < 1) throw new LckvException($"the step must take at least 1 token, got {MaxStepTokens}");
        if (MaxSequences < 1) throw new LckvException($"the engine must hold at least 1 sequence, got {MaxSequences}");
        if (MaxPromptTokens < 0) throw new LckvException($"the longest prompt must not be negative, got {MaxPromptTokens}");
    }
}

/// <summary>Receives logits of a sequence: rows [count, vocab] for the positions firstPosition.. (every evaluated
/// token with <see cref="LogitsRows.All"/>, else the row that predicts the token after the last input).</summary>
public delegate void LogitsCallback(EngineSequence sequence, int firstPosition, ReadOnlySpan<float> rows);

/// <summary>Receives each token a sequence samples (stop ids excluded) with the text it completes (may be empty;
/// cut before a stop string).</summary>
public delegate void EngineTokenCallback(EngineSequence sequence, int token, string text);

/// <summary>
/// One sequence for the engine. With <see cref="Sampling"/> the engine samples a continuation of the prompt until a
/// stop rule ends it; without, the sequence is teacher-forced: the engine evaluates the prompt and whatever the caller
/// <see cref="GenerationEngine.Feed"/>s, and hands out logits through <see cref="OnLogits"/>.
/// </summary>
public sealed record GenerationRequest
{
    /// <summary>The prompt; empty only for a teacher-forced sequence.</summary>
    public required int[] Prompt { get; init; }
    /// <summary>Sampled: most new tokens. Teacher-forced: most tokens Feed may add after the prompt. The KV the
    /// sequence is promised at admission covers prompt + MaxNewTokens (bounded by the context).</summary>
    public int MaxNewTokens { get; init; }
    /// <summary>Null: teacher-forced.</summary>
    public SamplingParams? Sampling { get; init; }
    /// <summary>Token ids that end a sampled sequence (not part of the output).</summary>
    public IReadOnlyList<int> StopIds { get; init; } = [];
    /// <summary>Strings that end a sampled sequence; the text is cut before them. Needs <see cref="Tokenizer"/>.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    /// <summary>Decodes the output to text as it streams.</summary>
    public TextTokenizer? Tokenizer { get; init; }
    /// <summary>Which rows go to <see cref="OnLogits"/>: every evaluated token (scoring) or the last.</summary>
    public LogitsRows Logits { get; init; } = LogitsRows.Last;
    public LogitsCallback? OnLogits { get; init; }
    public EngineTokenCallback? OnToken { get; init; }
}

/// <summary>The state of one admitted sequence: its tokens, how many are committed to the cache, its sampler and
/// stop rules, and its output.</summary>
public sealed class EngineSequence
{
    internal readonly List<int> TokenBuffer;
    internal readonly List<int> OutputBuffer;
    internal readonly Sampler? TokenSampler;
    internal readonly StreamingDecoder? Decoder;
    internal readonly StringBuilder? TextBuffer;
    internal readonly long PromisedBlockCount;
    internal long HeldBlocks;   // of the promise: blocks reserved so far
    internal readonly int MaxTokenCount; // prompt + MaxNewTokens, bounded by the context

    internal EngineSequence(int id, GenerationRequest request, int vocab, int maxTokens, long promisedBlocks)
    {
        Id = id;
        Request = request;
        PromptLength = request.Prompt.Length;
        MaxTokenCount = maxTokens;
        PromisedBlockCount = promisedBlocks;
        TokenBuffer = new List<int>(maxTokens);
        TokenBuffer.AddRange(request.Prompt);
        OutputBuffer = new List<int>(request.Sampling is null ? 0 : Math.Min(request.MaxNewTokens, maxTokens));
        if (request.Sampling is { } sp)
        {
            TokenSampler = new Sampler(sp, vocab);
            Decoder = request.Tokenizer?.CreateStreamingDecoder();
            TextBuffer = request.Tokenizer is null ? null : new StringBuilder();
        }
    }

    /// <summary>The sequence's id in the KV cache.</summary>
    public int Id { get; }
    public GenerationRequest Request { get; }
    public int PromptLength { get; }
    /// <summary>Prompt, then sampled or fed tokens.</summary>
    public IReadOnlyList<int> Tokens => TokenBuffer;
    /// <summary>Tokens evaluated and committed to the cache.</summary>
    public int Position { get; internal set; }
    /// <summary>Tokens waiting to be evaluated.</summary>
    public int Pending => TokenBuffer.Count - Position;
    /// <summary>True while part of the prompt is still to be evaluated.</summary>
    public bool Prefilling => Position < PromptLength;
    /// <summary>Sampled tokens (stop ids excluded).</summary>
    public IReadOnlyList<int> Output => OutputBuffer;
    /// <summary>Decoded output (with a tokenizer), cut before a stop string; complete once finished.</summary>
    public string? Text => TextBuffer?.ToString();
    public FinishReason? Finish { get; private set; }
    public bool IsFinished => Finish is not null;
    public bool IsRetired { get; internal set; }
    internal bool HasWork => Finish is null && !IsRetired && Pending > 0;

    internal void Finished(FinishReason reason)
    {
        Finish = reason;
        if (reason != FinishReason.StopString && Decoder is { } dec) TextBuffer!.Append(dec.Flush());
    }

    /// <summary>Records a sampled token and applies the stop rules; true when the sequence is finished.</summary>
    internal bool Accept(int token, int contextLength)
    {
        var r = Request;
        if (r.StopIds.Contains(token)) { Finished(FinishReason.Eos); return true; }
        OutputBuffer.Add(token);
        TokenBuffer.Add(token);
        if (Decoder is { } dec)
        {
            string piece = dec.Push(token);
            var sb = TextBuffer!;
            int before = sb.Length;
            sb.Append(piece);
            foreach (var stop in r.StopStrings)
            {
                int from = Math.Max(0, before - stop.Length + 1);
                int at = sb.ToString(from, sb.Length - from).IndexOf(stop, StringComparison.Ordinal);
                if (at < 0) continue;
                int cut = from + at;
                if (cut > before) r.OnToken?.Invoke(this, token, sb.ToString(before, cut - before));
                sb.Length = cut;
                Finished(FinishReason.StopString);
                return true;
            }
            r.OnToken?.Invoke(this, token, piece);
        }
        else r.OnToken?.Invoke(this, token, "");
        if (OutputBuffer.Count >= r.MaxNewTokens) { Finished(FinishReason.Length); return true; }
        if (Position + 1 > contextLength) { Finished(FinishReason.Context); return true; }
        return false;
    }
}

/// <summary>What one step did: sequences and rows evaluated (prompt rows and the rest), tokens sampled and sequences
/// finished (listed in <see cref="GenerationEngine.Finished"/>).</summary>
public readonly record struct StepReport(int Sequences, int PromptTokens, int DecodeTokens, int Sampled, int Finished)
{
    public int Rows => PromptTokens + DecodeTokens;
}

/// <summary>
/// The scheduler core: admits sequences against the KV budget, builds each step from every sequence with input
/// (decoding ones bring their one token, prefilling ones a chunk of their prompt), reserves and commits cache
/// positions, evaluates the step with one forward runner, samples, applies stop rules and frees what retires.
/// Admission promises each sequence the KV blocks it can need (prompt + max new tokens), so a later step's
/// reservation never fails. Not thread-safe.
/// </summary>
public sealed class GenerationEngine
{
    private readonly LlamaModel _model;
    private readonly KvCache _cache;
    private readonly ForwardRunner _runner;
    private readonly int _rows, _vocab, _context;
    private readonly bool _wholePrompts;
    private readonly List<EngineSequence> _active;
    private readonly List<EngineSequence> _finished;
    // one step's entries: [0, nA) fresh whole prompts (upward layouts, evicting stores), then decodes and chunks of other input
    private readonly EngineSequence[] _entries;
    private readonly int[] _takes;
    private readonly StepSequence[] _batch;
    private readonly int[] _stepTokens;
    private readonly float[] _lastLogits;
    private float[]? _allLogits;
    private long _promised; // blocks promised to admitted sequences and not yet reserved

    public GenerationEngine(LlamaModel model, KvCache cache, EngineOptions? options = null)
    {
        options ??= new EngineOptions();
        options.Validate();
        _model = model;
        _cache = cache;
        Options = options;
        // a prompt is evaluated in one step where the plan needs the whole sequence, or where a store evicts (a policy
        // runs after each step, so a prompt split across steps would be evicted from before it is complete)
        bool evicting = Enumerable.Range(0, cache.KvLayers).Any(l => cache.Policy(l).Compacts);
        _wholePrompts = model.Map.AnyAttendsTop || evicting;
        _rows = _wholePrompts ? Math.Max(options.MaxStepTokens, options.MaxPromptTokens) : options.MaxStepTokens;
        _vocab = model.Vocab;
        _context = model.ContextLength;
        _runner = new ForwardRunner(model, cache, RunnerRows(options, model.Map, evicting), options.MaxSequences) { Prefill = options.Prefill };
        _active = new List<EngineSequence>(options.MaxSequences);
        _finished = new List<EngineSequence>(options.MaxSequences);
        _entries = new EngineSequence[options.MaxSequences];
        _takes = new int[options.MaxSequences];
        _batch = new StepSequence[options.MaxSequences];
        _stepTokens = new int[2 * _rows];
        _lastLogits = new float[LogitsBytes(_vocab, options.MaxSequences) / sizeof(float)];
    }

    public EngineOptions Options { get; }
    public LlamaModel Model => _model;
    public KvCache Cache => _cache;
    /// <summary>Rows of the runner: the most tokens one step evaluates.</summary>
    public int StepRows => _rows;
    /// <summary>Evaluations of the layer stack so far (see <see cref="ForwardRunner.Evaluations"/>).</summary>
    public long Evaluations => _runner.Evaluations;
    /// <summary>Admitted sequences not yet retired, in admission order.</summary>
    public IReadOnlyList<EngineSequence> Sequences => _active;
    /// <summary>The sequences the last step finished.</summary>
    public IReadOnlyList<EngineSequence> Finished => _finished;
    /// <summary>KV blocks promised to admitted sequences beyond what they have reserved.</summary>
    public long PromisedBlocks => _promised;
    /// <summary>Free KV blocks no admitted sequence was promised.</summary>
    public long AvailableBlocks => _cache.Pool.FreeBlocks - _promised;

    /// <summary>True while some unfinished sequence has input to evaluate.</summary>
    public bool HasWork
    {
        get
        {
            foreach (var s in _active) if (s.HasWork) return true;
            return false;
        }
    }

    /// <summary>
    /// Rows of the engine's forward runner. Whole prompts (upward layouts, stores that evict) and the other input each get
    /// up to a step's rows: an upward layout's runner evaluates them as sub-steps, a standard one in one evaluation of up
    /// to twice the rows.
    /// </summary>
    public static int RunnerRows(EngineOptions options, LayerMap map, bool evicting)
    {
        bool whole = map.AnyAttendsTop || evicting;
        int rows = whole ? Math.Max(options.MaxStepTokens, options.MaxPromptTokens) : options.MaxStepTokens;
        return whole && !map.AnyAttendsTop ? 2 * rows : rows;
    }

    /// <summary>Bytes of the logits buffer an engine for maxSequences allocates (the last row of each sequence).</summary>
    public static long LogitsBytes(int vocab, int maxSequences) => (long)maxSequences * vocab * sizeof(float);

    /// <summary>Bytes a sampled sequence's <see cref="Sampler"/> allocates for its scratch (three vocabulary-sized
    /// arrays; a fourth with a penalty on previous tokens).</summary>
    public static long SamplerBytes(int vocab, bool penalized) => (penalized ? 4L : 3L) * vocab * sizeof(float);

    /// <summary>Positions a request can occupy: prompt + MaxNewTokens, bounded by the context.</summary>
    public int MaxTokensOf(GenerationRequest request) => (int)Math.Min((long)request.Prompt.Length + request.MaxNewTokens, _context);

    /// <summary>KV blocks a request is promised at admission.</summary>
    public long BlocksFor(GenerationRequest request) => _cache.BlocksForTokens(MaxTokensOf(request));

    /// <summary>Admits a request, or fails with the reason (budget, engine full, invalid request).</summary>
    public EngineSequence Admit(GenerationRequest request)
    {
        if (TryAdmit(request, out var seq)) return seq;
        if (_active.Count >= Options.MaxSequences)
            throw new LckvException($"the engine already holds its {Options.MaxSequences} sequence(s)");
        long need = BlocksFor(request);
        throw new LckvException($"a sequence of up to {MaxTokensOf(request)} tokens needs {need} KV blocks ({MiB(need)} MiB) but {AvailableBlocks} are free and unpromised ({MiB(AvailableBlocks)} MiB)");
    }

    /// <summary>
    /// Admits a request if the engine has room and its KV blocks are free and unpromised; false when it has to wait
    /// for others to retire. Throws LckvException for a request that can never be admitted (invalid, or needing more
    /// blocks than the whole pool).
    /// </summary>
    public bool TryAdmit(GenerationRequest request, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out EngineSequence? sequence)
    {
        sequence = null;
        CheckRequest(request);
        long need = BlocksFor(request);
        var pool = _cache.Pool;
        if (need > pool.TotalBlocks)
            throw new LckvException($"a sequence of up to {MaxTokensOf(request)} tokens needs {need} KV blocks ({MiB(need)} MiB) but the KV budget has {pool.TotalBlocks} in all ({MiB(pool.TotalBlocks)} MiB)");
        if (_active.Count >= Options.MaxSequences || need > AvailableBlocks) return false;
        if (request.Logits == LogitsRows.All && request.OnLogits is not null) _allLogits ??= new float[(_wholePrompts ? 2L : 1L) * _rows * _vocab]; // whole prompts beside the rest
        int id = _cache.CreateSequence();
        sequence = new EngineSequence(id, request, _vocab, MaxTokensOf(request), need);
        _promised += need;
        _active.Add(sequence);
        return true;
    }

    private string MiB(long blocks) => (blocks * _cache.Pool.Layout.BlockBytes / 1048576.0).ToString("F1");

    private void CheckRequest(GenerationRequest r)
    {
        ArgumentNullException.ThrowIfNull(r);
        ArgumentNullException.ThrowIfNull(r.Prompt);
        if (r.MaxNewTokens < 0) throw new LckvException($"max_tokens must be >= 0, got {r.MaxNewTokens}");
        if (r.Sampling is { } sp)
        {
            sp.Validate();
            if (r.Prompt.Length == 0) throw new LckvException("the prompt is empty");
            if (r.StopStrings.Count > 0 && r.Tokenizer is null) throw new LckvException("stop strings need a tokenizer");
            if (r.StopStrings.Any(string.IsNullOrEmpty))
                throw new LckvException("a stop string is empty; it would match before the first token") { Settings = [nameof(r.StopStrings)] };
        }
        if (r.Prompt.Length > _context)
            throw new LckvException($"the prompt has {r.Prompt.Length} tokens, longer than the context length {_context}");
        foreach (int id in r.Prompt)
            if ((uint)id >= (uint)_vocab) throw new LckvException($"the prompt has token id {id}, outside the vocabulary (size {_vocab})");
        if (_wholePrompts && r.Prompt.Length > _rows)
            throw new LckvException($"the prompt has {r.Prompt.Length} tokens, more than the engine's step of {_rows} rows; a layout with upward-reading layers or a store that evicts evaluates a prompt in one step (raise MaxPromptTokens)");
    }

    /// <summary>Appends input to a teacher-forced sequence; the next steps evaluate it.</summary>
    public void Feed(EngineSequence sequence, ReadOnlySpan<int> tokens)
    {
        if (sequence.IsRetired) throw new InvalidOperationException("the sequence is retired");
        if (sequence.Request.Sampling is not null) throw new InvalidOperationException("a sampled sequence takes no fed tokens");
        if (sequence.TokenBuffer.Count + tokens.Length > sequence.MaxTokenCount)
            throw new LckvException($"feeding {tokens.Length} tokens takes the sequence past the {sequence.MaxTokenCount} it was admitted with");
        if (_wholePrompts && sequence.Position == 0 && sequence.Pending + tokens.Length > _rows)
            throw new LckvException($"a first input of {sequence.Pending + tokens.Length} tokens is more than the engine's step of {_rows} rows");
        foreach (int id in tokens)
            if ((uint)id >= (uint)_vocab) throw new LckvException($"token id {id} is outside the vocabulary (size {_vocab})");
        sequence.TokenBuffer.AddRange(tokens);
    }

    /// <summary>Frees a sequence's KV blocks and what it was promised; it leaves <see cref="Sequences"/>.</summary>
    public void Retire(EngineSequence sequence)
    {
        if (sequence.IsRetired) return;
        if (!_active.Remove(sequence)) throw new ArgumentException("the sequence is not this engine's", nameof(sequence));
        _promised -= sequence.PromisedBlockCount - sequence.HeldBlocks;
        if (_cache.Contains(sequence.Id)) _cache.Remove(sequence.Id);
        sequence.IsRetired = true;
    }

    /// <summary>
    /// How much of its input a sequence brings to a step with `room` rows left: a chunk of what fits, or, for a
    /// prompt that must be evaluated whole, all of it or nothing (all of it when it is the step's first, which the
    /// runner's rows always hold).
    /// </summary>
    private static int Take(int left, int room, bool whole, bool first)
        => whole ? (left <= room || first ? left : 0) : Math.Min(left, room);

    /// <summary>
    /// One step: every unfinished sequence with input joins (decoding ones first, then prompts in admission order,
    /// chunked by the rows left), its positions are reserved, the runner evaluates them, logits are delivered,
    /// sampled sequences choose their next token and stop rules finish them. On a layout with upward-reading layers or
    /// with a store that evicts, a fresh prompt is taken whole, with up to StepRows rows of its own
    /// beside the other sequences; the runner evaluates such a step as sub-steps. Allocates nothing beyond what
    /// sampling's text decoding and the callbacks do.
    /// </summary>
    public StepReport Step()
    {
        _finished.Clear();
        int n = 0, maxSeqs = _entries.Length;
        var active = CollectionsMarshal.AsSpan(_active);
        // group A (upward layouts, evicting stores): prompts that start at position 0, whole, within their own rows
        if (_wholePrompts)
        {
            int room = _rows;
            foreach (var s in active)
            {
                if (n == maxSeqs) break;
                if (!s.HasWork || s.Position != 0 || s.Pending < 2) continue;
                int take = Take(s.Pending, room, whole: true, first: n == 0);
                if (take == 0) break;
                Add(s, take, ref n);
                room -= take;
            }
        }
        int nA = n;
        // group B: decoding sequences (one token), then the other input chunked by the rows left
        int roomB = _rows;
        foreach (var s in active)
        {
            if (n == maxSeqs || roomB == 0) break;
            if (!s.HasWork || s.Pending != 1) continue;
            Add(s, 1, ref n);
            roomB--;
        }
        foreach (var s in active)
        {
            if (n == maxSeqs || roomB == 0) break;
            if (!s.HasWork || s.Pending < 2 || (_wholePrompts && s.Position == 0)) continue;
            int take = Take(s.Pending, roomB, whole: false, first: n == nA);
            Add(s, take, ref n);
            roomB -= take;
        }
        if (n == 0) return default;

        int promptTokens = 0, decodeTokens = 0, sampled = 0;
        int tokenAt = 0;
        for (int j = 0; j < n; j++)
        {
            var s = _entries[j];
            int take = _takes[j];
            Reserve(s, s.Position + take);
            CollectionsMarshal.AsSpan(s.TokenBuffer).Slice(s.Position, take).CopyTo(_stepTokens.AsSpan(tokenAt, take));
            tokenAt += take;
            int prompt = Math.Clamp(s.PromptLength - s.Position, 0, take);
            promptTokens += prompt;
            decodeTokens += take - prompt;
        }
        // one runner call: on an upward layout it evaluates the fresh prompts through the plan and the rest apart
        sampled += Evaluate(n, tokenAt);
        Array.Clear(_entries, 0, n);
        return new StepReport(n, promptTokens, decodeTokens, sampled, _finished.Count);
    }

    private void Add(EngineSequence s, int take, ref int n)
    {
        _entries[n] = s;
        _takes[n] = take;
        _batch[n] = new StepSequence(s.Id, take);
        n++;
    }

    private void Reserve(EngineSequence s, int length)
    {
        if (!_cache.TryReserve(s.Id, length))
            throw new LckvException("the KV cache budget is exhausted (raise the KV budget or lower the batch)");
        // the promise shrinks by what this reservation took of it
        long held = Math.Min(_cache.BlocksForTokens(_cache.ReservedLength(s.Id)), s.PromisedBlockCount);
        _promised -= held - s.HeldBlocks;
        s.HeldBlocks = held;
    }

    // runs the step's n entries (their tokenCount tokens) in one runner call and delivers their logits; returns the tokens sampled
    private int Evaluate(int n, int tokenCount)
    {
        bool all = false;
        for (int j = 0; j < n; j++) all |= _entries[j].Request is { Logits: LogitsRows.All, OnLogits: not null };
        var rows = all ? LogitsRows.All : LogitsRows.Last;
        var logits = all ? _allLogits! : _lastLogits;
        _runner.Run(_batch.AsSpan(0, n), _stepTokens.AsSpan(0, tokenCount), rows, logits);
        int v = _vocab, sampled = 0;
        for (int j = 0, row = 0; j < n; j++)
        {
            var s = _entries[j];
            int take = _takes[j], first = s.Position;
            s.Position += take;
            int last = all ? row + take - 1 : j;
            var r = s.Request;
            if (r.OnLogits is { } onLogits)
            {
                if (r.Logits == LogitsRows.All) onLogits(s, first, logits.AsSpan(row * v, take * v));
                else if (s.Pending == 0) onLogits(s, s.Position - 1, logits.AsSpan(last * v, v));
            }
            row += all ? take : 1;
            if (s.TokenSampler is not { } sampler || s.Pending != 0) continue;
            // the whole input is evaluated: the last row predicts the next token
            if (r.MaxNewTokens == 0) { s.Finished(FinishReason.Length); _finished.Add(s); continue; }
            int token = sampler.Sample(logits.AsSpan(last * v, v), CollectionsMarshal.AsSpan(s.TokenBuffer));
            sampled++;
            if (s.Accept(token, _context)) _finished.Add(s);
        }
        return sampled;
    }

    /// <summary>
    /// Steps until no sequence has input left, retiring each sequence as it finishes; timing splits steps that
    /// evaluated prompt tokens (prefill) from the rest (decode).
    /// </summary>
    public GenerationTiming RunToEnd()
    {
        long prefillTicks = 0, decodeTicks = 0;
        int prefillTokens = 0, decodeTokens = 0, steps = 0;
        var stepSeconds = new List<double>();
        while (true)
        {
            long t0 = Stopwatch.GetTimestamp();
            var report = Step();
            long ticks = Stopwatch.GetTimestamp() - t0;
            if (report.Sequences == 0) break;
            prefillTokens += report.PromptTokens;
            if (report.PromptTokens > 0) prefillTicks += ticks;
            else
            {
                decodeTicks += ticks;
                decodeTokens += report.DecodeTokens;
                steps++;
                stepSeconds.Add(ticks / (double)Stopwatch.Frequency);
            }
            foreach (var s in _finished) Retire(s);
        }
        return new GenerationTiming(prefillTokens, prefillTicks / (double)Stopwatch.Frequency, decodeTokens,
            decodeTicks / (double)Stopwatch.Frequency, steps) { DecodeStepSeconds = stepSeconds };
    }
}
