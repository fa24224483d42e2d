using System.Runtime.CompilerServices;
using System.Numerics;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Lckv.Numerics;

public static unsafe class Activations
{
    /// <summary>dst = silu(gate) * up, silu(g) = g / (1 + exp(-g)). dst may alias gate or up.</summary>
    public static void SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst)
    {
        int n = dst.Length;
        if (gate.Length < n || up.Length < n) throw new ArgumentException("gate and up must be at least as long as dst");
        fixed (float* g = gate, u = up, d = dst)
        {
            if (n >= 1 << 15) WorkerPool.Shared.Run(n, new SwiGluJob { G = g, U = u, D = d }, 4096);
            else SwiGluRange(g, u, d, n);
        }
    }

    public static void SwiGluReference(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst)
    {
        for (int i = 0; i < dst.Length; i++)
        {
            float g = gate[i];
            dst[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }

    private struct SwiGluJob : IRangeBody
    {
        public float* G, U, D;
        public readonly void Invoke(int start, int end) => SwiGluRange(G + start, U + start, D + start, end - start);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void SwiGluRange(float* g, float* u, float* d, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= n - 16; i += 16)
            {
                var v = Vector512.Load(g + i);
                (v / (Vector512<float>.One + Simd.Exp(-v)) * Vector512.Load(u + i)).Store(d + i);
            }
        if (Vector256.IsHardwareAccelerated)
            for (; i <= n - 8; i += 8)
            {
                var v = Vector256.Load(g + i);
                (v / (Vector256<float>.One + Vector256.Exp(-v)) * Vector256.Load(u + i)).Store(d + i);
            }
        for (; i < n; i++) d[i] = g[i] / (1f + MathF.Exp(-g[i])) * u[i];
    }
}

/// <summary>
/// GELU in its exact erf form, gelu(x) = x * Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2, and its derivative
/// Phi(x) + x * phi(x). erfc is Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7), evaluated in double and
/// for |x| so that the negative tail keeps its relative precision.
/// </summary>
public static class Gelu
{
    public static float Apply(float x) => (float)(x * Cdf(x));

    public static float Derivative(float x) => (float)(Cdf(x) + x * Math.Exp(-0.5 * (double)x * x) * 0.3989422804014327);

    /// <summary>dst = gelu(src); dst may alias src. The same formula in f32 lanes (within 1e-6 of <see cref="Apply(float)"/>).</summary>
    public static unsafe void Apply(ReadOnlySpan<float> src, Span<float> dst)
    {
        int n = dst.Length, i = 0;
        if (src.Length < n) throw new ArgumentException("src is shorter than dst");
        fixed (float* x = src, y = dst)
        {
            if (Vector512.IsHardwareAccelerated)
                for (; i <= n - 16; i += 16) Lanes(Vector512.Load(x + i)).Store(y + i);
            if (Vector256.IsHardwareAccelerated)
                for (; i <= n - 8; i += 8) Lanes(Vector256.Load(x + i)).Store(y + i);
        }
        for (; i < n; i++) dst[i] = Apply(src[i]);
    }

    /// <summary>dy *= gelu'(x), elementwise (the backward of gelu), in f32 lanes like <see cref="Apply(ReadOnlySpan{float}, Span{float})"/>.</summary>
    public static unsafe void MultiplyByDerivative(ReadOnlySpan<float> x, Span<float> dy)
    {
        int n = dy.Length, i = 0;
        if (x.Length < n) throw new ArgumentException("x is shorter than dy");
        fixed (float* px = x, pd = dy)
        {
            if (Vector512.IsHardwareAccelerated)
                for (; i <= n - 16; i += 16)
                {
                    var v = Vector512.Load(px + i);
                    var density = Simd.Exp(Vector512.Create(-0.5f) * v * v) * Vector512.Create(0.39894228f);
                    (Vector512.Load(pd + i) * (Cdf(v) + v * density)).Store(pd + i);
                }
            if (Vector256.IsHardwareAccelerated)
                for (; i <= n - 8; i += 8)
                {
                    var v = Vector256.Load(px + i);
                    var density = Vector256.Exp(Vector256.Create(-0.5f) * v * v) * Vector256.Create(0.39894228f);
                    (Vector256.Load(pd + i) * (Cdf(v) + v * density)).Store(pd + i);
                }
        }
        for (; i < n; i++) dy[i] *= Derivative(x[i]);
    }

    /// <summary>The scalar definition of the span form.</summary>
    public static void ApplyReference(ReadOnlySpan<float> src, Span<float> dst)
    {
        for (int i = 0; i < dst.Length; i++) dst[i] = Apply(src[i]);
    }

    internal static Vector512<float> Lanes(Vector512<float> x) => x * Cdf(x);

    internal static Vector256<float> Lanes(Vector256<float> x) => x * Cdf(x);

    // Phi(x) in f32 lanes: erfc(|x| / sqrt 2) / 2 by Abramowitz and Stegun 7.1.26, mirrored for x >= 0. 1 / (1 + p y)
    // is a reciprocal estimate refined by one Newton step, exp(-y^2) an exponential for non-positive arguments; a NaN x
    // gives a NaN cdf and so a NaN gelu.
    private static Vector512<float> Cdf(Vector512<float> x)
    {
        var one = Vector512<float>.One;
        var y = Vector512.Abs(x) * Vector512.Create(0.70710678f);
        var d = Vector512.FusedMultiplyAdd(Vector512.Create(0.3275911f), y, one);
        var t = Avx512F.Reciprocal14(d);
        t = Vector512.FusedMultiplyAdd(t, Vector512.FusedMultiplyAdd(-d, t, one), t);
        var poly = Vector512.FusedMultiplyAdd(Vector512.Create(1.061405429f), t, Vector512.Create(-1.453152027f));
        poly = Vector512.FusedMultiplyAdd(poly, t, Vector512.Create(1.421413741f));
        poly = Vector512.FusedMultiplyAdd(poly, t, Vector512.Create(-0.284496736f));
        poly = Vector512.FusedMultiplyAdd(poly, t, Vector512.Create(0.254829592f));
        var half = poly * t * ExpNonPositive(-(y * y)) * Vector512.Create(0.5f); // erfc(|x| / sqrt 2) / 2
        return Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(x, Vector512<float>.Zero), one - half, half);
    }

    private static Vector256<float> Cdf(Vector256<float> x)
    {
        var one = Vector256<float>.One;
        var y = Vector256.Abs(x) * Vector256.Create(0.70710678f);
        var d = Vector256.FusedMultiplyAdd(Vector256.Create(0.3275911f), y, one);
        Vector256<float> t;
        if (Avx.IsSupported)
        {
            // a 12-bit estimate; two Newton steps reach f32 precision
            t = Avx.Reciprocal(d);
            t = Vector256.FusedMultiplyAdd(t, Vector256.FusedMultiplyAdd(-d, t, one), t);
            t = Vector256.FusedMultiplyAdd(t, Vector256.FusedMultiplyAdd(-d, t, one), t);
        }
        else t = one / d;
        var poly = Vector256.FusedMultiplyAdd(Vector256.Create(1.061405429f), t, Vector256.Create(-1.453152027f));
        poly = Vector256.FusedMultiplyAdd(poly, t, Vector256.Create(1.421413741f));
        poly = Vector256.FusedMultiplyAdd(poly, t, Vector256.Create(-0.284496736f));
        poly = Vector256.FusedMultiplyAdd(poly, t, Vector256.Create(0.254829592f));
        var half = poly * t * Vector256.Exp(-(y * y)) * Vector256.Create(0.5f);
        return Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(x, Vector256<float>.Zero), one - half, half);
    }

    // exp(z) for z <= 0 (and NaN): below -87.3 the result is 2^-126 times a number below 2 instead of 0 or a subnormal,
    // which the cdf multiplies by at most 0.26
    private static Vector512<float> ExpNonPositive(Vector512<float> z) => Simd.ExpClamped(Avx512F.Max(z, Vector512.Create(-87.3f)));

    // Phi(x) = erfc(-x / sqrt 2) / 2
    private static double Cdf(double x)
    {
        double y = Math.Abs(x) * 0.7071067811865476;
        double t = 1 / (1 + 0.3275911 * y);
        double erfc = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))) * Math.Exp(-y * y);
        return x >= 0 ? 1 - 0.5 * erfc : 0.5 * erfc;
    }
}

