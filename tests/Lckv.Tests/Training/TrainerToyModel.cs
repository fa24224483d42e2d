using Lckv.Formats;
using Lckv.Training;

namespace Lckv.Tests.Training;

/// <summary>
/// A tiny MLP language model with hand-written gradients, to test the trainer without the decoder:
/// e = E[x] (D), h = tanh(e W1 + b1) (H), logits = h Wout + bOut (V); next-token cross-entropy.
/// </summary>
internal sealed class ToyMlpModel : ITrainable
{
    private readonly int _v, _d, _h;
    private readonly Parameter _embed, _w1, _b1, _out, _bOut;

    public ToyMlpModel(int vocab, int dim, int hidden, ulong seed)
    {
        (_v, _d, _h) = (vocab, dim, hidden);
        _embed = new Parameter("toy.embed", [vocab, dim], decay: true);
        _w1 = new Parameter("toy.w1", [dim, hidden], decay: true);
        _b1 = new Parameter("toy.b1", [hidden], decay: false);
        _out = new Parameter("toy.out", [hidden, vocab], decay: true);
        _bOut = new Parameter("toy.b_out", [vocab], decay: false);
        Parameters = [_embed, _w1, _b1, _out, _bOut];
        var rng = new TrainingRng(seed);
        foreach (var p in new[] { _embed, _w1, _out })
            for (int i = 0; i < p.Value.Length; i++) p.Value[i] = (float)(((rng.Next() >> 11) * (1.0 / (1UL << 53)) - 0.5) * 0.6);
    }

    /// <summary>The factory the trainer calls: vocab from the config, shape fixed.</summary>
    public static ITrainable Factory(ModelConfig config, string arch, ulong seed) => new ToyMlpModel(config.VocabSize, 8, 16, seed);

    public IReadOnlyList<Parameter> Parameters { get; }

    public float LossAndGradients(ReadOnlySpan<int> tokens, int batch, int seqLen, float gradScale = 1f) => Run(tokens, batch, seqLen, gradScale, true);

    public float Loss(ReadOnlySpan<int> tokens, int batch, int seqLen) => Run(tokens, batch, seqLen, 0, false);

    private float Run(ReadOnlySpan<int> tokens, int batch, int seqLen, float gradScale, bool grads)
    {
        int count = batch * (seqLen - 1);
        float scale = gradScale / count;
        var h = new float[_h];
        var logits = new float[_v];
        var dh = new float[_h];
        double total = 0;
        for (int b = 0; b < batch; b++)
        {
            for (int t = 0; t + 1 < seqLen; t++)
            {
                int x = tokens[b * seqLen + t], y = tokens[b * seqLen + t + 1];
                for (int j = 0; j < _h; j++)
                {
                    float z = _b1.Value[j];
                    for (int k = 0; k < _d; k++) z += _embed.Value[x * _d + k] * _w1.Value[k * _h + j];
                    h[j] = MathF.Tanh(z);
                }
                float max = float.NegativeInfinity;
                for (int c = 0; c < _v; c++)
                {
                    float l = _bOut.Value[c];
                    for (int j = 0; j < _h; j++) l += h[j] * _out.Value[j * _v + c];
                    logits[c] = l;
                    max = MathF.Max(max, l);
                }
                double sum = 0;
                for (int c = 0; c < _v; c++) sum += Math.Exp(logits[c] - max);
                total += Math.Log(sum) - (logits[y] - max);
                if (!grads) continue;

                Array.Clear(dh);
                for (int c = 0; c < _v; c++)
                {
                    float dl = (float)(Math.Exp(logits[c] - max) / sum) * scale - (c == y ? scale : 0f);
                    _bOut.Grad[c] += dl;
                    for (int j = 0; j < _h; j++)
                    {
                        _out.Grad[j * _v + c] += h[j] * dl;
                        dh[j] += _out.Value[j * _v + c] * dl;
                    }
                }
                for (int j = 0; j < _h; j++)
                {
                    float dz = dh[j] * (1 - h[j] * h[j]);
                    _b1.Grad[j] += dz;
                    for (int k = 0; k < _d; k++)
                    {
                        _w1.Grad[k * _h + j] += _embed.Value[x * _d + k] * dz;
                        _embed.Grad[x * _d + k] += _w1.Value[k * _h + j] * dz;
                    }
                }
            }
        }
        return (float)(total / count);
    }
}

/// <summary>Small synthetic token streams and datasets for the training tests.</summary>
internal static class ToyData
{
    /// <summary>A noisy Markov chain over the vocabulary (next = 3 x prev + 1 mod V, sometimes random): learnable.</summary>
    public static int[] Tokens(int n, int vocab, ulong seed)
    {
        var rng = new TrainingRng(seed);
        var t = new int[n];
        for (int i = 1; i < n; i++)
            t[i] = rng.NextBelow(4) == 0 ? (int)rng.NextBelow((ulong)vocab) : (3 * t[i - 1] + 1) % vocab;
        return t;
    }

    /// <summary>A dataset folder with two sources (4000 and 1500 tokens), 10% validation.</summary>
    public static string Write(string dir, int vocab = 32)
    {
        TokenDataset.Write(dir, [("a.txt", Tokens(4000, vocab, 1)), ("b.txt", Tokens(1500, vocab, 2))], vocab, 0.1);
        return dir;
    }

    /// <summary>A small config.json (only vocab_size matters to the toy and bigram models).</summary>
    public static ModelConfig Config(int vocab = 32) => new()
    {
        HiddenSize = 16, IntermediateSize = 32, NumHiddenLayers = 2, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 8,
        VocabSize = vocab, MaxPositionEmbeddings = 64, TorchDtype = "float32",
    };
}
