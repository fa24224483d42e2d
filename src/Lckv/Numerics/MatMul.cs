using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lckv.Numerics;

/// <summary>y[m, n] = x[m, k] · w[n, k]^T with x, y in f32 and w in f32/f16/bf16 (widened in registers) or Q8_0/Q4_0
/// (dequantized in registers: each value is f16(d) * q exactly, so the product is the f32 product over the dequantized
/// weights, x never quantized).</summary>
/// <remarks>
/// Few rows of x (decode): each thread streams its share of W's rows once, 4 rows at a time, and dots them against
/// the rows of x kept in cache (lanes along k). Many rows (prefill, batched decode): a blocked GEMM with lanes along m:
/// x is packed transposed into 16-row panels, W into 16-row panels widened to f32, and a 16x16 register tile (16
/// accumulators, W broadcast) is transposed in registers when it is written to y. Between the two, 15-16 rows with f32
/// W and a larger x: the same 16x16 tile over all of k, W copied into L1 behind the FMAs (MatMul.Panel.cs).
/// Work is split across the <see cref="WorkerPool"/> in contiguous chunks of W's rows (columns of y). Each path, and
/// each variant inside one, is kept because bench/Lckv.Bench's `paths` mode shows it 5% or more ahead of the next-best
/// way on some shape of the presets (docs/benchmarks.md lists them with that evidence).
/// </remarks>
public static unsafe partial class MatMul
{
    /// <summary>From this many rows of x the blocked GEMM is used; below, the streaming dot kernel.</summary>
    internal const int GemmMinRows = 8;

    private const int KC = 256;  // k block: a packed W micro-panel is 16 x KC f32 (16 KiB, stays in L1)
    private const int PrefetchChunk = 16; // k steps of a tile between two rows of the next panel's prefetch
    private const int MC = 384;  // m block: packed x is MC x KC f32 (384 KiB, stays in L2)
    private const int AllKFloats = 192 * 1024; // packed x up to 768 KiB (L2) is packed whole: W is then streamed once, row panel by row panel
    private const long MinWorkPerThread = 1 << 16; // multiply-adds below which a chunk is not worth a thread

    /// <summary>Fast path: SIMD, split across the worker pool in chunks.</summary>
    // x is (m, k), w is (n, k), y is (m, n)
    public static void Multiply(ReadOnlySpan<float> x, in WeightMatrix w, Span<float> y, int m)
    {
        Check(x, w, y, m);
        fixed (float* px = x, py = y)
            Run(px, new Targets(w, py), m);
    }

    /// <summary>
    /// y0 = x · w0^T and y1 = x · w1^T in one call (e.g. a layer's gate and up projections): x is read and packed
    /// once, and one split of the columns of both across the workers replaces two.
    /// </summary>
    public static void Multiply(ReadOnlySpan<float> x, in WeightMatrix w0, Span<float> y0, in WeightMatrix w1, Span<float> y1, int m)
    {
        Check(x, w0, y0, m);
        Check(x, w1, y1, m);
        SameInput(w0, w1);
        fixed (float* px = x, p0 = y0, p1 = y1)
        {
            var t = new Targets(w0, p0);
            t.Add(w1, p1);
            Run(px, t, m);
        }
    }

    /// <summary>Three products of the same x in one call (e.g. a layer's q, k and v projections).</summary>
    public static void Multiply(ReadOnlySpan<float> x, in WeightMatrix w0, Span<float> y0, in WeightMatrix w1, Span<float> y1,
        in WeightMatrix w2, Span<float> y2, int m)
    {
        Check(x, w0, y0, m);
        Check(x, w1, y1, m);
        Check(x, w2, y2, m);
        SameInput(w0, w1);
        SameInput(w0, w2);
        fixed (float* px = x, p0 = y0, p1 = y1, p2 = y2)
        {
            var t = new Targets(w0, p0);
            t.Add(w1, p1);
            t.Add(w2, p2);
            Run(px, t, m);
        }
    }

    private static void SameInput(in WeightMatrix a, in WeightMatrix b)
    {
        if (a.Cols != b.Cols || a.DType != b.DType)
            throw new ArgumentException($"weights multiplied together must share width and dtype ({a.Rows}x{a.Cols} {a.DType}, {b.Rows}x{b.Cols} {b.DType})");
    }

    private static void Run(float* x, in Targets t, int m)
    {
        int k = t.K, n = t.Total;
        if (m == 0 || n == 0) return;
        if (k == 0)
        {
            for (int s = 0; s < t.Count; s++) new Span<float>(t.Y(s), m * t.N(s)).Clear();
            return;
        }
        switch (t.DType)
        {
            case DType.F32: Dispatch<F32Element>(x, t, m); break;
            case DType.BF16: Dispatch<BF16Element>(x, t, m); break;
            case DType.F16: Dispatch<F16Element>(x, t, m); break;
            case DType.Q8_0: F16Table.EnsureCreated(); Dispatch<Q8_0Element>(x, t, m); break;
            case DType.Q4_0: F16Table.EnsureCreated(); Dispatch<Q4_0Element>(x, t, m); break;
            default: throw new ArgumentException($"weights must be f32, f16, bf16, Q8_0 or Q4_0, not {t.DType}");
        }
    }

