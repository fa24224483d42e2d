using System.Text;
using System.Text.Json;
using Lckv.Formats;
using Xunit.Abstractions;

namespace Lckv.Tests.Formats;

public sealed class TextTokenizerTests(ITestOutputHelper output)
{
    private static string ModelPath => SharedData.Path("tokenizers", "en4k.model");

    private static IEnumerable<(int Line, string Text, int[] Ids, string Decoded)> GoldenLines()
    {
        int n = 0;
        foreach (var line in File.ReadLines(SharedData.Path("tokenizers", "en4k.golden.jsonl")))
        {
            n++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            using var doc = JsonDocument.Parse(line);
            var r = doc.RootElement;
            yield return (n, r.GetProperty("text").GetString()!,
                r.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
                r.GetProperty("decoded").GetString()!);
        }
    }

    [SharedFact]
    public void MatchesSentencePieceGoldenEncodings()
    {
        var tok = TextTokenizer.Load(ModelPath);
        var failures = new List<string>();
        int count = 0;
        foreach (var (line, text, ids, decoded) in GoldenLines())
        {
            count++;
            var got = tok.Encode(text, addBos: false);
            if (!got.SequenceEqual(ids))
                failures.Add($"line {line}: encode {JsonSerializer.Serialize(text)}\n  want [{string.Join(", ", ids)}]\n  got  [{string.Join(", ", got)}]");
            var dec = tok.Decode(ids);
            if (dec != decoded)
                failures.Add($"line {line}: decode want {JsonSerializer.Serialize(decoded)} got {JsonSerializer.Serialize(dec)}");
            var streamed = Stream(tok, ids, out var pieces);
            if (streamed != decoded)
                failures.Add($"line {line}: streaming decode want {JsonSerializer.Serialize(decoded)} got {JsonSerializer.Serialize(streamed)}");
            if (pieces.Any(p => p.Contains('\uFFFD')))
                failures.Add($"line {line}: a streamed piece contains U+FFFD");
        }
        output.WriteLine($"{count} golden lines, {failures.Count} mismatches");
        foreach (var f in failures) output.WriteLine(f);
        Assert.True(count >= 10, $"only {count} golden lines read");
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [SharedFact]
    public void SpecialTokensComeFromTheModel()
    {
        var tok = TextTokenizer.Load(ModelPath);
        // tokenizers/README.md: unk 0, bos 1, eos 2
        Assert.Equal(4096, tok.VocabSize);
        Assert.Equal(1, tok.BosId);
        Assert.Equal([2], tok.EosIds);
        Assert.Equal(0, tok.UnkId);
        Assert.Equal("sentencepiece", tok.Kind);
        Assert.True(tok.IsControl(1));
        Assert.True(tok.IsControl(2));
        Assert.False(tok.IsControl(3));
        var withBos = tok.Encode("Hello", addBos: true);
        Assert.Equal(tok.BosId, withBos[0]);
        Assert.Equal(tok.Encode("Hello", addBos: false), withBos[1..]);
        Assert.Equal("Hello", tok.Decode(withBos));
        Assert.Equal("Hello", tok.Decode([.. withBos, 2]));
    }

    [SharedFact]
    public void SideFilesOverrideSpecialTokens()
    {
        using var tmp = new TempDir();
        File.Copy(ModelPath, tmp.File("tokenizer.model"));
        tmp.WriteText("tokenizer_config.json", """
            {"add_bos_token": false, "bos_token": {"content": "</s>", "lstrip": false}, "eos_token": "<s>", "unk_token": "<unk>"}
            """);
        tmp.WriteText("generation_config.json", """{"eos_token_id": [2, 5]}""");
        var tok = TextTokenizer.Load(tmp.Root);
        Assert.Equal(2, tok.BosId);
        Assert.Equal([2, 5, 1], tok.EosIds);
        Assert.Equal(0, tok.UnkId);
        Assert.False(tok.AddBosByDefault);

        tmp.WriteText("tokenizer_config.json", """{"eos_token": "<|nope|>"}""");
        var e = Assert.Throws<LckvException>(() => TextTokenizer.Load(tmp.Root));
        Assert.Contains("tokenizer_config.json: eos_token '<|nope|>' is not a token of tokenizer.model", e.Message);
        tmp.WriteText("tokenizer_config.json", "{}");
        tmp.WriteText("generation_config.json", """{"eos_token_id": 99999}""");
        e = Assert.Throws<LckvException>(() => TextTokenizer.Load(tmp.Root));
        Assert.Contains("eos_token_id 99999 is outside the vocabulary", e.Message);
    }

    private static string Stream(TextTokenizer tok, int[] ids, out List<string> pieces)
    {
        var d = tok.CreateStreamingDecoder();
        pieces = [];
        var sb = new StringBuilder();
        foreach (int id in ids)
        {
            string s = d.Push(id);
            pieces.Add(s);
            sb.Append(s);
        }
        string rest = d.Flush();
        pieces.Add(rest);
        sb.Append(rest);
        return sb.ToString();
    }

    [SharedTheory]
    [InlineData("héllo 世界 🙂")]
    [InlineData("🙂🙂 x 🙂")]
    [InlineData("  two leading spaces")]
    [InlineData("\n starts with a newline")]
    [InlineData("漢字かな交じり文 and ÆØÅ")]
    public void StreamingDecoderEmitsWholeCharacters(string text)
    {
        var tok = TextTokenizer.Load(ModelPath);
        foreach (bool bos in new[] { false, true })
        {
            var ids = tok.Encode(text, bos);
            // the test is only meaningful if byte fallback splits characters over tokens
            string streamed = Stream(tok, ids, out var pieces);
            output.WriteLine(string.Join(" | ", pieces.Select(p => JsonSerializer.Serialize(p))));
            Assert.Equal(tok.Decode(ids), streamed);
            Assert.Equal(text, streamed);
            Assert.DoesNotContain(pieces, p => p.Contains('\uFFFD'));
        }
        Assert.Contains(tok.Encode("世", false), id => tok.TokenBytes(id, false).Length == 1 && tok.TokenBytes(id, false)[0] >= 0x80);
    }

    [SharedFact]
    public void StreamingDecoderHoldsIncompleteBytesUntilFlush()
    {
        var tok = TextTokenizer.Load(ModelPath);
        var ids = tok.Encode("世", false).Where(id => tok.TokenBytes(id, false) is [>= 0x80]).ToArray();
        Assert.Equal(3, ids.Length);
        var d = tok.CreateStreamingDecoder();
        Assert.Equal("", d.Push(ids[0]));
        Assert.Equal("", d.Push(ids[1]));
        Assert.Equal("\uFFFD", d.Flush());
        Assert.Equal("", d.Push(ids[0]));
        Assert.Equal("", d.Push(ids[1]));
        Assert.Equal("世", d.Push(ids[2]));
        Assert.Equal("", d.Flush());
    }

    [SharedFact]
    public void TokenBytesDropsOnlyTheFirstSpace()
    {
        var tok = TextTokenizer.Load(ModelPath);
        int space = tok.TokenId("\u2581")!.Value;
        Assert.Equal([(byte)' '], tok.TokenBytes(space, first: false));
        Assert.Empty(tok.TokenBytes(space, first: true));
        Assert.Empty(tok.TokenBytes(tok.BosId!.Value, first: false));
        Assert.Equal([(byte)0x0A], tok.TokenBytes(tok.TokenId("<0x0A>")!.Value, first: true));
        Assert.Empty(tok.TokenBytes(tok.VocabSize, false)); // a padded model vocabulary's id: prints nothing
        Assert.Throws<LckvException>(() => tok.TokenBytes(-1, false));
    }

    [Fact]
    public void LoadFailsClearly()
    {
        using var tmp = new TempDir();
        Assert.Contains("no tokenizer.model or tokenizer.json", Assert.Throws<LckvException>(() => TextTokenizer.Load(tmp.Root)).Message);
        tmp.Write("tokenizer.model", [0xFF, 0xFF, 0xFF]);
        var e = Assert.Throws<LckvException>(() => TextTokenizer.Load(tmp.Root));
        output.WriteLine(e.Message);
        Assert.Contains("tokenizer.model", e.Message);
    }

    // ---------------- tokenizer.json (byte-level BPE) ----------------

    private static string ByteLevelJson(string extraModel = "", string preTokenizer = """{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}""")
    {
        // the 256 byte symbols of GPT-2's byte-to-unicode map, then a few merges
        var symbols = new List<string>();
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            symbols.Add(((char)(printable ? b : 256 + next++)).ToString());
        }
        var vocab = new Dictionary<string, int>();
        foreach (var s in symbols) vocab[s] = vocab.Count;
        string[] merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"];
        foreach (var m in merges) vocab[m.Replace(" ", "")] = vocab.Count;
        var json = new
        {
            version = "1.0",
            added_tokens = new object[]
            {
                new { id = vocab.Count, content = "<|end|>", special = true },
                new { id = vocab.Count + 1, content = "<|begin|>", special = true },
            },
            normalizer = (object?)null,
            pre_tokenizer = JsonDocument.Parse(preTokenizer).RootElement,
            decoder = new { type = "ByteLevel" },
            model = JsonDocument.Parse($$"""{"type": "BPE", "vocab": {{JsonSerializer.Serialize(vocab)}}, "merges": {{JsonSerializer.Serialize(merges)}} {{extraModel}}}""").RootElement,
        };
        return JsonSerializer.Serialize(json);
    }