/// <summary>Numerically stable softmax (the maximum is subtracted first).</summary>
public static unsafe class Softmax
{
    public static void Apply(Span<float> x)
    {
        if (x.IsEmpty) return;
        fixed (float* p = x)
        {
            int n = x.Length;
            float max = Max(p, n);
            float sum = ExpSum(p, n, max);
            Scale(p, n, 1f / sum);
        }
    }

    public static void ApplyReference(Span<float> x)
    {
        if (x.IsEmpty) return;
        float max = float.NegativeInfinity;
        foreach (float v in x) max = MathF.Max(max, v);
        float sum = 0;
        for (int i = 0; i < x.Length; i++) { x[i] = MathF.Exp(x[i] - max); sum += x[i]; }
        float inv = 1f / sum;
        for (int i = 0; i < x.Length; i++) x[i] *= inv;
    }

    /// <summary>log(sum(exp(x))) computed stably.</summary>
    public static float LogSumExp(ReadOnlySpan<float> x)
    {
        float max = float.NegativeInfinity;
        foreach (float v in x) max = MathF.Max(max, v);
        if (float.IsNegativeInfinity(max)) return max;
        double sum = 0;
        foreach (float v in x) sum += Math.Exp(v - max);
        return max + (float)Math.Log(sum);
    }

