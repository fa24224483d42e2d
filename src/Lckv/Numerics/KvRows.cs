using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lckv.Numerics;

/// <summary>
/// How one (position, KV head) row of D values is stored in a KV block (kv-compression.md §5): f32, f16 or bf16
/// elements; int8 (D signed bytes, then the f32 scale amax / 127); or q4 (D/2 bytes, then D/32 f32 scales amax / 7, one
/// per group of 32 values; byte j of a group holds value j in its low nibble and value j + 16 in its high nibble, each
/// stored as q + 8). Quantized values are q = clamp(round_half_even(x / scale)), read back as q * scale; a zero amax
/// stores zeros with scale 0.
/// </summary>
public static unsafe class KvRows
{
    public const int Q4Group = 32;

    public static bool IsKvDType(DType t) => DTypes.IsFloat(t) || t is DType.KvInt8 or DType.KvQ4;

    /// <summary>Parses a user-facing KV dtype: f32, f16, bf16, int8 or q4.</summary>
    public static DType Parse(string name) => name.ToLowerInvariant() switch
    {
        "int8" => DType.KvInt8,
        "q4" => DType.KvQ4,
        "f32" or "float32" => DType.F32,
        "f16" or "float16" => DType.F16,
        "bf16" or "bfloat16" => DType.BF16,
        _ => throw new LckvException($"unknown KV dtype '{name}' (expected f32, f16, bf16, int8 or q4)"),
    };

    /// <summary>The user-facing spelling (f32, f16, bf16, int8, q4).</summary>
    public static string Name(DType t) => t switch
    {
        DType.KvInt8 => "int8",
        DType.KvQ4 => "q4",
        _ => DTypes.Name(t).ToLowerInvariant(),
    };

    /// <summary>Throws when rows of headDim values cannot be stored as t.</summary>
    public static void Check(DType t, int headDim)
    {
        if (!IsKvDType(t)) throw new LckvException($"KV storage dtype {DTypes.Name(t)} is not supported (f32, f16, bf16, int8 or q4)");
        if (t == DType.KvQ4 && headDim % Q4Group != 0)
            throw new LckvException($"q4 KV needs a head dim that is a multiple of {Q4Group}; this model's is {headDim}");
    }

    /// <summary>Bytes of one row of d values, scales included.</summary>
    public static int RowBytes(DType t, int d) => t switch
    {
        DType.KvInt8 => d + 4,
        DType.KvQ4 => d / 2 + 4 * (d / Q4Group),
        _ => d * DTypes.SizeOf(t),
    };

    /// <summary>Stores src (whole rows of d values, one after another) as consecutive rows at dst.</summary>
    public static void Store(ReadOnlySpan<float> src, DType t, int d, nint dst)
    {
        if (src.Length % d != 0) throw new ArgumentException($"{src.Length} values are not whole rows of {d}");
        switch (t)
        {
            case DType.KvInt8:
                for (int r = 0; r < src.Length / d; r++) StoreInt8(src.Slice(r * d, d), (byte*)dst + (long)r * (d + 4));
                break;
            case DType.KvQ4:
                int rowBytes = RowBytes(t, d);
                for (int r = 0; r < src.Length / d; r++) StoreQ4(src.Slice(r * d, d), (byte*)dst + (long)r * rowBytes);
                break;
            default:
                Convert.Narrow(src, t, dst);
                break;
        }
    }

    /// <summary>Reads consecutive rows of d values at src into dst (whole rows), widened to f32.</summary>
    public static void Load(nint src, DType t, int d, Span<float> dst)
    {
        if (dst.Length % d != 0) throw new ArgumentException($"{dst.Length} values are not whole rows of {d}");
        int rowBytes = RowBytes(t, d);
        fixed (float* pd = dst)
            for (int r = 0; r < dst.Length / d; r++)
            {
                byte* row = (byte*)src + (long)r * rowBytes;
                switch (t)
                {
                    case DType.KvInt8: Int8Row.Widen(row, pd + (long)r * d, d); break;
                    case DType.KvQ4: Q4Row.Widen(row, pd + (long)r * d, d); break;
                    default: Simd.Widen(t, row, pd + (long)r * d, d); break;
                }
            }
    }

    /// <summary>Reads rows one value at a time (no vectors): the definition the kernels are tested against.</summary>
    public static void LoadReference(nint src, DType t, int d, Span<float> dst)
    {
        int rowBytes = RowBytes(t, d);
        for (int r = 0; r < dst.Length / d; r++)
        {
            byte* row = (byte*)src + (long)r * rowBytes;
            var o = dst.Slice(r * d, d);
            switch (t)
            {
                case DType.KvInt8:
                    for (int i = 0; i < d; i++) o[i] = ((sbyte*)row)[i] * *(float*)(row + d);
                    break;
                case DType.KvQ4:
                    for (int i = 0; i < d; i++)
                    {
                        int grp = i / Q4Group, j = i % Q4Group;
                        byte b = row[grp * (Q4Group / 2) + j % (Q4Group / 2)];
                        int nib = j < Q4Group / 2 ? b & 0xF : b >> 4;
                        o[i] = (nib - 8) * ((float*)(row + d / 2))[grp];
                    }
                    break;
                case DType.F32: new ReadOnlySpan<float>(row, d).CopyTo(o); break;
                case DType.BF16: for (int i = 0; i < d; i++) o[i] = DTypes.BF16ToSingle(((ushort*)row)[i]); break;
                case DType.F16: for (int i = 0; i < d; i++) o[i] = DTypes.F16ToSingle(((ushort*)row)[i]); break;
                default: throw new ArgumentException($"cannot read {t} KV rows");
            }
        }
    }