    /// <summary>
    /// Up to three weight matrices of the same width and dtype with their outputs, seen as one run of columns
    /// [0, Total): matrix s holds columns [Start(s), Start(s) + N(s)).
    /// </summary>
    private struct Targets
    {
        private byte* _w0, _w1, _w2;
        private float* _y0, _y1, _y2;
        private int _n0, _n1, _n2;
        public int Count, K, Total;
        public DType DType;

        public Targets(in WeightMatrix w, float* y)
        {
            _w0 = (byte*)w.Data; _y0 = y; _n0 = w.Rows;
            Count = 1; K = w.Cols; Total = w.Rows; DType = w.DType;
        }

        public void Add(in WeightMatrix w, float* y)
        {
            if (Count == 1) { _w1 = (byte*)w.Data; _y1 = y; _n1 = w.Rows; }
            else { _w2 = (byte*)w.Data; _y2 = y; _n2 = w.Rows; }
            Count++;
            Total += w.Rows;
        }

        public readonly byte* W(int s) => s == 0 ? _w0 : s == 1 ? _w1 : _w2;
        public readonly float* Y(int s) => s == 0 ? _y0 : s == 1 ? _y1 : _y2;
        public readonly int N(int s) => s == 0 ? _n0 : s == 1 ? _n1 : _n2;
        public readonly int Start(int s) => s == 0 ? 0 : s == 1 ? _n0 : _n0 + _n1;

        /// <summary>Matrix s (w, y, n) and the part of the global columns [j0, j1) in it, as its own columns [a, b)
        /// (empty: a &gt;= b).</summary>
        public readonly void Clip(int s, int j0, int j1, out byte* w, out float* y, out int n, out int a, out int b)
        {
            int o = Start(s);
            w = W(s);
            y = Y(s);
            n = N(s);
            a = Math.Max(j0 - o, 0);
            b = Math.Min(j1 - o, n);
        }
    }

    /// <summary>Scalar reference, f64 accumulation-free: one f32 FMA chain per output, in k order.</summary>
    public static void MultiplyReference(ReadOnlySpan<float> x, in WeightMatrix w, Span<float> y, int m)
    {
        int k = w.Cols, n = w.Rows;
        Check(x, w, y, m);
        for (int i = 0; i < m; i++)
        {
            var xr = x.Slice(i * k, k);
            for (int j = 0; j < n; j++)
            {
                float s = 0;
                for (int p = 0; p < k; p++) s += xr[p] * w[j, p];
                y[i * n + j] = s;
            }
        }
    }

    internal static void Check(ReadOnlySpan<float> x, in WeightMatrix w, Span<float> y, int m)
    {
        if (m < 0) throw new ArgumentOutOfRangeException(nameof(m));
        if (x.Length < (long)m * w.Cols) throw new ArgumentException($"x holds {x.Length} values, needs {m}x{w.Cols}", nameof(x));
        if (y.Length < (long)m * w.Rows) throw new ArgumentException($"y holds {y.Length} values, needs {m}x{w.Rows}", nameof(y));
    }

    /// <summary>The kernel paths of <see cref="Multiply(ReadOnlySpan{float}, in WeightMatrix, Span{float}, int)"/>.</summary>
    internal enum Path
    {
        /// <summary>The choice of <see cref="Choose"/> (never forced otherwise outside benchmarks and tests).</summary>
        Auto,
        /// <summary>One f32 chain per output: hardware without 256-bit vectors.</summary>
        Scalar,
        /// <summary>Few rows, 512-bit: W streamed once, 4 rows at a time, against all rows of x (MatMul.Rows.cs).</summary>
        DotRows,
        /// <summary>15-16 rows, 512-bit: a 16 x 16 register tile over all of k, W copied into L1 behind the FMAs (MatMul.Panel.cs).</summary>
        Panel,
        /// <summary>Few rows, 256-bit: each row of x against 4 rows of W.</summary>
        Dot256,
        /// <summary>The blocked GEMM with lanes along m.</summary>
        Gemm,
    }

    /// <summary>The path a product takes unless one is forced; GEMM where a forced path does not apply.</summary>
    internal static Path Choose(DType dtype, int m, int k) => dtype switch
    {
        DType.F32 => Choose<F32Element>(m, k),
        DType.BF16 => Choose<BF16Element>(m, k),
        DType.F16 => Choose<F16Element>(m, k),
        DType.Q8_0 => Choose<Q8_0Element>(m, k),
        _ => Choose<Q4_0Element>(m, k),
    };

