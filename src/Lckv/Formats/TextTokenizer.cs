using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Lckv.Formats;

/// <summary>
/// A tokenizer from a checkpoint folder through Microsoft.ML.Tokenizers: SentencePiece tokenizer.model, or
/// tokenizer.json where the library supports it. Special tokens (bos, eos, unk) come from the checkpoint's files
/// (tokenizer_config.json, special_tokens_map.json, the model itself), never hard-coded ids.
/// </summary>
/// <remarks>
/// Encoding goes through the library. Decoding is done here from each token's bytes (<see cref="TokenBytes"/>), so
/// that <see cref="Decode"/> and <see cref="StreamingDecoder"/> agree byte for byte: SentencePiece pieces are UTF-8
/// with U+2581 meaning a space, byte-fallback pieces (&lt;0xE2&gt;) are one byte, control pieces (&lt;s&gt;) print
/// nothing, and the space the encoder added in front of the text (add_dummy_prefix) is dropped from the first piece.
/// tokenizer.json is supported for byte-level BPE (GPT-2 / Llama 3 style) only.
/// </remarks>
public sealed partial class TextTokenizer
{
    private readonly Tokenizer _tokenizer;
    private readonly byte[][] _bytes;      // per id: the bytes it prints after other text
    private readonly bool[] _control;      // per id: prints nothing and does not end the "first piece" state
    private readonly bool _stripFirstSpace;
    private readonly Dictionary<string, int> _tokenIds;

    /// <summary>The file the tokenizer was read from.</summary>
    public string Source { get; }

    /// <summary>"sentencepiece" or "bpe-bytelevel".</summary>
    public string Kind { get; }

    public int VocabSize => _bytes.Length;
    public int? BosId { get; }
    public IReadOnlyList<int> EosIds { get; }
    public int? UnkId { get; }

    /// <summary>Whether a text starts with BOS: tokenizer_config.json's add_bos_token when present, else true for a
    /// tokenizer.model and for a tokenizer.json whose checkpoint names a BOS token; a GGUF file's
    /// tokenizer.ggml.add_bos_token, else true for its "llama" tokenizer and false for "gpt2".</summary>
    public bool AddBosByDefault { get; }

    private TextTokenizer(string source, string kind, Tokenizer tokenizer, byte[][] bytes, bool[] control,
        bool stripFirstSpace, Dictionary<string, int> tokenIds, SpecialTokens specials, bool addBosDefault)
    {
        Source = source;
        Kind = kind;
        _tokenizer = tokenizer;
        _bytes = bytes;
        _control = control;
        _stripFirstSpace = stripFirstSpace;
        _tokenIds = tokenIds;
        BosId = specials.Bos;
        EosIds = specials.Eos;
        UnkId = specials.Unk;
        AddBosByDefault = addBosDefault;
    }

    /// <summary>path: a folder holding tokenizer.model or tokenizer.json, one of those files, or a GGUF file (the
    /// tokenizer its metadata carries, <see cref="FromGguf"/>).</summary>
    public static TextTokenizer Load(string path)
    {
        if (File.Exists(path) && GgufFile.IsGguf(path))
        {
            using var gguf = GgufFile.Open(path);
            return FromGguf(gguf);
        }
        string file;
        if (Directory.Exists(path))
        {
            string model = Path.Combine(path, "tokenizer.model"), json = Path.Combine(path, "tokenizer.json");
            if (File.Exists(model)) file = model;
            else if (File.Exists(json)) file = json;
            else throw new LckvException($"{path}: no tokenizer.model or tokenizer.json in this folder");
        }
        else if (File.Exists(path)) file = path;
        else throw new LckvException($"{path}: no such file or folder");

        return file.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? LoadTokenizerJson(file) : LoadSentencePiece(file);
    }

