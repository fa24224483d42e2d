using System.Runtime.InteropServices;
using Lckv.Formats;
using Lckv.Numerics;

namespace Lckv.Model;

/// <summary>The tensors of one decoder layer. K and V are absent on layers that compute no KV.</summary>
public sealed class LayerWeights
{
    public WeightMatrix InputNorm;
    public WeightMatrix Q;
    public WeightMatrix? K;
    public WeightMatrix? V;
    public WeightMatrix O;
    public WeightMatrix PostNorm;
    public WeightMatrix Gate;
    public WeightMatrix Up;
    public WeightMatrix Down;
}

/// <summary>Which field a Hugging Face tensor fills.</summary>
public enum WeightSlot { Embed, FinalNorm, Head, InputNorm, Q, K, V, O, PostNorm, Gate, Up, Down }

/// <summary>A tensor the config implies: its Hugging Face name, shape (row-major, [out, in]) and the field it fills.</summary>
public readonly record struct WeightSpec(string Name, WeightSlot Slot, int Layer, long[] Shape)
{
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);
    public int Rows => Shape.Length == 1 ? 1 : (int)Shape[0];
    public int Cols => (int)Shape[^1];

    /// <summary>The tensor's name in a GGUF file (llama.cpp's names for the llama architecture).</summary>
    public string GgufName => Slot switch
    {
        WeightSlot.Embed => "token_embd.weight",
        WeightSlot.FinalNorm => "output_norm.weight",
        WeightSlot.Head => "output.weight",
        WeightSlot.InputNorm => $"blk.{Layer}.attn_norm.weight",
        WeightSlot.Q => $"blk.{Layer}.attn_q.weight",
        WeightSlot.K => $"blk.{Layer}.attn_k.weight",
        WeightSlot.V => $"blk.{Layer}.attn_v.weight",
        WeightSlot.O => $"blk.{Layer}.attn_output.weight",
        WeightSlot.PostNorm => $"blk.{Layer}.ffn_norm.weight",
        WeightSlot.Gate => $"blk.{Layer}.ffn_gate.weight",
        WeightSlot.Up => $"blk.{Layer}.ffn_up.weight",
        _ => $"blk.{Layer}.ffn_down.weight",
    };

    /// <summary>The name this tensor has in the set: its GGUF name in a GGUF file, else its Hugging Face name.</summary>
    public string NameIn(TensorSet tensors) => tensors.Gguf is null ? Name : GgufName;
}

/// <summary>
/// All weights of a Llama decoder, each in its checkpoint dtype in memory the model does not copy (a memory-mapped
/// checkpoint, or a native buffer for random presets), or converted once at load (<see cref="ConvertTo"/>: e.g.
/// quantized to Q8_0 or Q4_0). Specs is the one table from Hugging Face names to fields.
/// </summary>
public sealed class ModelWeights : IDisposable
{
    public WeightMatrix Embed;
    public WeightMatrix FinalNorm;
    /// <summary>The output head; the embedding when tie_word_embeddings.</summary>
    public WeightMatrix Head;
    public LayerWeights[] Layers { get; }
    public long Bytes { get; private set; }
    private readonly IDisposable? _owner;
    private readonly IReadOnlyList<WeightSpec> _specs;

    private ModelWeights(IReadOnlyList<WeightSpec> specs, int layers, IDisposable? owner)
    {
        Layers = new LayerWeights[layers];
        for (int i = 0; i < layers; i++) Layers[i] = new LayerWeights();
        _owner = owner;
        _specs = specs;
    }

    /// <summary>Tensors that some Hugging Face checkpoints carry and the model does not need.</summary>
    public static bool IsKnownOptional(string name)
        => name.EndsWith(".self_attn.rotary_emb.inv_freq", StringComparison.Ordinal);

