using Lckv.Formats;
using Lckv.Model;
using Lckv.Tests.Formats;
using Lckv.Tests.Model;
using Lckv.Training;

namespace Lckv.Tests.Training;

/// <summary>Construction, parameter table, save/load round trip, and the inference model built from parameters.</summary>
public sealed class TrainableModelTests
{
    private static ModelConfig Tiny(string? layerTypes = null, bool tied = false) => new()
    {
        ModelType = layerTypes is null ? ModelConfig.LlamaType : ModelConfig.LckvLlamaType, LayerTypes = layerTypes,
        HiddenSize = 16, IntermediateSize = 24, NumHiddenLayers = 4, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 4,
        VocabSize = 37, MaxPositionEmbeddings = 64, TieWordEmbeddings = tied, ForwardPasses = 2, BackwardPasses = 2,
    };

    [Theory]
    [InlineData(null, false)]
    [InlineData("0_3_3_3", true)]
    [InlineData("0_0_2_2", false)]
    public void ParametersFollowTheWeightTable(string? layerTypes, bool tied)
    {
        var config = Tiny(layerTypes, tied);
        var model = TrainableModel.FromConfig(config, 1);
        var specs = ModelWeights.Specs(config, LayerMap.Parse(layerTypes, 4));
        Assert.Equal(specs.Select(s => s.Name), model.Parameters.Select(p => p.Name));
        foreach (var (s, p) in specs.Zip(model.Parameters))
        {
            Assert.Equal(s.Shape, p.Shape);
            Assert.Equal(s.Elements, p.Value.LongLength);
            Assert.Equal(s.Shape.Length > 1, p.Decay);
            if (s.Shape.Length == 1) Assert.All(p.Value, v => Assert.Equal(1f, v));
        }
        Assert.Equal(tied, !model.Parameters.Any(p => p.Name == "lm_head.weight"));
        // deterministic in the seed
        Assert.Equal(model.Parameters[0].Value, TrainableModel.FromConfig(config, 1).Parameters[0].Value);
        Assert.NotEqual(model.Parameters[0].Value, TrainableModel.FromConfig(config, 2).Parameters[0].Value);
    }

    [Fact]
    public void GradientsAccumulateWithScaleAndBuffersAreReused()
    {
        var model = TrainableModel.FromConfig(Tiny("0_3_3_3"), 3);
        var tokens = Enumerable.Range(0, 3 * 9).Select(i => i * 7 % 37).ToArray();
        model.ZeroGrad();
        float a = model.LossAndGradients(tokens, 3, 9, 0.5f);
        var once = model.Parameters.Select(p => (float[])p.Grad.Clone()).ToArray();
        float b = model.LossAndGradients(tokens, 3, 9, 0.5f);
        Assert.Equal(a, b);
        for (int i = 0; i < once.Length; i++)
            for (int j = 0; j < once[i].Length; j++)
                Assert.Equal(2 * once[i][j], model.Parameters[i].Grad[j], 1e-6 + 1e-5 * Math.Abs(once[i][j]));
        // a smaller shape after a larger one reuses the buffers and gives the same result as a fresh model
        float small = model.Loss(tokens.AsSpan(0, 2 * 5), 2, 5);
        Assert.Equal(TrainableModel.FromConfig(Tiny("0_3_3_3"), 3).Loss(tokens.AsSpan(0, 2 * 5), 2, 5), small);
    }

    [Fact]
    public void SteadyStateStepsDoNotAllocateBuffers()
    {
        var model = TrainableModel.FromConfig(Tiny("0_3_3_3") with { ForwardPasses = 3 }, 4);
        var tokens = Enumerable.Range(0, 4 * 16).Select(i => i * 5 % 37).ToArray();
        model.LossAndGradients(tokens, 4, 16);
        model.Loss(tokens, 4, 16);
        long allocated = Allocations.Least(() =>
        {
            model.LossAndGradients(tokens, 4, 16);
            model.Loss(tokens, 4, 16);
        });
        Assert.True(allocated < 4096, $"a steady-state step allocated {allocated} bytes");
    }

    [SharedFact]
    public void SaveLoadRoundTripAndInferenceModelMatch()
    {
        var model = TrainableModel.FromCheckpoint(SharedData.Path("golden", "lckv-sandwich-top-w2"));
        using var dir = new TempDir();
        model.Save(dir.Root);
        var loaded = TrainableModel.FromCheckpoint(dir.Root);
        Assert.Equal(model.Config with { TorchDtype = "float32" }, loaded.Config with { EosTokenIds = model.Config.EosTokenIds });
        foreach (var (p, q) in model.Parameters.Zip(loaded.Parameters))
        {
            Assert.Equal(p.Name, q.Name);
            Assert.Equal(p.Value, q.Value);
        }
        // the inference engine over the same parameters computes the same plan logits
        int batch = 2, seqLen = 11, vocab = model.Config.VocabSize;
        var ids = Enumerable.Range(0, batch).Select(b => Enumerable.Range(0, seqLen).Select(t => (b * 31 + t * 17) % vocab).ToArray()).ToArray();
        var mine = new float[batch * seqLen * vocab];
        model.Logits(ids.SelectMany(x => x).ToArray(), batch, seqLen, mine);
        using var inference = loaded.ToInferenceModel();
        var theirs = GoldenTests.WholeSequenceLogits(inference, ids, PrefillMode.Plan);
        var (diff, _, ok) = GradientGoldenTests.Compare(mine, theirs, 1e-4);
        Assert.True(ok, $"max abs diff {diff}");
    }
}