    private static Path Choose<TE>(int m, int k) where TE : struct, IWeight
    {
        if (!Vector256.IsHardwareAccelerated) return Path.Scalar;
        var forced = Forced;
        if (forced != Path.Auto)
        {
            bool applies = forced switch
            {
                Path.DotRows => Vector512.IsHardwareAccelerated,
                Path.Panel => Vector512.IsHardwareAccelerated && m <= 16,
                _ => true,
            };
            return applies && forced != Path.Scalar ? forced : Path.Gemm;
        }
        if (Vector512.IsHardwareAccelerated && UseDotRows<TE>(m, k)) return Path.DotRows;
        if (Vector512.IsHardwareAccelerated && UsePanel<TE>(m, k)) return Path.Panel;
        return m < GemmMinRows ? Path.Dot256 : Path.Gemm;
    }

    /// <summary>A path every product called from this thread takes where it applies (benchmarks and tests; <see cref="Path.Auto"/> otherwise).</summary>
    internal static Path Forced
    {
        get => _forced;
        set => _forced = value;
    }

    [ThreadStatic] private static Path _forced;
    [ThreadStatic] private static Variants _off;

    /// <summary>Parts of the kernels that can be switched off, so that a benchmark compares each with the way without it.</summary>
    [Flags]
    internal enum Variants
    {
        None = 0,
        /// <summary>One row of x: W's rows read one after another, one stream per thread (else as a 1-row pass of the dot kernel).</summary>
        SequentialGemv = 1,
        /// <summary>8-16 rows of x: k walked in blocks of <see cref="DotKBlock"/>.</summary>
        KBlocks = 2,
        /// <summary>The next W group's lines prefetched once, spread over the passes (else each pass prefetches what it reads).</summary>
        SpreadPrefetch = 4,
        /// <summary>With the spread prefetch, the group after next prefetched into L2 as well.</summary>
        TwoAhead = 8,
        /// <summary>GEMM: x packed whole when it fits L2, W streamed once (else blocked over m and k).</summary>
        GemmAllK = 16,
    }

    /// <summary>The variants switched off in products called from this thread (benchmarks and tests; none otherwise).</summary>
    internal static Variants Off
    {
        get => _off;
        set => _off = value;
    }

    private static bool On(Variants v) => (_off & v) == 0;

    /// <summary>The variants that take effect in an m x k x n product of the given dtype on its chosen path.</summary>
    internal static Variants Active(DType dtype, int m, int k)
    {
        var v = Variants.None;
        switch (Choose(dtype, m, k))
        {
            case Path.DotRows:
                bool quantized = DTypes.IsBlockQuantized(dtype), blocked = KBlocked(quantized, m, k);
                if (m == 1) v |= Variants.SequentialGemv;
                if (blocked) v |= Variants.KBlocks;
                if (m > 1 && !blocked && Spreads(quantized, m, k)) v |= Variants.SpreadPrefetch | Variants.TwoAhead;
                break;
            case Path.Gemm:
                int lanes = Vector512.IsHardwareAccelerated ? 16 : 8;
                if ((long)((m + lanes - 1) / lanes * lanes) * ((k + KC - 1) / KC) * KC <= AllKFloats) v |= Variants.GemmAllK;
                break;
        }
        return v;
    }

    private static void Dispatch<TE>(float* x, in Targets t, int m) where TE : struct, IWeight
    {
        var pool = WorkerPool.Shared;
        int k = t.K, n = t.Total;
        long perRow = (long)m * k; // multiply-adds per row of W
        int grain = (int)Math.Clamp((MinWorkPerThread + perRow - 1) / perRow, 1, int.MaxValue);
        switch (Choose<TE>(m, k))
        {
            case Path.Scalar:
                for (int s = 0; s < t.Count; s++)
                    pool.Run(t.N(s), new ScalarJob<TE> { X = x, W = t.W(s), Y = t.Y(s), M = m, K = k, N = t.N(s) }, grain);
                break;
            case Path.DotRows:
                pool.Run(n, new DotRowsJob<TE> { X = x, T = t, M = m, K = k, Off = _off }, (grain + 3) & ~3);
                break;
            case Path.Panel:
                pool.Run(n, new PanelJob<TE> { X = x, T = t, M = m, K = k }, (grain + 15) & ~15);
                break;
            case Path.Dot256:
                grain = (grain + 3) & ~3;
                for (int s = 0; s < t.Count; s++)
                    if (TE.Block == 1)
                        pool.Run(t.N(s), new Rows256Job<TE> { X = x, W = t.W(s), Y = t.Y(s), M = m, K = k, N = t.N(s) }, grain);
                    else
                        pool.Run(t.N(s), new DotJob<TE> { X = x, W = t.W(s), Y = t.Y(s), M = m, K = k, N = t.N(s) }, grain);
                break;
            default:
                grain = (grain + 15) & ~15;
                pool.Run(n, new GemmJob<TE> { X = x, T = t, M = m, K = k, Off = _off }, grain);
                break;
        }
    }

    private struct ScalarJob<TE> : IRangeBody where TE : struct, IWeight
    {
        public float* X, Y;
        public byte* W;
        public int M, K, N;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void Invoke(int j0, int j1)
        {
            for (int i = 0; i < M; i++)
                for (int j = j0; j < j1; j++)
                {
                    float* xr = X + (long)i * K;
                    byte* wr = W + j * TE.Bytes(K);
                    float s = 0;
                    for (int p = 0; p < K; p++) s += xr[p] * TE.At(wr, p);
                    Y[(long)i * N + j] = s;
                }
        }
    }

