using Lckv.Cache;
using Lckv.Numerics;

namespace Lckv.Tests.Cache;

/// <summary>
/// The policy seam: a store whose policy evicts every other entry after each step (KV head g keeps the entries of
/// parity g, so the heads keep different positions), attended through the cache's views, equals a reference that
/// attends to the same positions with the K/V written there; evicted entries reach the policy with their K/V; the
/// store never exceeds its capacity and its blocks return to the pool.
/// </summary>
public sealed class PolicyTests
{
    /// <summary>Keeps every other entry of each KV head after each step, and records what it evicts.</summary>
    private sealed class EveryOther(int capacity) : EvictingPolicy(capacity)
    {
        public readonly List<(int Head, int Position, float[] K, float[] V)> Evicted = [];

        public readonly List<(int Head, int Position, float[] K, float[] V)> Read = [];

        public override void AfterStep(KvStoreEditor store, int length)
        {
            // what the store holds can be read back: the newest entry of each head, before anything moves
            for (int g = 0; g < store.KvHeads; g++)
            {
                float[] k = new float[store.HeadDim], v = new float[store.HeadDim];
                store.Read(store.Count - 1, g, k, v);
                Read.Add((g, store.PositionOf(store.Count - 1, g), k, v));
            }
            int keep = store.Count / 2;
            var kept = new int[store.KvHeads * keep];
            for (int g = 0; g < store.KvHeads; g++)
                for (int i = 0; i < keep; i++) kept[g * keep + i] = 2 * i + (g & 1);
            store.Keep(kept, keep);
        }

        public override bool ReceivesEvicted => true;

        public override void OnEvicted(KvStoreState state, int kvHead, int entry, int position, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
            => Evicted.Add((kvHead, position, k.ToArray(), v.ToArray()));
    }

    [Theory]
    [InlineData(8, 3, false)]
    [InlineData(64, 4, false)]
    [InlineData(64, 5, true)]
    public void EvictingEveryOtherEntryEqualsAttendingToTheKeptEntries(int d, int blockSize, bool window)
    {
        const int kvHeads = 2, group = 2, heads = kvHeads * group, capacity = 24;
        var rng = new Random(d * 7 + blockSize);
        var layout = new KvLayout(blockSize, kvHeads, d, DType.F32);
        var policy = new EveryOther(capacity);
        using var pool = new KvBlockPool(layout, 64 * layout.BlockBytes);
        var cache = new KvCache(pool, [policy], maxSequenceLength: 200);
        var rule = window ? new MaskRule(false, 9) : MaskRule.Causal;
        int seq = cache.CreateSequence();
        // the reference: per KV head, the positions the policy keeps, and every K/V ever written
        var kept = new List<int>[] { [], [] };
        var written = new Dictionary<int, (float[] K, float[] V)>();
        int length = 0;
        foreach (int n in new[] { 5, 1, 3, 1, 1, 7, 2, 1, 4, 1, 1, 6 })
        {
            Assert.True(cache.TryReserve(seq, length + n));
            var k = TestRandom(rng, n * kvHeads * d);
            var v = TestRandom(rng, n * kvHeads * d);
            cache.Write(seq, 0, length, k, v);
            for (int i = 0; i < n; i++)
                written[length + i] = (k.AsSpan(i * kvHeads * d, kvHeads * d).ToArray(), v.AsSpan(i * kvHeads * d, kvHeads * d).ToArray());
            // the step's queries, through the view
            var q = TestRandom(rng, n * heads * d);
            var actual = new float[q.Length];
            var seqs = new[] { new AttentionSequence(0, n, length, cache.View(seq, 0, n)) };
            Attention.Compute(q, heads, KvStorage.Paged(pool.Base, layout), seqs, rule, 0.3f, actual);
            for (int r = 0; r < n; r++)
                for (int h = 0; h < heads; h++)
                {
                    int g = h / group, t = length + r;
                    var visible = kept[g].Concat(Enumerable.Range(length, n)).Where(p => p <= t && (rule.Window == 0 || p >= t - rule.Window)).ToArray();
                    var expected = Dense(q.AsSpan((r * heads + h) * d, d), visible.Select(p => written[p].K.AsSpan(g * d, d).ToArray()).ToArray(),
                        visible.Select(p => written[p].V.AsSpan(g * d, d).ToArray()).ToArray(), 0.3f);
                    for (int i = 0; i < d; i++)
                        Assert.True(Math.Abs(expected[i] - actual[(r * heads + h) * d + i]) <= 1e-5, $"step at {length}, row {r}, head {h}: [{i}] {actual[(r * heads + h) * d + i]} vs {expected[i]}");
                }
            int evictedBefore = policy.Evicted.Count, readBefore = policy.Read.Count;
            cache.SetLength(seq, length + n);
            foreach (var (head, position, readK, readV) in policy.Read.Skip(readBefore))
            {
                Assert.Equal(length + n - 1, position);
                Assert.Equal(written[position].K.AsSpan(head * d, d).ToArray(), readK);
                Assert.Equal(written[position].V.AsSpan(head * d, d).ToArray(), readV);
            }
            Assert.Equal(kvHeads, policy.Read.Count - readBefore);
            for (int g = 0; g < kvHeads; g++)
            {
                var all = kept[g].Concat(Enumerable.Range(length, n)).ToList();
                kept[g] = [.. all.Where((_, i) => i % 2 == g && i / 2 < all.Count / 2)];
                // the policy saw exactly the others, with the K/V written there
                var gone = all.Except(kept[g]).ToHashSet();
                var seen = policy.Evicted.Skip(evictedBefore).Where(e => e.Head == g).ToList();
                Assert.Equal(gone.Order(), seen.Select(e => e.Position).Order());
                foreach (var e in seen)
                {
                    Assert.Equal(written[e.Position].K.AsSpan(g * d, d).ToArray(), e.K);
                    Assert.Equal(written[e.Position].V.AsSpan(g * d, d).ToArray(), e.V);
                }
                for (int i = 0; i < kept[g].Count; i++) Assert.Equal(kept[g][i], cache.StateOf(seq, 0).Positions![g * capacity + i]);
            }
            length += n;
            Assert.Equal(kept[0].Count, cache.EntryCount(seq, 0));
            Assert.True(pool.UsedBlocks <= KvCache.BlocksFor(capacity, blockSize), $"{pool.UsedBlocks} blocks in use");
        }
        cache.Remove(seq);
        Assert.Equal(0, pool.UsedBlocks);
    }