    [Fact]
    public void LoadsByteLevelBpeTokenizerJson()
    {
        using var tmp = new TempDir();
        tmp.WriteText("tokenizer.json", ByteLevelJson());
        tmp.WriteText("tokenizer_config.json", """{"bos_token": "<|begin|>", "eos_token": "<|end|>"}""");
        var tok = TextTokenizer.Load(tmp.Root);
        Assert.Equal("bpe-bytelevel", tok.Kind);
        Assert.Equal(256 + 9 + 2, tok.VocabSize);
        Assert.Equal(tok.TokenId("<|begin|>"), tok.BosId);
        Assert.Equal([tok.TokenId("<|end|>")!.Value], tok.EosIds);

        var ids = tok.Encode("hello world", addBos: false);
        Assert.Equal([tok.TokenId("hello")!.Value, tok.TokenId("Ġworld")!.Value], ids);
        foreach (string text in new[] { "hello world", "héllo 世界 🙂\n\tend", "" })
        {
            var e = tok.Encode(text, addBos: true);
            Assert.Equal(tok.BosId, e[0]);
            Assert.Equal(text, tok.Decode(e));
            Assert.Equal(text, Stream(tok, e, out var pieces));
            Assert.DoesNotContain(pieces, p => p.Contains('\uFFFD'));
        }
        Assert.Equal("hello", tok.Decode([.. tok.Encode("hello", false), tok.EosIds[0]]));
    }

