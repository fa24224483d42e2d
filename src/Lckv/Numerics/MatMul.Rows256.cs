using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lckv.Numerics;

public static unsafe partial class MatMul
{
    /// <summary>Most rows of x one pass of the 256-bit few-row kernel carries: 4 W rows x 2 x rows of accumulators.
    /// Three rows (12 accumulators, 4 registers left for W's vectors) ran slower per row than two.</summary>
    private const int MaxPassRows256 = 2;

    /// <summary>
    /// Few rows of x (m below <see cref="GemmMinRows"/>), 256-bit, f32/f16/bf16 W: one row reads the thread's W rows
    /// one after another as one stream (<see cref="Dot1Seq4x256{TE}"/>); more rows: each group of 4 W rows is dotted
    /// against the rows of x in passes of at most <see cref="MaxPassRows256"/> rows, so that each W vector is loaded and
    /// widened once per pass rather than once per row (the widening, not the FMA, bounded the one-row kernel at bf16).
    /// bf16 W is read 16 values at a time as 8 uints: the even values by a shift, the odd ones by a mask, without a
    /// cross-lane widening; x is packed to match (per 16 values, the 8 even ones then the 8 odd ones), each thread its
    /// own copy.
    /// </summary>
    private struct Rows256Job<TE> : IRangeBody where TE : struct, IWeight
    {
        public float* X, Y;
        public byte* W;
        public int M, K, N;

        [ThreadStatic] private static float[]? _packed;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void Invoke(int j0, int j1)
        {
            long rowBytes = TE.Bytes(K);
            float* xp = Pack(X, M, K, typeof(TE) == typeof(BF16Element));
            int j = j0, passes = (M + MaxPassRows256 - 1) / MaxPassRows256;
            if (M == 1)
                for (; j + 4 <= j1; j += 4) Dot1Seq4x256<TE>(xp, W + j * rowBytes, rowBytes, K, Y + j);
            for (; j + 4 <= j1; j += 4)
            {
                byte* w = W + j * rowBytes;
                byte* next = j + 8 <= j1 ? w + 4 * rowBytes : w;
                for (int pass = 0, i = 0; pass < passes; pass++)
                {
                    int rows = (M - i) / (passes - pass); // nearly equal passes
                    float* xi = xp + (long)i * K, yi = Y + (long)i * N + j;
                    if (rows == 1) Rows4x256<TE, R1>(xi, w, rowBytes, K, yi, N, next);
                    else Rows4x256<TE, R2>(xi, w, rowBytes, K, yi, N, next);
                    i += rows;
                }
            }
            for (; j < j1; j++)
                for (int i = 0; i < M; i++)
                    Y[(long)i * N + j] = Dot<TE>(X + (long)i * K, W + j * rowBytes, K);
        }

