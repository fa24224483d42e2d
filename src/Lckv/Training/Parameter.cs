namespace Lckv.Training;

/// <summary>A trainable tensor: its Hugging Face name, shape, f32 value and gradient (same length).</summary>
public sealed class Parameter
{
    public Parameter(string name, long[] shape, bool decay)
    {
        long n = shape.Aggregate(1L, (a, b) => a * b);
        if (n > Array.MaxLength) throw new LckvException($"parameter '{name}' has {n} elements, too many for one array");
        Name = name;
        Shape = shape;
        Decay = decay;
        Value = GC.AllocateArray<float>((int)n, pinned: true); // the forward reads it through a raw pointer
        Grad = new float[n];
    }

    public string Name { get; }
    public long[] Shape { get; }
    /// <summary>Whether AdamW applies weight decay (not on norms).</summary>
    public bool Decay { get; }
    public float[] Value { get; }
    /// <summary>Accumulated gradient; LossAndGradients adds to it, ZeroGrad clears it.</summary>
    public float[] Grad { get; }
}

/// <summary>What an optimizer and a trainer need from a model: its parameters and one loss+gradient evaluation.</summary>
public interface ITrainable
{
    IReadOnlyList<Parameter> Parameters { get; }

    /// <summary>
    /// Mean next-token cross-entropy of tokens [batch, seqLen] (targets are the inputs shifted by one), with
    /// d(loss)/d(parameter) * gradScale ADDED to each Grad (gradScale lets accumulation average micro-batches).
    /// </summary>
    float LossAndGradients(ReadOnlySpan<int> tokens, int batch, int seqLen, float gradScale = 1f);

    /// <summary>Mean next-token cross-entropy without gradients (validation).</summary>
    float Loss(ReadOnlySpan<int> tokens, int batch, int seqLen);
}
