using System.Text;
using System.Text.Json;
using Lckv.Formats;
using Lckv.Generation;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Tests.Cli;
using Lckv.Tests.Model;
using Xunit.Abstractions;

namespace Lckv.Tests.Formats;

/// <summary>
/// GGUF: the real stories260K model reproduced exactly (greedy ids and story text), its tokenizer from the metadata,
/// the golden fixtures written by the GGUF writer and read back, the byte-level BPE tokenizer on a vocabulary worked
/// by hand, and one clear line for every kind of bad file.
/// </summary>
public sealed class GgufTests(ITestOutputHelper output)
{
    private static string Stories => SharedData.Path("models", "stories260K", "stories260Ktok512.gguf");

    private static (int[] Ids, string Text) ExpectedStory()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(SharedData.Path("models", "stories260K", "expected-greedy-200.json")));
        var ids = doc.RootElement.GetProperty("output_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        return (ids, doc.RootElement.GetProperty("text").GetString()!);
    }

    // ---------------- stories260K ----------------

    [SharedFact]
    public void StoriesGreedyMatchesLlama2cByIdsAndByText()
    {
        var (expectedIds, expectedText) = ExpectedStory();
        var (code, stdout, stderr) = CliTests.Run("generate", "--model", Stories, "--context", "512", "--allow-long-context",
            "--prompt-ids", "1", "--max-tokens", "200", "--temperature", "0", "--json");
        output.WriteLine(stderr);
        Assert.Equal(0, code);
        using (var doc = JsonDocument.Parse(stdout))
        {
            var got = doc.RootElement.GetProperty("output_ids")[0].EnumerateArray().Select(e => e.GetInt32()).ToArray();
            Assert.Equal(expectedIds, got);
        }
        Assert.StartsWith("warning: ", stderr.Split('\n')[0]);

        // the text prompt: BOS then the story's first four tokens, so 196 more tokens end where the expected text ends
        const string prompt = "Once upon a time";
        (code, stdout, stderr) = CliTests.Run("generate", "--model", Stories, "--context", "512", "--allow-long-context",
            "--prompt", prompt, "--max-tokens", "196", "--temperature", "0");
        output.WriteLine(stdout);
        Assert.Equal(0, code);
        Assert.Equal(expectedText, prompt + stdout);
    }

    [SharedFact]
    public void StoriesConfigAndTokenizerComeFromTheMetadata()
    {
        using var file = GgufFile.Open(Stories);
        Assert.Equal(3u, file.Version);
        Assert.Equal(32, file.Alignment);
        Assert.Equal(19, file.Keys.Count);
        Assert.Equal(48, file.TensorList.Count);
        Assert.Equal([64L, 512], file.Tensor("token_embd.weight").Ne);
        Assert.Equal([512L, 64], file.Tensors["token_embd.weight"].Shape); // row-major: [vocab, hidden]
        Assert.Equal([32L, 64], file.Tensors["blk.0.attn_k.weight"].Shape);

        var c = GgufLlama.Config(file);
        Assert.Equal((64, 5, 8, 4, 8, 172, 512, 128), (c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads,
            c.HeadDim, c.IntermediateSize, c.VocabSize, c.MaxPositionEmbeddings));
        Assert.Equal(1e-5f, c.RmsNormEps, 1e-12f);
        Assert.Equal(10000.0, c.RopeTheta);
        Assert.Equal(RopeStyle.AdjacentPairs, c.RopeStyle);
        Assert.False(c.TieWordEmbeddings); // output.weight is stored
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2], c.EosTokenIds);

        var tok = TextTokenizer.FromGguf(file);
        Assert.Equal("sentencepiece", tok.Kind);
        Assert.Equal(512, tok.VocabSize);
        Assert.Equal(1, tok.BosId);
        Assert.Equal(0, tok.UnkId);
        Assert.Equal([2], tok.EosIds);
        Assert.True(tok.AddBosByDefault);
        var (ids, text) = ExpectedStory();
        Assert.Equal([1, .. ids[..4]], tok.Encode("Once upon a time", addBos: true));
        Assert.Equal(text.TrimEnd('\n'), tok.Decode(ids));
        Assert.Equal("\n", tok.Decode([13])); // a byte-fallback token
        Assert.Equal(TextTokenizer.Load(Stories).Encode(text, false), tok.Encode(text, false)); // --tokenizer x.gguf reads the same
    }

    // ---------------- the writer, against the golden fixtures ----------------

    public static TheoryData<string, DType> GoldenCases => new()
    {
        { "llama-standard", DType.F32 }, { "llama-standard", DType.F16 }, { "llama-standard", DType.BF16 },
        { "llama-bf16-tied", DType.F32 }, { "llama-bf16-tied", DType.F16 }, { "llama-bf16-tied", DType.BF16 },
    };

    /// <summary>
    /// Written to GGUF (Q/K rows reordered, adjacent-pair RoPE when read back), each golden model gives, to 1e-4, the
    /// logits of the same weights in Hugging Face layout: the reference is the checkpoint with its weights rounded to
    /// the GGUF type and written as safetensors. Against the golden logits (computed from f32 weights) the tolerance
    /// comes from the type: rounding to nearest moves each weight by at most u of itself, u = 2^-11 for F16 (10 stored
    /// fraction bits) and 2^-8 for BF16 (7); to first order a logit moves by u times a sum of the magnitudes of the
    /// terms that make it, so the test allows 4u times the largest |logit| (plus the f32 1e-4). F32 is exact: 1e-4.
    /// </summary>
    [SharedTheory]
    [MemberData(nameof(GoldenCases))]
    public void GoldenModelsWrittenToGgufGiveTheGoldenLogits(string name, DType dtype)
    {
        using var dir = new TempDir();
        string gguf = dir.File("model.gguf");
        var r = GgufExport.Write(SharedData.Path("golden", name), gguf, new GgufExportOptions { Weights = dtype });
        Assert.Equal(dtype == DType.F32 ? 1 : 2, r.TensorsByType.Count);

        using var f = GoldenTests.Open(name);
        var ids = f.Rows("input_ids");
        var golden = f.Read<float>("logits");
        using var model = LlamaModel.Load(gguf);
        Assert.Equal(RopeStyle.AdjacentPairs, model.Config.RopeStyle);
        Assert.Equal(f.Model.Config.TieWordEmbeddings, model.Config.TieWordEmbeddings);
        var logits = GoldenTests.WholeSequenceLogits(model, ids, PrefillMode.Plan);
        var sequential = GoldenTests.WholeSequenceLogits(model, ids, PrefillMode.Plan, tokenByToken: true);

        // the same weights in Hugging Face layout, rotate-half RoPE
        string rounded = RewrittenGolden(dir, name, "rounded", (n, info, values) =>
        {
            var t = info.Shape.Length == 1 ? DType.F32 : dtype;
            var bytes = new byte[info.ElementCount * DTypes.SizeOf(t)];
            GgufWriter.EncodeFloat(values, t, bytes);
            return new TensorData(n, t, info.Shape, bytes);
        });
        using var reference = LlamaModel.Load(rounded);
        var expected = GoldenTests.WholeSequenceLogits(reference, ids, PrefillMode.Plan);

        double u = dtype switch { DType.F16 => Math.Pow(2, -11), DType.BF16 => Math.Pow(2, -8), _ => 0 };
        double maxLogit = golden.Max(x => Math.Abs(x));
        // bf16 weights are exact in BF16, and in F16 within its normal range: that fixture keeps the f32 tolerance
        double tol = name == "llama-bf16-tied" ? 1e-4 : 1e-4 + 4 * u * maxLogit;
        double vsRounded = GoldenTests.MaxAbsDiff(logits, expected), vsGolden = GoldenTests.MaxAbsDiff(logits, golden), seq = GoldenTests.MaxAbsDiff(sequential, logits);
        output.WriteLine($"{name} {DTypes.Name(dtype)}: vs the same weights in HF layout {vsRounded:E3}, token by token {seq:E3}, " +
                         $"vs golden {vsGolden:E3} (tolerance {tol:E3}: u {u:E3}, max |logit| {maxLogit:F3})");
        Assert.True(vsRounded <= 1e-4, $"vs the same weights: {vsRounded}");
        Assert.True(seq <= 1e-4, $"token by token: {seq}");
        Assert.True(vsGolden <= tol, $"vs golden: {vsGolden} > {tol}");
    }

    public static TheoryData<string, DType> QuantizedCases => new()
    {
        { "llama-standard", DType.Q8_0 }, { "llama-standard", DType.Q4_0 },
        { "llama-bf16-tied", DType.Q8_0 }, { "llama-bf16-tied", DType.Q4_0 },
    };

    /// <summary>
    /// Written to GGUF as Q8_0 or Q4_0, each golden model gives, to 1e-4, the logits of a forward over the dequantized
    /// weights in Hugging Face layout: every matrix quantized row by row as llama.cpp does, widened back to f32 and
    /// written as f32 safetensors (the Q/K reordering moves whole rows, so it commutes with the row-wise quantization).
    /// The quantized model is also shown to differ from the f32 golden logits, so the comparison sees the quantization.
    /// </summary>
    [SharedTheory]
    [MemberData(nameof(QuantizedCases))]
    public void GoldenModelsWrittenAsQuantizedGgufEqualAForwardOverTheDequantizedWeights(string name, DType dtype)
    {
        using var dir = new TempDir();
        string gguf = dir.File("model.gguf");
        var r = GgufExport.Write(SharedData.Path("golden", name), gguf, new GgufExportOptions { Weights = dtype });
        Assert.True(r.TensorsByType.ContainsKey(dtype));

        using var f = GoldenTests.Open(name);
        var ids = f.Rows("input_ids");
        var golden = f.Read<float>("logits");
        using var model = LlamaModel.Load(gguf);
        var logits = GoldenTests.WholeSequenceLogits(model, ids, PrefillMode.Plan);
        var sequential = GoldenTests.WholeSequenceLogits(model, ids, PrefillMode.Plan, tokenByToken: true);

        string dequantized = RewrittenGolden(dir, name, "dequantized", (n, info, values) =>
        {
            if (info.Shape.Length == 2)
            {
                int cols = (int)info.Shape[1];
                var block = new byte[DTypes.RowBytes(dtype, cols)];
                for (int row = 0; row < values.Length / cols; row++)
                {
                    Quantize.Row(dtype, values.AsSpan(row * cols, cols), block);
                    Quantize.Dequantize(dtype, block, values.AsSpan(row * cols, cols));
                }
            }
            var bytes = new byte[values.Length * 4];
            GgufWriter.EncodeFloat(values, DType.F32, bytes);
            return new TensorData(n, DType.F32, info.Shape, bytes);
        });
        using var reference = LlamaModel.Load(dequantized);
        var expected = GoldenTests.WholeSequenceLogits(reference, ids, PrefillMode.Plan);

        double vsReference = GoldenTests.MaxAbsDiff(logits, expected), seq = GoldenTests.MaxAbsDiff(sequential, logits), vsGolden = GoldenTests.MaxAbsDiff(logits, golden);
        output.WriteLine($"{name} {DTypes.Name(dtype)}: vs a forward over the dequantized weights {vsReference:E3}, token by token {seq:E3}, vs the f32 golden {vsGolden:E3}");
        Assert.True(vsReference <= 1e-4, $"vs the dequantized weights: {vsReference}");
        Assert.True(seq <= 1e-4, $"token by token: {seq}");
        Assert.True(vsGolden > 1e-3, $"the quantized model should differ from the f32 golden logits, differs by {vsGolden}");
    }

    /// <summary>A golden model's config and its tensors, each passed through convert, as a safetensors checkpoint in
    /// a new folder of dir.</summary>
    private static string RewrittenGolden(TempDir dir, string name, string folder, Func<string, TensorInfo, float[], TensorData> convert)
    {
        string path = dir.File(folder);
        Directory.CreateDirectory(path);
        File.Copy(SharedData.Path("golden", name, "config.json"), Path.Combine(path, "config.json"));
        using var src = TensorSet.Open(SharedData.Path("golden", name));
        SafeTensorsWriter.Write(Path.Combine(path, "model.safetensors"), src.Names.Select(n => convert(n, src.Info(n), src.ReadSingles(n))).ToList());
        return path;
    }

    [SharedFact]
    public void ExportCarriesTheSentencePieceTokenizerAndItMatchesTheGoldenEncodings()
    {
        // llama-standard's vocabulary is en4k's: a checkpoint folder with en4k.model as its tokenizer
        using var dir = new TempDir();
        string ckpt = dir.File("ckpt");
        Directory.CreateDirectory(ckpt);
        foreach (var file in new[] { "config.json", "model.safetensors" })
            File.Copy(SharedData.Path("golden", "llama-standard", file), Path.Combine(ckpt, file));
        File.Copy(SharedData.Path("tokenizers", "en4k.model"), Path.Combine(ckpt, "tokenizer.model"));
        var r = GgufExport.Write(ckpt, dir.File("m.gguf"), new GgufExportOptions { Weights = DType.BF16 });
        Assert.Equal("llama", r.Tokenizer);

        using var gguf = GgufFile.Open(dir.File("m.gguf"));
        var tok = TextTokenizer.FromGguf(gguf);
        Assert.Equal(4096, tok.VocabSize);
        Assert.Equal(1, tok.BosId);
        Assert.Equal(0, tok.UnkId);
        Assert.Equal([2], tok.EosIds);
        int count = 0;
        var failures = new List<string>();
        foreach (var line in File.ReadLines(SharedData.Path("tokenizers", "en4k.golden.jsonl")))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            using var doc = JsonDocument.Parse(line);
            string text = doc.RootElement.GetProperty("text").GetString()!;
            var ids = doc.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            count++;
            if (!tok.Encode(text, false).SequenceEqual(ids)) failures.Add($"encode {JsonSerializer.Serialize(text)}");
            if (tok.Decode(ids) != doc.RootElement.GetProperty("decoded").GetString()) failures.Add($"decode {JsonSerializer.Serialize(text)}");
        }
        Assert.True(count >= 10);
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [Fact]
    public void QkRowsAreReorderedPerHeadAsLlamaCppDoes()
    {
        // 2 heads of d = 4, 1 column: head rows [0 1 2 3] become [0 2 1 3]
        float[] rows = [0, 1, 2, 3, 10, 11, 12, 13];
        Assert.Equal([0f, 2, 1, 3, 10, 12, 11, 13], GgufExport.PermuteForAdjacentPairs(rows, 2, 4, 1));
        // 1 head of d = 6, 2 columns: rows [0..6) become [0 3 1 4 2 5]
        float[] wide = [.. Enumerable.Range(0, 12).Select(i => (float)i)];
        Assert.Equal([0f, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11], GgufExport.PermuteForAdjacentPairs(wide, 1, 6, 2));
    }

    [SharedFact]
    public void KvSharingLayoutsAreRefused()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<LckvException>(() => GgufExport.Write(SharedData.Path("golden", "cla-2"), dir.File("x.gguf"), new GgufExportOptions()));
        Assert.Contains("shares KV", e.Message);
        Assert.False(File.Exists(dir.File("x.gguf")));
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", SharedData.Path("golden", "lckv-all-top"), "-o", dir.File("y.gguf"), "--to", "gguf"), "shares KV");
        Assert.Empty(Directory.GetFileSystemEntries(dir.Root));
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", SharedData.Path("golden", "llama-standard"), "-o", dir.File("z.gguf"), "--to", "gguf", "--weights", "q4_k"), "--weights");
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", SharedData.Path("golden", "llama-standard"), "-o", dir.File("z.gguf"), "--to", "gguf", "--layout", "cla2"), "--layout");
    }

    /// <summary>
    /// A preset's random weights written as a Q8_0 GGUF through the CLI (Q/K rows reordered, adjacent-pair RoPE) give
    /// the logits of the same preset quantized to Q8_0 at load (rotate-half RoPE): the two routes quantize the same f32
    /// rows with the same quantizer.
    /// </summary>
    [Fact]
    public void PresetWrittenAsQuantizedGgufEqualsThePresetQuantizedAtLoad()
    {
        using var dir = new TempDir();
        string path = dir.File("small.gguf");
        var r = CliTests.Run("convert", "--preset", "small", "--weight-seed", "7", "-o", path, "--to", "gguf", "--weights", "q8_0", "--json");
        Assert.True(r.Code == 0, r.Err);
        using var gguf = LlamaModel.Load(path);
        using var preset = LlamaModel.FromPreset("small", seed: 7, weights: DType.Q8_0);
        Assert.Equal(RopeStyle.AdjacentPairs, gguf.Config.RopeStyle);
        Assert.Equal(DType.Q8_0, gguf.Weights.Layers[0].Q.DType);
        int[][] ids = [[1, 17, 300, 4000, 25, 9, 31999 % gguf.Vocab, 2, 500]];
        double d = GoldenTests.MaxAbsDiff(GoldenTests.WholeSequenceLogits(gguf, ids, PrefillMode.Plan), GoldenTests.WholeSequenceLogits(preset, ids, PrefillMode.Plan));
        output.WriteLine($"small Q8_0: GGUF vs quantized at load {d:E3}");
        Assert.True(d <= 1e-4, $"{d}");
        CliTests.AssertOneLineError(CliTests.Run("convert", "--preset", "small", "-i", "x", "-o", dir.File("b.gguf"), "--to", "gguf"), "either");
        CliTests.AssertOneLineError(CliTests.Run("convert", "--preset", "huge", "-o", dir.File("b.gguf"), "--to", "gguf"), "preset");
        CliTests.AssertOneLineError(CliTests.Run("convert", "--preset", "small", "-o", dir.File("c"), "--layout", "cla2"), "--preset");
    }

    [SharedFact]
    public void ALayerMapIsWrittenAsLckvLayerTypesAndReadBack()
    {
        using var dir = new TempDir();
        string plain = dir.File("m.gguf"), shared = dir.File("s.gguf");
        GgufExport.Write(SharedData.Path("golden", "llama-standard"), plain, new GgufExportOptions());
        var r = GgufExport.WithLayerTypes(plain, shared, "0_0_2_2", force: false);
        Assert.Equal(["blk.1.attn_k.weight", "blk.1.attn_v.weight", "blk.3.attn_k.weight", "blk.3.attn_v.weight"], r.Dropped);
        var config = LlamaModel.LoadConfig(shared);
        Assert.Equal((ModelConfig.LckvLlamaType, "0_0_2_2"), (config.ModelType, config.LayerTypes));
        using (var file = GgufFile.Open(plain))
        using (var again = GgufFile.Open(shared))
            Assert.Equal(file.Keys.Append(GgufLlama.LayerTypesKey), again.Keys);

        // a map needing K/V the file lacks, or a malformed one, writes nothing
        Assert.Contains("no attn_k/attn_v for it", Assert.Throws<LckvException>(() => GgufExport.WithLayerTypes(shared, dir.File("t.gguf"), "0_1_2_3", false)).Message);
        Assert.Contains("expected one per layer", Assert.Throws<LckvException>(() => GgufExport.WithLayerTypes(plain, dir.File("t.gguf"), "0_0", false)).Message);
        Assert.Contains("already exists", Assert.Throws<LckvException>(() => GgufExport.WithLayerTypes(plain, shared, "0_0_2_2", false)).Message);
        Assert.Equal(2, Directory.GetFiles(dir.Root).Length);
    }

    [SharedFact]
    public void ConvertToGgufThroughTheCli()
    {
        using var dir = new TempDir();
        string path = dir.File("m.gguf");
        var r = CliTests.Run("convert", "-i", SharedData.Path("golden", "llama-bf16-tied"), "-o", path, "--to", "gguf", "--weights", "bf16", "--json");
        Assert.Equal(0, r.Code);
        using (var doc = JsonDocument.Parse(r.Out))
            Assert.Equal(38, doc.RootElement.GetProperty("tensors").GetInt32()); // tied: no output.weight
        CliTests.AssertOneLineError(CliTests.Run("convert", "-i", SharedData.Path("golden", "llama-bf16-tied"), "-o", path, "--to", "gguf"), "already exists");
        Assert.Equal(0, CliTests.Run("convert", "-i", SharedData.Path("golden", "llama-bf16-tied"), "-o", path, "--to", "gguf", "--force").Code);
        var q = CliTests.Run("convert", "-i", SharedData.Path("golden", "llama-bf16-tied"), "-o", dir.File("q.gguf"), "--to", "gguf", "--weights", "q4_0", "--json");
        Assert.Equal(0, q.Code);
        using (var doc = JsonDocument.Parse(q.Out))
        {
            Assert.Equal("q4_0", doc.RootElement.GetProperty("weights").GetString());
            Assert.Equal(2 * 4 + 1, doc.RootElement.GetProperty("types").GetProperty("f32").GetInt32()); // the norms
        }

        using var f = GoldenTests.Open("llama-bf16-tied");
        var prompts = f.Rows("generate.prompt_ids");
        var expected = f.Rows("generate.output_ids");
        var (code, stdout, _) = CliTests.Run("generate", "--model", path, "--prompt-ids", string.Join(';', prompts.Select(p => string.Join(',', p))),
            "--kv-dtype", "f32", "--temperature", "0", "--max-tokens", expected[0].Length.ToString(), "--ignore-eos", "--json");
        Assert.Equal(0, code);
        using var gen = JsonDocument.Parse(stdout);
        var got = gen.RootElement.GetProperty("output_ids").EnumerateArray().Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        Assert.Equal(expected, got);
    }

    // ---------------- the reader on files made here ----------------

    [Fact]
    public void EveryValueTypeRoundTrips()
    {
        using var dir = new TempDir();
        var meta = new List<KeyValuePair<string, GgufValue>>
        {
            new("u8", new GgufValue(GgufType.UInt8, GgufType.UInt8, (byte)200)),
            new("i8", new GgufValue(GgufType.Int8, GgufType.Int8, (sbyte)-5)),
            new("u16", new GgufValue(GgufType.UInt16, GgufType.UInt16, (ushort)65000)),
            new("i16", new GgufValue(GgufType.Int16, GgufType.Int16, (short)-300)),
            new("u32", GgufValue.UInt32(4000000000)),
            new("i32", GgufValue.Int32(-7)),
            new("f32", GgufValue.Float32(1.5f)),
            new("bool", GgufValue.Bool(true)),
            new("str", GgufValue.String("héllo \u001b[31m")),
            new("u64", GgufValue.UInt64(ulong.MaxValue)),
            new("i64", new GgufValue(GgufType.Int64, GgufType.Int64, -9L)),
            new("f64", GgufValue.Float64(-2.25)),
            new("strs", GgufValue.Array(["a", "", "ü"])),
            new("floats", GgufValue.Array([1f, -2f])),
            new("nested", GgufValue.Array([GgufValue.Array([1, 2]), GgufValue.Array(["x"]), GgufValue.Array(Array.Empty<int>())])),
            new("bools", new GgufValue(GgufType.Array, GgufType.Bool, new[] { true, false })),
            new("u16s", new GgufValue(GgufType.Array, GgufType.UInt16, new ushort[] { 1, 2, 3 })),
        };
        float[] values = [1, 2, 3, 4, 5, 6];
        var tensors = new List<GgufTensorData>
        {
            new("m", DType.F32, [2, 3], dst => GgufWriter.EncodeFloat(values, DType.F32, dst)),
            new("h", DType.F16, [5], dst => GgufWriter.EncodeFloat([0.5f, 1, 2, 3, 4], DType.F16, dst)),
            new("q", DType.Q8_0, [1, 32], dst => dst.Fill(7)),
        };
        GgufWriter.Write(dir.File("t.gguf"), meta, tensors);
        using var f = GgufFile.Open(dir.File("t.gguf"));
        Assert.Equal(meta.Select(kv => kv.Key), f.Keys);
        foreach (var (key, value) in meta)
        {
            Assert.Equal(value.Type, f.Metadata[key].Type);
            Assert.Equal(value.ElementType, f.Metadata[key].ElementType);
            Assert.Equal(value.Describe(10, 100), f.Metadata[key].Describe(10, 100));
        }
        Assert.Equal("\"héllo \\x1b[31m\"", f.Metadata["str"].Describe());
        Assert.True(f.Metadata["u64"].TryGetNumber(out double big) && big > 1e19);
        Assert.False(f.Metadata["u64"].TryGetInteger(out _));
        Assert.Equal([3L, 2], f.Tensor("m").Ne);
        Assert.Equal(values, f.Bytes("m").ToArray().Chunk(4).Select(b => BitConverter.ToSingle(b)).ToArray());
        Assert.Equal(0, (f.Tensors["h"].Offset - f.DataStart) % 32);
        Assert.Equal((DType.Q8_0, 34L), (f.Tensors["q"].DType, f.Tensors["q"].Length));
        Assert.Equal(0, f.DataStart % 32);
    }

    /// <summary>A small valid model in GGUF (random weights) whose metadata a test may change.</summary>
    private static (List<KeyValuePair<string, GgufValue>> Meta, List<GgufTensorData> Tensors) TinyModel(Func<WeightSpec, long[]>? shape = null)
    {
        var config = new ModelConfig
        {
            TieWordEmbeddings = true,
            HiddenSize = 8, IntermediateSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 4,
            VocabSize = 16, MaxPositionEmbeddings = 32, RmsNormEps = 1e-5f,
        };
        var meta = GgufLlama.Metadata(config, "tiny");
        var rng = new Random(3);
        var tensors = ModelWeights.Specs(config, LayerMap.Identity(2)).Select(s =>
        {
            var dims = shape?.Invoke(s) ?? s.Shape;
            var values = Enumerable.Range(0, (int)dims.Aggregate(1L, (a, b) => a * b)).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
            return new GgufTensorData(s.GgufName, DType.F32, dims, dst => GgufWriter.EncodeFloat(values, DType.F32, dst));
        }).ToList();
        return (meta, tensors);
    }

    [Theory]
    [InlineData("llama.embedding_length")]
    [InlineData("llama.block_count")]
    [InlineData("llama.feed_forward_length")]
    [InlineData("llama.attention.head_count")]
    [InlineData("llama.context_length")]
    [InlineData("llama.attention.layer_norm_rms_epsilon")]
    [InlineData("general.architecture")]
    public void MissingLlamaKeysAreOneLineErrorsNamingThem(string key)
    {
        using var dir = new TempDir();
        var (meta, tensors) = TinyModel();
        meta.RemoveAll(kv => kv.Key == key);
        GgufWriter.Write(dir.File("m.gguf"), meta, tensors);
        var e = Assert.Throws<LckvException>(() => LlamaModel.Load(dir.File("m.gguf")));
        Assert.Contains($"'{key}'", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        CliTests.AssertOneLineError(CliTests.Run("generate", "--model", dir.File("m.gguf"), "--prompt-ids", "1"), key);
    }

    [Fact]
    public void TheTinyModelLoadsAndMetadataMistakesAreNamed()
    {
        using var dir = new TempDir();
        var (meta, tensors) = TinyModel();
        GgufWriter.Write(dir.File("ok.gguf"), meta, tensors);
        using (var m = LlamaModel.Load(dir.File("ok.gguf")))
            Assert.Equal((8, 2, 16, RopeStyle.AdjacentPairs, true), (m.Hidden, m.Config.NumHiddenLayers, m.Vocab, m.Config.RopeStyle, m.Config.TieWordEmbeddings));

        void Bad(string mustContain, Action<List<KeyValuePair<string, GgufValue>>> change, Func<WeightSpec, long[]>? shape = null, string? drop = null, bool extra = false)
        {
            var (m, t) = TinyModel(shape);
            change(m);
            t.RemoveAll(x => x.Name == drop);
            if (extra) t.Add(new GgufTensorData("extra.weight", DType.F32, [4], dst => dst.Clear()));
            string path = dir.File($"bad{Guid.NewGuid():N}.gguf");
            GgufWriter.Write(path, m, t);
            var e = Assert.Throws<LckvException>(() => LlamaModel.Load(path));
            output.WriteLine(e.Message);
            Assert.Contains(mustContain, e.Message);
        }
        static void Set(List<KeyValuePair<string, GgufValue>> m, string key, GgufValue v)
        {
            int i = m.FindIndex(kv => kv.Key == key);
            if (i >= 0) m[i] = new(key, v);
            else m.Add(new(key, v));
        }
        Bad("'llama.block_count' is a string", m => Set(m, "llama.block_count", GgufValue.String("two")));
        Bad("only llama", m => Set(m, "general.architecture", GgufValue.String("gemma")));
        Bad("partial rotary", m => Set(m, "llama.rope.dimension_count", GgufValue.UInt32(2)));
        Bad("rope.scaling.type 'yarn'", m => Set(m, "llama.rope.scaling.type", GgufValue.String("yarn")));
        Bad("differs between layers", m => Set(m, "llama.attention.head_count_kv", GgufValue.Array([1, 2])));
        Bad("num_attention_heads 2 is not a multiple of num_key_value_heads 3", m => Set(m, "llama.attention.head_count_kv", GgufValue.UInt32(3)));
        // a tensor whose shape disagrees with the metadata, quoted as the file lists it
        Bad("tensor 'blk.1.ffn_up.weight' has shape ne [8, 12] but the GGUF metadata implies ne [8, 16]", _ => { },
            s => s.GgufName == "blk.1.ffn_up.weight" ? [12, 8] : s.Shape);
        Bad("tensor 'token_embd.weight' has shape ne [8, 20]", _ => { }, s => s.Slot == WeightSlot.Embed ? [20, 8] : s.Shape);
        Bad("missing tensor 'blk.0.attn_v.weight'", _ => { }, drop: "blk.0.attn_v.weight");
        Bad("unexpected tensor 'extra.weight'", _ => { }, extra: true);
    }

    /// <summary>Raw GGUF bytes, field by field, so a test can write what the writer never would.</summary>
    private sealed class Raw
    {
        private readonly MemoryStream _s = new();
        private readonly BinaryWriter _w;
        public Raw() => _w = new BinaryWriter(_s);
        public Raw U32(uint v) { _w.Write(v); return this; }
        public Raw U64(ulong v) { _w.Write(v); return this; }
        public Raw Bytes(params byte[] b) { _w.Write(b); return this; }
        public Raw Str(string s) { var b = Encoding.UTF8.GetBytes(s); _w.Write((ulong)b.Length); _w.Write(b); return this; }
        public Raw Header(ulong tensors, ulong kvs, uint version = 3) => Bytes("GGUF"u8.ToArray()).U32(version).U64(tensors).U64(kvs);
        public Raw KvU32(string key, uint v) => Str(key).U32(4).U32(v);
        public Raw Tensor(string name, long[] ne, uint type, ulong offset)
        {
            Str(name).U32((uint)ne.Length);
            foreach (var d in ne) U64((ulong)d);
            return U32(type).U64(offset);
        }
        public Raw AlignTo(int a) { while (_s.Length % a != 0) _w.Write((byte)0); return this; }
        public Raw Data(int n) { for (int i = 0; i < n; i++) _w.Write((byte)i); return this; }
        public byte[] ToArray() { _w.Flush(); return _s.ToArray(); }
    }

    /// <summary>Two F32 tensors: "a" ne [8] at 0 and "b" ne [4, 2] at 32, one key.</summary>
    private static byte[] ValidRaw() => new Raw().Header(2, 1).KvU32("general.alignment", 32)
        .Tensor("a", [8], 0, 0).Tensor("b", [4, 2], 0, 32).AlignTo(32).Data(64).ToArray();

    public static TheoryData<string, string> BadFiles => new()
    {
        { "bad magic", "not a GGUF file" },
        { "version 1", "version 1" },
        { "version 9", "version 9" },
        { "byte-swapped version", "big-endian" },
        { "absurd tensor count", "tensors, more than" },
        { "absurd key/value count", "metadata entries, more than" },
        { "absurd key length", "longer than the" },
        { "string past the end", "truncated" },
        { "absurd array length", "more than the rest of the file" },
        { "unknown value type", "unknown value type 99" },
        { "unknown array element type", "array of unknown value type 42" },
        { "bool not 0 or 1", "where a bool" },
        { "duplicate key", "appears twice" },
        { "alignment not a power of two", "not a power of two" },
        { "alignment not a u32", "expected a u32" },
        { "too many dims", "5 dimensions" },
        { "unsupported tensor type", "GGML type Q4_K (12)" },
        { "unknown tensor type", "unknown GGML type 77" },
        { "misaligned offset", "not a multiple of the alignment 32" },
        { "overlapping tensors", "overlap" },
        { "tensor past the end", "exceeds the data section" },
        { "duplicate tensor", "tensor 'a' appears twice" },
        { "quantized row not whole blocks", "whole blocks of 32" },
        { "absurd dimension", "too large" },
        { "nesting too deep", "nests arrays" },
    };

    private static byte[] Make(string what)
    {
        var kv = (Raw r) => r.KvU32("general.alignment", 32);
        byte[] Tensors(Raw r) => r.Tensor("a", [8], 0, 0).Tensor("b", [4, 2], 0, 32).AlignTo(32).Data(64).ToArray();
        switch (what)
        {
            case "bad magic": { var b = ValidRaw(); b[0] = (byte)'\u001b'; return b; }
            case "version 1": return Tensors(kv(new Raw().Header(2, 1, version: 1)));
            case "version 9": return Tensors(kv(new Raw().Header(2, 1, version: 9)));
            case "byte-swapped version": return Tensors(kv(new Raw().Header(2, 1, version: 3u << 24)));
            case "absurd tensor count": return Tensors(kv(new Raw().Header(1UL << 60, 1)));
            case "absurd key/value count": return Tensors(kv(new Raw().Header(2, 1UL << 60)));
            case "absurd key length": return new Raw().Header(0, 1).U64(1UL << 62).Data(64).ToArray();
            case "string past the end": return new Raw().Header(0, 1).Str("k").U32(8).U64(1000).Data(20).ToArray();
            case "absurd array length": return new Raw().Header(0, 1).Str("k").U32(9).U32(6).U64(1UL << 61).Data(64).ToArray();
            case "unknown value type": return new Raw().Header(0, 1).Str("k").U32(99).Data(64).ToArray();
            case "unknown array element type": return new Raw().Header(0, 1).Str("k").U32(9).U32(42).U64(1).Data(64).ToArray();
            case "bool not 0 or 1": return new Raw().Header(0, 1).Str("k").U32(7).Bytes(2).Data(64).ToArray();
            case "duplicate key": return new Raw().Header(0, 2).KvU32("k", 1).KvU32("k", 2).Data(64).ToArray();
            case "alignment not a power of two": return Tensors(new Raw().Header(2, 1).KvU32("general.alignment", 24));
            case "alignment not a u32": return Tensors(new Raw().Header(2, 1).Str("general.alignment").U32(10).U64(32));
            case "too many dims": return new Raw().Header(1, 0).Tensor("a", [1, 1, 1, 1, 8], 0, 0).AlignTo(32).Data(32).ToArray();
            case "unsupported tensor type": return new Raw().Header(1, 0).Tensor("a", [256], 12, 0).AlignTo(32).Data(512).ToArray();
            case "unknown tensor type": return new Raw().Header(1, 0).Tensor("a", [8], 77, 0).AlignTo(32).Data(512).ToArray();
            case "misaligned offset": return new Raw().Header(2, 0).Tensor("a", [8], 0, 0).Tensor("b", [4, 2], 0, 36).AlignTo(32).Data(96).ToArray();
            case "overlapping tensors": return new Raw().Header(2, 0).Tensor("a", [8], 0, 0).Tensor("b", [4, 4], 0, 0).AlignTo(32).Data(96).ToArray();
            case "tensor past the end": return new Raw().Header(2, 0).Tensor("a", [8], 0, 0).Tensor("b", [4, 2], 0, 32).AlignTo(32).Data(40).ToArray();
            case "duplicate tensor": return new Raw().Header(2, 0).Tensor("a", [8], 0, 0).Tensor("a", [8], 0, 32).AlignTo(32).Data(64).ToArray();
            case "quantized row not whole blocks": return new Raw().Header(1, 0).Tensor("q", [48], 8, 0).AlignTo(32).Data(64).ToArray();
            case "absurd dimension": return new Raw().Header(1, 0).Tensor("a", [1L << 40, 1L << 40], 0, 0).AlignTo(32).Data(64).ToArray();
            case "nesting too deep":
                {
                    var r = new Raw().Header(0, 1).Str("k").U32(9);
                    for (int i = 0; i < 12; i++) r.U32(9).U64(1);
                    return r.U32(4).U64(1).U32(0).Data(64).ToArray();
                }
            default: throw new ArgumentException(what);
        }
    }

    [Theory]
    [MemberData(nameof(BadFiles))]
    public void BadFilesAreOneLineErrors(string what, string mustContain)
    {
        using var dir = new TempDir();
        string path = dir.Write("bad.gguf", Make(what));
        var e = Assert.Throws<LckvException>(() => GgufFile.Open(path));
        output.WriteLine($"{what}: {e.Message}");
        Assert.Contains(mustContain, e.Message);
        Assert.Contains(path, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.DoesNotContain('\u001b', e.Message);
    }

    [Fact]
    public void TheValidRawFileReads()
    {
        using var dir = new TempDir();
        using var f = GgufFile.Open(dir.Write("ok.gguf", ValidRaw()));
        Assert.Equal([2L, 4], f.Tensors["b"].Shape);
        Assert.Equal(32, f.Tensors["b"].Length);
    }

    [Fact]
    public void TruncationAnywhereIsAOneLineError()
    {
        using var dir = new TempDir();
        var (meta, tensors) = TinyModel();
        GgufWriter.Write(dir.File("m.gguf"), meta, tensors);
        var bytes = File.ReadAllBytes(dir.File("m.gguf"));
        using (var whole = GgufFile.Open(dir.File("m.gguf"))) Assert.True(whole.DataStart < bytes.Length);
        var kinds = new HashSet<string>();
        for (int cut = 0; cut < bytes.Length; cut += cut < 1200 ? 7 : 331)
        {
            string path = dir.Write("cut.gguf", bytes[..cut]);
            var e = Assert.Throws<LckvException>(() => { using var m = LlamaModel.Load(path); });
            Assert.DoesNotContain('\n', e.Message);
            kinds.Add(e.Message.Contains("too short") ? "short" : e.Message.Contains("file can hold") ? "counts"
                : e.Message.Contains("truncated:") ? "header" : e.Message.Contains("exceeds the data section") ? "data" : e.Message);
        }
        output.WriteLine(string.Join(" | ", kinds));
        Assert.Equal(["counts", "data", "header", "short"], kinds.Order());
    }

    [Fact]
    public void RandomDamageIsAlwaysAnLckvExceptionOrAModel()
    {
        using var dir = new TempDir();
        var (meta, tensors) = TinyModel();
        GgufWriter.Write(dir.File("m.gguf"), meta, tensors);
        var bytes = File.ReadAllBytes(dir.File("m.gguf"));
        var rng = new Random(22);
        int errors = 0;
        for (int trial = 0; trial < 400; trial++)
        {
            var damaged = (byte[])bytes.Clone();
            int header = (int)Math.Min(damaged.Length, 1500); // most of the structure is in the header
            for (int k = rng.Next(1, 4); k > 0; k--) damaged[rng.Next(header)] = (byte)rng.Next(256);
            string path = dir.Write("d.gguf", damaged);
            try
            {
                using var m = LlamaModel.Load(path, contextLength: 64); // a damaged context_length would size the RoPE table
            }
            catch (LckvException e)
            {
                Assert.DoesNotContain('\n', e.Message);
                errors++;
            }
        }
        output.WriteLine($"{errors} of 400 damaged files refused");
        Assert.True(errors > 100);
    }

    [SharedFact]
    public void TruncatedAndDamagedStoriesAreOneLineThroughTheCli()
    {
        using var dir = new TempDir();
        var bytes = File.ReadAllBytes(Stories);
        string path = dir.Write("s.gguf", bytes[..(bytes.Length / 2)]);
        CliTests.AssertOneLineError(CliTests.Run("generate", "--model", path, "--prompt-ids", "1"), "exceeds the data section");
        path = dir.Write("h.gguf", bytes[..5000]);
        CliTests.AssertOneLineError(CliTests.Run("generate", "--model", path, "--prompt", "hi"), "truncated");
        CliTests.AssertOneLineError(CliTests.Run("info", "--model", path), "truncated");
        path = dir.Write("not.gguf", [.. "GGUG"u8, .. bytes[4..100]]);
        CliTests.AssertOneLineError(CliTests.Run("generate", "--model", path, "--prompt-ids", "1"), "not a GGUF file");
    }

    // ---------------- --allow-long-context, info ----------------

    [SharedFact]
    public void LongContextNeedsTheOptIn()
    {
        CliTests.AssertOneLineError(CliTests.Run("generate", "--model", Stories, "--context", "129", "--prompt-ids", "1", "--max-tokens", "2"),
            "--allow-long-context");
        CliTests.AssertOneLineError(CliTests.Run("perplexity", "--model", Stories, "--context", "1000", "--ids-file", Stories), "llama.context_length");
        CliTests.AssertOneLineError(CliTests.Run("generate", "--model", SharedData.Path("golden", "llama-standard"), "--context", "257", "--prompt-ids", "1"),
            "max_position_embeddings");
        CliTests.AssertOneLineError(CliTests.Run("bench", "--preset", "small", "--context", "4096", "-p", "8", "-n", "0", "-r", "1"), "--allow-long-context");
        CliTests.AssertOneLineError(CliTests.Run("info", "--model", Stories, "--allow-long-context"), "allow-long-context");
        var ok = CliTests.Run("generate", "--model", Stories, "--context", "128", "--prompt-ids", "1", "--max-tokens", "2");
        Assert.Equal(0, ok.Code);
        Assert.DoesNotContain("warning", ok.Err);
        var warned = CliTests.Run("generate", "--model", Stories, "--context", "300", "--allow-long-context", "--prompt-ids", "1", "--max-tokens", "2");
        Assert.Equal(0, warned.Code);
        var lines = warned.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(1, lines.Count(l => l.StartsWith("warning: ", StringComparison.Ordinal)));
        Assert.Contains("undefined", lines[0]);
    }

    [SharedFact]
    public void InfoShowsTheMetadataEscaped()
    {
        var r = CliTests.Run("info", "--model", Stories);
        Assert.Equal(0, r.Code);
        Assert.Contains("tokenizer.ggml.tokens", r.Out);
        Assert.Contains("(512 items)", r.Out);
        Assert.Contains("context         128", r.Out);

        using var dir = new TempDir();
        var (meta, tensors) = TinyModel();
        meta.Add(new("general.description", GgufValue.String("red \u001b[31m text\nnext line")));
        meta.Add(new("evil\u001b]0;title\u0007", GgufValue.UInt32(1)));
        GgufWriter.Write(dir.File("m.gguf"), meta, tensors);
        r = CliTests.Run("info", "--model", dir.File("m.gguf"));
        output.WriteLine(r.Out);
        Assert.Equal(0, r.Code);
        Assert.DoesNotContain('\u001b', r.Out);
        Assert.DoesNotContain('\u0007', r.Out);
        Assert.Contains("red \\x1b[31m text\\x0anext line", r.Out);
        Assert.Contains("evil\\x1b]0;title\\x07", r.Out);
        Assert.Equal(0, CliTests.Run("info", "--model", dir.File("m.gguf"), "--json").Code);
    }

    // ---------------- gpt2 (byte-level BPE) tokenizer ----------------

    /// <summary>
    /// GPT-2's 256 byte symbols, then merged tokens in merge order, then two control tokens; merges worked by hand:
    /// "hello" = h e, l l, he ll, hell o; " world" = Ġ w, o r, Ġw or, l d, Ġwor ld; digits 1 2, 3 4, 12 3, 4 5.
    /// </summary>
    private static string Gpt2File(TempDir dir, string? pre, bool? addBos = null)
    {
        var symbols = new List<string>();
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            symbols.Add(((char)(printable ? b : 256 + next++)).ToString());
        }
        string[] merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2", "3 4", "12 3", "4 5"];
        var tokens = symbols.Concat(merges.Select(m => m.Replace(" ", ""))).Concat(["<|end|>", "<|begin|>"]).ToArray();
        var types = tokens.Select(t => t is "<|end|>" or "<|begin|>" ? 3 : 1).ToArray();
        var meta = new List<KeyValuePair<string, GgufValue>>
        {
            new(TokenizerKeys.Model, GgufValue.String("gpt2")),
            new(TokenizerKeys.Tokens, GgufValue.Array(tokens)),
            new(TokenizerKeys.TokenType, GgufValue.Array(types)),
            new(TokenizerKeys.Merges, GgufValue.Array(merges)),
            new(TokenizerKeys.Bos, GgufValue.UInt32((uint)tokens.Length - 1)),
            new(TokenizerKeys.Eos, GgufValue.UInt32((uint)tokens.Length - 2)),
        };
        if (pre is not null) meta.Add(new(TokenizerKeys.Pre, GgufValue.String(pre)));
        if (addBos is bool ab) meta.Add(new(TokenizerKeys.AddBos, GgufValue.Bool(ab)));
        string path = dir.File($"gpt2-{pre}-{addBos}.gguf");
        GgufWriter.Write(path, meta, []);
        return path;
    }

    [Fact]
    public void Gpt2TokenizerEncodesAsWorkedByHand()
    {
        using var dir = new TempDir();
        using var file = GgufFile.Open(Gpt2File(dir, "gpt2"));
        var tok = TextTokenizer.FromGguf(file);
        int Id(string t) => tok.TokenId(t)!.Value;
        Assert.Equal("bpe-bytelevel", tok.Kind);
        Assert.Equal(256 + 13 + 2, tok.VocabSize);
        Assert.Equal(256 + 14, tok.BosId);
        Assert.Equal([256 + 13], tok.EosIds);
        Assert.False(tok.AddBosByDefault); // gpt2's default

        Assert.Equal([Id("hello"), Id("Ġworld")], tok.Encode("hello world", false));
        // "there": only h e merges
        Assert.Equal([Id("Ġ"), Id("t"), Id("he"), Id("r"), Id("e")], tok.Encode(" there", false));
        // GPT-2 keeps a run of digits in one piece: 1 2 -> 12, then 3 4 -> 34 (ranked before 12 3), 5 stays
        Assert.Equal([Id("12"), Id("34"), Id("5")], tok.Encode("12345", false));
        // a control token in the text is matched whole and prints nothing
        var ids = tok.Encode("hello<|end|>", false);
        Assert.Equal([Id("hello"), 256 + 13], ids);
        Assert.Equal("hello", tok.Decode(ids));
        Assert.Equal([256 + 14, Id("hello")], tok.Encode("hello", true));
        Assert.Equal("héllo\n", tok.Decode(tok.Encode("héllo\n", false)));

        // Llama 3's pre-tokenizer splits digits in threes: 123 | 45, then 1 2 -> 12, 12 3 -> 123; 4 5 -> 45
        using var file3 = GgufFile.Open(Gpt2File(dir, "llama-bpe", addBos: true));
        var tok3 = TextTokenizer.FromGguf(file3);
        Assert.Equal([Id("123"), Id("45")], tok3.Encode("12345", false));
        Assert.True(tok3.AddBosByDefault);

        using var none = GgufFile.Open(Gpt2File(dir, null));
        Assert.Contains("tokenizer.ggml.pre is absent", Assert.Throws<LckvException>(() => TextTokenizer.FromGguf(none)).Message);
        using var other = GgufFile.Open(Gpt2File(dir, "deepseek-coder"));
        Assert.Contains("'deepseek-coder' is not supported", Assert.Throws<LckvException>(() => TextTokenizer.FromGguf(other)).Message);
    }

    [Fact]
    public void TokenizerMetadataMistakesAreNamed()
    {
        using var dir = new TempDir();
        void Bad(string mustContain, params KeyValuePair<string, GgufValue>[] meta)
        {
            string path = dir.File($"t{Guid.NewGuid():N}.gguf");
            GgufWriter.Write(path, meta, []);
            using var f = GgufFile.Open(path);
            var e = Assert.Throws<LckvException>(() => TextTokenizer.FromGguf(f));
            output.WriteLine(e.Message);
            Assert.Contains(mustContain, e.Message);
        }
        var tokens = new KeyValuePair<string, GgufValue>(TokenizerKeys.Tokens, GgufValue.Array(["<unk>", "<s>", "</s>", "a"]));
        var llama = new KeyValuePair<string, GgufValue>(TokenizerKeys.Model, GgufValue.String("llama"));
        Bad("carries no tokenizer", tokens);
        Bad("'bert' is not supported", new(TokenizerKeys.Model, GgufValue.String("bert")), tokens);
        Bad("missing GGUF metadata key 'tokenizer.ggml.tokens'", llama);
        Bad("expected array[string]", llama, new(TokenizerKeys.Tokens, GgufValue.Array([1, 2])));
        Bad("has 2 entries for 4 tokens", llama, tokens, new(TokenizerKeys.Scores, GgufValue.Array([1f, 2f])));
        Bad("bos_token_id 9 is outside the vocabulary", llama, tokens, new(TokenizerKeys.Bos, GgufValue.UInt32(9)));
        Bad("type 9", llama, tokens, new(TokenizerKeys.TokenType, GgufValue.Array([2, 3, 9, 1])));
        Bad("byte piece 'a'", llama, tokens, new(TokenizerKeys.TokenType, GgufValue.Array([2, 3, 3, 6])));
        Bad("missing GGUF metadata key 'tokenizer.ggml.merges'", new(TokenizerKeys.Model, GgufValue.String("gpt2")), tokens);
        Bad("entry '' is not two tokens", new(TokenizerKeys.Model, GgufValue.String("gpt2")), tokens,
            new(TokenizerKeys.Pre, GgufValue.String("gpt2")), new(TokenizerKeys.Merges, GgufValue.Array([""])));
    }
}
