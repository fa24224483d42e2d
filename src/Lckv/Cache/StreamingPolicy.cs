using Lckv.Numerics;

namespace Lckv.Cache;

/// <summary>
/// StreamingLLM (kv-compression.md §1): after a step whose last position is t, a store keeps the attention sinks
/// (positions &lt; Sinks) and the recent window (positions > t - Recent). Keys are stored unrotated and rotated by their
/// rank in the store when read; a query by the number of entries of the store before it, so rotary positions stay below
/// the budget plus one step however long the stream runs.
/// </summary>
public sealed class StreamingPolicy : EvictingPolicy
{
    private int[] _kept = [];
    private int[] _oldest = [];

    /// <param name="sinks">the first positions, always kept (S)</param>
    /// <param name="recent">the newest positions kept (R, at least 1)</param>
    /// <param name="maxStepTokens">the most tokens one step brings (the store holds the budget plus one step)</param>
    /// <param name="headDim">the model's head dimension</param>
    /// <param name="ropeTheta">the model's rope_theta</param>
    /// <param name="ropeStyle">the model's RoPE pairing</param>
    public StreamingPolicy(int sinks, int recent, int maxStepTokens, int headDim, double ropeTheta, RopeStyle ropeStyle = RopeStyle.RotateHalf)
        : base(sinks, recent, maxStepTokens)
    {
        Sinks = sinks;
        // ranks never reach the capacity: a table of that many positions rotates every key the store can hold
        RankRope = new RopeTable(headDim, ropeTheta, Capacity, ropeStyle);
    }

    public int Sinks { get; }
    public int Budget => Sinks + Recent;
    public override RopeTable RankRope { get; }

    public override void AfterStep(KvStoreEditor store, int length)
    {
        int count = store.Count, heads = store.KvHeads, t = length - 1;
        if (count <= Budget) return;
        if (count == Budget + 1 && count > Sinks)
        {
            // a decode step: the oldest entry after the sinks goes (entries hold positions 0..Sinks-1 first)
            if (_oldest.Length < heads) _oldest = new int[heads];
            Array.Fill(_oldest, Sinks, 0, heads);
            store.EvictOne(_oldest.AsSpan(0, heads));
            return;
        }
        // every KV head holds the same positions: choose from head 0
        int keep = 0;
        if (_kept.Length < heads * Budget) _kept = new int[heads * Budget];
        for (int e = 0; e < count; e++)
        {
            int p = store.PositionOf(e, 0);
            if (p < Sinks || p > t - Recent) _kept[keep++] = e;
        }
        for (int g = 1; g < heads; g++) Array.Copy(_kept, 0, _kept, g * keep, keep);
        store.Keep(_kept.AsSpan(0, heads * keep), keep);
    }
}
