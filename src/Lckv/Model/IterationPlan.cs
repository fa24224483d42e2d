namespace Lckv.Model;

/// <summary>One pass over layers [Start, End): with gradient or not, and whether it advances the hidden state.</summary>
public readonly record struct PlanPass(int Start, int End, bool Gradient, bool Advances);

/// <summary>
/// The iteration plan that evaluates a whole sequence when some layers attend upward (kv-sharing.md §4): per cyclic
/// group, m passes without gradient, b-1 with gradient that do not advance, one with gradient that advances; other
/// layers run one ordinary pass. With no upward layer the plan is a single pass.
/// </summary>
public static class IterationPlan
{
    public static IReadOnlyList<PlanPass> Build(LayerMap map, int forwardPasses, int backwardPasses)
    {
        if (forwardPasses < 0) throw new LckvException($"forward_passes must be >= 0, got {forwardPasses}");
        if (backwardPasses < 1) throw new LckvException($"backward_passes must be >= 1, got {backwardPasses}");
        int layers = map.LayerCount;
        var passes = new List<PlanPass>();
        if (!map.AnyAttendsTop)
        {
            passes.Add(new PlanPass(0, layers, true, true));
            return passes;
        }
        int i = 0;
        while (i < layers)
        {
            if (map.AttendsTop(i))
            {
                int top = map.Target(i);
                while (true)
                {
                    int max = top;
                    for (int j = i; j <= top; j++) max = Math.Max(max, map.Target(j));
                    if (max <= top) break;
                    top = max;
                }
                int end = top + 1;
                for (int p = 0; p < forwardPasses; p++) passes.Add(new PlanPass(i, end, false, false));
                for (int p = 0; p < backwardPasses - 1; p++) passes.Add(new PlanPass(i, end, true, false));
                passes.Add(new PlanPass(i, end, true, true));
                i = end;
            }
            else
            {
                int end = i + 1;
                while (end < layers && !map.AttendsTop(end)) end++;
                passes.Add(new PlanPass(i, end, true, true));
                i = end;
            }
        }
        return passes;
    }

    /// <summary>
    /// The one interpreter of a plan, for inference and training. Every pass of a group starts from the group's input;
    /// a pass that does not advance needs only the KV it writes (layers after its last KV-computing layer are skipped,
    /// that layer stops after its KV); in a whole-sequence evaluation, the first pass of a group reads upward stores
    /// that hold nothing yet, so those layers' attention is zero.
    /// </summary>
    /// <param name="wholeSequence">the plan evaluates whole sequences (a multi-token step or training); false for a
    /// decode step, whose upward layers read the KV of earlier tokens</param>
    public static void Execute<THost>(IReadOnlyList<PlanPass> plan, LayerMap map, bool wholeSequence, THost host)
        where THost : IPlanHost
    {
        for (int p = 0; p < plan.Count; p++)
        {
            var pass = plan[p];
            bool firstOfGroup = p == 0 || plan[p - 1].Start != pass.Start;
            host.BeginPass(pass, firstOfGroup);
            for (int layer = pass.Start; layer < pass.End; layer++)
            {
                var work = Work(map, pass, layer);
                if (work == LayerWork.Skip) continue;
                host.Layer(pass, layer, work, wholeSequence && firstOfGroup && map.AttendsTop(layer));
            }
            host.EndPass(pass);
        }
    }

    /// <summary>What a layer of a pass must compute (see <see cref="LayerWork"/>).</summary>
    public static LayerWork Work(LayerMap map, PlanPass pass, int layer)
    {
        if (pass.Advances) return LayerWork.Full;
        int lastKv = pass.Start;
        for (int l = pass.Start; l < pass.End; l++)
            if (map.ComputesKv(l)) lastKv = l;
        return layer < lastKv ? LayerWork.Full : layer == lastKv ? LayerWork.KvOnly : LayerWork.Skip;
    }
}

/// <summary>The callbacks through which <see cref="IterationPlan.Execute"/> drives one evaluation.</summary>
public interface IPlanHost
{
    /// <summary>A pass starts from the group's input (firstOfGroup: the group's input is the current hidden state).</summary>
    void BeginPass(PlanPass pass, bool firstOfGroup);

    /// <summary>One layer of the pass, with the work it needs and whether its attention reads nothing yet.</summary>
    void Layer(PlanPass pass, int layer, LayerWork work, bool zeroAttention);

    /// <summary>A pass ends; an advancing pass's output becomes the next group's input.</summary>
    void EndPass(PlanPass pass);
}
