using System.Globalization;
using Lckv.Cache;
using Lckv.Formats;
using Lckv.Numerics;

namespace Lckv.Model;

/// <summary>Which KV-layer pairs KVSharer tries first: the most different (the paper's choice) or the most alike.</summary>
public enum KvSharerOrder { Dissimilar, Similar }

/// <summary>The settings of a KVSharer search (kv-compression.md §4).</summary>
public sealed record KvSharerOptions
{
    /// <summary>A candidate is accepted when its score (mean cosine of the final hidden states) is strictly above this;
    /// in (-1, 1].</summary>
    public double Threshold { get; init; } = 0.5;
    /// <summary>C: the search stops once this many candidates are accepted; null for a quarter of the layers (at least 1).</summary>
    public int? Share { get; init; }
    public KvSharerOrder Order { get; init; } = KvSharerOrder.Dissimilar;
}

/// <summary>One candidate tried: layer i's readers moved to root(j), its score, whether it was accepted, and the
/// candidate's layer_types.</summary>
public sealed record KvSharerTrial(int Layer, int Target, double Score, bool Accepted, string LayerTypes);

/// <summary>What a search found: the resulting map, d(i, j) at [i, j] (i &gt; j, both KV layers of the model; 0
/// elsewhere), the pairs in the order considered, and the candidates tried in that order (skipped pairs left out).</summary>
public sealed record KvSharerResult(
    LayerMap Map, double[,] Distances, IReadOnlyList<(int I, int J)> Order, IReadOnlyList<KvSharerTrial> Tried, int Samples, int Length)
{
    public int Accepted => Tried.Count(t => t.Accepted);
}

/// <summary>
/// KVSharer (Yang et al. 2024, kv-compression.md §4): on calibration sequences, the distance of two KV layers is the
/// mean L2 distance of their post-RoPE K (and V) averaged over the sequences; pairs are tried most distant first, each
/// candidate moving the readers of layer i to root(j) and kept when the final normed hidden states stay close (mean
/// cosine) to the model's own. Candidates run over the model's weights as they are, under another layer map.
/// </summary>
public static class KvSharer
{
    /// <summary>
    /// N calibration sequences of T tokens from text lines, in order: BOS then the first T - 1 tokens of each line that
    /// has at least T - 1 (encoded without BOS); fewer such lines than N is an error.
    /// </summary>
    public static int[][] CalibrationFromLines(TextTokenizer tokenizer, IEnumerable<string> lines, int bos, int samples, int length)
    {
        CheckShape(samples, length);
        var result = new List<int[]>(samples);
        int seen = 0;
        foreach (var line in lines)
        {
            if (result.Count == samples) break;
            seen++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            var ids = tokenizer.Encode(line, addBos: false);
            if (ids.Length < length - 1) continue;
            result.Add([bos, .. ids.AsSpan(0, length - 1)]);
        }
        if (result.Count < samples)
            throw new LckvException($"the calibration text has {result.Count} lines of at least {length - 1} tokens (of {seen}); {samples} are needed")
            { Settings = ["CalibrationSamples", "CalibrationLength"] };
        return [.. result];
    }

    /// <summary>The first N sequences of at least T ids, each cut to its first T ids (the caller's lines, BOS included).</summary>
    public static int[][] CalibrationFromIds(IReadOnlyList<int[]> sequences, int samples, int length)
    {
        CheckShape(samples, length);
        var result = sequences.Where(s => s.Length >= length).Take(samples).Select(s => s[..length]).ToArray();
        if (result.Length < samples)
            throw new LckvException($"the calibration ids have {result.Length} sequences of at least {length} ids (of {sequences.Count}); {samples} are needed")
            { Settings = ["CalibrationSamples", "CalibrationLength"] };
        return result;
    }

    private static void CheckShape(int samples, int length)
    {
        if (samples < 1) throw new LckvException($"the number of calibration samples must be at least 1, got {samples}") { Settings = ["CalibrationSamples"] };
        if (length < 2) throw new LckvException($"calibration sequences need at least 2 tokens (BOS and one more), got {length}") { Settings = ["CalibrationLength"] };
    }

