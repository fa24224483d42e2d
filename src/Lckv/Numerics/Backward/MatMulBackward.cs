using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Lckv.Numerics.Backward;

/// <summary>
/// Gradients of y = x·Wᵀ (x [m, k], W [n, k], y [m, n], all f32): dx = dy·W and dW += dyᵀ·x.
/// Both are one blocked GEMM C[M, N] (+)= A[M, K]·B[K, N] with A read through strides (so dyᵀ needs no copy) and B
/// row-major; a 4-row x 2-vector register tile accumulates over k with A broadcast. Work is split across the
/// <see cref="WorkerPool"/> in tiles of C, so no two threads write the same element.
/// </summary>
public static unsafe class MatMulBackward
{
    private const int KC = 256; // k block: a B panel of KC rows x TileCols stays in L2
    private const int TileRows = 64;
    private const int TileCols = 128;

    /// <summary>dx (+)= dy · w.</summary>
    // dy is (m, n), w is (n, k), dx is (m, k)
    public static void InputGradient(ReadOnlySpan<float> dy, ReadOnlySpan<float> w, Span<float> dx, int m, int n, int k, bool accumulate)
    {
        Check(dy, (long)m * n, nameof(dy));
        Check(w, (long)n * k, nameof(w));
        Check(dx, (long)m * k, nameof(dx));
        fixed (float* pdy = dy, pw = w, pdx = dx)
            Gemm(pdy, n, 1, pw, k, pdx, k, m, k, n, accumulate);
    }

    /// <summary>dw += dyᵀ · x.</summary>
    // dy is (m, n), x is (m, k), dw is (n, k)
    public static void WeightGradient(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, Span<float> dw, int m, int n, int k)
    {
        Check(dy, (long)m * n, nameof(dy));
        Check(x, (long)m * k, nameof(x));
        Check(dw, (long)n * k, nameof(dw));
        fixed (float* pdy = dy, px = x, pdw = dw)
            Gemm(pdy, 1, n, px, k, pdw, k, n, k, m, accumulate: true);
    }

    /// <summary>Scalar reference of <see cref="InputGradient"/>: one f32 chain per output in n order.</summary>
    public static void InputGradientReference(ReadOnlySpan<float> dy, ReadOnlySpan<float> w, Span<float> dx, int m, int n, int k, bool accumulate)
    {
        for (int r = 0; r < m; r++)
            for (int c = 0; c < k; c++)
            {
                float s = 0;
                for (int o = 0; o < n; o++) s += dy[r * n + o] * w[o * k + c];
                dx[r * k + c] = accumulate ? dx[r * k + c] + s : s;
            }
    }

    /// <summary>Scalar reference of <see cref="WeightGradient"/>: one f32 chain per output in m order.</summary>
    public static void WeightGradientReference(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, Span<float> dw, int m, int n, int k)
    {
        for (int o = 0; o < n; o++)
            for (int c = 0; c < k; c++)
            {
                float s = 0;
                for (int r = 0; r < m; r++) s += dy[r * n + o] * x[r * k + c];
                dw[o * k + c] += s;
            }
    }

    private static void Check(ReadOnlySpan<float> s, long need, string name)
    {
        if (s.Length < need) throw new ArgumentException($"{name} holds {s.Length} values, needs {need}", name);
    }

    // C[M, N] (+)= A[M, K]·B[K, N]; A(i, p) = a[i*ars + p*aks]; B(p, j) = b[p*ldb + j]; C(i, j) = c[i*ldc + j]
    private static void Gemm(float* a, long ars, long aks, float* b, long ldb, float* c, long ldc, int mm, int nn, int kk, bool accumulate)
    {
        if (mm <= 0 || nn <= 0) return;
        int rowTiles = (mm + TileRows - 1) / TileRows, colTiles = (nn + TileCols - 1) / TileCols;
        var job = new GemmJob
        {
            A = a, B = b, C = c, Ars = ars, Aks = aks, Ldb = ldb, Ldc = ldc, M = mm, N = nn, K = kk,
            Accumulate = accumulate, ColTiles = colTiles,
        };
        int items = rowTiles * colTiles;
        long work = (long)mm * nn * kk;
        if (work < 1 << 17) job.Invoke(0, items);
        else WorkerPool.Shared.Run(items, job);
    }