    [Fact]
    public void SetLengthsEvictsAsSetLengthDoesOneSequenceAfterAnother()
    {
        // three stores, each with a policy of its own: SetLengths runs them on the pool's threads, one store per thread
        const int kvHeads = 2, d = 8, stores = 3, capacity = 16, sequences = 5;
        var layout = new KvLayout(4, kvHeads, d, DType.F32);
        var rng = new Random(11);
        EveryOther[] serialPolicies = [.. Enumerable.Range(0, stores).Select(_ => new EveryOther(capacity))];
        EveryOther[] batchPolicies = [.. Enumerable.Range(0, stores).Select(_ => new EveryOther(capacity))];
        using var serialPool = new KvBlockPool(layout, 256 * layout.BlockBytes);
        using var batchPool = new KvBlockPool(layout, 256 * layout.BlockBytes);
        var serial = new KvCache(serialPool, serialPolicies, maxSequenceLength: 400);
        var batch = new KvCache(batchPool, batchPolicies, maxSequenceLength: 400);
        var ids = Enumerable.Range(0, sequences).Select(_ => (serial.CreateSequence(), batch.CreateSequence())).ToArray();
        var lengths = new int[sequences];
        for (int step = 0; step < 12; step++)
        {
            var seqs = new int[sequences];
            var next = new int[sequences];
            for (int s = 0; s < sequences; s++)
            {
                int n = step == 0 ? 1 + rng.Next(9) : 1 + rng.Next(3);
                next[s] = lengths[s] + n;
                Assert.True(serial.TryReserve(ids[s].Item1, next[s]));
                Assert.True(batch.TryReserve(ids[s].Item2, next[s]));
                for (int l = 0; l < stores; l++)
                {
                    var k = TestRandom(rng, n * kvHeads * d);
                    var v = TestRandom(rng, n * kvHeads * d);
                    serial.Write(ids[s].Item1, l, lengths[s], k, v);
                    batch.Write(ids[s].Item2, l, lengths[s], k, v);
                }
                seqs[s] = ids[s].Item2;
            }
            for (int s = 0; s < sequences; s++) serial.SetLength(ids[s].Item1, next[s]);
            batch.SetLengths(seqs, next);
            next.CopyTo(lengths, 0);
            for (int l = 0; l < stores; l++)
            {
                // each policy saw the same evictions in the same order, with the same K/V
                Assert.Equal(serialPolicies[l].Evicted.Count, batchPolicies[l].Evicted.Count);
                for (int i = 0; i < serialPolicies[l].Evicted.Count; i++)
                {
                    var (a, b) = (serialPolicies[l].Evicted[i], batchPolicies[l].Evicted[i]);
                    Assert.Equal((a.Head, a.Position), (b.Head, b.Position));
                    Assert.Equal(a.K, b.K);
                    Assert.Equal(a.V, b.V);
                }
                for (int s = 0; s < sequences; s++)
                {
                    Assert.Equal(serial.EntryCount(ids[s].Item1, l), batch.EntryCount(ids[s].Item2, l));
                    Assert.Equal(serial.StateOf(ids[s].Item1, l).Positions, batch.StateOf(ids[s].Item2, l).Positions);
                }
            }
            Assert.Equal(serialPool.UsedBlocks, batchPool.UsedBlocks);
        }
        foreach (var (a, b) in ids)
        {
            serial.Remove(a);
            batch.Remove(b);
        }
        Assert.Equal(0, batchPool.UsedBlocks);
    }

