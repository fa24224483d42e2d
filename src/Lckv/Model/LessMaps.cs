using System.Globalization;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Numerics;

namespace Lckv.Model;

/// <summary>
/// One layer's LESS maps (kv-compression.md §3), f32, row-major as in less.safetensors: the query map of every layer
/// (Q1 [H, D, Rh], Q2 [H, Rh, R]); on a store's owner layer also the key map (K1 [KV, D, Rh], K2 [KV, Rh, R]), the
/// key interaction W3 [KV, R, R] and the scalings S1, S2 [KV, R].
/// </summary>
public sealed class LessLayerMaps
{
    public required float[] Q1, Q2;
    public float[]? K1, K2, W3, S1, S2;
    public bool HasKeyMap => K1 is not null;
}

/// <summary>
/// The LESS maps of a model, trained for one eviction policy and budget: the feature maps
/// phi(q) = |gelu(gelu(q W1q) W2q)| and psi(k) = |k1 + s2 * (k1 W3)| with k1 = |s1| * gelu(gelu(k W1k) W2k), where q and
/// k are one head's rotated D-vectors. Loaded from and saved to less.safetensors (names
/// model.layers.{i}.self_attn.less.&lt;name&gt;, metadata policy, heavy or sinks, recent, rank, hidden).
/// </summary>
public sealed class LessMaps : ILessMaps
{
    public const string FileName = "less.safetensors";
    private const string Prefix = "model.layers.";
    private const string Infix = ".self_attn.less.";

    public LessMaps(int heads, int kvHeads, int headDim, int rank, int hidden, EvictionSettings trainedFor, LessLayerMaps[] layers)
    {
        if (heads <= 0 || kvHeads <= 0 || heads % kvHeads != 0) throw new ArgumentException($"{heads} query heads do not divide into {kvHeads} KV heads");
        if (headDim <= 0 || rank <= 0 || hidden <= 0) throw new ArgumentException("head dim, rank and hidden must be positive");
        (Heads, KvHeads, HeadDim, Rank, Hidden, TrainedFor, Layers) = (heads, kvHeads, headDim, rank, hidden, trainedFor, layers);
    }

    public int Heads { get; }
    public int KvHeads { get; }
    public int HeadDim { get; }
    /// <summary>R: the feature dimension of phi and psi.</summary>
    public int Rank { get; }
    /// <summary>Rh: the hidden width of the two-layer maps.</summary>
    public int Hidden { get; }
    /// <summary>The policy and budget the maps were trained for.</summary>
    public EvictionSettings TrainedFor { get; }
    public IReadOnlyList<LessLayerMaps> Layers { get; }

    /// <summary>Floats of one (store, sequence) state: Hs [KV, R, D] and z [KV, R].</summary>
    public int StateFloats => KvHeads * Rank * (HeadDim + 1);

    /// <summary>
    /// phi of one query head's vector q [D] under layer's maps into phi [R], one product at a time: the definition that
    /// <see cref="PhiRows"/> is checked against. hidden is scratch of at least Rh floats.
    /// </summary>
    public void Phi(int layer, int head, ReadOnlySpan<float> q, Span<float> phi, Span<float> hidden)
    {
        var m = Layers[layer];
        int d = HeadDim, rh = Hidden, r = Rank;
        var h = hidden[..rh];
        VecMat(q[..d], m.Q1.AsSpan(head * d * rh, d * rh), h);
        Gelu.Apply(h, h);
        VecMat(h, m.Q2.AsSpan(head * rh * r, rh * r), phi[..r]);
        for (int i = 0; i < r; i++) phi[i] = MathF.Abs(Gelu.Apply(phi[i]));
    }