    // scale = amax / 127 and q = clamp(round_half_even(x / scale), -127, 127), in f32 as the contract says
    private static void StoreInt8(ReadOnlySpan<float> x, byte* row)
    {
        float amax = 0;
        foreach (float v in x) amax = MathF.Max(amax, MathF.Abs(v));
        float scale = amax / 127f;
        sbyte* q = (sbyte*)row;
        for (int i = 0; i < x.Length; i++)
            q[i] = scale == 0 ? (sbyte)0 : (sbyte)Math.Clamp(MathF.Round(x[i] / scale, MidpointRounding.ToEven), -127f, 127f);
        *(float*)(row + x.Length) = scale;
    }

    // per group of 32: scale = amax / 7, q = clamp(round_half_even(x / scale), -7, 7) stored as q + 8
    private static void StoreQ4(ReadOnlySpan<float> x, byte* row)
    {
        int d = x.Length, half = Q4Group / 2;
        float* scales = (float*)(row + d / 2);
        for (int grp = 0; grp < d / Q4Group; grp++)
        {
            var g = x.Slice(grp * Q4Group, Q4Group);
            float amax = 0;
            foreach (float v in g) amax = MathF.Max(amax, MathF.Abs(v));
            float scale = amax / 7f;
            byte* b = row + grp * half;
            for (int j = 0; j < half; j++) b[j] = (byte)(Nibble(g[j], scale) | Nibble(g[j + half], scale) << 4);
            scales[grp] = scale;
        }
    }

    private static int Nibble(float x, float scale)
        => 8 + (scale == 0 ? 0 : (int)Math.Clamp(MathF.Round(x / scale, MidpointRounding.ToEven), -7f, 7f));
}

/// <summary>A KV row format the attention kernel reads: its bytes and its widening to f32 in registers.</summary>
internal unsafe interface IKvRow
{
    static abstract int Bytes(int d);
    static abstract void Widen(byte* row, float* dst, int d);
}

/// <summary>Rows of f32, f16 or bf16 elements.</summary>
internal unsafe struct FloatRow<TE> : IKvRow where TE : struct, IElement
{
    public static int Bytes(int d) => d * TE.Size;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Widen(byte* row, float* dst, int d) => Simd.Widen<TE>(row, dst, d);
}

/// <summary>int8 rows: sign-extend 16 (or 8) bytes to int32, convert, times the row's scale.</summary>
internal unsafe struct Int8Row : IKvRow
{
    public static int Bytes(int d) => d + 4;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Widen(byte* row, float* dst, int d)
    {
        float scale = *(float*)(row + d);
        sbyte* q = (sbyte*)row;
        int i = 0;
        if (Avx512F.IsSupported)
        {
            var vs = Vector512.Create(scale);
            for (; i <= d - 16; i += 16) (Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(q + i))) * vs).Store(dst + i);
        }
        if (Avx2.IsSupported)
        {
            var vs = Vector256.Create(scale);
            for (; i <= d - 8; i += 8) (Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + i)) * vs).Store(dst + i);
        }
        for (; i < d; i++) dst[i] = q[i] * scale;
    }
}

/// <summary>q4 rows: per group, the low nibbles are values 0..15 and the high nibbles 16..31, minus 8, times the scale.</summary>
internal unsafe struct Q4Row : IKvRow
{
    public static int Bytes(int d) => d / 2 + 4 * (d / KvRows.Q4Group);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Widen(byte* row, float* dst, int d)
    {
        float* scales = (float*)(row + d / 2);
        for (int grp = 0; grp < d / KvRows.Q4Group; grp++)
        {
            byte* b = row + grp * 16;
            float* o = dst + grp * KvRows.Q4Group;
            float scale = scales[grp];
            if (Avx2.IsSupported)
            {
                var bytes = Vector128.Load(b);
                var lo = bytes & Vector128.Create((byte)0xF);
                var hi = Vector128.ShiftRightLogical(bytes.AsUInt16(), 4).AsByte() & Vector128.Create((byte)0xF);
                if (Avx512F.IsSupported)
                {
                    var vs = Vector512.Create(scale);
                    var eight = Vector512.Create(8);
                    (Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(lo) - eight) * vs).Store(o);
                    (Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(hi) - eight) * vs).Store(o + 16);
                }
                else
                {
                    var vs = Vector256.Create(scale);
                    var eight = Vector256.Create(8);
                    (Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(lo) - eight) * vs).Store(o);
                    (Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(lo, 8)) - eight) * vs).Store(o + 8);
                    (Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(hi) - eight) * vs).Store(o + 16);
                    (Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(hi, 8)) - eight) * vs).Store(o + 24);
                }
                continue;
            }
            for (int j = 0; j < 16; j++)
            {
                o[j] = ((b[j] & 0xF) - 8) * scale;
                o[j + 16] = ((b[j] >> 4) - 8) * scale;
            }
        }
    }
}
