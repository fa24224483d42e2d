using Lckv.Numerics;

namespace Lckv.Tests.Numerics;

[Trait("Category", "Kernels")]
public class WorkerPoolTests
{
    private unsafe struct Mark : IRangeBody
    {
        public int* Hits;

        public readonly void Invoke(int start, int end)
        {
            for (int i = start; i < end; i++) Interlocked.Increment(ref Hits[i]);
        }
    }

    private struct Throw : IRangeBody
    {
        public readonly void Invoke(int start, int end) => throw new InvalidOperationException("boom");
    }

    [Fact]
    public unsafe void EveryItemRunsExactlyOnce()
    {
        var pool = new WorkerPool(3);
        foreach (int count in new[] { 1, 2, 3, 7, 64, 1001 })
            foreach (int grain in new[] { 1, 4, 16, 5000 })
            {
                var hits = new int[count];
                fixed (int* h = hits)
                    for (int rep = 0; rep < 20; rep++) pool.Run(count, new Mark { Hits = h }, grain);
                Assert.All(hits, v => Assert.Equal(20, v));
            }
    }

    [Fact]
    public void ThreadCountCanChangeAndErrorsReachTheCaller()
    {
        var pool = new WorkerPool(1);
        pool.ThreadCount = 4;
        Assert.Equal(4, pool.ThreadCount);
        Assert.Equal(4, pool.PartsFor(100));
        Assert.Equal(2, pool.PartsFor(100, 50));
        Assert.ThrowsAny<Exception>(() => pool.Run(8, new Throw()));
        pool.ThreadCount = 2;
        Assert.Equal(2, pool.PartsFor(100));
    }

    [Fact]
    public unsafe void ConcurrentCallersDoNotInterfere()
    {
        var pool = new WorkerPool(2);
        var results = new int[4][];
        Parallel.For(0, 4, t =>
        {
            var hits = new int[500];
            fixed (int* h = hits)
                for (int rep = 0; rep < 50; rep++) pool.Run(500, new Mark { Hits = h }, 8);
            results[t] = hits;
        });
        foreach (var r in results) Assert.All(r, v => Assert.Equal(50, v));
    }
}
