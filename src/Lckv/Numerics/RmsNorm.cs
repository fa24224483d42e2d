namespace Lckv.Numerics;

/// <summary>dst = x * rsqrt(mean(x^2) + eps) * weight, per row of length weight.Cols, in f32.</summary>
public static class RmsNorm
{
    // x is (rows, c), weight is (1, c) in its checkpoint dtype, dst is (rows, c); dst may alias x
    public static void Apply(ReadOnlySpan<float> x, in WeightMatrix weight, float eps, Span<float> dst, int rows)
        => ApplyReference(x, weight, eps, dst, rows);

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
}
