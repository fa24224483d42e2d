namespace Lckv.Cache;

/// <summary>The feature maps of LESS (kv-compression.md §3) of a model's layers: phi of a query head's rotated vector
/// [D] under a reading layer's query map, psi of a KV head's rotated key under a store owner's key map, both [R].</summary>
public interface ILessMaps
{
    int Rank { get; }
    int HeadDim { get; }
    /// <summary>Rh: the hidden width of the maps.</summary>
    int Hidden { get; }
    /// <summary>Scratch floats per row PsiRows needs.</summary>
    int PsiScratchFloats { get; }
    /// <summary>phi of n rows of one query head's vectors (x [n, D]) into phi [n, R]; scratch holds n * Rh floats.</summary>
    void PhiRows(int layer, int head, ReadOnlySpan<float> x, int n, Span<float> phi, Span<float> scratch);
    /// <summary>psi of n keys of one KV head (x [n, D]) into psi [n, R]; scratch holds n * PsiScratchFloats floats.</summary>
    void PsiRows(int layer, int kvHead, ReadOnlySpan<float> x, int n, Span<float> psi, Span<float> scratch);
}

/// <summary>
/// A store's state for one sequence under LESS: besides the kept entries, per KV head g the sums over everything evicted
/// so far, Hs[g] = sum psi(k)^T v ([R, D]) and z[g] = sum psi(k) ([R]), and whether anything was evicted yet.
/// </summary>
public sealed class LessState : KvStoreState
{
    public LessState(int kvHeads, int rank, int headDim)
    {
        Hs = new float[kvHeads * rank * headDim];
        Z = new float[kvHeads * rank];
        Evicted = new bool[kvHeads];
    }

    public float[] Hs { get; }
    public float[] Z { get; }
    public bool[] Evicted { get; }
    /// <summary>Incremented by every reset, so that folds pending for the previous sequence are dropped.</summary>
    public int Generation { get; private set; }

    public override void Reset()
    {
        base.Reset();
        Generation++;
        Array.Clear(Hs);
        Array.Clear(Z);
        Array.Clear(Evicted);
    }
}
