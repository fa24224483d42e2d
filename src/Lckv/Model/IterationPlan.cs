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
}
