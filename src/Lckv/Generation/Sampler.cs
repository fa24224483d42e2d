using System.Globalization;
using Lckv.Numerics;

namespace Lckv.Generation;

/// <summary>How the next token is picked from the logits. The defaults sample from the plain softmax.</summary>
public sealed record SamplingParams
{
    /// <summary>Logits are divided by it; 0 = greedy (argmax after the repetition penalty).</summary>
    public float Temperature { get; init; } = 1f;

    /// <summary>Keep only the k most likely tokens; 0 = off.</summary>
    public int TopK { get; init; }

    /// <summary>Keep the smallest set of most likely tokens whose probability reaches p; 1 = off.</summary>
    public float TopP { get; init; } = 1f;

    /// <summary>Drop tokens less likely than MinP times the most likely one; 0 = off.</summary>
    public float MinP { get; init; }

    /// <summary>Logits of tokens seen before: positive ones divided by it, negative ones multiplied; 1 = off.</summary>
    public float RepetitionPenalty { get; init; } = 1f;

    /// <summary>OpenAI's presence penalty: subtracted once from the logit of every token seen before; 0 = off.</summary>
    public float PresencePenalty { get; init; }

    /// <summary>OpenAI's frequency penalty: subtracted from a token's logit once per time it was seen; 0 = off.</summary>
    public float FrequencyPenalty { get; init; }

    /// <summary>True when any penalty reads the previous tokens.</summary>
    public bool Penalized => RepetitionPenalty != 1f || PresencePenalty != 0f || FrequencyPenalty != 0f;

    /// <summary>Seed of the sampler's generator; null = a random seed (the sampler reports the one it used).</summary>
    public ulong? Seed { get; init; }

    public static SamplingParams Greedy => new() { Temperature = 0 };

    /// <summary>Throws LckvException naming the first setting out of range.</summary>
    public void Validate()
    {
        if (!(Temperature >= 0) || float.IsPositiveInfinity(Temperature))
            throw new LckvException($"temperature must be a finite number >= 0, got {Show(Temperature)}");
        if (TopK < 0)
            throw new LckvException($"top_k must be >= 0 (0 = off), got {TopK}");
        if (!(TopP > 0 && TopP <= 1))
            throw new LckvException($"top_p must be in (0, 1] (1 = off), got {Show(TopP)}");
        if (!(MinP >= 0 && MinP < 1))
            throw new LckvException($"min_p must be in [0, 1) (0 = off), got {Show(MinP)}");
        if (!(RepetitionPenalty > 0) || float.IsPositiveInfinity(RepetitionPenalty))
            throw new LckvException($"repetition_penalty must be a finite number > 0 (1 = off), got {Show(RepetitionPenalty)}");
        if (!(PresencePenalty >= -2 && PresencePenalty <= 2))
            throw new LckvException($"presence_penalty must be in [-2, 2] (0 = off), got {Show(PresencePenalty)}");
        if (!(FrequencyPenalty >= -2 && FrequencyPenalty <= 2))
            throw new LckvException($"frequency_penalty must be in [-2, 2] (0 = off), got {Show(FrequencyPenalty)}");
    }

    static string Show(float x) => x.ToString(CultureInfo.InvariantCulture);
}

/// <summary>The tokens still in play after the filters and their probabilities (summing to 1). Views the sampler's
/// scratch: valid until its next call.</summary>
public readonly ref struct SamplerCandidates(ReadOnlySpan<int> tokens, ReadOnlySpan<float> probabilities)
{
    public ReadOnlySpan<int> Tokens { get; } = tokens;
    public ReadOnlySpan<float> Probabilities { get; } = probabilities;
    public int Count => Tokens.Length;
}