    [Fact]
    public void ByteLevelWithSplitPatternLoads()
    {
        using var tmp = new TempDir();
        tmp.WriteText("tokenizer.json", ByteLevelJson(preTokenizer: """
            {"type": "Sequence", "pretokenizers": [
              {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
              {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}
            """));
        var tok = TextTokenizer.Load(tmp.File("tokenizer.json"));
        Assert.Equal("hello world 12345", tok.Decode(tok.Encode("hello world 12345", false)));
        Assert.Null(tok.BosId);
        Assert.Throws<LckvException>(() => tok.Encode("x", addBos: true));
    }

    [Theory]
    [InlineData(", \"byte_fallback\": true", null, "byte_fallback")]
    [InlineData("", """{"type": "Whitespace"}""", "pre-tokenizer 'Whitespace' is not supported")]
    [InlineData("", """{"type": "Metaspace"}""", "pre-tokenizer 'Metaspace' is not supported")]
    public void UnsupportedTokenizerJsonFailsClearly(string extraModel, string? pre, string expected)
    {
        using var tmp = new TempDir();
        tmp.WriteText("tokenizer.json", pre is null ? ByteLevelJson(extraModel) : ByteLevelJson(extraModel, pre));
        var e = Assert.Throws<LckvException>(() => TextTokenizer.Load(tmp.Root));
        output.WriteLine(e.Message);
        Assert.Contains("tokenizer.json", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void WordPieceTokenizerJsonFailsClearly()
    {
        using var tmp = new TempDir();
        tmp.WriteText("tokenizer.json", """{"model": {"type": "WordPiece", "vocab": {}}}""");
        var e = Assert.Throws<LckvException>(() => TextTokenizer.Load(tmp.Root));
        Assert.Contains("model type 'WordPiece' is not supported", e.Message);
    }
}