    // ---------------------------------------------------------------- few rows: streaming dot products

    // 256-bit hardware, Q8_0/Q4_0 W (f32/f16/bf16 W take Rows256Job): each row of x against 4 rows of W at a time
    private struct DotJob<TE> : IRangeBody where TE : struct, IWeight
    {
        public float* X, Y;
        public byte* W;
        public int M, K, N;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void Invoke(int j0, int j1)
        {
            long rowBytes = TE.Bytes(K);
            int j = j0;
            for (; j + 4 <= j1; j += 4)
                for (int i = 0; i < M; i++)
                    Dot1x4V256<TE>(X + (long)i * K, W + j * rowBytes, rowBytes, K, Y + (long)i * N + j);
            for (; j < j1; j++)
                for (int i = 0; i < M; i++)
                    Y[(long)i * N + j] = Dot<TE>(X + (long)i * K, W + j * rowBytes, K);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Dot<TE>(float* x, byte* w, int k) where TE : struct, IWeight
    {
        int p = 0;
        float s = 0;
        if (Vector512.IsHardwareAccelerated && k >= 16)
        {
            var a = Vector512<float>.Zero;
            for (; p <= k - 16; p += 16) a = Vector512.FusedMultiplyAdd(Vector512.Load(x + p), TE.At512(w, p), a);
            s = Vector512.Sum(a);
        }
        else if (Vector256.IsHardwareAccelerated && k >= 8)
        {
            var a = Vector256<float>.Zero;
            for (; p <= k - 8; p += 8) a = Vector256.FusedMultiplyAdd(Vector256.Load(x + p), TE.At256(w, p), a);
            s = Vector256.Sum(a);
        }
        for (; p < k; p++) s += x[p] * TE.At(w, p);
        return s;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot1x4V256<TE>(float* x, byte* w, long rowBytes, int k, float* y) where TE : struct, IWeight
    {
        byte* w0 = w, w1 = w + rowBytes, w2 = w + 2 * rowBytes, w3 = w + 3 * rowBytes;
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        int p = 0;
        if (TE.Block > 1)
        {
            // a block at a time, its 4 vectors addressed from the block's start by constants, so that each row's scale
            // is read once per block
            for (long o = 0; p <= k - 32; p += 32, o += TE.Bytes(32))
            {
                Quarter4<TE>(x + p, w0 + o, w1 + o, w2 + o, w3 + o, 0, ref a0, ref a1, ref a2, ref a3);
                Quarter4<TE>(x + p, w0 + o, w1 + o, w2 + o, w3 + o, 8, ref a0, ref a1, ref a2, ref a3);
                Quarter4<TE>(x + p, w0 + o, w1 + o, w2 + o, w3 + o, 16, ref a0, ref a1, ref a2, ref a3);
                Quarter4<TE>(x + p, w0 + o, w1 + o, w2 + o, w3 + o, 24, ref a0, ref a1, ref a2, ref a3);
            }
        }
        for (; p <= k - 8; p += 8)
        {
            var xv = Vector256.Load(x + p);
            a0 = Vector256.FusedMultiplyAdd(xv, TE.At256(w0, p), a0);
            a1 = Vector256.FusedMultiplyAdd(xv, TE.At256(w1, p), a1);
            a2 = Vector256.FusedMultiplyAdd(xv, TE.At256(w2, p), a2);
            a3 = Vector256.FusedMultiplyAdd(xv, TE.At256(w3, p), a3);
        }
        y[0] = Vector256.Sum(a0); y[1] = Vector256.Sum(a1); y[2] = Vector256.Sum(a2); y[3] = Vector256.Sum(a3);
        AddTail4<TE>(x, w, rowBytes, p, k, y);
    }

    // a_c += x[q, q + 8) * W_c[q, q + 8) for the 4 rows W_c at w0..w3 (block boundaries)
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Quarter4<TE>(float* x, byte* w0, byte* w1, byte* w2, byte* w3, int q,
        ref Vector256<float> a0, ref Vector256<float> a1, ref Vector256<float> a2, ref Vector256<float> a3) where TE : struct, IWeight
    {
        var xq = Vector256.Load(x + q);
        a0 = Vector256.FusedMultiplyAdd(xq, TE.At256(w0, q), a0);
        a1 = Vector256.FusedMultiplyAdd(xq, TE.At256(w1, q), a1);
        a2 = Vector256.FusedMultiplyAdd(xq, TE.At256(w2, q), a2);
        a3 = Vector256.FusedMultiplyAdd(xq, TE.At256(w3, q), a3);
    }

    // y[c] += x[q] * W[c, q] for q in [p, k), for the 4 rows of W at w: the k tail of a 4-row dot kernel, in k order
    private static void AddTail4<TE>(float* x, byte* w, long rowBytes, int p, int k, float* y) where TE : struct, IWeight
    {
        for (int c = 0; c < 4; c++)
        {
            byte* wc = w + c * rowBytes;
            float acc = y[c];
            for (int q = p; q < k; q++) acc += x[q] * TE.At(wc, q);
            y[c] = acc;
        }
    }

    // ---------------------------------------------------------------- many rows: blocked GEMM, lanes along m

    /// <summary>Per-thread packing buffers, freed with the thread.</summary>
    private sealed class Scratch
    {
        [ThreadStatic] private static Scratch? _current;
        public readonly float* X; // MC x KC
        public readonly float* W; // 16 x KC
        public readonly float* W2; // 16 x KC: the second buffer of the panel kernel
        public readonly float* Acc; // 16 x 16: the panel kernel's sums between k blocks

        private Scratch()
        {
            X = (float*)NativeMemory.AlignedAlloc((nuint)(Math.Max(MC * KC, AllKFloats) * sizeof(float)), 64);
            W = (float*)NativeMemory.AlignedAlloc((nuint)(16 * KC * sizeof(float)), 64);
            W2 = (float*)NativeMemory.AlignedAlloc((nuint)(16 * KC * sizeof(float)), 64);
            Acc = (float*)NativeMemory.AlignedAlloc(256 * sizeof(float), 64);
        }

        ~Scratch()
        {
            NativeMemory.AlignedFree(X);
            NativeMemory.AlignedFree(W);
            NativeMemory.AlignedFree(W2);
            NativeMemory.AlignedFree(Acc);
        }

        public static Scratch Current => _current ??= new Scratch();
    }

    private struct GemmJob<TE> : IRangeBody where TE : struct, IWeight
    {
        public float* X;
        public Targets T;
        public int M, K;
        public Variants Off; // the caller's

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void Invoke(int j0, int j1)
        {
            var scratch = Scratch.Current;
            float* xp = scratch.X, wp = scratch.W;
            bool wide = Vector512.IsHardwareAccelerated;
            int lanes = wide ? 16 : 8;
            int mPad = (M + lanes - 1) / lanes * lanes;
            int kBlocks = (K + KC - 1) / KC;
            long rowBytes = TE.Bytes(K);
            if ((long)mPad * kBlocks * KC <= AllKFloats && (Off & Variants.GemmAllK) == 0)
            {
                // few rows (batched decode): pack all of x once, then stream each 16-row panel of W along k
                for (int b = 0; b < kBlocks; b++)
                    PackX(X + b * KC, K, M, Math.Min(KC, K - b * KC), lanes, xp + (long)b * mPad * KC);
                for (int s = 0; s < T.Count; s++)
                {
                    T.Clip(s, j0, j1, out byte* W, out float* Y, out int N, out int c0, out int c1);
                    for (int jr = c0; jr < c1; jr += lanes)
                    {
                        int nb = Math.Min(lanes, c1 - jr);
                        for (int b = 0; b < kBlocks; b++)
                        {
                            int pc = b * KC, kb = Math.Min(KC, K - pc);
                            // while this panel computes, the same k block of the next panel streams into L2
                            byte* next = jr + lanes < c1 ? W + (jr + lanes) * rowBytes + TE.Bytes(pc) : null;
                            int nextRows = next == null ? 0 : Math.Min(lanes, c1 - jr - lanes);
                            PackW<TE>(W + jr * rowBytes + TE.Bytes(pc), rowBytes, nb, kb, lanes, wp, wide ? null : next, nextRows);
                            float* xb = xp + (long)b * mPad * KC;
                            for (int q = 0; q < M; q += lanes)
                            {
                                float* yt = Y + (long)q * N + jr;
                                int rows = Math.Min(lanes, M - q);
                                // the first tile spreads the prefetch of the next panel's block over its k loop, so that
                                // W streams from memory while the FMAs run (a burst of prefetches would mostly be dropped)
                                if (wide) Tile16x16(xb + (long)q * kb, wp, kb, yt, N, rows, nb, b > 0,
                                    q == 0 ? next : null, rowBytes, nextRows, (int)TE.Bytes(kb));
                                else Tile8x8(xb + (long)q * kb, wp, kb, yt, N, rows, nb, b > 0);
                            }
                        }
                    }
                }
                return;
            }
            for (int pc = 0; pc < K; pc += KC)
            {
                int kb = Math.Min(KC, K - pc);
                bool accumulate = pc > 0;
                for (int ic = 0; ic < M; ic += MC)
                {
                    int mb = Math.Min(MC, M - ic);
                    PackX(X + (long)ic * K + pc, K, mb, kb, lanes, xp);
                    for (int s = 0; s < T.Count; s++)
                    {
                        T.Clip(s, j0, j1, out byte* W, out float* Y, out int N, out int c0, out int c1);
                        for (int jr = c0; jr < c1; jr += lanes)
                        {
                            int nb = Math.Min(lanes, c1 - jr);
                            PackW<TE>(W + jr * rowBytes + TE.Bytes(pc), rowBytes, nb, kb, lanes, wp, null, 0);
                            for (int q = 0; q < mb; q += lanes)
                            {
                                float* yt = Y + (long)(ic + q) * N + jr;
                                int rows = Math.Min(lanes, mb - q);
                                if (wide) Tile16x16(xp + (long)q * kb, wp, kb, yt, N, rows, nb, accumulate);
                                else Tile8x8(xp + (long)q * kb, wp, kb, yt, N, rows, nb, accumulate);
                            }
                        }
                    }
                }
            }
        }
    }

    // values [0, n) of a row at w (a block boundary) widened to f32 at dst with the widest vectors available
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Widen<TE>(byte* w, float* dst, int n) where TE : struct, IWeight
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= n - 16; i += 16) TE.At512(w, i).Store(dst + i);
        if (Vector256.IsHardwareAccelerated)
            for (; i <= n - 8; i += 8) TE.At256(w, i).Store(dst + i);
        for (; i < n; i++) dst[i] = TE.At(w, i);
    }