    /// <summary>
    /// Checks that this tokenizer can drive a model of the given config: more tokens than the model's vocabulary is an
    /// LckvException (its ids would index past the embedding); special ids that disagree with the config's are
    /// returned as warnings (a config may list more EOS ids than a tokenizer knows, so those only warn).
    /// </summary>
    public IReadOnlyList<string> CheckFits(ModelConfig config, string modelSource)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (VocabSize > config.VocabSize)
            throw new LckvException($"{Source}: the tokenizer has {VocabSize} tokens, more than the {config.VocabSize} of the model's vocabulary ({modelSource}); it is not this model's tokenizer");
        var warnings = new List<string>();
        if (BosId is int bos && config.BosTokenId is int cb && bos != cb)
            warnings.Add($"the tokenizer's BOS id {bos} differs from the model's bos_token_id {cb}; the tokenizer's is used");
        if (config.EosTokenIds.Count > 0 && EosIds.Count > 0 && !EosIds.Any(config.EosTokenIds.Contains))
            warnings.Add($"the tokenizer's EOS id(s) {string.Join(", ", EosIds)} are not among the model's eos_token_id(s) {string.Join(", ", config.EosTokenIds)}");
        return warnings;
    }

    /// <summary>The id of a token's text (a piece or an added token), or null.</summary>
    public int? TokenId(string token) => _tokenIds.TryGetValue(token, out int id) ? id : null;

    /// <summary>Encodes without BOS/EOS unless addBos.</summary>
    public int[] Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        IReadOnlyList<int> ids = _tokenizer is SentencePieceTokenizer sp
            ? sp.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false)
            : _tokenizer.EncodeToIds(text);
        if (!addBos) return [.. ids];
        if (BosId is not int bos) throw new LckvException($"{Source}: the tokenizer has no BOS token, cannot add one");
        var result = new int[ids.Count + 1];
        result[0] = bos;
        for (int i = 0; i < ids.Count; i++) result[i + 1] = ids[i];
        return result;
    }

    public string Decode(ReadOnlySpan<int> ids)
    {
        var buffer = new List<byte>();
        bool first = true;
        foreach (int id in ids)
        {
            buffer.AddRange(TokenBytes(id, first));
            if (!IsControl(id)) first = false;
        }
        return Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(buffer));
    }

    /// <summary>True for tokens that print nothing (bos, eos, other control or special tokens, and ids past the
    /// tokenizer's table: a model's vocabulary is often padded beyond its tokenizer's, and it may sample those ids).</summary>
    public bool IsControl(int id)
    {
        CheckId(id);
        return id >= _bytes.Length || _control[id];
    }

    /// <summary>The raw bytes one token stands for when printed after others (byte-fallback pieces give one byte).</summary>
    /// <param name="first">The token is the first printing token of the text: the leading space the encoder added
    /// (SentencePiece add_dummy_prefix) is dropped.</param>
    public byte[] TokenBytes(int id, bool first)
    {
        CheckId(id);
        if (id >= _bytes.Length) return [];
        byte[] b = _bytes[id];
        if (first && _stripFirstSpace && b.Length > 0 && b[0] == (byte)' ') return b[1..];
        return b;
    }

    public StreamingDecoder CreateStreamingDecoder() => new(this);

    private void CheckId(int id)
    {
        if (id < 0) throw new LckvException($"{Source}: token id {id} is negative");
    }

    // ---------------- SentencePiece tokenizer.model ----------------

    private static TextTokenizer LoadSentencePiece(string path)
    {
        byte[] data;
        try { data = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new LckvException($"{path}: cannot read: {e.Message}", e);
        }

        List<(string Piece, int Type)> pieces;
        try { pieces = SentencePieceModelReader.ReadPieces(data); }
        catch (FormatException e) { throw new LckvException($"{path}: not a SentencePiece model ({e.Message})", e); }
        if (pieces.Count == 0) throw new LckvException($"{path}: the SentencePiece model has no pieces");

        var (tokenizer, bytes, control, ids, strip) = BuildSentencePiece(path, data, pieces, null);
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        var side = SideFiles.Read(dir);
        var specials = ResolveSpecials(path, side, ids, pieces.Count,
            tokenizer.BeginningOfSentenceId, tokenizer.EndOfSentenceId, tokenizer.UnknownId);
        return new TextTokenizer(path, "sentencepiece", tokenizer, bytes, control, strip, ids, specials, side.AddBosToken ?? true);
    }

    /// <summary>The library's tokenizer over a SentencePiece ModelProto, and the per-id bytes and control flags that
    /// decoding reads (<see cref="SentencePieceModelReader"/>'s piece types).</summary>
    private static (SentencePieceTokenizer Tokenizer, byte[][] Bytes, bool[] Control, Dictionary<string, int> Ids, bool StripFirstSpace)
        BuildSentencePiece(string path, byte[] data, List<(string Piece, int Type)> pieces, IReadOnlyDictionary<string, int>? specialTokens)
    {
        SentencePieceTokenizer tokenizer;
        try
        {
            using var stream = new MemoryStream(data, writable: false);
            tokenizer = LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false, specialTokens);
        }
        catch (Exception e) when (e is not LckvException and not OutOfMemoryException)
        {
            throw new LckvException($"{path}: Microsoft.ML.Tokenizers cannot load this SentencePiece model: {SafeTensorsFile.FirstLine(e.Message)}", e);
        }

        int n = pieces.Count;
        var bytes = new byte[n][];
        var control = new bool[n];
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int id = 0; id < n; id++)
        {
            var (piece, type) = pieces[id];
            ids.TryAdd(piece, id);
            switch (type)
            {
                case SentencePieceModelReader.Control:
                case SentencePieceModelReader.Unused:
                    control[id] = true;
                    bytes[id] = [];
                    break;
                case SentencePieceModelReader.Unknown:
                    bytes[id] = Encoding.UTF8.GetBytes(" \u2047 "); // what SentencePiece prints for <unk>
                    break;
                case SentencePieceModelReader.Byte:
                    bytes[id] = [ParseBytePiece(path, piece)];
                    break;
                default:
                    bytes[id] = Encoding.UTF8.GetBytes(piece.Replace('\u2581', ' '));
                    break;
            }
        }
        bool strip = tokenizer.AddDummyPrefix && !tokenizer.TreatWhitespaceAsSuffix;
        return (tokenizer, bytes, control, ids, strip);
    }

    private static byte ParseBytePiece(string path, string piece)
    {
        if (piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b))
            return b;
        throw new LckvException($"{path}: byte piece '{Printable.Escape(piece)}' is not of the form <0xHH>");
    }

    // ---------------- tokenizer.json ----------------

    /// <summary>Token ids a tokenizer.json may use, [0, this): far above any real vocabulary, low enough that the
    /// per-id tables of a corrupt file's ids stay small.</summary>
    public const int MaxTokenIds = 1 << 24;

    private static TextTokenizer LoadTokenizerJson(string path)
    {
        string text = JsonFields.ReadText(path);
        using var doc = JsonFields.ParseDocument(text, path);
        var root = doc.RootElement;
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new LckvException($"{path}: no 'model' object");
        string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "(missing)";
        if (type != "BPE")
            throw new LckvException($"{path}: tokenizer.json model type '{Printable.Escape(type)}' is not supported (only byte-level BPE; for SentencePiece models use tokenizer.model)");
        if (model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True)
            throw new LckvException($"{path}: BPE with byte_fallback (SentencePiece-style tokenizer.json) is not supported by Microsoft.ML.Tokenizers 2.0.1; load tokenizer.model instead");
        if (root.TryGetProperty("normalizer", out var norm) && norm.ValueKind != JsonValueKind.Null)
            throw new LckvException($"{path}: tokenizer.json normalizer '{Printable.Escape(TypeName(norm))}' is not supported (byte-level BPE without a normalizer only)");

        Regex split = ByteLevelSplit(path, root);

        if (!model.TryGetProperty("vocab", out var vocabEl) || vocabEl.ValueKind != JsonValueKind.Object)
            throw new LckvException($"{path}: model has no 'vocab' object");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocabEl.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0 || id >= MaxTokenIds)
                throw new LckvException($"{path}: vocab entry '{Printable.Escape(p.Name)}' must map to an integer id in [0, {MaxTokenIds})");
            vocab[p.Name] = id;
        }

        var merges = new List<string>();
        if (model.TryGetProperty("merges", out var mergesEl) && mergesEl.ValueKind == JsonValueKind.Array)
        {
            foreach (var m in mergesEl.EnumerateArray())
            {
                if (m.ValueKind == JsonValueKind.String) merges.Add(m.GetString()!);
                else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2
                    && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
                    merges.Add(m[0].GetString() + " " + m[1].GetString());
                else throw new LckvException($"{path}: merges entry {JsonFields.Short(m.GetRawText())} is neither \"a b\" nor [\"a\", \"b\"]");
            }
        }

        // added tokens: matched as a whole in the input; "special" ones print nothing
        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        var specialIds = new HashSet<int>();
        if (root.TryGetProperty("added_tokens", out var addedEl) && addedEl.ValueKind == JsonValueKind.Array)
        {
            foreach (var a in addedEl.EnumerateArray())
            {
                if (a.ValueKind != JsonValueKind.Object || !a.TryGetProperty("id", out var idEl) || idEl.ValueKind != JsonValueKind.Number
                    || !idEl.TryGetInt32(out int id) || id < 0 || id >= MaxTokenIds
                    || !a.TryGetProperty("content", out var cEl) || cEl.ValueKind != JsonValueKind.String)
                    throw new LckvException($"{path}: added_tokens entry {JsonFields.Short(a.GetRawText())} needs an id and a content");
                added[cEl.GetString()!] = id;
                if (a.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True) specialIds.Add(id);
            }
        }

        var (tokenizer, bytes, control, ids) = BuildByteLevelBpe(path, vocab, merges, added, specialIds, split);
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        var side = SideFiles.Read(dir);
        var specials = ResolveSpecials(path, side, ids, bytes.Length, null, null, null);
        return new TextTokenizer(path, "bpe-bytelevel", tokenizer, bytes, control, false, ids, specials, side.AddBosToken ?? specials.Bos is not null);
    }

    /// <summary>The library's byte-level BPE over a vocabulary and merges ("a b", in rank order), with added tokens
    /// matched whole in the input; per id the bytes it prints (special added tokens print nothing).</summary>
    private static (Tokenizer Tokenizer, byte[][] Bytes, bool[] Control, Dictionary<string, int> Ids) BuildByteLevelBpe(string path,
        Dictionary<string, int> vocab, List<string> merges, Dictionary<string, int> added, HashSet<int> specialIds, Regex split)
    {
        Tokenizer tokenizer;
        try
        {
            var options = new BpeOptions(vocab)
            {
                Merges = merges,
                ByteLevel = true,
                PreTokenizer = new RegexPreTokenizer(split, added.Count > 0 ? added : null),
                SpecialTokens = added.Count > 0 ? added : null,
            };
            tokenizer = BpeTokenizer.Create(options);
        }
        catch (Exception e) when (e is not LckvException and not OutOfMemoryException)
        {
            throw new LckvException($"{path}: Microsoft.ML.Tokenizers cannot build a BPE tokenizer from this file: {SafeTensorsFile.FirstLine(e.Message)}", e);
        }

        int n = 0;
        foreach (int id in vocab.Values) n = Math.Max(n, id + 1);
        foreach (int id in added.Values) n = Math.Max(n, id + 1);
        var bytes = new byte[n][];
        var control = new bool[n];
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (tok, id) in vocab)
        {
            bytes[id] = ByteLevelDecode(tok);
            ids.TryAdd(tok, id);
        }
        foreach (var (tok, id) in added)
        {
            bool special = specialIds.Contains(id);
            bytes[id] = special ? [] : Encoding.UTF8.GetBytes(tok);
            control[id] = special;
            ids[tok] = id;
        }
        for (int i = 0; i < n; i++)
        {
            if (bytes[i] is null) { bytes[i] = []; control[i] = true; }
        }
        return (tokenizer, bytes, control, ids);
    }

    private static string TypeName(JsonElement e)
        => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : e.ValueKind.ToString();

    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>The split regex of a ByteLevel pre-tokenizer (alone, or a Split + ByteLevel sequence).</summary>
    private static Regex ByteLevelSplit(string path, JsonElement root)
    {
        if (!root.TryGetProperty("pre_tokenizer", out var pre) || pre.ValueKind == JsonValueKind.Null)
            throw new LckvException($"{path}: BPE without a ByteLevel pre_tokenizer is not supported");
        var list = new List<JsonElement>();
        if (TypeName(pre) == "Sequence" && pre.TryGetProperty("pretokenizers", out var seq) && seq.ValueKind == JsonValueKind.Array)
            list.AddRange(seq.EnumerateArray());
        else list.Add(pre);

        string? pattern = null;
        bool byteLevel = false;
        foreach (var p in list)
        {
            switch (TypeName(p))
            {
                case "ByteLevel":
                    byteLevel = true;
                    if (p.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.True)
                        throw new LckvException($"{path}: ByteLevel add_prefix_space true is not supported");
                    bool useRegex = !p.TryGetProperty("use_regex", out var ur) || ur.ValueKind != JsonValueKind.False;
                    if (useRegex)
                    {
                        if (pattern is not null) throw new LckvException($"{path}: more than one split pattern in pre_tokenizer");
                        pattern = Gpt2Pattern;
                    }
                    break;
                case "Split":
                    if (pattern is not null) throw new LckvException($"{path}: more than one split pattern in pre_tokenizer");
                    if (!p.TryGetProperty("pattern", out var pat) || !pat.TryGetProperty("Regex", out var rx) || rx.ValueKind != JsonValueKind.String)
                        throw new LckvException($"{path}: Split pre-tokenizer without a Regex pattern is not supported");
                    string behavior = p.TryGetProperty("behavior", out var bh) && bh.ValueKind == JsonValueKind.String ? bh.GetString()! : "Isolated";
                    if (behavior != "Isolated" || (p.TryGetProperty("invert", out var inv) && inv.ValueKind == JsonValueKind.True))
                        throw new LckvException($"{path}: Split pre-tokenizer behavior '{Printable.Escape(behavior)}' is not supported (Isolated only)");
                    pattern = rx.GetString();
                    break;
                default:
                    throw new LckvException($"{path}: pre-tokenizer '{Printable.Escape(TypeName(p))}' is not supported (ByteLevel and Split only)");
            }
        }
        if (!byteLevel) throw new LckvException($"{path}: BPE without a ByteLevel pre_tokenizer is not supported");
        pattern ??= Gpt2Pattern;
        try { return new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant); }
        catch (ArgumentException e)
        {
            throw new LckvException($"{path}: the pre-tokenizer regex does not compile in .NET: {SafeTensorsFile.FirstLine(e.Message)}", e);
        }
    }

    private static readonly Dictionary<char, byte> _byteLevelInverse = BuildByteLevelInverse();

    /// <summary>GPT-2's reversible map: printable bytes stand for themselves, the others shift to U+0100 and up.</summary>
    private static Dictionary<char, byte> BuildByteLevelInverse()
    {
        var map = new Dictionary<char, byte>();
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            char c = printable ? (char)b : (char)(256 + next++);
            map[c] = (byte)b;
        }
        return map;
    }

    private static byte[] ByteLevelDecode(string token)
    {
        var result = new byte[token.Length];
        for (int i = 0; i < token.Length; i++)
        {
            // a vocabulary entry outside the byte alphabet: keep its UTF-8
            if (!_byteLevelInverse.TryGetValue(token[i], out result[i])) return Encoding.UTF8.GetBytes(token);
        }
        return result;
    }

    // ---------------- special tokens ----------------

    private readonly record struct SpecialTokens(int? Bos, int[] Eos, int? Unk);

    /// <summary>What the checkpoint folder's side files say about special tokens.</summary>
    private sealed class SideFiles
    {
        public readonly List<(string File, string Field, int Id)> BosIds = [], EosIds = [];
        public readonly List<(string File, string Field, string Token)> BosTokens = [], EosTokens = [], UnkTokens = [];
        public bool? AddBosToken;

        public static SideFiles Read(string dir)
        {
            var s = new SideFiles();
            // ids first: generation_config.json is what generation stops on, then config.json
            foreach (string name in (string[])["generation_config.json", "config.json"])
            {
                string p = Path.Combine(dir, name);
                if (!File.Exists(p)) continue;
                using var doc = JsonFields.ParseDocument(JsonFields.ReadText(p), p);
                var f = new JsonFields(doc.RootElement, p);
                if (f.Int("bos_token_id") is int bos) s.BosIds.Add((p, "bos_token_id", bos));
                foreach (int e in f.IntOrList("eos_token_id")) s.EosIds.Add((p, "eos_token_id", e));
            }
            foreach (string name in (string[])["tokenizer_config.json", "special_tokens_map.json"])
            {
                string p = Path.Combine(dir, name);
                if (!File.Exists(p)) continue;
                using var doc = JsonFields.ParseDocument(JsonFields.ReadText(p), p);
                var root = doc.RootElement;
                AddToken(p, root, "bos_token", s.BosTokens);
                AddToken(p, root, "eos_token", s.EosTokens);
                AddToken(p, root, "unk_token", s.UnkTokens);
                if (name == "tokenizer_config.json")
                    s.AddBosToken ??= new JsonFields(root, p).Bool("add_bos_token");
            }
            return s;
        }

        private static void AddToken(string file, JsonElement root, string field, List<(string, string, string)> into)
        {
            if (!root.TryGetProperty(field, out var v)) return;
            switch (v.ValueKind)
            {
                case JsonValueKind.Null: return;
                case JsonValueKind.String: into.Add((file, field, v.GetString()!)); return;
                case JsonValueKind.Object when v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String:
                    into.Add((file, field, c.GetString()!));
                    return;
                default:
                    throw new LckvException($"{file}: field '{field}' must be a token string or an object with a 'content' string");
            }
        }
    }

    private static SpecialTokens ResolveSpecials(string source, SideFiles side, Dictionary<string, int> ids, int vocab,
        int? modelBos, int? modelEos, int? modelUnk)
    {
        int Lookup(string file, string field, string token)
            => ids.TryGetValue(token, out int id) ? id
                : throw new LckvException($"{file}: {field} '{Printable.Escape(token)}' is not a token of {Path.GetFileName(source)}");
        int CheckRange(string file, string field, int id)
            => id >= 0 && id < vocab ? id : throw new LckvException($"{file}: {field} {id} is outside the vocabulary [0, {vocab})");

        int? bos = null;
        if (side.BosIds.Count > 0) bos = CheckRange(side.BosIds[0].File, side.BosIds[0].Field, side.BosIds[0].Id);
        else if (side.BosTokens.Count > 0) bos = Lookup(side.BosTokens[0].File, side.BosTokens[0].Field, side.BosTokens[0].Token);
        else if (modelBos is int mb && mb >= 0 && mb < vocab) bos = mb;

        // every stop id any source names, in priority order
        var eos = new List<int>();
        foreach (var (f, field, id) in side.EosIds) eos.Add(CheckRange(f, field, id));
        foreach (var (f, field, tok) in side.EosTokens) eos.Add(Lookup(f, field, tok));
        if (eos.Count == 0 && modelEos is int me && me >= 0 && me < vocab) eos.Add(me);

        int? unk = null;
        if (side.UnkTokens.Count > 0) unk = Lookup(side.UnkTokens[0].File, side.UnkTokens[0].Field, side.UnkTokens[0].Token);
        else if (modelUnk is int mu && mu >= 0 && mu < vocab) unk = mu;

        return new SpecialTokens(bos, [.. eos.Distinct()], unk);
    }
}

