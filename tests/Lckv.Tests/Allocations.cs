namespace Lckv.Tests;

/// <summary>Managed bytes a piece of code allocates on the calling thread.</summary>
public static class Allocations
{
    /// <summary>
    /// The fewest bytes any of `attempts` runs of the action allocated. A run can see the runtime's own work on the
    /// thread (a method reaching its tier-up threshold mid-run, under load), which a second run does not repeat; code
    /// that allocates does so on every run, so the least of a few runs still catches it.
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
