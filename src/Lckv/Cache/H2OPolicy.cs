namespace Lckv.Cache;

/// <summary>
/// H2O (kv-compression.md §2): each entry carries one attention score per KV head, the probabilities every reading
/// layer gave it, summed over query rows and query heads. After a step whose last position is t, a store holding more
/// than Heavy + Recent entries keeps, per KV head, the Recent entries with positions > t - Recent and the Heavy best
/// scores among the others (a tie goes to the smaller position); the rest are evicted with their scores. Keys stay
/// rotated by their text positions.
/// </summary>
public sealed class H2OPolicy : EvictingPolicy
{
    private int[] _kept = [];
    private bool[] _taken = [];
    private int[] _worst = [];

    /// <param name="heavy">entries kept for their scores (Hh)</param>
    /// <param name="recent">newest positions always kept (R, at least 1)</param>
    /// <param name="maxStepTokens">the most tokens one step brings (the store holds the budget plus one step)</param>
    public H2OPolicy(int heavy, int recent, int maxStepTokens) : base(heavy, recent, maxStepTokens) => Heavy = heavy;

    public int Heavy { get; }
    public int Budget => Heavy + Recent;
    public override bool TracksScores => true;

    public override void AfterStep(KvStoreEditor store, int length)
    {
        int count = store.Count, budget = Budget, heads = store.KvHeads;
        if (count <= budget) return;
        if (count == budget + 1)
        {
            EvictWorst(store, length);
            return;
        }
        if (_kept.Length < heads * budget) _kept = new int[heads * budget];
        if (_taken.Length < count) _taken = new bool[count];
        var scores = store.State.Scores!;
        int cap = store.State.Capacity, t = length - 1;
        for (int g = 0; g < heads; g++)
        {
            // the newest positions are the last entries (positions increase with the entry)
            int recentFrom = count;
            while (recentFrom > 0 && store.PositionOf(recentFrom - 1, g) > t - Recent) recentFrom--;
            int heavy = budget - (count - recentFrom);
            if (heavy < 0 || heavy > recentFrom) throw new InvalidOperationException($"KV head {g} holds {count - recentFrom} recent entries for a budget of {budget}");
            // the best scores among the older entries, a tie keeping the smaller position: picked directly when few are
            // kept (after a prompt), or by dropping the worst when few go (a decode step evicts one)
            int evict = recentFrom - heavy;
            bool pickKept = heavy <= evict;
            Array.Fill(_taken, !pickKept, 0, recentFrom);
            for (int pick = 0, picks = pickKept ? heavy : evict; pick < picks; pick++)
            {
                int at = -1;
                for (int e = 0; e < recentFrom; e++)
                {
                    if (_taken[e] == pickKept) continue;
                    float score = scores[g * cap + e];
                    // scanning upward: the first of equal best scores is kept, the last of equal worst ones goes
                    if (at < 0 || (pickKept ? score > scores[g * cap + at] : score <= scores[g * cap + at])) at = e;
                }
                _taken[at] = pickKept;
            }
            for (int e = recentFrom; e < count; e++) _taken[e] = true;
            for (int e = 0, i = 0; e < count; e++)
                if (_taken[e]) _kept[g * budget + i++] = e;
        }
        store.Keep(_kept.AsSpan(0, heads * budget), budget);
    }

    // one entry over the budget (a decode step): per KV head, the worst score among the entries older than the recent
    // window goes, the last of equal worst ones (as the selection above)
    private void EvictWorst(KvStoreEditor store, int length)
    {
        int heads = store.KvHeads, cap = store.State.Capacity, t = length - 1;
        if (_worst.Length < heads) _worst = new int[heads];
        var scores = store.State.Scores!;
        for (int g = 0; g < heads; g++)
        {
            int recentFrom = store.FirstAtOrAfter(t - Recent + 1, g);
            if (recentFrom == 0) throw new InvalidOperationException($"KV head {g} holds only recent entries for a budget of {Budget}");
            var s = scores.AsSpan(g * cap, recentFrom);
            int at = 0;
            for (int e = 1; e < s.Length; e++)
                if (s[e] <= s[at]) at = e;
            _worst[g] = at;
        }
        store.EvictOne(_worst.AsSpan(0, heads));
    }
}
