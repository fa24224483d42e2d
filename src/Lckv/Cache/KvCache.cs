using Lckv.Numerics;
using Convert = Lckv.Numerics.Convert;

namespace Lckv.Cache;

/// <summary>What the cache holds right now, for logs and admission decisions.</summary>
/// <param name="Sequences">live sequences</param>
/// <param name="Tokens">sum of the committed lengths</param>
/// <param name="UsedBlocks">blocks taken from the pool (shared blocks count once)</param>
/// <param name="TotalBlocks">blocks the pool holds</param>
/// <param name="BlockBytes">bytes of one block</param>
/// <param name="BytesPerToken">2 * kvLayers * kvHeads * headDim * bytes(dtype)</param>
public readonly record struct KvMemoryReport(int Sequences, long Tokens, int UsedBlocks, int TotalBlocks, long BlockBytes,
    long BytesPerToken)
{
    public long BytesInUse => UsedBlocks * BlockBytes;
    public long CapacityBytes => TotalBlocks * BlockBytes;

    public override string ToString() =>
        $"{Sequences} sequences, {Tokens} tokens, {UsedBlocks}/{TotalBlocks} blocks, " +
        $"{BytesInUse / (1024.0 * 1024):F1}/{CapacityBytes / (1024.0 * 1024):F1} MiB, {BytesPerToken} bytes/token";
}

/// <summary>
/// The KV of many sequences for the KV-computing layers (stores) of one model. Each (sequence, store) has a block table
/// and a state; the store's <see cref="KvPolicy"/> decides where each position lives (logical slot L in block
/// table[L / BlockSize] at slot L % BlockSize, cyclically for a ring), what the attention kernel sees
/// (<see cref="View"/>), and what is evicted after a step. Verbs on sequence ids in the spirit of llama.cpp: create,
/// reserve, commit, remove, fork (share the prefix), truncate, keep.
/// </summary>
/// <remarks>
/// Each sequence has a committed length (positions written and visible) and a reserved length (positions that may be
/// written). Blocks covering the reserved slots belong to the sequence alone, so writes there never disturb a sequence
/// that shares the prefix. Block tables are int arrays owned by the cache, allocated when a sequence id is first used
/// and reused with the id; entries past the sequence's blocks are -1. The structural verbs are not thread-safe; writes
/// to distinct (sequence, store) pairs may run concurrently.
/// </remarks>
public sealed class KvCache
{
    private sealed class Sequence
    {
        public bool Live;
        public int Length;   // committed
        public int Reserved; // writable: [0, Reserved)
        public required int[][] Tables;
        public required KvStoreState[] States;
    }

    private readonly KvBlockPool _pool;
    private readonly KvPolicy[] _policies;
    private readonly int _kvLayers;
    private readonly int _maxSequenceLength;
    private readonly int _blockSize;
    private readonly int _tableCapacity;
    private readonly int[] _ringBlocks; // per store: 0 = linear table, else a ring of that many blocks
    // some store evicts, and every store has a policy object of its own: the stores' policies may run in parallel
    private readonly bool _parallelPolicies;
    private readonly List<Sequence> _sequences = [];
    private int _liveCount;

    /// <param name="pool">where every byte of KV comes from</param>
    /// <param name="kvLayers">number of KV-computing layers (each gets its own block table per sequence)</param>
    /// <param name="maxSequenceLength">the longest sequence (sizes the block tables once)</param>
    /// <param name="ringPositions">per KV layer, 0 for a linear store, or the positions a bounded ring keeps (a
    /// sliding-window layer: its window plus the largest step, see LlamaModel.RingPositions); rounded up to blocks.</param>
    public KvCache(KvBlockPool pool, int kvLayers, int maxSequenceLength, IReadOnlyList<int>? ringPositions = null)
        : this(pool, Policies(pool, kvLayers, maxSequenceLength, ringPositions), maxSequenceLength)
    {
    }

    /// <param name="pool">where every byte of KV comes from</param>
    /// <param name="policies">one per store (KV-computing layer); the same object may serve several stores</param>
    /// <param name="maxSequenceLength">the longest sequence (sizes the block tables once)</param>
    public KvCache(KvBlockPool pool, IReadOnlyList<KvPolicy> policies, int maxSequenceLength)
    {
        ArgumentNullException.ThrowIfNull(pool);
        ArgumentNullException.ThrowIfNull(policies);
        if (policies.Count <= 0) throw new LckvException($"a KV cache needs at least one KV layer, got {policies.Count}");
        if (maxSequenceLength <= 0) throw new LckvException($"the maximum sequence length must be positive, got {maxSequenceLength}");
        _pool = pool;
        _kvLayers = policies.Count;
        _maxSequenceLength = maxSequenceLength;
        _blockSize = pool.Layout.BlockSize;
        _tableCapacity = (int)BlocksFor(maxSequenceLength, _blockSize);
        _policies = [.. policies];
        _parallelPolicies = _policies.Any(p => p.Compacts) && _policies.Distinct(ReferenceEqualityComparer.Instance).Count() == _kvLayers;
        _ringBlocks = new int[_kvLayers];
        for (int l = 0; l < _kvLayers; l++) _ringBlocks[l] = _policies[l].RingBlocks(_blockSize);
    }

