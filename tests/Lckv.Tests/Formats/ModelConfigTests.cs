using Lckv.Formats;
using Xunit.Abstractions;

namespace Lckv.Tests.Formats;

public sealed class ModelConfigTests(ITestOutputHelper output)
{
    private const string Minimal = """
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
         "num_attention_heads": 4, "vocab_size": 100}
        """;

    [SharedTheory]
    [MemberData(nameof(SafeTensorsTests.GoldenCases), MemberType = typeof(SafeTensorsTests))]
    public void LoadsGoldenConfigAndRoundTrips(string name)
    {
        var c = ModelConfig.Load(SharedData.Path("golden", name, "config.json"));
        Assert.Equal(64, c.HiddenSize);
        Assert.Equal(160, c.IntermediateSize);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2], c.EosTokenIds);
        Assert.Equal(1e-5f, c.RmsNormEps);
        Assert.Equal(c.ModelType == "lckv-llama", c.LayerTypes is not null);
        AssertSame(c, ModelConfig.Parse(c.ToJson(), "roundtrip"));
        // a folder works too
        AssertSame(c, ModelConfig.Load(SharedData.Path("golden", name)));
    }

    [SharedFact]
    public void GoldenSpecificFields()
    {
        var y = ModelConfig.Load(SharedData.Path("golden", "yoco-sliding", "config.json"));
        Assert.Equal("0s_1s_2s_3_3_3", y.LayerTypes);
        Assert.Equal(4, y.SlidingWindow);
        var g = ModelConfig.Load(SharedData.Path("golden", "lckv-groups-nodiag", "config.json"));
        Assert.True(g.ForceNoDiag);
        Assert.Equal(3, g.ForwardPasses);
        Assert.Equal(2, g.BackwardPasses);
        var b = ModelConfig.Load(SharedData.Path("golden", "llama-bf16-tied", "config.json"));
        Assert.True(b.TieWordEmbeddings);
        Assert.Equal("bfloat16", b.TorchDtype);
        Assert.Equal(8, b.HeadDim);
        Assert.Equal(2, b.NumKeyValueHeads);
    }

    private static void AssertSame(ModelConfig a, ModelConfig b)
    {
        Assert.Equal(a.EosTokenIds, b.EosTokenIds);
        Assert.Equal(a, b with { EosTokenIds = a.EosTokenIds });
    }

    [Fact]
    public void DefaultsApply()
    {
        var c = ModelConfig.Parse(Minimal, "config.json");
        Assert.Equal(4, c.NumKeyValueHeads);
        Assert.Equal(16, c.HeadDim);
        Assert.Null(c.BosTokenId);
        Assert.Empty(c.EosTokenIds);
        Assert.Null(c.LayerTypes);
        Assert.False(c.IsLckv);
        AssertSame(c, ModelConfig.Parse(c.ToJson(), "x"));
    }

    [Fact]
    public void LckvDefaultsAndEosList()
    {
        var c = ModelConfig.Parse(Minimal.Replace("\"llama\"", "\"lckv-llama\"").Replace("}", ", \"sliding_window\": null, \"eos_token_id\": [2, 7], \"layer_types\": \"0_1\"}"), "config.json");
        Assert.Equal(4096, c.SlidingWindow);
        Assert.Equal(7, c.ForwardPasses);
        Assert.Equal(2, c.BackwardPasses);
        Assert.Equal([2, 7], c.EosTokenIds);
        Assert.Equal("0_1", c.LayerTypes);
        string json = c.ToJson();
        output.WriteLine(json);
        AssertSame(c, ModelConfig.Parse(json, "x"));
    }

    [Theory]
    [InlineData("{\"model_type\": \"llama\", \"hidden_size\": 64,", "malformed JSON at line")]
    [InlineData("[1]", "expected a JSON object")]
    [InlineData("{\"model_type\": \"mistral\"}", "unsupported model_type 'mistral' (expected llama or lckv-llama)")]
    [InlineData("{\"hidden_size\": 4}", "missing required field 'model_type'")]
    [InlineData("REPLACE:\"vocab_size\": 100|\"x\": 1", "missing required field 'vocab_size'")]
    [InlineData("REPLACE:\"hidden_size\": 64|\"hidden_size\": \"64\"", "field 'hidden_size' must be an integer, not \"64\"")]
    [InlineData("REPLACE:\"hidden_size\": 64|\"hidden_size\": 64.5", "field 'hidden_size' must be an integer")]
    [InlineData("ADD:\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}", "unsupported rope_scaling {\"type\": \"linear\"")]
    [InlineData("ADD:\"hidden_act\": \"gelu\"", "unsupported hidden_act 'gelu'")]
    [InlineData("ADD:\"attention_bias\": true", "unsupported attention_bias")]
    [InlineData("ADD:\"mlp_bias\": true", "unsupported mlp_bias")]
    [InlineData("ADD:\"tie_word_embeddings\": 1", "field 'tie_word_embeddings' must be true or false")]
    [InlineData("ADD:\"eos_token_id\": \"2\"", "field 'eos_token_id' must be an integer or a list of integers")]
    [InlineData("ADD:\"eos_token_id\": [2, \"x\"]", "field 'eos_token_id' must be an integer or a list")]
    [InlineData("ADD:\"rms_norm_eps\": \"1e-5\"", "field 'rms_norm_eps' must be a number")]
    [InlineData("ADD:\"num_key_value_heads\": 3", "not a multiple of num_key_value_heads 3")]
    [InlineData("ADD:\"head_dim\": 15", "head_dim 15 must be even")]
    [InlineData("REPLACE:\"num_hidden_layers\": 2|\"num_hidden_layers\": 0", "num_hidden_layers must be positive")]
    [InlineData("ADD:\"eos_token_id\": 100", "eos_token_id 100 is outside the vocabulary")]
    [InlineData("ADD:\"torch_dtype\": \"int8\"", "unsupported torch_dtype 'int8'")]
    public void BadConfigFails(string edit, string expected)
    {
        string json = edit switch
        {
            _ when edit.StartsWith("ADD:", StringComparison.Ordinal) => Minimal.TrimEnd().TrimEnd('}') + ", " + edit[4..] + "}",
            _ when edit.StartsWith("REPLACE:", StringComparison.Ordinal) => Minimal.Replace(edit[8..].Split('|')[0], edit[8..].Split('|')[1]),
            _ => edit,
        };
        var e = Assert.Throws<LckvException>(() => ModelConfig.Parse(json, "config.json"));
        output.WriteLine(e.Message);
        Assert.StartsWith("config.json: ", e.Message);
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void LckvFieldTypesChecked()
    {
        string json = Minimal.Replace("\"llama\"", "\"lckv-llama\"").Replace("}", ", \"layer_types\": [0, 1]}");
        var e = Assert.Throws<LckvException>(() => ModelConfig.Parse(json, "config.json"));
        Assert.Contains("field 'layer_types' must be a string", e.Message);
        json = Minimal.Replace("\"llama\"", "\"lckv-llama\"").Replace("}", ", \"force_nodiag\": \"yes\"}");
        Assert.Contains("field 'force_nodiag'", Assert.Throws<LckvException>(() => ModelConfig.Parse(json, "config.json")).Message);
    }

    [Fact]
    public void LoadMissingFileFails()
    {
        using var tmp = new TempDir();
        var e = Assert.Throws<LckvException>(() => ModelConfig.Load(tmp.File("config.json")));
        Assert.Contains("file not found", e.Message);
    }

    [Fact]
    public void GenerationConfigLoads()
    {
        using var tmp = new TempDir();
        Assert.Null(GenerationConfig.LoadIfPresent(tmp.File("generation_config.json")));
        Assert.Null(GenerationConfig.LoadIfPresent(tmp.Root));
        tmp.WriteText("generation_config.json", """
            {"bos_token_id": 1, "eos_token_id": [2, 32000], "temperature": 0.7, "top_p": 0.9, "top_k": 40,
             "do_sample": true, "max_new_tokens": 128, "repetition_penalty": 1.1, "transformers_version": "4.44"}
            """);
        var g = GenerationConfig.LoadIfPresent(tmp.Root)!;
        Assert.Equal(1, g.BosTokenId);
        Assert.Equal([2, 32000], g.EosTokenIds);
        Assert.Equal(0.7f, g.Temperature);
        Assert.Equal(0.9f, g.TopP);
        Assert.Equal(40, g.TopK);
        Assert.True(g.DoSample);
        Assert.Equal(128, g.MaxNewTokens);
        Assert.Null(g.MinP);

        tmp.WriteText("generation_config.json", """{"eos_token_id": 2""");
        Assert.Contains("malformed JSON", Assert.Throws<LckvException>(() => GenerationConfig.LoadIfPresent(tmp.Root)).Message);
        tmp.WriteText("generation_config.json", """{"eos_token_id": {"a": 1}}""");
        Assert.Contains("field 'eos_token_id'", Assert.Throws<LckvException>(() => GenerationConfig.LoadIfPresent(tmp.Root)).Message);
        tmp.WriteText("generation_config.json", """{"eos_token_id": 2}""");
        Assert.Equal([2], GenerationConfig.LoadIfPresent(tmp.Root)!.EosTokenIds);
    }
}
