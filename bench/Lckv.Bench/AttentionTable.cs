using System.Runtime.InteropServices;
using Lckv.Diagnostics;
using Lckv.Numerics;

namespace Lckv.Bench;

/// <summary>
/// Decode attention (one query row per sequence) over a paged KV store: microseconds per call, GFLOP/s and the KV
/// bytes read per second, for a few model shapes and context lengths.
/// </summary>
/// <remarks>attention [--dtype=f32|bf16|f16] [--threads=N]</remarks>
internal static unsafe class AttentionTable
{
    public static void Run(string[] args)
    {
        var dtype = DType.F32;
        foreach (var a in args)
            if (a.StartsWith("--dtype=")) dtype = DTypes.ParseFloat(a[8..]);
        var roof = Roofline.Measure(WorkerPool.Shared.ThreadCount);
        Console.WriteLine($"roofline: {roof}");
        Console.WriteLine("| shape | batch | heads / kv heads | context | KV | us/call | GFLOP/s | KV GB/s | % read bw |");
        Console.WriteLine("|---|---:|---|---:|---|---:|---:|---:|---:|");
        foreach (var (name, batch, heads, kvHeads, ctx) in new[]
        {
            ("small", 16, 8, 4, 1), ("small", 16, 8, 4, 16), ("small", 16, 8, 4, 64), ("small", 16, 8, 4, 512),
            ("tinyllama", 1, 32, 4, 512), ("tinyllama", 10, 32, 4, 512), ("tinyllama", 10, 32, 4, 1024),
        })
            Row(name, batch, heads, kvHeads, ctx, dtype, roof);
    }

    private static void Row(string name, int batch, int heads, int kvHeads, int ctx, DType dtype, RooflineResult roof)
    {
        const int d = 64, bs = 16;
        var layout = new KvLayout(bs, kvHeads, d, dtype);
        int blocksPerSeq = (ctx + bs - 1) / bs;
        long bytes = layout.BlockBytes * blocksPerSeq * batch;
        byte* pool = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
        try
        {
            var rng = new Random(5);
            var tmp = new float[(int)(layout.BlockBytes / DTypes.SizeOf(dtype))];
            for (int b = 0; b < blocksPerSeq * batch; b++)
            {
                for (int i = 0; i < tmp.Length; i++) tmp[i] = (float)(rng.NextDouble() - 0.5);
                Lckv.Numerics.Convert.Narrow(tmp, dtype, (nint)(pool + b * layout.BlockBytes));
            }
            // sequences' blocks interleaved, as a shared pool hands them out
            var seqs = new AttentionSequence[batch];
            for (int s = 0; s < batch; s++)
            {
                var table = new int[blocksPerSeq];
                for (int b = 0; b < blocksPerSeq; b++) table[b] = b * batch + s;
                seqs[s] = AttentionSequence.Linear(s, 1, ctx - 1, ctx, table);
            }
            var q = new float[batch * heads * d];
            for (int i = 0; i < q.Length; i++) q[i] = (float)(rng.NextDouble() - 0.5);
            var o = new float[q.Length];
            double sec = GemmTable.Time(() => Attention.Compute(q, heads, (nint)pool, layout, seqs, MaskRule.Causal, 0.125f, o));
            double flops = 4.0 * batch * heads * ctx * d;
            double kvBytes = 2.0 * batch * ctx * kvHeads * d * DTypes.SizeOf(dtype);
            double gbps = kvBytes / sec / 1e9;
            Console.WriteLine($"| {name} | {batch} | {heads} / {kvHeads} | {ctx} | {DTypes.Name(dtype).ToLowerInvariant()} | {sec * 1e6:F1} | {flops / sec / 1e9:F1} | {gbps:F1} | {100 * gbps / roof.ReadGBps:F0}% |");
        }
        finally
        {
            NativeMemory.AlignedFree(pool);
        }
    }
}
