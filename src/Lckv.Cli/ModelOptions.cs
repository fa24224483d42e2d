using System.CommandLine;
using Lckv.Formats;
using Lckv.Model;
using Lckv.Numerics;

namespace Lckv.Cli;

/// <summary>The options beyond the model's source (--model, --preset, --dtype, --layout, --weights, --context) that a
/// command takes: each command takes only those it uses, so any other is a parse error rather than silently ignored.</summary>
[Flags]
public enum ModelUses
{
    None = 0,
    WeightSeed = 1,
    KvDType = 2,
    BlockSize = 4,
    KvBudget = 8,
    Tokenizer = 16,
    Threads = 32,
    /// <summary>the command evaluates the model, so it takes --allow-long-context</summary>
    LongContext = 64,
    All = WeightSeed | KvDType | BlockSize | KvBudget | Tokenizer | Threads | LongContext,
}

/// <summary>Options every command that needs a model shares: where it comes from and how its cache is stored.</summary>
public sealed class ModelOptions
{
    public readonly Option<string?> Model = new("--model", "-m") { Description = "Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer) or a .gguf file" };
    public readonly Option<string?> Preset = new("--preset") { Description = "built-in shape with random weights: small | tinyllama-1.1b" };
    public readonly Option<string?> DType = new("--dtype") { Description = "weight dtype of a preset: f32 | f16 | bf16 (default: small f32, tinyllama bf16)" };
    public readonly Option<string?> Layout = new("--layout", "--layer-types")
    {
        Description = "KV sharing layout of a preset: llama | lckv-w2 | lckv-w10 | lckv-w<N> | cla2 | yoco | sandwich-middle | <layer_types> (e.g. 0_6_6_6_6_6_6_7)",
    };
    /// <summary>The same option as <see cref="Layout"/> (--layer-types is its alias).</summary>
    public Option<string?> LayerTypes => Layout;
    public readonly Option<string?> Weights = new("--weights")
    {
        Description = "store the weight matrices as f32 | f16 | bf16 | q8_0 | q4_0, converted at load (q8_0/q4_0 quantized as llama.cpp does; norms keep their dtype)",
    };
    public readonly Option<ulong> WeightSeed = new("--weight-seed") { Description = "seed of a preset's random weights", DefaultValueFactory = _ => 0 };
    public readonly Option<int?> Context = new("--context", "-c") { Description = "context length (default: max_position_embeddings)" };
    public readonly Option<string?> KvDType = new("--kv-dtype") { Description = "KV cache storage: f32 | f16 | bf16 | int8 | q4 (int8 and q4 with per-row scales; default: bf16 for f16/bf16/quantized weights, f32 for f32)" };
    public readonly Option<int> BlockSize = new("--block-size") { Description = "tokens per KV block", DefaultValueFactory = _ => 16 };
    public readonly Option<double?> KvBudget = new("--kv-budget") { Description = "KV cache budget in MiB (default: what the job needs)" };
    public readonly Option<string?> Tokenizer = new("--tokenizer") { Description = "tokenizer.model / tokenizer.json / a .gguf file's tokenizer (default: the one in --model)" };
    public readonly Option<int?> Threads = new("--threads", "-t") { Description = "worker threads (default: all cores)" };
    public readonly Option<bool> AllowLongContext = new("--allow-long-context")
    {
        Description = "allow --context above the model's trained length (max_position_embeddings; llama.context_length in GGUF); quality past it is undefined",
    };
    private bool _longContext;
    private ModelUses _uses;
    private bool _context;

    /// <param name="c">the command</param>
    /// <param name="uses">the options beyond the model's source that the command uses</param>
    /// <param name="context">the command takes --context (perplexity has its own: the window)</param>
    public void AddTo(Command c, ModelUses uses, bool context = true)
    {
        foreach (var o in new Option[] { Model, Preset, DType, Layout, Weights }) c.Options.Add(o);
        if (context) c.Options.Add(Context);
        _context |= context;
        if (uses.HasFlag(ModelUses.WeightSeed)) c.Options.Add(WeightSeed);
        if (uses.HasFlag(ModelUses.KvDType)) c.Options.Add(KvDType);
        if (uses.HasFlag(ModelUses.BlockSize)) c.Options.Add(BlockSize);
        if (uses.HasFlag(ModelUses.KvBudget)) c.Options.Add(KvBudget);
        if (uses.HasFlag(ModelUses.Tokenizer)) c.Options.Add(Tokenizer);
        if (uses.HasFlag(ModelUses.Threads)) c.Options.Add(Threads);
        if (uses.HasFlag(ModelUses.LongContext)) c.Options.Add(AllowLongContext);
        _longContext |= uses.HasFlag(ModelUses.LongContext);
        _uses |= uses;
    }

