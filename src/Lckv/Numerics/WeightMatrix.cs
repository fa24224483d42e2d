using System.Runtime.CompilerServices;

namespace Lckv.Numerics;

/// <summary>
/// A row-major matrix [Rows, Cols] of f32, f16 or bf16 elements in memory this struct does not own
/// (a memory-mapped checkpoint or a native buffer). Weights are [out, in]: Rows = n, Cols = k.
/// Kernels widen elements to f32 in registers; nothing converts the whole matrix.
/// </summary>
public readonly unsafe struct WeightMatrix
{
    public readonly nint Data;
    public readonly DType DType;
    public readonly int Rows;
    public readonly int Cols;

    public WeightMatrix(nint data, DType dtype, int rows, int cols)
    {
        if (!DTypes.IsFloat(dtype)) throw new ArgumentException($"weights must be f32, f16 or bf16, not {dtype}");
        if (rows < 0 || cols < 0) throw new ArgumentOutOfRangeException(nameof(rows));
        Data = data;
        DType = dtype;
        Rows = rows;
        Cols = cols;
    }

    public long ByteLength => (long)Rows * Cols * DTypes.SizeOf(DType);

    /// <summary>Element (r, c) widened to f32; for references and tests, not hot loops.</summary>
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
                _ => DTypes.F16ToSingle(((ushort*)Data)[i]),
            };
        }
    }

    /// <summary>Copies row r widened to f32 into dst (length Cols).</summary>
    public void ReadRow(int r, Span<float> dst)
    {
        if ((uint)r >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(r));
        if (dst.Length < Cols) throw new ArgumentException("destination too short", nameof(dst));
        Convert.Widen(Data + (nint)((long)r * Cols * DTypes.SizeOf(DType)), DType, dst[..Cols]);
    }
}
