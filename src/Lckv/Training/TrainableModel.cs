using Lckv.Formats;
using Lckv.Model;
using Lckv.Numerics;

namespace Lckv.Training;

/// <summary>The parameters of one decoder layer; K and V are null on layers that compute no KV.</summary>
internal sealed class LayerParameters
{
    public required Parameter InputNorm, Q, O, PostNorm, Gate, Up, Down;
    public Parameter? K, V;
}

/// <summary>
/// A Llama/LCKV decoder with mutable f32 parameters and reverse-mode gradients through the iteration plan of
/// kv-sharing.md §4: per cyclic group m passes without gradient (nothing kept), b-1 recorded passes that do not
/// advance and one recorded pass that advances. Each KV a recorded pass computes is its own version with its own
/// gradient buffer, so the KV of grad pass k is differentiated through when pass k+1 reads it; the KV of the last
/// no-grad pass (or zeros, in a first pass) is a constant. Buffers are owned here, sized on first use by
/// (batch, seqLen) and reused. Not thread-safe.
/// </summary>
public sealed unsafe partial class TrainableModel : ITrainable
{
    private readonly Parameter[] _parameters;
    private readonly Parameter _embed, _finalNorm, _head;
    private readonly LayerParameters[] _layers;
    private readonly IReadOnlyList<PlanPass> _plan;
    private readonly MaskRule[] _masks;
    private RopeTable _rope;

    public ModelConfig Config { get; }
    public LayerMap Map { get; }
    public IReadOnlyList<Parameter> Parameters => _parameters;
    /// <summary>The passes one loss evaluation runs.</summary>
    public IReadOnlyList<PlanPass> Plan => _plan;

