using Lckv.Numerics;

namespace Lckv.Cache;

/// <summary>Which positions a store keeps (kv-compression.md §1-2).</summary>
public enum EvictionKind { None, Streaming, H2O }

/// <summary>The eviction every store of a cache applies: StreamingLLM (sinks + recent) or H2O (heavy + recent).</summary>
public sealed record EvictionSettings(EvictionKind Kind, int Sinks = 0, int Heavy = 0, int Recent = 0)
{
    public static EvictionSettings None { get; } = new(EvictionKind.None);

    /// <summary>LESS maps (kv-compression.md §3) on top of the eviction: each store keeps a low-rank state of what it
    /// evicted. Null: none.</summary>
    public ILessMaps? Less { get; init; }

    /// <summary>Positions a store keeps between steps.</summary>
    public int Budget => Kind switch { EvictionKind.Streaming => Sinks + Recent, EvictionKind.H2O => Heavy + Recent, _ => int.MaxValue };

    public void Validate()
    {
        if (Kind == EvictionKind.None)
        {
            if (Heavy != 0 || Recent != 0 || Sinks != 0) throw new LckvException("sinks, heavy and recent budgets need an eviction policy");
            if (Less is not null) throw new LckvException("LESS needs an eviction policy (h2o or streaming): it summarises what the policy evicts");
            return;
        }
        if (Recent < 1) throw new LckvException($"the recent window must be at least 1, got {Recent}") { Settings = [nameof(Recent)] };
        if (Kind == EvictionKind.Streaming && Heavy != 0) throw new LckvException("a heavy-hitter budget belongs to H2O, not StreamingLLM") { Settings = [nameof(Heavy)] };
        if (Kind == EvictionKind.H2O && Sinks != 0) throw new LckvException("attention sinks belong to StreamingLLM, not H2O") { Settings = [nameof(Sinks)] };
        if (Sinks < 0 || Heavy < 0) throw new LckvException("the sink and heavy-hitter budgets must not be negative") { Settings = [nameof(Sinks), nameof(Heavy)] };
    }

    /// <summary>The policy of a store, for steps of at most maxStepTokens tokens; null without eviction. The RoPE
    /// settings are the model's (StreamingLLM rotates keys by their rank with them). With LESS, lessOwner is the layer
    /// that computes the store's KV (its key map folds what the store evicts).</summary>
    public KvPolicy? Policy(int maxStepTokens, int headDim, double ropeTheta, RopeStyle ropeStyle = RopeStyle.RotateHalf, int lessOwner = -1)
    {
        Validate();
        var less = lessOwner >= 0 ? Less : null;
        return Kind switch
        {
            EvictionKind.Streaming => new StreamingPolicy(Sinks, Recent, maxStepTokens, headDim, ropeTheta, ropeStyle) { Less = less, LessOwner = lessOwner },
            EvictionKind.H2O => new H2OPolicy(Heavy, Recent, maxStepTokens) { Less = less, LessOwner = lessOwner },
            _ => null,
        };
    }
}
