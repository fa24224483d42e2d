using System.Text;
using Lckv.Formats;
using Lckv.Model;

namespace Lckv.Tests.Formats;

/// <summary>One focused case for each bug <see cref="FuzzTests"/> found: each used to escape as another exception type.</summary>
public sealed class FuzzRegressionTests
{
    [Fact]
    public void SentencePieceLengthPastTheIntRangeIsAFormatError()
    {
        // field 1 (a piece), wire type 2, length 2^32 as a varint: used to overflow a checked int cast
        byte[] model = [0x0A, 0x80, 0x80, 0x80, 0x80, 0x10, 0x00];
        using var tmp = new TempDir();
        var e = Assert.Throws<LckvException>(() => TextTokenizer.Load(tmp.Write("tokenizer.model", model)));
        Assert.Contains("not a SentencePiece model", e.Message);
        // the same length inside a piece (its text field)
        byte[] inner = [0x0A, 0x06, 0x0A, 0x80, 0x80, 0x80, 0x80, 0x10];
        Assert.Contains("not a SentencePiece model", Assert.Throws<LckvException>(() => TextTokenizer.Load(tmp.Write("tokenizer.model", inner))).Message);
    }

    [Fact]
    public void SafeTensorsHeaderWithInvalidUtf8IsAnLckvException()
    {
        using var tmp = new TempDir();
        var bytes = TempDir.RawSafeTensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
        bytes[8 + 2] = 0xDD; // inside the tensor name: JsonDocument accepts it, reading the name threw InvalidOperationException
        var e = Assert.Throws<LckvException>(() => SafeTensorsFile.Open(tmp.Write("model.safetensors", bytes)));
        Assert.Contains("UTF-8", e.Message);
    }

    private static string Json(string vocab, string merges, string added)
        => "{\"added_tokens\": " + added + ", \"normalizer\": null, "
            + "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}, "
            + "\"model\": {\"type\": \"BPE\", \"vocab\": " + vocab + ", \"merges\": " + merges + "}}";

    [Theory]
    [InlineData("""{"a": 0, "b": 2147483647}""", "[]", "[]", "vocab entry 'b'")] // a table of 2^31 ids: IndexOutOfRange
    [InlineData("""{"a": 0, "b": 1}""", "[]", """[{"id": 2147483647, "content": "x"}]""", "added_tokens")]
    [InlineData("""{"a": 0, "b": 1}""", "[[1, 2]]", "[]", "merges entry")] // GetString on numbers: InvalidOperationException
    [InlineData("""{"a": 0, "b": 1}""", "[]", "[7]", "added_tokens entry")] // TryGetProperty on a number
    public void TokenizerJsonWithAbsurdIdsOrWrongTypesIsAnLckvException(string vocab, string merges, string added, string expected)
    {
        using var tmp = new TempDir();
        var e = Assert.Throws<LckvException>(() => TextTokenizer.Load(tmp.WriteText("tokenizer.json", Json(vocab, merges, added))));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void HugeLayerCountIsAConfigError()
    {
        // used to reach LayerMap, which allocated per-layer tables of 2^31 entries (OutOfMemoryException)
        var e = Assert.Throws<LckvException>(() => ModelConfig.Parse("""
            {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2147483647,
             "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 32, "max_position_embeddings": 16}
            """, "config.json"));
        Assert.Contains("num_hidden_layers", e.Message);
    }

    [SharedFact]
    public void HugeContextLengthIsAnLckvException()
    {
        // the RoPE table of 2^31 positions x head_dim used to throw OverflowException
        using var dir = new TempDir();
        File.Copy(SharedData.Path("golden", "llama-standard", "model.safetensors"), dir.File("model.safetensors"));
        var config = File.ReadAllText(SharedData.Path("golden", "llama-standard", "config.json"))
            .Replace("\"max_position_embeddings\": 256", "\"max_position_embeddings\": 2147483647");
        dir.WriteText("config.json", config);
        var e = Assert.Throws<LckvException>(() => LlamaModel.Load(dir.Root));
        Assert.Contains("max_position_embeddings", e.Message);
        Assert.Contains("context", Assert.Throws<LckvException>(() => LlamaModel.Load(SharedData.Path("golden", "llama-standard"), int.MaxValue)).Message);
    }

    [Fact]
    public void JsonErrorsQuoteAtMostEightyCharactersOfTheFile()
    {
        // a bad literal made System.Text.Json quote the whole rest of the file in its message
        string json = "{\"a\": trqe, \"b\": \"" + new string('x', 5000) + "\"}";
        var e = Assert.Throws<LckvException>(() => ModelConfig.Parse(json, "config.json"));
        Assert.DoesNotContain(new string('x', 81), e.Message);
        Assert.True(e.Message.Length < 300, e.Message);
        Assert.Contains("config.json: malformed JSON", e.Message);
    }
}