        // x in the kernel's order, row by row: split (bf16 W), per 16 values the 8 even then the 8 odd ones, the k tail in
        // order; otherwise x itself (f32 and f16 W widen in order)
        private static float* Pack(float* x, int m, int k, bool split)
        {
            if (!split) return x;
            long need = (long)m * k;
            var buf = _packed;
            if (buf is null || buf.Length < need + 16) _packed = buf = GC.AllocateUninitializedArray<float>((int)need + 16, pinned: true);
            float* dst = (float*)(((nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buf)) + 31) & ~(nint)31);
            int whole = k / 16 * 16;
            for (int i = 0; i < m; i++)
            {
                float* src = x + (long)i * k, d = dst + (long)i * k;
                for (int p = 0; p < whole; p += 16)
                    for (int q = 0; q < 8; q++)
                    {
                        d[p + q] = src[p + 2 * q];
                        d[p + 8 + q] = src[p + 2 * q + 1];
                    }
                for (int p = whole; p < k; p++) d[p] = src[p];
            }
            return dst;
        }
    }

    // values [0, 8) and [8, 16) of the 16 at w in the order Rows256Job packs x (bf16: the even and the odd ones)
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Low256<TE>(byte* w) where TE : struct, IWeight
        => typeof(TE) == typeof(BF16Element) ? Vector256.ShiftLeft(Vector256.Load((uint*)w), 16).AsSingle() : TE.At256(w, 0);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> High256<TE>(byte* w) where TE : struct, IWeight
        => typeof(TE) == typeof(BF16Element) ? (Vector256.Load((uint*)w) & Vector256.Create(0xFFFF0000u)).AsSingle() : TE.At256(w, 8);

    // One row of packed x against 4 rows of W, one W row after the other: the thread's columns of W as one sequential
    // stream, prefetched SeqPrefetchBytes ahead, on across row ends (as the 512-bit Dot1Seq4).
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Dot1Seq4x256<TE>(float* xp, byte* w, long rowBytes, int k, float* y) where TE : struct, IWeight
    {
        y[0] = RowSum256<TE>(xp, w, k);
        y[1] = RowSum256<TE>(xp, w + rowBytes, k);
        y[2] = RowSum256<TE>(xp, w + 2 * rowBytes, k);
        y[3] = RowSum256<TE>(xp, w + 3 * rowBytes, k);
        int whole = k / 16 * 16;
        if (whole < k) AddTail4<TE>(xp, w, rowBytes, whole, k, y); // the tail of a packed row is in order
    }

    // one row of packed x times one row of W over the whole blocks of 16 values of k
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float RowSum256<TE>(float* xp, byte* w, int k) where TE : struct, IWeight
    {
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        long half = TE.Bytes(16);
        int lines = (int)((TE.Bytes(32) + 63) / 64); // cache lines 32 values span, prefetched at each step
        int p = 0;
        for (; p <= k - 32; p += 32)
        {
            byte* wc = w + TE.Bytes(p);
            if (Sse.IsSupported)
            {
                Sse.Prefetch0(wc + SeqPrefetchBytes);
                if (lines >= 2) Sse.Prefetch0(wc + SeqPrefetchBytes + 64);
            }
            a0 = Vector256.FusedMultiplyAdd(Vector256.Load(xp + p), Low256<TE>(wc), a0);
            a1 = Vector256.FusedMultiplyAdd(Vector256.Load(xp + p + 8), High256<TE>(wc), a1);
            a2 = Vector256.FusedMultiplyAdd(Vector256.Load(xp + p + 16), Low256<TE>(wc + half), a2);
            a3 = Vector256.FusedMultiplyAdd(Vector256.Load(xp + p + 24), High256<TE>(wc + half), a3);
        }
        if (p <= k - 16)
        {
            byte* wc = w + TE.Bytes(p);
            a0 = Vector256.FusedMultiplyAdd(Vector256.Load(xp + p), Low256<TE>(wc), a0);
            a1 = Vector256.FusedMultiplyAdd(Vector256.Load(xp + p + 8), High256<TE>(wc), a1);
        }
        return Vector256.Sum((a0 + a1) + (a2 + a3));
    }

    // TR (1 or 2) rows of packed x (row stride k) against the 4 rows of W at w; y is (TR, ldy), columns [0, 4) written. The
    // next group's lines (pf) are prefetched into L1 along the way, one line of each of its rows per 64 bytes of a row.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rows4x256<TE, TR>(float* x, byte* w, long rowBytes, int k, float* y, int ldy, byte* pf)
        where TE : struct, IWeight where TR : struct, IRowCount
    {
        int rn = TR.Value;
        var c00 = Vector256<float>.Zero; var c01 = c00; var c02 = c00; var c03 = c00;
        var c10 = c00; var c11 = c00; var c12 = c00; var c13 = c00;
        float* x1 = x + k;
        long step = TE.Bytes(16), rb2 = 2 * rowBytes, rb3 = 3 * rowBytes;
        int whole = k / 16 * 16;
        bool prefetch = Sse.IsSupported;
        byte* wc = w;
        for (int p = 0; p < whole; p += 16, wc += step, pf += step)
        {
            if (prefetch && ((nint)pf & 63) < step)
            {
                Sse.Prefetch0(pf); Sse.Prefetch0(pf + rowBytes); Sse.Prefetch0(pf + rb2); Sse.Prefetch0(pf + rb3);
            }
            if (rn == 1)
            {
                // one row: the odd values go to the second row's accumulators, so that 8 FMA chains are in flight
                var x0 = Vector256.Load(x + p); var x8 = Vector256.Load(x + p + 8);
                c00 = Vector256.FusedMultiplyAdd(x0, Low256<TE>(wc), c00); c10 = Vector256.FusedMultiplyAdd(x8, High256<TE>(wc), c10);
                c01 = Vector256.FusedMultiplyAdd(x0, Low256<TE>(wc + rowBytes), c01); c11 = Vector256.FusedMultiplyAdd(x8, High256<TE>(wc + rowBytes), c11);
                c02 = Vector256.FusedMultiplyAdd(x0, Low256<TE>(wc + rb2), c02); c12 = Vector256.FusedMultiplyAdd(x8, High256<TE>(wc + rb2), c12);
                c03 = Vector256.FusedMultiplyAdd(x0, Low256<TE>(wc + rb3), c03); c13 = Vector256.FusedMultiplyAdd(x8, High256<TE>(wc + rb3), c13);
                continue;
            }
            var lo = Low256<TE>(wc); var hi = High256<TE>(wc);
            c00 = Vector256.FusedMultiplyAdd(Vector256.Load(x + p), lo, c00); c00 = Vector256.FusedMultiplyAdd(Vector256.Load(x + p + 8), hi, c00);
            if (rn > 1) { c10 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p), lo, c10); c10 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p + 8), hi, c10); }
            lo = Low256<TE>(wc + rowBytes); hi = High256<TE>(wc + rowBytes);
            c01 = Vector256.FusedMultiplyAdd(Vector256.Load(x + p), lo, c01); c01 = Vector256.FusedMultiplyAdd(Vector256.Load(x + p + 8), hi, c01);
            if (rn > 1) { c11 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p), lo, c11); c11 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p + 8), hi, c11); }
            lo = Low256<TE>(wc + rb2); hi = High256<TE>(wc + rb2);
            c02 = Vector256.FusedMultiplyAdd(Vector256.Load(x + p), lo, c02); c02 = Vector256.FusedMultiplyAdd(Vector256.Load(x + p + 8), hi, c02);
            if (rn > 1) { c12 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p), lo, c12); c12 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p + 8), hi, c12); }
            lo = Low256<TE>(wc + rb3); hi = High256<TE>(wc + rb3);
            c03 = Vector256.FusedMultiplyAdd(Vector256.Load(x + p), lo, c03); c03 = Vector256.FusedMultiplyAdd(Vector256.Load(x + p + 8), hi, c03);
            if (rn > 1) { c13 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p), lo, c13); c13 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p + 8), hi, c13); }
        }
        if (rn == 1) { c00 += c10; c01 += c11; c02 += c12; c03 += c13; }
        y[0] = Vector256.Sum(c00); y[1] = Vector256.Sum(c01); y[2] = Vector256.Sum(c02); y[3] = Vector256.Sum(c03);
        if (rn > 1) { float* r1 = y + ldy; r1[0] = Vector256.Sum(c10); r1[1] = Vector256.Sum(c11); r1[2] = Vector256.Sum(c12); r1[3] = Vector256.Sum(c13); }
        if (whole < k)
            for (int r = 0; r < rn; r++) AddTail4<TE>(x + (long)r * k, w, rowBytes, whole, k, y + (long)r * ldy); // the tail is packed in order
    }
}