    private static KvPolicy[] Policies(KvBlockPool pool, int kvLayers, int maxSequenceLength, IReadOnlyList<int>? ringPositions)
    {
        ArgumentNullException.ThrowIfNull(pool);
        if (kvLayers <= 0) throw new LckvException($"a KV cache needs at least one KV layer, got {kvLayers}");
        if (ringPositions is not null && ringPositions.Count != kvLayers)
            throw new ArgumentException($"ringPositions has {ringPositions.Count} entries for {kvLayers} KV layers", nameof(ringPositions));
        int bs = pool.Layout.BlockSize;
        long tableCapacity = BlocksFor(Math.Max(0, maxSequenceLength), bs);
        var policies = new KvPolicy[kvLayers];
        for (int l = 0; l < kvLayers; l++)
        {
            int positions = ringPositions?[l] ?? 0;
            ArgumentOutOfRangeException.ThrowIfNegative(positions);
            long blocks = BlocksFor(positions, bs);
            // a ring as long as the context is just linear
            policies[l] = blocks > 0 && blocks < tableCapacity ? new WindowPolicy(positions) : FullPolicy.Instance;
        }
        return policies;
    }

    /// <summary>The policy of one store.</summary>
    public KvPolicy Policy(int kvLayer) => _policies[kvLayer];

    /// <summary>0 when the KV layer's table is linear, else the number of blocks of its ring.</summary>
    public int RingBlocks(int kvLayer) => _ringBlocks[kvLayer];

    /// <summary>Pool blocks one unshared sequence of <paramref name="tokens"/> positions takes over every KV layer.</summary>
    public long BlocksForTokens(int tokens)
    {
        long total = 0;
        for (int l = 0; l < _kvLayers; l++) total += _policies[l].BlocksFor(tokens, _blockSize);
        return total;
    }

    public KvBlockPool Pool => _pool;
    public KvLayout Layout => _pool.Layout;
    public int KvLayers => _kvLayers;
    public int MaxSequenceLength => _maxSequenceLength;
    /// <summary>Entries of a linear block table: ceil(MaxSequenceLength / BlockSize).</summary>
    public int TableCapacity => _tableCapacity;

    /// <summary>2 * kvLayers * kvHeads * headDim * bytes(dtype).</summary>
    public long BytesPerToken => BytesPerTokenFor(_kvLayers, Layout.KvHeads, Layout.HeadDim, Layout.DType);

    public int SequenceCount => _liveCount;

    /// <summary>Blocks that hold <paramref name="tokens"/> positions: ceil(tokens / blockSize).</summary>
    public static long BlocksFor(long tokens, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        return (tokens + blockSize - 1) / blockSize;
    }

    /// <summary>2 * kvLayers * kvHeads * headDim * bytes(dtype): the KV of one token across the cached layers.</summary>
    public static long BytesPerTokenFor(int kvLayers, int kvHeads, int headDim, DType dtype)
        => 2L * kvLayers * kvHeads * KvRows.RowBytes(dtype, headDim);

    /// <summary>Pool bytes one unshared sequence of <paramref name="tokens"/> positions takes (whole blocks, every KV
    /// layer, bounded stores bounded).</summary>
    public long BytesFor(int tokens) => BlocksForTokens(tokens) * Layout.BlockBytes;

    public KvMemoryReport Memory
    {
        get
        {
            long tokens = 0;
            foreach (var s in _sequences) if (s.Live) tokens += s.Length;
            return new KvMemoryReport(_liveCount, tokens, _pool.UsedBlocks, _pool.TotalBlocks, Layout.BlockBytes, BytesPerToken);
        }
    }

    /// <summary>A new empty sequence. Ids are small and reused after Remove (the lowest free id first).</summary>
    public int CreateSequence()
    {
        for (int i = 0; i < _sequences.Count; i++)
        {
            if (_sequences[i].Live) continue;
            Activate(_sequences[i]);
            return i;
        }
        var tables = new int[_kvLayers][];
        var states = new KvStoreState[_kvLayers];
        for (int l = 0; l < _kvLayers; l++)
        {
            tables[l] = new int[_policies[l].TableLength(_maxSequenceLength, _blockSize)];
            Array.Fill(tables[l], -1);
            states[l] = _policies[l].CreateState(Layout.KvHeads);
        }
        var s = new Sequence { Tables = tables, States = states };
        _sequences.Add(s);
        Activate(s);
        return _sequences.Count - 1;
    }