    /// <summary>Runs the search on the calibration ids (N sequences of T tokens, BOS first); onTried hears each candidate
    /// as soon as it is scored.</summary>
    public static KvSharerResult Search(LlamaModel model, int[][] calibration, KvSharerOptions options, Action<KvSharerTrial>? onTried = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var map = model.Map;
        if (map.AnyAttendsTop)
            throw new LckvException($"KVSharer is for models without upward-reading layers; layer_types '{map}' has some");
        if (!(options.Threshold > -1 && options.Threshold <= 1))
            throw new LckvException($"the KVSharer threshold must be in (-1, 1], got {options.Threshold.ToString(CultureInfo.InvariantCulture)}") { Settings = ["Threshold"] };
        int cap = options.Share ?? Math.Max(1, map.LayerCount / 4);
        if (cap < 1) throw new LckvException($"the number of layers to share must be at least 1, got {cap}") { Settings = ["Share"] };
        int n = calibration.Length;
        if (n < 1) throw new LckvException("KVSharer needs at least one calibration sequence") { Settings = ["CalibrationSamples"] };
        int t = calibration[0].Length;
        if (t < 2 || calibration.Any(s => s.Length != t))
            throw new LckvException("calibration sequences must all have the same length, at least 2") { Settings = ["CalibrationLength"] };
        if (t > model.ContextLength)
            throw new LckvException($"calibration sequences of {t} tokens exceed the context length {model.ContextLength}") { Settings = ["CalibrationLength"] };

        // the model's own run: reference hidden states and each KV layer's K and V summed over the sequences
        int row = model.KvHeads * model.HeadDim;
        var kSum = new double[map.KvLayerCount][];
        var vSum = new double[map.KvLayerCount][];
        for (int kv = 0; kv < map.KvLayerCount; kv++) { kSum[kv] = new double[t * row]; vSum[kv] = new double[t * row]; }
        var reference = Hidden(model, calibration, (cache, seq) =>
        {
            var k = new float[t * row];
            var v = new float[t * row];
            for (int kv = 0; kv < map.KvLayerCount; kv++)
            {
                cache.Read(seq, kv, 0, k, v);
                for (int e = 0; e < k.Length; e++) { kSum[kv][e] += k[e]; vSum[kv][e] += v[e]; }
            }
        });
        var distances = Distances(model, kSum, vSum, n, t);
        var order = Order(map, distances, options.Order);

        var targets = Enumerable.Range(0, map.LayerCount).Select(map.Target).ToArray();
        var tried = new List<KvSharerTrial>();
        int accepted = 0;
        foreach (var (i, j) in order)
        {
            if (accepted == cap) break;
            var current = LayerMap.Parse(Types(targets, map), map.LayerCount);
            if (!current.ComputesKv(i)) continue;
            int root = j;
            while (!current.ComputesKv(root)) root = current.Target(root);
            var candidate = targets.Select(x => x == i ? root : x).ToArray();
            string types = Types(candidate, map);
            double score;
            using (var view = model.WithLayerTypes(types))
                score = MeanCosine(reference, Hidden(view, calibration, null), n);
            bool accept = score > options.Threshold;
            var trial = new KvSharerTrial(i, j, score, accept, types);
            tried.Add(trial);
            onTried?.Invoke(trial);
            if (accept)
            {
                targets = candidate;
                accepted++;
            }
        }
        return new KvSharerResult(LayerMap.Parse(Types(targets, map), map.LayerCount), distances, order, tried, n, t);
    }

    /// <summary>Writes the model at input with the result's layer_types (lckv-llama), the sharing layers' K/V projections
    /// dropped, other tensors and the tokenizer as they are; atomically. A checkpoint folder gives a folder; a GGUF file
    /// gives a GGUF file that names the map in <see cref="GgufLlama.LayerTypesKey"/> (<see cref="GgufExport.WithLayerTypes"/>).</summary>
    public static ConvertResult Write(string input, string output, KvSharerResult result, bool force)
        => File.Exists(input) ? GgufExport.WithLayerTypes(input, output, result.Map.ToString(), force)
                              : Converter.WithLayerTypes(input, output, result.Map.ToString(), force);

    // layer_types of the targets, keeping each layer's sliding-window flag from the model's map
    private static string Types(int[] targets, LayerMap map)
        => string.Join('_', targets.Select((x, l) => x.ToString(CultureInfo.InvariantCulture) + (map.IsSliding(l) ? "s" : "")));

