using Lckv.Diagnostics;
using Lckv.Numerics;
using System.Diagnostics;
using Lckv.Model;
using Lckv.Training;
using Xunit.Abstractions;

namespace Lckv.Tests.Training;

/// <summary>A fact that runs only when LCKV_BENCH=1 (measurements, not checks).</summary>
public sealed class BenchFactAttribute : FactAttribute
{
    public BenchFactAttribute()
    {
        if (Environment.GetEnvironmentVariable("LCKV_BENCH") != "1") Skip = "set LCKV_BENCH=1 to measure";
    }
}

/// <summary>Training-step throughput (loss + gradients) on the small preset, batch 8 x 128.</summary>
public sealed class TrainingThroughputTests(ITestOutputHelper output)
{
    [BenchFact]
    public void SmallPresetStep()
    {
        var roof = Roofline.Measure(WorkerPool.Shared.ThreadCount);
        output.WriteLine($"machine: {roof}");
        foreach (var (name, layers) in new (string, string?)[] { ("llama", null), ("lckv w=2 m=7 b=2", "0_6_6_6_6_6_6_7") })
        {
            var config = Presets.Config("small");
            if (layers is not null) config = config with { ModelType = "lckv-llama", LayerTypes = layers };
            var model = TrainableModel.FromConfig(config, 1);
            var optimizer = new AdamW(model.Parameters, new AdamWOptions());
            int batch = 8, seqLen = 128;
            var rng = new SplitMix64(5);
            var tokens = Enumerable.Range(0, batch * seqLen).Select(_ => (int)(rng.Next() % 4096)).ToArray();
            void Step()
            {
                optimizer.ZeroGrad();
                model.LossAndGradients(tokens, batch, seqLen);
                optimizer.ClipGradNorm(1.0);
                optimizer.Step(1e-4);
            }
            // as the PyTorch peer (docs/benchmarks/torch-train-step.py) measures: two warm-up steps (buffers, JIT), then
            // the median of five
            Step();
            Step();
            var times = new double[5];
            var sw = new Stopwatch();
            for (int s = 0; s < times.Length; s++)
            {
                sw.Restart();
                Step();
                times[s] = sw.Elapsed.TotalSeconds;
            }
            Array.Sort(times);
            double t = times[times.Length / 2];
            sw.Restart();
            model.Loss(tokens, batch, seqLen);
            double f = sw.Elapsed.TotalSeconds;
            // model FLOP: 6 per weight per token (forward + backward) over the matrices that multiply (not the embedding
            // lookup); an upward layout's plan does more (m no-grad and b-1 extra passes over its cyclic layers)
            long weights = ModelWeights.Specs(config, LayerMap.Parse(config.LayerTypes, config.NumHiddenLayers))
                .Where(x => x.Shape.Length == 2 && x.Slot != WeightSlot.Embed).Sum(x => x.Elements);
            double tokPerSec = batch * seqLen / t, gflops = 6.0 * weights * tokPerSec / 1e9;
            output.WriteLine($"{name}: step (loss, gradients, clip, AdamW) {t * 1000:F0} ms = {tokPerSec:F0} tok/s, " +
                $"{gflops:F1} model GFLOP/s = {100 * gflops / roof.FmaGflops:F0}% of the FMA peak (forward only {f * 1000:F0} ms)");
        }
    }
}