/// <summary>Turns ids into text as they arrive; never emits part of a UTF-8 character.</summary>
public sealed class StreamingDecoder
{
    private readonly TextTokenizer _tokenizer;
    private readonly Decoder _utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();
    private char[] _chars = new char[64];
    private bool _first = true;

    internal StreamingDecoder(TextTokenizer tokenizer) => _tokenizer = tokenizer;

    /// <summary>Text that became complete with this id (possibly empty).</summary>
    public string Push(int id)
    {
        byte[] bytes = _tokenizer.TokenBytes(id, _first);
        if (!_tokenizer.IsControl(id)) _first = false;
        return Convert(bytes, flush: false);
    }

    /// <summary>Whatever is left (incomplete bytes become U+FFFD).</summary>
    public string Flush()
    {
        string s = Convert([], flush: true);
        _utf8.Reset();
        _first = true;
        return s;
    }

    private string Convert(ReadOnlySpan<byte> bytes, bool flush)
    {
        int max = _utf8.GetCharCount(bytes, flush);
        if (_chars.Length < max) _chars = new char[Math.Max(max, _chars.Length * 2)];
        int n = _utf8.GetChars(bytes, _chars, flush);
        return new string(_chars, 0, n);
    }
}

/// <summary>
/// Reads the piece table of a SentencePiece ModelProto (protobuf): field 1 repeated SentencePiece {1: piece,
/// 2: score, 3: type}. Only what decoding needs; the library does the encoding.
/// </summary>
internal static class SentencePieceModelReader
{
    public const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;

