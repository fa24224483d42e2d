using System.Text.RegularExpressions;

namespace Lckv.Formats;

public sealed partial class TextTokenizer
{
    /// <summary>GGUF token types (llama.cpp's, the same numbers as SentencePiece's piece types).</summary>
    private const int GgufNormal = 1, GgufUnknown = 2, GgufControl = 3, GgufUserDefined = 4, GgufByte = 6;

    /// <summary>
    /// The tokenizer a GGUF file carries in its tokenizer.ggml.* metadata. "llama" is SentencePiece-style BPE over
    /// tokens, scores and token types (byte fallback through the &lt;0xNN&gt; tokens, a space in front of the text unless
    /// add_space_prefix is false): the arrays are written back as a SentencePiece ModelProto for Microsoft.ML.Tokenizers.
    /// "gpt2" is byte-level BPE over tokens and merges with the pre-tokenizer tokenizer.ggml.pre names. BOS, EOS (with
    /// EOT and EOM, which also end generation), UNK and add_bos_token come from the metadata, control tokens print
    /// nothing, and user-defined tokens are matched whole in the text.
    /// </summary>
    public static TextTokenizer FromGguf(GgufFile file)
    {
        var keys = new GgufLlama.Keys(file);
        string model = keys.OptionalString(TokenizerKeys.Model)
            ?? throw new LckvException($"{file.Path}: the GGUF file carries no tokenizer ({TokenizerKeys.Model} is absent)");
        if (model is "no_vocab" or "none")
            throw new LckvException($"{file.Path}: the GGUF file carries no tokenizer ({TokenizerKeys.Model} is '{Printable.Escape(model)}')");
        if (model is not ("llama" or "gpt2"))
            throw new LckvException($"{file.Path}: {TokenizerKeys.Model} '{Printable.Escape(model)}' is not supported (llama or gpt2)");

        string[] tokens = StringArray(file, TokenizerKeys.Tokens) ?? throw new LckvException($"{file.Path}: missing GGUF metadata key '{TokenizerKeys.Tokens}'");
        if (tokens.Length == 0) throw new LckvException($"{file.Path}: {TokenizerKeys.Tokens} is empty");
        int n = tokens.Length;
        var types = IntArray(file, TokenizerKeys.TokenType, n) ?? Enumerable.Repeat((long)GgufNormal, n).ToArray();
        for (int i = 0; i < n; i++)
            if (types[i] is < 0 or > GgufByte)
                throw new LckvException($"{file.Path}: {TokenizerKeys.TokenType} gives token {i} type {types[i]}, not one of 0-6");

        int? Id(string key)
        {
            int? id = keys.OptionalTokenId(key);
            if (id is int v && v >= n) throw new LckvException($"{file.Path}: {key} {v} is outside the vocabulary [0, {n})");
            return id;
        }
        bool spm = model == "llama";
        int? bos = Id(TokenizerKeys.Bos), unk = Id(TokenizerKeys.Unk);
        var eos = new List<int>();
        foreach (var key in new[] { TokenizerKeys.Eos, TokenizerKeys.Eot, TokenizerKeys.Eom })
            if (Id(key) is int e && !eos.Contains(e)) eos.Add(e);
        var specials = new SpecialTokens(bos, [.. eos], unk);
        bool addBos = keys.OptionalBool(TokenizerKeys.AddBos) ?? spm;
        return spm ? FromGgufLlama(file, keys, tokens, types, specials, addBos) : FromGgufGpt2(file, keys, tokens, types, specials, addBos);
    }

