using Lckv.Numerics;
using Xunit.Abstractions;

namespace Lckv.Tests.Numerics;

[Trait("Category", "Kernels")]
public class AttentionTests(ITestOutputHelper output)
{
    public static TheoryData<DType> Types => new(TestData.KvTypes);

    private static readonly MaskRule[] _rules = [MaskRule.Causal, new(true, 0), new(false, 3), new(true, 4)];

    [Theory]
    [MemberData(nameof(Types))]
    public void MatchesReferenceAcrossShapesMasksAndGroups(DType dtype)
    {
        var rng = new Random(11);
        int cases = 0;
        foreach (int d in new[] { 2, 6, 8, 10, 16, 24, 32, 64, 66, 96 })
            foreach (int group in new[] { 1, 2, 4 })
                foreach (int blockSize in new[] { 3, 16 })
                {
                    var rule = _rules[cases % _rules.Length];
                    Compare(rng, dtype, d, kvHeads: 2, group, blockSize, rule);
                    cases++;
                }
        output.WriteLine($"{dtype}: {cases} cases OK");
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void AllMasksOnTinyllamaLikeHeads(DType dtype)
    {
        var rng = new Random(12);
        foreach (var rule in _rules)
            Compare(rng, dtype, d: 64, kvHeads: 4, group: 8, blockSize: 5, rule);
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void LongContextsAcrossKeySegments(DType dtype)
    {
        // the head_dim-64 kernel scores keys in segments (64 or 128 keys) and carries the softmax across them; groups
        // that are not a multiple of its 4-head value chunks; decode rows and a prefill chunk deep in the context
        var rng = new Random(15);
        var shapes = new (int Queries, int First, int Keys)[] { (1, 299, 300), (20, 260, 280), (1, 128, 129), (3, 61, 64) };
        foreach (int group in new[] { 1, 3, 5, 6, 32 })
            foreach (var rule in new[] { MaskRule.Causal, new MaskRule(false, 150) })
                Compare(rng, dtype, d: 64, kvHeads: 2, group, blockSize: 16, rule, shapes);
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void RingTableMatchesReference(DType dtype)
    {
        // a sliding-window layer's ring of 3 blocks of 4: positions 17..19 see 10..19 through a window of 7
        var rng = new Random(14);
        foreach (int d in new[] { 8, 64 })
        {
            if (!Fits(dtype, d)) continue;
            var layout = new KvLayout(4, 2, d, dtype);
            using var pool = FillPool(rng, layout, 5);
            var seqs = new[] { new AttentionSequence(0, 3, 17, KvView.RingOf([4, 1, 3], 3, 4, 20)), new AttentionSequence(3, 1, 13, KvView.RingOf([0, 2, 4], 3, 4, 14)) };
            var rule = new MaskRule(false, 7);
            int heads = 2 * 4;
            var q = TestData.Random(rng, 4 * heads * d, 2f);
            var expected = new float[q.Length];
            var actual = new float[q.Length];
            Attention.ComputeReference(q, heads, pool.Address, layout, seqs, rule, 0.125f, expected);
            Attention.Compute(q, heads, pool.Address, layout, seqs, rule, 0.125f, actual);
            for (int i = 0; i < q.Length; i++)
                Assert.True(Math.Abs(expected[i] - actual[i]) <= 2e-5 + 1e-5 * Math.Abs(expected[i]), $"d={d} {dtype}: out[{i}] = {actual[i]}, reference {expected[i]}");
        }
    }

    [Fact]
    public void RowWithoutVisibleKeysIsExactlyZero()
    {
        var rng = new Random(13);
        var layout = new KvLayout(4, 1, 8, DType.F32);
        using var pool = FillPool(rng, layout, 2);
        // NoDiagonal: the query at position 0 sees nothing; a sequence with no keys sees nothing
        var seqs = new[] { AttentionSequence.Linear(0, 3, 0, 3, [1]), AttentionSequence.Linear(3, 1, 0, 0, []) };
        var q = TestData.Random(rng, 4 * 2 * 8);
        var o = new float[q.Length];
        Array.Fill(o, float.NaN);
        Attention.Compute(q, 2, pool.Address, layout, seqs, new MaskRule(true, 0), 0.3f, o);
        for (int i = 0; i < 16; i++) Assert.Equal(0f, o[i]);
        for (int i = 48; i < 64; i++) Assert.Equal(0f, o[i]);
        Assert.True(o[16] != 0 && !float.IsNaN(o[16]));
    }

    private static NativeBuffer FillPool(Random rng, KvLayout layout, int blocks) => NativeBuffer.KvBlocks(rng, layout, blocks);

    // q4 stores groups of 32 values
    private static bool Fits(DType dtype, int d) => dtype != DType.KvQ4 || d % KvRows.Q4Group == 0;

    private static void Compare(Random rng, DType dtype, int d, int kvHeads, int group, int blockSize, MaskRule rule,
        (int Queries, int First, int Keys)[]? shapes = null)
    {
        if (!Fits(dtype, d)) return;
        int heads = kvHeads * group;
        var layout = new KvLayout(blockSize, kvHeads, d, dtype);
        // sequences: a prefill of 21 rows (crosses the 16-row chunk), a decode row, a middle chunk, an empty one
        shapes ??= [(21, 0, 21), (1, 37, 38), (5, 9, 14), (2, 0, 0), (1, 0, 1)];
        int blocksNeeded = 0;
        foreach (var s in shapes) blocksNeeded += (s.Keys + blockSize - 1) / blockSize;
        using var pool = FillPool(rng, layout, blocksNeeded + 1);
        var order = Enumerable.Range(0, blocksNeeded + 1).OrderBy(_ => rng.Next()).ToArray();
        var seqs = new AttentionSequence[shapes.Length];
        int row = 0, used = 0;
        for (int i = 0; i < shapes.Length; i++)
        {
            var (nq, first, keys) = shapes[i];
            int nb = (keys + blockSize - 1) / blockSize;
            seqs[i] = AttentionSequence.Linear(row, nq, first, keys, order[used..(used + nb)]);
            used += nb;
            row += nq;
        }
        var q = TestData.Random(rng, row * heads * d, 2f);
        var expected = new float[q.Length];
        var actual = new float[q.Length];
        float scale = 1f / MathF.Sqrt(d);
        Attention.ComputeReference(q, heads, pool.Address, layout, seqs, rule, scale, expected);
        Attention.Compute(q, heads, pool.Address, layout, seqs, rule, scale, actual);
        for (int i = 0; i < q.Length; i++)
        {
            if (expected[i] == 0) Assert.True(actual[i] == 0 || Math.Abs(actual[i]) < 1e-5, $"d={d} g={group} bs={blockSize} {rule} {dtype}: [{i}] {actual[i]} vs {expected[i]}");
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 2e-5 + 1e-5 * Math.Abs(expected[i]),
                $"d={d} g={group} bs={blockSize} {rule} {dtype}: out[{i}] = {actual[i]}, reference {expected[i]}");
        }
    }

    // What H2O and training ask of the kernel besides the output: each row's log-sum-exp and the probabilities added into
    // a per-(KV head, entry) accumulator, on linear views and on views of compacted stores whose KV heads hold
    // different positions.
    [Theory]
    [MemberData(nameof(Types))]
    public void LogSumExpAndScoresMatchTheReference(DType dtype)
    {
        var rng = new Random(21);
        int cases = 0;
        foreach (int d in new[] { 8, 32, 64, 66 })
            foreach (int group in new[] { 1, 3 })
                foreach (var rule in new[] { MaskRule.Causal, new MaskRule(true, 0), new MaskRule(false, 5) })
                    foreach (bool compacted in new[] { false, true })
                    {
                        CompareExtras(rng, dtype, d, group, rule, compacted);
                        cases++;
                    }
        output.WriteLine($"{dtype}: {cases} cases (512-bit: {System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated}, 256-bit: {System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated})");
    }

    // LESS's joint normalisation: rows with and without a state (den 0), tiny and large denominators, rows that see no
    // entry; the scores and log-sum-exp stay those of the plain softmax
    [Theory]
    [MemberData(nameof(Types))]
    public void LessTermsMatchTheReferenceAndTheFormula(DType dtype)
    {
        var rng = new Random(23);
        int cases = 0;
        foreach (int d in new[] { 8, 16, 64, 66 })
            foreach (int group in new[] { 1, 2, 5 })
                foreach (var rule in new[] { MaskRule.Causal, new MaskRule(true, 0) })
                {
                    CompareExtras(rng, dtype, d, group, rule, compacted: cases % 2 == 1, less: true);
                    cases++;
                }
        output.WriteLine($"{dtype}: {cases} LESS cases");
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

    private static void CompareExtras(Random rng, DType dtype, int d, int group, MaskRule rule, bool compacted, bool less = false)
    {
        const int kvHeads = 2, bs = 4;
        if (!Fits(dtype, d)) return;
        int heads = kvHeads * group;
        var layout = new KvLayout(bs, kvHeads, d, dtype);
        // a prefill of 19 rows (crosses the 16-row chunk), a decode row deep in the store, a sequence with no entries, and
        // two rows over 300 entries (several of the head_dim-64 kernel's key segments)
        var shapes = new (int Queries, int First, int Entries)[] { (19, 0, 19), (1, 40, 23), (2, 0, 0), (2, 298, 300) };
        int blocks = shapes.Sum(s => (s.Entries + bs - 1) / bs) + 1;
        using var pool = FillPool(rng, layout, blocks);
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
                // keys stored unrotated and rotated by rank when read (StreamingLLM)
                var rope = new RopeTable(d, 10000, 320);
                view = KvView.Compacted(table, n, positions, stride, new float[kvHeads * stride], rope);
                refView = KvView.Compacted(table, n, positions, stride, new float[kvHeads * stride], rope);
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
        float[] num = [], den = [];
        string what = $"d={d} g={group} {rule} {dtype} compacted={compacted} less={less}";
        if (less)
        {
            // num = den * (a point inside the values' range), as phi(q) Hs is; a quarter of the rows have no state
            den = new float[row * heads];
            num = new float[row * heads * d];
            for (int i = 0; i < den.Length; i++)
            {
                den[i] = (i % 4) switch { 0 => 0, 1 => 1e-6f, 2 => (float)(rng.NextDouble() * 3), _ => 1e4f };
                for (int j = 0; j < d; j++) num[i * d + j] = den[i] * (float)(rng.NextDouble() * 2 - 1);
            }
            // the reference against the formula, from its own plain output and log-sum-exp (in double)
            var plain = new float[q.Length];
            var plainLse = new float[row * heads];
            var scratch = shapes.Select((sh, i) => refSeqs[i] with { View = refSeqs[i].View with { Scores = null } }).ToArray();
            Attention.ComputeReference(q, heads, pool.Address, layout, scratch, rule, scale, plain, plainLse);
            Attention.ComputeReference(q, heads, pool.Address, layout, scratch, rule, scale, expected, default, num, den);
            for (int i = 0; i < den.Length; i++)
                for (int j = 0; j < d; j++)
                {
                    double e = double.IsNegativeInfinity(plainLse[i]) ? 0 : Math.Exp(plainLse[i]);
                    double want = den[i] > 0 ? (plain[i * d + j] * e + num[i * d + j]) / (e + den[i]) : plain[i * d + j];
                    Assert.True(Math.Abs(expected[i * d + j] - want) <= 1e-5 + 1e-5 * Math.Abs(want), $"{what}: reference out[{i * d + j}] = {expected[i * d + j]}, formula {want}");
                }
        }
        Attention.ComputeReference(q, heads, pool.Address, layout, refSeqs, rule, scale, expected, lseExpected, num, den);
        Attention.Compute(q, heads, pool.Address, layout, seqs, rule, scale, actual, lseActual, num, den);
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
