using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lckv.Numerics;

public static unsafe partial class MatMul
{
    /// <summary>
    /// Which few-row shapes (512-bit hardware) take the row-blocked dot kernel rather than the blocked GEMM. It
    /// streams W once, 4 rows at a time, against all rows of x (lanes along k: no padding rows, no packing of W), as
    /// long as x stays in L2. bf16 W gains most (the GEMM widens every panel of W into a packed copy), up to 64 rows.
    /// For f32 W, 16-lane tiles win where they are nearly full (m = 15, 16, 31, 32 and up) and x is large (16 x 2048 and
    /// up: the panel kernel at 15-16 rows, else the GEMM); while x is small (16 x 512) the dot kernel wins, and with k
    /// in blocks (<see cref="DotKBlock"/>) also up to 16 x 1536 (the `small` preset's down projection). Q8_0 and Q4_0 W
    /// take it up to 24 rows (from 32 the GEMM, which dequantizes each panel of W once for all rows, is even with it).
    /// docs/benchmarks.md has the evidence for each path.
    /// </summary>
    private const int DotMaxRowsBf16 = 64;
    private const int DotMaxRowsQuantized = 24;
    private const int DotMaxRowsF32 = 28;
    private const long DotMaxXFloats = 128 * 1024; // x up to 512 KiB: half of L2
    private const long DotSmallXFloats = 24 * 1024; // x up to 96 KiB: f32 W takes the dot kernel at any row count

    /// <summary>
    /// From 8 to 16 rows of x, k is walked in blocks of this many values: every W group of the thread's columns is
    /// dotted against the block of x (16 x 512 f32: 32 KiB, in L1) before the next block, and the sums are added up in
    /// y. Without blocks x streams from L2 once per group of W. Not used at fewer rows (there W's stream is what counts,
    /// and blocks cut it into pieces) nor at more (32 rows of a 512 block do not fit in L1).
    /// </summary>
    private const int DotKBlock = 512;
    private const int DotKBlockMinRows = 8;
    private const int DotKBlockMaxRows = 16;

    /// <summary>
    /// Whether k is walked in blocks: f32/f16/bf16 W at 8-16 rows with k past a block. Not Q8_0/Q4_0 W: dequantizing
    /// bounds their products, not x's reads, and blocks cut W's stream.
    /// </summary>
    private static bool KBlocked(bool quantized, int m, int k) => !quantized && m is >= DotKBlockMinRows and <= DotKBlockMaxRows && k > DotKBlock;

    /// <summary>
    /// Whether the spread prefetch applies where k is whole: always for f32/f16/bf16 W; for Q8_0/Q4_0 W only while x
    /// holds at most this many values (beyond, the per-pass prefetch is ahead; docs/benchmarks.md).
    /// </summary>
    private const long SpreadMaxXFloatsQuantized = 4096;

    private static bool Spreads(bool quantized, int m, int k) => !quantized || (long)m * k <= SpreadMaxXFloatsQuantized;

    private const int MaxPassRows = 6;

    private static bool UseDotRows<TE>(int m, int k) where TE : struct, IWeight
    {
        if (m < GemmMinRows) return true;
        if ((long)m * k > DotMaxXFloats) return false;
        if (typeof(TE) == typeof(BF16Element)) return m <= DotMaxRowsBf16;
        if (TE.Block > 1) return m <= DotMaxRowsQuantized;
        if (typeof(TE) == typeof(F32Element)) return m <= DotMaxRowsF32 && ((long)m * k <= DotSmallXFloats || m % 16 is > 0 and <= 14);
        return false;
    }

    private interface IRowCount { static abstract int Value { get; } }
    private struct R1 : IRowCount { public static int Value => 1; }
    private struct R2 : IRowCount { public static int Value => 2; }
    private struct R3 : IRowCount { public static int Value => 3; }
    private struct R4 : IRowCount { public static int Value => 4; }
    private struct R5 : IRowCount { public static int Value => 5; }
    private struct R6 : IRowCount { public static int Value => 6; }

