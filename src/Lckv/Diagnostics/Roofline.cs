using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Lckv.Numerics;

namespace Lckv.Diagnostics;

/// <summary>The machine's limits measured in-process: f32 FMA peak and memory read bandwidth.</summary>
/// <param name="Threads">threads used for both figures</param>
/// <param name="FmaGflops">f32 FMA peak, GFLOP/s (an FMA counts as 2 FLOP)</param>
/// <param name="ReadGBps">read bandwidth over an array much larger than the caches, GB/s (1e9 bytes)</param>
public readonly record struct RooflineResult(int Threads, double FmaGflops, double ReadGBps)
{
    public override string ToString() => $"{Threads} thread(s): FMA peak {FmaGflops:F1} GFLOP/s, read bandwidth {ReadGBps:F1} GB/s";
}

/// <summary>
/// Measures the f32 FMA peak (16 independent FMA chains per thread on the widest vectors) and the read bandwidth (a
/// sum over a 256 MiB array), each run on the <see cref="WorkerPool"/> and well under a second.
/// </summary>
public static unsafe class Roofline
{
    private const long BandwidthBytes = 256L << 20;
    private const int BandwidthPasses = 8; // best of: the figure is a limit, and a shared machine's bandwidth is noisy

    public static RooflineResult Measure(int threads) => new(threads, MeasureFmaPeak(threads), MeasureReadBandwidth(threads));

    /// <summary>GFLOP/s of f32 FMA over the given number of threads (best of 20 runs after a warm-up; each run lasts long enough that a burst of JIT work on another core at start-up does not decide it).</summary>
    public static double MeasureFmaPeak(int threads)
    {
        threads = Math.Clamp(threads, 1, WorkerPool.Shared.ThreadCount);
        var sink = stackalloc float[threads * 16];
        long iterations = 1 << 22; // milliseconds a run, longer than a busy moment of another core
        double best = 0;
        for (int run = 0; run < 21; run++)
        {
            var job = new FmaJob { Iterations = iterations, Sink = sink };
            long t0 = Stopwatch.GetTimestamp();
            WorkerPool.Shared.Run(threads, job);
            double s = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            if (run == 0) continue; // warm-up (tiering, clocks)
            double flops = (double)threads * iterations * FmaJob.FlopsPerIteration;
            best = Math.Max(best, flops / s / 1e9);
        }
        return best;
    }

    /// <summary>GB/s read by summing a 256 MiB f32 array split across the threads (best of 8 passes).</summary>
    public static double MeasureReadBandwidth(int threads)
    {
        using var probe = new BandwidthProbe(threads);
        return probe.Measure();
    }

    /// <summary>
    /// The read-bandwidth measurement with its 256 MiB array kept between measurements, for taking it many times in a
    /// run (between the repetitions of a benchmark: a shared machine's bandwidth changes within a minute).
    /// </summary>
    public sealed class BandwidthProbe : IDisposable
    {
        private readonly int _threads;
        private float* _data;

        public BandwidthProbe(int threads)
        {
            _threads = Math.Clamp(threads, 1, WorkerPool.Shared.ThreadCount);
            // huge pages where the weights get them, so the probe streams memory as the weights do
            _data = (float*)HugePages.Allocate(BandwidthBytes);
            WorkerPool.Shared.Run(_threads, new FillJob { Data = _data, Count = BandwidthBytes / sizeof(float), Parts = _threads });
        }

        /// <summary>GB/s, the best of <see cref="BandwidthPasses"/> timed passes after an untimed one.</summary>
        public double Measure()
        {
            ObjectDisposedException.ThrowIf(_data == null, this);
            var sums = stackalloc float[_threads];
            double best = 0;
            for (int run = 0; run < 1 + BandwidthPasses; run++)
            {
                var job = new SumJob { Data = _data, Count = BandwidthBytes / sizeof(float), Parts = _threads, Sums = sums };
                long t0 = Stopwatch.GetTimestamp();
                WorkerPool.Shared.Run(_threads, job);
                double s = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                if (run == 0) continue;
                best = Math.Max(best, BandwidthBytes / s / 1e9);
            }
            return best;
        }