    public static List<(string Piece, int Type)> ReadPieces(ReadOnlySpan<byte> data)
    {
        var result = new List<(string, int)>();
        int pos = 0;
        while (pos < data.Length)
        {
            ulong key = ReadVarint(data, ref pos);
            int field = (int)(key >> 3), wire = (int)(key & 7);
            if (field == 1 && wire == 2)
            {
                ulong len = ReadVarint(data, ref pos);
                if (len > (ulong)(data.Length - pos)) throw new FormatException("piece runs past the end");
                result.Add(ReadPiece(data.Slice(pos, (int)len)));
                pos += (int)len;
            }
            else Skip(data, ref pos, wire);
        }
        return result;
    }

    private static (string, int) ReadPiece(ReadOnlySpan<byte> m)
    {
        string piece = "";
        int type = Normal;
        int pos = 0;
        while (pos < m.Length)
        {
            ulong key = ReadVarint(m, ref pos);
            int field = (int)(key >> 3), wire = (int)(key & 7);
            if (field == 1 && wire == 2)
            {
                ulong len = ReadVarint(m, ref pos);
                if (len > (ulong)(m.Length - pos)) throw new FormatException("piece text runs past the end");
                piece = Encoding.UTF8.GetString(m.Slice(pos, (int)len));
                pos += (int)len;
            }
            else if (field == 3 && wire == 0) type = (int)ReadVarint(m, ref pos);
            else Skip(m, ref pos, wire);
        }
        return (piece, type);
    }

    private static ulong ReadVarint(ReadOnlySpan<byte> d, ref int pos)
    {
        ulong v = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (pos >= d.Length) throw new FormatException("truncated varint");
            byte b = d[pos++];
            v |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80) return v;
        }
        throw new FormatException("varint too long");
    }

    private static void Skip(ReadOnlySpan<byte> d, ref int pos, int wire)
    {
        switch (wire)
        {
            case 0: ReadVarint(d, ref pos); break;
            case 1: pos += 8; break;
            case 2:
                {
                    ulong len = ReadVarint(d, ref pos);
                    if (len > (ulong)(d.Length - pos)) throw new FormatException("field runs past the end");
                    pos += (int)len;
                    break;
                }
            case 5: pos += 4; break;
            default: throw new FormatException($"unsupported protobuf wire type {wire}");
        }
        if (pos > d.Length) throw new FormatException("field runs past the end");
    }
}
