using System.Diagnostics;
using Lckv.Numerics;
using Microsoft.Win32.SafeHandles;

namespace Lckv.Diagnostics;

/// <summary>
/// Linux: how many threads a call of the <see cref="WorkerPool"/> may use without a core that another process is
/// running on. A worker that shares its core with a busy process is descheduled for whole time slices while its
/// caller waits for its chunk, which can make a call on two threads slower than on one. Every 10 ms (looked at when a
/// call starts) the monitor reads the number of runnable threads from /proc/loadavg, takes away the pool's own (the
/// caller and its awake workers), and allows as many threads as cores are left, at least one. It goes by the least
/// that its last eight samples found, so contention has to last ~80 ms to take a thread away (a shorter window lets
/// momentary counts take threads away on an otherwise idle machine), and the threads come back at the first sample
/// that finds the cores free. Used only where this process may run on every online core: under a CPU quota or an
/// affinity mask the machine-wide count says nothing about this process's cores. Off with LCKV_CORE_MONITOR=0.
/// When a sample finds threads beyond the pool's, the process's own runnable threads are counted too (from
/// /proc/self/task) and not held against it: a server's own short-lived threads (writing responses) are not another
/// process holding a core, and counting them could take a thread away from a busy server's steps.
/// </summary>
public sealed class CoreMonitor : ICoreAvailability
{
    private static readonly long _interval = Stopwatch.Frequency / 100;
    private readonly SafeFileHandle? _file;
    private readonly byte[] _buffer = new byte[128];
    private readonly int _cores;
    private readonly int[] _others = new int[Window];
    internal const int Window = 8;
    private int _next;
    private long _due;
    private int _available = int.MaxValue;
    private long _samples, _contended;
    private readonly bool _ownThreads;
    private readonly Dictionary<int, SafeFileHandle> _tasks = [];
    private long _tasksDue;

    /// <param name="file">/proc/loadavg; null for a monitor that is only fed samples (tests)</param>
    /// <param name="ownThreads">count this process's runnable threads from /proc/self/task</param>
    internal CoreMonitor(SafeFileHandle? file, int cores, bool ownThreads = false)
    {
        _file = file;
        _cores = cores;
        _ownThreads = ownThreads;
    }

    public long Samples => Interlocked.Read(ref _samples);
    public long Contended => Interlocked.Read(ref _contended);

    public static CoreMonitor? TryCreate()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("LCKV_CORE_MONITOR") == "0") return null;
        try
        {
            int online = CountCpuList(File.ReadAllText("/sys/devices/system/cpu/online"));
            if (online != Environment.ProcessorCount) return null;
            var file = File.OpenHandle("/proc/loadavg");
            var monitor = new CoreMonitor(file, online, ownThreads: Directory.Exists("/proc/self/task"));
            if (monitor.ReadRunnable() >= 1) return monitor;
            file.Dispose();
            return null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Threads a call may use now (int.MaxValue when nothing else wants a core). Called by one thread at a time (the pool's busy flag).</summary>
    public int Available(WorkerPool pool)
    {
        long now = Stopwatch.GetTimestamp();
        if (now < _due || _file is null) return _available;
        _due = now + _interval;
        int running = ReadRunnable();
        if (running < 1) return _available = int.MaxValue;
        int awake = pool.AwakeWorkers();
        // more runnable than the caller and its workers: this process's other threads are not another process's
        if (_ownThreads && running > 1 + awake && OwnRunnable() is int own and > 0) awake = Math.Max(awake, own - 1);
        return Record(running, awake);
    }

    /// <summary>This process's runnable threads (the caller included), from each thread's /proc/self/task/TID/stat,
    /// kept open and re-read; the list of threads is refreshed every second. -1 when it cannot be read.</summary>
    internal int OwnRunnable()
    {
        long now = Stopwatch.GetTimestamp();
        try
        {
            if (now >= _tasksDue)
            {
                _tasksDue = now + Stopwatch.Frequency;
                var alive = new HashSet<int>();
                foreach (var dir in Directory.EnumerateDirectories("/proc/self/task"))
                {
                    if (!int.TryParse(Path.GetFileName(dir), out int tid)) continue;
                    alive.Add(tid);
                    if (_tasks.ContainsKey(tid)) continue;
                    try { _tasks[tid] = File.OpenHandle(Path.Combine(dir, "stat")); }
                    catch (IOException) { alive.Remove(tid); } // the thread ended since the list was read
                }
                foreach (int gone in _tasks.Keys.Where(t => !alive.Contains(t)).ToArray())
                {
                    _tasks[gone].Dispose();
                    _tasks.Remove(gone);
                }
            }
            int running = 0;
            foreach (var handle in _tasks.Values)
            {
                int n;
                try { n = RandomAccess.Read(handle, _buffer, 0); }
                catch (IOException) { continue; } // the thread ended since the list was read
                if (StateOf(_buffer.AsSpan(0, n)) == (byte)'R') running++;
            }
            return running;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return -1;
        }
    }

    /// <summary>The state letter of a /proc/PID/stat line ("12 (name) R ..." gives R), or 0.</summary>
    internal static byte StateOf(ReadOnlySpan<byte> stat)
    {
        int paren = stat.LastIndexOf((byte)')'); // the name may hold spaces and parentheses
        return paren >= 0 && paren + 2 < stat.Length ? stat[paren + 2] : (byte)0;
    }

    /// <summary>Takes a sample (runnable threads on the machine, the pool's awake workers) and returns the threads a call may use.</summary>
    internal int Record(int running, int awakeWorkers)
    {
        _others[_next] = Math.Max(0, running - 1 - awakeWorkers); // the caller reading the count is running
        _next = (_next + 1) % _others.Length;
        int least = int.MaxValue;
        foreach (int o in _others) least = Math.Min(least, o);
        Interlocked.Increment(ref _samples);
        if (least == 0) return _available = int.MaxValue;
        Interlocked.Increment(ref _contended);
        return _available = Math.Max(1, _cores - least);
    }

    /// <summary>Runnable threads on the machine now (the numerator of /proc/loadavg's fourth field), or -1.</summary>
    private int ReadRunnable()
    {
        try
        {
            int n = RandomAccess.Read(_file!, _buffer, 0);
            return ParseRunnable(_buffer.AsSpan(0, n));
        }
        catch (IOException)
        {
            return -1;
        }
    }

    /// <summary>The runnable count of a /proc/loadavg line ("0.90 1.08 1.28 2/79 2275" gives 2), or -1.</summary>
    internal static int ParseRunnable(ReadOnlySpan<byte> line)
    {
        int slash = line.IndexOf((byte)'/');
        if (slash <= 0) return -1;
        int start = slash;
        while (start > 0 && line[start - 1] is >= (byte)'0' and <= (byte)'9') start--;
        if (start == slash || slash - start > 9) return -1;
        int value = 0;
        for (int i = start; i < slash; i++) value = value * 10 + (line[i] - '0');
        return value;
    }

    /// <summary>How many CPUs a kernel CPU list names ("0-3,6,8-9" gives 7), or -1 if it is malformed.</summary>
    internal static int CountCpuList(string list)
    {
        int count = 0;
        foreach (var part in list.Trim().Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            int dash = part.IndexOf('-');
            if (dash < 0)
            {
                if (!int.TryParse(part, out _)) return -1;
                count++;
            }
            else if (int.TryParse(part.AsSpan(0, dash), out int a) && int.TryParse(part.AsSpan(dash + 1), out int b) && b >= a)
            {
                count += b - a + 1;
            }
            else
            {
                return -1;
            }
        }
        return count == 0 ? -1 : count;
    }
}
