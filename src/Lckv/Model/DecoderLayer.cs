using System.Numerics.Tensors;
using Lckv.Formats;
using Lckv.Numerics;

namespace Lckv.Model;

/// <summary>
/// How much of a layer a pass needs. A pass that does not advance only matters through the KV it writes, so layers
/// after its last KV-computing layer are skipped and that layer stops once its KV is written.
/// </summary>
public enum LayerWork { Full, KvOnly, Skip }

/// <summary>
/// The buffers one layer evaluation reads and writes, f32 [rows, width]. Inference points every layer at one scratch
/// set and lets them alias (H1 = X = Out, Xn2 = Xn1 = Tmp, A = G); training gives each recorded layer its own set, so
/// the backward finds the layer's input, normalised inputs, queries, attention output and its log-sum-exp, the
/// residual after attention and the MLP's gate, up and activation.
/// </summary>
public sealed class LayerBuffers
{
    public float[] X = [], Xn1 = [], Q = [], Att = [], Lse = [], H1 = [], Xn2 = [], G = [], U = [], A = [], Tmp = [], Out = [];
}

/// <summary>
/// The KV stores one forward pass writes and reads. Inference: the paged cache (K/V projected into scratch, then
/// written at the sequences' positions). Training: contiguous per-pass buffers that the backward differentiates through.
/// </summary>
public interface IKvStores
{
    /// <summary>Where a KV-computing layer projects this step's K and V ([rows, kv_heads * head_dim] each).</summary>
    void Target(int kvIndex, out Span<float> k, out Span<float> v);

    /// <summary>The rotated K and V in Target(kvIndex) become the store's entries for this step's positions.</summary>
    void Commit(int kvIndex);

    /// <summary>What this step's queries read from a store; false when it holds nothing yet (the output is zero).</summary>
    bool Read(int kvIndex, out KvStorage storage, out ReadOnlySpan<AttentionSequence> sequences);

    /// <summary>The rotary positions of this step's rows for the keys written into a store; empty when the store keeps
    /// keys unrotated (it rotates them by rank when read).</summary>
    ReadOnlySpan<int> KeyPositions(int kvIndex);

    /// <summary>The rotary positions of this step's rows for queries that read a store: their text positions, or their
    /// ranks in a store that rotates by rank.</summary>
    ReadOnlySpan<int> QueryPositions(int kvIndex);

    /// <summary>LESS (kv-compression.md §3): for layer's rotated queries q reading store kvIndex, num = phi(q) Hs
    /// ([rows, heads * head_dim]) and den = max(phi(q).z, 1e-6) ([rows, heads]; 0 where the state of the row's
    /// sequence and KV head is empty). False when the store keeps no LESS state.</summary>
    bool LessTerms(int layer, int kvIndex, ReadOnlySpan<float> q, out ReadOnlySpan<float> num, out ReadOnlySpan<float> den)
    {
        num = den = default;
        return false;
    }
}

/// <summary>What every layer of one step shares: the model's constants and the step's rows and their positions.</summary>
public sealed class ForwardContext(ModelConfig config, LayerMap map, RopeTable rope)
{
    public ModelConfig Config { get; } = config;
    public LayerMap Map { get; } = map;
    public RopeTable Rope { get; set; } = rope;
    public MaskRule[] Masks { get; } = [.. Enumerable.Range(0, config.NumHiddenLayers).Select(i => map.Mask(i, config.ForceNoDiag, config.SlidingWindow))];
    public float Scale { get; } = 1f / MathF.Sqrt(config.HeadDim);
    /// <summary>Rows of the current step.</summary>
    public int Rows { get; set; }
    /// <summary>The text position of each row (at least Rows entries).</summary>
    public int[] Positions { get; set; } = [];
}

/// <summary>
/// The decoder layer, the one forward used by inference and training: x -> norm -> q (and k, v if the layer computes
/// KV) -> rope (by the positions the stores give) -> write k, v into the store -> attention over the store of target(layer) under the layer's mask ->
/// o_proj -> residual -> norm -> SwiGLU MLP -> residual.
/// </summary>
public static class DecoderLayer
{
    /// <param name="zeroAttention">the first pass of a group reads an upward store that holds nothing of this step yet:
    /// its attention output is exactly zero (kv-sharing.md §4)</param>
    public static void Forward(ForwardContext ctx, LayerWeights w, int layer, LayerWork work, bool zeroAttention,
        LayerBuffers b, IKvStores stores)
    {
        var cfg = ctx.Config;
        var map = ctx.Map;
        int n = ctx.Rows, h = cfg.HiddenSize, qd = cfg.NumAttentionHeads * cfg.HeadDim, inter = cfg.IntermediateSize;
        float eps = cfg.RmsNormEps;
        var x = b.X.AsSpan(0, n * h);
        var xn1 = b.Xn1.AsSpan(0, n * h);
        RmsNorm.Apply(x, w.InputNorm, eps, xn1, n);
        var q = b.Q.AsSpan(0, n * qd);
        bool computesKv = map.ComputesKv(layer);
        if (computesKv)
        {
            int kvIndex = map.KvIndex(layer);
            stores.Target(kvIndex, out var k, out var v);
            if (work == LayerWork.KvOnly) MatMul.Multiply(xn1, w.K!.Value, k, w.V!.Value, v, n);
            else MatMul.Multiply(xn1, w.Q, q, w.K!.Value, k, w.V!.Value, v, n);
            var keyPositions = stores.KeyPositions(kvIndex);
            if (!keyPositions.IsEmpty) Rope.Apply(k, keyPositions, cfg.NumKeyValueHeads, ctx.Rope);
            stores.Commit(kvIndex);
            if (work == LayerWork.KvOnly) return;
        }
        else MatMul.Multiply(xn1, w.Q, q, n);
        Rope.Apply(q, stores.QueryPositions(map.ReadsKvIndex(layer)), cfg.NumAttentionHeads, ctx.Rope);
        var att = b.Att.AsSpan(0, n * qd);
        if (zeroAttention || !stores.Read(map.ReadsKvIndex(layer), out var storage, out var sequences))
            att.Clear(); // softmax of equal scores times zero values is exactly zero
        else
        {
            stores.LessTerms(layer, map.ReadsKvIndex(layer), q, out var lessNum, out var lessDen);
            Attention.Compute(q, cfg.NumAttentionHeads, storage, sequences, ctx.Masks[layer], ctx.Scale, att,
                b.Lse.Length > 0 ? b.Lse.AsSpan(0, n * cfg.NumAttentionHeads) : default, lessNum, lessDen);
        }
        var tmp = b.Tmp.AsSpan(0, n * h);
        var h1 = b.H1.AsSpan(0, n * h);
        MatMul.Multiply(att, w.O, tmp, n);
        TensorPrimitives.Add(x, tmp, h1);
        var xn2 = b.Xn2.AsSpan(0, n * h);
        RmsNorm.Apply(h1, w.PostNorm, eps, xn2, n);
        var g = b.G.AsSpan(0, n * inter);
        var u = b.U.AsSpan(0, n * inter);
        var a = b.A.AsSpan(0, n * inter);
        MatMul.Multiply(xn2, w.Gate, g, w.Up, u, n);
        Activations.SwiGlu(g, u, a);
        MatMul.Multiply(a, w.Down, tmp, n);
        TensorPrimitives.Add(h1, tmp, b.Out.AsSpan(0, n * h));
    }
}
