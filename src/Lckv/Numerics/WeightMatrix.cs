using System.Runtime.CompilerServices;

namespace Lckv.Numerics;

/// <summary>
/// A row-major matrix [Rows, Cols] of f32, f16 or bf16 elements, or of Q8_0 / Q4_0 blocks along each row (Cols a
/// multiple of 32), in memory this struct does not own (a memory-mapped checkpoint or a native buffer). Weights are
/// [out, in]: Rows = n, Cols = k. Kernels widen or dequantize values to f32 in registers; nothing converts the whole
/// matrix.
/// </summary>
public readonly unsafe struct WeightMatrix
{
    public readonly nint Data;
    public readonly DType DType;
    public readonly int Rows;
    public readonly int Cols;

    public WeightMatrix(nint data, DType dtype, int rows, int cols)
    {
        if (!DTypes.IsFloat(dtype) && !DTypes.IsBlockQuantized(dtype))
            throw new ArgumentException($"weights must be f32, f16, bf16, Q8_0 or Q4_0, not {dtype}");
        if (rows < 0 || cols < 0) throw new ArgumentOutOfRangeException(nameof(rows));
        if (cols % DTypes.BlockElements(dtype) != 0)
            throw new ArgumentException($"{DTypes.Name(dtype)} rows hold whole blocks of {DTypes.BlockElements(dtype)} values, not {cols}");
        Data = data;
        DType = dtype;
        Rows = rows;
        Cols = cols;
    }

    public long ByteLength => Rows * RowBytes;

    /// <summary>Bytes of one row.</summary>
    public long RowBytes => DTypes.RowBytes(DType, Cols);

    /// <summary>Element (r, c) widened or dequantized to f32; for references and tests, not hot loops.</summary>
    public float this[int r, int c]
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            long i = (long)r * Cols + c;
            return DType switch
            {
                DType.F32 => ((float*)Data)[i],
                DType.BF16 => DTypes.BF16ToSingle(((ushort*)Data)[i]),
                DType.F16 => DTypes.F16ToSingle(((ushort*)Data)[i]),
                DType.Q8_0 => Q8_0Element.At((byte*)Data + r * RowBytes, c),
                _ => Q4_0Element.At((byte*)Data + r * RowBytes, c),
            };
        }
    }

    /// <summary>Copies row r widened or dequantized to f32 into dst (length Cols).</summary>
    public void ReadRow(int r, Span<float> dst)
    {
        if ((uint)r >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(r));
        if (dst.Length < Cols) throw new ArgumentException("destination too short", nameof(dst));
        byte* row = (byte*)Data + r * RowBytes;
        if (DTypes.IsBlockQuantized(DType)) Quantize.Dequantize(DType, new ReadOnlySpan<byte>(row, (int)RowBytes), dst[..Cols]);
        else Convert.Widen((nint)row, DType, dst[..Cols]);
    }
}
