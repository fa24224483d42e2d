using Lckv.Generation;
using Lckv.Numerics;

namespace Lckv.Tests.Generation;

public class SamplerTests
{
    static float[] RandomLogits(int n, int seed, float scale = 3f)
    {
        var rng = new Random(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        return x;
    }

    static float[] LogOf(params double[] probabilities) => [.. probabilities.Select(p => (float)Math.Log(p))];

    static int[] Draw(Sampler sampler, float[] logits, int count)
    {
        var tokens = new int[count];
        for (int i = 0; i < count; i++) tokens[i] = sampler.Sample(logits);
        return tokens;
    }

    static double[] Frequencies(int[] tokens, int vocab)
    {
        var f = new double[vocab];
        foreach (int t in tokens) f[t]++;
        for (int i = 0; i < vocab; i++) f[i] /= tokens.Length;
        return f;
    }

    [Fact]
    public void GreedyIsArgmax()
    {
        var sampler = new Sampler(SamplingParams.Greedy, 1000);
        for (int seed = 0; seed < 20; seed++)
        {
            var logits = RandomLogits(1000, seed);
            Assert.Equal(Selection.Argmax(logits), sampler.Sample(logits));
        }
    }

    [Fact]
    public void SameSeedSameTokensDifferentSeedsDiffer()
    {
        var logits = RandomLogits(50, 1, scale: 1f);
        var settings = new SamplingParams { Seed = 42, TopK = 30, TopP = 0.95f };
        var a = Draw(new Sampler(settings, 50), logits, 200);
        var b = Draw(new Sampler(settings, 50), logits, 200);
        var c = Draw(new Sampler(settings with { Seed = 43 }, 50), logits, 200);
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
        Assert.True(a.Distinct().Count() > 10);
    }

    [Fact]
    public void GeneratorIsPinned()
    {
        // xoshiro256** seeded by SplitMix64(0): the stream must never change between runs or versions
        var sampler = new Sampler(new SamplingParams { Seed = 0 }, 2);
        var expected = new Sampler(new SamplingParams { Seed = 0 }, 2);
        ulong first = sampler.NextUInt64();
        Assert.Equal(expected.NextUInt64(), first);
        // SplitMix64 from 0 gives e220a8397b1dcdaf, 6e789e6aa1b965f4, 06c45d188009454f, f88bb8a8724c81ec;
        // xoshiro256** first output = rotl(s1 * 5, 7) * 9
        ulong s1 = 0x6e789e6aa1b965f4UL;
        Assert.Equal(ulong.RotateLeft(s1 * 5, 7) * 9, first);
        double u = sampler.NextDouble();
        Assert.InRange(u, 0.0, 1.0 - double.Epsilon);
    }

    [Fact]
    public void RandomSeedIsReported()
    {
        var a = new Sampler(new SamplingParams(), 10);
        var b = new Sampler(new SamplingParams { Seed = a.Seed }, 10);
        var logits = RandomLogits(10, 3);
        Assert.Equal(Draw(a, logits, 50), Draw(b, logits, 50));
    }

    [Fact]
    public void TopKOneIsGreedy()
    {
        for (int seed = 0; seed < 10; seed++)
        {
            var logits = RandomLogits(300, seed, scale: 0.5f);
            var sampler = new Sampler(new SamplingParams { TopK = 1, Temperature = 2f, Seed = (ulong)seed }, 300);
            Assert.All(Draw(sampler, logits, 20), t => Assert.Equal(Selection.Argmax(logits), t));
        }
    }

    [Fact]
    public void TinyTopPIsGreedy()
    {
        for (int seed = 0; seed < 10; seed++)
        {
            var logits = RandomLogits(300, seed, scale: 0.5f);
            var sampler = new Sampler(new SamplingParams { TopP = 1e-6f, Seed = (ulong)seed }, 300);
            Assert.All(Draw(sampler, logits, 20), t => Assert.Equal(Selection.Argmax(logits), t));
        }
    }

    [Fact]
    public void TopKKeepsTheKLargest()
    {
        var logits = LogOf(0.1, 0.4, 0.05, 0.3, 0.15);
        var sampler = new Sampler(new SamplingParams { TopK = 2, Seed = 5 }, 5);
        var c = sampler.Distribution(logits, []);
        Assert.Equal([1, 3], c.Tokens.ToArray());
        Assert.Equal(0.4 / 0.7, c.Probabilities[0], 1e-6);
        Assert.Equal(0.3 / 0.7, c.Probabilities[1], 1e-6);
        var f = Frequencies(Draw(sampler, logits, 20000), 5);
        Assert.Equal(0, f[0] + f[2] + f[4]);
        Assert.Equal(0.4 / 0.7, f[1], 0.02);
    }

    [Theory]
    [InlineData(0.7f, new[] { 0, 1 })]        // before: 0, 0.5 -> keep 2
    [InlineData(0.85f, new[] { 0, 1, 2 })]    // before: 0, 0.5, 0.8 -> keep 3
    [InlineData(0.4f, new[] { 0 })]
    [InlineData(0.99f, new[] { 0, 1, 2, 3 })]
    public void TopPKeepsTheSmallestSetReachingP(float topP, int[] expected)
    {
        var logits = LogOf(0.5, 0.3, 0.15, 0.05);
        var sampler = new Sampler(new SamplingParams { TopP = topP, Seed = 1 }, 4);
        var c = sampler.Distribution(logits, []);
        Assert.Equal(expected, c.Tokens.ToArray());
        Assert.Equal(1.0, c.Probabilities.ToArray().Sum(), 1e-6);
    }

    [Fact]
    public void TopPOnALargeVocabularyMatchesTheDefinition()
    {
        // the prefilter must not change which tokens survive
        var logits = RandomLogits(5000, 9, scale: 6f);
        var sampler = new Sampler(new SamplingParams { TopP = 0.9f, Seed = 1 }, 5000);
        var c = sampler.Distribution(logits, []);
        var p = (float[])logits.Clone();
        Softmax.Apply(p);
        var order = Enumerable.Range(0, 5000).OrderByDescending(i => p[i]).ToArray();
        int n = 0;
        double before = 0;
        while (n < order.Length && before < 0.9) before += p[order[n++]];
        Assert.Equal(n, c.Count);
        Assert.Equal(order.Take(n).Order(), c.Tokens.ToArray().Order());
    }

    [Fact]
    public void MinPFilters()
    {
        var logits = LogOf(0.5, 0.3, 0.15, 0.05);
        // threshold 0.4 * 0.5 = 0.2: tokens 0 and 1 remain
        var sampler = new Sampler(new SamplingParams { MinP = 0.4f, Seed = 11 }, 4);
        Assert.Equal([0, 1], sampler.Distribution(logits, []).Tokens.ToArray());
        var f = Frequencies(Draw(sampler, logits, 20000), 4);
        Assert.Equal(0, f[2] + f[3]);
        Assert.Equal(0.5 / 0.8, f[0], 0.02);
        // threshold 0.25 * 0.5 = 0.125 keeps token 2 too
        Assert.Equal([0, 1, 2], new Sampler(new SamplingParams { MinP = 0.25f }, 4).Distribution(logits, []).Tokens.ToArray());
    }

    [Theory]
    [InlineData(1.0f)]
    [InlineData(0.7f)]
    [InlineData(1.8f)]
    public void TemperatureSamplingMatchesTheSoftmax(float temperature)
    {
        const int vocab = 8, draws = 200_000;
        var logits = RandomLogits(vocab, 17, scale: 1.5f);
        var expected = logits.Select(v => v / temperature).ToArray();
        Softmax.Apply(expected);
        var sampler = new Sampler(new SamplingParams { Temperature = temperature, Seed = 2024 }, vocab);
        var counts = new int[vocab];
        for (int i = 0; i < draws; i++) counts[sampler.Sample(logits)]++;
        double chi2 = 0;
        for (int i = 0; i < vocab; i++)
        {
            double e = expected[i] * draws;
            chi2 += (counts[i] - e) * (counts[i] - e) / e;
        }
        // 7 degrees of freedom: P(chi2 > 24.3) = 0.001
        Assert.True(chi2 < 24.3, $"chi-square {chi2:F2}; counts {string.Join(",", counts)}");
    }

    [Fact]
    public void RepetitionPenaltyMath()
    {
        float[] logits = [2f, -2f, 1f, 0.5f, 0f];
        // tokens 0 and 1 seen (1 twice: penalized once); 4 seen with logit 0 stays 0
        var sampler = new Sampler(new SamplingParams { RepetitionPenalty = 2f, Seed = 3 }, 5);
        var c = sampler.Distribution(logits, [0, 1, 1, 4]);
        float[] penalized = [1f, -4f, 1f, 0.5f, 0f];
        var expected = (float[])penalized.Clone();
        Softmax.Apply(expected);
        Assert.Equal([0, 1, 2, 3, 4], c.Tokens.ToArray());
        for (int i = 0; i < 5; i++) Assert.Equal(expected[i], c.Probabilities[i], 1e-6f);
        Assert.Equal([2f, -2f, 1f, 0.5f, 0f], logits); // input untouched

        // greedy after the penalty: token 0 (2 -> 0.8 with penalty 2.5) loses to token 2 (1)
        var greedy = new Sampler(new SamplingParams { Temperature = 0, RepetitionPenalty = 2.5f }, 5);
        Assert.Equal(2, greedy.Sample(logits, [0]));
        Assert.Equal(0, greedy.Sample(logits, [])); // nothing seen, nothing penalized
        // a penalty below 1 favours what was seen
        var boost = new Sampler(new SamplingParams { Temperature = 0, RepetitionPenalty = 0.25f }, 5);
        Assert.Equal(2, boost.Sample(logits, [2])); // 1 -> 4 beats 2
        Assert.Throws<ArgumentOutOfRangeException>(() => boost.Sample(logits, [5]));
    }

    [Fact]
    public void PresenceAndFrequencyPenaltyMath()
    {
        float[] logits = [2f, -2f, 1f, 0.5f, 0f];
        // token 1 seen twice, token 3 once: presence subtracts 0.5 from each, frequency 0.25 per occurrence
        var sampler = new Sampler(new SamplingParams { PresencePenalty = 0.5f, FrequencyPenalty = 0.25f, Seed = 3 }, 5);
        var c = sampler.Distribution(logits, [1, 3, 1]);
        float[] expected = [2f, -2f - 0.5f - 0.5f, 1f, 0.5f - 0.5f - 0.25f, 0f];
        Softmax.Apply(expected);
        for (int i = 0; i < 5; i++) Assert.Equal(expected[i], c.Probabilities[i], 1e-6f);
        Assert.Equal([2f, -2f, 1f, 0.5f, 0f], logits);
        // the counts do not leak into the next call
        c = sampler.Distribution(logits, []);
        var plain = (float[])logits.Clone();
        Softmax.Apply(plain);
        for (int i = 0; i < 5; i++) Assert.Equal(plain[i], c.Probabilities[i], 1e-6f);

        // after the repetition penalty: token 0 (2 -> 1 with penalty 2, minus presence 0.5) loses to token 2 (1)
        var greedy = new Sampler(new SamplingParams { Temperature = 0, RepetitionPenalty = 2f, PresencePenalty = 0.5f }, 5);
        Assert.Equal(2, greedy.Sample(logits, [0]));
        // a negative frequency penalty favours what was seen, more the more often
        var boost = new Sampler(new SamplingParams { Temperature = 0, FrequencyPenalty = -0.6f }, 5);
        Assert.Equal(0, boost.Sample(logits, [2]));    // 1 + 0.6 < 2
        Assert.Equal(2, boost.Sample(logits, [2, 2])); // 1 + 1.2 > 2
        Assert.Throws<ArgumentOutOfRangeException>(() => boost.Sample(logits, [2, 5]));
        Assert.Equal(0, boost.Sample(logits, [])); // an id out of range left no counts behind
        Assert.Throws<LckvException>(new SamplingParams { PresencePenalty = 2.5f }.Validate);
        Assert.Throws<LckvException>(new SamplingParams { FrequencyPenalty = float.NaN }.Validate);
    }

    [Fact]
    public void PipelineOrderTemperatureBeforeTopP()
    {
        // at temperature 1 top-p 0.7 keeps 2 tokens of (0.5, 0.3, 0.2); a high temperature flattens them to about a
        // third each so that all 3 are needed, as in transformers where the temperature warper runs first
        var logits = LogOf(0.5, 0.3, 0.2);
        Assert.Equal(2, new Sampler(new SamplingParams { TopP = 0.7f }, 3).Distribution(logits, []).Count);
        Assert.Equal(3, new Sampler(new SamplingParams { TopP = 0.7f, Temperature = 100f }, 3).Distribution(logits, []).Count);
    }

    [Fact]
    public void MaskedAndNaNLogits()
    {
        float[] logits = [float.NegativeInfinity, float.NaN, 0.5f, float.NegativeInfinity];
        var sampler = new Sampler(new SamplingParams { Seed = 8 }, 4);
        Assert.All(Draw(sampler, logits, 100), t => Assert.Equal(2, t));
        float[] none = [float.NegativeInfinity, float.NegativeInfinity];
        Assert.Equal(0, new Sampler(new SamplingParams { Seed = 8 }, 2).Sample(none));
        Assert.Throws<ArgumentException>(() => sampler.Sample(new float[3]));
    }

    [Fact]
    public void SamplingAllocatesNothing()
    {
        var logits = RandomLogits(4096, 4);
        int[] previous = [1, 2, 3, 4000, 2];
        var sampler = new Sampler(new SamplingParams { TopK = 50, TopP = 0.9f, MinP = 0.01f, RepetitionPenalty = 1.1f, Seed = 1 }, 4096);
        var unsorted = new Sampler(new SamplingParams { TopP = 0.9f, Temperature = 0.8f, Seed = 1 }, 4096);
        sampler.Sample(logits, previous);
        unsorted.Sample(logits, previous);
        Assert.Equal(0, Allocations.Least(() =>
        {
            for (int i = 0; i < 100; i++)
            {
                sampler.Sample(logits, previous);
                unsorted.Sample(logits, previous);
            }
        }));
    }

    [Theory]
    [InlineData(-0.1f, 0, 1f, 0f, 1f, "temperature")]
    [InlineData(float.NaN, 0, 1f, 0f, 1f, "temperature")]
    [InlineData(1f, -1, 1f, 0f, 1f, "top_k")]
    [InlineData(1f, 0, 0f, 0f, 1f, "top_p")]
    [InlineData(1f, 0, 1.01f, 0f, 1f, "top_p")]
    [InlineData(1f, 0, 1f, 1f, 1f, "min_p")]
    [InlineData(1f, 0, 1f, -0.1f, 1f, "min_p")]
    [InlineData(1f, 0, 1f, 0f, 0f, "repetition_penalty")]
    [InlineData(1f, 0, 1f, 0f, -1f, "repetition_penalty")]
    public void ValidateRejectsOutOfRange(float temperature, int topK, float topP, float minP, float penalty, string name)
    {
        var settings = new SamplingParams { Temperature = temperature, TopK = topK, TopP = topP, MinP = minP, RepetitionPenalty = penalty };
        var e = Assert.Throws<LckvException>(settings.Validate);
        Assert.StartsWith(name, e.Message);
        Assert.Throws<LckvException>(() => new Sampler(settings, 10));
    }

    [Fact]
    public void DefaultsAreValidAndOff()
    {
        var d = new SamplingParams();
        d.Validate();
        SamplingParams.Greedy.Validate();
        Assert.Equal(1f, d.Temperature);
        Assert.Equal(0, d.TopK);
        Assert.Equal(1f, d.TopP);
        Assert.Equal(0f, d.MinP);
        Assert.Equal(1f, d.RepetitionPenalty);
        Assert.Null(d.Seed);
        Assert.Throws<LckvException>(() => new Sampler(d, 0));
    }
}
