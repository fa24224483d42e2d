using System.Runtime.InteropServices;

namespace Lckv.Numerics;

/// <summary>
/// Rows of f32 values into the weight dtypes and back: llama.cpp's block quantizations Q8_0 and Q4_0 byte for byte as
/// its reference quantizers (quantize_row_q8_0_ref and quantize_row_q4_0_ref in ggml-quants.c), and f32/f16/bf16 by
/// rounding to nearest even. A block is 32 consecutive values of a row; rows hold whole blocks.
/// </summary>
public static class Quantize
{
    /// <summary>
    /// Q8_0: per block, d = max|x| / 127 stored as f16, and q = round(x * (1 / d)) (halves away from zero), where 1 / d
    /// is taken of the f32 d before it is rounded to f16 (0 for an all-zero block). Dequantized, x ≈ f16(d) * q.
    /// </summary>
    public static void Q8_0(ReadOnlySpan<float> row, Span<byte> dst)
    {
        int blocks = Check(DType.Q8_0, row, dst);
        for (int b = 0; b < blocks; b++)
        {
            var x = row.Slice(b * 32, 32);
            var o = dst.Slice(b * 34, 34);
            float amax = 0;
            for (int j = 0; j < 32; j++)
            {
                float a = MathF.Abs(x[j]);
                amax = amax > a ? amax : a; // as C's MAX(amax, a): a NaN reaches amax
            }
            float d = amax / 127;
            float id = d != 0 ? 1f / d : 0f;
            MemoryMarshal.Write(o, DTypes.SingleToF16(d));
            for (int j = 0; j < 32; j++) o[2 + j] = (byte)(sbyte)(int)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
        }
    }

    /// <summary>
    /// Q4_0: per block, max is the value of largest magnitude (the first of equal ones), d = max / -8 stored as f16, and
    /// the 4-bit code of x is min(15, trunc(x * (1 / d) + 8.5)), so that max maps to code 0 (-8 d) and its sign is kept;
    /// 1 / d is taken of the f32 d (0 for an all-zero block). Byte j holds value j in its low nibble and value j + 16 in
    /// its high nibble. Dequantized, x ≈ f16(d) * (code - 8).
    /// </summary>
    public static void Q4_0(ReadOnlySpan<float> row, Span<byte> dst)
    {
        int blocks = Check(DType.Q4_0, row, dst);
        for (int b = 0; b < blocks; b++)
        {
            var x = row.Slice(b * 32, 32);
            var o = dst.Slice(b * 18, 18);
            float amax = 0, max = 0;
            for (int j = 0; j < 32; j++)
            {
                float a = MathF.Abs(x[j]);
                if (amax < a)
                {
                    amax = a;
                    max = x[j];
                }
            }
            float d = max / -8;
            float id = d != 0 ? 1f / d : 0f;
            MemoryMarshal.Write(o, DTypes.SingleToF16(d));
            for (int j = 0; j < 16; j++)
            {
                // the products are rounded to f32 before the offset is added (no fused multiply-add), as in the reference
                float x0 = x[j] * id, x1 = x[j + 16] * id;
                int q0 = Math.Min(15, (int)(x0 + 8.5f)), q1 = Math.Min(15, (int)(x1 + 8.5f));
                o[2 + j] = (byte)(q0 | (q1 << 4));
            }
        }
    }

    /// <summary>A row of f32 values stored as dtype: quantized (Q8_0, Q4_0) or rounded to nearest even (f16, bf16).</summary>
    public static unsafe void Row(DType dtype, ReadOnlySpan<float> row, Span<byte> dst)
    {
        switch (dtype)
        {
            case DType.Q8_0: Q8_0(row, dst); break;
            case DType.Q4_0: Q4_0(row, dst); break;
            case DType.F32 or DType.F16 or DType.BF16:
                if (dst.Length < DTypes.RowBytes(dtype, row.Length)) throw new ArgumentException("destination too short", nameof(dst));
                fixed (byte* p = dst) Convert.Narrow(row, dtype, (nint)p);
                break;
            default: throw new ArgumentException($"weights are f32, f16, bf16, Q8_0 or Q4_0, not {DTypes.Name(dtype)}");
        }
    }

    /// <summary>The f32 values of a row stored as dtype (dst.Length values; whole blocks for Q8_0 and Q4_0): for the
    /// block types f16(d) * q, which f32 holds exactly.</summary>
    public static unsafe void Dequantize(DType dtype, ReadOnlySpan<byte> src, Span<float> dst)
    {
        if (src.Length < DTypes.RowBytes(dtype, dst.Length)) throw new ArgumentException($"{DTypes.Name(dtype)}: {src.Length} bytes hold fewer than {dst.Length} values", nameof(src));
        switch (dtype)
        {
            case DType.Q8_0:
                for (int b = 0; b < dst.Length / 32; b++)
                {
                    var blk = src.Slice(b * 34, 34);
                    float d = DTypes.F16ToSingle(MemoryMarshal.Read<ushort>(blk));
                    for (int j = 0; j < 32; j++) dst[b * 32 + j] = d * (sbyte)blk[2 + j];
                }
                break;
            case DType.Q4_0:
                for (int b = 0; b < dst.Length / 32; b++)
                {
                    var blk = src.Slice(b * 18, 18);
                    float d = DTypes.F16ToSingle(MemoryMarshal.Read<ushort>(blk));
                    for (int j = 0; j < 16; j++)
                    {
                        dst[b * 32 + j] = d * ((blk[2 + j] & 15) - 8);
                        dst[b * 32 + j + 16] = d * ((blk[2 + j] >> 4) - 8);
                    }
                }
                break;
            case DType.F32 or DType.F16 or DType.BF16:
                fixed (byte* p = src) Convert.Widen((nint)p, dtype, dst);
                break;
            default: throw new ArgumentException($"weights are f32, f16, bf16, Q8_0 or Q4_0, not {DTypes.Name(dtype)}");
        }
    }

    private static int Check(DType dtype, ReadOnlySpan<float> row, Span<byte> dst)
    {
        long bytes = DTypes.RowBytes(dtype, row.Length);
        if (dst.Length < bytes) throw new ArgumentException($"{DTypes.Name(dtype)}: {row.Length} values need {bytes} bytes, the destination holds {dst.Length}", nameof(dst));
        return row.Length / 32;
    }
}
