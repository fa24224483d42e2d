using System.CommandLine;
using Lckv.Cache;

namespace Lckv.Cli;

/// <summary>--evict, --sinks, --heavy, --recent: the eviction every KV store applies (kv-compression.md §1-2); --less:
/// LESS maps that keep a low-rank state of what each store evicts (§3).</summary>
public sealed class EvictionOptions
{
    public readonly Option<string> Evict = new("--evict") { Description = "none | streaming | h2o: what each KV store keeps", DefaultValueFactory = _ => "none" };
    public readonly Option<int?> Sinks = new("--sinks") { Description = "StreamingLLM: the first positions always kept (default 4)" };
    public readonly Option<int?> Heavy = new("--heavy") { Description = "H2O: the positions kept for their accumulated attention" };
    public readonly Option<int?> Recent = new("--recent") { Description = "streaming and H2O: the newest positions kept" };
    public readonly Option<string?> Less = new("--less") { Description = "LESS maps (less.safetensors, or a folder holding it) trained for this model and eviction" };

    /// <summary>The options, added to a command.</summary>
    public static EvictionOptions AddTo(Command c, bool less = true)
    {
        var e = new EvictionOptions();
        foreach (var o in new Option[] { e.Evict, e.Sinks, e.Heavy, e.Recent }) c.Options.Add(o);
        if (less) c.Options.Add(e.Less);
        return e;
    }

    public EvictionSettings Parse(ParseResult p)
    {
        int? sinks = p.GetValue(Sinks), heavy = p.GetValue(Heavy), recent = p.GetValue(Recent);
        var kind = p.GetValue(Evict) switch
        {
            "none" => EvictionKind.None,
            "streaming" => EvictionKind.Streaming,
            "h2o" => EvictionKind.H2O,
            var other => throw new LckvException($"--evict must be none, streaming or h2o, got '{other}'"),
        };
        if (kind != EvictionKind.Streaming && sinks is not null) throw new LckvException("--sinks needs --evict streaming");
        if (kind != EvictionKind.H2O && heavy is not null) throw new LckvException("--heavy needs --evict h2o");
        if (kind == EvictionKind.None && recent is not null) throw new LckvException("--recent needs --evict streaming or h2o");
        if (kind != EvictionKind.None && recent is null) throw new LckvException($"--evict {p.GetValue(Evict)} needs --recent N");
        if (kind == EvictionKind.H2O && heavy is null) throw new LckvException("--evict h2o needs --heavy N");
        if (sinks < 0 || heavy < 0) throw new LckvException("--sinks and --heavy must not be negative");
        if (recent < 1) throw new LckvException($"--recent must be at least 1, not {recent}");
        var settings = new EvictionSettings(kind, kind == EvictionKind.Streaming ? sinks ?? 4 : 0, heavy ?? 0, recent ?? 0);
        settings.Validate();
        if (p.GetValue(Less) is not null && kind == EvictionKind.None)
            throw new LckvException("--less needs --evict h2o or streaming: LESS summarises what the policy evicts");
        return settings;
    }

    /// <summary>The settings with the --less maps, loaded and checked against the model (a policy or budget other than
    /// the maps were trained for is a warning); unchanged without --less.</summary>
    public EvictionSettings WithLess(ParseResult p, EvictionSettings settings, Formats.ModelConfig config, Model.LayerMap map, TextWriter stderr)
    {
        if (p.GetValue(Less) is not { } path) return settings;
        var maps = Model.LessMaps.Load(path, config, map);
        if (maps.Mismatch(settings) is { } warning) stderr.WriteLine($"warning: {warning}");
        return settings with { Less = maps };
    }
}