    /// <summary>The maximum, NaN if any element is NaN (as MathF.Max).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float Max(float* p, int n)
    {
        int i = 0;
        float max = float.NegativeInfinity;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var m = Vector512.Create(float.NegativeInfinity);
            for (; i <= n - 16; i += 16) m = Vector512.Max(m, Vector512.Load(p + i));
            for (int l = 0; l < 16; l++) max = MathF.Max(max, m[l]);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var m = Vector256.Create(float.NegativeInfinity);
            for (; i <= n - 8; i += 8) m = Vector256.Max(m, Vector256.Load(p + i));
            for (int l = 0; l < 8; l++) max = MathF.Max(max, m[l]);
        }
        for (; i < n; i++) max = MathF.Max(max, p[i]);
        return max;
    }

    // p[i] = exp(p[i] - max); returns the sum
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float ExpSum(float* p, int n, float max)
    {
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var m = Vector512.Create(max);
            var s = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var e = Simd.Exp(Vector512.Load(p + i) - m);
                e.Store(p + i);
                s += e;
            }
            sum = Vector512.Sum(s);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var m = Vector256.Create(max);
            var s = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8)
            {
                var e = Vector256.Exp(Vector256.Load(p + i) - m);
                e.Store(p + i);
                s += e;
            }
            sum = Vector256.Sum(s);
        }
        for (; i < n; i++) { p[i] = MathF.Exp(p[i] - max); sum += p[i]; }
        return sum;
    }

    /// <summary>sum of exp(p[i] - shift) over n values, in f64 across vector lanes' f32 partial sums; shift is at
    /// least every p[i] (their max).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static double SumExp(float* p, int n, float shift)
    {
        int i = 0;
        double sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var m = Vector512.Create(shift);
            for (; i <= n - 256; )
            {
                var s = Vector512<float>.Zero;
                for (int end = i + 256; i < end; i += 16) s += Simd.Exp(Vector512.Load(p + i) - m);
                sum += Vector512.Sum(s);
            }
            var t = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16) t += Simd.Exp(Vector512.Load(p + i) - m);
            sum += Vector512.Sum(t);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var m = Vector256.Create(shift);
            for (; i <= n - 128; )
            {
                var s = Vector256<float>.Zero;
                for (int end = i + 128; i < end; i += 8) s += Simd.ExpNonPositive(Vector256.Load(p + i) - m);
                sum += Vector256.Sum(s);
            }
            var t = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8) t += Simd.ExpNonPositive(Vector256.Load(p + i) - m);
            sum += Vector256.Sum(t);
        }
        for (; i < n; i++) sum += MathF.Exp(p[i] - shift);
        return sum;
    }

    /// <summary>dst[i] = exp(src[i] - shift) * scale with shift at least every src[i] (a log-sum-exp); dst may be src.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ExpScaled(float* src, float shift, float scale, float* dst, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var m = Vector512.Create(shift);
            var c = Vector512.Create(scale);
            for (; i <= n - 16; i += 16) (Simd.Exp(Vector512.Load(src + i) - m) * c).Store(dst + i);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var m = Vector256.Create(shift);
            var c = Vector256.Create(scale);
            for (; i <= n - 8; i += 8) (Simd.ExpNonPositive(Vector256.Load(src + i) - m) * c).Store(dst + i);
        }
        for (; i < n; i++) dst[i] = MathF.Exp(src[i] - shift) * scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scale(float* p, int n, float s)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (var v = Vector512.Create(s); i <= n - 16; i += 16) (Vector512.Load(p + i) * v).Store(p + i);
        if (Vector256.IsHardwareAccelerated)
            for (var v = Vector256.Create(s); i <= n - 8; i += 8) (Vector256.Load(p + i) * v).Store(p + i);
        for (; i < n; i++) p[i] *= s;
    }
}

