using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lckv.Numerics;

/// <summary>
/// Weight values as the matrix kernels read them, widened or dequantized to f32 in registers. A value is addressed by
/// its index p in a row, counted from a position w on a block boundary (any position for per-element types; a multiple
/// of 32 values for Q8_0 and Q4_0), so that quantized rows read like widened ones. The JIT specialises each kernel
/// per type.
/// </summary>
internal unsafe interface IWeight
{
    /// <summary>Values per block: 1, or 32 for the block-quantized types.</summary>
    static abstract int Block { get; }
    /// <summary>Bytes of n values from a block boundary (whole blocks for block types).</summary>
    static abstract long Bytes(long n);
    /// <summary>Value p.</summary>
    static abstract float At(byte* w, long p);
    /// <summary>Values [p, p + 8), p a multiple of 8.</summary>
    static abstract Vector256<float> At256(byte* w, long p);
    /// <summary>Values [p, p + 16), p a multiple of 16.</summary>
    static abstract Vector512<float> At512(byte* w, long p);
    /// <summary>The first 16 of the 32 values at w in the order the row-blocked kernel packs x (bf16: the even ones).</summary>
    static abstract Vector512<float> First(byte* w);
    /// <summary>The other 16 of the 32 values at w (bf16: the odd ones).</summary>
    static abstract Vector512<float> Second(byte* w);
}

/// <summary>
/// f32 values of every f16 bit pattern (256 KiB, on a cache line): a block's scale is one load, as the runtime exposes
/// no vcvtph2ps. The products touch it (<see cref="EnsureCreated"/>) before their kernels are compiled: a kernel
/// compiled while the class is not yet initialized checks for it on every read, a call that makes the JIT keep the
/// kernel's accumulators on the stack.
/// </summary>
internal static unsafe class F16Table
{
    public static readonly float* Values = Create();

    public static void EnsureCreated() => RuntimeHelpers.RunClassConstructor(typeof(F16Table).TypeHandle);

    private static float* Create()
    {
        var t = (float*)NativeMemory.AlignedAlloc(65536 * sizeof(float), 64);
        for (int i = 0; i < 65536; i++) t[i] = DTypes.F16ToSingle((ushort)i);
        return t;
    }
}

/// <summary>Q8_0: blocks of an f16 scale d and 32 int8 q (34 bytes); value = d * q, exact in f32.</summary>
internal unsafe struct Q8_0Element : IWeight
{
    public static int Block => 32;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long Bytes(long n) => (n >> 5) * 34;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Scale(byte* block) => F16Table.Values[*(ushort*)block];

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float At(byte* w, long p)
    {
        byte* b = w + (p >> 5) * 34;
        return Scale(b) * ((sbyte*)b)[2 + (p & 31)];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> At256(byte* w, long p)
    {
        byte* b = w + (p >> 5) * 34;
        var q = Avx2.ConvertToVector256Int32((sbyte*)b + 2 + (p & 31));
        return Vector256.ConvertToSingle(q) * Vector256.Create(Scale(b));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> At512(byte* w, long p)
    {
        byte* b = w + (p >> 5) * 34;
        return Values16(b, 2 + (p & 31));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> First(byte* w) => Values16(w, 2);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Second(byte* w) => Values16(w, 18);

    // the 16 int8 at block + offset, times the block's scale
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Values16(byte* block, long offset)
    {
        var q = Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)block + offset));
        return Vector512.ConvertToSingle(q) * Vector512.Create(Scale(block));
    }
}

/// <summary>
/// Q4_0: blocks of an f16 scale d and 16 bytes (18 bytes); byte j holds code c of value j in its low nibble and of value
/// j + 16 in its high nibble; value = d * (c - 8), exact in f32. 512-bit: the 16 possible values of a block, d * (c - 8),
/// are one vector, and each code picks its value with a lane permute (which reads the low 4 bits of each index).
/// </summary>
internal unsafe struct Q4_0Element : IWeight
{
    public static int Block => 32;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long Bytes(long n) => (n >> 5) * 18;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Scale(byte* block) => F16Table.Values[*(ushort*)block];

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float At(byte* w, long p)
    {
        byte* b = w + (p >> 5) * 18;
        int j = (int)(p & 31);
        int code = j < 16 ? b[2 + j] & 15 : b[2 + j - 16] >> 4;
        return Scale(b) * (code - 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> At256(byte* w, long p)
    {
        byte* b = w + (p >> 5) * 18;
        int j = (int)(p & 31);
        var bytes = Avx2.ConvertToVector256Int32(b + 2 + (j & 15));
        var codes = j < 16 ? bytes & Vector256.Create(15) : Vector256.ShiftRightLogical(bytes, 4);
        return Vector256.ConvertToSingle(codes - Vector256.Create(8)) * Vector256.Create(Scale(b));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> At512(byte* w, long p) => (p & 16) == 0 ? First(w + (p >> 5) * 18) : Second(w + (p >> 5) * 18);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> First(byte* w)
        => Avx512F.PermuteVar16x32(Values(w), Avx512F.ConvertToVector512Int32(Vector128.Load(w + 2)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Second(byte* w)
        => Avx512F.PermuteVar16x32(Values(w), Vector512.ShiftRightLogical(Avx512F.ConvertToVector512Int32(Vector128.Load(w + 2)), 4));

    // d * (c - 8) for c = 0..15
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Values(byte* block)
        => Vector512.Create(-8f, -7f, -6f, -5f, -4f, -3f, -2f, -1f, 0f, 1f, 2f, 3f, 4f, 5f, 6f, 7f) * Vector512.Create(Scale(block));
}
