using Lckv.Numerics;

namespace Lckv.Tests.Numerics;

/// <summary>The Q8_0 and Q4_0 quantizers (llama.cpp's reference rules) on hand-computed blocks, their properties on
/// random rows, and the matrix's view of quantized rows.</summary>
[Trait("Category", "Kernels")]
public class QuantizeTests
{
    private static ushort Scale(byte[] q, int block, int blockBytes) => BitConverter.ToUInt16(q, block * blockBytes);

    [Fact]
    public void Q8_0RoundsHalvesAwayFromZeroAgainstTheBlockMaximum()
    {
        var x = new float[96];
        // block 0: max |x| = 127, so d = 1 and q = round(x)
        float[] b0 = [0.5f, -0.5f, 2.5f, -2.5f, 1.49f, 127f, -126.6f, 3f];
        b0.CopyTo(x, 0);
        // block 1: all zero; block 2: max |x| = 254, d = 2, q = round(x / 2)
        float[] b2 = [3f, -3f, 5f, -254f, 1f, 0.99f];
        b2.CopyTo(x, 64);
        var q = new byte[3 * 34];
        Quantize.Q8_0(x, q);
        Assert.Equal(0x3C00, Scale(q, 0, 34)); // f16 1.0
        sbyte[] e0 = [1, -1, 3, -3, 1, 127, -127, 3];
        for (int j = 0; j < 32; j++) Assert.Equal(j < e0.Length ? e0[j] : 0, (sbyte)q[2 + j]);
        Assert.All(q.AsSpan(34, 34).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(0x4000, Scale(q, 2, 34)); // f16 2.0
        sbyte[] e2 = [2, -2, 3, -127, 1, 0];
        for (int j = 0; j < 32; j++) Assert.Equal(j < e2.Length ? e2[j] : 0, (sbyte)q[68 + 2 + j]);
    }

    [Fact]
    public void Q4_0MapsTheSignedMaximumToCodeZero()
    {
        var x = new float[96];
        // block 0: the largest magnitude is -8, so d = -8 / -8 = 1 and code = min(15, trunc(x + 8.5))
        float[] b0 = [-8f, 7f, 7.4f, 0f, -0.5f, 0.49f, 0.5f, -7.6f];
        b0.CopyTo(x, 0);
        x[16] = 3f; // value 16 shares byte 0 with value 0, in the high nibble
        // block 1: the largest magnitude is +8: d = -1, so 8 maps to code 0 and -8 clamps to code 15 (dequantized -7)
        x[32] = 8f; x[33] = -8f; x[34] = 1f;
        // block 2: equal magnitudes -4 then +4: the first is the maximum (d = 0.5), and +4 clamps to code 15
        x[64] = -4f; x[65] = 4f;
        var q = new byte[3 * 18];
        Quantize.Q4_0(x, q);
        Assert.Equal(0x3C00, Scale(q, 0, 18)); // 1.0
        int[] codes0 = [0, 15, 15, 8, 8, 8, 9, 0];
        int Code(int block, int j) => j < 16 ? q[block * 18 + 2 + j] & 15 : q[block * 18 + 2 + j - 16] >> 4;
        for (int j = 0; j < 32; j++) Assert.Equal(j < codes0.Length ? codes0[j] : j == 16 ? 11 : 8, Code(0, j));
        Assert.Equal(0xBC00, Scale(q, 1, 18)); // -1.0
        Assert.Equal(0, Code(1, 0));
        Assert.Equal(15, Code(1, 1));
        Assert.Equal(7, Code(1, 2)); // -1 * (7 - 8) = 1
        Assert.Equal(0x3800, Scale(q, 2, 18)); // 0.5
        Assert.Equal(0, Code(2, 0));
        Assert.Equal(15, Code(2, 1));
        var back = new float[96];
        Quantize.Dequantize(DType.Q4_0, q, back);
        Assert.Equal(-8f, back[0]);
        Assert.Equal(8f, back[32]);
        Assert.Equal(-7f, back[33]);
        Assert.Equal(3.5f, back[65]);
    }

    [Fact]
    public void AllZeroBlocksHaveZeroScaleAndCodes()
    {
        var x = new float[64];
        var q8 = new byte[68];
        var q4 = new byte[36];
        Quantize.Q8_0(x, q8);
        Quantize.Q4_0(x, q4);
        Assert.All(q8, b => Assert.Equal(0, b));
        for (int b = 0; b < 2; b++)
        {
            Assert.Equal(0x8000, Scale(q4, b, 18)); // d = 0 / -8 is -0 in f32, and so in f16
            for (int j = 2; j < 18; j++) Assert.Equal(0x88, q4[b * 18 + j]); // code 8 is zero
        }
        var back = new float[64];
        Quantize.Dequantize(DType.Q4_0, q4, back);
        Assert.All(back, v => Assert.Equal(0f, v));
    }

    /// <summary>Round trip: |x - x'| within half a step (Q8_0: plus the f16 rounding of d, up to 127 of its relative
    /// 2^-11), Q4_0 within a step (the clamp at +8 steps), and the block's maximum keeps its sign.</summary>
    [Theory]
    [InlineData(DType.Q8_0)]
    [InlineData(DType.Q4_0)]
    public void RoundTripStaysWithinTheStep(DType dtype)
    {
        var rng = new Random(21);
        int bb = DTypes.BlockBytes(dtype);
        for (int trial = 0; trial < 200; trial++)
        {
            float scale = MathF.Pow(10, rng.Next(-4, 4));
            var x = TestData.Random(rng, 32 * 8, scale);
            var q = new byte[8 * bb];
            Quantize.Row(dtype, x, q);
            var back = new float[x.Length];
            Quantize.Dequantize(dtype, q, back);
            for (int b = 0; b < 8; b++)
            {
                int arg = 0;
                for (int j = 1; j < 32; j++) if (MathF.Abs(x[b * 32 + j]) > MathF.Abs(x[b * 32 + arg])) arg = j;
                float max = x[b * 32 + arg];
                Assert.Equal(MathF.Sign(max), MathF.Sign(back[b * 32 + arg]));
                // the step before and after its rounding to f16 (subnormal for the smallest rows)
                double d = dtype == DType.Q8_0 ? MathF.Abs(max) / 127 : Math.Abs(max / -8f);
                double d16 = Math.Abs(DTypes.F16ToSingle(Scale(q, b, bb)));
                double bound = dtype == DType.Q8_0 ? 0.5 * d + 127 * Math.Abs(d - d16) : d + 8 * Math.Abs(d - d16);
                for (int j = 0; j < 32; j++)
                {
                    int i = b * 32 + j;
                    Assert.True(Math.Abs(x[i] - back[i]) <= bound * (1 + 1e-5), $"{dtype} [{i}] {x[i]} -> {back[i]} (step {d}, f16 {d16})");
                }
            }
        }
    }

    /// <summary>What a quantizer writes dequantizes to what the matrix indexer and ReadRow give (the embedding's lookup).</summary>
    [Theory]
    [InlineData(DType.Q8_0)]
    [InlineData(DType.Q4_0)]
    public void MatrixReadsDequantizedRows(DType dtype)
    {
        var rng = new Random(22);
        int rows = 5, cols = 96;
        using var b = NativeBuffer.From(TestData.Random(rng, rows * cols), dtype, out var stored);
        var w = new WeightMatrix(b.Address, dtype, rows, cols);
        Assert.Equal(rows * DTypes.RowBytes(dtype, cols), w.ByteLength);
        var row = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            w.ReadRow(r, row);
            for (int c = 0; c < cols; c++)
            {
                Assert.Equal(stored[r * cols + c], row[c]);
                Assert.Equal(stored[r * cols + c], w[r, c]);
            }
        }
    }

    [Fact]
    public void ShortDestinationsAndPartialBlocksAreErrors()
    {
        Assert.Throws<ArgumentException>(() => Quantize.Q8_0(new float[32], new byte[33]));
        Assert.Throws<ArgumentException>(() => Quantize.Q4_0(new float[48], new byte[64]));
        Assert.Throws<ArgumentException>(() => Quantize.Row(DType.I8, new float[32], new byte[64]));
    }
}
