namespace Lckv.Diagnostics;

/// <summary>
/// Linux: CPU time the hypervisor gave to other guests while this machine's virtual CPUs wanted to run ("steal" in
/// /proc/stat), summed over all CPUs. A virtual machine's host can take a whole core away for many of the program's
/// steps at a time; a benchmark repetition that holds such a stall is slower for a reason that is not the program's.
/// The kernel counts steal in ticks of 10 ms (USER_HZ is 100 on every architecture .NET runs Linux on).
/// </summary>
public static class StealTime
{
    private const double SecondsPerTick = 0.01;
    private const string Path = "/proc/stat";

    /// <summary>Seconds of steal since boot, all CPUs together; null where the kernel does not report it.</summary>
    public static double? ReadSeconds()
    {
        if (!OperatingSystem.IsLinux()) return null;
        try
        {
            using var reader = new StreamReader(Path);
            return Parse(reader.ReadLine());
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>
    /// Steal seconds from the first line of /proc/stat ("cpu user nice system idle iowait irq softirq steal ..."); null
    /// when the line is not that or has no steal field (kernels before 2.6.11).
    /// </summary>
    public static double? Parse(string? line)
    {
        if (line is null) return null;
        var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (fields.Length < 9 || fields[0] != "cpu") return null;
        return long.TryParse(fields[8], out long ticks) && ticks >= 0 ? ticks * SecondsPerTick : null;
    }
}
