using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lckv.Numerics.Backward;

/// <summary>
/// Gradients of y = x·Wᵀ (x [m, k], W [n, k], y [m, n], all f32): dx = dy·W and dW += dyᵀ·x.
/// Both are one blocked GEMM C[M, N] (+)= A[M, K]·B[K, N] with A read through strides (so dyᵀ needs no copy) and B
/// row-major. Per k block, A's rows and B's columns of a tile are packed into contiguous per-thread panels (zero-padded
/// strips), and an 8-row (4 on AVX2-only machines) x 2-vector register tile accumulates over k with A broadcast. Work is split across the
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
            var scratch = Scratch.Current;
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
                    if (Vector512.IsHardwareAccelerated) Block<V512, Vector512<float>>(scratch, a, Ars, Aks, b, Ldb, C, Ldc, i0, i1, j0, j1, kc);
                    else if (Vector256.IsHardwareAccelerated) Block<V256, Vector256<float>>(scratch, a, Ars, Aks, b, Ldb, C, Ldc, i0, i1, j0, j1, kc);
                    else BlockScalar(a, Ars, Aks, b, Ldb, C, Ldc, i0, i1, j0, j1, kc);
                }
            }
        }
    }

    /// <summary>Per-thread packing buffers (A: TileRows x KC, B: KC x TileCols), allocated once per thread.</summary>
    private sealed class Scratch
    {
        [ThreadStatic] private static Scratch? _current;
        public static Scratch Current => _current ??= new Scratch();
        public readonly float[] A = GC.AllocateArray<float>(TileRows * KC + 64, pinned: true);
        public readonly float[] B = GC.AllocateArray<float>(TileCols * KC + 64, pinned: true);
    }

    // packs A rows [i0, i1) and B columns [j0, j1) of one k block (zero-padded to whole strips), then runs the
    // register tiles over the packed panels and adds each tile to C
    private static void Block<TO, TV>(Scratch scratch, float* a, long ars, long aks, float* b, long ldb, float* c, long ldc,
        int i0, int i1, int j0, int j1, int kc) where TO : struct, IVectorOps<TV> where TV : struct
    {
        int mr = TO.Rows, nb = 2 * TO.Width;
        int rows = i1 - i0, cols = j1 - j0;
        int rowStrips = (rows + mr - 1) / mr, colStrips = (cols + nb - 1) / nb;
        fixed (float* pa = scratch.A, pb = scratch.B)
        {
            // A panel: strip s holds rows s*mr.., laid out [p][r]
            for (int s = 0; s < rowStrips; s++)
            {
                float* dst = pa + (long)s * kc * mr;
                int r0 = i0 + s * mr, rn = Math.Min(mr, i1 - r0);
                if (rn == mr && Sse.IsSupported && ars != 1 && aks == 1) PackStrip(a + r0 * ars, ars, dst, mr, kc);
                else if (rn == mr && Sse.IsSupported && ars == 1)
                    for (int p = 0; p < kc; p++)
                        for (int r = 0; r < mr; r += 4) Sse.Store(dst + p * mr + r, Sse.LoadVector128(a + r0 + p * aks + r));
                else if (ars == 1)
                    for (int p = 0; p < kc; p++)
                    {
                        float* src = a + r0 + p * aks;
                        int r = 0;
                        for (; r < rn; r++) dst[p * mr + r] = src[r];
                        for (; r < mr; r++) dst[p * mr + r] = 0;
                    }
                else
                {
                    for (int r = 0; r < rn; r++)
                    {
                        float* src = a + (r0 + r) * ars;
                        for (int p = 0; p < kc; p++) dst[p * mr + r] = src[p * aks];
                    }
                    for (int r = rn; r < mr; r++)
                        for (int p = 0; p < kc; p++) dst[p * mr + r] = 0;
                }
            }
            // B panel: strip s holds columns s*nb.., laid out [p][c]
            for (int s = 0; s < colStrips; s++)
            {
                float* dst = pb + (long)s * kc * nb;
                int c0 = j0 + s * nb, cn = Math.Min(nb, j1 - c0);
                for (int p = 0; p < kc; p++)
                {
                    float* src = b + p * ldb + c0;
                    float* d = dst + p * nb;
                    if (cn == nb)
                    {
                        TO.Store(TO.Load(src), d);
                        TO.Store(TO.Load(src + TO.Width), d + TO.Width);
                    }
                    else
                    {
                        int q = 0;
                        for (; q < cn; q++) d[q] = src[q];
                        for (; q < nb; q++) d[q] = 0;
                    }
                }
            }
            for (int rs = 0; rs < rowStrips; rs++)
            {
                int r0 = i0 + rs * mr, rn = Math.Min(mr, i1 - r0);
                for (int cs = 0; cs < colStrips; cs++)
                {
                    int c0 = j0 + cs * nb, cn = Math.Min(nb, j1 - c0);
                    float* ct = c + r0 * ldc + c0;
                    float* ap = pa + (long)rs * kc * mr, bp = pb + (long)cs * kc * nb;
                    if (mr == 8) Tile8<TO, TV>(ap, bp, kc, ct, ldc, rn, cn);
                    else Tile4<TO, TV>(ap, bp, kc, ct, ldc, rn, cn);
                }
            }
        }
    }

    // a full strip of mr (4 or 8) rows of A, each contiguous along k, into dst laid out [p][r] by 4x4 transposes
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackStrip(float* a, long ars, float* dst, int mr, int kc)
    {
        for (int r = 0; r < mr; r += 4)
        {
            float* s0 = a + r * ars, s1 = s0 + ars, s2 = s1 + ars, s3 = s2 + ars;
            int p = 0;
            for (; p + 4 <= kc; p += 4)
            {
                var t0 = Sse.UnpackLow(Sse.LoadVector128(s0 + p), Sse.LoadVector128(s1 + p));  // r0p0 r1p0 r0p1 r1p1
                var t1 = Sse.UnpackLow(Sse.LoadVector128(s2 + p), Sse.LoadVector128(s3 + p));  // r2p0 r3p0 r2p1 r3p1
                var t2 = Sse.UnpackHigh(Sse.LoadVector128(s0 + p), Sse.LoadVector128(s1 + p)); // r0p2 r1p2 r0p3 r1p3
                var t3 = Sse.UnpackHigh(Sse.LoadVector128(s2 + p), Sse.LoadVector128(s3 + p)); // r2p2 r3p2 r2p3 r3p3
                float* d = dst + p * mr + r;
                Sse.Store(d, Sse.MoveLowToHigh(t0, t1));
                Sse.Store(d + mr, Sse.MoveHighToLow(t1, t0));
                Sse.Store(d + 2 * mr, Sse.MoveLowToHigh(t2, t3));
                Sse.Store(d + 3 * mr, Sse.MoveHighToLow(t3, t2));
            }
            for (; p < kc; p++)
            {
                float* d = dst + p * mr + r;
                d[0] = s0[p]; d[1] = s1[p]; d[2] = s2[p]; d[3] = s3[p];
            }
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

    // adds the tile acc (mr rows x nb columns, in tmp) to the valid rn x cn corner of C
    private static void AddPartial(float* tmp, int nb, float* c, long ldc, int rn, int cn)
    {
        for (int r = 0; r < rn; r++)
            for (int q = 0; q < cn; q++) c[r * ldc + q] += tmp[r * nb + q];
    }

    // 8 rows x 2 vectors over packed panels: ap is [kc][8], bp is [kc][2W]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile8<TO, TV>(float* ap, float* bp, int kc, float* c, long ldc, int rn, int cn)
        where TO : struct, IVectorOps<TV> where TV : struct
    {
        int w = TO.Width;
        TV s00 = TO.Zero, s01 = TO.Zero, s10 = TO.Zero, s11 = TO.Zero, s20 = TO.Zero, s21 = TO.Zero, s30 = TO.Zero, s31 = TO.Zero;
        TV s40 = TO.Zero, s41 = TO.Zero, s50 = TO.Zero, s51 = TO.Zero, s60 = TO.Zero, s61 = TO.Zero, s70 = TO.Zero, s71 = TO.Zero;
        for (int p = 0; p < kc; p++)
        {
            TV b0 = TO.Load(bp), b1 = TO.Load(bp + w);
            TV x = TO.Broadcast(ap[0]); s00 = TO.Fma(x, b0, s00); s01 = TO.Fma(x, b1, s01);
            x = TO.Broadcast(ap[1]); s10 = TO.Fma(x, b0, s10); s11 = TO.Fma(x, b1, s11);
            x = TO.Broadcast(ap[2]); s20 = TO.Fma(x, b0, s20); s21 = TO.Fma(x, b1, s21);
            x = TO.Broadcast(ap[3]); s30 = TO.Fma(x, b0, s30); s31 = TO.Fma(x, b1, s31);
            x = TO.Broadcast(ap[4]); s40 = TO.Fma(x, b0, s40); s41 = TO.Fma(x, b1, s41);
            x = TO.Broadcast(ap[5]); s50 = TO.Fma(x, b0, s50); s51 = TO.Fma(x, b1, s51);
            x = TO.Broadcast(ap[6]); s60 = TO.Fma(x, b0, s60); s61 = TO.Fma(x, b1, s61);
            x = TO.Broadcast(ap[7]); s70 = TO.Fma(x, b0, s70); s71 = TO.Fma(x, b1, s71);
            ap += 8;
            bp += 2 * w;
        }
        if (rn == 8 && cn == 2 * w)
        {
            Add<TO, TV>(c, s00, s01, w); Add<TO, TV>(c + ldc, s10, s11, w);
            Add<TO, TV>(c + 2 * ldc, s20, s21, w); Add<TO, TV>(c + 3 * ldc, s30, s31, w);
            Add<TO, TV>(c + 4 * ldc, s40, s41, w); Add<TO, TV>(c + 5 * ldc, s50, s51, w);
            Add<TO, TV>(c + 6 * ldc, s60, s61, w); Add<TO, TV>(c + 7 * ldc, s70, s71, w);
            return;
        }
        float* tmp = stackalloc float[8 * 32];
        int nb = 2 * w;
        TO.Store(s00, tmp); TO.Store(s01, tmp + w); TO.Store(s10, tmp + nb); TO.Store(s11, tmp + nb + w);
        TO.Store(s20, tmp + 2 * nb); TO.Store(s21, tmp + 2 * nb + w); TO.Store(s30, tmp + 3 * nb); TO.Store(s31, tmp + 3 * nb + w);
        TO.Store(s40, tmp + 4 * nb); TO.Store(s41, tmp + 4 * nb + w); TO.Store(s50, tmp + 5 * nb); TO.Store(s51, tmp + 5 * nb + w);
        TO.Store(s60, tmp + 6 * nb); TO.Store(s61, tmp + 6 * nb + w); TO.Store(s70, tmp + 7 * nb); TO.Store(s71, tmp + 7 * nb + w);
        AddPartial(tmp, nb, c, ldc, rn, cn);
    }

    // 4 rows x 2 vectors over packed panels: ap is [kc][4], bp is [kc][2W]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile4<TO, TV>(float* ap, float* bp, int kc, float* c, long ldc, int rn, int cn)
        where TO : struct, IVectorOps<TV> where TV : struct
    {
        int w = TO.Width;
        TV s00 = TO.Zero, s01 = TO.Zero, s10 = TO.Zero, s11 = TO.Zero, s20 = TO.Zero, s21 = TO.Zero, s30 = TO.Zero, s31 = TO.Zero;
        for (int p = 0; p < kc; p++)
        {
            TV b0 = TO.Load(bp), b1 = TO.Load(bp + w);
            TV x = TO.Broadcast(ap[0]); s00 = TO.Fma(x, b0, s00); s01 = TO.Fma(x, b1, s01);
            x = TO.Broadcast(ap[1]); s10 = TO.Fma(x, b0, s10); s11 = TO.Fma(x, b1, s11);
            x = TO.Broadcast(ap[2]); s20 = TO.Fma(x, b0, s20); s21 = TO.Fma(x, b1, s21);
            x = TO.Broadcast(ap[3]); s30 = TO.Fma(x, b0, s30); s31 = TO.Fma(x, b1, s31);
            ap += 4;
            bp += 2 * w;
        }
        if (rn == 4 && cn == 2 * w)
        {
            Add<TO, TV>(c, s00, s01, w); Add<TO, TV>(c + ldc, s10, s11, w);
            Add<TO, TV>(c + 2 * ldc, s20, s21, w); Add<TO, TV>(c + 3 * ldc, s30, s31, w);
            return;
        }
        float* tmp = stackalloc float[4 * 32];
        int nb = 2 * w;
        TO.Store(s00, tmp); TO.Store(s01, tmp + w); TO.Store(s10, tmp + nb); TO.Store(s11, tmp + nb + w);
        TO.Store(s20, tmp + 2 * nb); TO.Store(s21, tmp + 2 * nb + w); TO.Store(s30, tmp + 3 * nb); TO.Store(s31, tmp + 3 * nb + w);
        AddPartial(tmp, nb, c, ldc, rn, cn);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Add<TO, TV>(float* c, TV v0, TV v1, int w) where TO : struct, IVectorOps<TV> where TV : struct
    {
        TO.Store(TO.Add(TO.Load(c), v0), c);
        TO.Store(TO.Add(TO.Load(c + w), v1), c + w);
    }
}

/// <summary>The vector operations the backward kernels use, so one generic body serves 512- and 256-bit registers.</summary>
internal unsafe interface IVectorOps<TV> where TV : struct
{
    static abstract int Width { get; }
    /// <summary>Rows of the GEMM register tile (8 with 32 registers, 4 with 16).</summary>
    static abstract int Rows { get; }
    static abstract TV Zero { get; }
    static abstract TV Add(TV a, TV b);
    static abstract TV Load(float* p);
    static abstract void Store(TV v, float* p);
    static abstract TV Broadcast(float x);
    /// <summary>a * b + c.</summary>
    static abstract TV Fma(TV a, TV b, TV c);
}

internal unsafe struct V512 : IVectorOps<Vector512<float>>
{
    public static int Width => 16;
    public static int Rows => 8;
    public static Vector512<float> Zero => Vector512<float>.Zero;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Add(Vector512<float> a, Vector512<float> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Load(float* p) => Vector512.Load(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Vector512<float> v, float* p) => v.Store(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Broadcast(float x) => Vector512.Create(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Fma(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Vector512.FusedMultiplyAdd(a, b, c);
}

internal unsafe struct V256 : IVectorOps<Vector256<float>>
{
    public static int Width => 8;
    // 16 accumulators fit the 32 registers of AVX-512 machines; AVX2-only machines have 16
    public static int Rows => Avx512F.IsSupported ? 8 : 4;
    public static Vector256<float> Zero => Vector256<float>.Zero;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Add(Vector256<float> a, Vector256<float> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load(float* p) => Vector256.Load(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Vector256<float> v, float* p) => v.Store(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Broadcast(float x) => Vector256.Create(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Fma(Vector256<float> a, Vector256<float> b, Vector256<float> c) => Vector256.FusedMultiplyAdd(a, b, c);
}
