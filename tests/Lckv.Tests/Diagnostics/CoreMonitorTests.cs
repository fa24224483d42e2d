using Lckv.Diagnostics;
using Lckv.Numerics;
using Lckv.Tests.Numerics;

namespace Lckv.Tests.Diagnostics;

[Trait("Category", "Kernels")]
public class CoreMonitorTests
{
    [Fact]
    public void CallsRunOnTheCoresOtherProcessesLeave()
    {
        var monitor = new CoreMonitor(null, cores: 2);
        var pool = new WorkerPool(2, monitor);
        // one sample of another runnable thread is not enough to take a thread away ...
        Assert.Equal(int.MaxValue, monitor.Record(running: 3, awakeWorkers: 1));
        for (int i = 1; i < CoreMonitor.Window; i++) monitor.Record(running: 3, awakeWorkers: 1);
        // ... a window of them is: one core is left, and every call runs on its caller alone
        Assert.Equal(1, monitor.Record(running: 2, awakeWorkers: 0));
        for (int rep = 0; rep < 20; rep++)
        {
            var (hits, threads) = WorkerPoolTests.RunRecorded(pool, 257);
            Assert.All(hits, v => Assert.Equal(1, v));
            Assert.All(threads, t => Assert.Equal(Environment.CurrentManagedThreadId, t));
        }
        Assert.Equal(CoreMonitor.Window + 1, monitor.Samples);
        Assert.Equal(2, monitor.Contended);
        // the first sample that finds the cores free gives the threads back
        Assert.Equal(int.MaxValue, monitor.Record(running: 2, awakeWorkers: 1));
        Assert.All(WorkerPoolTests.RunRecorded(pool, 257).Hits, v => Assert.Equal(1, v));
        // on a bigger machine, as many threads as other processes leave cores
        var eight = new CoreMonitor(null, cores: 8);
        for (int i = 0; i < CoreMonitor.Window; i++) eight.Record(running: 1 + 3 + 2, awakeWorkers: 3);
        Assert.Equal(6, eight.Record(running: 1 + 3 + 2, awakeWorkers: 3));
    }

    [Theory]
    [InlineData("12 (dotnet) R 1 12 12 0 -1", (byte)'R')]
    [InlineData("13 (a) b) c) S 1 13", (byte)'S')]
    [InlineData("14 (x", (byte)0)]
    public void ReadsAThreadsState(string stat, byte state) => Assert.Equal(state, CoreMonitor.StateOf(System.Text.Encoding.ASCII.GetBytes(stat)));

    [Fact]
    public void CountsThisProcesssRunnableThreads()
    {
        if (!OperatingSystem.IsLinux() || !Directory.Exists("/proc/self/task")) return;
        using var loadavg = File.OpenHandle("/proc/loadavg");
        var monitor = new CoreMonitor(loadavg, Environment.ProcessorCount, ownThreads: true);
        // the calling thread is running while it reads its own state
        Assert.True(monitor.OwnRunnable() >= 1);
    }

    [Theory]
    [InlineData("0.90 1.08 1.28 2/79 2275\n", 2)]
    [InlineData("12.50 8.00 4.00 17/1345 99\n", 17)]
    [InlineData("0.90 1.08 1.28 /79 2275", -1)]
    [InlineData("garbage", -1)]
    [InlineData("", -1)]
    public void ParsesTheRunnableCount(string line, int expected)
    {
        Assert.Equal(expected, CoreMonitor.ParseRunnable(System.Text.Encoding.ASCII.GetBytes(line)));
    }

    [Theory]
    [InlineData("0-1\n", 2)]
    [InlineData("0", 1)]
    [InlineData("0-3,6,8-9", 7)]
    [InlineData("", -1)]
    [InlineData("3-1", -1)]
    [InlineData("a-b", -1)]
    public void CountsTheOnlineCpus(string list, int expected)
    {
        Assert.Equal(expected, CoreMonitor.CountCpuList(list));
    }
}