    private struct GemmJob : IRangeBody
    {
        public float* A, B, C;
        public long Ars, Aks, Ldb, Ldc;
        public int M, N, K, ColTiles;
        public bool Accumulate;

        public readonly void Invoke(int start, int end)
        {
            for (int item = start; item < end; item++)
            {
                int i0 = item / ColTiles * TileRows, j0 = item % ColTiles * TileCols;
                int i1 = Math.Min(M, i0 + TileRows), j1 = Math.Min(N, j0 + TileCols);
                if (!Accumulate)
                    for (int i = i0; i < i1; i++) new Span<float>(C + i * Ldc + j0, j1 - j0).Clear();
                for (int p0 = 0; p0 < K; p0 += KC)
                {
                    int kc = Math.Min(KC, K - p0);
                    float* a = A + p0 * Aks, b = B + p0 * Ldb;
                    if (Vector512.IsHardwareAccelerated) Block<V512, Vector512<float>>(a, Ars, Aks, b, Ldb, C, Ldc, i0, i1, j0, j1, kc);
                    else if (Vector256.IsHardwareAccelerated) Block<V256, Vector256<float>>(a, Ars, Aks, b, Ldb, C, Ldc, i0, i1, j0, j1, kc);
                    else BlockScalar(a, Ars, Aks, b, Ldb, C, Ldc, i0, i1, j0, j1, kc);
                }
            }
        }
    }

    private static void Block<TO, TV>(float* a, long ars, long aks, float* b, long ldb, float* c, long ldc,
        int i0, int i1, int j0, int j1, int kc) where TO : struct, IVectorOps<TV> where TV : struct
    {
        int w = TO.Width;
        int i = i0;
        for (; i + 4 <= i1; i += 4)
        {
            int j = j0;
            for (; j + 2 * w <= j1; j += 2 * w) Tile4x2<TO, TV>(a + i * ars, ars, aks, b + j, ldb, c + i * ldc + j, ldc, kc);
            for (; j + w <= j1; j += w) Tile4x1<TO, TV>(a + i * ars, ars, aks, b + j, ldb, c + i * ldc + j, ldc, kc);
            if (j < j1) BlockScalar(a, ars, aks, b, ldb, c, ldc, i, i + 4, j, j1, kc);
        }
        for (; i < i1; i++)
        {
            int j = j0;
            for (; j + w <= j1; j += w) Tile1x1<TO, TV>(a + i * ars, aks, b + j, ldb, c + i * ldc + j, kc);
            if (j < j1) BlockScalar(a, ars, aks, b, ldb, c, ldc, i, i + 1, j, j1, kc);
        }
    }

