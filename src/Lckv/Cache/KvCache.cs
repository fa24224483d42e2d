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
/// The KV of many sequences for the KV-computing layers of one model. Each (sequence, kv layer) has a block table;
/// position p of a sequence lives in block table[p / BlockSize], slot p % BlockSize. Verbs on sequence ids in the
/// spirit of llama.cpp: create, reserve, remove, fork (share the prefix), truncate, keep.
/// </summary>
/// <remarks>
/// Each sequence has a committed length (positions written and visible) and a reserved length (positions that may be
/// written). Blocks covering [Length, Reserved) belong to the sequence alone, so writes there never disturb a
/// sequence that shares the prefix. Block tables are int arrays of ceil(MaxSequenceLength / BlockSize) entries owned by
/// the cache, allocated when a sequence id is first used and reused with the id; entries past the sequence's blocks
/// are -1. The structural verbs are not thread-safe; writes to distinct (sequence, layer) pairs may run concurrently.
/// </remarks>
public sealed class KvCache
{
    sealed class Sequence
    {
        public bool Live;
        public int Length;   // committed
        public int Reserved; // writable: [0, Reserved)
        public int Blocks;   // entries in use in each table (the same for every layer)
        public required int[][] Tables;
    }

    readonly KvBlockPool pool;
    readonly int kvLayers;
    readonly int maxSequenceLength;
    readonly int blockSize;
    readonly int tableCapacity;
    readonly int[] ringBlocks; // per KV layer: 0 = linear table, else a ring of that many blocks
    readonly List<Sequence> sequences = [];
    int liveCount;

    /// <param name="pool">where every byte of KV comes from</param>
    /// <param name="kvLayers">number of KV-computing layers (each gets its own block table per sequence)</param>
    /// <param name="maxSequenceLength">the longest sequence (sizes the block tables once)</param>
    /// <param name="ringPositions">per KV layer, 0 for a linear store, or the positions a bounded ring keeps (a
    /// sliding-window layer: its window plus the largest step, see LlamaModel.RingPositions); rounded up to blocks.
    /// Position p of a ring layer lives in table[(p / BlockSize) % RingBlocks]; older positions are overwritten.</param>
    public KvCache(KvBlockPool pool, int kvLayers, int maxSequenceLength, IReadOnlyList<int>? ringPositions = null)
    {
        ArgumentNullException.ThrowIfNull(pool);
        if (kvLayers <= 0) throw new LckvException($"a KV cache needs at least one KV layer, got {kvLayers}");
        if (maxSequenceLength <= 0) throw new LckvException($"the maximum sequence length must be positive, got {maxSequenceLength}");
        this.pool = pool;
        this.kvLayers = kvLayers;
        this.maxSequenceLength = maxSequenceLength;
        blockSize = pool.Layout.BlockSize;
        tableCapacity = (int)BlocksFor(maxSequenceLength, blockSize);
        if (ringPositions is not null && ringPositions.Count != kvLayers)
            throw new ArgumentException($"ringPositions has {ringPositions.Count} entries for {kvLayers} KV layers", nameof(ringPositions));
        ringBlocks = new int[kvLayers];
        for (int l = 0; l < kvLayers; l++)
        {
            int positions = ringPositions?[l] ?? 0;
            ArgumentOutOfRangeException.ThrowIfNegative(positions);
            int blocks = (int)BlocksFor(positions, blockSize);
            ringBlocks[l] = blocks > 0 && blocks < tableCapacity ? blocks : 0; // a ring as long as the context is just linear
        }
    }

    /// <summary>0 when the KV layer's table is linear, else the number of blocks of its ring.</summary>
    public int RingBlocks(int kvLayer) => ringBlocks[kvLayer];

    /// <summary>Pool blocks one unshared sequence of <paramref name="tokens"/> positions takes over every KV layer.</summary>
    public long BlocksForTokens(int tokens)
    {
        long linear = BlocksFor(tokens, blockSize), total = 0;
        for (int l = 0; l < kvLayers; l++) total += ringBlocks[l] > 0 ? Math.Min(linear, ringBlocks[l]) : linear;
        return total;
    }