        public void Dispose()
        {
            if (_data != null) NativeMemory.AlignedFree(_data);
            _data = null;
        }
    }

    private struct FmaJob : IRangeBody
    {
        public long Iterations;
        public float* Sink;

        public static long FlopsPerIteration => Vector512.IsHardwareAccelerated ? 16 * 2 * 16 : Vector256.IsHardwareAccelerated ? 12 * 2 * 8 : 16 * 2;

        public readonly void Invoke(int start, int end)
        {
            for (int t = start; t < end; t++)
            {
                if (Vector512.IsHardwareAccelerated) Chains512(Iterations, Sink + t * 16);
                else if (Vector256.IsHardwareAccelerated) Chains256(Iterations, Sink + t * 16);
                else ChainsScalar(Iterations, Sink + t * 16);
            }
        }
    }

    private static void Chains512(long n, float* sink)
    {
        var m = Vector512.Create(0.999999f);
        var a = Vector512.Create(1e-7f);
        var c0 = Vector512.Create(1f); var c1 = c0 + a; var c2 = c1 + a; var c3 = c2 + a;
        var c4 = c3 + a; var c5 = c4 + a; var c6 = c5 + a; var c7 = c6 + a;
        var c8 = c7 + a; var c9 = c8 + a; var c10 = c9 + a; var c11 = c10 + a;
        var c12 = c11 + a; var c13 = c12 + a; var c14 = c13 + a; var c15 = c14 + a;
        for (long i = 0; i < n; i++)
        {
            c0 = Vector512.FusedMultiplyAdd(c0, m, a); c1 = Vector512.FusedMultiplyAdd(c1, m, a);
            c2 = Vector512.FusedMultiplyAdd(c2, m, a); c3 = Vector512.FusedMultiplyAdd(c3, m, a);
            c4 = Vector512.FusedMultiplyAdd(c4, m, a); c5 = Vector512.FusedMultiplyAdd(c5, m, a);
            c6 = Vector512.FusedMultiplyAdd(c6, m, a); c7 = Vector512.FusedMultiplyAdd(c7, m, a);
            c8 = Vector512.FusedMultiplyAdd(c8, m, a); c9 = Vector512.FusedMultiplyAdd(c9, m, a);
            c10 = Vector512.FusedMultiplyAdd(c10, m, a); c11 = Vector512.FusedMultiplyAdd(c11, m, a);
            c12 = Vector512.FusedMultiplyAdd(c12, m, a); c13 = Vector512.FusedMultiplyAdd(c13, m, a);
            c14 = Vector512.FusedMultiplyAdd(c14, m, a); c15 = Vector512.FusedMultiplyAdd(c15, m, a);
        }
        (c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11 + c12 + c13 + c14 + c15).Store(sink);
    }

    // 12 chains: with m and a they fill 14 of the 16 ymm registers a processor without AVX-512 has (16 chains spill)
    private static void Chains256(long n, float* sink)
    {
        var m = Vector256.Create(0.999999f);
        var a = Vector256.Create(1e-7f);
        var c0 = Vector256.Create(1f); var c1 = c0 + a; var c2 = c1 + a; var c3 = c2 + a;
        var c4 = c3 + a; var c5 = c4 + a; var c6 = c5 + a; var c7 = c6 + a;
        var c8 = c7 + a; var c9 = c8 + a; var c10 = c9 + a; var c11 = c10 + a;
        for (long i = 0; i < n; i++)
        {
            c0 = Vector256.FusedMultiplyAdd(c0, m, a); c1 = Vector256.FusedMultiplyAdd(c1, m, a);
            c2 = Vector256.FusedMultiplyAdd(c2, m, a); c3 = Vector256.FusedMultiplyAdd(c3, m, a);
            c4 = Vector256.FusedMultiplyAdd(c4, m, a); c5 = Vector256.FusedMultiplyAdd(c5, m, a);
            c6 = Vector256.FusedMultiplyAdd(c6, m, a); c7 = Vector256.FusedMultiplyAdd(c7, m, a);
            c8 = Vector256.FusedMultiplyAdd(c8, m, a); c9 = Vector256.FusedMultiplyAdd(c9, m, a);
            c10 = Vector256.FusedMultiplyAdd(c10, m, a); c11 = Vector256.FusedMultiplyAdd(c11, m, a);
        }
        (c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11).Store(sink);
    }

