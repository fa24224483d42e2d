using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Lckv.Numerics;

/// <summary>Which dimensions of a head RoPE rotates together by angle j.</summary>
public enum RopeStyle : byte
{
    /// <summary>(x[j], x[j + D/2]): Hugging Face Llama's rotate_half (llama.cpp's NEOX mode).</summary>
    RotateHalf,
    /// <summary>(x[2j], x[2j + 1]): Meta's original Llama and GGUF files, whose converter reorders the Q and K rows of each
    /// head so that this pairing computes what rotate_half computes on the Hugging Face rows (llama.cpp's NORM mode).</summary>
    AdjacentPairs,
}

/// <summary>
/// cos/sin table for rotary embeddings: inv_freq[j] = theta^(-2j/D), angles computed in f64 and rounded to f32 (as the
/// reference does). Row p holds cos[0..D/2) then sin[0..D/2); angle j turns the pair of dimensions the style names.
/// </summary>
public sealed class RopeTable
{
    public int HeadDim { get; }
    public int MaxPositions { get; }
    public RopeStyle Style { get; }
    private readonly float[] _table;

    public RopeTable(int headDim, double theta, int maxPositions, RopeStyle style = RopeStyle.RotateHalf)
    {
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException($"head_dim must be even and positive, got {headDim}");
        if (theta <= 0) throw new ArgumentException($"rope_theta must be positive, got {theta}");
        if (style is not (RopeStyle.RotateHalf or RopeStyle.AdjacentPairs)) throw new ArgumentOutOfRangeException(nameof(style));
        HeadDim = headDim;
        MaxPositions = maxPositions;
        Style = style;
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

/// <summary>
/// x = x*cos + rotate(x)*sin per head: each pair (a, b) the table's style names turns to (a cos - b sin, b cos + a sin).
/// </summary>
public static unsafe class Rope
{
    /// <summary>Rotates one head's vector x (HeadDim values) in place by position p.</summary>
    public static void ApplyHead(float* x, int p, RopeTable table)
    {
        fixed (float* pc = table.Cos(p), ps = table.Sin(p))
        {
            if (table.Style == RopeStyle.AdjacentPairs) RotatePairs(x, pc, ps, table.HeadDim / 2);
            else Rotate(x, pc, ps, table.HeadDim / 2);
        }
    }

    // x is (rows, heads*D), positions is (rows)
    public static void Apply(Span<float> x, ReadOnlySpan<int> positions, int heads, RopeTable table)
    {
        int d = table.HeadDim, half = d / 2;
        if (x.Length < (long)positions.Length * heads * d) throw new ArgumentException("x is shorter than rows x heads x head_dim", nameof(x));
        bool pairs = table.Style == RopeStyle.AdjacentPairs;
        for (int r = 0; r < positions.Length; r++)
        {
            var cs = table.Cos(positions[r]);
            var sn = table.Sin(positions[r]);
            fixed (float* pc = cs, ps = sn, px = x.Slice(r * heads * d, heads * d))
            {
                if (pairs) for (int h = 0; h < heads; h++) RotatePairs(px + h * d, pc, ps, half);
                else for (int h = 0; h < heads; h++) Rotate(px + h * d, pc, ps, half);
            }
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

    // v is (half pairs): (v[2j], v[2j+1]) -> (v[2j]*cos[j] - v[2j+1]*sin[j], v[2j+1]*cos[j] + v[2j]*sin[j]).
    // A vector of pairs is v*C + swap(v)*S with C = (c0, c0, c1, c1, ...) and S = (-s0, s0, -s1, s1, ...).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RotatePairs(float* v, float* cos, float* sin, int half)
    {
        int j = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; j <= half - 8; j += 8)
            {
                var x = Vector512.Load(v + 2 * j);
                var c = Vector512.Shuffle(Vector256.Load(cos + j).ToVector512Unsafe(), Vector512.Create(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
                var s = Vector512.Shuffle(Vector256.Load(sin + j).ToVector512Unsafe(), Vector512.Create(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
                var swapped = Vector512.Shuffle(x, Vector512.Create(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
                (x * c + swapped * s * Vector512.Create(-1f, 1f, -1f, 1f, -1f, 1f, -1f, 1f, -1f, 1f, -1f, 1f, -1f, 1f, -1f, 1f)).Store(v + 2 * j);
            }
        if (Vector256.IsHardwareAccelerated)
            for (; j <= half - 4; j += 4)
            {
                var x = Vector256.Load(v + 2 * j);
                var c = Vector256.Shuffle(Vector128.Load(cos + j).ToVector256Unsafe(), Vector256.Create(0, 0, 1, 1, 2, 2, 3, 3));
                var s = Vector256.Shuffle(Vector128.Load(sin + j).ToVector256Unsafe(), Vector256.Create(0, 0, 1, 1, 2, 2, 3, 3));
                var swapped = Vector256.Shuffle(x, Vector256.Create(1, 0, 3, 2, 5, 4, 7, 6));
                (x * c + swapped * s * Vector256.Create(-1f, 1f, -1f, 1f, -1f, 1f, -1f, 1f)).Store(v + 2 * j);
            }
        for (; j < half; j++)
        {
            float a = v[2 * j], b = v[2 * j + 1];
            v[2 * j] = a * cos[j] - b * sin[j];
            v[2 * j + 1] = b * cos[j] + a * sin[j];
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
                    var (ia, ib) = table.Style == RopeStyle.AdjacentPairs ? (2 * j, 2 * j + 1) : (j, j + half);
                    float a = v[ia], b = v[ib];
                    v[ia] = a * cos[j] - b * sin[j];
                    v[ib] = b * cos[j] + a * sin[j];
                }
            }
        }
    }
}
