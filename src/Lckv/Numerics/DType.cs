using System.Runtime.CompilerServices;

namespace Lckv.Numerics;

/// <summary>Element types of weights, KV storage and checkpoint tensors.</summary>
public enum DType : byte
{
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    /// <summary>llama.cpp's Q8_0: blocks of 32 weights along a row, an f16 scale then 32 int8 (34 bytes).</summary>
    Q8_0,
    /// <summary>llama.cpp's Q4_0: blocks of 32 weights, an f16 scale then 16 bytes of 4-bit values offset by 8 (18 bytes);
    /// byte j holds element j in its low nibble and element j + 16 in its high nibble.</summary>
    Q4_0,
    /// <summary>KV storage: per (position, KV head) row of D int8 then one f32 scale (kv-compression.md §5).</summary>
    KvInt8,
    /// <summary>KV storage: per (position, KV head) row of D/2 bytes of 4-bit values then D/32 f32 group scales.</summary>
    KvQ4,
}

public static class DTypes
{
    public static int SizeOf(DType t) => t switch
    {
        DType.F32 or DType.I32 => 4,
        DType.F16 or DType.BF16 or DType.I16 => 2,
        DType.F64 or DType.I64 => 8,
        DType.I8 or DType.U8 or DType.Bool => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, "not a per-element dtype"),
    };

    /// <summary>Weights per quantization block (1 for per-element types).</summary>
    public static int BlockElements(DType t) => IsBlockQuantized(t) ? 32 : 1;

    /// <summary>Bytes per quantization block (the element size for per-element types).</summary>
    public static int BlockBytes(DType t) => t switch
    {
        DType.Q8_0 => 34,
        DType.Q4_0 => 18,
        _ => SizeOf(t),
    };

    public static bool IsBlockQuantized(DType t) => t is DType.Q8_0 or DType.Q4_0;

    /// <summary>Bytes of a row of cols elements; a block-quantized row must hold whole blocks.</summary>
    public static long RowBytes(DType t, long cols)
    {
        int be = BlockElements(t);
        if (cols % be != 0) throw new ArgumentException($"{Name(t)} rows hold whole blocks of {be}, not {cols} elements");
        return cols / be * BlockBytes(t);
    }

    /// <summary>The safetensors spelling ("F32", "BF16", ...).</summary>
    public static string Name(DType t) => t switch
    {
        DType.F32 => "F32", DType.F16 => "F16", DType.BF16 => "BF16", DType.F64 => "F64",
        DType.I64 => "I64", DType.I32 => "I32", DType.I16 => "I16", DType.I8 => "I8", DType.U8 => "U8",
        DType.Bool => "BOOL", DType.Q8_0 => "Q8_0", DType.Q4_0 => "Q4_0",
        DType.KvInt8 => "INT8", DType.KvQ4 => "Q4",
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    public static bool TryParse(string name, out DType t)
    {
        switch (name)
        {
            case "F32": t = DType.F32; return true;
            case "F16": t = DType.F16; return true;
            case "BF16": t = DType.BF16; return true;
            case "F64": t = DType.F64; return true;
            case "I64": t = DType.I64; return true;
            case "I32": t = DType.I32; return true;
            case "I16": t = DType.I16; return true;
            case "I8": t = DType.I8; return true;
            case "U8": t = DType.U8; return true;
            case "BOOL": t = DType.Bool; return true;
            default: t = default; return false;
        }
    }

    /// <summary>Parses a user-facing name: f32, f16, bf16 (also float32, float16, bfloat16).</summary>
    public static DType ParseFloat(string name)
        => FloatNamed(name) ?? throw new FormatException($"unknown float dtype '{name}' (expected f32, f16 or bf16)");

    /// <summary>Parses a user-facing weight dtype: a float name of <see cref="ParseFloat"/>, or q8_0 / q4_0.</summary>
    public static DType ParseWeight(string name) => name.ToLowerInvariant() switch
    {
        "q8_0" => DType.Q8_0,
        "q4_0" => DType.Q4_0,
        _ => FloatNamed(name) ?? throw new FormatException($"unknown weight dtype '{name}' (expected f32, f16, bf16, q8_0 or q4_0)"),
    };

    private static DType? FloatNamed(string name) => name.ToLowerInvariant() switch
    {
        "f32" or "float32" or "float" => DType.F32,
        "f16" or "float16" or "half" => DType.F16,
        "bf16" or "bfloat16" => DType.BF16,
        _ => null,
    };

    /// <summary>Whether matrices may hold this dtype: f32, f16, bf16, Q8_0 or Q4_0.</summary>
    public static bool IsWeight(DType t) => IsFloat(t) || IsBlockQuantized(t);

    public static bool IsFloat(DType t) => t is DType.F32 or DType.F16 or DType.BF16;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BF16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>Round to nearest even, NaN kept quiet.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort SingleToBF16(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if ((u & 0x7FFF_FFFFu) > 0x7F80_0000u) return (ushort)((u >> 16) | 0x40);
        u += 0x7FFFu + ((u >> 16) & 1u);
        return (ushort)(u >> 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float F16ToSingle(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort SingleToF16(float value) => BitConverter.HalfToUInt16Bits((Half)value);
}
