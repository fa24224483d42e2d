namespace Lckv.Numerics;

/// <summary>Element conversions between f32 and the 16-bit storage types.</summary>
public static unsafe class Convert
{
    /// <summary>dst[i] = (float)src[i] for src in f32/f16/bf16 at a raw address.</summary>
    public static void Widen(nint src, DType dtype, Span<float> dst)
    {
        switch (dtype)
        {
            case DType.F32:
                new ReadOnlySpan<float>((void*)src, dst.Length).CopyTo(dst);
                break;
            case DType.BF16:
                WidenBF16(new ReadOnlySpan<ushort>((void*)src, dst.Length), dst);
                break;
            case DType.F16:
                System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>((void*)src, dst.Length), dst);
                break;
            default:
                throw new ArgumentException($"cannot widen {dtype}");
        }
    }

    /// <summary>Narrows f32 values to the storage dtype at a raw address (round to nearest even).</summary>
    public static void Narrow(ReadOnlySpan<float> src, DType dtype, nint dst)
    {
        switch (dtype)
        {
            case DType.F32:
                src.CopyTo(new Span<float>((void*)dst, src.Length));
                break;
            case DType.BF16:
                NarrowBF16(src, new Span<ushort>((void*)dst, src.Length));
                break;
            case DType.F16:
                System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(src, new Span<Half>((void*)dst, src.Length));
                break;
            default:
                throw new ArgumentException($"cannot narrow to {dtype}");
        }
    }

    public static void WidenBF16(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        for (int i = 0; i < src.Length; i++) dst[i] = DTypes.BF16ToSingle(src[i]);
    }

    public static void NarrowBF16(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        for (int i = 0; i < src.Length; i++) dst[i] = DTypes.SingleToBF16(src[i]);
    }
}