    public bool Contains(int seq) => (uint)seq < (uint)_sequences.Count && _sequences[seq].Live;

    /// <summary>Positions written and committed.</summary>
    public int Length(int seq) => Get(seq).Length;

    /// <summary>Positions [0, ReservedLength) may be written.</summary>
    public int ReservedLength(int seq) => Get(seq).Reserved;

    /// <summary>Logical blocks in use by the sequence's first store (for positional stores: ceil(reserved / BlockSize)).</summary>
    public int BlockCount(int seq) => Get(seq).States[0].Blocks;

    /// <summary>Entries a store holds for the sequence (committed).</summary>
    public int EntryCount(int seq, int kvLayer) => Get(seq).States[kvLayer].Count;

    /// <summary>The state a store keeps for the sequence.</summary>
    public KvStoreState StateOf(int seq, int kvLayer) => Get(seq).States[CheckLayer(kvLayer)];

    // logical slot of the first uncommitted position
    private int Frontier(Sequence s, int l) => _policies[l].Compacts ? s.States[l].Count : s.Length;

    /// <summary>
    /// Fresh blocks TryReserve(seq, length) would take from the pool: missing blocks plus copies of shared blocks that
    /// positions [Length, length) fall in, over every KV layer.
    /// </summary>
    public int BlocksNeeded(int seq, int length)
    {
        var s = Get(seq);
        CheckLength(length);
        return length <= s.Length ? 0 : Extend(s, length, apply: false);
    }

    // the blocks positions [Length, length) need in every store: missing ones and copies of shared ones; counted, or
    // (apply) allocated and copied
    private int Extend(Sequence s, int length, bool apply)
    {
        int needed = 0;
        for (int l = 0; l < _kvLayers; l++)
        {
            var (first, end) = BlockRange(s, l, length);
            var table = s.Tables[l];
            int inUse = InUse(s, l);
            for (int b = first; b < DistinctEnd(l, first, end); b++)
            {
                int slot = TableIndex(l, b);
                bool missing = slot >= inUse, shared = !missing && _pool.RefCount(table[slot]) > 1;
                if (missing || shared) needed++;
                if (!apply) continue;
                if (missing) table[slot] = Allocate();
                else if (shared) table[slot] = CopyOnWrite(table[slot], _ringBlocks[l] > 0 ? _blockSize : ValidSlots(Frontier(s, l), b));
            }
            if (!apply) continue;
            s.States[l].Blocks = Math.Max(s.States[l].Blocks, end);
            if (_policies[l].Compacts) NewEntries(s, l, length);
        }
        return needed;
    }

    // an evicting store's entries for positions [Length, length): their positions, scores of zero and slots (after the
    // kept entries'), known before the step writes them (an upward reader looks at the store before its owner layer
    // writes the step's K/V)
    private static void NewEntries(Sequence s, int l, int length)
    {
        var state = s.States[l];
        int cap = state.Capacity, heads = state.Positions!.Length / cap;
        for (int g = 0; g < heads; g++)
            for (int p = s.Length; p < length; p++)
            {
                int e = state.Count + (p - s.Length), at = g * cap + e;
                state.Positions[at] = p;
                if (state.Scores is { } scores) scores[at] = 0;
                state.Slots![at] = e;
            }
    }

    // logical blocks [first, end) that positions [Length, length) of store l fall in
    private (int First, int End) BlockRange(Sequence s, int l, int length)
    {
        int from = Frontier(s, l), to = from + (length - s.Length);
        if (_policies[l].Compacts && to > s.States[l].Capacity)
            throw new LckvException($"a step of {length - s.Length} tokens exceeds the store's capacity of {s.States[l].Capacity} entries ({s.States[l].Count} kept)");
        return (from / _blockSize, (int)BlocksFor(to, _blockSize));
    }

    /// <summary>
    /// Makes positions [0, length) writable for every KV layer: allocates missing blocks and copies any shared block
    /// that positions [Length, length) fall in (copy on write). All or nothing: false leaves the cache unchanged.
    /// Throws LckvException when length exceeds MaxSequenceLength.
    /// </summary>
    public bool TryReserve(int seq, int length)
    {
        var s = Get(seq);
        int needed = BlocksNeeded(seq, length);
        if (needed > _pool.FreeBlocks) return false;
        if (length <= s.Length)
        {
            s.Reserved = Math.Max(s.Reserved, length);
            return true;
        }
        Extend(s, length, apply: true);
        s.Reserved = Math.Max(s.Reserved, length);
        return true;
    }

