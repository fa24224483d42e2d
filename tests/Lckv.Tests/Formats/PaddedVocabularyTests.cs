namespace Lckv.Tests.Formats;

/// <summary>Decoding ids a model samples past its tokenizer's table (a vocabulary padded beyond the tokenizer's).</summary>
public sealed class PaddedVocabularyTests
{
    [SharedFact]
    public void IdsPastTheTokenizersTablePrintNothing()
    {
        // a model whose vocabulary is padded past its tokenizer's may sample those ids: used to fail mid-generation
        var tok = Lckv.Formats.TextTokenizer.Load(SharedData.Path("tokenizers", "en4k.model"));
        int hello = tok.Encode("hello", addBos: false)[0];
        Assert.Equal(tok.Decode([hello]), tok.Decode([hello, tok.VocabSize, tok.VocabSize + 60]));
        Assert.True(tok.IsControl(tok.VocabSize + 1));
        var stream = tok.CreateStreamingDecoder();
        Assert.Equal("", stream.Push(tok.VocabSize + 3));
        Assert.Throws<LckvException>(() => tok.Decode([-1]));
    }
}
