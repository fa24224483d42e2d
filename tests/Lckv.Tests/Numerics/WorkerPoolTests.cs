using Lckv.Numerics;

namespace Lckv.Tests.Numerics;

[Trait("Category", "Kernels")]
public class WorkerPoolTests
{
    private unsafe struct Mark : IRangeBody
    {
        public int* Hits;
        public int* Threads; // null, or where each item records the thread that ran it

        public readonly void Invoke(int start, int end)
        {
            for (int i = start; i < end; i++)
            {
                Interlocked.Increment(ref Hits[i]);
                if (Threads != null) Threads[i] = Environment.CurrentManagedThreadId;
            }
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

    internal static unsafe (int[] Hits, int[] Threads) RunRecorded(WorkerPool pool, int count)
    {
        var hits = new int[count];
        var threads = new int[count];
        fixed (int* h = hits, t = threads) pool.Run(count, new Mark { Hits = h, Threads = t });
        return (hits, threads);
    }

    [Fact]
    public async Task ACallDoesNotWaitForWorkersThatHaveNotStarted()
    {
        var pool = new WorkerPool(3, null);
        using var release = new ManualResetEventSlim(false);
        pool.WorkerClaimHook = () => release.Wait(); // the workers are posted but never get to claim
        try
        {
            var run = Task.Run(() => RunRecorded(pool, 90));
            var first = await Task.WhenAny(run, Task.Delay(TimeSpan.FromSeconds(30)));
            Assert.True(first == run, "the call waited for workers that never claimed their chunks");
            var (hits, threads) = await run;
            Assert.All(hits, v => Assert.Equal(1, v));
            Assert.Single(threads.Distinct()); // the caller ran all three chunks
        }
        finally
        {
            release.Set();
            pool.WorkerClaimHook = null;
        }
        // the late workers find nothing of the finished call to run, and the pool goes on working
        for (int rep = 0; rep < 20; rep++) Assert.All(RunRecorded(pool, 301).Hits, v => Assert.Equal(1, v));
    }
}