    /// <summary>Writes rows of K and V ([count, KvHeads*HeadDim] each, f32) at positions start.. of one KV layer,
    /// converting to the storage dtype. The positions must be reserved, and for a store that evicts, uncommitted.</summary>
    public void Write(int seq, int kvLayer, int start, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        var s = Get(seq);
        var table = Table(s, kvLayer);
        var layout = Layout;
        int row = layout.RowElements, count = CheckRows(s, seq, start, k.Length, v.Length);
        if (_policies[kvLayer].Compacts)
        {
            if (start < s.Length) throw new ArgumentOutOfRangeException(nameof(start), $"position {start} of sequence {seq} is committed in a store that evicts");
            WriteEntries(s, kvLayer, s.States[kvLayer].Count + (start - s.Length), count, k, v);
            return;
        }
        int logical = start;
        for (int done = 0, n; done < count; done += n)
        {
            nint at = Run(table, kvLayer, logical + done, count - done, out n, out int block);
            if (_pool.RefCount(block) > 1)
                throw new InvalidOperationException($"position {start + done} of sequence {seq} is in a shared block; reserve it first");
            KvRows.Store(k.Slice(done * row, n * row), layout.DType, layout.HeadDim, at);
            KvRows.Store(v.Slice(done * row, n * row), layout.DType, layout.HeadDim, at + (nint)layout.HalfBytes);
        }
    }

    // rows i < count of k and v as entries first + i of an evicting store, each KV head's row at its entry's slot
    private unsafe void WriteEntries(Sequence s, int l, int first, int count, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        var state = s.States[l];
        var view = KvView.Compacted(s.Tables[l], first + count, state.Positions!, state.Capacity, slots: state.Slots);
        var storage = KvStorage.Paged(_pool.Base, Layout);
        int d = Layout.HeadDim, heads = Layout.KvHeads;
        for (int i = 0; i < count; i++)
            for (int g = 0; g < heads; g++)
            {
                byte* at = view.KeyRow(storage, first + i, g);
                int from = (i * heads + g) * d;
                KvRows.Store(k.Slice(from, d), Layout.DType, d, (nint)at);
                KvRows.Store(v.Slice(from, d), Layout.DType, d, (nint)(at + storage.ValueOffset));
            }
    }

    // the K/V spans of `count` rows of [KvHeads * HeadDim] at positions start.. must lie in the reservation
    private int CheckRows(Sequence s, int seq, int start, int kLength, int vLength)
    {
        int row = Layout.RowElements;
        if (kLength != vLength || kLength % row != 0)
            throw new ArgumentException($"K and V must both be [count, {row}] (got {kLength} and {vLength} values)");
        int count = kLength / row;
        if (start < 0 || start + count > s.Reserved)
            throw new ArgumentOutOfRangeException(nameof(start),
                $"positions [{start}, {start + count}) of sequence {seq} are outside its reservation [0, {s.Reserved})");
        return count;
    }

    // the address of logical slot `logical` of a store's table, and how many of the next `remaining` slots share its block
    private nint Run(int[] table, int kvLayer, int logical, int remaining, out int n, out int block)
    {
        int slot = logical % _blockSize;
        n = Math.Min(_blockSize - slot, remaining);
        block = table[TableIndex(kvLayer, logical / _blockSize)];
        return _pool.BlockPointer(block) + (nint)(slot * Layout.SlotBytes);
    }

    /// <summary>Reads rows of K and V at positions start.. of one positional store into f32 ([count, KvHeads*HeadDim]
    /// each). The positions must be reserved; what is read past the committed length is whatever was written there.</summary>
    public void Read(int seq, int kvLayer, int start, Span<float> k, Span<float> v)
    {
        var s = Get(seq);
        var table = Table(s, kvLayer);
        if (_policies[kvLayer].Compacts) throw new InvalidOperationException("a store that evicts is read by entry (ReadEntry), not by position");
        var layout = Layout;
        int row = layout.RowElements, count = CheckRows(s, seq, start, k.Length, v.Length);
        for (int done = 0, n; done < count; done += n)
        {
            nint at = Run(table, kvLayer, start + done, count - done, out n, out _);
            KvRows.Load(at, layout.DType, layout.HeadDim, k.Slice(done * row, n * row));
            KvRows.Load(at + (nint)layout.HalfBytes, layout.DType, layout.HeadDim, v.Slice(done * row, n * row));
        }
    }