    public KvBlockPool Pool => pool;
    public KvLayout Layout => pool.Layout;
    public int KvLayers => kvLayers;
    public int MaxSequenceLength => maxSequenceLength;
    /// <summary>Entries of every block table: ceil(MaxSequenceLength / BlockSize).</summary>
    public int TableCapacity => tableCapacity;

    /// <summary>2 * kvLayers * kvHeads * headDim * bytes(dtype).</summary>
    public long BytesPerToken => BytesPerTokenFor(kvLayers, Layout.KvHeads, Layout.HeadDim, Layout.DType);

    public int SequenceCount => liveCount;

    /// <summary>Blocks that hold <paramref name="tokens"/> positions: ceil(tokens / blockSize).</summary>
    public static long BlocksFor(long tokens, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        return (tokens + blockSize - 1) / blockSize;
    }

    /// <summary>2 * kvLayers * kvHeads * headDim * bytes(dtype): the KV of one token across the cached layers.</summary>
    public static long BytesPerTokenFor(int kvLayers, int kvHeads, int headDim, DType dtype)
        => 2L * kvLayers * kvHeads * headDim * DTypes.SizeOf(dtype);

    /// <summary>Pool bytes one unshared sequence of <paramref name="tokens"/> positions takes (whole blocks, every KV
    /// layer, rings bounded).</summary>
    public long BytesFor(int tokens) => BlocksForTokens(tokens) * Layout.BlockBytes;

    public KvMemoryReport Memory
    {
        get
        {
            long tokens = 0;
            foreach (var s in sequences) if (s.Live) tokens += s.Length;
            return new KvMemoryReport(liveCount, tokens, pool.UsedBlocks, pool.TotalBlocks, Layout.BlockBytes, BytesPerToken);
        }
    }

    /// <summary>A new empty sequence. Ids are small and reused after Remove (the lowest free id first).</summary>
    public int CreateSequence()
    {
        for (int i = 0; i < sequences.Count; i++)
        {
            if (sequences[i].Live) continue;
            Activate(sequences[i]);
            return i;
        }
        var tables = new int[kvLayers][];
        for (int l = 0; l < kvLayers; l++)
        {
            tables[l] = new int[ringBlocks[l] > 0 ? ringBlocks[l] : tableCapacity];
            Array.Fill(tables[l], -1);
        }
        var s = new Sequence { Tables = tables };
        sequences.Add(s);
        Activate(s);
        return sequences.Count - 1;
    }

    public bool Contains(int seq) => (uint)seq < (uint)sequences.Count && sequences[seq].Live;

    /// <summary>Positions written and committed.</summary>
    public int Length(int seq) => Get(seq).Length;

    /// <summary>Positions [0, ReservedLength) may be written.</summary>
    public int ReservedLength(int seq) => Get(seq).Reserved;

    /// <summary>Entries in use in each of the sequence's block tables.</summary>
    public int BlockCount(int seq) => Get(seq).Blocks;

    /// <summary>
    /// Fresh blocks TryReserve(seq, length) would take from the pool: missing blocks plus copies of shared blocks that
    /// positions [Length, length) fall in, over every KV layer.
    /// </summary>
    public int BlocksNeeded(int seq, int length)
    {
        var s = Get(seq);
        CheckLength(length);
        if (length <= s.Length) return 0;
        int first = s.Length / blockSize, end = (int)BlocksFor(length, blockSize);
        int needed = 0;
        for (int l = 0; l < kvLayers; l++)
        {
            var table = s.Tables[l];
            int inUse = InUse(s, l);
            for (int b = first; b < DistinctEnd(l, first, end); b++)
            {
                int slot = Slot(l, b);
                if (slot >= inUse || pool.RefCount(table[slot]) > 1) needed++;
            }
        }
        return needed;
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
        if (needed > pool.FreeBlocks) return false;
        if (length <= s.Length)
        {
            s.Reserved = Math.Max(s.Reserved, length);
            return true;
        }
        int first = s.Length / blockSize, end = (int)BlocksFor(length, blockSize);
        for (int l = 0; l < kvLayers; l++)
        {
            var table = s.Tables[l];
            int inUse = InUse(s, l);
            for (int b = first; b < DistinctEnd(l, first, end); b++)
            {
                int slot = Slot(l, b);
                if (slot >= inUse) table[slot] = Allocate();
                else if (pool.RefCount(table[slot]) > 1)
                    table[slot] = CopyOnWrite(table[slot], ringBlocks[l] > 0 ? blockSize : ValidSlots(s, b));
            }
        }
        s.Blocks = Math.Max(s.Blocks, end);
        s.Reserved = Math.Max(s.Reserved, length);
        return true;
    }