    private static void ChainsScalar(long n, float* sink)
    {
        float c0 = 1, c1 = 2, c2 = 3, c3 = 4, c4 = 5, c5 = 6, c6 = 7, c7 = 8;
        float c8 = 9, c9 = 10, c10 = 11, c11 = 12, c12 = 13, c13 = 14, c14 = 15, c15 = 16;
        const float m = 0.999999f, a = 1e-7f;
        for (long i = 0; i < n; i++)
        {
            c0 = MathF.FusedMultiplyAdd(c0, m, a); c1 = MathF.FusedMultiplyAdd(c1, m, a);
            c2 = MathF.FusedMultiplyAdd(c2, m, a); c3 = MathF.FusedMultiplyAdd(c3, m, a);
            c4 = MathF.FusedMultiplyAdd(c4, m, a); c5 = MathF.FusedMultiplyAdd(c5, m, a);
            c6 = MathF.FusedMultiplyAdd(c6, m, a); c7 = MathF.FusedMultiplyAdd(c7, m, a);
            c8 = MathF.FusedMultiplyAdd(c8, m, a); c9 = MathF.FusedMultiplyAdd(c9, m, a);
            c10 = MathF.FusedMultiplyAdd(c10, m, a); c11 = MathF.FusedMultiplyAdd(c11, m, a);
            c12 = MathF.FusedMultiplyAdd(c12, m, a); c13 = MathF.FusedMultiplyAdd(c13, m, a);
            c14 = MathF.FusedMultiplyAdd(c14, m, a); c15 = MathF.FusedMultiplyAdd(c15, m, a);
        }
        sink[0] = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11 + c12 + c13 + c14 + c15;
    }

    private struct FillJob : IRangeBody
    {
        public float* Data;
        public long Count;
        public int Parts;

        public readonly void Invoke(int start, int end)
        {
            long a = Count * start / Parts, b = Count * end / Parts;
            new Span<float>(Data + a, (int)(b - a)).Fill(1f);
        }
    }

    private struct SumJob : IRangeBody
    {
        public float* Data;
        public long Count;
        public int Parts;
        public float* Sums;

        public readonly void Invoke(int start, int end)
        {
            for (int t = start; t < end; t++)
            {
                long a = Count * t / Parts, b = Count * (t + 1) / Parts;
                Sums[t] = Sum(Data + a, b - a);
            }
        }
    }

    // four streams per thread (quarters of the range read side by side, each fetched 1 KiB ahead): the access pattern
    // of the streaming matrix-vector kernel, which one sequential stream per core does not saturate
    private static float Sum(float* p, long n)
    {
        long i = 0;
        float s = 0;
        if (Vector512.IsHardwareAccelerated && n >= 256)
        {
            long q = n / 4 / 16 * 16;
            float* p0 = p, p1 = p + q, p2 = p + 2 * q, p3 = p + 3 * q;
            var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            for (; i <= q - 16; i += 16)
            {
                if (Sse.IsSupported)
                {
                    Sse.Prefetch0(p0 + i + 256); Sse.Prefetch0(p1 + i + 256);
                    Sse.Prefetch0(p2 + i + 256); Sse.Prefetch0(p3 + i + 256);
                }
                a0 += Vector512.Load(p0 + i); a1 += Vector512.Load(p1 + i);
                a2 += Vector512.Load(p2 + i); a3 += Vector512.Load(p3 + i);
            }
            s = Vector512.Sum(a0 + a1 + a2 + a3);
            i = 4 * q;
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
            for (; i <= n - 32; i += 32)
            {
                a0 += Vector256.Load(p + i); a1 += Vector256.Load(p + i + 8);
                a2 += Vector256.Load(p + i + 16); a3 += Vector256.Load(p + i + 24);
            }
            s = Vector256.Sum(a0 + a1 + a2 + a3);
        }
        for (; i < n; i++) s += p[i];
        return s;
    }
}
