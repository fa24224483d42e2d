using Lckv.Numerics;
using Xunit.Abstractions;

namespace Lckv.Tests.Numerics;

/// <summary>
/// What H2O and training ask of the attention kernel besides the output: each row's log-sum-exp and the probabilities
/// added into a per-(KV head, entry) accumulator, on linear views and on views of compacted stores whose KV heads hold
/// different positions; every SIMD path this processor has against the scalar reference.
/// </summary>
[Trait("Category", "Kernels")]
public class AttentionExtrasTests(ITestOutputHelper output)
{
    public static TheoryData<DType> Types => new(TestData.FloatTypes);

    [Theory]
    [MemberData(nameof(Types))]
    public void LogSumExpAndScoresMatchTheReference(DType dtype)
    {
        var rng = new Random(21);
        int cases = 0;
        foreach (int d in new[] { 8, 64, 66 })
            foreach (int group in new[] { 1, 3 })
                foreach (var rule in new[] { MaskRule.Causal, new MaskRule(true, 0), new MaskRule(false, 5) })
                    foreach (bool compacted in new[] { false, true })
                    {
                        Compare(rng, dtype, d, group, rule, compacted);
                        cases++;
                    }
        output.WriteLine($"{dtype}: {cases} cases (512-bit: {System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated}, 256-bit: {System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated})");
    }

    [Fact]
    public void ProbabilitiesOfARowSumToTheHeadsOfItsGroup()
    {
        // every visible entry's probability is added once per query head: a row's entries sum to the group size
        var rng = new Random(22);
        var layout = new KvLayout(4, 2, 64, DType.F32);
        using var pool = NativeBuffer.From(TestData.Random(rng, (int)(4 * layout.BlockBytes / 4)), DType.F32, out _);
        var scores = new float[2 * 13];
        var seqs = new[] { new AttentionSequence(0, 1, 12, KvView.Linear([2, 0, 3, 1], 13, scores)) };
        int heads = 6;
        var q = TestData.Random(rng, heads * 64);
        var o = new float[q.Length];
        Attention.Compute(q, heads, pool.Address, layout, seqs, MaskRule.Causal, 0.125f, o);
        for (int g = 0; g < 2; g++) Assert.Equal(3.0, scores.AsSpan(g * 13, 13).ToArray().Sum(), 4);
    }

    private static void Compare(Random rng, DType dtype, int d, int group, MaskRule rule, bool compacted)
    {
        const int kvHeads = 2, bs = 4;
        int heads = kvHeads * group;
        var layout = new KvLayout(bs, kvHeads, d, dtype);
        // a prefill of 19 rows (crosses the 16-row chunk), a decode row deep in the store, a sequence with no entries
        var shapes = new (int Queries, int First, int Entries)[] { (19, 0, 19), (1, 40, 23), (2, 0, 0) };
        int blocks = shapes.Sum(s => (s.Entries + bs - 1) / bs) + 1;
        using var pool = NativeBuffer.From(TestData.Random(rng, (int)(blocks * layout.BlockBytes / DTypes.SizeOf(dtype))), dtype, out _);
        var order = Enumerable.Range(0, blocks).OrderBy(_ => rng.Next()).ToArray();
        var seqs = new AttentionSequence[shapes.Length];
        var refSeqs = new AttentionSequence[shapes.Length];
        int row = 0, used = 0;
        for (int i = 0; i < shapes.Length; i++)
        {
            var (nq, first, n) = shapes[i];
            int nb = (n + bs - 1) / bs;
            var table = order[used..(used + nb)];
            KvView view, refView;
            if (compacted && first > 0)
            {
                // each KV head keeps its own increasing positions below the query, the last one the query itself
                int stride = n + 3;
                var positions = new int[kvHeads * stride];
                for (int g = 0; g < kvHeads; g++)
                {
                    var kept = Enumerable.Range(0, first).OrderBy(_ => rng.Next()).Take(n - 1).Order().Append(first).ToArray();
                    kept.CopyTo(positions, g * stride);
                }
                view = KvView.Compacted(table, n, positions, stride, new float[kvHeads * stride]);
                refView = KvView.Compacted(table, n, positions, stride, new float[kvHeads * stride]);
            }
            else
            {
                view = KvView.Linear(table, n, new float[kvHeads * n]);
                refView = KvView.Linear(table, n, new float[kvHeads * n]);
            }
            seqs[i] = new AttentionSequence(row, nq, first, view);
            refSeqs[i] = new AttentionSequence(row, nq, first, refView);
            used += nb;
            row += nq;
        }
        var q = TestData.Random(rng, row * heads * d, 2f);
        var expected = new float[q.Length];
        var actual = new float[q.Length];
        var lseExpected = new float[row * heads];
        var lseActual = new float[row * heads];
        float scale = 1f / MathF.Sqrt(d);
        Attention.ComputeReference(q, heads, pool.Address, layout, refSeqs, rule, scale, expected, lseExpected);
        Attention.Compute(q, heads, pool.Address, layout, seqs, rule, scale, actual, lseActual);
        string what = $"d={d} g={group} {rule} {dtype} compacted={compacted}";
        for (int i = 0; i < q.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 2e-5 + 1e-5 * Math.Abs(expected[i]), $"{what}: out[{i}] = {actual[i]}, reference {expected[i]}");
        for (int i = 0; i < lseExpected.Length; i++)
        {
            if (float.IsNegativeInfinity(lseExpected[i])) { Assert.True(float.IsNegativeInfinity(lseActual[i]), $"{what}: lse[{i}] = {lseActual[i]}"); continue; }
            Assert.True(Math.Abs(lseExpected[i] - lseActual[i]) <= 1e-5 + 1e-5 * Math.Abs(lseExpected[i]), $"{what}: lse[{i}] = {lseActual[i]}, reference {lseExpected[i]}");
        }
        for (int i = 0; i < seqs.Length; i++)
        {
            var a = seqs[i].View.Scores!;
            var e = refSeqs[i].View.Scores!;
            for (int j = 0; j < a.Length; j++)
                Assert.True(Math.Abs(a[j] - e[j]) <= 1e-5 + 1e-5 * Math.Abs(e[j]), $"{what}: sequence {i} score[{j}] = {a[j]}, reference {e[j]}");
        }
    }
}
