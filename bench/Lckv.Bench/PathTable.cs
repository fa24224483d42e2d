using System.Runtime.InteropServices;
using Lckv.Numerics;

namespace Lckv.Bench;

/// <summary>
/// `paths` mode: each matrix-multiply path and kernel variant the dispatch takes on the presets' projection shapes,
/// timed against the next-best way on the same shape (another path forced, or the variant switched off), the two
/// alternated within each round so both see the same moments of the machine; the ratio is the median over the rounds of
/// each round's (time of the other way) / (time of the path). A path or variant keeps its place only where it is 5% or
/// more ahead on some shape (docs/benchmarks.md).
/// </summary>
/// <remarks>paths [m1|m4|m16|m128]... [small|tinyllama]... [f32|bf16|f16|q8_0|q4_0]... [--rounds=N]</remarks>
internal static unsafe class PathTable
{
    private record Product(string Preset, string Name, int K, int N);

    // the products of one layer as the forward runner calls them (q/k/v and gate/up fused), and the head
    private static readonly Product[] _products =
    [
        new("small", "q/k/v", 512, 1024), new("small", "o", 512, 512), new("small", "gate/up", 512, 2816),
        new("small", "down", 1408, 512), new("small", "lm_head", 512, 4096),
        new("tinyllama", "q/k/v", 2048, 2560), new("tinyllama", "o", 2048, 2048), new("tinyllama", "gate/up", 2048, 11264),
        new("tinyllama", "down", 5632, 2048), new("tinyllama", "lm_head", 2048, 32000),
    ];

    private record Way(string Name, MatMul.Path Path, MatMul.Variants Off);

    /// <summary>Seconds of calls per timing: short, so that the two ways alternate many times a second.</summary>
    private const double Budget = 0.08;

    public static void Run(string[] args)
    {
        var ms = new List<int>();
        var presets = new List<string>();
        var types = new List<DType>();
        int rounds = 9;
        foreach (var a in args)
        {
            if (a.StartsWith("--rounds=")) rounds = int.Parse(a[9..]);
            else if (a.StartsWith('m') && int.TryParse(a[1..], out int m)) ms.Add(m);
            else if (a is "f32" or "bf16" or "f16" or "q8_0" or "q4_0") types.Add(DTypes.ParseWeight(a));
            else if (a is "small" or "tinyllama") presets.Add(a);
            else throw new ArgumentException($"unknown argument {a} (m1 m4 m16 m128, small tinyllama, f32 bf16 f16 q8_0 q4_0, --rounds=N)");
        }
        if (ms.Count == 0) ms = [1, 4, 16, 128];
        if (presets.Count == 0) presets = ["small", "tinyllama"];
        if (types.Count == 0) types = [DType.F32, DType.BF16];
        Console.WriteLine($"{WorkerPool.Shared.ThreadCount} thread(s), {(System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? "512" : "256")}-bit, {rounds} alternated rounds, cold W for m <= 64");
        Console.WriteLine();
        Console.WriteLine("| preset | product | m | k | n | W | path | against | us | against us | against / path | rounds ahead |");
        Console.WriteLine("|---|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|");
        foreach (var p in _products.Where(p => presets.Contains(p.Preset)))
            foreach (var t in types)
                foreach (int m in ms)
                    Shape(p, t, m, rounds);
    }

    /// <summary>The ways to time an m x k x n product against: the other paths that apply, and each active variant switched off.</summary>
    private static List<Way> Alternatives(DType dtype, int m, int k, int n)
    {
        var path = MatMul.Choose(dtype, m, k);
        var ways = new List<Way>();
        bool wide = System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated;
        foreach (var other in wide ? new[] { MatMul.Path.DotRows, MatMul.Path.Panel, MatMul.Path.Gemm } : [MatMul.Path.Dot256, MatMul.Path.Gemm])
            if (other != path && (other != MatMul.Path.Panel || m <= 16)) ways.Add(new(other.ToString(), other, MatMul.Variants.None));
        foreach (var v in Enum.GetValues<MatMul.Variants>())
            if (v != MatMul.Variants.None && MatMul.Active(dtype, m, k).HasFlag(v)) ways.Add(new($"no {v}", MatMul.Path.Auto, v));
        return ways;
    }

    private static void Shape(Product p, DType dtype, int m, int rounds)
    {
        int k = p.K, n = p.N;
        var rng = new Random(7);
        long rowBytes = DTypes.RowBytes(dtype, k), wBytes = n * rowBytes;
        long stride = (wBytes + 4095) & ~4095L;
        int copies = m <= 64 ? (int)Math.Max(1, ((128L << 20) + wBytes - 1) / wBytes) : 1;
        float* x = (float*)NativeMemory.AlignedAlloc((nuint)((long)m * k * 4), 64);
        float* y = (float*)NativeMemory.AlignedAlloc((nuint)((long)m * n * 4), 64);
        var row = new float[k];
        nint region = (nint)NativeMemory.AlignedAlloc((nuint)(stride * copies), 4096);
        try
        {
            for (long i = 0; i < (long)m * k; i++) x[i] = (float)(rng.NextDouble() - 0.5);
            for (long r = 0; r < n; r++)
            {
                for (int i = 0; i < k; i++) row[i] = (float)(rng.NextDouble() - 0.5);
                Quantize.Row(dtype, row, new Span<byte>((byte*)region + r * rowBytes, (int)rowBytes));
            }
            for (int c = 1; c < copies; c++) Buffer.MemoryCopy((void*)region, (void*)(region + (nint)(c * stride)), wBytes, wBytes);
            int next = 0;
            void Call()
            {
                var w = new WeightMatrix(region + (nint)(next * stride), dtype, n, k);
                if (++next == copies) next = 0;
                MatMul.Multiply(new ReadOnlySpan<float>(x, m * k), w, new Span<float>(y, m * n), m);
            }
            var path = MatMul.Choose(dtype, m, k);
            foreach (var way in Alternatives(dtype, m, k, n))
            {
                var mine = new List<double>();
                var theirs = new List<double>();
                var ratios = new List<double>();
                for (int r = 0; r < rounds; r++)
                {
                    // alternate which goes first, so neither always follows the other
                    double a0 = 0, b0 = 0;
                    for (int side = 0; side < 2; side++)
                    {
                        bool alternative = (side == 0) == (r % 2 == 1);
                        MatMul.Forced = alternative ? way.Path : MatMul.Path.Auto;
                        MatMul.Off = alternative ? way.Off : MatMul.Variants.None;
                        double t = GemmTable.Time(Call, Budget);
                        if (alternative) b0 = t; else a0 = t;
                    }
                    mine.Add(a0);
                    theirs.Add(b0);
                    ratios.Add(b0 / a0);
                }
                MatMul.Forced = MatMul.Path.Auto;
                MatMul.Off = MatMul.Variants.None;
                int ahead = ratios.Count(x => x > 1);
                Console.WriteLine($"| {p.Preset} | {p.Name} | {m} | {k} | {n} | {DTypes.Name(dtype).ToLowerInvariant()} | {path} | {way.Name} | " +
                                  $"{Median(mine) * 1e6:F1} | {Median(theirs) * 1e6:F1} | {Median(ratios):F3} | {ahead}/{rounds} |");
            }
        }
        finally
        {
            NativeMemory.AlignedFree(x);
            NativeMemory.AlignedFree(y);
            NativeMemory.AlignedFree((void*)region);
        }
    }

    private static double Median(List<double> xs)
    {
        var s = xs.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
