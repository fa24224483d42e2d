using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Lckv.Diagnostics;
using Lckv.Numerics;

namespace Lckv.Bench;

/// <summary>
/// MatMul.Multiply (and OpenBLAS sgemm on the f32 equivalent) at the square and decode shapes, with GFLOP/s, % of the
/// FMA peak and weight GB/s columns computed against <see cref="Roofline"/> measured in the host process of the run.
/// dotnet run -c Release --project bench/Lckv.Bench -- --filter '*GemmBenchmarks*'
/// </summary>
[Config(typeof(RooflineConfig))]
public unsafe class GemmBenchmarks
{
    /// <summary>The shapes (m x k x n), or those listed in LCKV_BENCH_SHAPES (comma separated).</summary>
    public static IEnumerable<string> Shapes =>
        Environment.GetEnvironmentVariable("LCKV_BENCH_SHAPES") is { Length: > 0 } list ? list.Split(',') : _defaultShapes;

    private static readonly string[] _defaultShapes =
    [
        "1024x1024x1024", "2048x2048x2048", "4096x4096x4096",
        "1x512x1408", "1x1408x512", "1x2048x5632", "1x5632x2048", "1x2048x32000",
        "10x2048x5632", "10x5632x2048",
        "16x512x1408", "16x1408x512", "16x512x512", "16x512x256", "16x512x4096", "16x2048x5632", "16x5632x2048",
    ];

    /// <summary>m x k x n</summary>
    [ParamsSource(nameof(Shapes))]
    public string Shape { get; set; } = "16x512x512";

    [Params(DType.F32, DType.BF16)]
    public DType W { get; set; }

    private int _m, _k, _n;
    private float* _x, _wf, _y;
    private nint _w;

    [GlobalSetup]
    public void Setup()
    {
        WorkerPool.Shared.Cores ??= CoreMonitor.TryCreate(); // as in the CLI (this runs in BenchmarkDotNet's child process)
        var d = Shape.Split('x').Select(int.Parse).ToArray();
        (_m, _k, _n) = (d[0], d[1], d[2]);
        var rng = new Random(1);
        _x = (float*)NativeMemory.AlignedAlloc((nuint)((long)_m * _k * 4), 64);
        _wf = (float*)NativeMemory.AlignedAlloc((nuint)((long)_n * _k * 4), 64);
        _y = (float*)NativeMemory.AlignedAlloc((nuint)((long)_m * _n * 4), 64);
        _w = (nint)NativeMemory.AlignedAlloc((nuint)((long)_n * _k * DTypes.SizeOf(W)), 64);
        for (long i = 0; i < (long)_m * _k; i++) _x[i] = (float)(rng.NextDouble() - 0.5);
        for (long i = 0; i < (long)_n * _k; i++) _wf[i] = (float)(rng.NextDouble() - 0.5);
        global::Lckv.Numerics.Convert.Narrow(new ReadOnlySpan<float>(_wf, _n * _k), W, _w);
        if (OpenBlas.Available) OpenBlas.Threads(WorkerPool.Shared.ThreadCount);
        else Console.WriteLine(OpenBlas.Missing);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        NativeMemory.AlignedFree(_x); NativeMemory.AlignedFree(_wf); NativeMemory.AlignedFree(_y); NativeMemory.AlignedFree((void*)_w);
    }

    [Benchmark(Baseline = true)]
    public void Lckv() => MatMul.Multiply(new ReadOnlySpan<float>(_x, _m * _k), new WeightMatrix(_w, W, _n, _k), new Span<float>(_y, _m * _n), _m);

    [Benchmark]
    public void OpenBlasSgemm()
    {
        if (OpenBlas.Available) OpenBlas.Multiply(_x, _wf, _y, _m, _k, _n);
    }
}

/// <summary>Adds GFLOP/s, % FMA peak and W GB/s (against the roofline measured once in this process).</summary>
public sealed class RooflineConfig : ManualConfig
{
    private static readonly Lazy<RooflineResult> _roof = new(() =>
    {
        var r = Roofline.Measure(WorkerPool.Shared.ThreadCount);
        Console.WriteLine($"// Roofline: {r}");
        return r;
    });

    public RooflineConfig()
    {
        AddJob(Job.Default.WithWarmupCount(2).WithIterationCount(6).WithIterationTime(Perfolizer.Horology.TimeInterval.FromMilliseconds(150)));
        AddColumn(new RateColumn("GFLOP/s", (flops, _, s) => flops / s / 1e9));
        AddColumn(new RateColumn("% FMA peak", (flops, _, s) => 100 * flops / s / 1e9 / _roof.Value.FmaGflops));
        AddColumn(new RateColumn("W GB/s", (_, bytes, s) => bytes / s / 1e9));
        AddColumn(new RateColumn("% read bw", (_, bytes, s) => 100 * bytes / s / 1e9 / _roof.Value.ReadGBps));
    }

    private sealed class RateColumn(string name, Func<double, double, double, double> rate) : IColumn
    {
        public string Id => "Roofline." + name;
        public string ColumnName => name;
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 0;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => $"{name} against the roofline measured in the host process";
        public bool IsAvailable(Summary summary) => true;
        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
        {
            var report = summary[benchmarkCase];
            var shape = benchmarkCase.Parameters["Shape"] as string;
            if (report?.ResultStatistics is null || shape is null) return "-";
            var d = shape.Split('x').Select(double.Parse).ToArray();
            var dtype = (DType)benchmarkCase.Parameters["W"];
            bool blas = benchmarkCase.Descriptor.WorkloadMethod.Name == nameof(GemmBenchmarks.OpenBlasSgemm);
            double flops = 2 * d[0] * d[1] * d[2];
            double bytes = d[1] * d[2] * (blas ? 4 : DTypes.SizeOf(dtype));
            double seconds = report.ResultStatistics.Median / 1e9;
            return rate(flops, bytes, seconds).ToString("F1");
        }
    }
}
