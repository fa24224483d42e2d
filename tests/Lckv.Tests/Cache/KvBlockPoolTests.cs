using Lckv.Cache;
using Lckv.Numerics;

namespace Lckv.Tests.Cache;

public class KvBlockPoolTests
{
    static readonly KvLayout _small = new(BlockSize: 2, KvHeads: 2, HeadDim: 4, DType.F32); // 2*2*2*4*4 = 128 bytes

    [Fact]
    public void BlockCountIsTheBudgetInWholeBlocks()
    {
        Assert.Equal(128, _small.BlockBytes);
        using var pool = new KvBlockPool(_small, 128 * 5 + 127);
        Assert.Equal(5, pool.TotalBlocks);
        Assert.Equal(5, pool.FreeBlocks);
        Assert.Equal(0, pool.UsedBlocks);
        Assert.Equal(5 * 128, pool.CapacityBytes);
        Assert.Equal(0, pool.Base % KvBlockPool.Alignment);
    }

    [Fact]
    public void BudgetSmallerThanOneBlockIsRejected()
    {
        var e = Assert.Throws<LckvException>(() => new KvBlockPool(_small, 127));
        Assert.Contains("smaller than one block", e.Message);
        Assert.Throws<LckvException>(() => new KvBlockPool(_small, 0));
    }

    [Fact]
    public void UnsupportedDTypeAndBadGeometryAreRejected()
    {
        Assert.Throws<LckvException>(() => new KvBlockPool(_small with { DType = DType.I32 }, 1 << 20));
        Assert.Throws<LckvException>(() => new KvBlockPool(_small with { BlockSize = 0 }, 1 << 20));
    }

    [Fact]
    public void AllocateUntilEmptyThenFail()
    {
        using var pool = new KvBlockPool(_small, 128 * 3);
        var seen = new HashSet<int>();
        for (int i = 0; i < 3; i++)
        {
            Assert.True(pool.TryAllocate(out int b));
            Assert.True(seen.Add(b));
            Assert.Equal(1, pool.RefCount(b));
        }
        Assert.False(pool.TryAllocate(out int none));
        Assert.Equal(-1, none);
        Assert.Equal(0, pool.FreeBlocks);
        Assert.Equal(3 * 128, pool.BytesInUse);
        foreach (int b in seen) pool.Release(b);
        Assert.Equal(3, pool.FreeBlocks);
        Assert.Equal(0, pool.BytesInUse);
    }

    [Fact]
    public void RefCountsAndDoubleFree()
    {
        using var pool = new KvBlockPool(_small, 128 * 2);
        Assert.True(pool.TryAllocate(out int b));
        pool.Retain(b);
        pool.Retain(b);
        Assert.Equal(3, pool.RefCount(b));
        pool.Release(b);
        pool.Release(b);
        Assert.Equal(1, pool.FreeBlocks);
        pool.Release(b);
        Assert.Equal(2, pool.FreeBlocks);
        Assert.Equal(0, pool.RefCount(b));
        Assert.Throws<InvalidOperationException>(() => pool.Release(b));
        Assert.Throws<InvalidOperationException>(() => pool.Retain(b));
        Assert.Equal(2, pool.FreeBlocks);
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Release(2));
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Release(-1));
    }

    [Fact]
    public void FreedBlocksAreReusedLastInFirstOut()
    {
        using var pool = new KvBlockPool(_small, 128 * 4);
        Assert.True(pool.TryAllocate(out int a));
        Assert.True(pool.TryAllocate(out int b));
        pool.Release(a);
        Assert.True(pool.TryAllocate(out int c));
        Assert.Equal(a, c);
        Assert.NotEqual(b, c);
    }

    [Fact]
    public void BlockPointersFollowTheLayout()
    {
        using var pool = new KvBlockPool(_small, 128 * 4);
        for (int i = 0; i < 4; i++) Assert.Equal(pool.Base + i * 128, pool.BlockPointer(i));
    }

    [Fact]
    public void DisposeIsIdempotent()
    {
        var pool = new KvBlockPool(_small, 128 * 4);
        pool.Dispose();
        pool.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pool.Base);
    }

    [Fact]
    public void LargeBudgetIsReservedLazily()
    {
        // 1 GiB of address space; nothing is touched, so this costs no resident memory.
        var layout = new KvLayout(16, 8, 128, DType.F16);
        using var pool = new KvBlockPool(layout, 1L << 30);
        Assert.Equal((int)((1L << 30) / layout.BlockBytes), pool.TotalBlocks);
    }
}
