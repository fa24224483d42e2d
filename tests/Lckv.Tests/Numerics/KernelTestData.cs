using System.Runtime.InteropServices;
using Lckv.Numerics;

namespace Lckv.Tests.Numerics;

/// <summary>Native buffers holding values in a storage dtype, for kernels that read raw addresses.</summary>
internal sealed unsafe class NativeBuffer : IDisposable
{
    public nint Address { get; private set; }
    public long Bytes { get; }

    public NativeBuffer(long bytes)
    {
        Bytes = bytes;
        Address = (nint)NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), 64);
        new Span<byte>((void*)Address, (int)bytes).Clear();
    }

    /// <summary>Stores values narrowed or quantized to dtype (blocks of 32 along the array: rows of whole blocks stay
    /// whole); returns the values as the kernel will see them (rounded or dequantized).</summary>
    public static NativeBuffer From(float[] values, DType dtype, out float[] stored)
    {
        long bytes = DTypes.RowBytes(dtype, values.Length);
        var b = new NativeBuffer(bytes);
        var span = new Span<byte>((void*)b.Address, (int)bytes);
        Quantize.Row(dtype, values, span);
        stored = new float[values.Length];
        Quantize.Dequantize(dtype, span, stored);
        return b;
    }

    /// <summary>Blocks of a KV pool in any KV format, every row random (values in [-scale, scale]) and stored as the
    /// cache stores it.</summary>
    public static NativeBuffer KvBlocks(Random rng, KvLayout layout, int blocks, float scale = 1f)
    {
        var b = new NativeBuffer(blocks * layout.BlockBytes);
        long rows = blocks * 2L * layout.BlockSize * layout.KvHeads;
        KvRows.Store(TestData.Random(rng, (int)(rows * layout.HeadDim), scale), layout.DType, layout.HeadDim, b.Address);
        return b;
    }

    public void Dispose()
    {
        if (Address != 0) NativeMemory.AlignedFree((void*)Address);
        Address = 0;
    }
}

internal static class TestData
{
    public static float[] Random(Random rng, int n, float scale = 1f)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        return a;
    }

    public static readonly DType[] FloatTypes = [DType.F32, DType.F16, DType.BF16];

    /// <summary>Every KV storage format.</summary>
    public static readonly DType[] KvTypes = [DType.F32, DType.F16, DType.BF16, DType.KvInt8, DType.KvQ4];

    public static readonly DType[] QuantizedTypes = [DType.Q8_0, DType.Q4_0];
}
