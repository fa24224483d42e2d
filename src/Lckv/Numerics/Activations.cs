namespace Lckv.Numerics;

public static class Activations
{
    /// <summary>dst = silu(gate) * up, silu(g) = g / (1 + exp(-g)). dst may alias gate or up.</summary>
    public static void SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst)
        => SwiGluReference(gate, up, dst);

    public static void SwiGluReference(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst)
    {
        for (int i = 0; i < dst.Length; i++)
        {
            float g = gate[i];
            dst[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }
}

/// <summary>Numerically stable softmax (the maximum is subtracted first).</summary>
public static class Softmax
{
    public static void Apply(Span<float> x) => ApplyReference(x);

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
}

public static class Selection
{
    /// <summary>Index of the largest value; the first one on ties; NaN never wins.</summary>
    public static int Argmax(ReadOnlySpan<float> x)
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
    public static int TopK(ReadOnlySpan<float> x, int k, Span<int> dst)
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
