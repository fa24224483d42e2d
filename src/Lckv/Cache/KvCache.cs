namespace Lckv.Cache;

/// <summary>
/// The KV of many sequences for the KV-computing layers of one model. Each (sequence, kv layer) has a block table;
/// position p of a sequence lives in block table[p / BlockSize], slot p % BlockSize. Verbs on sequence ids in the
/// spirit of llama.cpp: create, reserve, remove, fork (share the prefix), truncate, keep.
/// </summary>
public sealed class KvCache
{
    /// <param name="maxSequenceLength">the longest sequence (sizes the block tables once)</param>
    public KvCache(KvBlockPool pool, int kvLayers, int maxSequenceLength) => throw new NotImplementedException();

    public KvBlockPool Pool => throw new NotImplementedException();
    public int KvLayers => throw new NotImplementedException();
    public int MaxSequenceLength => throw new NotImplementedException();
    /// <summary>2 * kvLayers * kvHeads * headDim * bytes(dtype).</summary>
    public long BytesPerToken => throw new NotImplementedException();
    public int SequenceCount => throw new NotImplementedException();

    public int CreateSequence() => throw new NotImplementedException();
    public bool Contains(int seq) => throw new NotImplementedException();

    /// <summary>Positions written and committed.</summary>
    public int Length(int seq) => throw new NotImplementedException();

    /// <summary>
    /// Makes positions [0, length) writable for every KV layer: allocates missing blocks and copies any shared block
    /// that positions [Length, length) fall in (copy on write). All or nothing: false leaves the cache unchanged.
    /// Throws LckvException when length exceeds MaxSequenceLength.
    /// </summary>
    public bool TryReserve(int seq, int length) => throw new NotImplementedException();

    /// <summary>Writes rows of K and V ([count, KvHeads*HeadDim] each, f32) at positions start.. of one KV layer,
    /// converting to the storage dtype. The positions must be reserved.</summary>
    public void Write(int seq, int kvLayer, int start, ReadOnlySpan<float> k, ReadOnlySpan<float> v) => throw new NotImplementedException();

    /// <summary>Sets the committed length (after a step wrote positions up to it); must be within the reservation.</summary>
    public void SetLength(int seq, int length) => throw new NotImplementedException();

    public int[] BlockTable(int seq, int kvLayer) => throw new NotImplementedException();

    /// <summary>Frees every block of the sequence and forgets it.</summary>
    public void Remove(int seq) => throw new NotImplementedException();

    /// <summary>A new sequence sharing all of seq's blocks (ref-counted); writes after the fork copy on write.</summary>
    public int Fork(int seq) => throw new NotImplementedException();

    /// <summary>Drops positions >= length, releasing blocks no longer needed.</summary>
    public void Truncate(int seq, int length) => throw new NotImplementedException();

    /// <summary>Removes every sequence but seq.</summary>
    public void Keep(int seq) => throw new NotImplementedException();
}
