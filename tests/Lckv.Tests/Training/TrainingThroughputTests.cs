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
        foreach (var (name, layers) in new (string, string?)[] { ("llama", null), ("lckv w=2 m=7 b=2", "0_6_6_6_6_6_6_7") })
        {
            var config = Presets.Config("small");
            if (layers is not null) config = config with { ModelType = "lckv-llama", LayerTypes = layers };
            var model = TrainableModel.FromConfig(config, 1);
            int batch = 8, seqLen = 128;
            var rng = new SplitMix64(5);
            var tokens = Enumerable.Range(0, batch * seqLen).Select(_ => (int)(rng.Next() % 4096)).ToArray();
            model.LossAndGradients(tokens, batch, seqLen); // warm-up: buffers, JIT
            int steps = 3;
            var sw = Stopwatch.StartNew();
            for (int s = 0; s < steps; s++) model.LossAndGradients(tokens, batch, seqLen);
            double t = sw.Elapsed.TotalSeconds / steps;
            sw.Restart();
            model.Loss(tokens, batch, seqLen);
            double f = sw.Elapsed.TotalSeconds;
            output.WriteLine($"{name}: {model.ParameterCount / 1e6:F1}M params, step {t * 1000:F0} ms = {batch * seqLen / t:F0} tok/s (forward only {f * 1000:F0} ms), {Environment.ProcessorCount} cores");
        }
    }
}
