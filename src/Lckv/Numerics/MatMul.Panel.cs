using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lckv.Numerics;

public static unsafe partial class MatMul
{
    /// <summary>
    /// 15 or 16 rows of x (batched decode) with f32 W and an x too large for the row-blocked dot kernel, 512-bit: each
    /// thread transposes x into one panel of 16 lanes (a row of x per lane, rows past m zero) and walks its columns in
    /// tiles of 16 W rows with a 16 x 16 register tile that lives over the whole of k (no horizontal sums, no partial
    /// tiles written back). W is consumed in chunks of 16 rows x <see cref="PanelKb"/> values copied into one of two
    /// L1 buffers: while the FMAs of a chunk broadcast from one buffer, the next chunk is copied into the other a vector
    /// per step and the chunk after that is prefetched into L2, so W streams from memory behind the FMAs. It replaced the
    /// blocked GEMM on these shapes, which copies a panel of W in one burst, then computes, and writes the tile back once
    /// per k block. Up to 16 x 1536 the dot kernel (k in blocks) is ahead of it, and takes those shapes.
    /// </summary>
    private const int PanelKb = KC;

    private static bool UsePanel<TE>(int m, int k) where TE : struct, IWeight
        => typeof(TE) == typeof(F32Element) && m is 15 or 16 && 16L * k <= DotMaxXFloats;

    /// <summary>x (m &lt;= 16 rows) transposed into xT[p * 16 + r] = x[r, p], rows m..15 zero; on a cache line.</summary>
    private static class PanelPack
    {
        [ThreadStatic] private static float[]? _buffer;

        public static float* Apply(float* x, int m, int k)
        {
            long need = 16L * k;
            var buf = _buffer;
            if (buf is null || buf.Length < need + 16) _buffer = buf = GC.AllocateUninitializedArray<float>((int)need + 16, pinned: true);
            float* dst = (float*)(((nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buf)) + 63) & ~(nint)63);
            int p = 0;
            for (; p + 16 <= k; p += 16)
            {
                var a0 = Row(x, m, k, 0, p); var a1 = Row(x, m, k, 1, p); var a2 = Row(x, m, k, 2, p); var a3 = Row(x, m, k, 3, p);
                var a4 = Row(x, m, k, 4, p); var a5 = Row(x, m, k, 5, p); var a6 = Row(x, m, k, 6, p); var a7 = Row(x, m, k, 7, p);
                var a8 = Row(x, m, k, 8, p); var a9 = Row(x, m, k, 9, p); var a10 = Row(x, m, k, 10, p); var a11 = Row(x, m, k, 11, p);
                var a12 = Row(x, m, k, 12, p); var a13 = Row(x, m, k, 13, p); var a14 = Row(x, m, k, 14, p); var a15 = Row(x, m, k, 15, p);
                Transpose16(ref a0, ref a1, ref a2, ref a3, ref a4, ref a5, ref a6, ref a7,
                    ref a8, ref a9, ref a10, ref a11, ref a12, ref a13, ref a14, ref a15);
                float* d = dst + (long)p * 16;
                a0.Store(d); a1.Store(d + 16); a2.Store(d + 32); a3.Store(d + 48);
                a4.Store(d + 64); a5.Store(d + 80); a6.Store(d + 96); a7.Store(d + 112);
                a8.Store(d + 128); a9.Store(d + 144); a10.Store(d + 160); a11.Store(d + 176);
                a12.Store(d + 192); a13.Store(d + 208); a14.Store(d + 224); a15.Store(d + 240);
            }
            for (; p < k; p++)
                for (int r = 0; r < 16; r++) dst[(long)p * 16 + r] = r < m ? x[(long)r * k + p] : 0;
            return dst;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<float> Row(float* x, int m, int k, int r, int p) => r < m ? Vector512.Load(x + (long)r * k + p) : Vector512<float>.Zero;
    }

    /// <summary>The chunks of a thread's columns in the order they are computed: tile by tile (16 columns, across the
    /// targets), and within a tile k block by k block.</summary>
    private struct PanelChunks
    {
        private readonly Targets _t;
        private readonly int _j0, _j1, _k, _blocks;
        private readonly long _rowBytes, _chunkBytes, _lastBytes;
        private int _s, _end, _jr, _blk;
        private byte* _w;
        private float* _y;
        private int _n;
        public bool Valid;

