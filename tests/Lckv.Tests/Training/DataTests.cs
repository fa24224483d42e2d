using System.Security.Cryptography;
using Lckv.Formats;
using Lckv.Tests.Cli;
using Lckv.Tests.Formats;
using Lckv.Training;

namespace Lckv.Tests.Training;

/// <summary>Prepared token datasets: the split, the file format, the sampler and the validation windows.</summary>
public sealed class DataTests
{
    [Theory]
    [InlineData(4096, "uint16", 2)]
    [InlineData(65535, "uint16", 2)]
    [InlineData(70000, "int32", 4)]
    public void WriteThenOpenRoundTripsWithTheTailOfEachFileHeldOut(int vocab, string dtype, int bytes)
    {
        using var dir = new TempDir();
        int[] a = ToyData.Tokens(1000, vocab, 1), b = ToyData.Tokens(301, vocab, 2);
        a[5] = vocab - 1;
        var meta = TokenDataset.Write(dir.File("data"), [("a", a), ("b", b)], vocab, 0.1);
        Assert.Equal(dtype, meta.DType);
        Assert.Equal(900 + 271, meta.TrainTokens);   // 301 - floor(30.1) = 271
        Assert.Equal(100 + 30, meta.ValTokens);
        using var ds = TokenDataset.Open(dir.File("data"));
        Assert.Equal(meta.TrainTokens * bytes, new FileInfo(dir.File("data/train.bin")).Length);
        var train = new int[ds.Train.Count];
        ds.Train.Read(0, train);
        Assert.Equal(a[..900].Concat(b[..271]), train);
        var val = new int[ds.Validation.Count];
        ds.Validation.Read(0, val);
        Assert.Equal(a[900..].Concat(b[271..]), val);
        Assert.Equal(["meta.json", "train.bin", "val.bin"], Directory.GetFiles(dir.File("data")).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Single(Directory.GetDirectories(dir.Root));
    }

    [Fact]
    public void BadInputsAreClearErrors()
    {
        using var dir = new TempDir();
        Assert.Contains("outside the vocabulary", Assert.Throws<LckvException>(() => TokenDataset.Write(dir.File("d"), [("a", [1, 2, 40])], 32, 0.1)).Message);
        Assert.Contains("validation fraction", Assert.Throws<LckvException>(() => TokenDataset.Write(dir.File("d"), [("a", [1])], 32, 1.0)).Message);
        ToyData.Write(dir.File("d"));
        Assert.Equal(["force"], Assert.Throws<LckvException>(() => ToyData.Write(dir.File("d"))).Settings);
        TokenDataset.Write(dir.File("d"), [("a", ToyData.Tokens(100, 32, 3))], 32, 0.5, force: true);
        using (var ds = TokenDataset.Open(dir.File("d"))) Assert.Equal(50, ds.Train.Count);

        // a truncated token file is found at open
        using (var fs = new FileStream(dir.File("d/train.bin"), FileMode.Open)) fs.SetLength(fs.Length - 2);
        Assert.Contains("train.bin", Assert.Throws<LckvException>(() => TokenDataset.Open(dir.File("d"))).Message);
        Assert.Contains("lckv data prepare", Assert.Throws<LckvException>(() => TokenDataset.Open(dir.File("nothing"))).Message);
    }

    [Fact]
    public void SamplerIsDeterministicAndResumesExactly()
    {
        using var dir = new TempDir();
        using var ds = TokenDataset.Open(ToyData.Write(dir.File("data")));
        var all = new int[ds.Train.Count];
        ds.Train.Read(0, all);
        var s1 = new BatchSampler(ds.Train, 3, 10, 42);
        var s2 = new BatchSampler(ds.Train, 3, 10, 42);
        var x = new int[30];
        var y = new int[30];
        for (int i = 0; i < 5; i++) { s1.Next(x); s2.Next(y); Assert.Equal(x, y); }
        var saved = s1.State;
        Assert.Equal(5, saved.Batches);
        var expected = new List<int[]>();
        for (int i = 0; i < 4; i++) { s1.Next(x); expected.Add([.. x]); }

        var s3 = new BatchSampler(ds.Train, 3, 10, 7); // another seed, then restored
        s3.Restore(saved);
        foreach (var e in expected)
        {
            s3.Next(y);
            Assert.Equal(e, y);
            // every row is a window of the training stream
            for (int r = 0; r < 3; r++)
            {
                int[] row = y[(r * 10)..(r * 10 + 10)];
                Assert.Contains(Enumerable.Range(0, all.Length - 9), s => all.AsSpan(s, 10).SequenceEqual(row));
            }
        }
        var other = new BatchSampler(ds.Train, 3, 10, 43);
        other.Next(y);
        Assert.NotEqual(expected[0], y);
    }

    [Fact]
    public void SamplerCoversTheWholeTrainingStream()
    {
        using var dir = new TempDir();
        TokenDataset.Write(dir.File("d"), [("a", [.. Enumerable.Range(0, 20)])], 32, 0);
        using var ds = TokenDataset.Open(dir.File("d"));
        var s = new BatchSampler(ds.Train, 1, 4, 1);
        var starts = new HashSet<int>();
        var x = new int[4];
        for (int i = 0; i < 400; i++) { s.Next(x); starts.Add(x[0]); }
        Assert.Equal(Enumerable.Range(0, 17), starts.Order()); // every start in [0, 20 - 4]
        Assert.Contains("sequence length", Assert.Throws<LckvException>(() => new BatchSampler(ds.Train, 1, 21, 1)).Message);
    }

    [Fact]
    public void ValidationWindowsOverlapByOneSoEveryTokenIsATargetOnce()
    {
        using var dir = new TempDir();
        TokenDataset.Write(dir.File("d"), [("a", [.. Enumerable.Range(0, 40)])], 64, 0.5); // val = 20..39
        using var ds = TokenDataset.Open(dir.File("d"));
        Assert.Equal(3, ValidationWindows.BatchCount(ds.Validation, 2, 4)); // (20 - 1) / 3 = 6 windows, 3 batches
        var x = new int[8];
        ValidationWindows.Read(ds.Validation, 2, 4, 0, x);
        Assert.Equal([20, 21, 22, 23, 23, 24, 25, 26], x);
        ValidationWindows.Read(ds.Validation, 2, 4, 2, x);
        Assert.Equal([32, 33, 34, 35, 35, 36, 37, 38], x);
        Assert.Equal(0, ValidationWindows.BatchCount(ds.Validation, 1, 21));
    }

    [SharedFact]
    public void PrepareTokenizesEachFileWithTheTokenizer()
    {
        using var dir = new TempDir();
        string tok = SharedData.Path("tokenizers", "en4k.model");
        string a = dir.WriteText("a.txt", "First Citizen:\nBefore we proceed any further, hear me speak.\n");
        string b = dir.WriteText("b.txt", "Once upon a time there lived a king and a queen who had no children. 1234 \u00e9t\u00e9");
        var r = CliTests.Run("data", "prepare", "--tokenizer", tok, "--out", dir.File("data"), "--val-fraction", "0.2", a, b);
        Assert.Equal(0, r.Code);
        Assert.Contains("wrote", r.Out);

        var tokenizer = TextTokenizer.Load(tok);
        int[] ea = tokenizer.Encode(File.ReadAllText(a), addBos: true), eb = tokenizer.Encode(File.ReadAllText(b), addBos: true);
        using var ds = TokenDataset.Open(dir.File("data"));
        Assert.Equal(4096, ds.Meta.VocabSize);
        Assert.Equal("uint16", ds.Meta.DType);
        Assert.True(ds.Meta.BosPrepended);
        Assert.Equal(Path.GetFullPath(tok), ds.Meta.Tokenizer);
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(tok))), ds.Meta.TokenizerSha256);
        long ta = TokenDataset.TrainCount(ea.Length, 0.2), tb = TokenDataset.TrainCount(eb.Length, 0.2);
        var train = new int[ds.Train.Count];
        ds.Train.Read(0, train);
        Assert.Equal(ea[..(int)ta].Concat(eb[..(int)tb]), train);
        var val = new int[ds.Validation.Count];
        ds.Validation.Read(0, val);
        Assert.Equal(ea[(int)ta..].Concat(eb[(int)tb..]), val);
    }

    [SharedFact]
    public void DataPrepareErrorsAreOneLine()
    {
        using var dir = new TempDir();
        string tok = SharedData.Path("tokenizers", "en4k.model");
        string a = dir.WriteText("a.txt", "hello");
        CliTests.AssertOneLineError(CliTests.Run("data", "prepare", "--tokenizer", tok, "--out", dir.File("d"), dir.File("missing.txt")), "missing.txt");
        CliTests.AssertOneLineError(CliTests.Run("data", "prepare", "--tokenizer", dir.File("no.model"), "--out", dir.File("d"), a), "no.model");
        CliTests.AssertOneLineError(CliTests.Run("data", "prepare", "--tokenizer", tok, "--out", dir.File("d"), "--val-fraction", "1.5", a), "--val-fraction");
        CliTests.AssertOneLineError(CliTests.Run("data", "prepare", "--tokenizer", tok, "--out", dir.File("d")), "argument");
        CliTests.AssertOneLineError(CliTests.Run("data", "prepare", "--tokenizer", tok, "--out", dir.Root, a), "--force");
    }
}
