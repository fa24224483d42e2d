using System.Globalization;
using System.Text;

namespace Lckv.Chat;

internal enum TokKind { Name, String, Int, Float, Op }

/// <summary>One token of an expression inside `{{ }}` or `{% %}`; Value holds the decoded literal.</summary>
internal readonly record struct Token(TokKind Kind, string Text, object? Value, int Line)
{
    public bool IsOp(string op) => Kind == TokKind.Op && Text == op;
    public bool IsName(string name) => Kind == TokKind.Name && Text == name;
}

/// <summary>A piece of the template: raw text (whitespace control already applied), an output tag, or a statement tag.</summary>
internal abstract record Segment(int Line);
internal sealed record TextSegment(string Text, int Line) : Segment(Line);
internal sealed record OutputSegment(List<Token> Tokens, int Line) : Segment(Line);
internal sealed record TagSegment(List<Token> Tokens, int Line) : Segment(Line);

/// <summary>
/// Splits a template into segments the way Jinja2 does with Hugging Face's settings: trim_blocks, lstrip_blocks,
/// `-`/`+` markers, newlines normalised to \n and one trailing newline dropped (keep_trailing_newline=False).
/// </summary>
internal static class JinjaLexer
{
    private static readonly string[] _ops =
        ["**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{", "}",
         ",", ".", ":", "|"];

    public static List<Segment> Split(string source)
    {
        source = source.Replace("\r\n", "\n").Replace('\r', '\n');
        if (source.EndsWith('\n')) source = source[..^1];
        var segments = new List<Segment>();
        int pos = 0, line = 1;
        bool lineStarting = true;       // the previous match ended with a newline (Jinja's lstrip rule needs it)
        var after = After.None;         // what the previous tag's end does to the text that follows it
        while (pos <= source.Length)
        {
            int tag = FindTagStart(source, pos);
            int textEnd = tag < 0 ? source.Length : tag;
            int textLine = line;
            string text = source[pos..textEnd];
            line += Count(text, '\n');
            if (after == After.StripAll) text = Py.Strip(text, right: false);
            else if (after == After.TrimNewline && text.StartsWith('\n')) text = text[1..];
            if (tag < 0)
            {
                if (text.Length > 0) segments.Add(new TextSegment(text, textLine));
                break;
            }
            char kind = source[tag + 1];
            int inner = tag + 2;
            char sign = inner < source.Length ? source[inner] : '\0';
            if (sign is '-' or '+') inner++;
            if (sign == '-') text = Py.Strip(text, left: false);
            else if (sign != '+' && kind != '{')
            {
                // lstrip_blocks: drop spaces and tabs between the line start and a block or comment tag
                int lpos = text.LastIndexOf('\n') + 1;
                if ((lpos > 0 || lineStarting) && text.AsSpan(lpos).IndexOfAnyExcept(' ', '\t') < 0) text = text[..lpos];
            }
            if (text.Length > 0) segments.Add(new TextSegment(text, textLine));
            int tagLine = line;
            if (kind == '#')
            {
                int close = source.IndexOf("#}", inner, StringComparison.Ordinal);
                if (close < 0) throw JinjaError.At(tagLine, "unclosed comment (no '#}')");
                char mark = close > inner ? source[close - 1] : '\0';
                line += Count(source.AsSpan(inner, close - inner), '\n');
                pos = close + 2;
                after = mark == '-' ? After.StripAll : mark == '+' ? After.None : After.TrimNewline;
            }
            else
            {
                var tokens = new List<Token>();
                pos = Tokenize(source, inner, kind == '{' ? "}}" : "%}", ref line, tokens, out char mark);
                if (kind == '%' && mark != '+' && tokens is [{ Kind: TokKind.Name, Text: "raw" }])
                    pos = Raw(source, pos, mark, ref line, tagLine, segments, out after);
                else
                {
                    if (kind == '{') segments.Add(new OutputSegment(tokens, tagLine));
                    else segments.Add(new TagSegment(tokens, tagLine));
                    after = mark == '-' ? After.StripAll : kind == '%' && mark != '+' ? After.TrimNewline : After.None;
                }
            }
            // the end of the match Jinja just made: a trimmed newline or stripped whitespace may end it with \n
            int consumed = pos;
            if (after == After.TrimNewline && pos < source.Length && source[pos] == '\n') consumed = pos + 1;
            else if (after == After.StripAll) while (consumed < source.Length && IsSpace(source[consumed])) consumed++;
            lineStarting = consumed > 0 && source[consumed - 1] == '\n';
        }
        return segments;
    }

