using Lckv.Formats;
using Lckv.Model;
using Lckv.Numerics;

namespace Lckv.Training;

/// <summary>The parameters of one decoder layer; K and V are null on layers that compute no KV.</summary>
internal sealed class LayerParameters
{
    public Parameter InputNorm = null!, Q = null!, O = null!, PostNorm = null!, Gate = null!, Up = null!, Down = null!;
    public Parameter? K, V;

    public void Set(WeightSlot slot, Parameter p)
    {
        switch (slot)
        {
            case WeightSlot.InputNorm: InputNorm = p; break;
            case WeightSlot.Q: Q = p; break;
            case WeightSlot.K: K = p; break;
            case WeightSlot.V: V = p; break;
            case WeightSlot.O: O = p; break;
            case WeightSlot.PostNorm: PostNorm = p; break;
            case WeightSlot.Gate: Gate = p; break;
            case WeightSlot.Up: Up = p; break;
            case WeightSlot.Down: Down = p; break;
            default: throw new ArgumentOutOfRangeException(nameof(slot), slot, "not a layer weight");
        }
    }

    /// <summary>f32 matrix views of the (pinned) parameter values, for the forward kernels.</summary>
    public LayerWeights Views() => new()
    {
        InputNorm = View(InputNorm), Q = View(Q), K = K is null ? null : View(K), V = V is null ? null : View(V), O = View(O),
        PostNorm = View(PostNorm), Gate = View(Gate), Up = View(Up), Down = View(Down),
    };

    private static unsafe WeightMatrix View(Parameter p)
    {
        fixed (float* v = p.Value) // pinned at allocation: the address outlives the fixed block
            return new WeightMatrix((nint)v, DType.F32, p.Shape.Length == 1 ? 1 : (int)p.Shape[0], (int)p.Shape[^1]);
    }
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
    private readonly LayerWeights[] _layerWeights;
    private readonly ForwardContext _ctx;

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
        _layers = new LayerParameters[config.NumHiddenLayers];
        for (int i = 0; i < _layers.Length; i++) _layers[i] = new LayerParameters();
        Parameter? embed = null, finalNorm = null, head = null;
        // the one weight table: each parameter fills the field its spec names; the forward reads f32 views of them
        for (int i = 0; i < specs.Count; i++)
        {
            var s = specs[i];
            var p = _parameters[i];
            switch (s.Slot)
            {
                case WeightSlot.Embed: embed = p; break;
                case WeightSlot.FinalNorm: finalNorm = p; break;
                case WeightSlot.Head: head = p; break;
                default: _layers[s.Layer].Set(s.Slot, p); break;
            }
        }
        _embed = embed!;
        _finalNorm = finalNorm!;
        _head = config.TieWordEmbeddings ? _embed : head!;
        _layerWeights = [.. _layers.Select(l => l.Views())];
        _plan = IterationPlan.Build(Map, config.ForwardPasses, config.BackwardPasses);
        _ctx = new ForwardContext(config, Map, new RopeTable(config.HeadDim, config.RopeTheta, config.MaxPositionEmbeddings, config.RopeStyle));
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
            if (DTypes.IsBlockQuantized(info.DType))
                throw new LckvException($"tensor '{p.Name}' is {DTypes.Name(info.DType)}: training needs F32, F16 or BF16 weights (quantized weights are for inference only)");
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
            var specs = ModelWeights.Specs(config, Map);
            for (int i = 0; i < specs.Count; i++)
            {
                var p = _parameters[i];
                var w = weights.Matrix(specs[i]);
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

    /// <summary>Sets every gradient to zero.</summary>
    public void ZeroGrad()
    {
        foreach (var p in _parameters) Array.Clear(p.Grad);
    }

    public long ParameterCount => _parameters.Sum(p => p.Value.LongLength);

    /// <summary>A view of a parameter's values as a matrix for the forward kernels; valid while pinned by the caller.</summary>
    private static WeightMatrix View(float* p, Parameter w)
        => new((nint)p, DType.F32, w.Shape.Length == 1 ? 1 : (int)w.Shape[0], (int)w.Shape[^1]);

    private static int Rows(Parameter w) => w.Shape.Length == 1 ? 1 : (int)w.Shape[0];
    private static int Cols(Parameter w) => (int)w.Shape[^1];

    private static Span<float> Slice(float[] a, int n) => a.AsSpan(0, n);
}
