using Lckv.Numerics;

namespace Lckv.Cache;

/// <summary>
/// What one store (the cache of one KV-computing layer) keeps for one sequence: its committed entries, and for a policy
/// that evicts, each entry's position, attention score and logical slot per KV head ([KvHeads, Capacity], entry e of
/// head g at g * Capacity + e, positions increasing in e; the slots of a head are a permutation of [0, Count)). A
/// policy with more per-sequence state (a low-rank summary of what it evicted) derives from it and creates it in
/// <see cref="KvPolicy.CreateState"/>.
/// </summary>
public class KvStoreState
{
    /// <summary>Committed entries (positional stores: the committed length).</summary>
    public int Count;
    /// <summary>Logical blocks allocated so far (a ring uses the table cyclically).</summary>
    public int Blocks;
    public int[]? Positions;
    public float[]? Scores;
    /// <summary>Evicting stores: the logical slot of each entry.</summary>
    public int[]? Slots;
    public int Capacity;

    /// <summary>Empties the state for a new sequence that reuses the id (arrays are kept and overwritten as written).</summary>
    public virtual void Reset() => Count = Blocks = 0;
}

/// <summary>
/// The rule of one store: where a position's K/V goes (the position-to-slot mapping), how many blocks a sequence needs,
/// what the attention kernel sees, and what happens after each step (eviction). Positional policies (full, ring) keep
/// position p in logical slot p; evicting policies keep entries in arrival order, compacted, with explicit positions.
/// One policy object serves every sequence; per-sequence data lives in <see cref="KvStoreState"/>.
/// </summary>
public abstract class KvPolicy
{
    /// <summary>Entries of one sequence's block table for a context of maxSequenceLength positions.</summary>
    public abstract int TableLength(int maxSequenceLength, int blockSize);

    /// <summary>0 when the table is linear, else the number of table entries used cyclically.</summary>
    public virtual int RingBlocks(int blockSize) => 0;

    /// <summary>True when entries are stored in arrival order with explicit positions (the policy evicts).</summary>
    public virtual bool Compacts => false;

    /// <summary>True when entries carry attention scores that the kernel accumulates.</summary>
    public virtual bool TracksScores => false;

    /// <summary>Null when keys are stored rotated by their text positions; otherwise keys are stored unrotated and
    /// rotated by their rank in the store when read, and queries by the number of entries before them (StreamingLLM).</summary>
    public virtual RopeTable? RankRope => null;

    /// <summary>Pool blocks this store holds for one sequence of `tokens` positions.</summary>
    public abstract long BlocksFor(long tokens, int blockSize);

    /// <summary>Runs after a step committed its positions (the last position is length - 1); may evict entries.</summary>
    public virtual void AfterStep(KvStoreEditor store, int length) { }

    /// <summary>True when the policy wants <see cref="OnEvicted"/> (reading the evicted K/V costs a pass over them).</summary>
    public virtual bool ReceivesEvicted => false;

    /// <summary>Receives each evicted entry (K and V as stored, widened to f32; entry: its index among the head's
    /// entries before the eviction, its rank) before it is dropped; for a low-rank state of what was evicted. Called
    /// when <see cref="ReceivesEvicted"/> is true.</summary>
    public virtual void OnEvicted(KvStoreState state, int kvHead, int entry, int position, ReadOnlySpan<float> k, ReadOnlySpan<float> v) { }

    /// <summary>The state of this store for a new sequence.</summary>
    protected internal virtual KvStoreState CreateState(int kvHeads) => new();
}

/// <summary>Every position kept, position p in logical slot p.</summary>
public sealed class FullPolicy : KvPolicy
{
    public static readonly FullPolicy Instance = new();

    public override int TableLength(int maxSequenceLength, int blockSize) => (int)KvCache.BlocksFor(maxSequenceLength, blockSize);
    public override long BlocksFor(long tokens, int blockSize) => KvCache.BlocksFor(tokens, blockSize);
}

/// <summary>
/// A sliding-window store: a ring of blocks that keeps the newest positions (at least Positions of them), position p in
/// table entry (p / BlockSize) % RingBlocks. Older positions are overwritten; the mask's window must not reach them.
/// </summary>
public sealed class WindowPolicy(int positions) : KvPolicy
{
    public int Positions { get; } = positions > 0 ? positions : throw new ArgumentOutOfRangeException(nameof(positions));

    public override int RingBlocks(int blockSize) => (int)KvCache.BlocksFor(Positions, blockSize);
    public override int TableLength(int maxSequenceLength, int blockSize) => RingBlocks(blockSize);
    public override long BlocksFor(long tokens, int blockSize) => Math.Min(KvCache.BlocksFor(tokens, blockSize), RingBlocks(blockSize));
}