    private enum After { None, StripAll, TrimNewline }

    private static readonly System.Text.RegularExpressions.Regex _endRaw = new(@"\{%([-+]?)\s*endraw\s*([-+]?)%\}");

    /// <summary>`{% raw %}...{% endraw %}`: the text between, as is (the tags' own whitespace marks and lstrip_blocks
    /// apply to its ends, and trim_blocks after endraw, as in Jinja2); returns the position after endraw.</summary>
    private static int Raw(string source, int pos, char beginMark, ref int line, int tagLine, List<Segment> segments, out After after)
    {
        var m = _endRaw.Match(source, pos);
        if (!m.Success) throw JinjaError.At(tagLine, "missing '{% endraw %}' after '{% raw %}'");
        string raw = source[pos..m.Index];
        int rawLine = line;
        line += Count(raw, '\n') + Count(m.Value, '\n');
        bool lineStarting = false;  // whether the raw-begin match ended with a newline ('-%}' takes the whitespace after it)
        if (beginMark == '-')
        {
            string rest = Py.Strip(raw, right: false);
            lineStarting = rest.Length < raw.Length && raw[raw.Length - rest.Length - 1] == '\n';
            raw = rest;
        }
        char endSign = m.Groups[1].Value is [var c] ? c : '\0';
        if (endSign == '-') raw = Py.Strip(raw, left: false);
        else if (endSign != '+')
        {
            int lpos = raw.LastIndexOf('\n') + 1;
            if ((lpos > 0 || lineStarting) && raw.AsSpan(lpos).IndexOfAnyExcept(' ', '\t') < 0) raw = raw[..lpos];
        }
        if (raw.Length > 0) segments.Add(new TextSegment(raw, rawLine));
        char endMark = m.Groups[2].Value is [var d] ? d : '\0';
        after = endMark == '-' ? After.StripAll : endMark == '+' ? After.None : After.TrimNewline;
        return m.Index + m.Length;
    }

    private static bool IsSpace(char c) => Py.IsSpace(c);

    private static int Count(ReadOnlySpan<char> s, char c) => s.Count(c);