    /// <summary>K and V of entry `entry` of one KV head ([HeadDim] each, f32).</summary>
    public unsafe void ReadEntry(int seq, int kvLayer, int entry, int kvHead, Span<float> k, Span<float> v)
    {
        var s = Get(seq);
        var view = ViewOf(s, kvLayer, 0);
        if ((uint)entry >= (uint)view.Count) throw new ArgumentOutOfRangeException(nameof(entry));
        var storage = KvStorage.Paged(_pool.Base, Layout);
        byte* row = view.KeyRow(storage, entry, kvHead);
        KvRows.Load((nint)row, Layout.DType, Layout.HeadDim, k[..Layout.HeadDim]);
        KvRows.Load((nint)(row + storage.ValueOffset), Layout.DType, Layout.HeadDim, v[..Layout.HeadDim]);
    }

    /// <summary>
    /// What the attention kernel sees of one (sequence, store) during a step that brings `newTokens` positions after the
    /// committed ones (already written): the kept entries plus the new ones, where each lives and its position.
    /// </summary>
    public KvView View(int seq, int kvLayer, int newTokens)
    {
        var s = Get(seq);
        CheckLayer(kvLayer);
        return ViewOf(s, kvLayer, newTokens);
    }

    private KvView ViewOf(Sequence s, int l, int newTokens)
    {
        var table = s.Tables[l];
        var state = s.States[l];
        if (_policies[l].Compacts)
            return KvView.Compacted(table, state.Count + newTokens, state.Positions!, state.Capacity, state.Scores, _policies[l].RankRope, state.Slots);
        int keys = s.Length + newTokens;
        return _ringBlocks[l] > 0 ? KvView.RingOf(table, _ringBlocks[l], _blockSize, keys) : KvView.Linear(table, keys);
    }

    /// <summary>Commits positions up to `length` (a step wrote them), then lets each store's policy evict.</summary>
    public void SetLength(int seq, int length)
    {
        if (Commit(seq, length)) RunPolicies(seq, length);
    }

    /// <summary>
    /// <see cref="SetLength"/> for a step's sequences: commits every length, then lets the policies evict, one store per
    /// thread of <see cref="WorkerPool.Shared"/> where every store has a policy object of its own. Each policy sees its
    /// store's sequences in the order given, as it would from SetLength called for one after another.
    /// </summary>
    public void SetLengths(ReadOnlySpan<int> seqs, ReadOnlySpan<int> lengths)
    {
        if (seqs.Length != lengths.Length) throw new ArgumentException($"{seqs.Length} sequences but {lengths.Length} lengths");
        if (_evictSeqs.Length < seqs.Length)
        {
            _evictSeqs = new int[seqs.Length];
            _evictLengths = new int[seqs.Length];
        }
        int n = 0;
        for (int i = 0; i < seqs.Length; i++)
            if (Commit(seqs[i], lengths[i])) { _evictSeqs[n] = seqs[i]; _evictLengths[n++] = lengths[i]; }
        if (n == 0) return;
        _evictCount = n;
        _evictError = null;
        if (n > 1 && _kvLayers > 1 && _parallelPolicies && WorkerPool.Shared.ThreadCount > 1)
        {
            WorkerPool.Shared.Run(_kvLayers, new EvictJob { Cache = this });
            if (_evictError is { } error) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(error);
        }
        else
            for (int i = 0; i < n; i++) RunPolicies(_evictSeqs[i], _evictLengths[i]);
    }

    private int[] _evictSeqs = [], _evictLengths = [];
    private int _evictCount;
    private Exception? _evictError;

    // every store's policy for one sequence that grew to `length`, store after store
    private void RunPolicies(int seq, int length)
    {
        var s = Get(seq);
        Prefetch(s.States[0]);
        for (int l = 0; l < _kvLayers; l++)
        {
            if (l + 1 < _kvLayers) Prefetch(s.States[l + 1]);
            _policies[l].AfterStep(new KvStoreEditor(this, seq, l), length);
        }
    }

    // stores [start, end) of SetLengths, each over the sequences in order; a policy's failure is rethrown by the caller
    private struct EvictJob : IRangeBody
    {
        public KvCache Cache;

        public readonly void Invoke(int start, int end)
        {
            var c = Cache;
            try
            {
                for (int l = start; l < end; l++)
                    for (int i = 0; i < c._evictCount; i++)
                    {
                        if (i + 1 < c._evictCount) Prefetch(c.Get(c._evictSeqs[i + 1]).States[l]);
                        c._policies[l].AfterStep(new KvStoreEditor(c, c._evictSeqs[i], l), c._evictLengths[i]);
                    }
            }
            catch (Exception e) { Interlocked.CompareExchange(ref c._evictError, e, null); }
        }
    }

