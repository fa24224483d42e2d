using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lckv.Numerics;

/// <summary>
/// y = gelu(gelu(x W1) W2) for a few rows x [n, k]: a two-layer map with a wide hidden layer, W1 [k, hidden] and W2
/// given as its transpose [r, hidden]. W1 is first rearranged by <see cref="Pack"/> into column panels whose k rows are
/// contiguous, so one pass reads it sequentially; each panel is used by every row while it is in the first-level cache
/// (each x element broadcast against a panel row). The second product is r dot products along hidden per row.
/// h [n, hidden] is left holding gelu(x W1).
/// </summary>
public static unsafe class GeluMlp
{
    private const int Wide = 64, Narrow = 16;

    /// <summary>W1 [k, hidden] row-major in the layout <see cref="Apply"/> reads: panels of 64 columns while 64 remain,
    /// then of 16, then one of the rest, each panel [k, width] row-major.</summary>
    public static float[] Pack(ReadOnlySpan<float> w1, int k, int hidden)
    {
        if (k < 0 || hidden < 0 || w1.Length < (long)k * hidden) throw new ArgumentException($"w1 holds fewer than {k} x {hidden} floats");
        var packed = new float[k * hidden];
        int j = 0, at = 0;
        while (j < hidden)
        {
            int width = Width(hidden - j);
            for (int t = 0; t < k; t++)
                for (int c = 0; c < width; c++) packed[at++] = w1[t * hidden + j + c];
            j += width;
        }
        return packed;
    }

    private static int Width(int left) => left >= Wide ? Wide : left >= Narrow ? Narrow : left;

    /// <summary>y [n, r] = gelu(gelu(x W1) W2) with W1 packed by <see cref="Pack"/> and w2t = W2 transposed [r, hidden];
    /// h: n * hidden floats of scratch. next: the packed W1 of the call the caller makes next, if any; while the
    /// products run, the lines of the next panel, then of w2t, then of next's first panel are prefetched into the
    /// second-level cache (the maps of a model are read from memory once per step, not from cache).</summary>
    public static void Apply(ReadOnlySpan<float> x, int n, int k, ReadOnlySpan<float> packedW1, ReadOnlySpan<float> w2t, int hidden, int r,
        Span<float> y, Span<float> h, ReadOnlySpan<float> next = default)
    {
        Check(x, n, k, packedW1, w2t, hidden, r, y, h);
        if (n == 0) return;
        fixed (float* px = x, pw1 = packedW1, pw2 = w2t, py = y, ph = h, pn = next)
        {
            int j = 0;
            float* panel = pw1;
            while (j < hidden)
            {
                int width = Width(hidden - j), after = j + width;
                // the region read after this panel
                var ahead = after < hidden ? new Ahead(panel + (long)k * width, k * Width(hidden - after))
                    : new Ahead(pw2, r * hidden, pn, next.Length >= k * Width(hidden) ? k * Width(hidden) : 0);
                Panel(px, n, k, panel, width, ph + j, hidden, ref ahead);
                panel += (long)k * width;
                j = after;
            }
            Gelu.Apply(new ReadOnlySpan<float>(ph, n * hidden), new Span<float>(ph, n * hidden));
            for (int i = 0; i < n; i++) Second(ph + (long)i * hidden, hidden, pw2, r, py + (long)i * r);
        }
        Gelu.Apply(y[..(n * r)], y[..(n * r)]);
    }