/// <summary>
/// Base of policies that evict: a sequence's entries never exceed Capacity (the budget plus one step's tokens), kept in
/// position order, each in a slot of its own below the entry count: an eviction fills the holes it leaves below the
/// kept count with the kept entries above it, a few rows, instead of shifting every later entry. Subclasses choose
/// which entries each KV head keeps.
/// </summary>
public abstract class EvictingPolicy : KvPolicy
{
    /// <param name="capacity">the most entries a sequence's store holds</param>
    protected EvictingPolicy(int capacity) => Capacity = capacity > 0 ? capacity : throw new ArgumentOutOfRangeException(nameof(capacity));

    /// <param name="kept">positions kept besides the recent window (sinks, heavy hitters)</param>
    /// <param name="recent">the newest positions kept (at least 1)</param>
    /// <param name="maxStepTokens">the most tokens one step brings (the store holds the budget plus one step)</param>
    protected EvictingPolicy(int kept, int recent, int maxStepTokens)
    {
        if (kept < 0) throw new LckvException($"the positions kept besides the recent window must not be negative, got {kept}");
        if (recent < 1) throw new LckvException($"the recent window must be at least 1, got {recent}") { Settings = ["Recent"] };
        if (maxStepTokens < 1) throw new LckvException($"a step must bring at least 1 token, got {maxStepTokens}");
        Capacity = checked(kept + recent + maxStepTokens);
        Recent = recent;
    }

    public int Capacity { get; }
    /// <summary>The newest positions kept (0 for a policy that keeps none by rule).</summary>
    public int Recent { get; }

    public override bool Compacts => true;
    public override int TableLength(int maxSequenceLength, int blockSize) => (int)KvCache.BlocksFor(Math.Min(Capacity, maxSequenceLength), blockSize);
    public override long BlocksFor(long tokens, int blockSize) => KvCache.BlocksFor(Math.Min(tokens, Capacity), blockSize);

    /// <summary>LESS (kv-compression.md §3): the maps, with the store's owner layer <see cref="LessOwner"/>; each
    /// sequence's state then keeps Hs += psi(k)^T v and z += psi(k) of every evicted entry, per KV head, and the
    /// layers that read the store add phi(q) Hs and phi(q).z to their attention. Null: evicted entries are forgotten.</summary>
    public ILessMaps? Less { get; init; }

    /// <summary>The layer whose key map computes psi for this store.</summary>
    public int LessOwner { get; init; }

    public override bool ReceivesEvicted => Less is not null;

    // evicted entries not yet folded: their state (and its generation), KV head, rotated key and value
    private readonly List<(LessState State, int Generation, int KvHead)> _pending = [];
    private float[] _pendingK = [], _pendingV = [];
    private int[] _index = [], _starts = [];
    private int _foldHeads;

    /// <summary>Keeps the evicted entry for <see cref="FoldHead"/>, which folds a step's evictions of every sequence
    /// at once.</summary>
    public override void OnEvicted(KvStoreState state, int kvHead, int entry, int position, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        var less = (LessState)state;
        int d = k.Length, n = _pending.Count;
        if (_pendingK.Length < (n + 1) * d)
        {
            Array.Resize(ref _pendingK, Math.Max(64 * d, 2 * (n + 1) * d));
            Array.Resize(ref _pendingV, _pendingK.Length);
        }
        var dst = _pendingK.AsSpan(n * d, d);
        k.CopyTo(dst);
        v.CopyTo(_pendingV.AsSpan(n * d, d));
        // psi takes the key as the step's attention saw it: a store that rotates by rank rotates it by its rank now
        if (RankRope is { } rope) unsafe { fixed (float* pk = dst) Rope.ApplyHead(pk, entry, rope); }
        _pending.Add((less, less.Generation, kvHead));
    }

    // Folding: per KV head, psi of all the keys evicted since the last fold at once, then Hs += psi^T v and z += psi in
    // eviction order. Readers of the store fold before they read a state (BeginFold, FoldHead for each KV head, in
    // parallel, EndFold); entries of a state reset since (a finished sequence) are dropped.

    /// <summary>Groups the evictions kept since the last fold by KV head; returns how many KV heads
    /// <see cref="FoldHead"/> is to be called for (0: nothing was evicted).</summary>
    public int BeginFold()
    {
        int count = _pending.Count;
        if (count == 0) return 0;
        int kvHeads = 0;
        if (_index.Length < count) _index = new int[count];
        foreach (var p in _pending) kvHeads = Math.Max(kvHeads, p.KvHead + 1);
        if (_starts.Length < kvHeads + 1) _starts = new int[kvHeads + 1];
        // head g's evictions, in eviction order, are _pending[_index[_starts[g] .. _starts[g + 1])]
        int n = 0;
        for (int g = 0; g < kvHeads; g++)
        {
            _starts[g] = n;
            for (int i = 0; i < count; i++)
                if (_pending[i].KvHead == g) _index[n++] = i;
        }
        _starts[kvHeads] = n;
        _foldHeads = kvHeads;
        return kvHeads;
    }