    // commits the length of one sequence; true when it grew (its policies are due)
    private bool Commit(int seq, int length)
    {
        var s = Get(seq);
        if (length < 0 || length > s.Reserved)
            throw new ArgumentOutOfRangeException(nameof(length), length,
                $"sequence {seq} has [0, {s.Reserved}) reserved");
        int added = length - s.Length;
        for (int l = 0; l < _kvLayers; l++)
        {
            var st = s.States[l];
            if (_policies[l].Compacts) st.Count += Math.Max(0, added);
            else st.Count = length;
        }
        s.Length = length;
        s.Reserved = Math.Max(s.Reserved, length);
        return added > 0;
    }

    // a store's entry arrays, which its policy reads next and which were last touched a whole step ago
    private static void Prefetch(KvStoreState state)
    {
        if (state.Positions is { } positions) Simd.PrefetchL2(System.Runtime.InteropServices.MemoryMarshal.Cast<int, float>(positions.AsSpan()));
        if (state.Slots is { } slots) Simd.PrefetchL2(System.Runtime.InteropServices.MemoryMarshal.Cast<int, float>(slots.AsSpan()));
        if (state.Scores is { } scores) Simd.PrefetchL2(scores);
    }

    /// <summary>The block table of one (sequence, KV layer): owned by the cache, valid while the sequence lives.</summary>
    public int[] BlockTable(int seq, int kvLayer) => Table(Get(seq), kvLayer);

    /// <summary>Frees every block of the sequence and forgets it.</summary>
    public void Remove(int seq)
    {
        var s = Get(seq);
        for (int l = 0; l < _kvLayers; l++) ReleaseFrom(s, l, 0);
        s.Live = false;
        s.Length = s.Reserved = 0;
        _liveCount--;
    }

    /// <summary>A new sequence sharing all of seq's blocks (ref-counted); writes after the fork copy on write.</summary>
    /// <remarks>The fork shares the committed prefix, [0, Length), and its reservation is its length. The parent's
    /// reservation also shrinks to its length (the blocks it keeps stay allocated), so that neither writes into a block
    /// the other reads without reserving (and copying) first. Stores that evict cannot be forked.</remarks>
    public int Fork(int seq)
    {
        var parent = Get(seq);
        for (int l = 0; l < _kvLayers; l++)
            if (_policies[l].Compacts) throw new LckvException("a sequence whose stores evict cannot be forked");
        int child = CreateSequence();
        var c = _sequences[child];
        int shared = (int)BlocksFor(parent.Length, _blockSize);
        for (int l = 0; l < _kvLayers; l++)
        {
            var from = parent.Tables[l];
            var to = c.Tables[l];
            int slots = _ringBlocks[l] > 0 ? Math.Min(shared, _ringBlocks[l]) : shared;
            for (int b = 0; b < slots; b++)
            {
                _pool.Retain(from[b]);
                to[b] = from[b];
            }
            c.States[l].Blocks = shared;
            c.States[l].Count = parent.Length;
        }
        c.Length = c.Reserved = parent.Length;
        parent.Reserved = parent.Length;
        return child;
    }

    /// <summary>Drops positions >= length, releasing blocks no longer needed. The reservation becomes the length.</summary>
    public void Truncate(int seq, int length)
    {
        var s = Get(seq);
        if (length < 0 || length > s.Length)
            throw new ArgumentOutOfRangeException(nameof(length), length, $"sequence {seq} has {s.Length} positions");
        for (int l = 0; l < _kvLayers; l++)
        {
            if (_policies[l].Compacts && length != s.Length) throw new LckvException("a sequence whose stores evict cannot be truncated");
            ReleaseFrom(s, l, (int)BlocksFor(_policies[l].Compacts ? s.States[l].Count : length, _blockSize));
            if (!_policies[l].Compacts) s.States[l].Count = length;
        }
        s.Length = s.Reserved = length;
    }

    /// <summary>Removes every sequence but seq.</summary>
    public void Keep(int seq)
    {
        Get(seq);
        for (int i = 0; i < _sequences.Count; i++)
            if (i != seq && _sequences[i].Live) Remove(i);
    }