    /// <summary>The model --model or --preset names, its context --context when given. A context past the model's
    /// trained length is an error unless --allow-long-context, which writes a one-line warning to stderr. Under
    /// StreamingLLM keys and queries are rotated by their rank in a bounded store, so it is the budget that must stay
    /// within the trained length, not the context.</summary>
    /// <param name="context">the context when the command reads it from its own option, else --context</param>
    public LlamaModel LoadModel(ParseResult p, TextWriter stderr, Cache.EvictionSettings? eviction = null, int? context = null)
    {
        _streamingBudget = eviction is { Kind: Cache.EvictionKind.Streaming } e ? e.Budget + 1 : null;
        ApplyThreads(p);
        string? model = p.GetValue(Model), preset = p.GetValue(Preset);
        if (model is not null && preset is not null) throw new LckvException("give either --model or --preset, not both");
        if (_context) context ??= p.GetValue(Context);
        var weights = WeightsDType(p);
        if (model is not null)
        {
            if (p.GetValue(DType) is not null || p.GetValue(Layout) is not null)
                throw new LckvException("--dtype and --layout apply to presets; a checkpoint keeps its own (use --weights to store its matrices in another dtype, 'lckv convert' to change its layout)");
            if (context is not null || _streamingBudget is not null)
            {
                var config = LlamaModel.LoadConfig(model);
                CheckContext(p, context ?? config.MaxPositionEmbeddings, config, stderr);
            }
            return LlamaModel.Load(model, context, weights);
        }
        if (preset is null) throw new LckvException("no model: give --model <folder or .gguf> or --preset small|tinyllama-1.1b");
        if (context is not null || _streamingBudget is not null) CheckContext(p, context ?? Presets.Config(preset).MaxPositionEmbeddings, Presets.Config(preset), stderr);
        var dtype = p.GetValue(DType) is { } d ? ParseWeightDType(d) : (Numerics.DType?)null;
        return LlamaModel.FromPreset(preset, dtype, PresetLayerTypes(p, Presets.Config(preset).NumHiddenLayers),
            _uses.HasFlag(ModelUses.WeightSeed) ? p.GetValue(WeightSeed) : 0, context, weights);
    }

    private int? _streamingBudget;

    private void CheckContext(ParseResult p, int context, ModelConfig config, TextWriter stderr)
    {
        int trained = config.MaxPositionEmbeddings;
        if (_streamingBudget is int ranks)
        {
            if (ranks <= trained) return;
            if (!_longContext || !p.GetValue(AllowLongContext))
                throw new LckvException($"a StreamingLLM store of {ranks - 1} entries plus a step rotates keys past the {trained} positions the model was trained for; "
                    + "add --allow-long-context to run it anyway");
            stderr.WriteLine($"warning: a StreamingLLM store of {ranks - 1} entries plus a step rotates keys past the {trained} positions the model was trained for; quality past them is undefined");
            return;
        }
        if (context <= trained) return;
        string key = config.RopeStyle == RopeStyle.AdjacentPairs ? "llama.context_length" : "max_position_embeddings";
        if (!_longContext || !p.GetValue(AllowLongContext))
            throw new LckvException($"--context {context} is past the {trained} positions the model was trained for ({key}); "
                + (_longContext ? "add --allow-long-context to run it anyway" : "this command does not go past them"));
        stderr.WriteLine($"warning: --context {context} is past the {trained} positions the model was trained for ({key}); quality past them is undefined");
    }

    /// <summary>The dtype --weights asks the matrices to be stored in; null to keep the checkpoint's.</summary>
    public DType? WeightsDType(ParseResult p) => p.GetValue(Weights) is { } w ? Parse(w, DTypes.ParseWeight) : null;