    /// <summary>The one table: every tensor the config and layer map imply, with its shape.</summary>
    public static IReadOnlyList<WeightSpec> Specs(ModelConfig c, LayerMap map)
    {
        long hidden = c.HiddenSize, qDim = (long)c.NumAttentionHeads * c.HeadDim, kvDim = (long)c.NumKeyValueHeads * c.HeadDim;
        long inter = c.IntermediateSize, vocab = c.VocabSize;
        var specs = new List<WeightSpec> { new("model.embed_tokens.weight", WeightSlot.Embed, -1, [vocab, hidden]) };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            specs.Add(new(p + "input_layernorm.weight", WeightSlot.InputNorm, i, [hidden]));
            specs.Add(new(p + "self_attn.q_proj.weight", WeightSlot.Q, i, [qDim, hidden]));
            if (map.ComputesKv(i))
            {
                specs.Add(new(p + "self_attn.k_proj.weight", WeightSlot.K, i, [kvDim, hidden]));
                specs.Add(new(p + "self_attn.v_proj.weight", WeightSlot.V, i, [kvDim, hidden]));
            }
            specs.Add(new(p + "self_attn.o_proj.weight", WeightSlot.O, i, [hidden, qDim]));
            specs.Add(new(p + "post_attention_layernorm.weight", WeightSlot.PostNorm, i, [hidden]));
            specs.Add(new(p + "mlp.gate_proj.weight", WeightSlot.Gate, i, [inter, hidden]));
            specs.Add(new(p + "mlp.up_proj.weight", WeightSlot.Up, i, [inter, hidden]));
            specs.Add(new(p + "mlp.down_proj.weight", WeightSlot.Down, i, [hidden, inter]));
        }
        specs.Add(new("model.norm.weight", WeightSlot.FinalNorm, -1, [hidden]));
        if (!c.TieWordEmbeddings) specs.Add(new("lm_head.weight", WeightSlot.Head, -1, [vocab, hidden]));
        return specs;
    }

    /// <summary>
    /// Binds the checkpoint's tensors without copying them: every spec must be present with its exact shape and a
    /// float dtype; a tensor the config does not imply is an error unless it is a known optional one.
    /// </summary>
    /// <remarks>A GGUF file's tensors go by their GGUF names, and their shapes are quoted as the file lists them
    /// (ne, innermost first).</remarks>
    public static ModelWeights FromTensors(ModelConfig config, LayerMap map, TensorSet tensors)
    {
        var specs = Specs(config, map);
        var weights = new ModelWeights(specs, config.NumHiddenLayers, tensors);
        bool gguf = tensors.Gguf is not null;
        string source = gguf ? "the GGUF metadata" : "config.json";
        string Shape(IEnumerable<long> rowMajor) => gguf ? "ne " + GgufFile.FormatNe(rowMajor.Reverse()) : $"[{string.Join(", ", rowMajor)}]";
        var expected = new HashSet<string>(specs.Select(s => s.NameIn(tensors)));
        foreach (var name in tensors.Names)
        {
            if (expected.Contains(name) || (!gguf && IsKnownOptional(name))) continue;
            if (config.TieWordEmbeddings && name == (gguf ? "output.weight" : "lm_head.weight")) continue; // some tied checkpoints still store it
            throw new LckvException(name.EndsWith("k_proj.weight", StringComparison.Ordinal) || name.EndsWith("v_proj.weight", StringComparison.Ordinal)
                ? $"checkpoint has tensor '{Formats.Printable.Escape(name)}' but layer_types says that layer computes no KV"
                : $"checkpoint has unexpected tensor '{Formats.Printable.Escape(name)}' (not implied by {source})");
        }
        foreach (var s in specs)
        {
            string name = s.NameIn(tensors);
            if (!tensors.Contains(name)) throw new LckvException($"checkpoint is missing tensor '{name}' (expected shape {Shape(s.Shape)})");
            var info = tensors.Info(name);
            if (!info.Shape.SequenceEqual(s.Shape))
                throw new LckvException($"tensor '{name}' has shape {Shape(info.Shape)} but {source} implies {Shape(s.Shape)}");
            // matrices may be block-quantized (their kernels dequantize in registers); norms are read as floats
            if (!DTypes.IsFloat(info.DType) && !(DTypes.IsBlockQuantized(info.DType) && s.Shape.Length == 2))
                throw new LckvException($"tensor '{name}' has dtype {DTypes.Name(info.DType)}; weights must be F32, F16 or BF16 (Q8_0 or Q4_0 for matrices)");
            weights.Set(s, new WeightMatrix(tensors.Pointer(name), info.DType, s.Rows, s.Cols));
            weights.Bytes += info.Length;
        }
        if (config.TieWordEmbeddings) weights.Head = weights.Embed;
        return weights;
    }

    /// <summary>
    /// Random weights in one native buffer of the given dtype (for presets and benchmarks): normal with the
    /// reference's scales (embeddings 1, projections 1/sqrt(fan_in), norms 1 + 0.1 noise). Deterministic in seed.
    /// </summary>
    public static unsafe ModelWeights Random(ModelConfig config, LayerMap map, DType dtype, ulong seed)
    {
        var specs = Specs(config, map);
        int es = DTypes.SizeOf(dtype);
        long total = 0;
        var offsets = new long[specs.Count];
        for (int i = 0; i < specs.Count; i++) { offsets[i] = total; total += (specs[i].Elements * es + 63) / 64 * 64; }
        var buffer = new NativeBuffer(total);
        var weights = new ModelWeights(specs, config.NumHiddenLayers, buffer) { Bytes = total };
        // fill in parallel chunks of 1M elements; each chunk has its own stream so the result is thread-independent
        var jobs = new List<(int Spec, long Start, long Count)>();
        for (int i = 0; i < specs.Count; i++)
            for (long s = 0; s < specs[i].Elements; s += 1 << 20) jobs.Add((i, s, Math.Min(1 << 20, specs[i].Elements - s)));
        Parallel.ForEach(jobs, job =>
        {
            var spec = specs[job.Spec];
            bool norm = spec.Shape.Length == 1;
            float scale = spec.Slot == WeightSlot.Embed ? 1f : norm ? 0.1f : 1f / MathF.Sqrt(spec.Cols);
            var rng = new SplitMix64(seed ^ ((ulong)job.Spec << 40) ^ (ulong)job.Start * 0x9E3779B97F4A7C15UL);
            nint dst = buffer.Pointer + (nint)(offsets[job.Spec] + job.Start * es);
            Span<float> tmp = stackalloc float[256];
            for (long o = 0; o < job.Count; o += tmp.Length)
            {
                int n = (int)Math.Min(tmp.Length, job.Count - o);
                for (int e = 0; e < n; e++) tmp[e] = (norm ? 1f : 0f) + scale * rng.NextGaussian();
                Numerics.Convert.Narrow(tmp[..n], dtype, dst + (nint)(o * es));
            }
        });
        for (int i = 0; i < specs.Count; i++)
            weights.Set(specs[i], new WeightMatrix(buffer.Pointer + (nint)offsets[i], dtype, specs[i].Rows, specs[i].Cols));
        if (config.TieWordEmbeddings) weights.Head = weights.Embed;
        return weights;
    }

    /// <summary>
    /// These weights with every matrix (the projections, the embedding and an untied head) stored as dtype in one new
    /// native buffer: Q8_0 and Q4_0 quantized byte for byte as llama.cpp quantizes them (<see cref="Quantize"/>), f32,
    /// f16 and bf16 rounded to nearest even. The norms are copied in their own dtype. The rows are converted in
    /// parallel; these weights stay valid (the caller disposes them).
    /// </summary>
    public unsafe ModelWeights ConvertTo(DType dtype)
    {
        if (!DTypes.IsWeight(dtype)) throw new ArgumentException($"weights are f32, f16, bf16, Q8_0 or Q4_0, not {DTypes.Name(dtype)}", nameof(dtype));
        var dst = _specs.Select(s => s.Shape.Length == 1 ? Matrix(s).DType : dtype).ToArray();
        foreach (var (s, i) in _specs.Select((s, i) => (s, i)))
            if (s.Cols % DTypes.BlockElements(dst[i]) != 0)
                throw new LckvException($"tensor '{s.Name}' has rows of {s.Cols} values; {DTypes.Name(dtype)} needs whole blocks of {DTypes.BlockElements(dtype)}");
        long total = 0;
        var offsets = new long[_specs.Count];
        for (int i = 0; i < _specs.Count; i++) { offsets[i] = total; total += (_specs[i].Rows * DTypes.RowBytes(dst[i], _specs[i].Cols) + 63) / 64 * 64; }
        var buffer = new NativeBuffer(total);
        try
        {
            var converted = new ModelWeights(_specs, Layers.Length, buffer) { Bytes = total };
            for (int i = 0; i < _specs.Count; i++)
                converted.Set(_specs[i], new WeightMatrix(buffer.Pointer + (nint)offsets[i], dst[i], _specs[i].Rows, _specs[i].Cols));
            // chunks of about 1M values, each widened a row at a time and stored as the new dtype
            var jobs = new List<(int Spec, int Row, int Rows)>();
            for (int i = 0; i < _specs.Count; i++)
            {
                int step = Math.Max(1, (1 << 20) / Math.Max(1, _specs[i].Cols));
                for (int r = 0; r < _specs[i].Rows; r += step) jobs.Add((i, r, Math.Min(step, _specs[i].Rows - r)));
            }
            Parallel.ForEach(jobs, job =>
            {
                var from = Matrix(_specs[job.Spec]);
                var to = converted.Matrix(_specs[job.Spec]);
                var row = new float[from.Cols];
                for (int r = job.Row; r < job.Row + job.Rows; r++)
                {
                    from.ReadRow(r, row);
                    Quantize.Row(to.DType, row, new Span<byte>((byte*)to.Data + r * to.RowBytes, (int)to.RowBytes));
                }
            });
            if (!_specs.Any(s => s.Slot == WeightSlot.Head)) converted.Head = converted.Embed; // tied
            return converted;
        }
        catch
        {
            buffer.Dispose();
            throw;
        }
    }

    /// <summary>Whether every matrix (the norms aside) is stored as dtype.</summary>
    public bool MatricesAre(DType dtype) => _specs.All(s => s.Shape.Length == 1 || Matrix(s).DType == dtype);

    /// <summary>The matrix a spec's field holds.</summary>
    public WeightMatrix Matrix(WeightSpec s) => s.Slot switch
    {
        WeightSlot.Embed => Embed,
        WeightSlot.FinalNorm => FinalNorm,
        WeightSlot.Head => Head,
        WeightSlot.InputNorm => Layers[s.Layer].InputNorm,
        WeightSlot.Q => Layers[s.Layer].Q,
        WeightSlot.K => Layers[s.Layer].K!.Value,
        WeightSlot.V => Layers[s.Layer].V!.Value,
        WeightSlot.O => Layers[s.Layer].O,
        WeightSlot.PostNorm => Layers[s.Layer].PostNorm,
        WeightSlot.Gate => Layers[s.Layer].Gate,
        WeightSlot.Up => Layers[s.Layer].Up,
        _ => Layers[s.Layer].Down,
    };

    private void Set(WeightSpec s, WeightMatrix m)
    {
        switch (s.Slot)
        {
            case WeightSlot.Embed: Embed = m; break;
            case WeightSlot.FinalNorm: FinalNorm = m; break;
            case WeightSlot.Head: Head = m; break;
            case WeightSlot.InputNorm: Layers[s.Layer].InputNorm = m; break;
            case WeightSlot.Q: Layers[s.Layer].Q = m; break;
            case WeightSlot.K: Layers[s.Layer].K = m; break;
            case WeightSlot.V: Layers[s.Layer].V = m; break;
            case WeightSlot.O: Layers[s.Layer].O = m; break;
            case WeightSlot.PostNorm: Layers[s.Layer].PostNorm = m; break;
            case WeightSlot.Gate: Layers[s.Layer].Gate = m; break;
            case WeightSlot.Up: Layers[s.Layer].Up = m; break;
            case WeightSlot.Down: Layers[s.Layer].Down = m; break;
        }
    }

    public void Dispose() => _owner?.Dispose();
}

/// <summary>
/// A 64-byte aligned native allocation, freed on Dispose. From 2 MiB up it is backed by transparent huge pages where
/// Linux allows (<see cref="HugePages"/>): the random weights of a preset are streamed once per step, and a stream over
/// huge pages has fewer TLB misses.
/// </summary>
public sealed unsafe class NativeBuffer : IDisposable
{
    public nint Pointer { get; private set; }
    public long Length { get; }

    public NativeBuffer(long bytes)
    {
        Length = bytes;
        Pointer = (nint)HugePages.Allocate(bytes);
    }

    public void Dispose()
    {
        if (Pointer != 0) NativeMemory.AlignedFree((void*)Pointer);
        Pointer = 0;
    }
}

/// <summary>SplitMix64: a small deterministic generator (stable across .NET versions, unlike System.Random).</summary>
public struct SplitMix64(ulong seed)
{
    private ulong _state = seed;

    public ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, 1).</summary>
    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));

    public float NextGaussian()
    {
        double u1 = 1.0 - NextDouble(), u2 = NextDouble();
        return (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
    }
}
