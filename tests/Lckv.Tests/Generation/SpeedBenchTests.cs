using Lckv.Formats;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Diagnostics;
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
        var bench = new SpeedBench(model, DType.F32, 4, new MachineRoofline(2, 1e9, 1000)) { MinRepetitionSeconds = 0 };
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
        var bench = new SpeedBench(model, DType.F32, 4, new MachineRoofline(2, 1e9, 25)) { MinRepetitionSeconds = 0 };
        var r = bench.Run(BenchKind.TextGeneration, tokens: 2, batch: 1, depth: 0, repetitions: 2);
        Assert.Null(r.RepetitionBandwidths);
        double expected = bench.Roofline(BenchKind.TextGeneration, 2, 1, 0, 1e9, 25).TokensPerSecond;
        Assert.Equal(expected, bench.Roofline(BenchKind.TextGeneration, 2, 1, 0).TokensPerSecond);
        Assert.Equal(expected, r.RooflineTokensPerSecond);
    }

    [Fact]
    public void ARepetitionDuringWhichTheHostTookCpuTimeRunsAgain()
    {
        using var model = new LlamaModel(Tiny(), ModelWeights.Random(Tiny(), LayerMap.Identity(2), DType.F32, 1), "tiny");
        var bench = new SpeedBench(model, DType.F32, 4, new MachineRoofline(2, 1e9, 1000)) { MinRepetitionSeconds = 0 };
        var probes = new Queue<double>([10, 11, 12, 13, 14]);
        bench.BandwidthProbe = () => probes.Dequeue();
        // read before and after each timed repetition: the second repetition (the 3rd and 4th reads) is robbed of 0.1 s
        var clock = new Queue<double?>([0, 0, 0, 0.1, 0.1, 0.1, 0.1, 0.1]);
        bench.StealSeconds = () => clock.Dequeue();

        var r = bench.Run(BenchKind.TextGeneration, tokens: 2, batch: 1, depth: 0, repetitions: 3);

        Assert.Empty(clock);
        Assert.Empty(probes);
        Assert.Equal(1, r.Reruns);
        Assert.Equal(0.1, r.RerunSteal, 1e-12);
        Assert.Equal(3, r.TokensPerSecond.Samples.Count);
        Assert.Equal([0.0, 0, 0], r.Steal!);
        // the probe after the rerun replaced the one before it, so each kept repetition sits between its own two probes
        Assert.Equal([10.0, 12, 13, 14], r.Probes!);
        Assert.Equal([12.0, 13, 14], r.RepetitionBandwidths!);
    }

    [Fact]
    public void RerunsStopAtAsManyAsTheRepetitionsAndTheResultSaysItIsUnsteady()
    {
        using var model = new LlamaModel(Tiny(), ModelWeights.Random(Tiny(), LayerMap.Identity(2), DType.F32, 1), "tiny");
        var bench = new SpeedBench(model, DType.F32, 4, new MachineRoofline(2, 1e9, 1000)) { MinRepetitionSeconds = 0 };
        double stolen = 0;
        bench.StealSeconds = () => stolen += 0.01; // every reading later than the one before
        var r = bench.Run(BenchKind.TextGeneration, tokens: 2, batch: 1, depth: 0, repetitions: 2);
        Assert.Equal(2, r.Reruns);
        Assert.Equal(2, r.TokensPerSecond.Samples.Count);
        Assert.All(r.Steal!, s => Assert.True(s > 0));
        Assert.False(r.Steady);
        Assert.Contains("CPU time", Lckv.Cli.BenchCommand.Unsteady(r));

        // where the kernel does not say, nothing is rerun
        bench.StealSeconds = () => null;
        var unknown = bench.Run(BenchKind.TextGeneration, tokens: 2, batch: 1, depth: 0, repetitions: 2);
        Assert.Equal(0, unknown.Reruns);
        Assert.Equal([0.0, 0], unknown.Steal!);
    }

    private static BenchResult Result(double[] tokensPerSecond, double[] rooflines, double[]? probes) =>
        new(BenchKind.TextGeneration, 16, 1, 0, Stats.Of(tokensPerSecond), rooflines.Average(), "memory",
            Probes: probes, RepetitionRooflines: rooflines);

    [Fact]
    public void ATestIsSteadyWhenItsRepetitionsReachAlikeFractionsAndTheProbesHoldStill()
    {
        var steady = Result([80, 85, 82], [100, 100, 100], [60, 61, 59, 60]);
        Assert.Equal(85.0 / 80, steady.FractionSpread, 1e-12);
        Assert.Equal(2.0 / 61, steady.ProbeSwing, 1e-12);
        Assert.True(steady.Steady);

        // one repetition held a neighbour's burst: 0.6 of its roofline against 0.8 for the others
        var burst = Result([80, 60, 80], [100, 100, 100], [60, 60, 60, 60]);
        Assert.False(burst.Steady);
        Assert.Contains("60-80% of their own rooflines", Lckv.Cli.BenchCommand.Unsteady(burst));

        // the machine's bandwidth moved from 73 to 51 GB/s between two probes; each repetition is judged against its
        // own roofline, so the fractions alone would not show it
        var moved = Result([73, 73, 51], [100, 100, 70], [73, 73, 73, 51]);
        Assert.True(moved.FractionSpread < BenchResult.MaxFractionSpread);
        Assert.False(moved.Steady);
        Assert.Contains("from 73.0 to 51.0 GB/s", Lckv.Cli.BenchCommand.Unsteady(moved));

        // without probes only the fractions count
        Assert.True(Result([80, 81], [100, 100], null).Steady);
    }

    [Theory]
    [InlineData("cpu  4606393 2422 439210 3438876 4861 0 1023 43633 0 0", 436.33)]
    [InlineData("cpu 1 2 3 4 5 6 7 0", 0.0)]
    public void StealIsTheEighthFieldOfTheCpuLineInTicksOf10Ms(string line, double seconds)
    {
        Assert.Equal(seconds, StealTime.Parse(line)!.Value, 1e-9);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("cpu 1 2 3 4 5 6 7")]            // a kernel without the steal field
    [InlineData("cpu0 1 2 3 4 5 6 7 8 9 10")]    // a per-CPU line
    [InlineData("cpu 1 2 3 4 5 6 7 x")]
    public void AnythingElseIsNoSteal(string? line)
    {
        Assert.Null(StealTime.Parse(line));
    }

    [Fact]
    public void AShortTestRunsSeveralTimesInOneRepetition()
    {
        using var model = new LlamaModel(Tiny(), ModelWeights.Random(Tiny(), LayerMap.Identity(2), DType.F32, 1), "tiny");
        var bench = new SpeedBench(model, DType.F32, 4, new MachineRoofline(2, 1e9, 1000)) { MinRepetitionSeconds = 0.02 };
        var r = bench.Run(BenchKind.PromptProcessing, tokens: 4, batch: 2, depth: 3, repetitions: 3);
        Assert.True(r.RunsPerRepetition > 1, $"{r.RunsPerRepetition} run(s) per repetition");
        Assert.True(r.RunsPerRepetition <= SpeedBench.MaxRunsPerRepetition);
        Assert.Equal(3, r.TokensPerSecond.Samples.Count);
        // tokens/s counts every run: a repetition lasts about the minimum, not one run's time
        Assert.InRange(r.RepetitionSeconds, 0.005, 1.0);

        bench.MinRepetitionSeconds = 0;
        Assert.Equal(1, bench.Run(BenchKind.PromptProcessing, tokens: 4, batch: 2, depth: 3, repetitions: 1).RunsPerRepetition);
    }
}