    /// <summary>The scalar definition over W1 as stored ([k, hidden] row-major): one product at a time, then the GELU
    /// of every element.</summary>
    public static void ApplyReference(ReadOnlySpan<float> x, int n, int k, ReadOnlySpan<float> w1, ReadOnlySpan<float> w2t, int hidden, int r,
        Span<float> y, Span<float> h)
    {
        Check(x, n, k, w1, w2t, hidden, r, y, h);
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < hidden; j++)
            {
                float s = 0;
                for (int t = 0; t < k; t++) s += x[i * k + t] * w1[t * hidden + j];
                h[i * hidden + j] = Gelu.Apply(s);
            }
            for (int c = 0; c < r; c++)
            {
                float s = 0;
                for (int j = 0; j < hidden; j++) s += h[i * hidden + j] * w2t[c * hidden + j];
                y[i * r + c] = Gelu.Apply(s);
            }
        }
    }

    private static void Check(ReadOnlySpan<float> x, int n, int k, ReadOnlySpan<float> w1, ReadOnlySpan<float> w2t, int hidden, int r,
        Span<float> y, Span<float> h)
    {
        if (n < 0 || k < 0 || hidden < 0 || r < 0) throw new ArgumentException("sizes must not be negative");
        if (x.Length < (long)n * k || w1.Length < (long)k * hidden || w2t.Length < (long)r * hidden
            || y.Length < (long)n * r || h.Length < (long)n * hidden)
            throw new ArgumentException($"buffers too short for {n} rows of {k} -> {hidden} -> {r}");
    }

    // up to two regions of floats to prefetch, one cache line at a time
    private struct Ahead(float* first, int firstFloats, float* second = null, int secondFloats = 0)
    {
        private float* _at = first, _second = second;
        private int _lines = (firstFloats + 15) / 16, _secondLines = (secondFloats + 15) / 16;

        // the next `want` lines or fewer (all in one region), as a start and a count
        public int Take(int want, out float* start)
        {
            if (_lines == 0 && _secondLines > 0) { _at = _second; _lines = _secondLines; _secondLines = 0; }
            int count = Math.Min(want, _lines);
            start = _at;
            _at += count * 16;
            _lines -= count;
            return count;
        }
    }

    // h[i, 0..width) = x[i] . panel (before the GELU) for every row, the panel [k, width] read from cache after the first
    // block; the 4-row tiles prefetch the region read after it
    private static void Panel(float* x, int n, int k, float* panel, int width, float* h, int hidden, ref Ahead ahead)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated && width >= Narrow)
        {
            if (width == Wide)
            {
                for (; i + 4 <= n; i += 4)
                {
                    int lines = ahead.Take(2 * k, out var pf);
                    Tile4x64(x + (long)i * k, k, panel, h + (long)i * hidden, hidden, pf, lines);
                }
                for (; i < n; i++) Tile1x64(x + (long)i * k, k, panel, h + (long)i * hidden);
            }
            else
            {
                for (; i + 4 <= n; i += 4) Tile4x16(x + (long)i * k, k, panel, h + (long)i * hidden, hidden);
                for (; i < n; i++) Tile1x16(x + (long)i * k, k, panel, h + (long)i * hidden);
            }
        }
        else if (Vector256.IsHardwareAccelerated && width >= 8)
        {
            // 16 ymm registers: 4 rows x 16 columns at a time (a 64-wide panel is four of them), then 8 columns
            int c = 0;
            for (; c + 16 <= width; c += 16)
            {
                int row = 0;
                for (; row + 4 <= n; row += 4) Tile4x16Avx(x + (long)row * k, k, panel + c, width, h + (long)row * hidden + c, hidden);
                for (; row < n; row++)
                {
                    Tile1x8Avx(x + (long)row * k, k, panel + c, width, h + (long)row * hidden + c);
                    Tile1x8Avx(x + (long)row * k, k, panel + c + 8, width, h + (long)row * hidden + c + 8);
                }
            }
            if (c + 8 <= width)
            {
                for (int row = 0; row < n; row++) Tile1x8Avx(x + (long)row * k, k, panel + c, width, h + (long)row * hidden + c);
                c += 8;
            }
            for (int row = 0; row < n; row++) Columns(x + (long)row * k, k, panel, width, c, width, h + (long)row * hidden);
            return;
        }
        for (; i < n; i++) Columns(x + (long)i * k, k, panel, width, 0, width, h + (long)i * hidden);
    }

    // 4 rows x 64 columns; prefetches `lines` cache lines from pf, two per step of t
    private static void Tile4x64(float* x, int k, float* w, float* h, int hidden, float* pf, int lines)
    {
        float* x1 = x + k, x2 = x1 + k, x3 = x2 + k;
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default, a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default, a30 = default, a31 = default, a32 = default, a33 = default;
        for (int t = 0; t < k; t++, w += Wide)
        {
            if (2 * t < lines && Sse.IsSupported)
            {
                Sse.Prefetch1(pf + 32 * t);
                if (2 * t + 1 < lines) Sse.Prefetch1(pf + 32 * t + 16);
            }
            var b0 = Vector512.Load(w); var b1 = Vector512.Load(w + 16); var b2 = Vector512.Load(w + 32); var b3 = Vector512.Load(w + 48);
            var s = Vector512.Create(x[t]);
            a00 = Vector512.FusedMultiplyAdd(s, b0, a00); a01 = Vector512.FusedMultiplyAdd(s, b1, a01);
            a02 = Vector512.FusedMultiplyAdd(s, b2, a02); a03 = Vector512.FusedMultiplyAdd(s, b3, a03);
            s = Vector512.Create(x1[t]);
            a10 = Vector512.FusedMultiplyAdd(s, b0, a10); a11 = Vector512.FusedMultiplyAdd(s, b1, a11);
            a12 = Vector512.FusedMultiplyAdd(s, b2, a12); a13 = Vector512.FusedMultiplyAdd(s, b3, a13);
            s = Vector512.Create(x2[t]);
            a20 = Vector512.FusedMultiplyAdd(s, b0, a20); a21 = Vector512.FusedMultiplyAdd(s, b1, a21);
            a22 = Vector512.FusedMultiplyAdd(s, b2, a22); a23 = Vector512.FusedMultiplyAdd(s, b3, a23);
            s = Vector512.Create(x3[t]);
            a30 = Vector512.FusedMultiplyAdd(s, b0, a30); a31 = Vector512.FusedMultiplyAdd(s, b1, a31);
            a32 = Vector512.FusedMultiplyAdd(s, b2, a32); a33 = Vector512.FusedMultiplyAdd(s, b3, a33);
        }
        a00.Store(h); a01.Store(h + 16); a02.Store(h + 32); a03.Store(h + 48);
        h += hidden;
        a10.Store(h); a11.Store(h + 16); a12.Store(h + 32); a13.Store(h + 48);
        h += hidden;
        a20.Store(h); a21.Store(h + 16); a22.Store(h + 32); a23.Store(h + 48);
        h += hidden;
        a30.Store(h); a31.Store(h + 16); a32.Store(h + 32); a33.Store(h + 48);
    }

    private static void Tile1x64(float* x, int k, float* w, float* h)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int t = 0; t < k; t++, w += Wide)
        {
            var s = Vector512.Create(x[t]);
            a0 = Vector512.FusedMultiplyAdd(s, Vector512.Load(w), a0); a1 = Vector512.FusedMultiplyAdd(s, Vector512.Load(w + 16), a1);
            a2 = Vector512.FusedMultiplyAdd(s, Vector512.Load(w + 32), a2); a3 = Vector512.FusedMultiplyAdd(s, Vector512.Load(w + 48), a3);
        }
        a0.Store(h); a1.Store(h + 16); a2.Store(h + 32); a3.Store(h + 48);
    }

    private static void Tile4x16(float* x, int k, float* w, float* h, int hidden)
    {
        float* x1 = x + k, x2 = x1 + k, x3 = x2 + k;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int t = 0; t < k; t++, w += Narrow)
        {
            var b = Vector512.Load(w);
            a0 = Vector512.FusedMultiplyAdd(Vector512.Create(x[t]), b, a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Create(x1[t]), b, a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Create(x2[t]), b, a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Create(x3[t]), b, a3);
        }
        a0.Store(h); a1.Store(h + hidden); a2.Store(h + 2 * hidden); a3.Store(h + 3 * hidden);
    }

    private static void Tile1x16(float* x, int k, float* w, float* h)
    {
        Vector512<float> a = default;
        for (int t = 0; t < k; t++, w += Narrow) a = Vector512.FusedMultiplyAdd(Vector512.Create(x[t]), Vector512.Load(w), a);
        a.Store(h);
    }

    // four rows by 16 columns of a panel whose rows are `stride` floats apart
    private static void Tile4x16Avx(float* x, int k, float* w, int stride, float* h, int hidden)
    {
        float* x1 = x + k, x2 = x1 + k, x3 = x2 + k;
        Vector256<float> a00 = default, a01 = default, a10 = default, a11 = default, a20 = default, a21 = default, a30 = default, a31 = default;
        for (int t = 0; t < k; t++, w += stride)
        {
            var b0 = Vector256.Load(w); var b1 = Vector256.Load(w + 8);
            var s = Vector256.Create(x[t]);
            a00 = Vector256.FusedMultiplyAdd(s, b0, a00); a01 = Vector256.FusedMultiplyAdd(s, b1, a01);
            s = Vector256.Create(x1[t]);
            a10 = Vector256.FusedMultiplyAdd(s, b0, a10); a11 = Vector256.FusedMultiplyAdd(s, b1, a11);
            s = Vector256.Create(x2[t]);
            a20 = Vector256.FusedMultiplyAdd(s, b0, a20); a21 = Vector256.FusedMultiplyAdd(s, b1, a21);
            s = Vector256.Create(x3[t]);
            a30 = Vector256.FusedMultiplyAdd(s, b0, a30); a31 = Vector256.FusedMultiplyAdd(s, b1, a31);
        }
        a00.Store(h); a01.Store(h + 8); h += hidden;
        a10.Store(h); a11.Store(h + 8); h += hidden;
        a20.Store(h); a21.Store(h + 8); h += hidden;
        a30.Store(h); a31.Store(h + 8);
    }

    private static void Tile1x8Avx(float* x, int k, float* w, int stride, float* h)
    {
        Vector256<float> a = default;
        for (int t = 0; t < k; t++, w += stride) a = Vector256.FusedMultiplyAdd(Vector256.Create(x[t]), Vector256.Load(w), a);
        a.Store(h);
    }

    // columns [from, to) of one row over a panel [k, width]
    private static void Columns(float* x, int k, float* panel, int width, int from, int to, float* h)
    {
        for (int c = from; c < to; c++)
        {
            float s = 0;
            for (int t = 0; t < k; t++) s += x[t] * panel[(long)t * width + c];
            h[c] = s;
        }
    }

    // y[c] = h . w2t[c] for one row, four outputs at a time (before the final GELU)
    private static void Second(float* h, int hidden, float* w2t, int r, float* y)
    {
        int c = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; c + 4 <= r; c += 4)
            {
                float* w0 = w2t + (long)c * hidden, w1 = w0 + hidden, w2 = w1 + hidden, w3 = w2 + hidden;
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                int j = 0;
                for (; j + 16 <= hidden; j += 16)
                {
                    var v = Vector512.Load(h + j);
                    a0 = Vector512.FusedMultiplyAdd(v, Vector512.Load(w0 + j), a0); a1 = Vector512.FusedMultiplyAdd(v, Vector512.Load(w1 + j), a1);
                    a2 = Vector512.FusedMultiplyAdd(v, Vector512.Load(w2 + j), a2); a3 = Vector512.FusedMultiplyAdd(v, Vector512.Load(w3 + j), a3);
                }
                float s0 = Vector512.Sum(a0), s1 = Vector512.Sum(a1), s2 = Vector512.Sum(a2), s3 = Vector512.Sum(a3);
                for (; j < hidden; j++) { s0 += h[j] * w0[j]; s1 += h[j] * w1[j]; s2 += h[j] * w2[j]; s3 += h[j] * w3[j]; }
                y[c] = s0; y[c + 1] = s1; y[c + 2] = s2; y[c + 3] = s3;
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            for (; c + 4 <= r; c += 4)
            {
                float* w0 = w2t + (long)c * hidden, w1 = w0 + hidden, w2 = w1 + hidden, w3 = w2 + hidden;
                Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
                int j = 0;
                for (; j + 8 <= hidden; j += 8)
                {
                    var v = Vector256.Load(h + j);
                    a0 = Vector256.FusedMultiplyAdd(v, Vector256.Load(w0 + j), a0); a1 = Vector256.FusedMultiplyAdd(v, Vector256.Load(w1 + j), a1);
                    a2 = Vector256.FusedMultiplyAdd(v, Vector256.Load(w2 + j), a2); a3 = Vector256.FusedMultiplyAdd(v, Vector256.Load(w3 + j), a3);
                }
                float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
                for (; j < hidden; j++) { s0 += h[j] * w0[j]; s1 += h[j] * w1[j]; s2 += h[j] * w2[j]; s3 += h[j] * w3[j]; }
                y[c] = s0; y[c + 1] = s1; y[c + 2] = s2; y[c + 3] = s3;
            }
        }
        for (; c < r; c++) y[c] = Simd.Dot(h, w2t + (long)c * hidden, hidden);
    }
}