    // x is (rows, ldx), a block of (rows, kb); xp receives panels of `lanes` rows, each (kb, lanes): xp[q*kb + p*lanes + r]
    // = x[q + r, p]; rows past the end are zero
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackX(float* x, int ldx, int rows, int kb, int lanes, float* xp)
    {
        for (int q = 0; q < rows; q += lanes)
        {
            float* panel = xp + (long)q * kb;
            int nr = Math.Min(lanes, rows - q);
            for (int r = 0; r < nr; r++)
            {
                float* src = x + (long)(q + r) * ldx;
                float* dst = panel + r;
                for (int p = 0; p < kb; p++) dst[p * lanes] = src[p];
            }
            for (int r = nr; r < lanes; r++)
            {
                float* dst = panel + r;
                for (int p = 0; p < kb; p++) dst[p * lanes] = 0;
            }
        }
    }

    // w is rows of rowBytes stored bytes, a block of (rows, kb) values from a block boundary; wp receives `lanes` rows of
    // stride KC widened to f32, rows past the end zero; the same block of prefetchRows rows at prefetch (the next panel)
    // is fetched into L2
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackW<TE>(byte* w, long rowBytes, int rows, int kb, int lanes, float* wp, byte* prefetch, int prefetchRows) where TE : struct, IWeight
    {
        for (int r = 0; r < rows; r++) Widen<TE>(w + r * rowBytes, wp + r * KC, kb);
        if (prefetch != null && Sse.IsSupported)
        {
            long bytes = TE.Bytes(kb);
            for (int r = 0; r < prefetchRows; r++)
            {
                byte* src = prefetch + r * rowBytes;
                for (int b = 0; b < bytes; b += 64) Sse.Prefetch1(src + b);
            }
        }
        for (int r = rows; r < lanes; r++) new Span<float>(wp + r * KC, kb).Clear();
    }

