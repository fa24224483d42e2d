using System.Text;
using System.Text.Json;
using Lckv.Formats;
using Lckv.Tests.Formats;
using Lckv.Tests.Model;
using Xunit.Abstractions;

namespace Lckv.Tests.Cli;

/// <summary>The lckv command end to end (in process): golden generations, and one clear line for every bad input.</summary>
public sealed class CliTests(ITestOutputHelper output)
{
    internal static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Lckv.Cli.Cli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [SharedTheory]
    [MemberData(nameof(GoldenTests.Cases), MemberType = typeof(GoldenTests))]
    public void GenerateMatchesTheGoldenGreedyOutput(string name)
    {
        using var f = GoldenTests.Open(name);
        var prompts = f.Rows("generate.prompt_ids");
        var expected = f.Rows("generate.output_ids");
        var ids = string.Join(';', prompts.Select(p => string.Join(',', p)));
        // the references ran with an f32 cache; a bf16 checkpoint would default to a bf16 one
        var (code, stdout, stderr) = Run("generate", "--model", SharedData.Path("golden", name), "--prompt-ids", ids, "--kv-dtype", "f32",
            "--temperature", "0", "--max-tokens", expected[0].Length.ToString(), "--ignore-eos", "--json");
        output.WriteLine(stdout + stderr);
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        var got = doc.RootElement.GetProperty("output_ids").EnumerateArray()
            .Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        Assert.Equal(expected, got);
        Assert.True(doc.RootElement.GetProperty("timing").GetProperty("decode_tokens").GetInt32() > 0);
    }

