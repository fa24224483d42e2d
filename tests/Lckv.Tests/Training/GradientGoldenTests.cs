using System.Text;
using Lckv.Formats;
using Lckv.Training;
using Xunit.Abstractions;

namespace Lckv.Tests.Training;

/// <summary>
/// Loss, logits and every weight gradient of the golden fixtures (PyTorch, iteration plan with gradients through the
/// last b passes) against <see cref="TrainableModel"/>. Prints a per-tensor table.
/// </summary>
public sealed class GradientGoldenTests(ITestOutputHelper output)
{
    public static TheoryData<string> Cases => new()
    {
        "llama-standard", "llama-bf16-tied", "cla-2", "yoco-sliding", "lckv-sandwich-top-w2", "lckv-all-top",
        "lckv-groups-nodiag", "sandwich-middle",
    };

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void LossLogitsAndGradientsMatchTheReference(string name)
    {
        var dir = SharedData.Path("golden", name);
        var model = TrainableModel.FromCheckpoint(dir);
        using var expected = TensorSet.Open(Path.Combine(dir, "expected.safetensors"));
        var idsInfo = expected.Info("input_ids");
        int batch = (int)idsInfo.Shape[0], seqLen = (int)idsInfo.Shape[1];
        var ids = expected.ReadInt64s("input_ids").Select(x => (int)x).ToArray();

        var table = new StringBuilder($"{name} ({model.Config.LayerTypes ?? "llama"}, m={model.Config.ForwardPasses} b={model.Config.BackwardPasses})\n");
        table.AppendLine($"  {"tensor",-48} {"max abs diff",12} {"max |ref|",10}  verdict");
        bool ok = true;
        void Row(string what, double diff, double refMax, bool pass)
        {
            ok &= pass;
            table.AppendLine($"  {what,-48} {diff,12:E3} {refMax,10:G4}  {(pass ? "OK" : "FAIL")}");
        }

        var logits = new float[batch * seqLen * model.Config.VocabSize];
        float forwardLoss = model.Logits(ids, batch, seqLen, logits);
        var refLogits = expected.ReadSingles("logits");
        var (logitDiff, logitMax, logitOk) = Compare(logits, refLogits, 1e-4);
        Row("logits (plan)", logitDiff, logitMax, logitOk);

        model.ZeroGrad();
        float loss = model.LossAndGradients(ids, batch, seqLen);
        float refLoss = expected.ReadSingles("loss")[0];
        double lossRel = Math.Abs(loss - refLoss) / Math.Abs(refLoss);
        Row($"loss {loss:F6} vs {refLoss:F6} (relative)", lossRel, refLoss, lossRel <= 1e-5);
        Row("loss (forward only) vs loss with gradients", Math.Abs(forwardLoss - loss), loss, forwardLoss == loss);

        foreach (var p in model.Parameters)
        {
            string key = "grad." + p.Name;
            Assert.True(expected.Contains(key), $"fixture has no {key}");
            var (diff, max, pass) = Compare(p.Grad, expected.ReadSingles(key), 1e-4);
            Row(p.Name, diff, max, pass);
        }
        output.WriteLine(table.ToString());
        Assert.True(ok, table.ToString());
    }

    /// <summary>Max abs diff, max |reference|, and whether |a-b| &lt;= tol * max(1, |b|) everywhere.</summary>
    internal static (double Diff, double RefMax, bool Ok) Compare(ReadOnlySpan<float> actual, ReadOnlySpan<float> reference, double tol)
    {
        Assert.Equal(reference.Length, actual.Length);
        double diff = 0, max = 0;
        bool ok = true;
        for (int i = 0; i < actual.Length; i++)
        {
            double d = Math.Abs((double)actual[i] - reference[i]);
            diff = Math.Max(diff, d);
            max = Math.Max(max, Math.Abs(reference[i]));
            if (!(d <= tol * Math.Max(1, Math.Abs(reference[i])))) ok = false;
        }
        return (diff, max, ok);
    }
}
