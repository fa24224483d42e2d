using System.Text.Json;
using Lckv.Formats;
using Lckv.Model;
using Lckv.Tests.Cache;
using Lckv.Tests.Formats;
using Lckv.Tests.Model;
using Xunit.Abstractions;

namespace Lckv.Tests.Cli;

/// <summary>lckv kvsharer on the golden-compress KVSharer case (its calibration ids in a file), and one line for every
/// bad option.</summary>
public sealed class KvSharerCliTests(ITestOutputHelper output)
{
    private const string Case = "kvsharer-llama";

    private static string Dir => SharedData.Path("golden-compress", Case);

    private static string WriteCalibIds(TempDir dir, EvictionGoldenTests.Fixture f)
        => dir.WriteText("calib.txt", string.Join('\n', f.Rows("kvsharer.calib_ids").Select(r => string.Join(' ', r))) + "\n");

    [SharedFact]
    public void TheCliFindsTheGoldenMapAndWritesItsCheckpoint()
    {
        using var f = EvictionGoldenTests.Open(Case);
        using var dir = new TempDir();
        string calib = WriteCalibIds(dir, f), outPath = dir.File("out");
        var (code, stdout, stderr) = CliTests.Run("kvsharer", "--model", Dir, "--calib-ids", calib, "--share", "2", "--threshold", "0.791",
            "--out", outPath, "--json");
        Assert.True(code == 0, stderr);
        using (var doc = JsonDocument.Parse(stdout))
        {
            var root = doc.RootElement;
            Assert.Equal("0_1_2_3_4_3_6_4", root.GetProperty("layer_types").GetString());
            Assert.Equal(6, root.GetProperty("samples").GetInt32());
            Assert.Equal(16, root.GetProperty("length").GetInt32());
            var tried = root.GetProperty("tried").EnumerateArray().ToArray();
            var want = f.Read<float>("kvsharer.tried");
            Assert.Equal(want.Length / 3, tried.Length);
            for (int k = 0; k < tried.Length; k++)
            {
                Assert.Equal((int)want[3 * k], tried[k].GetProperty("layer").GetInt32());
                Assert.Equal((int)want[3 * k + 1], tried[k].GetProperty("target").GetInt32());
                Assert.True(Math.Abs(tried[k].GetProperty("score").GetDouble() - want[3 * k + 2]) <= 1e-5);
            }
            var distances = root.GetProperty("distances").EnumerateArray().SelectMany(r => r.EnumerateArray().Select(x => x.GetDouble())).ToArray();
            double dDiff = GoldenTests.MaxAbsDiff(f.Read<float>("kvsharer.distances"), [.. distances.Select(x => (float)x)]);
            Assert.True(dDiff <= 1e-5, $"distances differ by {dDiff}");
        }
        using (var written = LlamaModel.Load(outPath))
        {
            Assert.Equal("0_1_2_3_4_3_6_4", written.Map.ToString());
            double diff = GoldenTests.MaxAbsDiff(f.Read<float>("kvsharer.logits"), KvSharerTests.Prefill(written, f.Rows("kvsharer.calib_ids")));
            output.WriteLine($"lckv kvsharer checkpoint: kvsharer.logits max abs diff {diff:E2}");
            Assert.True(diff <= 1e-4, $"kvsharer.logits differ by {diff}");
        }

        // the table, and an existing output only with --force
        CliTests.AssertOneLineError(CliTests.Run("kvsharer", "--model", Dir, "--calib-ids", calib, "--share", "2", "--threshold", "0.791", "--out", outPath),
            "already exists");
        (code, stdout, stderr) = CliTests.Run("kvsharer", "--model", Dir, "--calib-ids", calib, "--samples", "6", "--length", "16", "--share", "2",
            "--threshold", "0.791", "--out", outPath, "--force");
        output.WriteLine(stdout);
        Assert.True(code == 0, stderr);
        Assert.Contains("accepted", stdout);
        Assert.Contains("rejected", stdout);
        Assert.Contains("layer_types 0_1_2_3_4_3_6_4", stdout);
    }

