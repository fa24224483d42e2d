namespace Lckv.Tests;

/// <summary>Managed bytes a piece of code allocates on the calling thread.</summary>
public static class Allocations
{
    /// <summary>
    /// The fewest bytes any of `attempts` runs of the action allocated. A single run under load occasionally counted
    /// bytes the code under test does not allocate (most likely the runtime's own work on the thread, such as a tier-up
    /// mid-run), which the next run did not repeat; code that allocates does so on every run, so the least of a few
    /// runs still catches it.
    /// </summary>
    public static long Least(Action action, int attempts = 3)
    {
        long least = long.MaxValue;
        for (int i = 0; i < attempts && least > 0; i++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            action();
            least = Math.Min(least, GC.GetAllocatedBytesForCurrentThread() - before);
        }
        return least;
    }
}
