using System.Text;
using System.Text.RegularExpressions;
using Lckv.Numerics;

namespace Lckv.Model;

/// <summary>
/// Which KV each layer reads (kv-sharing.md §2): target(i), sliding window flag, computes-KV, attends-upward, and the
/// index of each KV-computing layer among those that own cache storage.
/// </summary>
public sealed partial class LayerMap
{
    private readonly int[] _targets;
    private readonly bool[] _sliding;
    private readonly int[] _kvIndex;

    private LayerMap(int[] targets, bool[] sliding)
    {
        _targets = targets;
        _sliding = sliding;
        _kvIndex = new int[targets.Length];
        int n = 0;
        for (int i = 0; i < targets.Length; i++) _kvIndex[i] = Array.IndexOf(targets, i) >= 0 ? n++ : -1;
        KvLayerCount = n;
        for (int i = 0; i < targets.Length; i++) AnyAttendsTop |= targets[i] > i;
    }

    public int LayerCount => _targets.Length;
    /// <summary>Layers that compute and store KV.</summary>
    public int KvLayerCount { get; }
    public int Target(int layer) => _targets[layer];
    public bool IsSliding(int layer) => _sliding[layer];
    public bool ComputesKv(int layer) => _kvIndex[layer] >= 0;
    public bool AttendsTop(int layer) => _targets[layer] > layer;
    public bool AnyAttendsTop { get; }
    /// <summary>Index of a KV-computing layer among the KV layers (cache slot), -1 otherwise.</summary>
    public int KvIndex(int layer) => _kvIndex[layer];
    /// <summary>The cache slot that layer reads: KvIndex(Target(layer)).</summary>
    public int ReadsKvIndex(int layer) => _kvIndex[_targets[layer]];

    /// <summary>The mask layer i applies to the KV it reads (§3).</summary>
    public MaskRule Mask(int layer, bool forceNoDiag, int slidingWindow)
        => new(forceNoDiag || AttendsTop(layer), _sliding[layer] ? slidingWindow : 0);

    public static LayerMap Identity(int layers)
        => new(Enumerable.Range(0, layers).ToArray(), new bool[layers]);

    /// <summary>Parses layer_types ("0_1_2", "0s_1s_2_2"); null means identity. Errors name the field and token.</summary>
    public static LayerMap Parse(string? layerTypes, int layers)
    {
        if (layers <= 0) throw new LckvException($"num_hidden_layers must be positive, got {layers}");
        if (layerTypes is null) return Identity(layers);
        var tokens = layerTypes.Split('_');
        if (tokens.Length != layers)
            throw new LckvException($"layer_types '{Lckv.Formats.Printable.Escape(layerTypes)}' has {tokens.Length} entries, expected one per layer ({layers})");
        var targets = new int[layers];
        var sliding = new bool[layers];
        for (int i = 0; i < layers; i++)
        {
            var m = TokenPattern().Match(tokens[i]);
            if (!m.Success)
                throw new LckvException($"layer_types entry {i} '{Lckv.Formats.Printable.Escape(tokens[i])}' is not a layer index with an optional 's' (pattern ^(\\d+)(s)?$)");
            if (!int.TryParse(m.Groups[1].Value, out int t) || t >= layers)
                throw new LckvException($"layer_types entry {i} '{Lckv.Formats.Printable.Escape(tokens[i])}' refers to layer {Lckv.Formats.Printable.Escape(m.Groups[1].Value)}, outside [0, {layers})");
            targets[i] = t;
            sliding[i] = m.Groups[2].Success;
        }
        return new LayerMap(targets, sliding);
    }

    /// <summary>The canonical layer_types string.</summary>
    public override string ToString()
        => string.Join('_', Enumerable.Range(0, LayerCount).Select(i => _targets[i] + (_sliding[i] ? "s" : "")));

    /// <summary>One line per layer: index, target, role.</summary>
    public string Describe()
    {
        var sb = new StringBuilder();
        for (int i = 0; i < LayerCount; i++)
        {
            string role = ComputesKv(i) ? (Target(i) == i ? "computes KV, reads its own" : $"computes KV, reads layer {Target(i)}")
                                        : $"reads layer {Target(i)}";
            if (AttendsTop(i)) role += " (upward, diagonal masked)";
            if (_sliding[i]) role += " (sliding window)";
            sb.AppendLine($"layer {i,3}: {role}");
        }
        return sb.ToString();
    }

    [GeneratedRegex(@"^(\d+)(s)?$")]
    private static partial Regex TokenPattern();
}
