using System.Diagnostics;
using Lckv.Model;
using Lckv.Numerics;

namespace Lckv.Bench;

/// <summary>
/// What reading a GGUF file's Q/K row order costs either way, on the tinyllama-1.1b shape: RoPE on adjacent pairs in
/// the kernel (every step pays the rotation of Q and K) against reordering each head's Q and K rows once at load (a
/// copy of those weights out of the mapping). Medians of repeated runs.
/// </summary>
/// <remarks>rope [--rounds=N]</remarks>
internal static class RopeCost
{
    public static void Run(string[] args)
    {
        int rounds = 9;
        foreach (var a in args)
            if (a.StartsWith("--rounds=")) rounds = int.Parse(a[9..], System.Globalization.CultureInfo.InvariantCulture);
        var c = Presets.Config("tinyllama-1.1b");
        int d = c.HeadDim, heads = c.NumAttentionHeads, kvHeads = c.NumKeyValueHeads, layers = c.NumHiddenLayers;

        Console.WriteLine($"tinyllama-1.1b: {layers} layers, {heads} query / {kvHeads} KV heads of {d}");
        Console.WriteLine("| rows per step | rotate-half us/step | adjacent-pairs us/step | ratio | us per token, pairs - half |");
        Console.WriteLine("|---:|---:|---:|---:|---:|");
        foreach (int rows in new[] { 1, 16, 512 })
        {
            double half = RopeStep(RopeStyle.RotateHalf, rows, c, rounds), pairs = RopeStep(RopeStyle.AdjacentPairs, rows, c, rounds);
            Console.WriteLine($"| {rows} | {half:F1} | {pairs:F1} | {pairs / half:F2} | {(pairs - half) / rows:F3} |");
        }

        // the alternative: reorder Q and K rows of every layer once, from the mapped bf16 weights into a new buffer
        long qRows = (long)heads * d, kRows = (long)kvHeads * d, cols = c.HiddenSize;
        long bytes = layers * (qRows + kRows) * cols * 2;
        var source = new byte[bytes];
        new Random(1).NextBytes(source);
        var times = new List<double>();
        for (int r = 0; r < Math.Max(3, rounds / 3); r++)
        {
            var sw = Stopwatch.StartNew();
            var copy = new byte[bytes]; // fresh pages each time, as a load would have
            long at = 0;
            for (int l = 0; l < layers; l++)
                foreach (long n in new[] { qRows, kRows })
                {
                    Reorder(source.AsSpan((int)at, (int)(n * cols * 2)), copy.AsSpan((int)at, (int)(n * cols * 2)), (int)(n / d), d, (int)cols * 2);
                    at += n * cols * 2;
                }
            times.Add(sw.Elapsed.TotalMilliseconds);
            GC.KeepAlive(copy);
        }
        times.Sort();
        Console.WriteLine($"reordering Q and K rows at load (bf16): {bytes / 1048576.0:F0} MiB copied out of the mapping in {times[times.Count / 2]:F0} ms (median of {times.Count})");
    }

    /// <summary>Microseconds of one step's RoPE over every layer's Q and K rows (median of rounds).</summary>
    private static double RopeStep(RopeStyle style, int rows, Lckv.Formats.ModelConfig c, int rounds)
    {
        var table = new RopeTable(c.HeadDim, c.RopeTheta, 2048, style);
        var q = new float[rows * c.NumAttentionHeads * c.HeadDim];
        var k = new float[rows * c.NumKeyValueHeads * c.HeadDim];
        for (int i = 0; i < q.Length; i++) q[i] = (i % 17) * 0.01f;
        var positions = Enumerable.Range(100, rows).ToArray();
        int reps = Math.Max(1, 2000 / rows);
        var times = new List<double>();
        for (int r = 0; r < rounds + 2; r++)
        {
            var sw = Stopwatch.StartNew();
            for (int rep = 0; rep < reps; rep++)
                for (int l = 0; l < c.NumHiddenLayers; l++)
                {
                    Rope.Apply(q, positions, c.NumAttentionHeads, table);
                    Rope.Apply(k, positions, c.NumKeyValueHeads, table);
                }
            if (r >= 2) times.Add(sw.Elapsed.TotalMicroseconds / reps); // the first two warm the JIT
        }
        times.Sort();
        return times[times.Count / 2];
    }

    private static void Reorder(ReadOnlySpan<byte> src, Span<byte> dst, int heads, int d, int rowBytes)
    {
        int half = d / 2;
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
            {
                src.Slice((h * d + i) * rowBytes, rowBytes).CopyTo(dst.Slice((h * d + 2 * i) * rowBytes, rowBytes));
                src.Slice((h * d + half + i) * rowBytes, rowBytes).CopyTo(dst.Slice((h * d + 2 * i + 1) * rowBytes, rowBytes));
            }
    }
}
