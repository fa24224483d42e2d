using System.Text.Json;
using Lckv.Cache;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Tests.Model;
using Xunit.Abstractions;

namespace Lckv.Tests.Cli;

/// <summary>--weights on the commands that load a model: the CLI generates what the library does over the same
/// quantized weights, bench reports them, and a bad value is one line.</summary>
public sealed class QuantizedCliTests(ITestOutputHelper output)
{
    [SharedTheory]
    [InlineData("q8_0", DType.Q8_0)]
    [InlineData("q4_0", DType.Q4_0)]
    public void GenerateWithQuantizedWeightsMatchesTheLibrary(string flag, DType dtype)
    {
        var dir = SharedData.Path("golden", "llama-standard");
        int[][] prompts = [[1, 5, 9, 200], [7, 3]];
        var (code, stdout, stderr) = CliTests.Run("generate", "--model", dir, "--weights", flag, "--prompt-ids", "1,5,9,200;7,3", "--kv-dtype", "f32",
            "--temperature", "0", "--max-tokens", "12", "--ignore-eos", "--json");
        output.WriteLine(stdout + stderr);
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        var got = doc.RootElement.GetProperty("output_ids").EnumerateArray().Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();

        using var model = LlamaModel.Load(dir, weights: dtype);
        var layout = model.KvLayout(16, DType.F32);
        using var pool = new KvBlockPool(layout, 64 * layout.BlockBytes * model.Map.KvLayerCount);
        var gen = new Generator(model, new KvCache(pool, model.Map.KvLayerCount, model.ContextLength));
        var result = gen.Generate(prompts, new GenerateOptions { MaxTokens = 12, Sampling = new SamplingParams { Temperature = 0 } });
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(result.Sequences[i].OutputIds, got[i]);
    }

    [Fact]
    public void BenchReportsQuantizedWeights()
    {
        var (code, stdout, stderr) = CliTests.Run("bench", "--preset", "small", "--weights", "q4_0", "-p", "4", "-n", "2", "-b", "1", "-r", "1", "-o", "json");
        output.WriteLine(stdout + stderr);
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal("q4_0", doc.RootElement.GetProperty("dtype").GetString());
        using var model = LlamaModel.FromPreset("small", weights: DType.Q4_0);
        Assert.Equal(model.Weights.Bytes, doc.RootElement.GetProperty("weight_bytes").GetInt64());
        Assert.All(doc.RootElement.GetProperty("results").EnumerateArray(), r => Assert.True(r.GetProperty("tokens_per_second").GetDouble() > 0));
    }

    [Fact]
    public void InfoNamesTheWeightsDtype()
    {
        var (code, stdout, _) = CliTests.Run("info", "--preset", "small", "--weights", "q8_0", "--json");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        Assert.StartsWith("q8_0 matrices", doc.RootElement.GetProperty("dtype").GetString());
    }

    [Fact]
    public void UnknownWeightDtypeIsOneLine()
    {
        CliTests.AssertOneLineError(CliTests.Run("generate", "--preset", "small", "--weights", "q5_1", "--prompt-ids", "1"), "q5_1");
        CliTests.AssertOneLineError(CliTests.Run("info", "--preset", "small", "--weights", "int4"), "int4");
    }
}