    /// <summary>
    /// Keeps kept[g * keep + i] (increasing in i) of each KV head of one (sequence, store) and evicts the rest: each
    /// evicted entry goes to the policy's OnEvicted; the kept entries' positions, scores and slots move down to entries
    /// 0..keep-1; the kept rows in slots >= keep move into the slots below keep that evicted entries left, so that the
    /// slots stay [0, keep); blocks past them return to the pool.
    /// </summary>
    internal unsafe void Compact(int seq, int kvLayer, ReadOnlySpan<int> kept, int keep)
    {
        var s = Get(seq);
        var policy = _policies[kvLayer];
        if (!policy.Compacts) throw new InvalidOperationException("only a store that evicts can drop entries");
        var state = s.States[kvLayer];
        int heads = Layout.KvHeads, d = Layout.HeadDim, count = state.Count, cap = state.Capacity;
        if (keep < 0 || keep > count || kept.Length != heads * keep) throw new ArgumentException($"keep {keep} of {count} entries: expected {heads * keep} indices");
        var view = KvView.Compacted(s.Tables[kvLayer], count, state.Positions!, cap, state.Scores, slots: state.Slots);
        var storage = KvStorage.Paged(_pool.Base, Layout);
        Span<float> k = stackalloc float[d];
        Span<float> v = stackalloc float[d];
        Span<int> holes = count <= 1024 ? stackalloc int[count] : new int[count];
        int[] positions = state.Positions!, slots = state.Slots!;
        var scores = state.Scores;
        long rowBytes = storage.HeadBytes;
        for (int g = 0; g < heads; g++)
        {
            var mine = kept.Slice(g * keep, keep);
            for (int i = 1; i < keep; i++)
                if (mine[i] <= mine[i - 1]) throw new ArgumentException("kept entries must be increasing");
            if (keep > 0 && (mine[0] < 0 || mine[^1] >= count)) throw new ArgumentException("a kept entry is out of range");
            int o = g * cap, nHoles = 0;
            for (int e = 0, next = 0; e < count; e++)
            {
                if (next < keep && mine[next] == e)
                {
                    // entry e becomes entry `next` (next <= e: nothing at index e has been overwritten yet)
                    positions[o + next] = positions[o + e];
                    slots[o + next] = slots[o + e];
                    if (scores is not null) scores[o + next] = scores[o + e];
                    next++;
                    continue;
                }
                if (policy.ReceivesEvicted)
                {
                    byte* row = view.KeyRow(storage, e, g);
                    KvRows.Load((nint)row, Layout.DType, d, k);
                    KvRows.Load((nint)(row + storage.ValueOffset), Layout.DType, d, v);
                    policy.OnEvicted(state, g, e, positions[o + e], k, v);
                }
                if (slots[o + e] < keep) holes[nHoles++] = slots[o + e];
            }
            // as many kept entries sit in slots >= keep as there are holes below keep
            for (int i = 0, h = 0; i < keep && h < nHoles; i++)
            {
                if (slots[o + i] < keep) continue;
                var from = view.KeyRow(storage, i, g);
                slots[o + i] = holes[h++];
                var to = view.KeyRow(storage, i, g);
                Buffer.MemoryCopy(from, to, rowBytes, rowBytes);
                Buffer.MemoryCopy(from + storage.ValueOffset, to + storage.ValueOffset, rowBytes, rowBytes);
            }
        }
        state.Count = keep;
        // blocks past the kept entries return to the pool, but for slots an outstanding reservation still covers
        ReleaseFrom(s, kvLayer, (int)BlocksFor(keep + (s.Reserved - s.Length), _blockSize));
    }

    /// <summary>Evicts entries[g] of each KV head g of one (sequence, store): Compact keeping every other entry.</summary>
    internal unsafe void EvictOne(int seq, int kvLayer, ReadOnlySpan<int> entries)
    {
        var s = Get(seq);
        var policy = _policies[kvLayer];
        if (!policy.Compacts) throw new InvalidOperationException("only a store that evicts can drop entries");
        var state = s.States[kvLayer];
        int heads = Layout.KvHeads, d = Layout.HeadDim, count = state.Count, cap = state.Capacity, keep = count - 1;
        if (entries.Length != heads) throw new ArgumentException($"expected one entry per KV head ({heads}), got {entries.Length}");
        var view = KvView.Compacted(s.Tables[kvLayer], count, state.Positions!, cap, state.Scores, slots: state.Slots);
        var storage = KvStorage.Paged(_pool.Base, Layout);
        int[] positions = state.Positions!, slots = state.Slots!;
        var scores = state.Scores;
        long rowBytes = storage.HeadBytes;
        Span<float> k = policy.ReceivesEvicted ? stackalloc float[d] : default;
        Span<float> v = policy.ReceivesEvicted ? stackalloc float[d] : default;
        // the evicted rows were last read a whole step ago (the policy reads them, or the last slot's row moves into
        // them): ask for all heads' rows before the first is touched
        for (int g = 0; g < heads; g++)
            if ((uint)entries[g] < (uint)count)
            {
                byte* row = view.KeyRow(storage, entries[g], g);
                Simd.PrefetchL1(row, rowBytes);
                Simd.PrefetchL1(row + storage.ValueOffset, rowBytes);
            }
        for (int g = 0; g < heads; g++)
        {
            int e = entries[g], o = g * cap;
            if ((uint)e >= (uint)count) throw new ArgumentException("an evicted entry is out of range");
            if (policy.ReceivesEvicted)
            {
                byte* row = view.KeyRow(storage, e, g);
                KvRows.Load((nint)row, Layout.DType, d, k);
                KvRows.Load((nint)(row + storage.ValueOffset), Layout.DType, d, v);
                policy.OnEvicted(state, g, e, positions[o + e], k, v);
            }
            int hole = slots[o + e], tail = count - 1 - e;
            Array.Copy(positions, o + e + 1, positions, o + e, tail);
            Array.Copy(slots, o + e + 1, slots, o + e, tail);
            if (scores is not null) Array.Copy(scores, o + e + 1, scores, o + e, tail);
            if (hole == keep) continue;
            // the entry in the last slot moves into the hole, so that the slots stay [0, keep)
            int mover = slots.AsSpan(o, keep).IndexOf(keep);
            byte* from = view.KeyRow(storage, mover, g);
            slots[o + mover] = hole;
            byte* to = view.KeyRow(storage, mover, g);
            Buffer.MemoryCopy(from, to, rowBytes, rowBytes);
            Buffer.MemoryCopy(from + storage.ValueOffset, to + storage.ValueOffset, rowBytes, rowBytes);
        }
        state.Count = keep;
        ReleaseFrom(s, kvLayer, (int)BlocksFor(keep + (s.Reserved - s.Length), _blockSize));
    }