    /// <summary>Writes rows of K and V ([count, KvHeads*HeadDim] each, f32) at positions start.. of one KV layer,
    /// converting to the storage dtype. The positions must be reserved.</summary>
    public void Write(int seq, int kvLayer, int start, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        var s = Get(seq);
        var table = Table(s, kvLayer);
        var layout = Layout;
        int row = layout.RowElements;
        if (k.Length != v.Length || k.Length % row != 0)
            throw new ArgumentException($"K and V must both be [count, {row}] (got {k.Length} and {v.Length} values)");
        int count = k.Length / row;
        if (start < 0 || start + count > s.Reserved)
            throw new ArgumentOutOfRangeException(nameof(start),
                $"positions [{start}, {start + count}) of sequence {seq} are outside its reservation [0, {s.Reserved})");
        int es = DTypes.SizeOf(layout.DType);
        int done = 0;
        while (done < count)
        {
            int p = start + done, b = p / blockSize, slot = p % blockSize;
            int n = Math.Min(blockSize - slot, count - done);
            int block = table[Slot(kvLayer, b)];
            if (pool.RefCount(block) > 1)
                throw new InvalidOperationException($"position {p} of sequence {seq} is in a shared block; reserve it first");
            nint at = pool.BlockPointer(block) + (nint)((long)slot * row * es);
            Convert.Narrow(k.Slice(done * row, n * row), layout.DType, at);
            Convert.Narrow(v.Slice(done * row, n * row), layout.DType, at + (nint)layout.HalfBytes);
            done += n;
        }
    }

    /// <summary>Reads rows of K and V at positions start.. of one KV layer into f32 ([count, KvHeads*HeadDim] each).
    /// The positions must be reserved; what is read past the committed length is whatever was written there.</summary>
    public void Read(int seq, int kvLayer, int start, Span<float> k, Span<float> v)
    {
        var s = Get(seq);
        var table = Table(s, kvLayer);
        var layout = Layout;
        int row = layout.RowElements;
        if (k.Length != v.Length || k.Length % row != 0)
            throw new ArgumentException($"K and V must both be [count, {row}] (got {k.Length} and {v.Length} values)");
        int count = k.Length / row;
        if (start < 0 || start + count > s.Reserved)
            throw new ArgumentOutOfRangeException(nameof(start),
                $"positions [{start}, {start + count}) of sequence {seq} are outside its reservation [0, {s.Reserved})");
        int es = DTypes.SizeOf(layout.DType);
        int done = 0;
        while (done < count)
        {
            int p = start + done, slot = p % blockSize;
            int n = Math.Min(blockSize - slot, count - done);
            nint at = pool.BlockPointer(table[Slot(kvLayer, p / blockSize)]) + (nint)((long)slot * row * es);
            Convert.Widen(at, layout.DType, k.Slice(done * row, n * row));
            Convert.Widen(at + (nint)layout.HalfBytes, layout.DType, v.Slice(done * row, n * row));
            done += n;
        }
    }

    /// <summary>Sets the committed length (after a step wrote positions up to it); must be within the reservation.</summary>
    public void SetLength(int seq, int length)
    {
        var s = Get(seq);
        if (length < 0 || length > s.Reserved)
            throw new ArgumentOutOfRangeException(nameof(length), length,
                $"sequence {seq} has [0, {s.Reserved}) reserved");
        s.Length = length;
    }

    /// <summary>The block table of one (sequence, KV layer): owned by the cache, valid while the sequence lives.</summary>
    public int[] BlockTable(int seq, int kvLayer) => Table(Get(seq), kvLayer);

    /// <summary>Frees every block of the sequence and forgets it.</summary>
    public void Remove(int seq)
    {
        var s = Get(seq);
        ReleaseFrom(s, 0);
        s.Live = false;
        s.Length = s.Reserved = 0;
        liveCount--;
    }

