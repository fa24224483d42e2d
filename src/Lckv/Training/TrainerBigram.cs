using System.Numerics.Tensors;

namespace Lckv.Training;

/// <summary>
/// A bigram language model: logits(next | x) = W[x, :] + b. Parameters <c>bigram.weight</c> [vocab, vocab] (decayed)
/// and <c>bigram.bias</c> [vocab] (not decayed). Single-threaded and deterministic; the gradient is exact:
/// d(loss)/d(logits) = (softmax(logits) - onehot(target)) / count.
/// </summary>
public sealed class BigramModel : ITrainable
{
    private readonly Parameter _weight, _bias;
    private readonly float[] _logits;

    public BigramModel(int vocab, ulong seed)
    {
        if (vocab < 2) throw new LckvException($"a bigram model needs a vocabulary of at least 2, not {vocab}");
        if ((long)vocab * vocab > Array.MaxLength)
            throw new LckvException($"a bigram model of vocabulary {vocab} has too many parameters ({(long)vocab * vocab})");
        Vocab = vocab;
        _weight = new Parameter("bigram.weight", [vocab, vocab], decay: true);
        _bias = new Parameter("bigram.bias", [vocab], decay: false);
        var rng = new TrainingRng(seed);
        for (int i = 0; i < _weight.Value.Length; i++)
            _weight.Value[i] = (float)(((rng.Next() >> 11) * (1.0 / (1UL << 53)) - 0.5) * 0.04);
        Parameters = [_weight, _bias];
        _logits = new float[vocab];
    }

    public int Vocab { get; }
    public IReadOnlyList<Parameter> Parameters { get; }

    public float LossAndGradients(ReadOnlySpan<int> tokens, int batch, int seqLen, float gradScale = 1f)
        => Run(tokens, batch, seqLen, gradScale, grads: true);

    public float Loss(ReadOnlySpan<int> tokens, int batch, int seqLen) => Run(tokens, batch, seqLen, 0, grads: false);

    private float Run(ReadOnlySpan<int> tokens, int batch, int seqLen, float gradScale, bool grads)
    {
        if (tokens.Length != batch * seqLen || seqLen < 2)
            throw new ArgumentException($"tokens hold {tokens.Length}, expected batch {batch} x seqLen {seqLen} (seqLen >= 2)");
        int count = batch * (seqLen - 1);
        float scale = gradScale / count;
        double total = 0;
        int v = Vocab;
        for (int b = 0; b < batch; b++)
        {
            for (int t = 0; t + 1 < seqLen; t++)
            {
                int x = tokens[b * seqLen + t], y = tokens[b * seqLen + t + 1];
                if ((uint)x >= (uint)v || (uint)y >= (uint)v) throw new LckvException($"token id {Math.Max(x, y)} is outside the vocabulary [0, {v})");
                var row = _weight.Value.AsSpan(x * v, v);
                TensorPrimitives.Add(row, _bias.Value, _logits);
                float max = TensorPrimitives.Max<float>(_logits);
                TensorPrimitives.Subtract(_logits, max, _logits);
                float shiftedTarget = _logits[y];
                TensorPrimitives.Exp(_logits, _logits);
                float sum = TensorPrimitives.Sum<float>(_logits);
                total += Math.Log(sum) - shiftedTarget;
                if (!grads) continue;
                // d/dlogits = softmax - onehot, times scale
                TensorPrimitives.Multiply(_logits, scale / sum, _logits);
                _logits[y] -= scale;
                var gRow = _weight.Grad.AsSpan(x * v, v);
                TensorPrimitives.Add(gRow, _logits, gRow);
                TensorPrimitives.Add(_bias.Grad, _logits, _bias.Grad);
            }
        }
        return (float)(total / count);
    }
}
