namespace Lckv.Formats;

/// <summary>
/// A tokenizer from a checkpoint folder through Microsoft.ML.Tokenizers: SentencePiece tokenizer.model, or
/// tokenizer.json where the library supports it. Special tokens (bos, eos, unk) come from the checkpoint's files
/// (tokenizer_config.json, special_tokens_map.json, the model itself), never hard-coded ids.
/// </summary>
public sealed class TextTokenizer
{
    /// <summary>path: a folder holding tokenizer.model or tokenizer.json, or one of those files.</summary>
    public static TextTokenizer Load(string path) => throw new NotImplementedException();

    public int VocabSize => throw new NotImplementedException();
    public int? BosId => throw new NotImplementedException();
    public IReadOnlyList<int> EosIds => throw new NotImplementedException();

    /// <summary>Encodes without BOS/EOS unless addBos.</summary>
    public int[] Encode(string text, bool addBos) => throw new NotImplementedException();
    public string Decode(ReadOnlySpan<int> ids) => throw new NotImplementedException();

    /// <summary>The raw bytes one token stands for when printed after others (byte-fallback pieces give one byte).</summary>
    public byte[] TokenBytes(int id, bool first) => throw new NotImplementedException();

    public StreamingDecoder CreateStreamingDecoder() => throw new NotImplementedException();
}

/// <summary>Turns ids into text as they arrive; never emits part of a UTF-8 character.</summary>
public sealed class StreamingDecoder
{
    /// <summary>Text that became complete with this id (possibly empty).</summary>
    public string Push(int id) => throw new NotImplementedException();
    /// <summary>Whatever is left (incomplete bytes become U+FFFD).</summary>
    public string Flush() => throw new NotImplementedException();
}