    /// <summary>A new sequence sharing all of seq's blocks (ref-counted); writes after the fork copy on write.</summary>
    /// <remarks>The fork shares the committed prefix, [0, Length), and its reservation is its length. The parent's
    /// reservation also shrinks to its length (the blocks it keeps stay allocated), so that neither writes into a block
    /// the other reads without reserving (and copying) first.</remarks>
    public int Fork(int seq)
    {
        var parent = Get(seq);
        int child = CreateSequence();
        var c = sequences[child];
        int shared = (int)BlocksFor(parent.Length, blockSize);
        for (int l = 0; l < kvLayers; l++)
        {
            var from = parent.Tables[l];
            var to = c.Tables[l];
            int slots = ringBlocks[l] > 0 ? Math.Min(shared, ringBlocks[l]) : shared;
            for (int b = 0; b < slots; b++)
            {
                pool.Retain(from[b]);
                to[b] = from[b];
            }
        }
        c.Blocks = shared;
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
        ReleaseFrom(s, (int)BlocksFor(length, blockSize));
        s.Length = s.Reserved = length;
    }

    /// <summary>Removes every sequence but seq.</summary>
    public void Keep(int seq)
    {
        Get(seq);
        for (int i = 0; i < sequences.Count; i++)
            if (i != seq && sequences[i].Live) Remove(i);
    }

    void Activate(Sequence s)
    {
        s.Live = true;
        s.Length = s.Reserved = s.Blocks = 0;
        liveCount++;
    }

    Sequence Get(int seq)
    {
        if (!Contains(seq)) throw new ArgumentException($"no KV sequence {seq}", nameof(seq));
        return sequences[seq];
    }

    int[] Table(Sequence s, int kvLayer)
    {
        if ((uint)kvLayer >= (uint)kvLayers)
            throw new ArgumentOutOfRangeException(nameof(kvLayer), kvLayer, $"the cache has {kvLayers} KV layers");
        return s.Tables[kvLayer];
    }

    void CheckLength(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (length > maxSequenceLength)
            throw new LckvException($"sequence of {length} tokens exceeds the context of {maxSequenceLength}");
    }

    // the table entry of logical block b in KV layer l
    int Slot(int l, int b) => ringBlocks[l] > 0 ? b % ringBlocks[l] : b;

    // table entries of layer l that hold a block
    int InUse(Sequence s, int l) => ringBlocks[l] > 0 ? Math.Min(s.Blocks, ringBlocks[l]) : s.Blocks;

    // logical blocks [first, end) of a ring visit each table entry once: stop after RingBlocks of them
    int DistinctEnd(int l, int first, int end) => ringBlocks[l] > 0 ? Math.Min(end, first + ringBlocks[l]) : end;

    // committed positions of block b of s
    int ValidSlots(Sequence s, int b) => Math.Clamp(s.Length - b * blockSize, 0, blockSize);

    int Allocate()
    {
        // TryReserve counted the blocks first; failing here is a bookkeeping bug.
        if (!pool.TryAllocate(out int block)) throw new InvalidOperationException("KV pool ran dry after the blocks were counted");
        return block;
    }

    unsafe int CopyOnWrite(int shared, int slots)
    {
        int fresh = Allocate();
        var layout = Layout;
        long bytes = (long)slots * layout.RowElements * DTypes.SizeOf(layout.DType);
        if (bytes > 0)
        {
            byte* src = (byte*)pool.BlockPointer(shared), dst = (byte*)pool.BlockPointer(fresh);
            Buffer.MemoryCopy(src, dst, layout.HalfBytes, bytes);
            Buffer.MemoryCopy(src + layout.HalfBytes, dst + layout.HalfBytes, layout.HalfBytes, bytes);
        }
        pool.Release(shared);
        return fresh;
    }

    void ReleaseFrom(Sequence s, int keepBlocks)
    {
        if (keepBlocks >= s.Blocks) return;
        for (int l = 0; l < kvLayers; l++)
        {
            var table = s.Tables[l];
            int ring = ringBlocks[l];
            int from = ring > 0 ? Math.Min(keepBlocks, ring) : keepBlocks, to = ring > 0 ? Math.Min(s.Blocks, ring) : s.Blocks;
            for (int b = from; b < to; b++)
            {
                pool.Release(table[b]);
                table[b] = -1;
            }
        }
        s.Blocks = keepBlocks;
    }
}