    [Fact]
    public void AFailingPolicyFailsSetLengthsWithItsOwnException()
    {
        var layout = new KvLayout(4, 1, 8, DType.F32);
        using var pool = new KvBlockPool(layout, 64 * layout.BlockBytes);
        var cache = new KvCache(pool, [new EveryOther(8), new Failing(8)], maxSequenceLength: 100);
        int a = cache.CreateSequence(), b = cache.CreateSequence();
        Assert.True(cache.TryReserve(a, 2));
        Assert.True(cache.TryReserve(b, 2));
        var e = Assert.Throws<InvalidOperationException>(() => cache.SetLengths([a, b], [2, 2]));
        Assert.Equal("the policy failed", e.Message);
    }

    private sealed class Failing(int capacity) : EvictingPolicy(capacity)
    {
        public override void AfterStep(KvStoreEditor store, int length) => throw new InvalidOperationException("the policy failed");
    }

    [Fact]
    public void AStepLargerThanTheCapacityIsRefused()
    {
        var layout = new KvLayout(4, 1, 8, DType.F32);
        using var pool = new KvBlockPool(layout, 16 * layout.BlockBytes);
        var cache = new KvCache(pool, [new EveryOther(6)], 100);
        int seq = cache.CreateSequence();
        Assert.Throws<LckvException>(() => cache.TryReserve(seq, 7));
        Assert.True(cache.TryReserve(seq, 6));
        Assert.Throws<LckvException>(() => cache.Fork(seq));
    }

    [Fact]
    public void TheSlidingWindowRingIsAPolicy()
    {
        var layout = new KvLayout(4, 1, 8, DType.F32);
        using var pool = new KvBlockPool(layout, 64 * layout.BlockBytes);
        var cache = new KvCache(pool, 2, 100, [10, 0]);
        Assert.IsType<WindowPolicy>(cache.Policy(0));
        Assert.IsType<FullPolicy>(cache.Policy(1));
        Assert.Equal(3, cache.RingBlocks(0));
        // the ring bounds the store's blocks: 3 for any length, against 25 for the linear store at 100 positions
        Assert.Equal(3 + 25, cache.BlocksForTokens(100));
    }

    [Theory]
    [InlineData(2, 3, 20)]  // few kept: the heavy hitters picked directly
    [InlineData(12, 3, 20)] // few evicted: the worst dropped
    [InlineData(4, 1, 5)]
    public void H2OKeepsTheRecentWindowAndTheBestScoresTiesToTheSmallerPosition(int heavy, int recent, int prompt)
    {
        var rng = new Random(heavy * 31 + prompt);
        var layout = new KvLayout(4, 2, 8, DType.F32);
        using var pool = new KvBlockPool(layout, 64 * layout.BlockBytes);
        var cache = new KvCache(pool, [new H2OPolicy(heavy, recent, prompt)], 100);
        int seq = cache.CreateSequence();
        Assert.True(cache.TryReserve(seq, prompt));
        var kv = new float[prompt * 16];
        cache.Write(seq, 0, 0, kv, kv);
        var state = cache.StateOf(seq, 0);
        // scores from a few values, so that ties are common
        var scores = new float[2, prompt];
        for (int g = 0; g < 2; g++)
            for (int e = 0; e < prompt; e++) state.Scores![g * state.Capacity + e] = scores[g, e] = rng.Next(4);
        cache.SetLength(seq, prompt);
        for (int g = 0; g < 2; g++)
        {
            var expected = Enumerable.Range(0, prompt - recent).OrderByDescending(e => scores[g, e]).ThenBy(e => e).Take(heavy)
                .Concat(Enumerable.Range(prompt - recent, recent)).Order().ToArray();
            var kept = Enumerable.Range(0, state.Count).Select(e => state.Positions![g * state.Capacity + e]).ToArray();
            Assert.Equal(expected, kept);
            for (int i = 0; i < kept.Length; i++) Assert.Equal(scores[g, kept[i]], state.Scores![g * state.Capacity + i]);
        }
    }

