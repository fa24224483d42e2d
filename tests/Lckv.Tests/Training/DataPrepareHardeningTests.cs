using System.Text;
using Lckv.Tests.Cli;
using Lckv.Tests.Formats;

namespace Lckv.Tests.Training;

/// <summary>data prepare refuses files that are not text and warns when a split comes out empty.</summary>
public sealed class DataPrepareHardeningTests
{
    private static string Tokenizer => SharedData.Path("tokenizers", "en4k.model");

    [SharedFact]
    public void BinaryOrNonUtf8InputIsAnError()
    {
        using var dir = new TempDir();
        string nul = dir.Write("nul.bin", [.. Encoding.UTF8.GetBytes("hello world "), 0, 1, 2, 3]);
        CliTests.AssertOneLineError(CliTests.Run("data", "prepare", "--tokenizer", Tokenizer, "--out", dir.File("d1"), nul), "NUL byte at offset 12");
        string latin1 = dir.Write("latin1.txt", [.. Encoding.UTF8.GetBytes("caf"), 0xE9, .. Encoding.UTF8.GetBytes(" au lait")]);
        CliTests.AssertOneLineError(CliTests.Run("data", "prepare", "--tokenizer", Tokenizer, "--out", dir.File("d2"), latin1), "not UTF-8 text (an invalid byte sequence at offset 3)");
        Assert.False(Directory.Exists(dir.File("d1")));
        Assert.False(Directory.Exists(dir.File("d2")));
    }

    [SharedFact]
    public void AnEmptySplitWarns()
    {
        using var dir = new TempDir();
        string tiny = dir.WriteText("tiny.txt", "hi");
        var r = CliTests.Run("data", "prepare", "--tokenizer", Tokenizer, "--out", dir.File("d"), tiny);
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("warning: the validation split is empty", r.Err);
        // a text with a BOM and non-ASCII UTF-8 is still text
        string utf8 = dir.Write("utf8.txt", [0xEF, 0xBB, 0xBF, .. Encoding.UTF8.GetBytes(string.Concat(Enumerable.Repeat("héllo wörld 世界. ", 200)))]);
        var ok = CliTests.Run("data", "prepare", "--tokenizer", Tokenizer, "--out", dir.File("d2"), utf8);
        Assert.True(ok.Code == 0, ok.Err);
        Assert.DoesNotContain("warning", ok.Err);
    }
}
