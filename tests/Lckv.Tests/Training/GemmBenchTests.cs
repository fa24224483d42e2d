using System.Diagnostics;
using Lckv.Diagnostics;
using Lckv.Numerics;
using Lckv.Numerics.Backward;
using Xunit.Abstractions;

namespace Lckv.Tests.Training;

public sealed class GemmBenchTests(ITestOutputHelper output)
{
    [BenchFact]
    public unsafe void BackwardGemmVersusForward()
    {
        output.WriteLine(Roofline.Measure(Environment.ProcessorCount).ToString());
        foreach (var (m, n, k) in new[] { (1024, 512, 512), (1024, 1408, 512), (1024, 512, 1408), (1024, 4096, 512) })
        {
            var x = BackwardKernelTests.Random(m * k, 1);
            var w = BackwardKernelTests.Random(n * k, 2);
            var y = new float[m * n];
            var dx = new float[m * k];
            var dw = new float[n * k];
            double flop = 2.0 * m * n * k;
            double Time(Action a) { a(); var sw = Stopwatch.StartNew(); for (int i = 0; i < 5; i++) a(); return sw.Elapsed.TotalSeconds / 5; }
            double tf = Time(() => { fixed (float* pw = w) MatMul.Multiply(x, new WeightMatrix((nint)pw, DType.F32, n, k), y, m); });
            double tx = Time(() => MatMulBackward.InputGradient(y, w, dx, m, n, k, false));
            double tw = Time(() => MatMulBackward.WeightGradient(y, x, dw, m, n, k));
            output.WriteLine($"m={m} n={n} k={k}: forward {flop / tf / 1e9:F1} GFLOP/s, dX {flop / tx / 1e9:F1}, dW {flop / tw / 1e9:F1}");
        }
    }
}
