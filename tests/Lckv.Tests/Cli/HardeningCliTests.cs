using System.Text;
using Lckv.Formats;
using Lckv.Tests.Formats;
using static Lckv.Tests.Cli.CliTests;

namespace Lckv.Tests.Cli;

/// <summary>Bad input the CLI-hardening issue listed: each is one clear line in the user's words, before any work.</summary>
public sealed class HardeningCliTests
{
    private static string Golden => SharedData.Path("golden", "llama-standard");

    [Fact]
    public void ThreadCountIsBoundedByTheCores()
    {
        // 30000 threads used to abort the runtime while the pool grew
        var r = Run("generate", "--preset", "small", "--prompt-ids", "1", "-n", "4", "-t", "30000");
        AssertOneLineError(r, "--threads must be from 1 to");
        Assert.Contains("got 30000", r.Err);
        AssertOneLineError(Run("bench", "throughput", "--threads", "30000"), "--threads");
        AssertOneLineError(Run("train", "--data", "/nonexistent", "--out", "/nonexistent/out", "--threads", "30000"), "--threads");
    }

    [Fact]
    public void EmptyStopStringIsAnError()
    {
        AssertOneLineError(Run("generate", "--preset", "small", "--prompt-ids", "1", "-n", "2", "--stop", ""), "--stop is empty");
    }

    [Fact]
    public void UnparsableValuesAreInTheUsersWords()
    {
        var seed = Run("generate", "--preset", "small", "--prompt-ids", "1", "--seed", "-1");
        AssertOneLineError(seed, "--seed must be a non-negative integer, got '-1'");
        Assert.DoesNotContain("System.", seed.Err);
        var n = Run("generate", "--preset", "small", "--prompt-ids", "1", "-n", "abc");
        AssertOneLineError(n, "--max-tokens must be an integer, got 'abc'");
        Assert.DoesNotContain("Nullable", n.Err);
        AssertOneLineError(Run("generate", "--preset", "small", "--prompt-ids", "1", "--temperature", "hot"), "--temperature must be a number, got 'hot'");
    }

    [SharedFact]
    public void TensorNameWithEscapeSequencesIsPrintedEscaped()
    {
        using var dir = new TempDir();
        File.Copy(Path.Combine(Golden, "config.json"), dir.File("config.json"));
        using (var src = TensorSet.Open(Golden))
        {
            // a stray tensor whose name drives the terminal, and an unknown dtype so the name is printed
            var tensors = src.Names.Select(n => new TensorData(n, src.Info(n).DType, src.Info(n).Shape, src.Bytes(n).ToArray())).ToList();
            SafeTensorsWriter.Write(dir.File("model.safetensors"), tensors);
        }
        var bytes = File.ReadAllBytes(dir.File("model.safetensors"));
        string header = Encoding.UTF8.GetString(bytes, 8, (int)BitConverter.ToUInt64(bytes, 0));
        string bad = header.Replace("\"model.norm.weight\":{\"dtype\":\"F32\"", "\"model.norm.weight\\u001b[2J\\u001b]0;pwned\\u0007\":{\"dtype\":\"Q9\"");
        Assert.NotEqual(header, bad);
        var h = Encoding.UTF8.GetBytes(bad);
        var file = new byte[8 + h.Length + bytes.Length - 8 - header.Length];
        BitConverter.TryWriteBytes(file.AsSpan(0, 8), (ulong)h.Length);
        h.CopyTo(file, 8);
        bytes.AsSpan(8 + header.Length).CopyTo(file.AsSpan(8 + h.Length));
        File.WriteAllBytes(dir.File("model.safetensors"), file);
        var r = Run("generate", "--model", dir.Root, "--prompt-ids", "1,2,3");
        AssertOneLineError(r, "model.norm.weight\\x1b[2J\\x1b]0;pwned\\x07");
        Assert.DoesNotContain('\x1b', r.Err);
        Assert.DoesNotContain('\x07', r.Err);
    }

    [Fact]
    public void HeaderThatIsNotJsonQuotesAtMostEightyCharacters()
    {
        using var dir = new TempDir();
        dir.WriteText("config.json", """
            {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "vocab_size": 32, "max_position_embeddings": 16}
            """);
        // a header of prose padded with spaces, the way a writer pads its header to 8 bytes
        string header = "trqe this is not json at all " + new string('z', 300) + new string(' ', 4000);
        dir.Write("model.safetensors", TempDir.RawSafeTensors(header, 64));
        var r = Run("generate", "--model", dir.Root, "--prompt-ids", "1");
        AssertOneLineError(r, "model.safetensors");
        Assert.DoesNotContain(new string('z', 81), r.Err);
        Assert.DoesNotContain(new string(' ', 81), r.Err);
        Assert.True(r.Err.Length < 400, r.Err);
    }