    private TrainableModel(ModelConfig config)
    {
        config.Validate();
        Config = config;
        Map = LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers);
        var specs = ModelWeights.Specs(config, Map);
        _parameters = specs.Select(s => new Parameter(s.Name, (long[])s.Shape.Clone(), decay: s.Shape.Length > 1)).ToArray();
        var byName = _parameters.ToDictionary(p => p.Name);
        Parameter P(string name) => byName[name];
        _embed = P("model.embed_tokens.weight");
        _finalNorm = P("model.norm.weight");
        _head = config.TieWordEmbeddings ? _embed : P("lm_head.weight");
        _layers = new LayerParameters[config.NumHiddenLayers];
        for (int i = 0; i < _layers.Length; i++)
        {
            string p = $"model.layers.{i}.";
            _layers[i] = new LayerParameters
            {
                InputNorm = P(p + "input_layernorm.weight"), Q = P(p + "self_attn.q_proj.weight"),
                K = Map.ComputesKv(i) ? P(p + "self_attn.k_proj.weight") : null,
                V = Map.ComputesKv(i) ? P(p + "self_attn.v_proj.weight") : null,
                O = P(p + "self_attn.o_proj.weight"), PostNorm = P(p + "post_attention_layernorm.weight"),
                Gate = P(p + "mlp.gate_proj.weight"), Up = P(p + "mlp.up_proj.weight"), Down = P(p + "mlp.down_proj.weight"),
            };
        }
        _plan = IterationPlan.Build(Map, config.ForwardPasses, config.BackwardPasses);
        _masks = Enumerable.Range(0, config.NumHiddenLayers).Select(i => Map.Mask(i, config.ForceNoDiag, config.SlidingWindow)).ToArray();
        _rope = new RopeTable(config.HeadDim, config.RopeTheta, config.MaxPositionEmbeddings);
    }

    /// <summary>
    /// Random initialisation, deterministic in seed: every matrix N(0, 0.02²) (embeddings included), the residual
    /// output projections (o_proj, down_proj) scaled by 1/sqrt(2L), norm weights 1.
    /// </summary>
    public static TrainableModel FromConfig(ModelConfig config, ulong seed)
    {
        var model = new TrainableModel(config);
        float residual = 1f / MathF.Sqrt(2f * config.NumHiddenLayers);
        for (int i = 0; i < model._parameters.Length; i++)
        {
            var p = model._parameters[i];
            if (p.Shape.Length == 1)
            {
                Array.Fill(p.Value, 1f);
                continue;
            }
            float std = 0.02f;
            if (p.Name.EndsWith("o_proj.weight", StringComparison.Ordinal) || p.Name.EndsWith("down_proj.weight", StringComparison.Ordinal))
                std *= residual;
            var rng = new SplitMix64(seed ^ ((ulong)(i + 1) * 0x9E3779B97F4A7C15UL));
            for (long e = 0; e < p.Value.LongLength; e++) p.Value[e] = std * rng.NextGaussian();
        }
        return model;
    }

    /// <summary>Copies every tensor the config implies (f32, f16 or bf16, widened to f32) into its parameter.</summary>
    public static TrainableModel FromWeights(ModelConfig config, TensorSet tensors)
    {
        var model = new TrainableModel(config);
        var expected = new HashSet<string>(model._parameters.Select(p => p.Name));
        foreach (var name in tensors.Names)
        {
            if (expected.Contains(name) || ModelWeights.IsKnownOptional(name)) continue;
            if (config.TieWordEmbeddings && name == "lm_head.weight") continue;
            throw new LckvException($"checkpoint has unexpected tensor '{name}' (not implied by config.json)");
        }
        foreach (var p in model._parameters)
        {
            if (!tensors.Contains(p.Name)) throw new LckvException($"checkpoint is missing tensor '{p.Name}' (expected shape [{string.Join(", ", p.Shape)}])");
            var info = tensors.Info(p.Name);
            if (!info.Shape.SequenceEqual(p.Shape))
                throw new LckvException($"tensor '{p.Name}' has shape {info.ShapeText} but config.json implies [{string.Join(", ", p.Shape)}]");
            if (!DTypes.IsFloat(info.DType))
                throw new LckvException($"tensor '{p.Name}' has dtype {DTypes.Name(info.DType)}; weights must be F32, F16 or BF16");
            Numerics.Convert.Widen(tensors.Pointer(p.Name), info.DType, p.Value);
        }
        return model;
    }

    /// <summary>Loads config.json and model.safetensors (or a sharded index) from a folder.</summary>
    public static TrainableModel FromCheckpoint(string folder)
    {
        var configPath = Path.Combine(folder, "config.json");
        if (!File.Exists(configPath)) throw new LckvException($"'{folder}' has no config.json");
        var config = ModelConfig.Load(configPath);
        using var tensors = TensorSet.Open(folder);
        return FromWeights(config, tensors);
    }

    /// <summary>Writes config.json (torch_dtype float32) and model.safetensors, each atomically.</summary>
    public void Save(string folder)
    {
        Directory.CreateDirectory(folder);
        var config = Config with { TorchDtype = "float32" };
        var configPath = Path.Combine(folder, "config.json");
        var tmp = configPath + ".tmp-" + Environment.ProcessId;
        File.WriteAllText(tmp, config.ToJson());
        File.Move(tmp, configPath, overwrite: true);
        SafeTensorsWriter.Write(Path.Combine(folder, TensorSet.SingleFileName),
            _parameters.Select(p => TensorData.FromSingles(p.Name, p.Shape, p.Value)),
            new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>An inference model over a copy of the current parameters (f32, in a native buffer).</summary>
    public unsafe LlamaModel ToInferenceModel(int? contextLength = null)
    {
        var config = Config with { TorchDtype = "float32" };
        var weights = ModelWeights.Random(config, Map, DType.F32, 0);
        try
        {
            foreach (var p in _parameters)
            {
                var w = Slot(weights, p.Name);
                if (w.Rows * (long)w.Cols != p.Value.LongLength) throw new InvalidOperationException($"size mismatch for {p.Name}");
                p.Value.AsSpan().CopyTo(new Span<float>((void*)w.Data, p.Value.Length));
            }
            return new LlamaModel(config, weights, "trained", contextLength);
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    private WeightMatrix Slot(ModelWeights w, string name)
    {
        if (name == _embed.Name) return w.Embed;
        if (name == _finalNorm.Name) return w.FinalNorm;
        if (name == "lm_head.weight") return w.Head;
        for (int i = 0; i < _layers.Length; i++)
        {
            var l = _layers[i];
            var lw = w.Layers[i];
            if (name == l.InputNorm.Name) return lw.InputNorm;
            if (name == l.Q.Name) return lw.Q;
            if (name == l.K?.Name) return lw.K!.Value;
            if (name == l.V?.Name) return lw.V!.Value;
            if (name == l.O.Name) return lw.O;
            if (name == l.PostNorm.Name) return lw.PostNorm;
            if (name == l.Gate.Name) return lw.Gate;
            if (name == l.Up.Name) return lw.Up;
            if (name == l.Down.Name) return lw.Down;
        }
        throw new InvalidOperationException($"no slot for {name}");
    }

    /// <summary>Sets every gradient to zero.</summary>
    public void ZeroGrad()
    {
        foreach (var p in _parameters) Array.Clear(p.Grad);
    }

    /// <summary>The parameter with this Hugging Face name.</summary>
    public Parameter ParameterNamed(string name)
        => _parameters.FirstOrDefault(p => p.Name == name) ?? throw new LckvException($"no parameter '{name}'");

    public long ParameterCount => _parameters.Sum(p => p.Value.LongLength);

    /// <summary>A view of a parameter's values as a matrix for the forward kernels; valid while pinned by the caller.</summary>
    private static WeightMatrix View(float* p, Parameter w)
        => new((nint)p, DType.F32, w.Shape.Length == 1 ? 1 : (int)w.Shape[0], (int)w.Shape[^1]);

    private static int Rows(Parameter w) => w.Shape.Length == 1 ? 1 : (int)w.Shape[0];
    private static int Cols(Parameter w) => (int)w.Shape[^1];

    private static Span<float> Slice(float[] a, int n) => a.AsSpan(0, n);
}
