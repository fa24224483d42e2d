using Lckv.Numerics;
using Xunit.Abstractions;

namespace Lckv.Tests.Numerics;

[Trait("Category", "Kernels")]
public class MatMulTests(ITestOutputHelper output)
{
    private static readonly int[] _ms = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17];

    public static TheoryData<DType> Types => new(TestData.FloatTypes);

    [Theory]
    [MemberData(nameof(Types))]
    public void MatchesReferenceOnAllSmallShapes(DType dtype)
    {
        var rng = new Random(1);
        int checkedCount = 0;
        foreach (int m in _ms)
            for (int k = 1; k <= 67; k += (k < 20 ? 1 : 7))
                for (int n = 1; n <= 67; n += (n < 20 ? 1 : 5))
                {
                    Compare(rng, m, k, n, dtype);
                    checkedCount++;
                }
        output.WriteLine($"{dtype}: {checkedCount} shapes OK");
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void MatchesReferenceOnLargerShapes(DType dtype)
    {
        var rng = new Random(2);
        foreach (var (m, k, n) in new[] { (1, 259, 131), (3, 259, 131), (17, 259, 131), (33, 300, 70), (16, 512, 96), (40, 600, 33), (400, 520, 40), (1, 1000, 37), (7, 1027, 19), (12, 1100, 37), (15, 1024, 9), (20, 300, 41), (29, 130, 21), (64, 520, 37), (16, 1100, 37), (32, 600, 33), (15, 1200, 70), (16, 1500, 101), (16, 2049, 48), (15, 1700, 40), (16, 1600, 33), (8, 1100, 21), (14, 1055, 30) })
            Compare(rng, m, k, n, dtype);
    }

    /// <summary>Few rows against 4+ MiB of W, split across the shared pool's threads (CI's two cores).</summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void StreamedProductsMatchReference(DType dtype)
    {
        var rng = new Random(5);
        int scale = dtype == DType.F32 ? 1 : 2;
        foreach (var (m, k, n) in new[] { (1, 1031, 1029 * scale), (3, 1031, 1031 * scale), (4, 515, 2063 * scale) })
            Compare(rng, m, k, n, dtype);
    }

    /// <summary>Every path forced, and every kernel variant switched off, matches the reference on shapes around the
    /// dispatch's boundaries (bench/Lckv.Bench's `paths` mode times them against each other).</summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void EveryPathAndVariantMatchesReference(DType dtype)
    {
        var rng = new Random(6);
        var shapes = new[] { (1, 1031, 70), (3, 259, 131), (4, 600, 37), (12, 1100, 21), (16, 515, 33), (16, 1600, 40), (20, 300, 41), (40, 700, 19) };
        OnEveryPathAndVariant(rng, shapes, dtype);
    }

    [Fact]
    public void EveryKFromOneTo67WithGemmAndDot()
    {
        var rng = new Random(3);
        foreach (int m in new[] { 1, 4, 16, 19 })
            for (int k = 1; k <= 67; k++)
                Compare(rng, m, k, 35, DType.BF16);
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void SeveralWeightsOfOneInputMatchSeparateProducts(DType dtype)
    {
        var rng = new Random(4);
        foreach (var (m, k, ns) in new[] { (1, 67, new[] { 5, 33 }), (3, 130, new[] { 16, 9, 40 }), (10, 259, new[] { 64, 17, 17 }),
            (16, 100, new[] { 35, 48 }), (16, 1100, new[] { 35, 48, 20 }), (2, 701, new[] { 1601, 1599 }), (15, 1409, new[] { 64, 33 }), (20, 77, new[] { 7, 30, 3 }), (40, 300, new[] { 50, 19 }), (130, 40, new[] { 21, 16, 33 }) })
            CompareSeveral(rng, m, k, ns, dtype);
    }

    [Fact]
    public void SeveralWeightsMustShareWidthAndDtype()
    {
        using var a = NativeBuffer.From(new float[4 * 8], DType.F32, out _);
        using var b = NativeBuffer.From(new float[4 * 6], DType.F32, out _);
        var e = Assert.Throws<ArgumentException>(() => MatMul.Multiply(new float[8], new WeightMatrix(a.Address, DType.F32, 4, 8), new float[4],
            new WeightMatrix(b.Address, DType.F32, 4, 6), new float[4], 1));
        Assert.Contains("share width", e.Message);
    }

    public static TheoryData<DType> QuantizedTypes => new(TestData.QuantizedTypes);

    /// <summary>Few-row counts of decode (1-7, 16), rows past a tile (17, 33), widths of 1 to 5 blocks, odd n.</summary>
    [Theory]
    [MemberData(nameof(QuantizedTypes))]
    public void QuantizedMatchesReferenceOnSmallShapes(DType dtype)
    {
        var rng = new Random(11);
        int checkedCount = 0;
        foreach (int m in new[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 33 })
            foreach (int k in new[] { 32, 64, 96, 160 })
                for (int n = 1; n <= 67; n += (n < 20 ? 1 : 7))
                {
                    Compare(rng, m, k, n, dtype);
                    checkedCount++;
                }
        output.WriteLine($"{dtype}: {checkedCount} shapes OK");
    }

    /// <summary>Many blocks per row, k blocks of the dot kernel (m 8-16, k past 512) and of the GEMM (k past 256, m past
    /// its 384-row block), the panel widths (15, 16), and many rows.</summary>
    [Theory]
    [MemberData(nameof(QuantizedTypes))]
    public void QuantizedMatchesReferenceOnLargerShapes(DType dtype)
    {
        var rng = new Random(12);
        foreach (var (m, k, n) in new[] { (1, 1056, 131), (2, 544, 67), (3, 1088, 37), (4, 2080, 33), (7, 608, 41), (16, 1088, 37),
            (12, 1120, 21), (8, 576, 19), (15, 1600, 35), (16, 2080, 40), (31, 320, 33), (64, 544, 37), (65, 800, 21), (130, 320, 41), (400, 544, 40) })
            Compare(rng, m, k, n, dtype);
    }

    /// <summary>Few rows against 4+ MiB of quantized W, split across the shared pool's threads.</summary>
    [Theory]
    [MemberData(nameof(QuantizedTypes))]
    public void QuantizedStreamedProductsMatchReference(DType dtype)
    {
        var rng = new Random(13);
        int scale = dtype == DType.Q8_0 ? 1 : 2;
        foreach (var (m, k, n) in new[] { (1, 2048, 2051 * scale), (3, 1024, 4099 * scale), (4, 2048, 2063 * scale) })
            Compare(rng, m, k, n, dtype);
    }

    [Theory]
    [MemberData(nameof(QuantizedTypes))]
    public void QuantizedEveryPathAndVariantMatchesReference(DType dtype)
    {
        var rng = new Random(14);
        var shapes = new[] { (1, 1056, 70), (2, 288, 131), (4, 608, 37), (7, 320, 19), (12, 1120, 21), (16, 544, 33), (16, 1600, 40), (20, 320, 41), (40, 704, 19) };
        OnEveryPathAndVariant(rng, shapes, dtype);
    }

    /// <summary>Blocks whose scale is zero (all-zero weights), subnormal in f16 (tiny weights), or large, beside ordinary
    /// ones, on every path.</summary>
    [Theory]
    [MemberData(nameof(QuantizedTypes))]
    public void QuantizedBlocksOfExtremeScalesMatchReference(DType dtype)
    {
        var rng = new Random(15);
        try
        {
            foreach (var path in Enum.GetValues<MatMul.Path>())
            {
                MatMul.Forced = path;
                foreach (var (m, k, n) in new[] { (1, 256, 37), (3, 256, 21), (16, 512, 17), (40, 288, 19) })
                {
                    var w = TestData.Random(rng, n * k);
                    for (int b = 0; b < w.Length / 32; b++)
                    {
                        float f = (b % 4) switch { 0 => 0f, 1 => 1e-6f, 2 => 300f, _ => 1f };
                        for (int j = 0; j < 32; j++) w[b * 32 + j] *= f;
                    }
                    Compare(rng, m, k, n, dtype, w);
                }
            }
        }
        finally
        {
            MatMul.Forced = MatMul.Path.Auto;
        }
    }

    [Theory]
    [MemberData(nameof(QuantizedTypes))]
    public void SeveralQuantizedWeightsOfOneInputMatchSeparateProducts(DType dtype)
    {
        var rng = new Random(16);
        foreach (var (m, k, ns) in new[] { (1, 64, new[] { 5, 33 }), (3, 160, new[] { 16, 9, 40 }), (10, 288, new[] { 64, 17, 17 }),
            (16, 1088, new[] { 35, 48, 20 }), (2, 704, new[] { 1601, 1599 }), (20, 96, new[] { 7, 30, 3 }), (130, 64, new[] { 21, 16, 33 }) })
            CompareSeveral(rng, m, k, ns, dtype);
    }

    [Theory]
    [MemberData(nameof(QuantizedTypes))]
    public void QuantizedRowsHoldWholeBlocks(DType dtype)
    {
        using var b = new NativeBuffer(4096);
        var e = Assert.Throws<ArgumentException>(() => new WeightMatrix(b.Address, dtype, 4, 48));
        Assert.Contains("whole blocks", e.Message);
    }

    private static void Compare(Random rng, int m, int k, int n, DType dtype) => Compare(rng, m, k, n, dtype, TestData.Random(rng, n * k));

    private static unsafe void Compare(Random rng, int m, int k, int n, DType dtype, float[] weights)
    {
        var x = TestData.Random(rng, m * k);
        using var wb = NativeBuffer.From(weights, dtype, out var ws);
        var w = new WeightMatrix(wb.Address, dtype, n, k);
        var expected = new float[m * n];
        var actual = new float[m * n + 3];
        actual[^1] = actual[^2] = actual[^3] = 42;
        MatMul.MultiplyReference(x, w, expected, m);
        MatMul.Multiply(x, w, actual, m);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double bound = 0;
                for (int p = 0; p < k; p++) bound += Math.Abs(x[i * k + p] * ws[j * k + p]);
                double tol = 1e-5 * bound + 1e-30;
                double diff = Math.Abs(expected[i * n + j] - actual[i * n + j]);
                Assert.True(diff <= tol, $"m={m} k={k} n={n} {dtype}: y[{i},{j}] = {actual[i * n + j]}, reference {expected[i * n + j]}");
            }
        Assert.Equal(42f, actual[^1]);
        Assert.Equal(42f, actual[^3]);
    }

    // every shape compared against the reference with each path forced, then with each variant turned off
    private static void OnEveryPathAndVariant(Random rng, (int M, int K, int N)[] shapes, DType dtype)
    {
        try
        {
            foreach (var path in Enum.GetValues<MatMul.Path>())
            {
                MatMul.Forced = path;
                foreach (var (m, k, n) in shapes) Compare(rng, m, k, n, dtype);
            }
            MatMul.Forced = MatMul.Path.Auto;
            foreach (var v in Enum.GetValues<MatMul.Variants>())
            {
                MatMul.Off = v;
                foreach (var (m, k, n) in shapes) Compare(rng, m, k, n, dtype);
            }
        }
        finally
        {
            MatMul.Forced = MatMul.Path.Auto;
            MatMul.Off = MatMul.Variants.None;
        }
    }

    // two or three weights of one input in one call against separate reference products
    private static void CompareSeveral(Random rng, int m, int k, int[] ns, DType dtype)
    {
        var x = TestData.Random(rng, m * k);
        var buffers = ns.Select(n => NativeBuffer.From(TestData.Random(rng, n * k), dtype, out _)).ToArray();
        try
        {
            var w = buffers.Select((b, i) => new WeightMatrix(b.Address, dtype, ns[i], k)).ToArray();
            var y = ns.Select(n => new float[m * n]).ToArray();
            if (ns.Length == 2) MatMul.Multiply(x, w[0], y[0], w[1], y[1], m);
            else MatMul.Multiply(x, w[0], y[0], w[1], y[1], w[2], y[2], m);
            for (int i = 0; i < ns.Length; i++)
            {
                var expected = new float[m * ns[i]];
                MatMul.MultiplyReference(x, w[i], expected, m);
                for (int j = 0; j < expected.Length; j++)
                    Assert.True(Math.Abs(expected[j] - y[i][j]) <= 1e-4 * (1 + Math.Abs(expected[j])), $"m={m} k={k} {dtype}: output {i} [{j}] = {y[i][j]}, reference {expected[j]}");
            }
    }
        finally
        {
            foreach (var b in buffers) b.Dispose();
    }
        }
}