    [SharedFact]
    public void FileAndFolderMixUpsSayWhatIsThere()
    {
        AssertOneLineError(Run("generate", "--model", Path.Combine(Golden, "config.json"), "--prompt-ids", "1"),
            "is a file but not a GGUF file; expected a checkpoint folder or a .gguf file");
        using var dir = new TempDir();
        AssertOneLineError(Run("perplexity", "--preset", "small", "--file", dir.Root), "is a folder, expected a text file");
        AssertOneLineError(Run("perplexity", "--preset", "small", "--ids-file", dir.Root), "is a folder, expected a file of token ids");
    }

    [SharedFact]
    public void BenchValidatesSizesBeforeAnyWork()
    {
        // these used to load the model and measure the roofline (seconds) before failing
        var zero = Run("bench", "--preset", "small", "-p", "0", "-n", "0");
        AssertOneLineError(zero, "nothing to run");
        Assert.DoesNotContain("roofline", zero.Err);
        var deep = Run("bench", "--model", Golden, "-p", "8", "-n", "8", "-d", "0,300", "-b", "1");
        AssertOneLineError(deep, "depth 300 + 8 tokens exceed the context length 256");
        Assert.DoesNotContain("roofline", deep.Err);
    }

    [SharedFact]
    public void InfoOnAFolderWithOnlyAConfigReportsTheConfig()
    {
        using var dir = new TempDir();
        File.Copy(Path.Combine(Golden, "config.json"), dir.File("config.json"));
        var r = Run("info", "--model", dir.Root);
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("no weights found", r.Err);
        Assert.Contains("KV bytes/token", r.Out);
        Assert.Contains("layer map", r.Out);
        var json = Run("info", "--model", dir.Root, "--json");
        Assert.True(json.Code == 0, json.Err);
        using var doc = System.Text.Json.JsonDocument.Parse(json.Out);
        Assert.Equal(2 * 4 * 2 * 16 * 4, doc.RootElement.GetProperty("kv_bytes_per_token").GetInt64());
    }
}

public sealed class TokenizerFitCliTests
{
    /// <summary>A byte-level BPE tokenizer.json whose last added token has the given id.</summary>
    private static string TokenizerJson(int lastId)
    {
        var vocab = new Dictionary<string, int>();
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            vocab[((char)(printable ? b : 256 + next++)).ToString()] = b;
        }
        return System.Text.Json.JsonSerializer.Serialize(new
        {
            added_tokens = new object[] { new { id = 256, content = "<|begin|>", special = true }, new { id = lastId, content = "<|end|>", special = true } },
            normalizer = (object?)null,
            pre_tokenizer = new { type = "ByteLevel", add_prefix_space = false, use_regex = true },
            model = new { type = "BPE", vocab, merges = Array.Empty<string>() },
        });
    }

    [Fact]
    public void TokenizerLargerThanTheModelsVocabularyIsRefusedAtLoad()
    {
        using var dir = new TempDir();
        string tok = dir.WriteText("tokenizer.json", TokenizerJson(4999)); // 5000 tokens; the small preset has 4096
        var r = Run("generate", "--preset", "small", "--tokenizer", tok, "--prompt", "hi", "-n", "2");
        AssertOneLineError(r, "the tokenizer has 5000 tokens, more than the 4096 of the model's vocabulary");
        AssertOneLineError(Run("perplexity", "--preset", "small", "--tokenizer", tok, "--file", tok), "more than the 4096");
    }

    [SharedFact]
    public void ATokenizerSmallerThanTheModelsVocabularyGenerates()
    {
        // 258 tokens for a model of 4096: the model samples ids the tokenizer lacks, which print nothing
        using var dir = new TempDir();
        string tok = dir.WriteText("tokenizer.json", TokenizerJson(257));
        var r = Run("generate", "--model", SharedData.Path("golden", "llama-standard"), "--tokenizer", tok, "--prompt", "hi", "-n", "8",
            "--temperature", "0", "--no-bos", "--ignore-eos");
        Assert.True(r.Code == 0, r.Err);
    }

    [SharedFact]
    public void SpecialIdsThatDisagreeWithTheConfigWarn()
    {
        using var dir = new TempDir();
        string tok = dir.WriteText("tokenizer.json", TokenizerJson(4095));
        dir.WriteText("tokenizer_config.json", """{"bos_token": "<|begin|>", "eos_token": "<|end|>"}""");
        var r = Run("generate", "--model", SharedData.Path("golden", "llama-standard"), "--tokenizer", tok, "--prompt", "hi", "-n", "2", "--temperature", "0");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("warning: the tokenizer's BOS id 256 differs from the model's bos_token_id 1", r.Err);
        Assert.Contains("warning: the tokenizer's EOS id(s) 4095 are not among the model's eos_token_id(s) 2", r.Err);
    }
}