    /// <summary>The layer_types string --layout gives for a model of that depth; null for none or plain llama.</summary>
    public string? PresetLayerTypes(ParseResult p, int layers)
    {
        if (p.GetValue(Layout) is not { } layout) return null;
        string types = Layouts.LayerTypes(layout, layers);
        return layout.Trim().Equals("llama", StringComparison.OrdinalIgnoreCase) ? null : types;
    }

    public void ApplyThreads(ParseResult p)
    {
        if (_uses.HasFlag(ModelUses.Threads) && p.GetValue(Threads) is int t) SetThreads(t);
    }

    /// <summary>--threads t for the shared worker pool: from 1 to a few threads per core.</summary>
    public static void SetThreads(int t)
    {
        if (t < 1 || t > WorkerPool.MaxThreadCount)
            throw new LckvException($"--threads must be from 1 to {WorkerPool.MaxThreadCount} (4 per core, {Environment.ProcessorCount} cores), got {t}");
        WorkerPool.Shared.ThreadCount = t;
    }

    /// <summary>The tokenizer <see cref="LoadTokenizer(ParseResult, bool)"/> finds, checked against the model: one that does
    /// not fit its vocabulary is an error, special ids that disagree a warning on stderr.</summary>
    public TextTokenizer? LoadTokenizer(ParseResult p, bool required, LlamaModel model, TextWriter stderr)
    {
        var tokenizer = LoadTokenizer(p, required);
        if (tokenizer is not null)
            foreach (var w in tokenizer.CheckFits(model.Config, model.Source)) stderr.WriteLine($"warning: {w}");
        return tokenizer;
    }

    /// <summary>--tokenizer, else the model folder's tokenizer file, else the tokenizer a GGUF model carries.</summary>
    public TextTokenizer? LoadTokenizer(ParseResult p, bool required)
    {
        string? path = _uses.HasFlag(ModelUses.Tokenizer) ? p.GetValue(Tokenizer) : null;
        string? model = p.GetValue(Model);
        if (path is null && model is not null && File.Exists(model) && GgufFile.IsGguf(model))
        {
            using var gguf = GgufFile.Open(model);
            if (gguf.Metadata.TryGetValue(TokenizerKeys.Model, out var kind) && kind.Value is not ("no_vocab" or "none"))
                return TextTokenizer.FromGguf(gguf);
            if (required) throw new LckvException($"this needs a tokenizer: {model} carries none; give --tokenizer <tokenizer.model>");
            return null;
        }
        if (path is null && model is not null
            && (File.Exists(Path.Combine(model, "tokenizer.model")) || File.Exists(Path.Combine(model, "tokenizer.json"))))
            path = model;
        if (path is null)
        {
            if (required) throw new LckvException("this needs a tokenizer: the model folder has none; give --tokenizer <tokenizer.model>");
            return null;
        }
        return TextTokenizer.Load(path);
    }

    /// <summary>--kv-dtype, else the default for weights stored as <paramref name="weights"/>.</summary>
    public DType KvStorage(ParseResult p, DType weights) => p.GetValue(KvDType) is { } kv ? KvRows.Parse(kv) : DefaultKvDType(weights);

    /// <summary>--kv-dtype, else the default for the model's weights.</summary>
    public DType KvStorage(ParseResult p, LlamaModel model) => KvStorage(p, model.Weights.Embed.DType);

    /// <summary>The KV storage when none is asked for: f32 beside f32 weights, bf16 beside any narrower weights (a cache
    /// kept wider than the weights costs memory for no accuracy the weights carry).</summary>
    public static DType DefaultKvDType(DType weights) => weights == Numerics.DType.F32 ? Numerics.DType.F32 : Numerics.DType.BF16;

    public int Block(ParseResult p)
    {
        int b = p.GetValue(BlockSize);
        if (b < 1 || b > 4096) throw new LckvException($"--block-size must be in [1, 4096], got {b}");
        return b;
    }

    private static DType ParseWeightDType(string s) => Parse(s, DTypes.ParseFloat);

    private static DType Parse(string s, Func<string, DType> parse)
    {
        try { return parse(s); }
        catch (FormatException e) { throw new LckvException(e.Message); }
    }
}
