using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace Lckv.Numerics;

/// <summary>Work over a contiguous range [start, end) of items, run by one thread of a <see cref="WorkerPool"/>.</summary>
public interface IRangeBody
{
    void Invoke(int start, int end);
}

/// <summary>
/// How many threads a call of a <see cref="WorkerPool"/> may use now, given what else is running on the machine
/// (Lckv.Diagnostics.CoreMonitor reads it from Linux's /proc/loadavg).
/// </summary>
public interface ICoreAvailability
{
    /// <summary>Threads a call may use now, the caller included (int.MaxValue for no limit). Called by one thread at a time (the pool's busy flag).</summary>
    int Available(WorkerPool pool);
}

/// <summary>
/// Persistent worker threads for the kernels. A call splits its items into one contiguous chunk per thread; the caller
/// runs the first chunk itself, and every chunk goes to whichever thread claims it first: a worker that has not started
/// its chunk by the time the caller is done with its own (descheduled because another process holds its core) finds it
/// taken, and the call does not wait for it. With a <see cref="Cores"/> source attached, a call uses only as many threads as
/// other processes leave cores. Workers spin briefly after a job, then block. Nothing is allocated per call.
/// A call made while the pool is busy (from a worker, or from another thread) runs inline on its caller.
/// </summary>
public sealed unsafe class WorkerPool
{
    /// <summary>The pool the kernels use: LCKV_THREADS threads, else one per processor.</summary>
    public static WorkerPool Shared { get; } = new(DefaultThreadCount());

    private readonly object _resize = new();
    private Worker[] _workers = [];
    private int _threads;
    private int _busy;

    // the job being run: read by a thread after it claims one of its chunks
    private delegate*<void*, int, int, void> _invoke;
    private void* _state;
    private int _count, _grain, _parts;
    private int _pending;
    // the chunks not yet claimed: job number (bits 32-63), chunk count (16-31), next unclaimed chunk (0-15)
    private long _claims;
    private int _job;
    private Exception? _error;

    private ICoreAvailability? _cores;

    /// <summary>Run by a worker before it claims chunks (tests hold workers back with it).</summary>
    internal Action? WorkerClaimHook;

    public WorkerPool(int threads, ICoreAvailability? cores = null)
    {
        _cores = cores;
        ThreadCount = threads;
    }

    public static int DefaultThreadCount()
    {
        var s = Environment.GetEnvironmentVariable("LCKV_THREADS");
        return int.TryParse(s, out int n) && n > 0 ? Math.Min(n, MaxThreadCount) : Environment.ProcessorCount;
    }

    /// <summary>Most threads a pool takes: four per core. More only oversubscribe the cores, and each thread holds a
    /// stack, so a count in the thousands would exhaust the process before doing any work.</summary>
    public static int MaxThreadCount => 4 * Environment.ProcessorCount;

    /// <summary>Where a call learns how many cores other processes leave it; null to always use <see cref="ThreadCount"/>. Settable at any time between calls.</summary>
    public ICoreAvailability? Cores
    {
        get => Volatile.Read(ref _cores);
        set => Volatile.Write(ref _cores, value);
    }

    /// <summary>Threads a call may use, the caller included. Settable at any time between calls.</summary>
    public int ThreadCount
    {
        get => Volatile.Read(ref _threads);
        set
        {
            if (value < 1 || value > MaxThreadCount) throw new ArgumentOutOfRangeException(nameof(value), $"from 1 to {MaxThreadCount} threads");
            lock (_resize)
            {
                var spin = new SpinWait();
                while (Interlocked.CompareExchange(ref _busy, 1, 0) != 0) spin.SpinOnce();
                try
                {
                    if (_workers.Length < value - 1)
                    {
                        var grown = new Worker[value - 1];
                        Array.Copy(_workers, grown, _workers.Length);
                        for (int i = _workers.Length; i < grown.Length; i++) grown[i] = new Worker(this, i + 1);
                        _workers = grown;
                    }
                    Volatile.Write(ref _threads, value);
                }
                finally
                {
                    Volatile.Write(ref _busy, 0);
                }
            }
        }
    }

    /// <summary>How many chunks a call over count items in multiples of grain would be split into.</summary>
    public int PartsFor(int count, int grain = 1)
    {
        if (count <= 0) return 0;
        long units = (count + (long)grain - 1) / grain;
        return (int)Math.Min(ThreadCount, units);
    }