        /// <summary>rowBytes: bytes of a row of W; chunkBytes: of PanelKb values; lastBytes: of the values of the last k block.</summary>
        public PanelChunks(in Targets t, int j0, int j1, int k, long rowBytes, long chunkBytes, long lastBytes)
        {
            _t = t; _j0 = j0; _j1 = j1; _k = k;
            _rowBytes = rowBytes; _chunkBytes = chunkBytes; _lastBytes = lastBytes;
            _blocks = (k + PanelKb - 1) / PanelKb;
            _s = -1;
            NextTarget();
        }

        private void NextTarget()
        {
            while (++_s < _t.Count)
            {
                _t.Clip(_s, _j0, _j1, out _w, out _y, out _n, out int a, out _end);
                if (a < _end) { _jr = a; _blk = 0; Valid = true; return; }
            }
            Valid = false;
        }

        public void MoveNext()
        {
            if (!Valid) return;
            if (++_blk < _blocks) return;
            _blk = 0;
            _jr += 16;
            if (_jr >= _end) NextTarget();
        }

        public readonly int Blocks => _blocks;
        public readonly int Rows => Math.Min(16, _end - _jr);
        public readonly int Kb => Math.Min(PanelKb, _k - _blk * PanelKb);
        /// <summary>Bytes of the chunk's values in one row.</summary>
        public readonly long KbBytes => _blk == _blocks - 1 ? _lastBytes : _chunkBytes;
        public readonly long RowBytes => _rowBytes;
        /// <summary>The chunk's first value in W (row jr, column blk * PanelKb).</summary>
        public readonly byte* W => _w + _jr * _rowBytes + _blk * _chunkBytes;
        public readonly float* Y => _y + _jr;
        public readonly int Ldy => _n;
    }

    private struct PanelJob<TE> : IRangeBody where TE : struct, IWeight
    {
        public float* X;
        public Targets T;
        public int M, K;

        public readonly void Invoke(int j0, int j1)
        {
            float* xT = PanelPack.Apply(X, M, K); // per thread, as RowPack
            var scratch = Scratch.Current;
            float* bufA = scratch.W, bufB = scratch.W2;
            var cur = new PanelChunks(T, j0, j1, K, TE.Bytes(K), TE.Bytes(PanelKb), TE.Bytes(K - (K - 1) / PanelKb * PanelKb));
            if (!cur.Valid) return;
            var copy = cur; copy.MoveNext();
            var fetch = copy; fetch.MoveNext();
            // the first two chunks are requested together before the first is copied: nothing prefetched them
            PrefetchPanelChunk(cur);
            PrefetchPanelChunk(copy);
            CopyRows<TE>(cur, bufA, 0);
            int parity = 0;
            while (cur.Valid) PanelTile<TE>(xT, M, ref cur, ref copy, ref fetch, bufA, bufB, scratch.Acc, ref parity);
        }
    }

    private static void PrefetchPanelChunk(in PanelChunks c)
    {
        if (!c.Valid || !Sse.IsSupported) return;
        long bytes = c.KbBytes;
        for (int r = 0; r < c.Rows; r++)
        {
            byte* row = c.W + r * c.RowBytes;
            for (int o = 0; o < bytes; o += 64) Sse.Prefetch1(row + o);
        }
    }

    // rows [from, 16) of chunk c copied (widened) into buf (rows of stride PanelKb); rows past the chunk's last repeat it
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void CopyRows<TE>(in PanelChunks c, float* buf, int from) where TE : struct, IWeight
    {
        int kb = c.Kb, rows = c.Rows;
        byte* w = c.W;
        long rb = c.RowBytes;
        for (int r = from; r < 16; r++)
            CopyTail<TE>(w + Math.Min(r, rows - 1) * rb, buf + r * PanelKb, 0, kb);
    }

    // values [q0, kb) of one row, src on a block boundary
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CopyTail<TE>(byte* src, float* dst, int q0, int kb) where TE : struct, IWeight
    {
        int q = q0;
        for (; q + 16 <= kb; q += 16) TE.At512(src, q).Store(dst + q);
        for (; q < kb; q++) dst[q] = TE.At(src, q);
    }