    /// <summary>phi of n rows at once (x [n, D] into phi [n, R], scratch of n * Rh floats): both products and GELUs by the
    /// few-row kernel, over copies of the maps in its layouts (taken at the first call: the maps do not change while
    /// they serve).</summary>
    public void PhiRows(int layer, int head, ReadOnlySpan<float> x, int n, Span<float> phi, Span<float> scratch)
    {
        int d = HeadDim, rh = Hidden, r = Rank;
        var p = phi[..(n * r)];
        var f = Kernel(layer);
        GeluMlp.Apply(x, n, d, f.Q1[head], f.Q2.AsSpan(head * r * rh, r * rh), rh, r, p, scratch, ReadAfter(layer, true, head));
        System.Numerics.Tensors.TensorPrimitives.Abs(p, p);
    }

    // per layer, in the few-row kernel's layouts: each head's W1 packed (GeluMlp.Pack) and W2 [Rh, R] as its transpose
    // [R, Rh], for the query map (Q) and the key map (K)
    private sealed record KernelMaps(float[][] Q1, float[] Q2, float[][]? K1, float[]? K2);

    private KernelMaps?[]? _kernel;

    private KernelMaps Kernel(int layer)
    {
        var all = _kernel ??= new KernelMaps?[Layers.Count];
        if (System.Threading.Volatile.Read(ref all[layer]) is { } done) return done;
        lock (all)
        {
            if (all[layer] is { } again) return again;
            var t = BuildKernelMaps(Layers[layer]);
            System.Threading.Volatile.Write(ref all[layer], t);
            return t;
        }
    }

    private KernelMaps BuildKernelMaps(LessLayerMaps m)
    {
        int d = HeadDim, rh = Hidden, r = Rank;
        float[][] First(float[] w, int count) =>
            Enumerable.Range(0, count).Select(i => GeluMlp.Pack(w.AsSpan(i * d * rh, d * rh), d, rh)).ToArray();
        float[] Second(float[] w, int count)
        {
            var tr = new float[w.Length];
            for (int i = 0; i < count; i++)
                for (int a = 0; a < rh; a++)
                    for (int b = 0; b < r; b++) tr[(i * r + b) * rh + a] = w[(i * rh + a) * r + b];
            return tr;
        }
        return new KernelMaps(First(m.Q1, Heads), Second(m.Q2, Heads),
            m.HasKeyMap ? First(m.K1!, KvHeads) : null, m.HasKeyMap ? Second(m.K2!, KvHeads) : null);
    }

    // the packed W1 a thread reads after the given one: a step's LESS work goes by KV head, each in one thread's
    // contiguous range, and for KV head g the key map (the store's evictions are folded first), then the query maps of
    // g's group; after the last head, the next layer's first map
    private ReadOnlySpan<float> ReadAfter(int layer, bool query, int index)
    {
        var f = Kernel(layer);
        int group = Heads / KvHeads;
        if (!query) return f.Q1[index * group];
        if ((index + 1) % group != 0) return f.Q1[index + 1];
        if (index + 1 < Heads) return f.K1 is { } own ? own[(index + 1) / group] : f.Q1[index + 1];
        if (layer + 1 >= Layers.Count) return default;
        var g = Kernel(layer + 1);
        return g.K1 is { } k ? k[0] : g.Q1[0];
    }

    /// <summary>Scratch floats per row of PsiRows: Rh + 2R.</summary>
    public int PsiScratchFloats => Hidden + 2 * Rank;