    /// <summary>
    /// x copied so that the row-blocked kernel reads it with one advancing pointer. Rows are split into passes of at
    /// most <see cref="MaxPassRows"/> rows of nearly equal size; the block of a pass starting at row i (r rows) starts at
    /// i * k and holds, for each whole block of 32 values of k, the r rows' first 16 values then their last 16 (bf16:
    /// the 16 even-index values then the 16 odd-index ones, to match how bf16 W widens: 32 values loaded as 16 uints,
    /// even ones by a shift, odd ones by a mask, without a cross-lane widening); then the k tail of each row in order.
    /// One row (r = 1) in f32 is a plain copy. The block starts on a cache line. Packing costs m*k moves; W has n*k values.
    /// </summary>
    private static class RowPack
    {
        [ThreadStatic] private static float[]? _buffer;

        /// <summary>Rows in pass `pass` of `passes` when rows [0, i) are done.</summary>
        public static int PassRows(int m, int i, int pass, int passes)
        {
            int left = passes - pass;
            return (m - i + left - 1) / left;
        }

        public static int Passes(int m) => (m + MaxPassRows - 1) / MaxPassRows;

        public static float* Apply(float* x, int m, int k, bool split)
        {
            long need = (long)m * k;
            var buf = _buffer;
            if (buf is null || buf.Length < need + 16) _buffer = buf = GC.AllocateUninitializedArray<float>((int)need + 16, pinned: true);
            // on a cache-line boundary: a 64-byte load across two lines costs two
            float* dst = (float*)(((nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buf)) + 63) & ~(nint)63);
            var evenIdx = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            var oddIdx = evenIdx + Vector512<int>.One;
            int steps = k / 32, tail = k - 32 * steps, passes = Passes(m);
            for (int pass = 0, i = 0; pass < passes; pass++)
            {
                int r = PassRows(m, i, pass, passes);
                float* block = dst + (long)i * k;
                for (int rr = 0; rr < r; rr++)
                {
                    float* src = x + (long)(i + rr) * k;
                    float* d = block + rr * 16;
                    for (int s = 0; s < steps; s++, src += 32, d += 32 * r)
                    {
                        var lo = Vector512.Load(src);
                        var hi = Vector512.Load(src + 16);
                        if (split)
                        {
                            Avx512F.PermuteVar16x32x2(lo, evenIdx, hi).Store(d);
                            Avx512F.PermuteVar16x32x2(lo, oddIdx, hi).Store(d + 16 * r);
                        }
                        else
                        {
                            lo.Store(d);
                            hi.Store(d + 16 * r);
                        }
                    }
                    float* t = block + 32L * steps * r + rr * tail;
                    for (int q = 0; q < tail; q++) t[q] = src[q];
                }
                i += r;
            }
            return dst;
        }
    }

    /// <summary>
    /// Few rows of x, 512-bit: each group of 4 W rows is dotted against every row of x, in passes of at most
    /// <see cref="MaxPassRows"/> rows (lanes along k). While a group computes, the next group is prefetched into L1, so
    /// W is read from memory once, in the background of the FMAs. XP is x in <see cref="RowPack"/> order.
    /// </summary>
    private struct DotRowsJob<TE> : IRangeBody where TE : struct, IWeight
    {
        public float* X;
        public Targets T;
        public int M, K;
        public Variants Off; // the caller's

        public readonly void Invoke(int j0, int j1)
        {
            // each thread packs its own copy: packing on the caller made the other thread read x twice over (once
            // for the pack, once from it), which costs most where the two cores share no cache
            float* xp = RowPack.Apply(X, M, K, typeof(TE) == typeof(BF16Element)); // also aligns x (one row of f32: a copy)
            for (int s = 0; s < T.Count; s++)
            {
                T.Clip(s, j0, j1, out byte* w, out float* y, out int n, out int a, out int b);
                if (a < b) Columns(xp, w, y, n, a, b);
            }
        }

        private readonly bool Uses(Variants v) => (Off & v) == 0;

        // columns [j0, j1) of one matrix
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private readonly void Columns(float* XP, byte* W, float* Y, int N, int j0, int j1)
        {
            long rowBytes = TE.Bytes(K);
            int passes = RowPack.Passes(M);
            int j = j0, jEnd = j0 + (j1 - j0) / 4 * 4;
            if (M == 1 && Uses(Variants.SequentialGemv))
            {
                for (; j < jEnd; j += 4) Dot1Seq4<TE>(XP, W + j * rowBytes, rowBytes, K, Y + j);
            }
            else
            {
                // k in blocks (x's block of every row stays in L1 while W's groups stream past it), sums added up in y
                int kBlock = KBlocked(TE.Block > 1, M, K) && Uses(Variants.KBlocks) ? DotKBlock : K;
                for (int k0 = 0; k0 < K; k0 += kBlock)
                {
                    int kb = Math.Min(kBlock, K - k0);
                    bool add = k0 > 0;
                    bool spread = kb == K && Spreads(TE.Block > 1, M, K) && Uses(Variants.SpreadPrefetch); // see Rows4
                    bool twoAhead = spread && Uses(Variants.TwoAhead);
                    for (j = j0; j < jEnd; j += 4)
                    {
                        byte* wr = W + j * rowBytes + TE.Bytes(k0);
                        // past the range's last group, prefetching the current group again is harmless
                        byte* next = j + 8 <= j1 ? wr + 4 * rowBytes : wr;
                        byte* after = twoAhead && j + 12 <= j1 ? wr + 8 * rowBytes : null; // the group after next, into L2
                        for (int pass = 0, i = 0; pass < passes; pass++)
                        {
                            int rows = RowPack.PassRows(M, i, pass, passes);
                            float* xi = XP + (long)i * K + (long)k0 * rows, yi = Y + (long)i * N + j;
                            switch (rows)
                            {
                                case 1: Rows4<TE, R1>(xi, wr, rowBytes, kb, yi, N, next, add, spread ? pass : -1, passes, after); break;
                                case 2: Rows4<TE, R2>(xi, wr, rowBytes, kb, yi, N, next, add, spread ? pass : -1, passes, after); break;
                                case 3: Rows4<TE, R3>(xi, wr, rowBytes, kb, yi, N, next, add, spread ? pass : -1, passes, after); break;
                                case 4: Rows4<TE, R4>(xi, wr, rowBytes, kb, yi, N, next, add, spread ? pass : -1, passes, after); break;
                                case 5: Rows4<TE, R5>(xi, wr, rowBytes, kb, yi, N, next, add, spread ? pass : -1, passes, after); break;
                                default: Rows4<TE, R6>(xi, wr, rowBytes, kb, yi, N, next, add, spread ? pass : -1, passes, after); break;
                            }
                            i += rows;
                        }
                    }
                }
            }
            for (; j < j1; j++)
                for (int i = 0; i < M; i++)
                    Y[(long)i * N + j] = Dot<TE>(X + (long)i * K, W + j * rowBytes, K);
        }
    }

    /// <summary>
    /// One row of x (RowPack order) against 4 rows of W, one W row after the other: the thread reads its columns of W
    /// as one sequential stream, which keeps more of the read bandwidth than 4 streams a row apart. The software
    /// prefetch runs <see cref="SeqPrefetchBytes"/> ahead, on across row ends.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Dot1Seq4<TE>(float* xp, byte* w, long rowBytes, int k, float* y) where TE : struct, IWeight
    {
        var s0 = RowSum<TE>(xp, w, k);
        var s1 = RowSum<TE>(xp, w + rowBytes, k);
        var s2 = RowSum<TE>(xp, w + 2 * rowBytes, k);
        var s3 = RowSum<TE>(xp, w + 3 * rowBytes, k);
        Simd.Sum4(s0, s1, s2, s3).Store(y);
        int p = k / 32 * 32;
        if (p < k) AddTail4<TE>(xp, w, rowBytes, p, k, y); // the k tail of a one-row pack is in place
    }

    /// <summary>How far ahead the one-row kernel prefetches W: far enough to cover memory latency, near enough that the lines are still in L1 when read.</summary>
    private const int SeqPrefetchBytes = 6144;

    // the lane sums of one row of x (RowPack order) times one row of W over the whole blocks of 32 values of k
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> RowSum<TE>(float* xp, byte* w, int k) where TE : struct, IWeight
    {
        var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        long half = TE.Bytes(32); // bytes of 32 values
        int lines = (int)((TE.Bytes(64) + 63) / 64); // cache lines 64 values span, prefetched at each step
        int p = 0;
        for (; p <= k - 64; p += 64)
        {
            byte* wc = w + TE.Bytes(p);
            if (Sse.IsSupported)
            {
                Sse.Prefetch0(wc + SeqPrefetchBytes);
                if (lines >= 2) Sse.Prefetch0(wc + SeqPrefetchBytes + 64);
                if (lines >= 4) { Sse.Prefetch0(wc + SeqPrefetchBytes + 128); Sse.Prefetch0(wc + SeqPrefetchBytes + 192); }
            }
            a0 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + p), TE.First(wc), a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + p + 16), TE.Second(wc), a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + p + 32), TE.First(wc + half), a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + p + 48), TE.Second(wc + half), a3);
        }
        if (p <= k - 32)
        {
            byte* wc = w + TE.Bytes(p);
            a0 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + p), TE.First(wc), a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + p + 16), TE.Second(wc), a1);
        }
        return (a0 + a1) + (a2 + a3);
    }

    // TR rows of x (a RowPack block) against the 4 rows of W at w; y is (TR, ldy), columns [0, 4) written (add: added
    // to). The same bytes of the 4 rows at pf (the next group) are prefetched into L1 along the way. pass >= 0 (pass
    // `pass` of `passes` over this group): each line of the next group is prefetched once, spread evenly over all the
    // passes, in the order that group reads them (line 0 of its 4 rows, then line 1...), so no pass carries a burst of
    // prefetches; pass < 0 (k in blocks, where spreading does not pay): every pass prefetches the bytes it reads, at
    // the next group. With spread, the same lines of the group after next (pf2, unless null) are prefetched into L2
    // alongside.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rows4<TE, TR>(float* xp, byte* w, long rowBytes, int k, float* y, int ldy, byte* pf, bool add, int pass, int passes, byte* pf2)
        where TE : struct, IWeight where TR : struct, IRowCount
    {
        int rn = TR.Value;
        var c00 = Vector512<float>.Zero; var c01 = c00; var c02 = c00; var c03 = c00;
        var c10 = c00; var c11 = c00; var c12 = c00; var c13 = c00;
        var c20 = c00; var c21 = c00; var c22 = c00; var c23 = c00;
        var c30 = c00; var c31 = c00; var c32 = c00; var c33 = c00;
        var c40 = c00; var c41 = c00; var c42 = c00; var c43 = c00;
        var c50 = c00; var c51 = c00; var c52 = c00; var c53 = c00;
        int steps = k / 32;
        long rb3 = 3 * rowBytes;
        float* end = xp + 32L * steps * rn;
        byte* wc = w;
        bool spread = Sse.IsSupported && pass >= 0;
        bool prefetch = Sse.IsSupported && !spread;
        int rowLines = (int)((TE.Bytes(k) + 63) / 64), totalLines = 4 * rowLines;
        long step = TE.Bytes(32); // bytes of W per row per step of 32 values
        int perStep = Math.Max(1, (totalLines + passes * steps - 1) / Math.Max(1, passes * steps));
        int cursor = Math.Max(pass, 0) * steps * perStep;
        int prow = cursor % 4, pline = cursor / 4 % rowLines; // the 4 rows' lines in the order the next group reads them
        byte* pfBase = pf;
        for (float* a = xp; a < end; a += 32 * rn, wc += step, pf += step)
        {
            if (prefetch)
            {
                Sse.Prefetch0(pf); Sse.Prefetch0(pf + rowBytes); Sse.Prefetch0(pf + 2 * rowBytes); Sse.Prefetch0(pf + rb3);
                if (step > 64)
                {
                    Sse.Prefetch0(pf + 64); Sse.Prefetch0(pf + rowBytes + 64); Sse.Prefetch0(pf + 2 * rowBytes + 64); Sse.Prefetch0(pf + rb3 + 64);
                }
            }
            if (spread)
            {
                for (int q = 0; q < perStep; q++)
                {
                    long off = prow * rowBytes + pline * 64;
                    Sse.Prefetch0(pfBase + off);
                    if (pf2 != null) Sse.Prefetch1(pf2 + off);
                    if (++prow == 4)
                    {
                        prow = 0;
                        if (++pline == rowLines) pline = 0; // the last pass's spare slots go round again
                    }
                }
            }
            var v0 = TE.First(wc); var v1 = TE.First(wc + rowBytes);
            var v2 = TE.First(wc + 2 * rowBytes); var v3 = TE.First(wc + rb3);
            var u = Vector512.Load(a);
            c00 = Vector512.FusedMultiplyAdd(u, v0, c00); c01 = Vector512.FusedMultiplyAdd(u, v1, c01);
            c02 = Vector512.FusedMultiplyAdd(u, v2, c02); c03 = Vector512.FusedMultiplyAdd(u, v3, c03);
            if (rn > 1)
            {
                u = Vector512.Load(a + 16);
                c10 = Vector512.FusedMultiplyAdd(u, v0, c10); c11 = Vector512.FusedMultiplyAdd(u, v1, c11);
                c12 = Vector512.FusedMultiplyAdd(u, v2, c12); c13 = Vector512.FusedMultiplyAdd(u, v3, c13);
            }
            if (rn > 2)
            {
                u = Vector512.Load(a + 32);
                c20 = Vector512.FusedMultiplyAdd(u, v0, c20); c21 = Vector512.FusedMultiplyAdd(u, v1, c21);
                c22 = Vector512.FusedMultiplyAdd(u, v2, c22); c23 = Vector512.FusedMultiplyAdd(u, v3, c23);
            }
            if (rn > 3)
            {
                u = Vector512.Load(a + 48);
                c30 = Vector512.FusedMultiplyAdd(u, v0, c30); c31 = Vector512.FusedMultiplyAdd(u, v1, c31);
                c32 = Vector512.FusedMultiplyAdd(u, v2, c32); c33 = Vector512.FusedMultiplyAdd(u, v3, c33);
            }
            if (rn > 4)
            {
                u = Vector512.Load(a + 64);
                c40 = Vector512.FusedMultiplyAdd(u, v0, c40); c41 = Vector512.FusedMultiplyAdd(u, v1, c41);
                c42 = Vector512.FusedMultiplyAdd(u, v2, c42); c43 = Vector512.FusedMultiplyAdd(u, v3, c43);
            }
            if (rn > 5)
            {
                u = Vector512.Load(a + 80);
                c50 = Vector512.FusedMultiplyAdd(u, v0, c50); c51 = Vector512.FusedMultiplyAdd(u, v1, c51);
                c52 = Vector512.FusedMultiplyAdd(u, v2, c52); c53 = Vector512.FusedMultiplyAdd(u, v3, c53);
            }
            float* b = a + 16 * rn;
            v0 = TE.Second(wc); v1 = TE.Second(wc + rowBytes);
            v2 = TE.Second(wc + 2 * rowBytes); v3 = TE.Second(wc + rb3);
            u = Vector512.Load(b);
            c00 = Vector512.FusedMultiplyAdd(u, v0, c00); c01 = Vector512.FusedMultiplyAdd(u, v1, c01);
            c02 = Vector512.FusedMultiplyAdd(u, v2, c02); c03 = Vector512.FusedMultiplyAdd(u, v3, c03);
            if (rn > 1)
            {
                u = Vector512.Load(b + 16);
                c10 = Vector512.FusedMultiplyAdd(u, v0, c10); c11 = Vector512.FusedMultiplyAdd(u, v1, c11);
                c12 = Vector512.FusedMultiplyAdd(u, v2, c12); c13 = Vector512.FusedMultiplyAdd(u, v3, c13);
            }
            if (rn > 2)
            {
                u = Vector512.Load(b + 32);
                c20 = Vector512.FusedMultiplyAdd(u, v0, c20); c21 = Vector512.FusedMultiplyAdd(u, v1, c21);
                c22 = Vector512.FusedMultiplyAdd(u, v2, c22); c23 = Vector512.FusedMultiplyAdd(u, v3, c23);
            }
            if (rn > 3)
            {
                u = Vector512.Load(b + 48);
                c30 = Vector512.FusedMultiplyAdd(u, v0, c30); c31 = Vector512.FusedMultiplyAdd(u, v1, c31);
                c32 = Vector512.FusedMultiplyAdd(u, v2, c32); c33 = Vector512.FusedMultiplyAdd(u, v3, c33);
            }
            if (rn > 4)
            {
                u = Vector512.Load(b + 64);
                c40 = Vector512.FusedMultiplyAdd(u, v0, c40); c41 = Vector512.FusedMultiplyAdd(u, v1, c41);
                c42 = Vector512.FusedMultiplyAdd(u, v2, c42); c43 = Vector512.FusedMultiplyAdd(u, v3, c43);
            }
            if (rn > 5)
            {
                u = Vector512.Load(b + 80);
                c50 = Vector512.FusedMultiplyAdd(u, v0, c50); c51 = Vector512.FusedMultiplyAdd(u, v1, c51);
                c52 = Vector512.FusedMultiplyAdd(u, v2, c52); c53 = Vector512.FusedMultiplyAdd(u, v3, c53);
            }
        }
        // every sum is stored before the first call: the accumulators must not live across a call (every zmm is
        // caller-saved, and the JIT would spill them on every iteration of the loop)
        var z = Vector128<float>.Zero;
        (Simd.Sum4(c00, c01, c02, c03) + (add ? Vector128.Load(y) : z)).Store(y);
        if (rn > 1) (Simd.Sum4(c10, c11, c12, c13) + (add ? Vector128.Load(y + ldy) : z)).Store(y + ldy);
        if (rn > 2) (Simd.Sum4(c20, c21, c22, c23) + (add ? Vector128.Load(y + 2L * ldy) : z)).Store(y + 2L * ldy);
        if (rn > 3) (Simd.Sum4(c30, c31, c32, c33) + (add ? Vector128.Load(y + 3L * ldy) : z)).Store(y + 3L * ldy);
        if (rn > 4) (Simd.Sum4(c40, c41, c42, c43) + (add ? Vector128.Load(y + 4L * ldy) : z)).Store(y + 4L * ldy);
        if (rn > 5) (Simd.Sum4(c50, c51, c52, c53) + (add ? Vector128.Load(y + 5L * ldy) : z)).Store(y + 5L * ldy);
        int p = 32 * steps, tail = k - p;
        if (tail > 0)
            for (int r = 0; r < rn; r++) AddTail4<TE>(end + r * tail - p, w, rowBytes, p, k, y + (long)r * ldy); // row r's tail at end + r * tail
    }
}