    /// <summary>
    /// One tile: 16 columns over all of k. cur is its first chunk (already in the buffer of `parity`); copy and
    /// fetch are the chunks one and two ahead. The 16 x 16 sums live in `acc` between the k blocks (the block kernel
    /// keeps them in registers; this method's calls would make the JIT keep them on the stack).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void PanelTile<TE>(float* xT, int m, ref PanelChunks cur, ref PanelChunks copy, ref PanelChunks fetch,
        float* bufA, float* bufB, float* acc, ref int parity) where TE : struct, IWeight
    {
        float* y = cur.Y;
        int ldy = cur.Ldy, cols = cur.Rows, blocks = cur.Blocks;
        bool prefetch = Sse.IsSupported;
        for (int blk = 0; blk < blocks; blk++)
        {
            float* wb = parity == 0 ? bufA : bufB, nb = parity == 0 ? bufB : bufA;
            int kb = cur.Kb;
            var s = new PanelStream { Nb = nb };
            if (copy.Valid)
            {
                s.Cw = copy.W; s.Crb = copy.RowBytes; s.CRows = copy.Rows; s.CKb = copy.Kb;
                s.NCopy = Math.Min(16, s.CKb / 16);
            }
            if (fetch.Valid && prefetch)
            {
                s.Fw = fetch.W; s.Frb = fetch.RowBytes; s.FRows = fetch.Rows;
                s.NFetch = (int)Math.Min(16, (fetch.KbBytes + 63) / 64);
            }
            PanelBlock<TE>(xT + (long)blk * PanelKb * 16, wb, kb, acc, blk == 0, s);
            // what the groups did not copy: the k tails of the rows they copied, and the rows they did not reach
            if (copy.Valid)
            {
                int done = Math.Min(kb / 16, 16);
                if (s.NCopy * 16 < s.CKb)
                    for (int r = 0; r < done; r++) CopyTail<TE>(s.Cw + Math.Min(r, s.CRows - 1) * s.Crb, nb + r * PanelKb, s.NCopy * 16, s.CKb);
                if (done < 16) CopyRows<TE>(copy, nb, done);
            }
            parity ^= 1;
            cur.MoveNext(); copy.MoveNext(); fetch.MoveNext();
        }
        StoreTile(acc, y, ldy, m, cols);
    }

    /// <summary>Where the block kernel copies the next chunk (a row per group of 16 steps, NCopy vectors of it) and
    /// what it prefetches (a row of the chunk after per group, NFetch lines of it).</summary>
    private struct PanelStream
    {
        public byte* Cw, Fw;
        public float* Nb;
        public long Crb, Frb;
        public int CRows, CKb, NCopy, FRows, NFetch;
    }

    // acc (16 x 16, acc[j * 16 + r] = sum for column j, row r) = or += the kb steps of xT against the buffered chunk wb
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void PanelBlock<TE>(float* a, float* wb, int kb, float* acc, bool first, in PanelStream s) where TE : struct, IWeight
    {
        Vector512<float> c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15;
        if (first)
        {
            c0 = Vector512<float>.Zero; c1 = c0; c2 = c0; c3 = c0; c4 = c0; c5 = c0; c6 = c0; c7 = c0;
            c8 = c0; c9 = c0; c10 = c0; c11 = c0; c12 = c0; c13 = c0; c14 = c0; c15 = c0;
        }
        else
        {
            c0 = Vector512.Load(acc); c1 = Vector512.Load(acc + 16); c2 = Vector512.Load(acc + 32); c3 = Vector512.Load(acc + 48);
            c4 = Vector512.Load(acc + 64); c5 = Vector512.Load(acc + 80); c6 = Vector512.Load(acc + 96); c7 = Vector512.Load(acc + 112);
            c8 = Vector512.Load(acc + 128); c9 = Vector512.Load(acc + 144); c10 = Vector512.Load(acc + 160); c11 = Vector512.Load(acc + 176);
            c12 = Vector512.Load(acc + 192); c13 = Vector512.Load(acc + 208); c14 = Vector512.Load(acc + 224); c15 = Vector512.Load(acc + 240);
        }
        byte* cw = s.Cw, fw = s.Fw;
        float* nbuf = s.Nb;
        long crb = s.Crb, frb = s.Frb;
        int cLast = s.CRows - 1, fLast = s.FRows - 1, nCopy = s.NCopy, nFetch = s.NFetch;
        float* w = wb;
        // groups of 16 steps; a group copies and prefetches only when it is whole (the caller copies the rest)
        for (int g = 0, p0 = 0; p0 < kb; g++, p0 += 16)
        {
            int steps = Math.Min(16, kb - p0);
            int nc = steps == 16 ? nCopy : 0, nf = steps == 16 ? nFetch : 0;
            byte* cs = cw + Math.Min(g, cLast) * crb;
            float* cd = nbuf + g * PanelKb;
            byte* fs = fw + Math.Min(g, fLast) * frb;
            for (int q = 0; q < steps; q++, a += 16, w++)
            {
                var v = Vector512.Load(a);
                c0 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[0 * PanelKb]), c0);
                c1 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[1 * PanelKb]), c1);
                c2 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[2 * PanelKb]), c2);
                c3 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[3 * PanelKb]), c3);
                c4 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[4 * PanelKb]), c4);
                c5 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[5 * PanelKb]), c5);
                c6 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[6 * PanelKb]), c6);
                c7 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[7 * PanelKb]), c7);
                c8 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[8 * PanelKb]), c8);
                c9 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[9 * PanelKb]), c9);
                c10 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[10 * PanelKb]), c10);
                c11 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[11 * PanelKb]), c11);
                c12 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[12 * PanelKb]), c12);
                c13 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[13 * PanelKb]), c13);
                c14 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[14 * PanelKb]), c14);
                c15 = Vector512.FusedMultiplyAdd(v, Vector512.Create(w[15 * PanelKb]), c15);
                if (q < nc) TE.At512(cs, q * 16).Store(cd + q * 16);
                if (q < nf) Sse.Prefetch1(fs + q * 64);
            }
        }
        c0.Store(acc); c1.Store(acc + 16); c2.Store(acc + 32); c3.Store(acc + 48);
        c4.Store(acc + 64); c5.Store(acc + 80); c6.Store(acc + 96); c7.Store(acc + 112);
        c8.Store(acc + 128); c9.Store(acc + 144); c10.Store(acc + 160); c11.Store(acc + 176);
        c12.Store(acc + 192); c13.Store(acc + 208); c14.Store(acc + 224); c15.Store(acc + 240);
    }

    // y rows [0, m), columns [0, cols) = the transposed acc tile (acc[j * 16 + i] is y[i, j])
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void StoreTile(float* acc, float* y, int ldy, int m, int cols)
    {
        var c0 = Vector512.Load(acc); var c1 = Vector512.Load(acc + 16); var c2 = Vector512.Load(acc + 32); var c3 = Vector512.Load(acc + 48);
        var c4 = Vector512.Load(acc + 64); var c5 = Vector512.Load(acc + 80); var c6 = Vector512.Load(acc + 96); var c7 = Vector512.Load(acc + 112);
        var c8 = Vector512.Load(acc + 128); var c9 = Vector512.Load(acc + 144); var c10 = Vector512.Load(acc + 160); var c11 = Vector512.Load(acc + 176);
        var c12 = Vector512.Load(acc + 192); var c13 = Vector512.Load(acc + 208); var c14 = Vector512.Load(acc + 224); var c15 = Vector512.Load(acc + 240);
        Transpose16(ref c0, ref c1, ref c2, ref c3, ref c4, ref c5, ref c6, ref c7,
            ref c8, ref c9, ref c10, ref c11, ref c12, ref c13, ref c14, ref c15);
        if (m == 16 && cols == 16)
        {
            c0.Store(y); c1.Store(y + ldy); c2.Store(y + 2 * ldy); c3.Store(y + 3 * ldy);
            c4.Store(y + 4 * ldy); c5.Store(y + 5 * ldy); c6.Store(y + 6 * ldy); c7.Store(y + 7 * ldy);
            c8.Store(y + 8 * ldy); c9.Store(y + 9 * ldy); c10.Store(y + 10 * ldy); c11.Store(y + 11 * ldy);
            c12.Store(y + 12 * ldy); c13.Store(y + 13 * ldy); c14.Store(y + 14 * ldy); c15.Store(y + 15 * ldy);
            return;
        }
        c0.Store(acc); c1.Store(acc + 16); c2.Store(acc + 32); c3.Store(acc + 48);
        c4.Store(acc + 64); c5.Store(acc + 80); c6.Store(acc + 96); c7.Store(acc + 112);
        c8.Store(acc + 128); c9.Store(acc + 144); c10.Store(acc + 160); c11.Store(acc + 176);
        c12.Store(acc + 192); c13.Store(acc + 208); c14.Store(acc + 224); c15.Store(acc + 240);
        StorePartial(acc, 16, y, ldy, m, cols, false);
    }
}
