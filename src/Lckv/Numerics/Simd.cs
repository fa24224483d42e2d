using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lckv.Numerics;

/// <summary>
/// Loads of stored elements (weights, KV) widened to f32 in registers. Kernels are generic over one of these so the
/// JIT specialises each dtype; nothing is converted in memory.
/// </summary>
internal unsafe interface IElement
{
    static abstract int Size { get; }
    static abstract float Load1(byte* p);
    static abstract Vector256<float> Load256(byte* p);
    static abstract Vector512<float> Load512(byte* p);
}

internal unsafe struct F32Element : IElement, IWeight
{
    public static int Size => 4;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Load1(byte* p) => *(float*)p;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load256(byte* p) => Vector256.Load((float*)p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Load512(byte* p) => Vector512.Load((float*)p);

    public static int Block => 1;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static long Bytes(long n) => n * 4;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(byte* w, long p) => ((float*)w)[p];
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> At256(byte* w, long p) => Vector256.Load((float*)w + p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> At512(byte* w, long p) => Vector512.Load((float*)w + p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> First(byte* w) => Vector512.Load((float*)w);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Second(byte* w) => Vector512.Load((float*)w + 16);
}

/// <summary>bf16: zero-extend 16 -> 32 bits and shift left 16. The row-blocked kernel's halves of 32 values are the even
/// and the odd ones: 32 values loaded as 16 uints, even ones by a shift, odd ones by a mask, without a cross-lane widening.</summary>
internal unsafe struct BF16Element : IElement, IWeight
{
    public static int Size => 2;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Load1(byte* p) => DTypes.BF16ToSingle(*(ushort*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load256(byte* p)
        => Vector256.ShiftLeft(Vector256.WidenLower(Vector128.Load((ushort*)p).ToVector256Unsafe()), 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load512(byte* p)
        => Vector512.ShiftLeft(Vector512.WidenLower(Vector256.Load((ushort*)p).ToVector512Unsafe()), 16).AsSingle();

    public static int Block => 1;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static long Bytes(long n) => n * 2;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(byte* w, long p) => Load1(w + p * 2);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> At256(byte* w, long p) => Load256(w + p * 2);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> At512(byte* w, long p) => Load512(w + p * 2);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> First(byte* w) => Vector512.ShiftLeft(Vector512.Load((uint*)w), 16).AsSingle();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Second(byte* w) => (Vector512.Load((uint*)w) & Vector512.Create(0xFFFF0000u)).AsSingle();
}

/// <summary>
/// f16 by bit manipulation (the runtime exposes no vcvtph2ps): exponent rebias for normals, a magic subtraction for
/// subnormals, Inf/NaN kept. Exact for every input.
/// </summary>
internal unsafe struct F16Element : IElement, IWeight
{
    public static int Size => 2;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Load1(byte* p) => DTypes.F16ToSingle(*(ushort*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load256(byte* p)
        => Bits256(Vector256.WidenLower(Vector128.Load((ushort*)p).ToVector256Unsafe()));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load512(byte* p)
        => Bits512(Vector512.WidenLower(Vector256.Load((ushort*)p).ToVector512Unsafe()));

    public static int Block => 1;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static long Bytes(long n) => n * 2;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(byte* w, long p) => Load1(w + p * 2);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> At256(byte* w, long p) => Load256(w + p * 2);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> At512(byte* w, long p) => Load512(w + p * 2);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> First(byte* w) => Load512(w);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Second(byte* w) => Load512(w + 32);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Bits512(Vector512<uint> h)
    {
        var em = h & Vector512.Create(0x7FFFu);
        var sign = Vector512.ShiftLeft(h & Vector512.Create(0x8000u), 16);
        var o = Vector512.ShiftLeft(em, 13);
        var exp = em & Vector512.Create(0x7C00u);
        var normal = o + Vector512.Create(0x3800_0000u);
        var special = o + Vector512.Create(0x7000_0000u);
        var sub = ((o + Vector512.Create(0x3880_0000u)).AsSingle() - Vector512.Create(0x3880_0000u).AsSingle()).AsUInt32();
        var r = Vector512.ConditionalSelect(Vector512.Equals(exp, Vector512.Create(0x7C00u)), special,
            Vector512.ConditionalSelect(Vector512.Equals(exp, Vector512<uint>.Zero), sub, normal));
        return (r | sign).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Bits256(Vector256<uint> h)
    {
        var em = h & Vector256.Create(0x7FFFu);
        var sign = Vector256.ShiftLeft(h & Vector256.Create(0x8000u), 16);
        var o = Vector256.ShiftLeft(em, 13);
        var exp = em & Vector256.Create(0x7C00u);
        var normal = o + Vector256.Create(0x3800_0000u);
        var special = o + Vector256.Create(0x7000_0000u);
        var sub = ((o + Vector256.Create(0x3880_0000u)).AsSingle() - Vector256.Create(0x3880_0000u).AsSingle()).AsUInt32();
        var r = Vector256.ConditionalSelect(Vector256.Equals(exp, Vector256.Create(0x7C00u)), special,
            Vector256.ConditionalSelect(Vector256.Equals(exp, Vector256<uint>.Zero), sub, normal));
        return (r | sign).AsSingle();
    }
}

internal static unsafe class Simd
{
    /// <summary>The dot product of a and b over d values (short rows, where a library call's own cost would show).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Dot(float* a, float* b, int d)
    {
        int i = 0;
        float s = 0;
        if (Vector512.IsHardwareAccelerated && d >= 16)
        {
            var acc = Vector512<float>.Zero;
            for (; i <= d - 16; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), acc);
            if (i <= d - 8) { s = Vector256.Sum(Vector256.Load(a + i) * Vector256.Load(b + i)); i += 8; }
            s += Vector512.Sum(acc);
        }
        else if (Vector256.IsHardwareAccelerated && d >= 8)
        {
            var acc = Vector256<float>.Zero;
            for (; i <= d - 8; i += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), acc);
            s = Vector256.Sum(acc);
        }
        for (; i < d; i++) s += a[i] * b[i];
        return s;
    }

    /// <summary>y[i] += a * x[i] for i below n (short rows, where a library call's own cost would show).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void MultiplyAdd(float* x, float a, float* y, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var va = Vector512.Create(a);
            for (; i + 16 <= n; i += 16) Vector512.FusedMultiplyAdd(Vector512.Load(x + i), va, Vector512.Load(y + i)).Store(y + i);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var va = Vector256.Create(a);
            for (; i + 8 <= n; i += 8) Vector256.FusedMultiplyAdd(Vector256.Load(x + i), va, Vector256.Load(y + i)).Store(y + i);
        }
        for (; i < n; i++) y[i] = MathF.FusedMultiplyAdd(x[i], a, y[i]);
    }

    /// <summary>Asks for the cache lines of `bytes` bytes at p into the first-level cache (a hint, as below).</summary>
    public static void PrefetchL1(byte* p, long bytes)
    {
        if (!Sse.IsSupported || bytes <= 0) return;
        byte* end = p + bytes;
        for (byte* at = p; at < end; at += 64) Sse.Prefetch0(at);
        Sse.Prefetch0(end - 1);
    }

    /// <summary>Asks for the cache lines of a span into the second-level cache (a hint: nothing on processors without
    /// prefetch instructions), for data read soon after a stretch of other work.</summary>
    public static void PrefetchL2(ReadOnlySpan<float> data)
    {
        if (!Sse.IsSupported || data.IsEmpty) return;
        fixed (float* p = data)
        {
            byte* at = (byte*)p, end = at + data.Length * sizeof(float);
            for (; at < end; at += 64) Sse.Prefetch1(at);
            Sse.Prefetch1(end - 1);
        }
    }

    /// <summary>Widens n stored elements at src to f32 at dst with the widest vectors available.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Widen<TE>(byte* src, float* dst, int n) where TE : struct, IElement
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= n - 16; i += 16) TE.Load512(src + (long)i * TE.Size).Store(dst + i);
        if (Vector256.IsHardwareAccelerated)
            for (; i <= n - 8; i += 8) TE.Load256(src + (long)i * TE.Size).Store(dst + i);
        for (; i < n; i++) dst[i] = TE.Load1(src + (long)i * TE.Size);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Widen(DType dtype, byte* src, float* dst, int n)
    {
        switch (dtype)
        {
            case DType.F32: Widen<F32Element>(src, dst, n); break;
            case DType.BF16: Widen<BF16Element>(src, dst, n); break;
            case DType.F16: Widen<F16Element>(src, dst, n); break;
            default: throw new ArgumentException($"cannot widen {dtype}");
        }
    }

    // the horizontal sums of a, b, c, d
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<float> Sum4(Vector512<float> a, Vector512<float> b, Vector512<float> c, Vector512<float> d)
    {
        var a2 = a.GetLower() + a.GetUpper();
        var b2 = b.GetLower() + b.GetUpper();
        var c2 = c.GetLower() + c.GetUpper();
        var d2 = d.GetLower() + d.GetUpper();
        var abcd = Avx.HorizontalAdd(Avx.HorizontalAdd(a2, b2), Avx.HorizontalAdd(c2, d2));
        return abcd.GetLower() + abcd.GetUpper();
    }

    // the horizontal sums of a, b, c, d (256-bit)
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<float> Sum4(Vector256<float> a, Vector256<float> b, Vector256<float> c, Vector256<float> d)
    {
        var abcd = Avx.HorizontalAdd(Avx.HorizontalAdd(a, b), Avx.HorizontalAdd(c, d));
        return abcd.GetLower() + abcd.GetUpper();
    }

    /// <summary>e^x for x &lt;= 0 in 256-bit lanes, the range reduction and polynomial of <see cref="ExpClamped"/>; below
    /// -87.3 the result is 2^-126 times a number below 2 (not 0 or a subnormal); NaN stays NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> ExpNonPositive(Vector256<float> x)
    {
        var xc = Avx.Max(Vector256.Create(-87.3f), x); // maxps returns its second operand, x, when x is NaN
        var n = Vector256.Round(xc * Vector256.Create(1.44269504088896341f));
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-0.693359375f), xc);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(2.12194440e-4f), r);
        var p = Vector256.Create(1.9875691500e-4f);
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(1.3981999507e-3f));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(8.3334519073e-3f));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(4.1665795894e-2f));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(1.6666665459e-1f));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(5.0000001201e-1f));
        p = Vector256.FusedMultiplyAdd(p * r, r, r) + Vector256<float>.One;
        // 2^n for n in [-126, 0] by its exponent bits
        var scale = (Vector256.ConvertToInt32(n) + Vector256.Create(127)) << 23;
        return p * scale.AsSingle();
    }

    /// <summary>e^x for x in [-87.5, 88.75] (no special cases): p(r) * 2^n with n = round(x / ln 2), r = x - n ln 2.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> ExpClamped(Vector512<float> xc)
    {
        var n = Vector512.Round(xc * Vector512.Create(1.44269504088896341f));
        // r = x - n ln2, ln2 split in two so that n * hi is exact
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-0.693359375f), xc);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(2.12194440e-4f), r);
        var p = Vector512.Create(1.9875691500e-4f);
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1.3981999507e-3f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(8.3334519073e-3f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(4.1665795894e-2f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1.6666665459e-1f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(5.0000001201e-1f));
        p = Vector512.FusedMultiplyAdd(p * r, r, r) + Vector512<float>.One;
        return Avx512F.Scale(p, n); // p * 2^n
    }

    /// <summary>
    /// exp(x) in f32, within 2 ulp of the exact value (the range reduction and polynomial of Cephes'
    /// expf), inlined: the library's Vector512.Exp is a call that works in f64. Below -87.3 the result is 0, above 88.7
    /// it is +inf; NaN stays NaN.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Exp(Vector512<float> x)
    {
        var e = ExpClamped(Vector512.Min(Vector512.Max(x, Vector512.Create(-87.5f)), Vector512.Create(88.75f)));
        e = Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512.Create(-87.33654f)), Vector512<float>.Zero, e);
        e = Vector512.ConditionalSelect(Vector512.GreaterThan(x, Vector512.Create(88.72283f)), Vector512.Create(float.PositiveInfinity), e);
        return Vector512.ConditionalSelect(Vector512.Equals(x, x), e, x);
    }
}