    internal static void AssertOneLineError((int Code, string Out, string Err) r, string mustContain)
    {
        Assert.NotEqual(0, r.Code);
        var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"expected one line, got:\n{r.Err}");
        Assert.StartsWith("error: ", lines[0]);
        Assert.DoesNotContain("   at ", r.Err);
        Assert.Contains(mustContain, lines[0], StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>A copy of a golden checkpoint folder that a test may damage.</summary>
    private static TempDir CopyOf(string name)
    {
        var dir = new TempDir();
        foreach (var file in new[] { "config.json", "model.safetensors" })
            File.Copy(SharedData.Path("golden", name, file), dir.File(file));
        return dir;
    }

    [SharedFact]
    public void TruncatedSafetensorsIsOneLine()
    {
        using var dir = CopyOf("llama-standard");
        var bytes = File.ReadAllBytes(dir.File("model.safetensors"));
        File.WriteAllBytes(dir.File("model.safetensors"), bytes[..(bytes.Length / 2)]);
        AssertOneLineError(Run("generate", "--model", dir.Root, "--prompt-ids", "1,2,3"), "model.safetensors");
    }

    [SharedFact]
    public void UnknownDtypeIsOneLine()
    {
        using var dir = CopyOf("llama-standard");
        var bytes = File.ReadAllBytes(dir.File("model.safetensors"));
        var text = Encoding.ASCII.GetString(bytes, 0, 4096);
        int at = text.IndexOf("\"F32\"", StringComparison.Ordinal);
        Assert.True(at > 0);
        bytes[at + 1] = (byte)'Q';
        File.WriteAllBytes(dir.File("model.safetensors"), bytes);
        AssertOneLineError(Run("generate", "--model", dir.Root, "--prompt-ids", "1,2,3"), "dtype");
    }

    [SharedFact]
    public void ShapeDisagreeingWithConfigIsOneLine()
    {
        using var dir = CopyOf("llama-standard");
        var cfg = File.ReadAllText(dir.File("config.json")).Replace("\"intermediate_size\": 160", "\"intermediate_size\": 96");
        File.WriteAllText(dir.File("config.json"), cfg);
        AssertOneLineError(Run("generate", "--model", dir.Root, "--prompt-ids", "1,2,3"), "mlp.gate_proj.weight");
    }

    [SharedFact]
    public void MissingTensorIsOneLine()
    {
        using var dir = new TempDir();
        File.Copy(SharedData.Path("golden", "llama-standard", "config.json"), dir.File("config.json"));
        using (var src = TensorSet.Open(SharedData.Path("golden", "llama-standard")))
        {
            var keep = src.Names.Where(n => n != "model.layers.2.mlp.up_proj.weight")
                .Select(n => new TensorData(n, src.Info(n).DType, src.Info(n).Shape, src.Bytes(n).ToArray())).ToList();
            SafeTensorsWriter.Write(dir.File("model.safetensors"), keep);
        }
        AssertOneLineError(Run("generate", "--model", dir.Root, "--prompt-ids", "1,2,3"), "model.layers.2.mlp.up_proj.weight");
    }

    [SharedFact]
    public void MalformedConfigIsOneLine()
    {
        using var dir = CopyOf("llama-standard");
        File.WriteAllText(dir.File("config.json"), "{ \"model_type\": \"llama\", \"hidden_size\": 64,, }");
        AssertOneLineError(Run("generate", "--model", dir.Root, "--prompt-ids", "1,2,3"), "config.json");
    }

    [SharedFact]
    public void UnknownModelTypeIsOneLine()
    {
        using var dir = CopyOf("llama-standard");
        var cfg = File.ReadAllText(dir.File("config.json")).Replace("\"model_type\": \"llama\"", "\"model_type\": \"mistral\"");
        File.WriteAllText(dir.File("config.json"), cfg);
        AssertOneLineError(Run("info", "--model", dir.Root), "mistral");
    }

    [SharedFact]
    public void PromptLongerThanTheContextIsOneLine()
    {
        var ids = string.Join(',', Enumerable.Range(3, 300)); // max_position_embeddings is 256
        AssertOneLineError(Run("generate", "--model", SharedData.Path("golden", "llama-standard"), "--prompt-ids", ids, "--temperature", "0"), "context");
        AssertOneLineError(Run("generate", "--model", SharedData.Path("golden", "llama-standard"), "--prompt-ids", "1,2,3,4,5", "--context", "4"), "context");
    }

    [Fact]
    public void MissingModelFolderAndBadOptionsAreOneLine()
    {
        AssertOneLineError(Run("generate", "--model", "/nonexistent/model", "--prompt-ids", "1"), "/nonexistent/model");
        AssertOneLineError(Run("generate", "--preset", "small", "--prompt-ids", "1,x"), "'x'");
        AssertOneLineError(Run("generate", "--preset", "huge", "--prompt-ids", "1"), "huge");
        AssertOneLineError(Run("generate", "--preset", "small", "--prompt-ids", "1", "--kv-dtype", "int4"), "int4");
        AssertOneLineError(Run("generate", "--preset", "small", "--prompt-ids", "1", "--top-p", "1.5"), "top");
        AssertOneLineError(Run("generate", "--preset", "small", "--prompt", "hello"), "tokenizer");
        AssertOneLineError(Run("generate", "--nonsense-flag"), "nonsense");
        AssertOneLineError(Run("generate", "--preset", "small", "--prompt-ids", "99999"), "vocabulary");
    }

    [Fact]
    public void GenerateFromAPresetIsDeterministicInTheSeed()
    {
        string[] args = ["generate", "--preset", "small", "--prompt-ids", "5,6,7", "--max-tokens", "6", "--temperature", "0.9", "--seed", "42", "--json", "--ignore-eos"];
        var a = Run(args);
        var b = Run(args);
        Assert.Equal(0, a.Code);
        using var da = JsonDocument.Parse(a.Out);
        using var db = JsonDocument.Parse(b.Out);
        Assert.Equal(da.RootElement.GetProperty("output_ids").GetRawText(), db.RootElement.GetProperty("output_ids").GetRawText());
        Assert.Equal(6, da.RootElement.GetProperty("output_ids")[0].GetArrayLength());
    }

    [SharedFact]
    public void InfoPrintsTheLayerMapAndKvBytes()
    {
        var (code, stdout, _) = Run("info", "--model", SharedData.Path("golden", "lckv-sandwich-top-w2"), "--json");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(stdout);
        Assert.Equal(3, doc.RootElement.GetProperty("kv_layers").GetInt32()); // 0_4_4_4_4_5: layers 0, 4, 5
        Assert.Equal(2 * 3 * 2 * 16 * 4, doc.RootElement.GetProperty("kv_bytes_per_token").GetInt64());
    }

    [Fact]
    public void InfoGivesKvBytesPerTokenAndPerSequenceUnderTheDtypeAndPolicy()
    {
        JsonElement Info(params string[] extra)
        {
            var (code, stdout, stderr) = Run(["info", "--preset", "small", "--json", .. extra]);
            Assert.True(code == 0, stderr);
            return JsonDocument.Parse(stdout).RootElement.Clone();
        }
        var full = Info();
        int layers = full.GetProperty("kv_layers").GetInt32(), heads = full.GetProperty("kv_heads").GetInt32(), d = full.GetProperty("head_dim").GetInt32();
        int context = full.GetProperty("context").GetInt32();
        Assert.Equal(2L * layers * heads * d * 4, full.GetProperty("kv_bytes_per_token").GetInt64());
        Assert.Equal(2L * layers * heads * d * 4 * context, full.GetProperty("kv_bytes_per_sequence").GetInt64()); // whole blocks of 16
        // int8: D values and an f32 scale per row; q4: D/2 bytes and an f32 scale per 32 values
        Assert.Equal(2L * layers * heads * (d + 4), Info("--kv-dtype", "int8").GetProperty("kv_bytes_per_token").GetInt64());
        Assert.Equal(2L * layers * heads * (d / 2 + 4 * (d / 32)), Info("--kv-dtype", "q4").GetProperty("kv_bytes_per_token").GetInt64());
        // StreamingLLM 4 + 60 decoding a token per step: 65 entries, 5 blocks of 16 per store, whatever the context
        var streaming = Info("--kv-dtype", "int8", "--evict", "streaming", "--recent", "60", "--block-size", "16");
        Assert.Equal(5L * layers * 2 * 16 * heads * (d + 4), streaming.GetProperty("kv_bytes_per_sequence").GetInt64());
        Assert.Equal("streaming, sinks 4 + recent 60", streaming.GetProperty("kv_policy").GetString());
        AssertOneLineError(Run("info", "--preset", "small", "--heavy", "3"), "--heavy needs --evict h2o");
    }

    [SharedFact]
    public void TextPromptsStreamTheTextOfTheGeneratedIds()
    {
        string model = SharedData.Path("golden", "llama-standard"), tok = SharedData.Path("tokenizers", "en4k.model");
        string[] common = ["generate", "--model", model, "--tokenizer", tok, "--prompt", "First Citizen: héllo 世界", "--max-tokens", "24",
            "--temperature", "0.9", "--seed", "7", "--ignore-eos"];
        var json = Run([.. common, "--json"]);
        Assert.True(json.Code == 0, json.Err);
        using var doc = JsonDocument.Parse(json.Out);
        var ids = doc.RootElement.GetProperty("output_ids")[0].EnumerateArray().Select(x => x.GetInt32()).ToArray();
        string text = doc.RootElement.GetProperty("text")[0].GetString()!;
        var tokenizer = TextTokenizer.Load(tok);
        Assert.Equal(24, ids.Length);
        Assert.Equal(tokenizer.Decode(ids), text);
        var streamed = Run(common);
        Assert.True(streamed.Code == 0, streamed.Err);
        Assert.Equal(text + Environment.NewLine, streamed.Out); // the same sample (same seed), streamed piece by piece
        var prompt = doc.RootElement.GetProperty("prompt_ids")[0].EnumerateArray().Select(x => x.GetInt32()).ToArray();
        Assert.Equal(tokenizer.BosId, prompt[0]);
        Assert.Equal(tokenizer.Encode("First Citizen: héllo 世界", addBos: true), prompt);
    }
}