    // y tile (rows <= 16, cols <= 16) at y with row stride ldy, = or += xp panel (kb, 16) · wp (16 rows, stride KC)^T.
    // pf: optional rows (pfRows of stride pfStride, pfBytes each) fetched into L2 a row at a time, one row per
    // PrefetchChunk steps of k
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile16x16(float* xp, float* wp, int kb, float* y, int ldy, int rows, int cols, bool accumulate,
        byte* pf = null, long pfStride = 0, int pfRows = 0, int pfBytes = 0)
    {
        if (Sse.IsSupported)
            for (int i = 0; i < rows; i++) Sse.Prefetch1(y + (long)i * ldy);
        if (pf == null || !Sse.IsSupported) pfRows = 0;
        var c0 = Vector512<float>.Zero; var c1 = c0; var c2 = c0; var c3 = c0;
        var c4 = c0; var c5 = c0; var c6 = c0; var c7 = c0;
        var c8 = c0; var c9 = c0; var c10 = c0; var c11 = c0;
        var c12 = c0; var c13 = c0; var c14 = c0; var c15 = c0;
        float* w = wp;
        float* end = xp + (long)kb * 16;
        int pr = 0;
        for (float* a = xp; a < end;)
        {
            float* stop = end - a > PrefetchChunk * 16 ? a + PrefetchChunk * 16 : end;
            if (pr < pfRows)
            {
                byte* src = pf + pr * pfStride;
                for (int o = 0; o < pfBytes; o += 64) Sse.Prefetch1(src + o);
                pr++;
            }
            for (; a < stop; a += 16, w++)
            {
                var v = Vector512.Load(a);
                c0 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[0 * KC]), c0);
                c1 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[1 * KC]), c1);
                c2 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[2 * KC]), c2);
                c3 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[3 * KC]), c3);
                c4 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[4 * KC]), c4);
                c5 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[5 * KC]), c5);
                c6 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[6 * KC]), c6);
                c7 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[7 * KC]), c7);
                c8 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[8 * KC]), c8);
                c9 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[9 * KC]), c9);
                c10 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[10 * KC]), c10);
                c11 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[11 * KC]), c11);
                c12 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[12 * KC]), c12);
                c13 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[13 * KC]), c13);
                c14 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[14 * KC]), c14);
                c15 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[15 * KC]), c15);
            }
        }
        for (; pr < pfRows; pr++)
        {
            byte* src = pf + pr * pfStride;
            for (int o = 0; o < pfBytes; o += 64) Sse.Prefetch1(src + o);
        }
        // c_j holds column j for the 16 rows; transpose so that r_i holds row i for the 16 columns
        Transpose16(ref c0, ref c1, ref c2, ref c3, ref c4, ref c5, ref c6, ref c7,
            ref c8, ref c9, ref c10, ref c11, ref c12, ref c13, ref c14, ref c15);
        if (rows == 16 && cols == 16)
        {
            if (accumulate)
            {
                Add(y, c0); Add(y + ldy, c1); Add(y + 2 * ldy, c2); Add(y + 3 * ldy, c3);
                Add(y + 4 * ldy, c4); Add(y + 5 * ldy, c5); Add(y + 6 * ldy, c6); Add(y + 7 * ldy, c7);
                Add(y + 8 * ldy, c8); Add(y + 9 * ldy, c9); Add(y + 10 * ldy, c10); Add(y + 11 * ldy, c11);
                Add(y + 12 * ldy, c12); Add(y + 13 * ldy, c13); Add(y + 14 * ldy, c14); Add(y + 15 * ldy, c15);
            }
            else
            {
                c0.Store(y); c1.Store(y + ldy); c2.Store(y + 2 * ldy); c3.Store(y + 3 * ldy);
                c4.Store(y + 4 * ldy); c5.Store(y + 5 * ldy); c6.Store(y + 6 * ldy); c7.Store(y + 7 * ldy);
                c8.Store(y + 8 * ldy); c9.Store(y + 9 * ldy); c10.Store(y + 10 * ldy); c11.Store(y + 11 * ldy);
                c12.Store(y + 12 * ldy); c13.Store(y + 13 * ldy); c14.Store(y + 14 * ldy); c15.Store(y + 15 * ldy);
            }
            return;
        }
        float* t = stackalloc float[256];
        c0.Store(t); c1.Store(t + 16); c2.Store(t + 32); c3.Store(t + 48);
        c4.Store(t + 64); c5.Store(t + 80); c6.Store(t + 96); c7.Store(t + 112);
        c8.Store(t + 128); c9.Store(t + 144); c10.Store(t + 160); c11.Store(t + 176);
        c12.Store(t + 192); c13.Store(t + 208); c14.Store(t + 224); c15.Store(t + 240);
        StorePartial(t, 16, y, ldy, rows, cols, accumulate);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Add(float* y, Vector512<float> v) => (Vector512.Load(y) + v).Store(y);

    // t is (rows, tld) row-major
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void StorePartial(float* t, int tld, float* y, int ldy, int rows, int cols, bool accumulate)
    {
        for (int i = 0; i < rows; i++)
        {
            float* yr = y + (long)i * ldy;
            float* tr = t + i * tld;
            if (accumulate) for (int j = 0; j < cols; j++) yr[j] += tr[j];
            else for (int j = 0; j < cols; j++) yr[j] = tr[j];
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose16(
        ref Vector512<float> a0, ref Vector512<float> a1, ref Vector512<float> a2, ref Vector512<float> a3,
        ref Vector512<float> a4, ref Vector512<float> a5, ref Vector512<float> a6, ref Vector512<float> a7,
        ref Vector512<float> a8, ref Vector512<float> a9, ref Vector512<float> a10, ref Vector512<float> a11,
        ref Vector512<float> a12, ref Vector512<float> a13, ref Vector512<float> a14, ref Vector512<float> a15)
    {
        // 32-bit interleave of pairs
        var t0 = Avx512F.UnpackLow(a0, a1); var t1 = Avx512F.UnpackHigh(a0, a1);
        var t2 = Avx512F.UnpackLow(a2, a3); var t3 = Avx512F.UnpackHigh(a2, a3);
        var t4 = Avx512F.UnpackLow(a4, a5); var t5 = Avx512F.UnpackHigh(a4, a5);
        var t6 = Avx512F.UnpackLow(a6, a7); var t7 = Avx512F.UnpackHigh(a6, a7);
        var t8 = Avx512F.UnpackLow(a8, a9); var t9 = Avx512F.UnpackHigh(a8, a9);
        var t10 = Avx512F.UnpackLow(a10, a11); var t11 = Avx512F.UnpackHigh(a10, a11);
        var t12 = Avx512F.UnpackLow(a12, a13); var t13 = Avx512F.UnpackHigh(a12, a13);
        var t14 = Avx512F.UnpackLow(a14, a15); var t15 = Avx512F.UnpackHigh(a14, a15);
        // 64-bit interleave: u(4g + e) holds rows 4g..4g+3 at element e of each 128-bit lane
        var u0 = Avx512F.UnpackLow(t0.AsDouble(), t2.AsDouble()).AsSingle();
        var u1 = Avx512F.UnpackHigh(t0.AsDouble(), t2.AsDouble()).AsSingle();
        var u2 = Avx512F.UnpackLow(t1.AsDouble(), t3.AsDouble()).AsSingle();
        var u3 = Avx512F.UnpackHigh(t1.AsDouble(), t3.AsDouble()).AsSingle();
        var u4 = Avx512F.UnpackLow(t4.AsDouble(), t6.AsDouble()).AsSingle();
        var u5 = Avx512F.UnpackHigh(t4.AsDouble(), t6.AsDouble()).AsSingle();
        var u6 = Avx512F.UnpackLow(t5.AsDouble(), t7.AsDouble()).AsSingle();
        var u7 = Avx512F.UnpackHigh(t5.AsDouble(), t7.AsDouble()).AsSingle();
        var u8 = Avx512F.UnpackLow(t8.AsDouble(), t10.AsDouble()).AsSingle();
        var u9 = Avx512F.UnpackHigh(t8.AsDouble(), t10.AsDouble()).AsSingle();
        var u10 = Avx512F.UnpackLow(t9.AsDouble(), t11.AsDouble()).AsSingle();
        var u11 = Avx512F.UnpackHigh(t9.AsDouble(), t11.AsDouble()).AsSingle();
        var u12 = Avx512F.UnpackLow(t12.AsDouble(), t14.AsDouble()).AsSingle();
        var u13 = Avx512F.UnpackHigh(t12.AsDouble(), t14.AsDouble()).AsSingle();
        var u14 = Avx512F.UnpackLow(t13.AsDouble(), t15.AsDouble()).AsSingle();
        var u15 = Avx512F.UnpackHigh(t13.AsDouble(), t15.AsDouble()).AsSingle();
        // gather 128-bit lanes: element e of lane L across the four row groups is row 4L + e
        Lanes(u0, u4, u8, u12, out a0, out a4, out a8, out a12);
        Lanes(u1, u5, u9, u13, out a1, out a5, out a9, out a13);
        Lanes(u2, u6, u10, u14, out a2, out a6, out a10, out a14);
        Lanes(u3, u7, u11, u15, out a3, out a7, out a11, out a15);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Lanes(Vector512<float> g0, Vector512<float> g1, Vector512<float> g2, Vector512<float> g3,
        out Vector512<float> l0, out Vector512<float> l1, out Vector512<float> l2, out Vector512<float> l3)
    {
        var v0 = Avx512F.Shuffle4x128(g0, g1, 0x44);
        var v1 = Avx512F.Shuffle4x128(g0, g1, 0xEE);
        var w0 = Avx512F.Shuffle4x128(g2, g3, 0x44);
        var w1 = Avx512F.Shuffle4x128(g2, g3, 0xEE);
        l0 = Avx512F.Shuffle4x128(v0, w0, 0x88);
        l1 = Avx512F.Shuffle4x128(v0, w0, 0xDD);
        l2 = Avx512F.Shuffle4x128(v1, w1, 0x88);
        l3 = Avx512F.Shuffle4x128(v1, w1, 0xDD);
    }

    // Vector256 fallback: 8 W rows x 8 rows of x, written through a small tile
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile8x8(float* xp, float* wp, int kb, float* y, int ldy, int rows, int cols, bool accumulate)
    {
        var c0 = Vector256<float>.Zero; var c1 = c0; var c2 = c0; var c3 = c0;
        var c4 = c0; var c5 = c0; var c6 = c0; var c7 = c0;
        float* w = wp;
        float* end = xp + (long)kb * 8;
        for (float* a = xp; a < end; a += 8, w++)
        {
            var v = Vector256.Load(a);
            c0 = Vector256.FusedMultiplyAdd(v, Vector256.Create(w[0 * KC]), c0);
            c1 = Vector256.FusedMultiplyAdd(v, Vector256.Create(w[1 * KC]), c1);
            c2 = Vector256.FusedMultiplyAdd(v, Vector256.Create(w[2 * KC]), c2);
            c3 = Vector256.FusedMultiplyAdd(v, Vector256.Create(w[3 * KC]), c3);
            c4 = Vector256.FusedMultiplyAdd(v, Vector256.Create(w[4 * KC]), c4);
            c5 = Vector256.FusedMultiplyAdd(v, Vector256.Create(w[5 * KC]), c5);
            c6 = Vector256.FusedMultiplyAdd(v, Vector256.Create(w[6 * KC]), c6);
            c7 = Vector256.FusedMultiplyAdd(v, Vector256.Create(w[7 * KC]), c7);
        }
        float* t = stackalloc float[64]; // t[j*8 + i] = column j, row i
        c0.Store(t); c1.Store(t + 8); c2.Store(t + 16); c3.Store(t + 24);
        c4.Store(t + 32); c5.Store(t + 40); c6.Store(t + 48); c7.Store(t + 56);
        for (int i = 0; i < rows; i++)
        {
            float* yr = y + (long)i * ldy;
            if (accumulate) for (int j = 0; j < cols; j++) yr[j] += t[j * 8 + i];
            else for (int j = 0; j < cols; j++) yr[j] = t[j * 8 + i];
        }
    }
}
