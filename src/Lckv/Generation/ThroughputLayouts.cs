using Lckv.Model;

namespace Lckv.Generation;

/// <summary>The layouts the throughput experiment compares by default, and a short form of layer_types for tables.</summary>
public static class ThroughputLayouts
{
    public static IReadOnlyList<string> Names { get; } = ["llama", "lckv-w2", "lckv-w10", "cla2", "yoco"];

    /// <summary>The layer_types string of a named layout (Layouts) or of an explicit string, for that many layers.</summary>
    public static string LayerTypes(string nameOrLayerTypes, int layers) => Layouts.LayerTypes(nameOrLayerTypes, layers);

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
