using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Lckv.Numerics;

/// <summary>
/// cos/sin table for rotary embeddings in the rotate-half form: inv_freq[j] = theta^(-2j/D), angles computed in f64
/// and rounded to f32 (as the reference does). Row p holds cos[0..D/2) then sin[0..D/2).
/// </summary>
public sealed class RopeTable
{
    public int HeadDim { get; }
    public int MaxPositions { get; }
    private readonly float[] _table;

    public RopeTable(int headDim, double theta, int maxPositions)
    {
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException($"head_dim must be even and positive, got {headDim}");
        if (theta <= 0) throw new ArgumentException($"rope_theta must be positive, got {theta}");
        HeadDim = headDim;
        MaxPositions = maxPositions;
        int half = headDim / 2;
        _table = new float[(long)maxPositions * headDim];
        for (int p = 0; p < maxPositions; p++)
            for (int j = 0; j < half; j++)
            {
                double invFreq = 1.0 / Math.Pow(theta, 2.0 * j / headDim);
                double a = p * invFreq;
                _table[(long)p * headDim + j] = (float)Math.Cos(a);
                _table[(long)p * headDim + half + j] = (float)Math.Sin(a);
            }
    }

    public ReadOnlySpan<float> Cos(int position) => _table.AsSpan(Row(position), HeadDim / 2);
    public ReadOnlySpan<float> Sin(int position) => _table.AsSpan(Row(position) + HeadDim / 2, HeadDim / 2);

    private int Row(int position)
    {
        if ((uint)position >= (uint)MaxPositions)
            throw new ArgumentOutOfRangeException(nameof(position), $"position {position} outside the RoPE table ({MaxPositions})");
        return position * HeadDim;
    }
}

/// <summary>x = x*cos + rotate_half(x)*sin per head, rotate_half([x1, x2]) = [-x2, x1].</summary>
public static unsafe class Rope
{
    /// <summary>Rotates one head's vector x (HeadDim values) in place by position p.</summary>
    public static void ApplyHead(float* x, int p, RopeTable table)
    {
        fixed (float* pc = table.Cos(p), ps = table.Sin(p)) Rotate(x, pc, ps, table.HeadDim / 2);
    }

    // x is (rows, heads*D), positions is (rows)
    public static void Apply(Span<float> x, ReadOnlySpan<int> positions, int heads, RopeTable table)
    {
        int d = table.HeadDim, half = d / 2;
        if (x.Length < (long)positions.Length * heads * d) throw new ArgumentException("x is shorter than rows x heads x head_dim", nameof(x));
        for (int r = 0; r < positions.Length; r++)
        {
            var cs = table.Cos(positions[r]);
            var sn = table.Sin(positions[r]);
            fixed (float* pc = cs, ps = sn, px = x.Slice(r * heads * d, heads * d))
                for (int h = 0; h < heads; h++) Rotate(px + h * d, pc, ps, half);
        }
    }

    // v is (2*half): [a, b] -> [a*cos - b*sin, b*cos + a*sin]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rotate(float* v, float* cos, float* sin, int half)
    {
        float* b = v + half;
        int j = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; j <= half - 16; j += 16)
            {
                var a = Vector512.Load(v + j); var bb = Vector512.Load(b + j);
                var c = Vector512.Load(cos + j); var s = Vector512.Load(sin + j);
                (a * c - bb * s).Store(v + j);
                (bb * c + a * s).Store(b + j);
            }
        if (Vector256.IsHardwareAccelerated)
            for (; j <= half - 8; j += 8)
            {
                var a = Vector256.Load(v + j); var bb = Vector256.Load(b + j);
                var c = Vector256.Load(cos + j); var s = Vector256.Load(sin + j);
                (a * c - bb * s).Store(v + j);
                (bb * c + a * s).Store(b + j);
            }
        for (; j < half; j++)
        {
            float a = v[j], bb = b[j];
            v[j] = a * cos[j] - bb * sin[j];
            b[j] = bb * cos[j] + a * sin[j];
        }
    }

    public static void ApplyReference(Span<float> x, ReadOnlySpan<int> positions, int heads, RopeTable table)
    {
        int d = table.HeadDim, half = d / 2;
        for (int r = 0; r < positions.Length; r++)
        {
            var cos = table.Cos(positions[r]);
            var sin = table.Sin(positions[r]);
            for (int h = 0; h < heads; h++)
            {
                var v = x.Slice((r * heads + h) * d, d);
                for (int j = 0; j < half; j++)
                {
                    float a = v[j], b = v[j + half];
                    v[j] = a * cos[j] - b * sin[j];
                    v[j + half] = b * cos[j] + a * sin[j];
                }
            }
        }
    }
}