    // d(i, j) = 0.5 (mean over t, g of |Kbar_i - Kbar_j|_2 + the same for V), Kbar the sums over n sequences / n
    private static double[,] Distances(LlamaModel model, double[][] kSum, double[][] vSum, int n, int t)
    {
        var map = model.Map;
        int heads = model.KvHeads, d = model.HeadDim;
        var result = new double[map.LayerCount, map.LayerCount];
        double MeanNorm(double[] a, double[] b)
        {
            double total = 0;
            for (int r = 0; r < t * heads; r++)
            {
                double sq = 0;
                for (int e = r * d; e < (r + 1) * d; e++)
                {
                    double diff = (a[e] - b[e]) / n;
                    sq += diff * diff;
                }
                total += Math.Sqrt(sq);
            }
            return total / (t * heads);
        }
        for (int i = 0; i < map.LayerCount; i++)
            for (int j = 0; j < i; j++)
                if (map.ComputesKv(i) && map.ComputesKv(j))
                {
                    int a = map.KvIndex(i), b = map.KvIndex(j);
                    result[i, j] = 0.5 * (MeanNorm(kSum[a], kSum[b]) + MeanNorm(vSum[a], vSum[b]));
                }
        return result;
    }

    // pairs of KV layers i > j by distance (largest first, or smallest with Similar), ties to the smaller i then j
    private static List<(int I, int J)> Order(LayerMap map, double[,] distances, KvSharerOrder order)
    {
        var pairs = new List<(int I, int J)>();
        for (int i = 0; i < map.LayerCount; i++)
            for (int j = 0; j < i; j++)
                if (map.ComputesKv(i) && map.ComputesKv(j)) pairs.Add((i, j));
        int sign = order == KvSharerOrder.Dissimilar ? -1 : 1;
        pairs.Sort((x, y) =>
        {
            int c = sign * distances[x.I, x.J].CompareTo(distances[y.I, y.J]);
            if (c != 0) return c;
            c = x.I.CompareTo(y.I);
            return c != 0 ? c : x.J.CompareTo(y.J);
        });
        return pairs;
    }

    // the mean over sequences of the cosine of the flattened [T, hidden] final hidden states
    private static double MeanCosine(float[] a, float[] b, int n)
    {
        int per = a.Length / n;
        double total = 0;
        for (int s = 0; s < n; s++)
        {
            double dot = 0, na = 0, nb = 0;
            for (int e = s * per; e < (s + 1) * per; e++)
            {
                dot += (double)a[e] * b[e];
                na += (double)a[e] * a[e];
                nb += (double)b[e] * b[e];
            }
            total += dot / Math.Sqrt(na * nb);
        }
        return total / n;
    }

    /// <summary>
    /// The final normed hidden states ([N, T, hidden]) of a one-step prefill of each sequence, several sequences per
    /// step, full (linear) stores in f32; onSequence sees each sequence's filled cache before it is removed.
    /// </summary>
    private static float[] Hidden(LlamaModel model, int[][] sequences, Action<KvCache, int>? onSequence)
    {
        int n = sequences.Length, t = sequences[0].Length, h = model.Hidden;
        int perStep = Math.Max(1, Math.Min(n, 512 / t));
        var layout = model.KvLayout(blockSize: 16, DType.F32);
        long blocks = (long)perStep * model.Map.KvLayerCount * KvCache.BlocksFor(t, layout.BlockSize);
        using var pool = new KvBlockPool(layout, blocks * layout.BlockBytes);
        var cache = new KvCache(pool, model.Map.KvLayerCount, model.ContextLength);
        var runner = new ForwardRunner(model, cache, perStep * t, perStep);
        var hidden = new float[(long)n * t * h];
        for (int first = 0; first < n; first += perStep)
        {
            int count = Math.Min(perStep, n - first);
            var batch = new StepSequence[count];
            var tokens = new int[count * t];
            for (int s = 0; s < count; s++)
            {
                int seq = cache.CreateSequence();
                if (!cache.TryReserve(seq, t)) throw new InvalidOperationException("the calibration pool is too small");
                batch[s] = new StepSequence(seq, t);
                sequences[first + s].CopyTo(tokens, s * t);
            }
            runner.RunHidden(batch, tokens, hidden.AsSpan(first * t * h, count * t * h));
            foreach (var s in batch)
            {
                onSequence?.Invoke(cache, s.SequenceId);
                cache.Remove(s.SequenceId);
            }
        }
        return hidden;
    }
}
