using System.Runtime.Intrinsics;
using Lckv.Numerics;
using Xunit.Abstractions;

namespace Lckv.Tests.Numerics;

/// <summary>The KV row formats: quantization as kv-compression.md §5 defines it, and the vector widening against the
/// value-by-value reference.</summary>
[Trait("Category", "Kernels")]
public sealed unsafe class KvRowsTests(ITestOutputHelper output)
{
    private static float[] RoundTrip(float[] x, DType t, int d, out byte[] bytes)
    {
        using var b = new NativeBuffer(KvRows.RowBytes(t, d) * (long)(x.Length / d));
        KvRows.Store(x, t, d, b.Address);
        bytes = new ReadOnlySpan<byte>((void*)b.Address, (int)b.Bytes).ToArray();
        var y = new float[x.Length];
        KvRows.Load(b.Address, t, d, y);
        return y;
    }

    [Fact]
    public void Int8RoundsHalfToEvenWithTheScaleOfTheRowsMaximum()
    {
        // amax 127 gives scale 1: 2.5 -> 2 and -3.5 -> -4 (half to even), 0.49 -> 0
        float[] x = [2.5f, -3.5f, 0.49f, -127f, 126.5f];
        var y = RoundTrip(x, DType.KvInt8, 5, out var bytes);
        Assert.Equal([2f, -4f, 0f, -127f, 126f], y);
        Assert.Equal(1f, BitConverter.ToSingle(bytes, 5));
        Assert.Equal(9, bytes.Length); // D + 4
    }

    [Fact]
    public void Q4StoresEachGroupWithItsOwnScale()
    {
        // group 0: amax 7, scale 1 (3.5 -> 4, -2.5 -> -2); group 1: amax 14, scale 2 (5 -> 2, -3 -> -2 half to even)
        var x = new float[64];
        x[0] = 7f; x[1] = 3.5f; x[17] = -2.5f;
        x[32] = -14f; x[33] = 5f; x[50] = -3f;
        var y = RoundTrip(x, DType.KvQ4, 64, out var bytes);
        Assert.Equal(64 / 2 + 2 * 4, bytes.Length);
        Assert.Equal(7f, y[0]); Assert.Equal(4f, y[1]); Assert.Equal(-2f, y[17]);
        Assert.Equal(-14f, y[32]); Assert.Equal(4f, y[33]); Assert.Equal(-4f, y[50]);
        Assert.Equal(0f, y[2]);
        // byte 1 of group 0 holds value 1 (q 4) low and value 17 (q -2) high, each plus 8
        Assert.Equal((byte)(12 | 6 << 4), bytes[1]);
        Assert.Equal(1f, BitConverter.ToSingle(bytes, 32));
        Assert.Equal(2f, BitConverter.ToSingle(bytes, 36));
    }

    [Theory]
    [InlineData(DType.KvInt8)]
    [InlineData(DType.KvQ4)]
    public void ZeroRowsStoreZeroScales(DType t)
    {
        var y = RoundTrip(new float[64], t, 64, out var bytes);
        Assert.All(y, v => Assert.Equal(0f, v));
        Assert.Equal(0f, BitConverter.ToSingle(bytes, bytes.Length - 4));
    }

    [Theory]
    [InlineData(DType.KvInt8, 127)]
    [InlineData(DType.KvQ4, 7)]
    public void ErrorIsAtMostHalfAStep(DType t, int levels)
    {
        var rng = new Random(5);
        int d = 96;
        var x = TestData.Random(rng, 7 * d, 3f);
        var y = RoundTrip(x, t, d, out _);
        int group = t == DType.KvQ4 ? KvRows.Q4Group : d;
        for (int g = 0; g < x.Length / group; g++)
        {
            var xs = x.AsSpan(g * group, group);
            float step = xs.ToArray().Max(MathF.Abs) / levels;
            for (int i = 0; i < group; i++)
                Assert.True(MathF.Abs(xs[i] - y[g * group + i]) <= step / 2 * (1 + 1e-5f), $"{t}: value {g * group + i}");
        }
    }

    [Theory]
    [InlineData(DType.KvInt8, 1)]
    [InlineData(DType.KvInt8, 7)]
    [InlineData(DType.KvInt8, 23)]
    [InlineData(DType.KvInt8, 64)]
    [InlineData(DType.KvInt8, 66)]
    [InlineData(DType.KvQ4, 32)]
    [InlineData(DType.KvQ4, 96)]
    [InlineData(DType.F16, 19)]
    [InlineData(DType.BF16, 64)]
    public void VectorWideningEqualsTheReferenceExactly(DType t, int d)
    {
        var rng = new Random(d);
        var x = TestData.Random(rng, 5 * d, 4f);
        using var b = new NativeBuffer(KvRows.RowBytes(t, d) * 5L);
        KvRows.Store(x, t, d, b.Address);
        var vec = new float[x.Length];
        var reference = new float[x.Length];
        KvRows.Load(b.Address, t, d, vec);
        KvRows.LoadReference(b.Address, t, d, reference);
        Assert.Equal(reference, vec);
        output.WriteLine($"{t} d={d}: 512-bit {Vector512.IsHardwareAccelerated}, 256-bit {Vector256.IsHardwareAccelerated}");
    }

    [Fact]
    public void Q4NeedsWholeGroupsAndUnknownNamesAreErrors()
    {
        var e = Assert.Throws<LckvException>(() => KvRows.Check(DType.KvQ4, 48));
        Assert.Contains("multiple of 32", e.Message);
        Assert.Throws<LckvException>(() => KvRows.Parse("int4"));
        Assert.Equal(DType.KvInt8, KvRows.Parse("INT8"));
        Assert.Equal("q4", KvRows.Name(DType.KvQ4));
        Assert.Equal(2 * (64 + 4), 2 * KvRows.RowBytes(DType.KvInt8, 64));
        Assert.Equal(2 * (64 / 2 + 4 * 2), 2 * KvRows.RowBytes(DType.KvQ4, 64));
    }
}
