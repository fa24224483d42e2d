using System.Globalization;
using System.Text.RegularExpressions;
using Lckv.Formats;

namespace Lckv.Model;

/// <summary>
/// Named cross-layer KV sharing layouts (kv-sharing.md §2) turned into layer_types strings for a layer count:
/// <list type="bullet">
/// <item><c>llama</c>: identity, every layer computes and reads its own KV.</item>
/// <item><c>lckv-w&lt;N&gt;</c> (N even, N &lt; L): LCKV with N warmup layers (sandwich-top); the bottom N/2 and
/// top N/2 layers are standard, every middle layer reads the topmost middle layer. <c>lckv-w0</c> is "all-top".</item>
/// <item><c>cla2</c>: cross-layer attention, pairs share the lower layer's KV (<c>0_0_2_2_...</c>).</item>
/// <item><c>yoco</c>: the bottom half uses sliding-window self-attention, layer L/2 computes a KV that it and every
/// layer above read.</item>
/// <item><c>sandwich-middle</c> (= <c>sandwich-middle-w2</c>), <c>sandwich-middle-w&lt;N&gt;</c>: N warmup layers
/// as in LCKV, the middle layers read the middle-most middle layer (the lower one when two are).</item>
/// </list>
/// Anything of the form <c>^\d+s?(_\d+s?)*$</c> is taken as an explicit layer_types string and validated by
/// <see cref="LayerMap.Parse"/>.
/// </summary>
public static partial class Layouts
{
    /// <summary>The layout names (and name patterns) this class knows, for help texts and errors.</summary>
    public static IReadOnlyList<string> Names { get; } =
        ["llama", "lckv-w2", "lckv-w10", "lckv-w<N>", "cla2", "yoco", "sandwich-middle", "sandwich-middle-w<N>"];

    /// <summary>Known names and the explicit form, joined for messages.</summary>
    public static string Known => string.Join(", ", Names) + " or an explicit layer_types string (e.g. 0_2_2_3)";

    /// <summary>True when the layout is an explicit layer_types string rather than a name.</summary>
    public static bool IsExplicit(string layout) => ExplicitPattern().IsMatch(layout);

    /// <summary>The layer_types string of a layout for a model of the given depth (validated).</summary>
    public static string LayerTypes(string layout, int layers)
    {
        ArgumentNullException.ThrowIfNull(layout);
        if (layers <= 0) throw new LckvException($"num_hidden_layers must be positive, got {layers}");
        string name = layout.Trim();
        if (IsExplicit(name)) return LayerMap.Parse(name, layers).ToString();
        string lower = name.ToLowerInvariant();
        int[] targets;
        bool[]? sliding = null;
        switch (lower)
        {
            case "llama":
                targets = Enumerable.Range(0, layers).ToArray();
                break;
            case "cla2" or "cla-2":
                targets = Enumerable.Range(0, layers).Select(i => i / 2 * 2).ToArray();
                break;
            case "yoco":
            {
                int kv = layers / 2; // the first layer of the top half computes the shared KV
                targets = Enumerable.Range(0, layers).Select(i => i < kv ? i : kv).ToArray();
                sliding = Enumerable.Range(0, layers).Select(i => i < kv).ToArray();
                break;
            }
            case "sandwich-middle":
                targets = Sandwich(lower, 2, layers, middle: true);
                break;
            default:
            {
                var m = WarmupPattern().Match(lower);
                if (!m.Success)
                    throw new LckvException($"unknown layout '{layout}' (expected one of: {Known})");
                if (!int.TryParse(m.Groups[2].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int w))
                    throw new LckvException($"layout '{layout}': warmup layer count '{m.Groups[2].Value}' is not a number");
                targets = Sandwich(layout, w, layers, middle: m.Groups[1].Value == "sandwich-middle");
                break;
            }
        }
        string text = string.Join('_', targets.Select((t, i) => t.ToString(CultureInfo.InvariantCulture) + (sliding is not null && sliding[i] ? "s" : "")));
        return LayerMap.Parse(text, layers).ToString();
    }

    /// <summary>
    /// Warmup layers w: the bottom w/2 and top w/2 layers read themselves; the middle layers [w/2, L-w/2) read the
    /// topmost middle layer (LCKV) or the middle-most one (sandwich-middle).
    /// </summary>
    private static int[] Sandwich(string layout, int warmup, int layers, bool middle)
    {
        if (warmup % 2 != 0)
            throw new LckvException($"layout '{layout}': the warmup layer count must be even (half at the bottom, half at the top), got {warmup}");
        if (warmup >= layers)
            throw new LckvException($"layout '{layout}' needs more than {warmup} layers (warmup layers plus at least one middle layer), the model has {layers}");
        int half = warmup / 2;
        int lo = half, hi = layers - half; // middle layers [lo, hi)
        int shared = middle ? lo + (hi - lo - 1) / 2 : hi - 1;
        return Enumerable.Range(0, layers).Select(i => i >= lo && i < hi ? shared : i).ToArray();
    }

    /// <summary>
    /// The config with a layout applied: model_type lckv-llama and its layer_types (plain llama, layer_types null, for
    /// the <c>llama</c> layout). sliding_window is kept unless given (the config's value, 4096 by default, serves a
    /// layout with 's' layers); the other lckv fields keep the config's values.
    /// </summary>
    public static ModelConfig ApplyLayout(ModelConfig config, string layout, int? slidingWindow = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        string layerTypes = LayerTypes(layout, config.NumHiddenLayers);
        var result = layout.Trim().Equals("llama", StringComparison.OrdinalIgnoreCase)
            ? config with { ModelType = ModelConfig.LlamaType, LayerTypes = null }
            : config with { ModelType = ModelConfig.LckvLlamaType, LayerTypes = layerTypes };
        if (slidingWindow is int w) result = result with { SlidingWindow = w };
        result.Validate();
        return result;
    }

    [GeneratedRegex(@"^[0-9]+s?(_[0-9]+s?)*$")]
    private static partial Regex ExplicitPattern();

    [GeneratedRegex(@"^(lckv|sandwich-middle)-w([0-9]+)$")]
    private static partial Regex WarmupPattern();
}