    [SharedFact]
    public void OnAGgufFileItWritesAGgufFileThatNamesTheMap()
    {
        using var f = EvictionGoldenTests.Open(Case);
        using var dir = new TempDir();
        string calib = WriteCalibIds(dir, f), gguf = dir.File("in.gguf"), outPath = dir.File("shared.gguf");
        var (code, _, stderr) = CliTests.Run("convert", "-i", Dir, "-o", gguf, "--to", "gguf");
        Assert.True(code == 0, stderr);
        string stdout;
        (code, stdout, stderr) = CliTests.Run("kvsharer", "--model", gguf, "--calib-ids", calib, "--share", "2", "--threshold", "0.791", "--out", outPath, "--json");
        Assert.True(code == 0, stderr);
        string types;
        using (var doc = JsonDocument.Parse(stdout)) types = doc.RootElement.GetProperty("layer_types").GetString()!;
        Assert.Equal("0_1_2_3_4_3_6_4", types);
        Assert.Equal([calib, gguf, outPath], Directory.GetFiles(dir.Root).Order(StringComparer.Ordinal).ToArray());

        using (var file = GgufFile.Open(outPath))
        {
            Assert.Equal(types, file.Metadata[GgufLlama.LayerTypesKey].Value);
            Assert.False(file.Tensors.ContainsKey("blk.5.attn_k.weight"));
            Assert.False(file.Tensors.ContainsKey("blk.7.attn_v.weight"));
            Assert.True(file.Tensors.ContainsKey("blk.6.attn_k.weight"));
        }
        // the written file against the candidate over the input's weights: the same bytes under the same map
        var ids = f.Rows("kvsharer.calib_ids");
        float[] want;
        using (var input = LlamaModel.Load(gguf))
        using (var view = input.WithLayerTypes(types))
            want = KvSharerTests.Prefill(view, ids);
        using (var written = LlamaModel.Load(outPath))
        {
            Assert.Equal(types, written.Map.ToString());
            double diff = GoldenTests.MaxAbsDiff(want, KvSharerTests.Prefill(written, ids));
            double golden = GoldenTests.MaxAbsDiff(f.Read<float>("kvsharer.logits"), KvSharerTests.Prefill(written, ids));
            output.WriteLine($"kvsharer GGUF: logits against the in-memory candidate max abs diff {diff:E2}, against the golden {golden:E2}");
            Assert.True(diff <= 1e-5, $"logits differ from the candidate's by {diff}");
            Assert.True(golden <= 1e-4, $"kvsharer.logits differ by {golden}");
        }

        // info reads the map; an existing output only with --force; the table names the format
        (code, stdout, stderr) = CliTests.Run("info", "--model", outPath);
        Assert.True(code == 0, stderr);
        Assert.Contains(types, stdout);
        CliTests.AssertOneLineError(CliTests.Run("kvsharer", "--model", gguf, "--calib-ids", calib, "--out", outPath), "already exists");
        (code, stdout, stderr) = CliTests.Run("kvsharer", "--model", gguf, "--calib-ids", calib, "--share", "1", "--out", outPath, "--force");
        Assert.True(code == 0, stderr);
        Assert.Contains(GgufLlama.LayerTypesKey, stdout);
        using (var written = LlamaModel.Load(outPath)) Assert.Equal(7, written.Map.KvLayerCount);
    }

    [SharedTheory]
    [InlineData(new[] { "--samples", "0" }, "--samples must be at least 1")]
    [InlineData(new[] { "--samples", "7" }, "6 sequences of at least 16 ids")]
    [InlineData(new[] { "--length", "17" }, "0 sequences of at least 17 ids")]
    [InlineData(new[] { "--threshold", "-1" }, "--threshold must be in (-1, 1]")]
    [InlineData(new[] { "--threshold", "1.5" }, "--threshold must be in (-1, 1]")]
    [InlineData(new[] { "--share", "0" }, "--share must be at least 1")]
    [InlineData(new[] { "--order", "random" }, "--order must be dissimilar or similar")]
    public void BadOptionsAreOneLineErrors(string[] options, string message)
    {
        using var f = EvictionGoldenTests.Open(Case);
        using var dir = new TempDir();
        var r = CliTests.Run(["kvsharer", "--model", Dir, "--calib-ids", WriteCalibIds(dir, f), "--out", dir.File("out"), .. options]);
        CliTests.AssertOneLineError(r, message);
        Assert.False(Directory.Exists(dir.File("out")));
    }

    [SharedFact]
    public void AModelWithUpwardReadingLayersIsRefused()
    {
        using var dir = new TempDir();
        string calib = dir.WriteText("calib.txt", "1 2 3 4\n1 5 6 7\n");
        CliTests.AssertOneLineError(CliTests.Run("kvsharer", "--model", SharedData.Path("golden-compress", "h2o-lckv-sandwich"),
            "--calib-ids", calib, "--out", dir.File("out")), "without upward-reading layers");
    }

    [SharedFact]
    public void CalibrationTextNeedsEnoughLongLines()
    {
        var tokenizer = SharedData.Path("tokenizers", "en4k.model");
        using var dir = new TempDir();
        string text = dir.WriteText("calib.txt", "a line that is long enough to give many tokens of text\nshort\n\nanother line that is long enough for the calibration\n");
        var r = CliTests.Run("kvsharer", "--model", Dir, "--calib", text, "--tokenizer", tokenizer, "--samples", "3", "--length", "8",
            "--out", dir.File("out"));
        CliTests.AssertOneLineError(r, "2 lines of at least 7 tokens");
        Assert.Contains("(--samples, --length)", r.Err);
        CliTests.AssertOneLineError(CliTests.Run("kvsharer", "--model", Dir, "--calib", text, "--calib-ids", text, "--out", dir.File("out")), "exactly one of");
    }

    [SharedFact]
    public void CalibrationFromTextIsBosAndTheFirstTokensOfEachLongLine()
    {
        var tokenizer = TextTokenizer.Load(SharedData.Path("tokenizers", "en4k.model"));
        string[] lines = ["a line that is long enough to give many tokens of text", "short", "", "another line that is long enough for the calibration"];
        var ids = KvSharer.CalibrationFromLines(tokenizer, lines, 1, 2, 6);
        Assert.Equal([1, .. tokenizer.Encode(lines[0], false)[..5]], ids[0]);
        Assert.Equal([1, .. tokenizer.Encode(lines[3], false)[..5]], ids[1]);
    }
}