    /// <summary>
    /// Runs body over [0, count) split into contiguous chunks, one per thread, each a multiple of grain items
    /// (except the last). Returns when every chunk is done. The body is copied; it should hold pointers, not results.
    /// </summary>
    public void Run<T>(int count, in T body, int grain = 1) where T : struct, IRangeBody
    {
        if (count <= 0) return;
        if (grain < 1) grain = 1;
        int parts = PartsFor(count, grain);
        T local = body;
        if (parts <= 1 || Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
        {
            local.Invoke(0, count);
            return;
        }
        if (Cores is { } cores && (parts = Math.Min(parts, cores.Available(this))) <= 1)
        {
            Volatile.Write(ref _busy, 0);
            local.Invoke(0, count);
            return;
        }
        Exception? error;
        try
        {
            parts = Math.Min(parts, Math.Min(_workers.Length + 1, 0xFFFF));
            _invoke = &Invoker<T>.Invoke;
            _state = Unsafe.AsPointer(ref local);
            _count = count;
            _grain = grain;
            _parts = parts;
            _error = null;
            Volatile.Write(ref _pending, parts);
            // the job is published by this write (the fields above are in place before it); chunk 0 is the caller's
            Volatile.Write(ref _claims, ((long)++_job << 32) | ((long)parts << 16) | 1);
            for (int w = 0; w < parts - 1; w++) _workers[w].Post();
            RunPart(0);
            while (TryClaim(out int part)) RunPart(part);
            WaitForWorkers();
            error = _error;
            _error = null;
            _state = null;
        }
        finally
        {
            Volatile.Write(ref _busy, 0);
        }
        if (error is not null) throw new AggregateException("a worker failed", error);
    }

    /// <summary>
    /// The caller's wait for the other chunks: a short pause between reads of the pending count. Not SpinWait's
    /// back-off, which soon yields the core: a yield can last longer than a whole chunk of a decode step. Past ~1 ms of
    /// waiting it yields: a worker that is that late has likely been descheduled, and the core is better given to it.
    /// </summary>
    private void WaitForWorkers()
    {
        long start = 0;
        for (int i = 1; Volatile.Read(ref _pending) != 0; i++)
        {
            Thread.SpinWait(1);
            if ((i & 255) != 0) continue;
            if (start == 0) start = Stopwatch.GetTimestamp();
            else if (Stopwatch.GetTimestamp() - start > Stopwatch.Frequency / 1000) Thread.Yield();
        }
    }

    /// <summary>How many of the workers are awake (spinning or working: runnable, for the scheduler).</summary>
    public int AwakeWorkers()
    {
        int n = 0;
        var workers = _workers;
        for (int i = 0; i < workers.Length && i < ThreadCount - 1; i++) n += workers[i].Awake ? 1 : 0;
        return n;
    }

    private (int Start, int End) Chunk(int part) => EvenChunk(_count, _grain, part, _parts);

    /// <summary>
    /// Claims the next chunk of the current job; false when all are taken. A claim that races with the publication of
    /// a new job retries on the new one (the job number makes the compare-exchange fail), so a late worker never runs a
    /// chunk of a job that is over, and a job's fields are not rewritten while a claimed chunk of it runs (the caller
    /// waits for every chunk).
    /// </summary>
    private bool TryClaim(out int part)
    {
        while (true)
        {
            long c = Volatile.Read(ref _claims);
            part = (int)(c & 0xFFFF);
            if (part >= (int)((c >> 16) & 0xFFFF)) return false;
            if (Interlocked.CompareExchange(ref _claims, c + 1, c) == c) return true;
        }
    }

    /// <summary>Chunk `part` of `parts` of [0, count) split evenly in multiples of grain (the last chunk takes the rest).</summary>
    private static (int Start, int End) EvenChunk(int count, int grain, int part, int parts)
    {
        long units = (count + (long)grain - 1) / grain;
        long u0 = units * part / parts, u1 = units * (part + 1) / parts;
        return ((int)Math.Min(u0 * grain, count), (int)Math.Min(u1 * grain, count));
    }

    private void RunPart(int part)
    {
        try
        {
            var (s, e) = Chunk(part);
            if (s < e) _invoke(_state, s, e);
        }
        catch (Exception ex)
        {
            Interlocked.CompareExchange(ref _error, ex, null);
        }
        Interlocked.Decrement(ref _pending);
    }

    private static class Invoker<T> where T : struct, IRangeBody
    {
        public static void Invoke(void* state, int start, int end) => Unsafe.AsRef<T>(state).Invoke(start, end);
    }

    private sealed class Worker
    {
        private readonly WorkerPool _pool;
        private readonly ManualResetEventSlim _wake = new(false, 0);
#pragma warning disable CS0169, IDE0051 // padding against false sharing between workers
        private long _pad0, _pad1, _pad2, _pad3, _pad4, _pad5, _pad6;
#pragma warning restore CS0169, IDE0051
        private int _seq;
        private int _sleeping;

        public Worker(WorkerPool pool, int part)
        {
            _pool = pool;
            var thread = new Thread(Loop) { IsBackground = true, Name = $"Lckv worker {part}" };
            thread.Start();
        }

        public bool Awake => Volatile.Read(ref _sleeping) == 0;

        public void Post()
        {
            Interlocked.Increment(ref _seq);
            if (Volatile.Read(ref _sleeping) != 0) _wake.Set();
        }

        private void Loop()
        {
            int seen = 0; // posts made before this thread first runs must not be missed
            long spinLimit = Stopwatch.Frequency / 5000; // about 200 us
            while (true)
            {
                long start = Stopwatch.GetTimestamp();
                int i = 0;
                while (Volatile.Read(ref _seq) == seen)
                {
                    Thread.SpinWait(1); // one short pause between looks, so a posted job is seen at once
                    if ((++i & 63) == 0 && Stopwatch.GetTimestamp() - start > spinLimit)
                    {
                        Interlocked.Exchange(ref _sleeping, 1);
                        if (Volatile.Read(ref _seq) == seen) _wake.Wait();
                        _wake.Reset();
                        Interlocked.Exchange(ref _sleeping, 0);
                        start = Stopwatch.GetTimestamp();
                    }
                }
                seen = Volatile.Read(ref _seq);
                _pool.WorkerClaimHook?.Invoke();
                while (_pool.TryClaim(out int part)) _pool.RunPart(part);
            }
        }
    }
}