    /// <summary>psi of n keys at once (x [n, D] into psi [n, R]): the two-layer map by the few-row kernel (as in
    /// <see cref="PhiRows"/>), then the scalings and the key interaction per row.</summary>
    public void PsiRows(int layer, int kvHead, ReadOnlySpan<float> x, int n, Span<float> psi, Span<float> scratch)
    {
        var m = Layers[layer];
        if (!m.HasKeyMap) throw new InvalidOperationException($"layer {layer} has no LESS key map");
        int d = HeadDim, rh = Hidden, r = Rank;
        var h = scratch[..(n * rh)];
        var k1 = scratch.Slice(n * rh, n * r);
        var p = scratch.Slice(n * (rh + r), n * r);
        var f = Kernel(layer);
        GeluMlp.Apply(x, n, d, f.K1![kvHead], f.K2!.AsSpan(kvHead * r * rh, r * rh), rh, r, k1, h, ReadAfter(layer, false, kvHead));
        var s1 = m.S1.AsSpan(kvHead * r, r);
        var s2 = m.S2.AsSpan(kvHead * r, r);
        var w3 = m.W3!.AsSpan(kvHead * r * r, r * r);
        // psi = |k1 + s2 * (k1 W3)| per row, W3 [R, R] row-major (R is a handful: plain loops)
        for (int i = 0; i < n; i++)
        {
            var row = k1.Slice(i * r, r);
            for (int c = 0; c < r; c++) row[c] *= MathF.Abs(s1[c]);
            var sum = p.Slice(i * r, r);
            sum.Clear();
            for (int b = 0; b < r; b++)
            {
                float kb = row[b];
                var w = w3.Slice(b * r, r);
                for (int c = 0; c < r; c++) sum[c] += w[c] * kb;
            }
            for (int c = 0; c < r; c++) psi[i * r + c] = MathF.Abs(row[c] + s2[c] * sum[c]);
        }
    }

    /// <summary>psi of one KV head's key k [D] under the owner layer's key map into psi [R], one product at a time (the
    /// definition <see cref="PsiRows"/> is checked against); hidden: at least Rh + R floats.</summary>
    public void Psi(int layer, int kvHead, ReadOnlySpan<float> k, Span<float> psi, Span<float> hidden)
    {
        var m = Layers[layer];
        if (!m.HasKeyMap) throw new InvalidOperationException($"layer {layer} has no LESS key map");
        int d = HeadDim, rh = Hidden, r = Rank;
        var h = hidden[..rh];
        var k1 = hidden.Slice(rh, r);
        VecMat(k[..d], m.K1!.AsSpan(kvHead * d * rh, d * rh), h);
        Gelu.Apply(h, h);
        VecMat(h, m.K2!.AsSpan(kvHead * rh * r, rh * r), k1);
        for (int i = 0; i < r; i++) k1[i] = MathF.Abs(m.S1![kvHead * r + i]) * Gelu.Apply(k1[i]);
        VecMat(k1, m.W3!.AsSpan(kvHead * r * r, r * r), psi[..r]);
        for (int i = 0; i < r; i++) psi[i] = MathF.Abs(k1[i] + m.S2![kvHead * r + i] * psi[i]);
    }

    /// <summary>Scratch floats the one-vector <see cref="Psi"/> needs: Rh + R.</summary>
    public int ScratchFloats => Hidden + Rank;

    // y = x W for W [x.Length, y.Length] row-major
    private static void VecMat(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> y)
    {
        int n = y.Length;
        y.Clear();
        for (int i = 0; i < x.Length; i++)
            System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(w.Slice(i * n, n), x[i], y, y);
    }

    /// <summary>
    /// Maps shaped for a model (every layer's query map, each KV-computing layer's key map), drawn as a fresh start for
    /// training: the matrices uniform in ±1/sqrt(fan_in) (PyTorch's Linear default), W3 likewise, s1 = s2 = 1e-4.
    /// </summary>
    public static LessMaps Initial(ModelConfig config, LayerMap map, int rank, int hidden, EvictionSettings trainedFor, int seed)
    {
        var rng = new Random(seed);
        int h = config.NumAttentionHeads, kv = config.NumKeyValueHeads, d = config.HeadDim;
        float[] Uniform(int n, int fanIn)
        {
            var a = new float[n];
            float bound = 1f / MathF.Sqrt(fanIn);
            for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * bound;
            return a;
        }
        var layers = new LessLayerMaps[map.LayerCount];
        for (int i = 0; i < layers.Length; i++)
        {
            layers[i] = new LessLayerMaps { Q1 = Uniform(h * d * hidden, d), Q2 = Uniform(h * hidden * rank, hidden) };
            if (!map.ComputesKv(i)) continue;
            layers[i].K1 = Uniform(kv * d * hidden, d);
            layers[i].K2 = Uniform(kv * hidden * rank, hidden);
            layers[i].W3 = Uniform(kv * rank * rank, rank);
            layers[i].S1 = Enumerable.Repeat(1e-4f, kv * rank).ToArray();
            layers[i].S2 = Enumerable.Repeat(1e-4f, kv * rank).ToArray();
        }
        return new LessMaps(h, kv, d, rank, hidden, trainedFor, layers);
    }

