using Lckv.Cache;
using Lckv.Numerics;
using static Lckv.Tests.Cache.CacheProbe;

namespace Lckv.Tests.Cache;

public class KvCacheTests
{
    static (KvBlockPool Pool, KvCache Cache) Make(int blockSize, int blocks, int kvLayers = 2, int maxLength = 64,
        DType dtype = DType.F32, int kvHeads = 2, int headDim = 3)
    {
        var layout = new KvLayout(blockSize, kvHeads, headDim, dtype);
        var pool = new KvBlockPool(layout, blocks * layout.BlockBytes);
        return (pool, new KvCache(pool, kvLayers, maxLength));
    }

    static int[] Range(int start, int count) => Enumerable.Range(start, count).ToArray();

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(16)]
    public void WriteAcrossBlocksReadsBackThroughTheLayout(int blockSize)
    {
        var (pool, cache) = Make(blockSize, blocks: 2 * 40);
        using var _ = pool;
        int seq = cache.CreateSequence();
        Assert.True(cache.TryReserve(seq, 1));
        WriteStamps(cache, seq, 0, [0]);
        cache.SetLength(seq, 1);
        Assert.True(cache.TryReserve(seq, 20));
        WriteStamps(cache, seq, 1, Range(1, 19)); // one call crossing several blocks
        cache.SetLength(seq, 20);
        Assert.True(cache.TryReserve(seq, 27));
        for (int p = 20; p < 27; p++) WriteStamps(cache, seq, p, [p]); // token by token
        cache.SetLength(seq, 27);
        AssertStamps(cache, seq, Range(0, 27));
        Assert.Equal(KvCache.BlocksFor(27, blockSize), cache.BlockCount(seq));
        Assert.Equal(2 * KvCache.BlocksFor(27, blockSize), pool.UsedBlocks);
        AssertRefCounts(cache, [seq]);

        var k = new float[27 * 6];
        var v = new float[27 * 6];
        cache.Read(seq, 1, 0, k, v);
        var (ek, ev) = Rows(cache.Layout, 1, Range(0, 27));
        Assert.Equal(ek, k);
        Assert.Equal(ev, v);

        cache.Remove(seq);
        Assert.Equal(pool.TotalBlocks, pool.FreeBlocks);
    }

    [Fact]
    public void BlockTablesAreSizedOnceAndKeptAcrossSteps()
    {
        var (pool, cache) = Make(blockSize: 3, blocks: 100, maxLength: 31);
        using var _ = pool;
        Assert.Equal(11, cache.TableCapacity);
        int seq = cache.CreateSequence();
        var t0 = cache.BlockTable(seq, 0);
        var t1 = cache.BlockTable(seq, 1);
        Assert.NotSame(t0, t1);
        for (int n = 1; n <= 31; n++)
        {
            Assert.True(cache.TryReserve(seq, n));
            WriteStamps(cache, seq, n - 1, [n - 1]);
            cache.SetLength(seq, n);
            Assert.Same(t0, cache.BlockTable(seq, 0));
            Assert.Same(t1, cache.BlockTable(seq, 1));
        }
        Assert.Equal(11, t0.Length);
        AssertStamps(cache, seq, Range(0, 31));
    }

    [Fact]
    public void ReservingPastTheContextThrows()
    {
        var (pool, cache) = Make(blockSize: 4, blocks: 100, maxLength: 10);
        using var _ = pool;
        int seq = cache.CreateSequence();
        Assert.True(cache.TryReserve(seq, 10));
        var e = Assert.Throws<LckvException>(() => cache.TryReserve(seq, 11));
        Assert.Equal("sequence of 11 tokens exceeds the context of 10", e.Message);
    }

    [Fact]
    public void FailedReservationChangesNothing()
    {
        // 2 layers, block size 2, 7 blocks: a sequence of 6 takes 6 blocks; one more block left.
        var (pool, cache) = Make(blockSize: 2, blocks: 7);
        using var _ = pool;
        int a = cache.CreateSequence();
        Assert.True(cache.TryReserve(a, 6));
        WriteStamps(cache, a, 0, Range(0, 6));
        cache.SetLength(a, 6);
        Assert.Equal(1, pool.FreeBlocks);
        var before = (int[])cache.BlockTable(a, 0).Clone();

        Assert.Equal(2, cache.BlocksNeeded(a, 7));
        Assert.False(cache.TryReserve(a, 7)); // needs one block per layer
        Assert.Equal(1, pool.FreeBlocks);
        Assert.Equal(6, cache.Length(a));
        Assert.Equal(6, cache.ReservedLength(a));
        Assert.Equal(3, cache.BlockCount(a));
        Assert.Equal(before, cache.BlockTable(a, 0));

        // copy on write that cannot be paid for: fork at 5, both share the half-full last block
        cache.Truncate(a, 5);
        Assert.Equal(1, pool.FreeBlocks);
        int b = cache.Fork(a);
        Assert.Equal(2, cache.BlocksNeeded(b, 6));
        Assert.False(cache.TryReserve(b, 6));
        Assert.Equal(1, pool.FreeBlocks);
        Assert.Equal(2, pool.RefCount(cache.BlockTable(a, 0)[2]));
        AssertStamps(cache, a, Range(0, 5));
        AssertStamps(cache, b, Range(0, 5));
        AssertRefCounts(cache, [a, b]);

        Assert.Equal(0, cache.BlocksNeeded(b, 4));
        Assert.True(cache.TryReserve(b, 4)); // nothing to do below the length
    }

    [Fact]
    public void ForkSharesBlocksAndCopyOnWriteKeepsTheParentIntact()
    {
        var (pool, cache) = Make(blockSize: 4, blocks: 40);
        using var _ = pool;
        int parent = cache.CreateSequence();
        Assert.True(cache.TryReserve(parent, 10));
        WriteStamps(cache, parent, 0, Range(0, 10));
        cache.SetLength(parent, 10);
        Assert.Equal(6, pool.UsedBlocks);

        int child = cache.Fork(parent);
        Assert.Equal(10, cache.Length(child));
        Assert.Equal(6, pool.UsedBlocks); // nothing copied
        for (int l = 0; l < 2; l++)
            for (int b = 0; b < 3; b++)
            {
                Assert.Equal(cache.BlockTable(parent, l)[b], cache.BlockTable(child, l)[b]);
                Assert.Equal(2, pool.RefCount(cache.BlockTable(parent, l)[b]));
            }
        AssertStamps(cache, child, Range(0, 10));

        // writing into a shared block without reserving is refused
        Assert.Throws<ArgumentOutOfRangeException>(() => WriteStamps(cache, child, 10, [99]));

        // the child continues: positions 10..13 touch the shared third block (copied) and a new fourth one
        Assert.True(cache.TryReserve(child, 14));
        Assert.Equal(6 + 2 + 2, pool.UsedBlocks);
        WriteStamps(cache, child, 10, [100, 101, 102, 103]);
        cache.SetLength(child, 14);
        for (int l = 0; l < 2; l++)
        {
            Assert.Equal(cache.BlockTable(parent, l)[0], cache.BlockTable(child, l)[0]);
            Assert.Equal(cache.BlockTable(parent, l)[1], cache.BlockTable(child, l)[1]);
            Assert.NotEqual(cache.BlockTable(parent, l)[2], cache.BlockTable(child, l)[2]);
            Assert.Equal(1, pool.RefCount(cache.BlockTable(parent, l)[2]));
        }
        AssertStamps(cache, parent, Range(0, 10));
        AssertStamps(cache, child, [.. Range(0, 10), 100, 101, 102, 103]);

        // the parent continues too and writes over what would have been the child's slots
        Assert.True(cache.TryReserve(parent, 12));
        WriteStamps(cache, parent, 10, [200, 201]);
        cache.SetLength(parent, 12);
        AssertStamps(cache, parent, [.. Range(0, 10), 200, 201]);
        AssertStamps(cache, child, [.. Range(0, 10), 100, 101, 102, 103]);
        AssertRefCounts(cache, [parent, child]);

        cache.Remove(parent);
        AssertStamps(cache, child, [.. Range(0, 10), 100, 101, 102, 103]);
        AssertRefCounts(cache, [child]);
        cache.Remove(child);
        Assert.Equal(pool.TotalBlocks, pool.FreeBlocks);
    }

    [Fact]
    public void ForkOnABlockBoundaryCopiesNothing()
    {
        var (pool, cache) = Make(blockSize: 4, blocks: 40);
        using var _ = pool;
        int parent = cache.CreateSequence();
        Assert.True(cache.TryReserve(parent, 8));
        WriteStamps(cache, parent, 0, Range(0, 8));
        cache.SetLength(parent, 8);
        int child = cache.Fork(parent);
        Assert.Equal(2, cache.BlocksNeeded(child, 9)); // one new block per layer, no copy
        Assert.True(cache.TryReserve(child, 9));
        Assert.Equal(4 + 2, pool.UsedBlocks);
        AssertRefCounts(cache, [parent, child]);
    }

    [Fact]
    public void ForkSharesOnlyTheCommittedPrefix()
    {
        var (pool, cache) = Make(blockSize: 2, blocks: 40);
        using var _ = pool;
        int parent = cache.CreateSequence();
        Assert.True(cache.TryReserve(parent, 9));
        WriteStamps(cache, parent, 0, Range(0, 5));
        cache.SetLength(parent, 5);
        int child = cache.Fork(parent);
        Assert.Equal(3, cache.BlockCount(child));
        Assert.Equal(5, cache.ReservedLength(child));
        Assert.Equal(5, cache.ReservedLength(parent));
        Assert.Equal(5, cache.BlockCount(parent)); // keeps its own spare blocks
        Assert.Throws<ArgumentOutOfRangeException>(() => WriteStamps(cache, parent, 5, [5]));
        Assert.Equal(10, pool.UsedBlocks); // 5 blocks per layer, the first 3 shared
        Assert.Equal(2, cache.BlocksNeeded(parent, 9)); // only the shared half-full block is copied
        Assert.True(cache.TryReserve(parent, 9));
        Assert.Equal(12, pool.UsedBlocks);
        AssertRefCounts(cache, [parent, child]);
        WriteStamps(cache, parent, 5, Range(5, 4));
        cache.SetLength(parent, 9);
        AssertStamps(cache, parent, Range(0, 9));
        AssertStamps(cache, child, Range(0, 5));
    }

    [Fact]
    public void TruncateReleasesTrailingBlocks()
    {
        var (pool, cache) = Make(blockSize: 3, blocks: 40);
        using var _ = pool;
        int seq = cache.CreateSequence();
        Assert.True(cache.TryReserve(seq, 10));
        WriteStamps(cache, seq, 0, Range(0, 10));
        cache.SetLength(seq, 10);
        Assert.Equal(8, pool.UsedBlocks);
        cache.Truncate(seq, 7);
        Assert.Equal(7, cache.Length(seq));
        Assert.Equal(6, pool.UsedBlocks);
        AssertStamps(cache, seq, Range(0, 7));
        cache.Truncate(seq, 6);
        Assert.Equal(4, pool.UsedBlocks);
        Assert.Equal(-1, cache.BlockTable(seq, 0)[2]);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Truncate(seq, 7));
        Assert.True(cache.TryReserve(seq, 8));
        WriteStamps(cache, seq, 6, [60, 61]);
        cache.SetLength(seq, 8);
        AssertStamps(cache, seq, [.. Range(0, 6), 60, 61]);
        cache.Truncate(seq, 0);
        Assert.Equal(0, pool.UsedBlocks);
        AssertRefCounts(cache, [seq]);
    }

    [Fact]
    public void TruncateInsideASharedBlockThenGrowCopiesOnlyTheValidSlots()
    {
        var (pool, cache) = Make(blockSize: 4, blocks: 40);
        using var _ = pool;
        int parent = cache.CreateSequence();
        Assert.True(cache.TryReserve(parent, 8));
        WriteStamps(cache, parent, 0, Range(0, 8));
        cache.SetLength(parent, 8);
        int child = cache.Fork(parent);
        cache.Truncate(child, 5);
        Assert.True(cache.TryReserve(child, 7));
        WriteStamps(cache, child, 5, [50, 51]);
        cache.SetLength(child, 7);
        AssertStamps(cache, parent, Range(0, 8));
        AssertStamps(cache, child, [.. Range(0, 5), 50, 51]);
        AssertRefCounts(cache, [parent, child]);
    }

    [Fact]
    public void KeepRemovesEveryOtherSequence()
    {
        var (pool, cache) = Make(blockSize: 2, blocks: 40);
        using var _ = pool;
        int a = cache.CreateSequence();
        Assert.True(cache.TryReserve(a, 3));
        WriteStamps(cache, a, 0, Range(0, 3));
        cache.SetLength(a, 3);
        int b = cache.Fork(a);
        int c = cache.CreateSequence();
        Assert.True(cache.TryReserve(c, 5));
        Assert.Equal(3, cache.SequenceCount);
        cache.Keep(b);
        Assert.Equal(1, cache.SequenceCount);
        Assert.False(cache.Contains(a));
        Assert.False(cache.Contains(c));
        Assert.True(cache.Contains(b));
        AssertStamps(cache, b, Range(0, 3));
        AssertRefCounts(cache, [b]);
        Assert.Equal(4, pool.UsedBlocks);
        cache.Remove(b);
        Assert.Equal(pool.TotalBlocks, pool.FreeBlocks);
    }

    [Fact]
    public void SequenceIdsAreSmallAndReused()
    {
        var (pool, cache) = Make(blockSize: 2, blocks: 10);
        using var _ = pool;
        Assert.Equal(0, cache.CreateSequence());
        Assert.Equal(1, cache.CreateSequence());
        Assert.Equal(2, cache.CreateSequence());
        cache.Remove(1);
        Assert.False(cache.Contains(1));
        Assert.Throws<ArgumentException>(() => cache.Length(1));
        Assert.Throws<ArgumentException>(() => cache.Remove(1)); // no double remove
        Assert.Equal(1, cache.CreateSequence());
        Assert.Equal(0, cache.Length(1));
        Assert.Equal(3, cache.CreateSequence());
        Assert.Equal(4, cache.SequenceCount);
    }

    [Fact]
    public void WritesOutsideTheReservationAndMisshapenRowsThrow()
    {
        var (pool, cache) = Make(blockSize: 2, blocks: 10);
        using var _ = pool;
        int seq = cache.CreateSequence();
        Assert.True(cache.TryReserve(seq, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => WriteStamps(cache, seq, 2, [1, 2]));
        Assert.Throws<ArgumentOutOfRangeException>(() => WriteStamps(cache, seq, -1, [1]));
        Assert.Throws<ArgumentException>(() => cache.Write(seq, 0, 0, new float[5], new float[5]));
        Assert.Throws<ArgumentException>(() => cache.Write(seq, 0, 0, new float[6], new float[12]));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Write(seq, 2, 0, new float[6], new float[6]));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.SetLength(seq, 4));
    }

    [Fact]
    public void Accounting()
    {
        var layout = new KvLayout(16, 8, 128, DType.BF16);
        using var pool = new KvBlockPool(layout, 100 * layout.BlockBytes);
        var cache = new KvCache(pool, kvLayers: 3, maxSequenceLength: 1000);
        Assert.Equal(2L * 3 * 8 * 128 * 2, cache.BytesPerToken);
        Assert.Equal(cache.BytesPerToken, KvCache.BytesPerTokenFor(3, 8, 128, DType.BF16));
        Assert.Equal(0, KvCache.BlocksFor(0, 16));
        Assert.Equal(1, KvCache.BlocksFor(1, 16));
        Assert.Equal(1, KvCache.BlocksFor(16, 16));
        Assert.Equal(2, KvCache.BlocksFor(17, 16));
        // whole blocks: a block of 16 tokens in 3 layers is exactly 16 tokens' worth of BytesPerToken
        Assert.Equal(3 * layout.BlockBytes, 16 * cache.BytesPerToken);
        Assert.Equal(2 * 3 * layout.BlockBytes, cache.BytesFor(17));

        int a = cache.CreateSequence();
        Assert.True(cache.TryReserve(a, 17));
        cache.SetLength(a, 17);
        int b = cache.Fork(a);
        var report = cache.Memory;
        Assert.Equal(2, report.Sequences);
        Assert.Equal(34, report.Tokens);
        Assert.Equal(6, report.UsedBlocks);
        Assert.Equal(pool.BytesInUse, report.BytesInUse);
        Assert.Equal(pool.UsedBlocks * layout.BlockBytes, pool.BytesInUse);
        Assert.Equal(cache.BytesFor(17), pool.BytesInUse);
        Assert.Contains("bytes/token", report.ToString());
        cache.Remove(a);
        cache.Remove(b);
        Assert.Equal(0, cache.Memory.BytesInUse);
    }

    [Theory]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    [InlineData(DType.F32)]
    public void HalfPrecisionRoundTrip(DType dtype)
    {
        var (pool, cache) = Make(blockSize: 3, blocks: 20, kvLayers: 1, dtype: dtype, kvHeads: 2, headDim: 5);
        using var _ = pool;
        int seq = cache.CreateSequence();
        Assert.True(cache.TryReserve(seq, 7));
        var rng = new Random(7);
        var k = new float[7 * 10];
        var v = new float[7 * 10];
        for (int i = 0; i < k.Length; i++)
        {
            k[i] = (float)(rng.NextDouble() * 20 - 10);
            v[i] = (float)(rng.NextDouble() * 2e-3 - 1e-3);
        }
        cache.Write(seq, 0, 0, k, v);
        cache.SetLength(seq, 7);
        for (int p = 0; p < 7; p++)
        {
            var rk = ReadThroughLayout(cache, seq, 0, p, false);
            var rv = ReadThroughLayout(cache, seq, 0, p, true);
            for (int i = 0; i < 10; i++)
            {
                Assert.Equal(RoundTrip(k[p * 10 + i], dtype), rk[i]);
                Assert.Equal(RoundTrip(v[p * 10 + i], dtype), rv[i]);
                float tolerance = dtype switch { DType.F16 => 1f / 1024, DType.BF16 => 1f / 128, _ => 0 };
                Assert.True(MathF.Abs(rk[i] - k[p * 10 + i]) <= tolerance * MathF.Abs(k[p * 10 + i]) + 1e-7f);
            }
        }
    }

    static float RoundTrip(float x, DType dtype) => dtype switch
    {
        DType.F16 => (float)(Half)x,
        DType.BF16 => DTypes.BF16ToSingle(DTypes.SingleToBF16(x)),
        _ => x,
    };

    [Fact]
    public void InvalidConstructionIsRejected()
    {
        var (pool, _) = Make(blockSize: 2, blocks: 4);
        using var p = pool;
        Assert.Throws<LckvException>(() => new KvCache(pool, 0, 10));
        Assert.Throws<LckvException>(() => new KvCache(pool, 1, 0));
    }
}
