using Lckv.Formats;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;

namespace Lckv.Tests.Generation;

public class SpeedBenchTests
{
    private static ModelConfig Tiny() => new()
    {
        HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
        HeadDim = 8, VocabSize = 64, MaxPositionEmbeddings = 256, BosTokenId = 1, EosTokenIds = [2], TorchDtype = "float32",
    };

    [Fact]
    public void EachRepetitionIsJudgedAgainstTheBetterOfTheProbesAroundIt()
    {
        using var model = new LlamaModel(Tiny(), ModelWeights.Random(Tiny(), LayerMap.Identity(2), DType.F32, 1), "tiny");
        // an FMA peak so high that every test here is memory-bound
        var bench = new SpeedBench(model, DType.F32, 4, new MachineRoofline(2, 1e9, 1000));
        var probes = new Queue<double>([10, 30, 20, 5, 40]);
        int calls = 0;
        bench.BandwidthProbe = () => { calls++; return probes.Dequeue(); };

        var r = bench.Run(BenchKind.TextGeneration, tokens: 3, batch: 2, depth: 0, repetitions: 4);

        Assert.Equal(5, calls); // after the warm-up, then after each repetition
        Assert.Equal([30.0, 30, 20, 40], r.RepetitionBandwidths!);
        Assert.Equal(4, r.TokensPerSecond.Samples.Count);
        double expected = new[] { 30.0, 30, 20, 40 }.Average(bw => bench.Roofline(BenchKind.TextGeneration, 3, 2, 0, 1e9, bw).TokensPerSecond);
        Assert.Equal(expected, r.RooflineTokensPerSecond, 1e-9 * expected);
        Assert.Equal("memory", r.Bound);
        // the memory bound scales with the bandwidth: the mean of the repetitions' rooflines is that of their mean bandwidth
        double atMean = bench.Roofline(BenchKind.TextGeneration, 3, 2, 0, 1e9, 30).TokensPerSecond;
        Assert.Equal(atMean, r.RooflineTokensPerSecond, 1e-9 * atMean);

        // rejudging with another FMA peak keeps the repetitions' bandwidths
        bench.Machine = new MachineRoofline(2, 1e-9, 1000);
        var compute = bench.Rejudge(r);
        Assert.Equal("compute", compute.Bound);
        Assert.True(compute.RooflineTokensPerSecond < r.RooflineTokensPerSecond / 1000);
    }

    [Fact]
    public void WithoutAProbeTheMachineFiguresJudgeTheTest()
    {
        using var model = new LlamaModel(Tiny(), ModelWeights.Random(Tiny(), LayerMap.Identity(2), DType.F32, 1), "tiny");
        var bench = new SpeedBench(model, DType.F32, 4, new MachineRoofline(2, 1e9, 25));
        var r = bench.Run(BenchKind.TextGeneration, tokens: 2, batch: 1, depth: 0, repetitions: 2);
        Assert.Null(r.RepetitionBandwidths);
        double expected = bench.Roofline(BenchKind.TextGeneration, 2, 1, 0, 1e9, 25).TokensPerSecond;
        Assert.Equal(expected, bench.Roofline(BenchKind.TextGeneration, 2, 1, 0).TokensPerSecond);
        Assert.Equal(expected, r.RooflineTokensPerSecond);
    }
}