    private static void BlockScalar(float* a, long ars, long aks, float* b, long ldb, float* c, long ldc,
        int i0, int i1, int j0, int j1, int kc)
    {
        for (int i = i0; i < i1; i++)
            for (int j = j0; j < j1; j++)
            {
                float s = c[i * ldc + j];
                for (int p = 0; p < kc; p++) s += a[i * ars + p * aks] * b[p * ldb + j];
                c[i * ldc + j] = s;
            }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile4x2<TO, TV>(float* a, long ars, long aks, float* b, long ldb, float* c, long ldc, int kc)
        where TO : struct, IVectorOps<TV> where TV : struct
    {
        int w = TO.Width;
        float* c1 = c + ldc, c2 = c1 + ldc, c3 = c2 + ldc;
        TV s00 = TO.Load(c), s01 = TO.Load(c + w);
        TV s10 = TO.Load(c1), s11 = TO.Load(c1 + w);
        TV s20 = TO.Load(c2), s21 = TO.Load(c2 + w);
        TV s30 = TO.Load(c3), s31 = TO.Load(c3 + w);
        long a1 = ars, a2 = 2 * ars, a3 = 3 * ars;
        for (int p = 0; p < kc; p++)
        {
            TV b0 = TO.Load(b), b1 = TO.Load(b + w);
            TV x = TO.Broadcast(a[0]);
            s00 = TO.Fma(x, b0, s00); s01 = TO.Fma(x, b1, s01);
            x = TO.Broadcast(a[a1]);
            s10 = TO.Fma(x, b0, s10); s11 = TO.Fma(x, b1, s11);
            x = TO.Broadcast(a[a2]);
            s20 = TO.Fma(x, b0, s20); s21 = TO.Fma(x, b1, s21);
            x = TO.Broadcast(a[a3]);
            s30 = TO.Fma(x, b0, s30); s31 = TO.Fma(x, b1, s31);
            a += aks;
            b += ldb;
        }
        TO.Store(s00, c); TO.Store(s01, c + w);
        TO.Store(s10, c1); TO.Store(s11, c1 + w);
        TO.Store(s20, c2); TO.Store(s21, c2 + w);
        TO.Store(s30, c3); TO.Store(s31, c3 + w);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile4x1<TO, TV>(float* a, long ars, long aks, float* b, long ldb, float* c, long ldc, int kc)
        where TO : struct, IVectorOps<TV> where TV : struct
    {
        float* c1 = c + ldc, c2 = c1 + ldc, c3 = c2 + ldc;
        TV s0 = TO.Load(c), s1 = TO.Load(c1), s2 = TO.Load(c2), s3 = TO.Load(c3);
        long a1 = ars, a2 = 2 * ars, a3 = 3 * ars;
        for (int p = 0; p < kc; p++)
        {
            TV b0 = TO.Load(b);
            s0 = TO.Fma(TO.Broadcast(a[0]), b0, s0);
            s1 = TO.Fma(TO.Broadcast(a[a1]), b0, s1);
            s2 = TO.Fma(TO.Broadcast(a[a2]), b0, s2);
            s3 = TO.Fma(TO.Broadcast(a[a3]), b0, s3);
            a += aks;
            b += ldb;
        }
        TO.Store(s0, c); TO.Store(s1, c1); TO.Store(s2, c2); TO.Store(s3, c3);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile1x1<TO, TV>(float* a, long aks, float* b, long ldb, float* c, int kc)
        where TO : struct, IVectorOps<TV> where TV : struct
    {
        TV s0 = TO.Load(c);
        for (int p = 0; p < kc; p++)
        {
            s0 = TO.Fma(TO.Broadcast(a[0]), TO.Load(b), s0);
            a += aks;
            b += ldb;
        }
        TO.Store(s0, c);
    }
}

/// <summary>The vector operations the backward kernels use, so one generic body serves 512- and 256-bit registers.</summary>
internal unsafe interface IVectorOps<TV> where TV : struct
{
    static abstract int Width { get; }
    static abstract TV Load(float* p);
    static abstract void Store(TV v, float* p);
    static abstract TV Broadcast(float x);
    /// <summary>a * b + c.</summary>
    static abstract TV Fma(TV a, TV b, TV c);
}

internal unsafe struct V512 : IVectorOps<Vector512<float>>
{
    public static int Width => 16;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Load(float* p) => Vector512.Load(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Vector512<float> v, float* p) => v.Store(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Broadcast(float x) => Vector512.Create(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Fma(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Vector512.FusedMultiplyAdd(a, b, c);
}

internal unsafe struct V256 : IVectorOps<Vector256<float>>
{
    public static int Width => 8;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load(float* p) => Vector256.Load(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Vector256<float> v, float* p) => v.Store(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Broadcast(float x) => Vector256.Create(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Fma(Vector256<float> a, Vector256<float> b, Vector256<float> c) => Vector256.FusedMultiplyAdd(a, b, c);
}