    /// <summary>
    /// Reads less.safetensors (a file, or a folder holding one) for a model: every layer's query map and every
    /// KV-computing layer's key map must be there with the model's shapes and one rank and hidden width (the
    /// metadata's); anything else is an error naming the tensor.
    /// </summary>
    public static LessMaps Load(string path, ModelConfig config, LayerMap map)
    {
        if (Directory.Exists(path)) path = System.IO.Path.Combine(path, FileName);
        if (!File.Exists(path)) throw new LckvException($"LESS maps '{path}' do not exist");
        using var file = SafeTensorsFile.Open(path);
        var meta = file.Metadata;
        string Meta(string key) => meta.TryGetValue(key, out var v) ? v : throw new LckvException($"{path}: metadata has no '{key}'");
        int MetaInt(string key, bool required = true)
        {
            if (!meta.ContainsKey(key) && !required) return 0;
            string v = Meta(key);
            return int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int n)
                ? n : throw new LckvException($"{path}: metadata '{key}' is '{Printable.Escape(v, 40)}', expected a non-negative integer");
        }
        var kind = Meta("policy") switch
        {
            "h2o" => EvictionKind.H2O,
            "streaming" => EvictionKind.Streaming,
            var other => throw new LckvException($"{path}: metadata policy '{Printable.Escape(other, 40)}', expected h2o or streaming"),
        };
        var trained = kind == EvictionKind.H2O
            ? new EvictionSettings(kind, Heavy: MetaInt("heavy"), Recent: MetaInt("recent"))
            : new EvictionSettings(kind, Sinks: MetaInt("sinks"), Recent: MetaInt("recent"));
        int rank = MetaInt("rank"), hidden = MetaInt("hidden");
        if (rank <= 0 || hidden <= 0) throw new LckvException($"{path}: rank {rank} and hidden {hidden} must be positive");
        int h = config.NumAttentionHeads, kv = config.NumKeyValueHeads, d = config.HeadDim;
        var used = new HashSet<string>(StringComparer.Ordinal);
        float[] Read(int layer, string name, params long[] shape)
        {
            string full = Prefix + layer + Infix + name;
            if (!file.Tensors.TryGetValue(full, out var info)) throw new LckvException($"{path}: no tensor '{full}' (layer {layer} of {map.LayerCount})");
            if (info.DType != DType.F32) throw new LckvException($"{path}: '{full}' is {DTypes.Name(info.DType)}, expected F32");
            if (!info.Shape.SequenceEqual(shape))
                throw new LckvException($"{path}: '{full}' has shape {SafeTensorsFile.FormatShape(info.Shape)}, the model needs {SafeTensorsFile.FormatShape(shape)} (heads {h}, KV heads {kv}, head dim {d}, hidden {hidden}, rank {rank})");
            used.Add(full);
            var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(file.Bytes(full)).ToArray();
            foreach (float x in values)
                if (!float.IsFinite(x)) throw new LckvException($"{path}: '{full}' holds a non-finite value");
            return values;
        }
        var layers = new LessLayerMaps[map.LayerCount];
        for (int i = 0; i < layers.Length; i++)
        {
            layers[i] = new LessLayerMaps { Q1 = Read(i, "kernel_q_mat1", h, d, hidden), Q2 = Read(i, "kernel_q_mat2", h, hidden, rank) };
            if (!map.ComputesKv(i)) continue;
            layers[i].K1 = Read(i, "kernel_k_mat1", kv, d, hidden);
            layers[i].K2 = Read(i, "kernel_k_mat2", kv, hidden, rank);
            layers[i].W3 = Read(i, "interaction_k", kv, rank, rank);
            layers[i].S1 = Read(i, "scalingD", kv, rank);
            layers[i].S2 = Read(i, "scalingD2", kv, rank);
        }
        var extra = file.Tensors.Keys.Where(n => !used.Contains(n)).Order(StringComparer.Ordinal).FirstOrDefault();
        if (extra is not null)
            throw new LckvException($"{path}: tensor '{Printable.Escape(extra)}' does not belong to this model's LESS maps ({map.LayerCount} layers, key maps on the KV layers)");
        return new LessMaps(h, kv, d, rank, hidden, trained, layers);
    }

    /// <summary>Writes the maps as less.safetensors, atomically (extra: more metadata, e.g. a trainer's progress).</summary>
    public void Save(string path, IReadOnlyDictionary<string, string>? extra = null)
    {
        var tensors = new List<TensorData>();
        int h = Heads, kv = KvHeads, d = HeadDim, rh = Hidden, r = Rank;
        for (int i = 0; i < Layers.Count; i++)
        {
            var m = Layers[i];
            void Add(string name, float[] values, params long[] shape) => tensors.Add(TensorData.FromSingles(Prefix + i + Infix + name, shape, values));
            Add("kernel_q_mat1", m.Q1, h, d, rh);
            Add("kernel_q_mat2", m.Q2, h, rh, r);
            if (!m.HasKeyMap) continue;
            Add("kernel_k_mat1", m.K1!, kv, d, rh);
            Add("kernel_k_mat2", m.K2!, kv, rh, r);
            Add("interaction_k", m.W3!, kv, r, r);
            Add("scalingD", m.S1!, kv, r);
            Add("scalingD2", m.S2!, kv, r);
        }
        var meta = new Dictionary<string, string>
        {
            ["policy"] = TrainedFor.Kind == EvictionKind.H2O ? "h2o" : "streaming",
            ["recent"] = TrainedFor.Recent.ToString(CultureInfo.InvariantCulture),
            ["rank"] = r.ToString(CultureInfo.InvariantCulture),
            ["hidden"] = rh.ToString(CultureInfo.InvariantCulture),
        };
        if (TrainedFor.Kind == EvictionKind.H2O) meta["heavy"] = TrainedFor.Heavy.ToString(CultureInfo.InvariantCulture);
        else meta["sinks"] = TrainedFor.Sinks.ToString(CultureInfo.InvariantCulture);
        if (extra is not null) foreach (var (k, v) in extra) meta[k] = v;
        SafeTensorsWriter.Write(path, tensors, meta);
    }

    /// <summary>Null when the eviction is what the maps were trained for; otherwise a warning that says both (maps run
    /// under another policy or budget, but were not trained for it). No eviction at all is an error.</summary>
    public string? Mismatch(EvictionSettings eviction)
    {
        if (eviction.Kind == EvictionKind.None) throw new LckvException("LESS needs an eviction policy (--evict h2o or streaming): it summarises what the policy evicts");
        if (eviction.Kind == TrainedFor.Kind && eviction.Budget == TrainedFor.Budget && eviction.Recent == TrainedFor.Recent) return null;
        return $"the LESS maps were trained for {Describe(TrainedFor)}, running under {Describe(eviction)}";
    }

    private static string Describe(EvictionSettings e) => e.Kind == EvictionKind.H2O
        ? $"h2o heavy {e.Heavy} recent {e.Recent}" : $"streaming sinks {e.Sinks} recent {e.Recent}";
}

