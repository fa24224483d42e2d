using System.Text;
using Lckv.Formats;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;
using Xunit.Abstractions;

namespace Lckv.Tests.Model;

/// <summary>
/// Golden models loaded with their matrices quantized to Q8_0 or Q4_0 (--weights): their logits equal those of a
/// reference forward over the dequantized weights (the same model with every matrix dequantized to f32) to 1e-4,
/// through the iteration plan in one step and token by token.
/// </summary>
public sealed class QuantizedGoldenTests(ITestOutputHelper output)
{
    public static TheoryData<string, DType> Cases => new()
    {
        { "llama-standard", DType.Q8_0 }, { "llama-standard", DType.Q4_0 },
        { "llama-bf16-tied", DType.Q8_0 }, { "llama-bf16-tied", DType.Q4_0 },
        { "lckv-sandwich-top-w2", DType.Q4_0 },
    };

    [SharedTheory]
    [MemberData(nameof(Cases))]
    public void LogitsEqualAForwardOverTheDequantizedWeights(string name, DType dtype)
    {
        var dir = SharedData.Path("golden", name);
        using var fixture = new GoldenTests.Fixture
        {
            Model = LlamaModel.Load(dir, weights: dtype),
            Expected = TensorSet.Open(Path.Combine(dir, "expected.safetensors")),
        };
        var quantized = fixture.Model;
        var w = quantized.Weights;
        Assert.True(w.MatricesAre(dtype));
        Assert.False(DTypes.IsBlockQuantized(w.FinalNorm.DType) || DTypes.IsBlockQuantized(w.Layers[0].InputNorm.DType)); // norms keep their dtype
        using var reference = new LlamaModel(quantized.Config, w.ConvertTo(DType.F32), "dequantized");
        var ids = fixture.Rows("input_ids");
        var table = new StringBuilder($"{name} {DTypes.Name(dtype)}\n");
        bool ok = true;
        foreach (var (what, tokenByToken) in new[] { ("plan, one step", false), ("token by token", true) })
        {
            var q = GoldenTests.WholeSequenceLogits(quantized, ids, PrefillMode.Plan, tokenByToken);
            var r = GoldenTests.WholeSequenceLogits(reference, ids, PrefillMode.Plan, tokenByToken);
            double diff = 0;
            for (int i = 0; i < q.Length; i++) diff = Math.Max(diff, Math.Abs(q[i] - r[i]));
            // how far quantization moved the logits from the checkpoint's (not a check: it only shows the comparison is not trivial)
            var golden = fixture.Read<float>(tokenByToken ? "logits_sequential" : "logits");
            double moved = 0;
            for (int i = 0; i < q.Length; i++) moved = Math.Max(moved, Math.Abs(q[i] - golden[i]));
            ok &= diff <= 1e-4;
            table.AppendLine($"  {what,-16} max |quantized - dequantized reference| {diff:E3}   (max |quantized - golden| {moved:E3})");
        }
        output.WriteLine(table.ToString());
        Assert.True(ok, table.ToString());
    }

    /// <summary>The dequantized reference is what the quantizer's own round trip gives, matrix by matrix.</summary>
    [SharedTheory]
    [InlineData("llama-standard", DType.Q8_0)]
    [InlineData("llama-bf16-tied", DType.Q4_0)]
    public void QuantizedMatricesAreTheQuantizersOutput(string name, DType dtype)
    {
        var dir = SharedData.Path("golden", name);
        using var original = LlamaModel.Load(dir);
        using var quantized = LlamaModel.Load(dir, weights: dtype);
        foreach (var s in ModelWeights.Specs(original.Config, original.Map))
        {
            var a = original.Weights.Matrix(s);
            var b = quantized.Weights.Matrix(s);
            if (s.Shape.Length == 1)
            {
                Assert.Equal(a.DType, b.DType);
                continue;
            }
            Assert.Equal(dtype, b.DType);
            var row = new float[a.Cols];
            var bytes = new byte[b.RowBytes];
            var back = new float[a.Cols];
            var got = new float[a.Cols];
            for (int r = 0; r < a.Rows; r++)
            {
                a.ReadRow(r, row);
                Quantize.Row(dtype, row, bytes);
                Quantize.Dequantize(dtype, bytes, back);
                b.ReadRow(r, got);
                Assert.Equal(back, got);
            }
        }
        if (original.Config.TieWordEmbeddings) Assert.Equal(quantized.Weights.Embed.Data, quantized.Weights.Head.Data);
    }
}
