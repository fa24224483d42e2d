using System.Runtime.CompilerServices;

namespace Lckv.Numerics;

/// <summary>
/// Geometry of one KV block: K then V, each [BlockSize, KvHeads] rows of HeadDim values in the storage format (KvRows).
/// Blocks of one pool lie at Base + index * BlockBytes.
/// </summary>
public readonly record struct KvLayout(int BlockSize, int KvHeads, int HeadDim, DType DType)
{
    public int RowElements => KvHeads * HeadDim;
    /// <summary>Bytes of one (slot, KV head) row of K (or V), scales included.</summary>
    public int HeadBytes => KvRows.RowBytes(DType, HeadDim);
    /// <summary>Bytes of one slot's K (or V): every KV head's row.</summary>
    public long SlotBytes => (long)KvHeads * HeadBytes;
    public long HalfBytes => BlockSize * SlotBytes;
    public long BlockBytes => 2 * HalfBytes;
}

/// <summary>
/// Where the blocks that views index live: block b at Base + b * BlockBytes, the K row of slot s and KV head g at
/// s * KvHeads * HeadDim + g * HeadDim elements into the block, its V row ValueOffset bytes after the K row.
/// A paged pool puts V in the second half of each block; a contiguous training buffer is K and V arrays of
/// [sequences * T, KvHeads * HeadDim] with one block per sequence.
/// </summary>
public readonly record struct KvStorage(nint Base, KvLayout Layout, long BlockBytes, long ValueOffset)
{
    public static KvStorage Paged(nint poolBase, KvLayout layout) => new(poolBase, layout, layout.BlockBytes, layout.HalfBytes);

    /// <summary>K and V of [sequences * seqLen, kvHeads * headDim] f32 each, sequence b in block b.</summary>
    public static unsafe KvStorage Contiguous(float* k, float* v, int seqLen, int kvHeads, int headDim)
        => new((nint)k, new KvLayout(seqLen, kvHeads, headDim, DType.F32), (long)seqLen * kvHeads * headDim * sizeof(float),
            (long)((byte*)v - (byte*)k));

    /// <summary>Bytes from one slot's row to the next slot's row of the same KV head.</summary>
    public long SlotBytes => Layout.SlotBytes;

    /// <summary>Bytes of one head's row.</summary>
    public long HeadBytes => Layout.HeadBytes;
}