    // A long stream in steps of 1 to 3 tokens with H2O (random scores) or StreamingLLM, two sequences side by side:
    // after every step each store holds at most its budget, positions increase, the recent window (and the sinks) are
    // there, every kept entry reads back the K/V written for its position and head, and the pool never holds more than
    // the capacity's blocks; at the end the blocks return to the pool.
    [Theory]
    [InlineData("h2o", 3)]
    [InlineData("h2o", 16)]
    [InlineData("streaming", 5)]
    public void LongStreamsKeepTheirInvariantsAfterEveryStep(string kind, int blockSize)
    {
        const int kvHeads = 2, d = 8, budgetKept = 6, recent = 5, maxStep = 3;
        var rng = new Random(blockSize);
        var layout = new KvLayout(blockSize, kvHeads, d, DType.F32);
        EvictingPolicy policy = kind == "h2o" ? new H2OPolicy(budgetKept, recent, maxStep) : new StreamingPolicy(budgetKept, recent, maxStep, d, 10000);
        using var pool = new KvBlockPool(layout, 64 * layout.BlockBytes);
        var cache = new KvCache(pool, [policy], maxSequenceLength: 1000);
        int[] seqs = [cache.CreateSequence(), cache.CreateSequence()];
        int[] lengths = [0, 0];
        static float Value(int seq, int position, int head, int i) => seq * 100000 + position * 10 + head * 0.5f + i * 0.01f;
        long maxBlocks = KvCache.BlocksFor(policy.Capacity, blockSize) * seqs.Length;
        for (int step = 0; step < 300; step++)
        {
            for (int b = 0; b < seqs.Length; b++)
            {
                int seq = seqs[b], n = 1 + rng.Next(maxStep), start = lengths[b];
                Assert.True(cache.TryReserve(seq, start + n));
                var k = new float[n * kvHeads * d];
                var v = new float[k.Length];
                for (int t = 0; t < n; t++)
                    for (int g = 0; g < kvHeads; g++)
                        for (int i = 0; i < d; i++)
                        {
                            k[(t * kvHeads + g) * d + i] = Value(seq, start + t, g, i);
                            v[(t * kvHeads + g) * d + i] = -Value(seq, start + t, g, i);
                        }
                cache.Write(seq, 0, start, k, v);
                var state = cache.StateOf(seq, 0);
                if (state.Scores is { } sc)
                    for (int g = 0; g < kvHeads; g++)
                        for (int e = 0; e < state.Count + n; e++) sc[g * state.Capacity + e] += (float)rng.NextDouble();
                cache.SetLength(seq, lengths[b] = start + n);
                int length = lengths[b];
                Assert.True(state.Count <= Math.Min(length, budgetKept + recent));
                var kr = new float[d];
                var vr = new float[d];
                for (int g = 0; g < kvHeads; g++)
                {
                    var positions = Enumerable.Range(0, state.Count).Select(e => state.Positions![g * state.Capacity + e]).ToArray();
                    for (int e = 1; e < positions.Length; e++) Assert.True(positions[e] > positions[e - 1]);
                    for (int p = Math.Max(0, length - recent); p < length; p++) Assert.Contains(p, positions);
                    if (kind == "streaming")
                        for (int p = 0; p < Math.Min(budgetKept, length); p++) Assert.Contains(p, positions);
                    for (int e = 0; e < positions.Length; e++)
                    {
                        cache.ReadEntry(seq, 0, e, g, kr, vr);
                        for (int i = 0; i < d; i++)
                        {
                            Assert.Equal(Value(seq, positions[e], g, i), kr[i]);
                            Assert.Equal(-Value(seq, positions[e], g, i), vr[i]);
                        }
                    }
                }
                Assert.True(pool.UsedBlocks <= maxBlocks, $"{pool.UsedBlocks} blocks in use, at most {maxBlocks}");
            }
            // after a step a store holds the blocks of its kept entries and no more
            Assert.Equal(seqs.Sum(q => KvCache.BlocksFor(cache.StateOf(q, 0).Count, blockSize)), pool.UsedBlocks);
        }
        foreach (int seq in seqs) cache.Remove(seq);
        Assert.Equal(0, pool.UsedBlocks);
    }

