using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

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
        if (dst.Length < src.Length) throw new ArgumentException("destination too short", nameof(dst));
        fixed (ushort* s = src)
        fixed (float* d = dst)
            Simd.Widen<BF16Element>((byte*)s, d, src.Length);
    }

    /// <summary>Round to nearest even, NaN kept quiet (as <see cref="DTypes.SingleToBF16"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void NarrowBF16(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException("destination too short", nameof(dst));
        int n = src.Length, i = 0;
        fixed (float* ps = src)
        fixed (ushort* pd = dst)
        {
            uint* s = (uint*)ps;
            if (Vector512.IsHardwareAccelerated)
                for (; i <= n - 32; i += 32)
                    Vector512.Narrow(RoundBF16(Vector512.Load(s + i)), RoundBF16(Vector512.Load(s + i + 16))).Store(pd + i);
            if (Vector256.IsHardwareAccelerated)
                for (; i <= n - 16; i += 16)
                    Vector256.Narrow(RoundBF16(Vector256.Load(s + i)), RoundBF16(Vector256.Load(s + i + 8))).Store(pd + i);
            for (; i < n; i++) pd[i] = DTypes.SingleToBF16(ps[i]);
        }
    }

    // the bf16 bits in the low half of each lane
    private static Vector512<uint> RoundBF16(Vector512<uint> u)
    {
        var nan = Vector512.GreaterThan(u & Vector512.Create(0x7FFF_FFFFu), Vector512.Create(0x7F80_0000u));
        var rounded = Vector512.ShiftRightLogical(u + Vector512.Create(0x7FFFu) + (Vector512.ShiftRightLogical(u, 16) & Vector512<uint>.One), 16);
        return Vector512.ConditionalSelect(nan, Vector512.ShiftRightLogical(u, 16) | Vector512.Create(0x40u), rounded);
    }

    private static Vector256<uint> RoundBF16(Vector256<uint> u)
    {
        var nan = Vector256.GreaterThan(u & Vector256.Create(0x7FFF_FFFFu), Vector256.Create(0x7F80_0000u));
        var rounded = Vector256.ShiftRightLogical(u + Vector256.Create(0x7FFFu) + (Vector256.ShiftRightLogical(u, 16) & Vector256<uint>.One), 16);
        return Vector256.ConditionalSelect(nan, Vector256.ShiftRightLogical(u, 16) | Vector256.Create(0x40u), rounded);
    }
}