    /// <summary>Folds KV head g's evictions grouped by <see cref="BeginFold"/> into their states (nothing for a head past
    /// the ones it counted); calls for different heads may run at the same time.</summary>
    public unsafe void FoldHead(int g)
    {
        if (g >= _foldHeads) return;
        var map = Less!;
        int r = map.Rank, d = map.HeadDim;
        int first = _starts[g], n = _starts[g + 1] - first;
        if (n == 0) return;
        // the states are read after psi is computed: their lines are fetched meanwhile
        for (int j = first; j < first + n; j++)
        {
            var state = _pending[_index[j]].State;
            Simd.PrefetchL2(state.Hs.AsSpan(g * r * d, r * d));
            Simd.PrefetchL2(state.Z.AsSpan(g * r, r));
        }
        // the keys and the map's scratch in this thread's buffers, which stay in its caches from one call to the next
        var rows = Grow(ref _foldRows, n * d);
        var psi = Grow(ref _foldPsi, n * r);
        var scratch = Grow(ref _foldScratch, n * map.PsiScratchFloats);
        for (int j = 0; j < n; j++) _pendingK.AsSpan(_index[first + j] * d, d).CopyTo(rows.AsSpan(j * d, d));
        map.PsiRows(LessOwner, g, rows, n, psi, scratch);
        for (int j = 0; j < n; j++)
        {
            var (state, generation, _) = _pending[_index[first + j]];
            if (state.Generation != generation) continue;
            var z = state.Z.AsSpan(g * r, r);
            for (int c = 0; c < r; c++) z[c] += psi[j * r + c];
            fixed (float* v = _pendingV, hs = state.Hs)
                for (int c = 0; c < r; c++) Simd.MultiplyAdd(v + _index[first + j] * d, psi[j * r + c], hs + (g * r + c) * d, d);
            state.Evicted[g] = true;
        }
    }

    [ThreadStatic] private static float[]? _foldRows, _foldPsi, _foldScratch;

    private static float[] Grow(ref float[]? buffer, int floats)
    {
        if (buffer is null || buffer.Length < floats) buffer = new float[Math.Max(floats, 2 * (buffer?.Length ?? 0))];
        return buffer;
    }

    /// <summary>Drops the evictions folded since <see cref="BeginFold"/>.</summary>
    public void EndFold()
    {
        _pending.Clear();
        _foldHeads = 0;
    }

    protected internal override KvStoreState CreateState(int kvHeads)
    {
        var state = Less is { } map ? new LessState(kvHeads, map.Rank, map.HeadDim) : new KvStoreState();
        state.Capacity = Capacity;
        state.Positions = new int[kvHeads * Capacity];
        state.Scores = TracksScores ? new float[kvHeads * Capacity] : null;
        state.Slots = new int[kvHeads * Capacity];
        return state;
    }
}

/// <summary>
/// A policy's access to one (sequence, store) after a step: read entries, and keep a subset of each KV head's entries
/// (the rest are handed to <see cref="KvPolicy.OnEvicted"/>, then dropped and their blocks freed).
/// </summary>
public readonly ref struct KvStoreEditor
{
    private readonly KvCache _cache;
    private readonly int _sequence, _kvLayer;

    internal KvStoreEditor(KvCache cache, int sequence, int kvLayer)
    {
        _cache = cache;
        _sequence = sequence;
        _kvLayer = kvLayer;
        State = cache.StateOf(sequence, kvLayer);
    }

    public KvStoreState State { get; }
    public int Count => State.Count;
    public int KvHeads => _cache.Layout.KvHeads;
    public int HeadDim => _cache.Layout.HeadDim;
    public int PositionOf(int entry, int kvHead) => State.Positions![kvHead * State.Capacity + entry];

    /// <summary>K and V of one entry of one KV head, widened to f32 ([HeadDim] each).</summary>
    public void Read(int entry, int kvHead, Span<float> k, Span<float> v) => _cache.ReadEntry(_sequence, _kvLayer, entry, kvHead, k, v);

    /// <summary>
    /// Keeps the entries `kept` (increasing, the same count for every head) of each KV head and evicts the others:
    /// kept[g * keep + i] is the i-th kept entry of head g. Evicted entries go to the policy's OnEvicted first.
    /// </summary>
    public void Keep(ReadOnlySpan<int> kept, int keep) => _cache.Compact(_sequence, _kvLayer, kept, keep);

    /// <summary>Evicts one entry of each KV head, entries[g] of head g (the same as keeping all the others, without
    /// touching them: the later entries' positions, scores and slots move down by one, and at most one row per head
    /// moves into the freed slot).</summary>
    public void EvictOne(ReadOnlySpan<int> entries) => _cache.EvictOne(_sequence, _kvLayer, entries);

    /// <summary>The first entry of KV head g whose position is at least `position` (Count when none).</summary>
    public int FirstAtOrAfter(int position, int kvHead)
    {
        var positions = State.Positions.AsSpan(kvHead * State.Capacity, State.Count);
        int lo = 0, hi = positions.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (positions[mid] < position) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }
}