    private static TextTokenizer FromGgufLlama(GgufFile file, GgufLlama.Keys keys, string[] tokens, long[] types, SpecialTokens specials, bool addBos)
    {
        int n = tokens.Length;
        float[] scores;
        if (!file.Metadata.TryGetValue(TokenizerKeys.Scores, out var sv)) scores = new float[n];
        else
        {
            scores = sv.ArrayOf<float>() ?? throw new LckvException($"{file.Path}: GGUF metadata key '{TokenizerKeys.Scores}' is a {sv.TypeName}, expected array[f32]");
            if (scores.Length != n) throw new LckvException($"{file.Path}: {TokenizerKeys.Scores} has {scores.Length} entries for {n} tokens");
        }
        var pieces = new List<(string Piece, float Score, int Type)>(n);
        var userDefined = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < n; i++)
        {
            int type = types[i] == 0 ? GgufNormal : (int)types[i];
            pieces.Add((tokens[i], scores[i], type));
            if (type == GgufUserDefined) userDefined.TryAdd(tokens[i], i);
        }
        var proto = new SentencePieceModel
        {
            Pieces = pieces,
            ModelType = SentencePieceModel.Bpe,
            ByteFallback = pieces.Any(p => p.Type == GgufByte),
            UnkId = specials.Unk ?? 0,
            BosId = specials.Bos ?? -1,
            EosId = specials.Eos.Length > 0 ? specials.Eos[0] : -1,
            PadId = keys.OptionalTokenId(TokenizerKeys.Pad) ?? -1,
            NormalizerName = "identity",
            AddDummyPrefix = keys.OptionalBool(TokenizerKeys.AddSpacePrefix) ?? true,
            RemoveExtraWhitespaces = keys.OptionalBool(TokenizerKeys.RemoveExtraWhitespaces) ?? false,
            EscapeWhitespaces = true,
        };
        var (tokenizer, bytes, control, ids, strip) = BuildSentencePiece(file.Path, proto.Write(),
            [.. pieces.Select(p => (p.Piece, p.Type))], userDefined.Count > 0 ? userDefined : null);
        return new TextTokenizer(file.Path, "sentencepiece", tokenizer, bytes, control, strip, ids, specials, addBos);
    }

    private static TextTokenizer FromGgufGpt2(GgufFile file, GgufLlama.Keys keys, string[] tokens, long[] types, SpecialTokens specials, bool addBos)
    {
        string[] merges = StringArray(file, TokenizerKeys.Merges) ?? throw new LckvException($"{file.Path}: missing GGUF metadata key '{TokenizerKeys.Merges}'");
        string pre = keys.OptionalString(TokenizerKeys.Pre)
            ?? throw new LckvException($"{file.Path}: {TokenizerKeys.Pre} is absent; the pre-tokenizer must be named (gpt2 or llama-bpe)");
        Regex split = new(PreTokenizerPattern(file, pre), RegexOptions.Compiled | RegexOptions.CultureInvariant);

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        var specialIds = new HashSet<int>();
        for (int i = 0; i < tokens.Length; i++)
        {
            switch ((int)types[i])
            {
                case GgufControl or GgufUnknown:
                    added.TryAdd(tokens[i], i);
                    specialIds.Add(i);
                    break;
                case GgufUserDefined:
                    added.TryAdd(tokens[i], i);
                    break;
                default:
                    vocab.TryAdd(tokens[i], i);
                    break;
            }
        }
        foreach (var m in merges)
            if (m.Length < 3 || m.IndexOf(' ', 1) < 0) throw new LckvException($"{file.Path}: {TokenizerKeys.Merges} entry '{Printable.Escape(m)}' is not two tokens separated by a space");
        var (tokenizer, bytes, control, ids) = BuildByteLevelBpe(file.Path, vocab, [.. merges], added, specialIds, split);
        return new TextTokenizer(file.Path, "bpe-bytelevel", tokenizer, bytes, control, false, ids, specials, addBos);
    }

    /// <summary>The split regex of a named llama.cpp pre-tokenizer (the ones with a single pattern).</summary>
    private static string PreTokenizerPattern(GgufFile file, string pre) => pre switch
    {
        "gpt2" => Gpt2Pattern,
        "llama3" or "llama-v3" or "llama-bpe" => Llama3Pattern,
        _ => throw new LckvException($"{file.Path}: {TokenizerKeys.Pre} '{Printable.Escape(pre)}' is not supported (gpt2 or llama-bpe)"),
    };

    private const string Llama3Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private static string[]? StringArray(GgufFile file, string key)
    {
        if (!file.Metadata.TryGetValue(key, out var v)) return null;
        return v.ArrayOf<string>() ?? throw new LckvException($"{file.Path}: GGUF metadata key '{key}' is a {v.TypeName}, expected array[string]");
    }

    /// <summary>An array of integers of any width, which must have length entries; null when absent.</summary>
    private static long[]? IntArray(GgufFile file, string key, int length)
    {
        if (!file.Metadata.TryGetValue(key, out var v)) return null;
        if (!v.IsArray || v.ElementType is GgufType.String or GgufType.Bool or GgufType.Float32 or GgufType.Float64 or GgufType.Array)
            throw new LckvException($"{file.Path}: GGUF metadata key '{key}' is a {v.TypeName}, expected an array of integers");
        var a = (Array)v.Value;
        if (a.Length != length) throw new LckvException($"{file.Path}: {key} has {a.Length} entries for {length} tokens");
        var result = new long[a.Length];
        for (int i = 0; i < a.Length; i++)
            result[i] = a.GetValue(i) is ulong u ? (u > long.MaxValue ? -1 : (long)u) : System.Convert.ToInt64(a.GetValue(i), System.Globalization.CultureInfo.InvariantCulture);
        return result;
    }
}