public static unsafe class Selection
{
    /// <summary>Index of the largest value; the first one on ties; NaN never wins.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int Argmax(ReadOnlySpan<float> x)
    {
        int n = x.Length;
        fixed (float* p = x)
        {
            int i = 0;
            float best = float.NegativeInfinity;
            // pass 1: the largest non-NaN value
            if (Vector512.IsHardwareAccelerated && n >= 16)
            {
                var m = Vector512.Create(float.NegativeInfinity);
                for (; i <= n - 16; i += 16)
                {
                    var v = Vector512.Load(p + i);
                    m = Vector512.Max(m, Vector512.ConditionalSelect(Vector512.Equals(v, v), v, m));
                }
                for (int l = 0; l < 16; l++) if (m[l] > best) best = m[l];
            }
            else if (Vector256.IsHardwareAccelerated && n >= 8)
            {
                var m = Vector256.Create(float.NegativeInfinity);
                for (; i <= n - 8; i += 8)
                {
                    var v = Vector256.Load(p + i);
                    m = Vector256.Max(m, Vector256.ConditionalSelect(Vector256.Equals(v, v), v, m));
                }
                for (int l = 0; l < 8; l++) if (m[l] > best) best = m[l];
            }
            for (; i < n; i++) if (p[i] > best) best = p[i];
            // pass 2: its first occurrence (-0 and +0 compare equal, as in the reference)
            i = 0;
            if (Vector512.IsHardwareAccelerated)
            {
                var b = Vector512.Create(best);
                for (; i <= n - 16; i += 16)
                {
                    ulong bits = Vector512.Equals(Vector512.Load(p + i), b).ExtractMostSignificantBits();
                    if (bits != 0) return i + BitOperations.TrailingZeroCount(bits);
                }
            }
            if (Vector256.IsHardwareAccelerated)
            {
                var b = Vector256.Create(best);
                for (; i <= n - 8; i += 8)
                {
                    uint bits = Vector256.Equals(Vector256.Load(p + i), b).ExtractMostSignificantBits();
                    if (bits != 0) return i + BitOperations.TrailingZeroCount(bits);
                }
            }
            for (; i < n; i++) if (p[i] == best) return i;
            return 0; // empty or all NaN
        }
    }

    /// <summary>Scalar reference for <see cref="Argmax"/>.</summary>
    public static int ArgmaxReference(ReadOnlySpan<float> x)
    {
        int best = -1;
        float bv = float.NegativeInfinity;
        for (int i = 0; i < x.Length; i++)
            if (x[i] > bv || (best < 0 && !float.IsNaN(x[i]))) { bv = x[i]; best = i; }
        return best < 0 ? 0 : best;
    }

    /// <summary>
    /// Writes the indices of the k largest values into dst (length >= k), largest first, ties by lower index.
    /// Returns the number written (min(k, x.Length)).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int TopK(ReadOnlySpan<float> x, int k, Span<int> dst)
    {
        k = Math.Min(k, x.Length);
        if (k <= 0) return 0;
        if (dst.Length < k) throw new ArgumentException("destination shorter than k", nameof(dst));
        int count = 0, n = x.Length, i = 0;
        fixed (float* p = x)
        {
            while (i < n)
            {
                // once full, skip whole vectors with nothing above the current k-th value
                if (count == k && Vector512.IsHardwareAccelerated && i <= n - 16)
                {
                    if (Vector512.GreaterThanAny(Vector512.Load(p + i), Vector512.Create(p[dst[k - 1]])) == false) { i += 16; continue; }
                    int stop = i + 16;
                    for (; i < stop; i++) Insert(p, i, k, dst, ref count);
                    continue;
                }
                if (count == k && Vector256.IsHardwareAccelerated && i <= n - 8)
                {
                    if (Vector256.GreaterThanAny(Vector256.Load(p + i), Vector256.Create(p[dst[k - 1]])) == false) { i += 8; continue; }
                    int stop = i + 8;
                    for (; i < stop; i++) Insert(p, i, k, dst, ref count);
                    continue;
                }
                Insert(p, i, k, dst, ref count);
                i++;
            }
        }
        return count;
    }

    private static void Insert(float* x, int i, int k, Span<int> dst, ref int count)
    {
        float v = x[i];
        if (count == k && !(v > x[dst[count - 1]])) return;
        int p = count == k ? count - 1 : count++;
        while (p > 0 && v > x[dst[p - 1]]) { dst[p] = dst[p - 1]; p--; }
        dst[p] = i;
    }

    /// <summary>Scalar reference for <see cref="TopK"/>.</summary>
    public static int TopKReference(ReadOnlySpan<float> x, int k, Span<int> dst)
    {
        k = Math.Min(k, x.Length);
        int count = 0;
        for (int i = 0; i < x.Length; i++)
        {
            float v = x[i];
            if (count == k && !(v > x[dst[count - 1]])) continue;
            int p = count == k ? count - 1 : count++;
            while (p > 0 && v > x[dst[p - 1]]) { dst[p] = dst[p - 1]; p--; }
            dst[p] = i;
        }
        return count;
    }
}
