using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Lckv.Numerics;

/// <summary>dst = x * rsqrt(mean(x^2) + eps) * weight, per row of length weight.Cols, in f32.</summary>
public static unsafe class RmsNorm
{
    // x is (rows, c), weight is (1, c) in its checkpoint dtype, dst is (rows, c); dst may alias x
    public static void Apply(ReadOnlySpan<float> x, in WeightMatrix weight, float eps, Span<float> dst, int rows)
    {
        int c = weight.Cols;
        if (rows <= 0 || c == 0) return;
        if (x.Length < (long)rows * c) throw new ArgumentException($"x holds {x.Length} values, needs {rows}x{c}", nameof(x));
        if (dst.Length < (long)rows * c) throw new ArgumentException($"dst holds {dst.Length} values, needs {rows}x{c}", nameof(dst));
        fixed (float* px = x, pd = dst)
        {
            var w = (byte*)weight.Data;
            int grain = Math.Max(1, 16384 / c);
            switch (weight.DType)
            {
                case DType.F32: WorkerPool.Shared.Run(rows, new Job<F32Element> { X = px, W = w, D = pd, C = c, Eps = eps }, grain); break;
                case DType.BF16: WorkerPool.Shared.Run(rows, new Job<BF16Element> { X = px, W = w, D = pd, C = c, Eps = eps }, grain); break;
                case DType.F16: WorkerPool.Shared.Run(rows, new Job<F16Element> { X = px, W = w, D = pd, C = c, Eps = eps }, grain); break;
                default: throw new ArgumentException($"weights must be f32, f16 or bf16, not {weight.DType}");
            }
        }
    }

    public static void ApplyReference(ReadOnlySpan<float> x, in WeightMatrix weight, float eps, Span<float> dst, int rows)
    {
        int c = weight.Cols;
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * c, c);
            float ss = 0;
            for (int i = 0; i < c; i++) ss += xr[i] * xr[i];
            float inv = 1f / MathF.Sqrt(ss / c + eps);
            var dr = dst.Slice(r * c, c);
            for (int i = 0; i < c; i++) dr[i] = weight[0, i] * (xr[i] * inv);
        }
    }

    private struct Job<TE> : IRangeBody where TE : struct, IElement
    {
        public float* X, D;
        public byte* W;
        public int C;
        public float Eps;

        public readonly void Invoke(int start, int end)
        {
            for (int r = start; r < end; r++) Row<TE>(X + (long)r * C, W, C, Eps, D + (long)r * C);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Row<TE>(float* x, byte* w, int c, float eps, float* d) where TE : struct, IElement
    {
        int i = 0;
        float ss = 0;
        if (Vector512.IsHardwareAccelerated && c >= 16)
        {
            var a0 = Vector512<float>.Zero; var a1 = a0;
            for (; i <= c - 32; i += 32)
            {
                var v0 = Vector512.Load(x + i); var v1 = Vector512.Load(x + i + 16);
                a0 = Vector512.FusedMultiplyAdd(v0, v0, a0); a1 = Vector512.FusedMultiplyAdd(v1, v1, a1);
            }
            for (; i <= c - 16; i += 16) { var v = Vector512.Load(x + i); a0 = Vector512.FusedMultiplyAdd(v, v, a0); }
            ss = Vector512.Sum(a0 + a1);
        }
        else if (Vector256.IsHardwareAccelerated && c >= 8)
        {
            var a0 = Vector256<float>.Zero;
            for (; i <= c - 8; i += 8) { var v = Vector256.Load(x + i); a0 = Vector256.FusedMultiplyAdd(v, v, a0); }
            ss = Vector256.Sum(a0);
        }
        for (; i < c; i++) ss += x[i] * x[i];
        float inv = 1f / MathF.Sqrt(ss / c + eps);
        i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var s = Vector512.Create(inv);
            for (; i <= c - 16; i += 16) (TE.Load512(w + (long)i * TE.Size) * (Vector512.Load(x + i) * s)).Store(d + i);
        }
        if (Vector256.IsHardwareAccelerated)
        {
            var s = Vector256.Create(inv);
            for (; i <= c - 8; i += 8) (TE.Load256(w + (long)i * TE.Size) * (Vector256.Load(x + i) * s)).Store(d + i);
        }
        for (; i < c; i++) d[i] = TE.Load1(w + (long)i * TE.Size) * (x[i] * inv);
    }
}