/// <summary>
/// The sampling pipeline, in the order of Hugging Face transformers: repetition penalty (then OpenAI's presence and
/// frequency penalties, over the same previous tokens), then (temperature 0) argmax,
/// else temperature, top-k, top-p, min-p, a stable softmax over what is left, and a draw from the sampler's own
/// generator (xoshiro256**, seeded through SplitMix64: the same seed gives the same tokens on every run and
/// platform). Scratch buffers are sized once for the vocabulary; sampling a token allocates nothing. One sampler per
/// sequence; not thread-safe.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingParams _settings;
    private readonly int _vocabSize;
    private readonly float[] _scores;   // processed logits
    private readonly int[] _candidates; // token ids in play, [0, count)
    private readonly float[] _keys;     // sort keys / probabilities of the candidates
    private readonly int[] _seenCount;  // occurrences of each token in the previous tokens; all zero between calls
    private ulong _s0, _s1, _s2, _s3;

    public Sampler(SamplingParams settings, int vocabSize)
    {
        ArgumentNullException.ThrowIfNull(settings);
        settings.Validate();
        if (vocabSize <= 0) throw new LckvException($"vocabulary size must be positive, got {vocabSize}");
        _settings = settings;
        _vocabSize = vocabSize;
        _scores = new float[vocabSize];
        _candidates = new int[vocabSize];
        _keys = new float[vocabSize];
        _seenCount = settings.Penalized ? new int[vocabSize] : [];
        Seed = settings.Seed ?? (ulong)Random.Shared.NextInt64() ^ ((ulong)Random.Shared.NextInt64() << 1);
        ulong sm = Seed;
        _s0 = SplitMix64(ref sm);
        _s1 = SplitMix64(ref sm);
        _s2 = SplitMix64(ref sm);
        _s3 = SplitMix64(ref sm);
    }

    public SamplingParams Settings => _settings;
    public int VocabSize => _vocabSize;
    /// <summary>The seed in use (the given one, or the random one drawn when none was given).</summary>
    public ulong Seed { get; }

    public int Sample(ReadOnlySpan<float> logits) => Sample(logits, []);

    /// <summary>Picks the next token. <paramref name="logits"/> is not modified.</summary>
    /// <param name="logits">[vocab] scores of the next token</param>
    /// <param name="previousTokens">tokens seen so far (prompt and output), for the repetition penalty</param>
    public int Sample(ReadOnlySpan<float> logits, ReadOnlySpan<int> previousTokens)
    {
        var c = Distribution(logits, previousTokens);
        if (c.Count == 1) return c.Tokens[0];
        double r = NextDouble();
        double sum = 0;
        for (int i = 0; i < c.Count; i++) sum += c.Probabilities[i];
        r *= sum;
        double cumulative = 0;
        for (int i = 0; i < c.Count; i++)
        {
            cumulative += c.Probabilities[i];
            if (r < cumulative) return c.Tokens[i];
        }
        // rounding left r at the very top: the last token with any probability
        for (int i = c.Count - 1; i > 0; i--)
            if (c.Probabilities[i] > 0) return c.Tokens[i];
        return c.Tokens[0];
    }

    /// <summary>
    /// Runs the pipeline up to the draw: the candidates and their probabilities. Greedy gives the argmax with
    /// probability 1. Candidates come largest first when top-k or top-p sorted them, else in token order.
    /// </summary>
    public SamplerCandidates Distribution(ReadOnlySpan<float> logits, ReadOnlySpan<int> previousTokens)
    {
        if (logits.Length != _vocabSize)
            throw new ArgumentException($"expected {_vocabSize} logits, got {logits.Length}", nameof(logits));
        var x = _scores.AsSpan();
        for (int i = 0; i < x.Length; i++)
        {
            float v = logits[i];
            x[i] = float.IsNaN(v) ? float.NegativeInfinity : v;
        }
        if (_settings.Penalized) Penalize(x, previousTokens);

        int best = Selection.Argmax(x);
        if (_settings.Temperature == 0 || float.IsNegativeInfinity(x[best]))
            return Single(best);

        if (_settings.Temperature != 1f)
        {
            float inv = 1f / _settings.Temperature;
            for (int i = 0; i < x.Length; i++) x[i] *= inv;
        }
        float max = x[best];
        if (float.IsPositiveInfinity(max)) return Single(best);

        // top-k: the k largest, sorted
        int count;
        bool sorted = false;
        if (_settings.TopK > 0 && _settings.TopK < _vocabSize)
        {
            count = Selection.TopK(x, _settings.TopK, _candidates);
            sorted = true;
        }
        else
        {
            count = _vocabSize;
            for (int i = 0; i < count; i++) _candidates[i] = i;
        }

        // top-p: keep a token while the probability of the tokens before it is below p
        if (_settings.TopP < 1f && count > 1)
        {
            double total = 0;
            for (int i = 0; i < count; i++) total += Math.Exp(x[_candidates[i]] - max);
            if (!sorted)
            {
                // Tokens with probability below (1 - p) / count all fall in the dropped tail (together they weigh
                // less than 1 - p), so only the rest need sorting. Half of that bound leaves room for rounding.
                float floor = max + (float)Math.Log(0.5 * (1 - _settings.TopP) / count * total);
                int kept = 0;
                for (int i = 0; i < count; i++)
                    if (x[_candidates[i]] >= floor) _candidates[kept++] = _candidates[i];
                count = kept;
                for (int i = 0; i < count; i++) _keys[i] = -x[_candidates[i]];
                Array.Sort(_keys, _candidates, 0, count);
            }
            double limit = _settings.TopP * total;
            double before = Math.Exp(x[_candidates[0]] - max);
            int n = 1;
            while (n < count && before < limit)
            {
                before += Math.Exp(x[_candidates[n]] - max);
                n++;
            }
            count = n;
        }

        // min-p: p_i >= minP * p_max  <=>  x_i - max >= ln(minP)
        if (_settings.MinP > 0f && count > 1)
        {
            float floor = max + MathF.Log(_settings.MinP);
            int kept = 0;
            for (int i = 0; i < count; i++)
                if (x[_candidates[i]] >= floor) _candidates[kept++] = _candidates[i];
            count = kept;
        }

        var probabilities = _keys.AsSpan(0, count);
        for (int i = 0; i < count; i++) probabilities[i] = x[_candidates[i]];
        Softmax.Apply(probabilities);
        return new SamplerCandidates(_candidates.AsSpan(0, count), probabilities);
    }

    private SamplerCandidates Single(int token)
    {
        _candidates[0] = token;
        _keys[0] = 1f;
        return new SamplerCandidates(_candidates.AsSpan(0, 1), _keys.AsSpan(0, 1));
    }

    // Counts the previous tokens, then visits each distinct one once: the repetition penalty divides a positive logit
    // and multiplies a negative one, then presence and frequency subtract; the counts are zeroed on the way out.
    private void Penalize(Span<float> x, ReadOnlySpan<int> previousTokens)
    {
        foreach (int t in previousTokens)
        {
            if ((uint)t >= (uint)_vocabSize)
            {
                foreach (int u in previousTokens) if ((uint)u < (uint)_vocabSize) _seenCount[u] = 0;
                throw new ArgumentOutOfRangeException(nameof(previousTokens), t, $"token id outside the vocabulary of {_vocabSize}");
            }
            _seenCount[t]++;
        }
        float repetition = _settings.RepetitionPenalty, presence = _settings.PresencePenalty, frequency = _settings.FrequencyPenalty;
        foreach (int t in previousTokens)
        {
            int count = _seenCount[t];
            if (count == 0) continue;
            _seenCount[t] = 0;
            float v = x[t];
            if (repetition != 1f) v = v > 0 ? v / repetition : v * repetition;
            x[t] = v - presence - frequency * count;
        }
    }

    /// <summary>A uniform double in [0, 1) from the top 53 bits of the next xoshiro256** output.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>xoshiro256** (Blackman and Vigna).</summary>
    public ulong NextUInt64()
    {
        ulong result = ulong.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0;
        _s3 ^= _s1;
        _s1 ^= _s2;
        _s0 ^= _s3;
        _s2 ^= t;
        _s3 = ulong.RotateLeft(_s3, 45);
        return result;
    }

    private static ulong SplitMix64(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