    private static int FindTagStart(string s, int from)
    {
        for (int i = s.IndexOf('{', from); i >= 0 && i + 1 < s.Length; i = s.IndexOf('{', i + 1))
            if (s[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    /// <summary>Tokens from `at` up to the closing delimiter (outside brackets); returns the position after it, and the
    /// whitespace mark before the delimiter ('-', '+' on a block tag, else '\0').</summary>
    private static int Tokenize(string s, int at, string close, ref int line, List<Token> tokens, out char mark)
    {
        int depth = 0, i = at, startLine = line;
        while (true)
        {
            while (i < s.Length && char.IsWhiteSpace(s[i]))
            {
                if (s[i] == '\n') line++;
                i++;
            }
            if (i >= s.Length) throw JinjaError.At(startLine, $"unclosed tag (no '{close}')");
            if (depth == 0)
            {
                if ((s[i] == '-' || (s[i] == '+' && close == "%}")) && string.CompareOrdinal(s, i + 1, close, 0, 2) == 0)
                {
                    mark = s[i];
                    return i + 3;
                }
                if (string.CompareOrdinal(s, i, close, 0, 2) == 0)
                {
                    mark = '\0';
                    return i + 2;
                }
            }
            char c = s[i];
            if (c is '\'' or '"')
            {
                int tokLine = line;
                var sb = new StringBuilder();
                int j = i + 1;
                while (true)
                {
                    if (j >= s.Length) throw JinjaError.At(tokLine, "unterminated string literal");
                    char d = s[j];
                    if (d == c) break;
                    if (d == '\n') line++;
                    if (d == '\\' && j + 1 < s.Length)
                    {
                        j++;
                        j = Unescape(s, j, sb);
                        continue;
                    }
                    sb.Append(d);
                    j++;
                }
                tokens.Add(new Token(TokKind.String, s[i..(j + 1)], sb.ToString(), tokLine));
                i = j + 1;
            }
            else if (char.IsAsciiDigit(c))
            {
                int j = i;
                while (j < s.Length && (char.IsAsciiDigit(s[j]) || s[j] == '_')) j++;
                bool isFloat = false;
                if (j + 1 < s.Length && s[j] == '.' && char.IsAsciiDigit(s[j + 1]))
                {
                    isFloat = true;
                    j++;
                    while (j < s.Length && (char.IsAsciiDigit(s[j]) || s[j] == '_')) j++;
                }
                if (j < s.Length && s[j] is 'e' or 'E')
                {
                    int k = j + 1;
                    if (k < s.Length && s[k] is '+' or '-') k++;
                    if (k < s.Length && char.IsAsciiDigit(s[k]))
                    {
                        isFloat = true;
                        j = k;
                        while (j < s.Length && char.IsAsciiDigit(s[j])) j++;
                    }
                }
                string text = s[i..j];
                string digits = text.Replace("_", "");
                object value = isFloat ? (object)double.Parse(digits, CultureInfo.InvariantCulture)
                    : long.TryParse(digits, CultureInfo.InvariantCulture, out long l) ? (object)l
                    : throw JinjaError.At(line, $"integer literal {text} is too large");
                tokens.Add(new Token(isFloat ? TokKind.Float : TokKind.Int, text, value, line));
                i = j;
            }
            else if (char.IsLetter(c) || c == '_')
            {
                int j = i;
                while (j < s.Length && (char.IsLetterOrDigit(s[j]) || s[j] == '_')) j++;
                tokens.Add(new Token(TokKind.Name, s[i..j], null, line));
                i = j;
            }
            else
            {
                string? op = null;
                foreach (var o in _ops)
                    if (string.CompareOrdinal(s, i, o, 0, o.Length) == 0)
                    {
                        op = o;
                        break;
                    }
                if (op is null) throw JinjaError.At(line, $"unexpected character '{c}'");
                if (op is "(" or "[" or "{") depth++;
                else if (op is ")" or "]" or "}") depth = Math.Max(0, depth - 1);
                tokens.Add(new Token(TokKind.Op, op, null, line));
                i += op.Length;
            }
        }
    }

    /// <summary>Python's escapes in a string literal (s[j] is the character after the backslash); an unknown escape is
    /// kept as written, as Python does.</summary>
    private static int Unescape(string s, int j, StringBuilder sb)
    {
        char e = s[j];
        switch (e)
        {
            case 'n': sb.Append('\n'); return j + 1;
            case 't': sb.Append('\t'); return j + 1;
            case 'r': sb.Append('\r'); return j + 1;
            case 'b': sb.Append('\b'); return j + 1;
            case 'f': sb.Append('\f'); return j + 1;
            case 'v': sb.Append('\v'); return j + 1;
            case 'a': sb.Append('\a'); return j + 1;
            case '0' when j + 1 >= s.Length || !char.IsAsciiDigit(s[j + 1]): sb.Append('\0'); return j + 1;
            case '\\' or '\'' or '"': sb.Append(e); return j + 1;
            case '\n': return j + 1;
            case 'x' or 'u' or 'U':
                int n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                if (j + n < s.Length && int.TryParse(s.AsSpan(j + 1, n), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int cp)
                    && cp <= 0x10FFFF)
                {
                    sb.Append(char.ConvertFromUtf32(cp is >= 0xD800 and <= 0xDFFF ? 0xFFFD : cp));
                    return j + 1 + n;
                }
                break;
        }
        sb.Append('\\').Append(e);
        return j + 1;
    }
}