    /// <summary>Keeps 5 entries: past them, head g evicts its entry g % count through the one-entry path.</summary>
    private sealed class OneAtATime() : EvictingPolicy(6)
    {
        public readonly List<(int Head, int Position, float[] K)> Evicted = [];
        public override bool ReceivesEvicted => true;

        public override void AfterStep(KvStoreEditor store, int length)
        {
            if (store.Count <= 5) return;
            var entries = new int[store.KvHeads];
            for (int g = 0; g < entries.Length; g++) entries[g] = (length + g) % store.Count;
            store.EvictOne(entries);
        }

        public override void OnEvicted(KvStoreState state, int kvHead, int entry, int position, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
            => Evicted.Add((kvHead, position, k.ToArray()));
    }

    [Fact]
    public void EvictingOneEntryPerHeadHandsItOverAndKeepsTheOthersIntact()
    {
        const int kvHeads = 2, d = 4;
        var layout = new KvLayout(2, kvHeads, d, DType.F32);
        var policy = new OneAtATime();
        using var pool = new KvBlockPool(layout, 16 * layout.BlockBytes);
        var cache = new KvCache(pool, [policy], 100);
        int seq = cache.CreateSequence();
        var kept = new List<int>[] { [], [] };
        for (int p = 0; p < 40; p++)
        {
            Assert.True(cache.TryReserve(seq, p + 1));
            var k = new float[kvHeads * d];
            for (int g = 0; g < kvHeads; g++) for (int i = 0; i < d; i++) k[g * d + i] = p * 100 + g * 10 + i;
            cache.Write(seq, 0, p, k, k);
            for (int g = 0; g < kvHeads; g++) kept[g].Add(p);
            int before = policy.Evicted.Count;
            cache.SetLength(seq, p + 1);
            if (p + 1 > 5)
            {
                Assert.Equal(before + kvHeads, policy.Evicted.Count);
                for (int g = 0; g < kvHeads; g++)
                {
                    int e = (p + 1 + g) % 6;
                    var (head, position, evictedK) = policy.Evicted[before + g];
                    Assert.Equal((g, kept[g][e]), (head, position));
                    Assert.Equal(Enumerable.Range(0, d).Select(i => (float)(position * 100 + g * 10 + i)), evictedK);
                    kept[g].RemoveAt(e);
                }
            }
            var state = cache.StateOf(seq, 0);
            var kr = new float[d];
            var vr = new float[d];
            for (int g = 0; g < kvHeads; g++)
            {
                Assert.Equal(kept[g], Enumerable.Range(0, state.Count).Select(e => state.Positions![g * state.Capacity + e]));
                for (int e = 0; e < state.Count; e++)
                {
                    cache.ReadEntry(seq, 0, e, g, kr, vr);
                    Assert.Equal(kept[g][e] * 100 + g * 10, kr[0]);
                }
            }
        }
        cache.Remove(seq);
        Assert.Equal(0, pool.UsedBlocks);
    }

    private static float[] Dense(ReadOnlySpan<float> q, float[][] keys, float[][] values, float scale)
    {
        int d = q.Length;
        var o = new float[d];
        if (keys.Length == 0) return o;
        var s = new double[keys.Length];
        for (int j = 0; j < keys.Length; j++)
        {
            double dot = 0;
            for (int i = 0; i < d; i++) dot += q[i] * keys[j][i];
            s[j] = dot * scale;
        }
        double m = s.Max(), sum = s.Sum(x => Math.Exp(x - m));
        for (int j = 0; j < keys.Length; j++)
            for (int i = 0; i < d; i++) o[i] += (float)(Math.Exp(s[j] - m) / sum * values[j][i]);
        return o;
    }

    private static float[] TestRandom(Random rng, int n)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
        return a;
    }
}
