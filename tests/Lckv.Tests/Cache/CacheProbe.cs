using Lckv.Cache;
using Lckv.Numerics;

namespace Lckv.Tests.Cache;

/// <summary>Test helpers: rows stamped with exact small integers, read back through block tables and the layout
/// (the way the attention kernel reads), independently of KvCache.Read.</summary>
static class CacheProbe
{
    /// <summary>Element i of the K (or V) row stamped <paramref name="stamp"/> in a KV layer; an integer in
    /// [-125, 125], exact in f32, f16 and bf16.</summary>
    public static float Value(int stamp, int layer, int i, bool isV)
        => (int)(((uint)stamp * 31u + (uint)layer * 17u + (uint)i * 7u + (isV ? 101u : 0u)) % 251u) - 125;

    public static (float[] K, float[] V) Rows(KvLayout layout, int layer, ReadOnlySpan<int> stamps)
    {
        int row = layout.RowElements;
        var k = new float[stamps.Length * row];
        var v = new float[stamps.Length * row];
        for (int r = 0; r < stamps.Length; r++)
            for (int i = 0; i < row; i++)
            {
                k[r * row + i] = Value(stamps[r], layer, i, false);
                v[r * row + i] = Value(stamps[r], layer, i, true);
            }
        return (k, v);
    }

    /// <summary>Writes the stamped rows at positions start.. of every KV layer.</summary>
    public static void WriteStamps(KvCache cache, int seq, int start, ReadOnlySpan<int> stamps)
    {
        for (int l = 0; l < cache.KvLayers; l++)
        {
            var (k, v) = Rows(cache.Layout, l, stamps);
            cache.Write(seq, l, start, k, v);
        }
    }

    /// <summary>K or V row of one position, located by BlockTable[p / BlockSize], slot p % BlockSize.</summary>
    public static float[] ReadThroughLayout(KvCache cache, int seq, int layer, int position, bool isV)
    {
        var layout = cache.Layout;
        int block = cache.BlockTable(seq, layer)[position / layout.BlockSize];
        Assert.InRange(block, 0, cache.Pool.TotalBlocks - 1);
        int es = DTypes.SizeOf(layout.DType);
        nint at = cache.Pool.Base + (nint)(block * layout.BlockBytes) + (isV ? (nint)layout.HalfBytes : 0)
            + (nint)((long)(position % layout.BlockSize) * layout.RowElements * es);
        var row = new float[layout.RowElements];
        Lckv.Numerics.Convert.Widen(at, layout.DType, row);
        return row;
    }

    /// <summary>Asserts that positions [0, stamps.Length) of seq hold the stamped rows in every layer.</summary>
    public static void AssertStamps(KvCache cache, int seq, IReadOnlyList<int> stamps)
    {
        for (int l = 0; l < cache.KvLayers; l++)
            for (int p = 0; p < stamps.Count; p++)
            {
                var k = ReadThroughLayout(cache, seq, l, p, false);
                var v = ReadThroughLayout(cache, seq, l, p, true);
                for (int i = 0; i < k.Length; i++)
                {
                    if (k[i] != Value(stamps[p], l, i, false) || v[i] != Value(stamps[p], l, i, true))
                        Assert.Fail($"sequence {seq} layer {l} position {p} element {i}: K {k[i]} V {v[i]}, " +
                            $"expected stamp {stamps[p]} (K {Value(stamps[p], l, i, false)} V {Value(stamps[p], l, i, true)})");
                }
            }
    }

    /// <summary>Every block's reference count equals the number of block-table entries naming it; the pool's free
    /// count equals the blocks nobody names; entries past a sequence's blocks are -1.</summary>
    public static void AssertRefCounts(KvCache cache, IEnumerable<int> liveSequences)
    {
        var refs = new Dictionary<int, int>();
        foreach (int seq in liveSequences)
        {
            int blocks = cache.BlockCount(seq);
            Assert.True(KvCache.BlocksFor(cache.ReservedLength(seq), cache.Layout.BlockSize) <= blocks);
            for (int l = 0; l < cache.KvLayers; l++)
            {
                var table = cache.BlockTable(seq, l);
                Assert.Equal(cache.TableCapacity, table.Length);
                for (int b = 0; b < table.Length; b++)
                {
                    if (b < blocks) refs[table[b]] = refs.GetValueOrDefault(table[b]) + 1;
                    else Assert.Equal(-1, table[b]);
                }
            }
        }
        var pool = cache.Pool;
        for (int b = 0; b < pool.TotalBlocks; b++)
            Assert.True(refs.GetValueOrDefault(b) == pool.RefCount(b),
                $"block {b}: ref count {pool.RefCount(b)}, named {refs.GetValueOrDefault(b)} times");
        Assert.Equal(refs.Count, pool.UsedBlocks);
        Assert.Equal(pool.UsedBlocks * pool.Layout.BlockBytes, pool.BytesInUse);
    }
}
