using Lckv.Cache;
using Lckv.Numerics;
using static Lckv.Tests.Cache.CacheProbe;

namespace Lckv.Tests.Cache;

/// <summary>Random verbs on a few sequences against a model of what each sequence should hold.</summary>
public class KvCacheRandomTests
{
    [Theory]
    [InlineData(1, 1, DType.F32, 1)]
    [InlineData(2, 2, DType.F16, 2)]
    [InlineData(3, 3, DType.BF16, 3)]
    [InlineData(16, 2, DType.F32, 4)]
    [InlineData(5, 1, DType.BF16, 5)]
    public void RandomVerbsKeepContentsAndCounts(int blockSize, int kvLayers, DType dtype, int seed)
    {
        const int maxLength = 40;
        var layout = new KvLayout(blockSize, KvHeads: 2, HeadDim: 2, dtype);
        // tight enough that reservations fail now and then
        int blocks = kvLayers * (int)KvCache.BlocksFor(maxLength, blockSize) * 2 + 1;
        using var pool = new KvBlockPool(layout, blocks * layout.BlockBytes);
        var cache = new KvCache(pool, kvLayers, maxLength);
        var model = new Dictionary<int, List<int>>();
        var rng = new Random(seed);
        int nextStamp = 1, failures = 0, forks = 0;

        for (int step = 0; step < 1500; step++)
        {
            int verb = rng.Next(100);
            int[] live = [.. model.Keys];
            int seq = live.Length > 0 ? live[rng.Next(live.Length)] : -1;
            if (seq < 0 || verb < 8)
            {
                if (model.Count < 6)
                {
                    int id = cache.CreateSequence();
                    Assert.DoesNotContain(id, model.Keys);
                    Assert.True(id < 6);
                    model[id] = [];
                }
            }
            else if (verb < 65)
            {
                // a step: reserve, write n new tokens (in one call or several), commit
                int n = rng.Next(1, 8);
                int length = model[seq].Count;
                if (length + n > maxLength)
                {
                    Assert.Throws<LckvException>(() => cache.TryReserve(seq, length + n));
                    continue;
                }
                int free = pool.FreeBlocks, needed = cache.BlocksNeeded(seq, length + n);
                var tables = Snapshot(cache, seq);
                if (!cache.TryReserve(seq, length + n))
                {
                    failures++;
                    Assert.True(needed > free);
                    Assert.Equal(free, pool.FreeBlocks);
                    Assert.Equal(tables, Snapshot(cache, seq));
                    Assert.Equal(length, cache.Length(seq));
                }
                else
                {
                    Assert.Equal(free - needed, pool.FreeBlocks);
                    var stamps = Enumerable.Range(nextStamp, n).ToArray();
                    nextStamp += n;
                    if (rng.Next(2) == 0) WriteStamps(cache, seq, length, stamps);
                    else for (int i = 0; i < n; i++) WriteStamps(cache, seq, length + i, stamps.AsSpan(i, 1));
                    cache.SetLength(seq, length + n);
                    model[seq].AddRange(stamps);
                }
            }
            else if (verb < 78)
            {
                if (model.Count < 6)
                {
                    int used = pool.UsedBlocks;
                    int child = cache.Fork(seq);
                    Assert.Equal(used, pool.UsedBlocks);
                    model[child] = [.. model[seq]];
                    forks++;
                }
            }
            else if (verb < 90)
            {
                int length = rng.Next(model[seq].Count + 1);
                cache.Truncate(seq, length);
                model[seq].RemoveRange(length, model[seq].Count - length);
            }
            else if (verb < 98)
            {
                cache.Remove(seq);
                model.Remove(seq);
            }
            else
            {
                cache.Keep(seq);
                foreach (int other in model.Keys.Where(k => k != seq).ToArray()) model.Remove(other);
            }

            Assert.Equal(model.Count, cache.SequenceCount);
            foreach (var (id, stamps) in model)
            {
                Assert.Equal(stamps.Count, cache.Length(id));
                AssertStamps(cache, id, stamps);
            }
            AssertRefCounts(cache, model.Keys);
        }

        Assert.True(forks > 10, $"only {forks} forks");
        Assert.True(failures > 0, "no reservation failed; tighten the pool");
        foreach (int id in model.Keys.ToArray()) cache.Remove(id);
        Assert.Equal(pool.TotalBlocks, pool.FreeBlocks);
        Assert.Equal(0, pool.BytesInUse);
        for (int b = 0; b < pool.TotalBlocks; b++) Assert.Equal(0, pool.RefCount(b));
    }

    static int[][] Snapshot(KvCache cache, int seq)
        => [.. Enumerable.Range(0, cache.KvLayers).Select(l => (int[])cache.BlockTable(seq, l).Clone())];
}
