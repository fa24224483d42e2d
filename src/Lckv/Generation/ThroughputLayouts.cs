using Lckv.Model;

namespace Lckv.Generation;

/// <summary>
/// The layer_types of the layouts the throughput experiment compares (kv-sharing.md §2), by name, for any layer count.
/// Anything that is not a known name is taken as an explicit layer_types string and validated by LayerMap.
/// </summary>
public static class ThroughputLayouts
{
    public static IReadOnlyList<string> Names { get; } = ["llama", "lckv-w2", "lckv-w10", "cla2", "yoco"];

    /// <summary>The layer_types string of a named layout (or the given string, validated) for a model of that many layers.</summary>
    public static string LayerTypes(string nameOrLayerTypes, int layers)
    {
        if (layers <= 0) throw new LckvException($"a layout needs at least one layer, got {layers}");
        int[] targets = nameOrLayerTypes.ToLowerInvariant() switch
        {
            "llama" => [.. Enumerable.Range(0, layers)],
            "lckv-w2" => Warmup(2, layers),
            "lckv-w10" => Warmup(10, layers),
            "cla2" => [.. Enumerable.Range(0, layers).Select(i => i - i % 2)],
            "yoco" => Yoco(layers),
            _ => [],
        };
        if (targets.Length == layers) return string.Join('_', targets);
        bool looksExplicit = nameOrLayerTypes.Length > 0 && char.IsAsciiDigit(nameOrLayerTypes[0])
            && nameOrLayerTypes.All(c => char.IsAsciiDigit(c) || c is '_' or 's');
        if (!looksExplicit)
            throw new LckvException($"unknown layout '{nameOrLayerTypes}' (expected one of: {string.Join(", ", Names)}, or a layer_types string such as 0_2_2)");
        return LayerMap.Parse(nameOrLayerTypes, layers).ToString();
    }

    /// <summary>LCKV with w warmup layers: the bottom w/2 and top w/2 layers are standard, every middle layer reads
    /// the KV of the topmost middle layer (L-1-w/2).</summary>
    private static int[] Warmup(int w, int layers)
    {
        int half = w / 2;
        if (layers < w + 2) throw new LckvException($"LCKV with {w} warmup layers needs at least {w + 2} layers, the model has {layers}");
        int top = layers - 1 - half;
        return [.. Enumerable.Range(0, layers).Select(i => i < half || i > top ? i : top)];
    }

    /// <summary>YOCO without windows: the bottom half computes its own KV, the upper half reads layer L/2-1.</summary>
    private static int[] Yoco(int layers)
    {
        int h = Math.Max(1, layers / 2);
        return [.. Enumerable.Range(0, layers).Select(i => i < h ? i : h - 1)];
    }

    /// <summary>A layer_types string shortened for a table: ascending runs as "a..b", repeats as "tx n" ("0_20x20_21").</summary>
    public static string Abbreviate(string layerTypes)
    {
        var tokens = layerTypes.Split('_');
        var parts = new List<string>();
        for (int i = 0; i < tokens.Length;)
        {
            int j = i + 1;
            while (j < tokens.Length && tokens[j] == tokens[i]) j++;
            if (j - i > 2) { parts.Add($"{tokens[i]}x{j - i}"); i = j; continue; }
            j = i + 1;
            while (j < tokens.Length && int.TryParse(tokens[j], out int b) && int.TryParse(tokens[j - 1], out int a) && b == a + 1
                   && (j + 1 >= tokens.Length || tokens[j + 1] != tokens[j])) j++;
            if (j - i > 2) { parts.Add($"{tokens[i]}..{tokens[j - 1]}"); i = j; continue; }
            parts.Add(tokens[i]);
            i++;
        }
        return string.Join('_', parts);
    }
}