    private void Activate(Sequence s)
    {
        s.Live = true;
        s.Length = s.Reserved = 0;
        foreach (var st in s.States) st.Reset();
        _liveCount++;
    }

    private Sequence Get(int seq)
    {
        if (!Contains(seq)) throw new ArgumentException($"no KV sequence {seq}", nameof(seq));
        return _sequences[seq];
    }

    private int CheckLayer(int kvLayer)
    {
        if ((uint)kvLayer >= (uint)_kvLayers)
            throw new ArgumentOutOfRangeException(nameof(kvLayer), kvLayer, $"the cache has {_kvLayers} KV layers");
        return kvLayer;
    }

    private int[] Table(Sequence s, int kvLayer) => s.Tables[CheckLayer(kvLayer)];

    private void CheckLength(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (length > _maxSequenceLength)
            throw new LckvException($"sequence of {length} tokens exceeds the context of {_maxSequenceLength}");
    }

    // the table entry of logical block b in KV layer l
    private int TableIndex(int l, int b) => _ringBlocks[l] > 0 ? b % _ringBlocks[l] : b;

    // table entries of layer l that hold a block
    private int InUse(Sequence s, int l) => _ringBlocks[l] > 0 ? Math.Min(s.States[l].Blocks, _ringBlocks[l]) : s.States[l].Blocks;

    // logical blocks [first, end) of a ring visit each table entry once: stop after RingBlocks of them
    private int DistinctEnd(int l, int first, int end) => _ringBlocks[l] > 0 ? Math.Min(end, first + _ringBlocks[l]) : end;

    // committed slots of logical block b when the frontier (first uncommitted logical slot) is at `frontier`
    private int ValidSlots(int frontier, int b) => Math.Clamp(frontier - b * _blockSize, 0, _blockSize);

    private int Allocate()
    {
        // TryReserve counted the blocks first; failing here is a bookkeeping bug.
        if (!_pool.TryAllocate(out int block)) throw new InvalidOperationException("KV pool ran dry after the blocks were counted");
        return block;
    }

    private unsafe int CopyOnWrite(int shared, int slots)
    {
        int fresh = Allocate();
        var layout = Layout;
        long bytes = slots * layout.SlotBytes;
        if (bytes > 0)
        {
            byte* src = (byte*)_pool.BlockPointer(shared), dst = (byte*)_pool.BlockPointer(fresh);
            Buffer.MemoryCopy(src, dst, layout.HalfBytes, bytes);
            Buffer.MemoryCopy(src + layout.HalfBytes, dst + layout.HalfBytes, layout.HalfBytes, bytes);
        }
        _pool.Release(shared);
        return fresh;
    }

    // releases logical blocks >= keepBlocks of store l
    private void ReleaseFrom(Sequence s, int l, int keepBlocks)
    {
        var st = s.States[l];
        if (keepBlocks >= st.Blocks) return;
        var table = s.Tables[l];
        int ring = _ringBlocks[l];
        int from = ring > 0 ? Math.Min(keepBlocks, ring) : keepBlocks, to = ring > 0 ? Math.Min(st.Blocks, ring) : st.Blocks;
        lock (_pool) // stores evict in parallel (SetLengths)
            for (int b = from; b < to; b++)
            {
                _pool.Release(table[b]);
                table[b] = -1;
            }
        st.Blocks = keepBlocks;
    }
}