/// <summary>
/// What one (sequence, store) holds, as the attention kernel sees it: entries 0..Count-1 in increasing position
/// order, entry e in logical slot Origin + e (or, for a store that evicts, Slots[g * Stride + e] of KV head g), logical
/// slot L in block Table[L / BlockSize] (modulo Ring when the table is a ring) at slot L % BlockSize. Entry e holds
/// position FirstPosition + e, or, for a store that evicts, the per-KV-head positions in Positions[g * Stride + e]. Scores, when present, is a per-(KV head, entry) accumulator
/// (same stride) into which the kernel adds each entry's softmax probabilities (summed over query rows and the query
/// heads of the KV head). KeyRope, when present, says the keys are stored unrotated and rotated when read by their rank
/// in the store: entry e by position e of the table (StreamingLLM).
/// </summary>
public readonly record struct KvView(int[] Table, int Ring, int Origin, int Count, int FirstPosition, int[]? Positions = null,
    int Stride = 0, float[]? Scores = null, RopeTable? KeyRope = null, int[]? Slots = null)
{
    /// <summary>Positions 0..count-1 in a linear table.</summary>
    public static KvView Linear(int[] table, int count, float[]? scores = null) => new(table, 0, 0, count, 0, Scores: scores, Stride: count);

    /// <summary>
    /// A ring of ringBlocks blocks holding the newest blocks of positions 0..keyCount-1: position p in logical slot p,
    /// present from the first position of the oldest block still in the ring.
    /// </summary>
    public static KvView RingOf(int[] table, int ringBlocks, int blockSize, int keyCount)
    {
        int first = keyCount <= 0 ? 0 : Math.Max(0, ((keyCount - 1) / blockSize - ringBlocks + 1) * blockSize);
        return new KvView(table, ringBlocks, first, Math.Max(0, keyCount - first), first);
    }

    /// <summary>Entries with per-KV-head positions (increasing in e), entry e of head g at logical slot
    /// slots[g * stride + e] (at slot e when slots is null).</summary>
    public static KvView Compacted(int[] table, int count, int[] positions, int stride, float[]? scores = null, RopeTable? keyRope = null,
        int[]? slots = null)
        => new(table, 0, 0, count, 0, positions, stride, scores, keyRope, slots);

    /// <summary>The entries [Start, End) a query at position t sees through KV head g under the rule.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public (int Start, int End) Visible(MaskRule rule, int t, int g)
    {
        int last = rule.NoDiagonal ? t : t + 1; // positions < last
        int first = rule.Window > 0 ? t - rule.Window : int.MinValue; // positions >= first
        if (Positions is null)
        {
            int end = Math.Min(last - FirstPosition, Count);
            int start = Math.Max(0, first == int.MinValue ? 0 : first - FirstPosition);
            return (start, Math.Max(start, end));
        }
        var span = Positions.AsSpan(g * Stride, Count);
        int s = LowerBound(span, first), e = LowerBound(span, last);
        return (s, Math.Max(s, e));
    }

    // the first index whose value is >= x
    private static int LowerBound(ReadOnlySpan<int> a, int x)
    {
        int lo = 0, hi = a.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (a[mid] < x) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }

    /// <summary>The K row of entry e for KV head g (its V row is storage.ValueOffset bytes on).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public unsafe byte* KeyRow(in KvStorage storage, int e, int g)
    {
        int bs = storage.Layout.BlockSize, l = Slots is null ? Origin + e : Slots[g * Stride + e], b = l / bs;
        return (byte*)storage.Base + Table[Ring > 0 ? b % Ring : b] * storage.BlockBytes + (l - b * bs) * storage.SlotBytes
            + g * storage.HeadBytes;
    }

    /// <summary>The K rows of entries [e, e + n) for KV head g into rows, walking the blocks forward.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public unsafe void KeyRows(in KvStorage storage, int e, int n, int g, byte** rows)
    {
        int bs = storage.Layout.BlockSize, l = Origin + e, block = l / bs, slot = l - block * bs, ring = Ring;
        long blockBytes = storage.BlockBytes, slotBytes = storage.SlotBytes;
        byte* head = (byte*)storage.Base + g * storage.HeadBytes;
        int[] table = Table;
        if (Slots is { } slots)
        {
            for (int i = 0, at = g * Stride + e; i < n; i++)
            {
                int s = slots[at + i], b = s / bs;
                rows[i] = head + table[b] * blockBytes + (s - b * bs) * slotBytes;
            }
            return;
        }
        for (int i = 0; i < n; i++)
        {
            rows[i] = head + table[ring > 0 ? block % ring : block] * blockBytes + slot * slotBytes;
            if (++slot == bs) { slot = 0; block++; }
        }
    }

    /// <summary>Throws if the table cannot hold the entries, if positions or scores are too short, or if the rule lets a
    /// query see a position that a positional store (a ring) no longer holds.</summary>
    public void Check(KvLayout layout, MaskRule rule, int firstQueryPosition, int queryCount)
    {
        if (Count <= 0 || queryCount <= 0) return;
        if (Table is null) throw new ArgumentException("a sequence has keys but no block table");
        if (Ring == 0)
        {
            if ((long)Table.Length * layout.BlockSize < (long)Origin + Count) throw new ArgumentException("a sequence's block table does not cover its keys");
        }
        else if (Table.Length < Ring) throw new ArgumentException("a ring's block table is shorter than the ring");
        if (KeyRope is not null && (KeyRope.HeadDim != layout.HeadDim || KeyRope.MaxPositions < Count))
            throw new ArgumentException("the key rotation table does not cover the entries");
        long perHead = (long)(layout.KvHeads - 1) * Stride + Count;
        if (Scores is not null && (Stride < Count || Scores.Length < perHead)) throw new ArgumentException("the score accumulator does not cover the entries");
        if (Positions is not null)
        {
            if (Stride < Count || Positions.Length < perHead) throw new ArgumentException("the positions do not cover the entries");
            if (Slots is not null && Slots.Length < perHead) throw new ArgumentException("the slots do not cover the entries");
            return;
        }
        long oldestVisible = rule.Window > 0 ? Math.Max(0L, firstQueryPosition - (long)rule.Window) : 0;
        if (oldestVisible < FirstPosition)
            throw new ArgumentException($"the store no longer holds position {oldestVisible}, which the mask makes visible (it starts at {FirstPosition})");
    }
}

/// <summary>One sequence's share of an attention call.</summary>
/// <param name="QueryRow">first row of this sequence's queries in q and output</param>
/// <param name="QueryCount">number of query rows</param>
/// <param name="FirstPosition">text position of the first query row; rows are consecutive positions</param>
/// <param name="View">the entries of the store this sequence's queries read</param>
public readonly record struct AttentionSequence(int QueryRow, int QueryCount, int FirstPosition, KvView View)
{
    /// <summary>Queries against positions 0..keyCount-1 of a linear table.</summary>
    public static AttentionSequence Linear(int queryRow, int queryCount, int firstPosition, int keyCount, int[] table)
        => new(queryRow, queryCount, firstPosition, KvView.Linear(table, keyCount));
}
