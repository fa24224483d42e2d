using System.Diagnostics;
using System.Runtime.InteropServices;
using Lckv.Diagnostics;
using Lckv.Numerics;

namespace Lckv.Bench;

/// <summary>
/// `gemm` mode: a markdown table of MatMul.Multiply against the roofline measured in the same run and against
/// OpenBLAS cblas_sgemm on the same f32 operands (bf16/f16/Q8_0/Q4_0 rows compare against OpenBLAS on the f32
/// equivalent). W GB/s counts the bytes of W as stored (Q8_0 1.0625 bytes a weight, Q4_0 0.5625).
/// </summary>
internal static unsafe class GemmTable
{
    public record Shape(string Name, int M, int K, int N);

    public static readonly Shape[] Squares = [new("square", 1024, 1024, 1024), new("square", 2048, 2048, 2048), new("square", 4096, 4096, 4096)];

    public static Shape[] Decode(int m) =>
    [
        new("small qo", m, 512, 512), new("small kv", m, 512, 256), new("small gate/up", m, 512, 1408),
        new("small down", m, 1408, 512), new("small lm_head", m, 512, 4096),
        new("tinyllama qo", m, 2048, 2048), new("tinyllama kv", m, 2048, 256), new("tinyllama gate/up", m, 2048, 5632),
        new("tinyllama down", m, 5632, 2048), new("tinyllama lm_head", m, 2048, 32000),
    ];

    public static void Run(string[] args)
    {
        int threads = WorkerPool.Shared.ThreadCount;
        var types = new List<DType>();
        var groups = new List<string>();
        var custom = new List<string>();
        foreach (var a in args)
        {
            if (a.StartsWith("--threads=")) threads = int.Parse(a[10..]);
            else if (a is "f32" or "bf16" or "f16" or "q8_0" or "q4_0") types.Add(DTypes.ParseWeight(a));
            else if (a.Contains('x') && char.IsDigit(a[0])) custom.Add(a);
            else groups.Add(a);
        }
        if (types.Count == 0) types = [DType.F32, DType.BF16];
        if (groups.Count == 0 && custom.Count == 0) groups = ["square", "m1", "m16"];
        WorkerPool.Shared.ThreadCount = threads;

        var roof = Roofline.Measure(threads);
        Console.WriteLine($"Roofline: {roof}");
        if (OpenBlas.Available) OpenBlas.Threads(threads);
        else Console.WriteLine(OpenBlas.Missing);
        Console.WriteLine();
        Console.WriteLine("| shape | m | k | n | W | threads | Lckv GFLOP/s | % FMA peak | Lckv W GB/s | % read bw | OpenBLAS GFLOP/s | Lckv / OpenBLAS |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var c in custom)
        {
            var d = c.Split('x').Select(int.Parse).ToArray(); // m x k x n
            foreach (var t in types) Row(new Shape("custom", d[0], d[1], d[2]), t, threads, roof);
        }
        foreach (var g in groups)
        {
            var shapes = g switch
            {
                "square" => Squares,
                "m1" => Decode(1),
                "m16" => Decode(16),
                "m64" => Decode(64),
                _ => throw new ArgumentException($"unknown group {g} (square, m1, m16, m64)"),
            };
            foreach (var s in shapes)
                foreach (var t in types)
                    Row(s, t, threads, roof);
        }
    }

    /// <summary>Decode rows rotate over copies of W totalling at least this much, so W streams from memory, not L3.</summary>
    private static readonly long _coldBytes = long.TryParse(Environment.GetEnvironmentVariable("LCKV_COLD_MB"), out long mb) ? mb << 20 : 128L << 20;

    private static void Row(Shape s, DType dtype, int threads, RooflineResult roof)
    {
        int m = s.M, k = s.K, n = s.N;
        var rng = new Random(7);
        float* x = Alloc((long)m * k), wf = Alloc((long)n * k), y = Alloc((long)m * n);
        long rowBytes = DTypes.RowBytes(dtype, k), wBytes = n * rowBytes;
        int copies = m <= 64 ? (int)Math.Max(1, (_coldBytes + wBytes - 1) / wBytes) : 1;
        var wd = new nint[copies];
        nint region = 0;
        try
        {
            for (long i = 0; i < (long)m * k; i++) x[i] = (float)(rng.NextDouble() - 0.5);
            for (long i = 0; i < (long)n * k; i++) wf[i] = (float)(rng.NextDouble() - 0.5);
            for (int c = 0; c < copies; c++)
            {
                if (c == 0) region = (nint)NativeMemory.AlignedAlloc((nuint)(((wBytes + 4095) & ~4095L) * copies), 4096);
                wd[c] = region + (nint)(c * ((wBytes + 4095) & ~4095L));
                for (long r = 0; r < n; r++)
                    Quantize.Row(dtype, new ReadOnlySpan<float>(wf + r * k, k), new Span<byte>((byte*)wd[c] + r * rowBytes, (int)rowBytes));
            }
            int next = 0;
            double flops = 2.0 * m * k * n;
            double lckv = Time(() =>
            {
                var w = new WeightMatrix(wd[next], dtype, n, k);
                if (++next == copies) next = 0;
                MatMul.Multiply(new ReadOnlySpan<float>(x, m * k), w, new Span<float>(y, m * n), m);
            });
            double blas = OpenBlas.Available ? Time(() => OpenBlas.Multiply(x, wf, y, m, k, n)) : double.NaN;
            double gflops = flops / lckv / 1e9, bgflops = flops / blas / 1e9;
            double gbps = wBytes / lckv / 1e9;
            string bw = m <= 64 ? $"{gbps:F1} | {100 * gbps / roof.ReadGBps:F0}%" : "- | -";
            string ob = OpenBlas.Available ? $"{bgflops:F1} | {gflops / bgflops:F2}" : "n/a | n/a";
            Console.WriteLine($"| {s.Name} | {m} | {k} | {n} | {DTypes.Name(dtype).ToLowerInvariant()} | {threads} | {gflops:F1} | {100 * gflops / roof.FmaGflops:F0}% | {bw} | {ob} |");
        }
        finally
        {
            NativeMemory.AlignedFree(x); NativeMemory.AlignedFree(wf); NativeMemory.AlignedFree(y);
            if (region != 0) NativeMemory.AlignedFree((void*)region);
        }
    }

    private static float* Alloc(long count) => (float*)NativeMemory.AlignedAlloc((nuint)(count * sizeof(float)), 64);

    /// <summary>Median seconds per call over repeated runs (about `budget` seconds of calls after a warm-up).</summary>
    internal static double Time(Action call, double budget = 0.4)
    {
        call();
        var sw = Stopwatch.StartNew();
        call();
        double once = Math.Max(sw.Elapsed.TotalSeconds, 1e-7);
        int reps = (int)Math.Clamp(budget / once, 5, 2000);
        // group fast calls so each timed sample lasts at least ~0.2 ms
        int inner = (int)Math.Clamp(2e-4 / once, 1, 1000);
        var samples = new double[reps];
        for (int r = 0; r < reps; r++)
        {
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < inner; i++) call();
            samples[r] = Stopwatch.GetElapsedTime(t0).TotalSeconds / inner;
        }
        Array.Sort(samples);
        return samples[reps / 2];
    }
}
