using System.Text;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;
using Xunit.Abstractions;

namespace Lckv.Tests.Model;

/// <summary>
/// The PyTorch-computed fixtures in ../shared/golden: whole-sequence logits (iteration plan), token-by-token logits,
/// and greedy generations, through the library. Prints a per-tensor table of max abs differences.
/// </summary>
public sealed class GoldenTests(ITestOutputHelper output)
{
    public static TheoryData<string> Cases => new()
    {
        "llama-standard", "llama-bf16-tied", "cla-2", "yoco-sliding", "lckv-sandwich-top-w2", "lckv-all-top",
        "lckv-groups-nodiag", "sandwich-middle",
    };

    internal sealed class Fixture : IDisposable
    {
        public required LlamaModel Model { get; init; }
        public required TensorSet Expected { get; init; }
        public int[][] Rows(string name)
        {
            var info = Expected.Info(name);
            int b = (int)info.Shape[0], t = (int)info.Shape[1];
            var all = Read<long>(name);
            return Enumerable.Range(0, b).Select(i => all.Skip(i * t).Take(t).Select(x => (int)x).ToArray()).ToArray();
        }
        public unsafe T[] Read<T>(string name) where T : unmanaged
        {
            var info = Expected.Info(name);
            return new ReadOnlySpan<T>((void*)Expected.Pointer(name), (int)(info.Length / sizeof(T))).ToArray();
        }
        public void Dispose() { Model.Dispose(); Expected.Dispose(); }
    }

    internal static Fixture Open(string name)
    {
        var dir = SharedData.Path("golden", name);
        return new Fixture { Model = LlamaModel.Load(dir), Expected = TensorSet.Open(Path.Combine(dir, "expected.safetensors")) };
    }

    /// <summary>Logits [B, T, V] of whole sequences, evaluated in one step per the model's definition.</summary>
    internal static float[] WholeSequenceLogits(LlamaModel model, int[][] ids, PrefillMode mode, bool tokenByToken = false)
    {
        int b = ids.Length, t = ids[0].Length, v = model.Vocab;
        var layout = model.KvLayout(blockSize: 3, DType.F32); // a block size that does not divide T
        using var pool = new KvBlockPool(layout, (long)b * ((t + 2) / 3) * model.Map.KvLayerCount * layout.BlockBytes);
        var cache = new KvCache(pool, model.Map.KvLayerCount, model.ContextLength);
        var runner = new ForwardRunner(model, cache, b * t, b) { Prefill = mode };
        var seqs = ids.Select(_ => cache.CreateSequence()).ToArray();
        foreach (var s in seqs) Assert.True(cache.TryReserve(s, t));
        var logits = new float[b * t * v];
        if (!tokenByToken)
        {
            runner.Run(seqs.Select(s => new StepSequence(s, t)).ToArray(), ids.SelectMany(x => x).ToArray(), LogitsRows.All, logits);
            return logits;
        }
        var step = new float[b * v];
        for (int p = 0; p < t; p++)
        {
            runner.Run(seqs.Select(s => new StepSequence(s, 1)).ToArray(), ids.Select(x => x[p]).ToArray(), LogitsRows.Last, step);
            for (int i = 0; i < b; i++) step.AsSpan(i * v, v).CopyTo(logits.AsSpan((i * t + p) * v, v));
        }
        return logits;
    }

    /// <summary>The largest |a[i] - b[i]| of two equally long arrays.</summary>
    internal static double MaxAbsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        double m = 0;
        for (int i = 0; i < a.Length; i++) m = Math.Max(m, Math.Abs(a[i] - b[i]));
        return m;
    }

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void LogitsMatchTheReference(string name)
    {
        using var f = Open(name);
        var ids = f.Rows("input_ids");
        var table = new StringBuilder($"{name}\n  {"tensor",-40} {"max abs diff",14}  verdict\n");
        bool ok = true;
        void Row(string what, double diff, double tol)
        {
            bool pass = diff <= tol;
            ok &= pass;
            table.AppendLine($"  {what,-40} {diff,14:E3}  {(pass ? "OK" : "FAIL")}");
        }
        Row("logits (plan, one step)", MaxAbsDiff(WholeSequenceLogits(f.Model, ids, PrefillMode.Plan), f.Read<float>("logits")), 1e-4);
        Row("logits_sequential (token by token)", MaxAbsDiff(WholeSequenceLogits(f.Model, ids, PrefillMode.Plan, tokenByToken: true), f.Read<float>("logits_sequential")), 1e-4);
        Row("logits_sequential (sequential prefill)", MaxAbsDiff(WholeSequenceLogits(f.Model, ids, PrefillMode.Sequential), f.Read<float>("logits_sequential")), 1e-4);
        output.WriteLine(table.ToString());
        Assert.True(ok, table.ToString());
    }

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void GreedyGenerationMatchesTheReference(string name)
    {
        using var f = Open(name);
        var prompts = f.Rows("generate.prompt_ids");
        var expected = f.Rows("generate.output_ids");
        var model = f.Model;
        var layout = model.KvLayout(16, DType.F32);
        using var pool = new KvBlockPool(layout, 64 * layout.BlockBytes * model.Map.KvLayerCount);
        var cache = new KvCache(pool, model.Map.KvLayerCount, model.ContextLength);
        var gen = new Generator(model, cache);
        var result = gen.Generate(prompts, new GenerateOptions { MaxTokens = expected[0].Length, Sampling = new SamplingParams { Temperature = 0 } });
        for (int i = 0; i < prompts.Length; i++)
        {
            output.WriteLine($"{name} seq {i}: expected [{string.Join(",", expected[i])}] got [{string.Join(",", result.Sequences[i].OutputIds)}]");
            Assert.Equal(expected[i], result.Sequences[i].OutputIds);
        }
        Assert.Equal(pool.TotalBlocks, pool.FreeBlocks); // every block returned
    }
}
